{{- define "order-saga.fullname" -}}
{{- printf "%s" .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "order-saga.labels" -}}
app.kubernetes.io/name: order-saga
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
{{- end -}}

{{- define "order-saga.env" -}}
- name: ORDER_SAGA_BOOTSTRAP
  value: {{ .Values.config.bootstrap | quote }}
- name: ORDER_SAGA_APPLICATION_ID
  value: {{ .Values.config.applicationId | quote }}
- name: ORDER_SAGA_REGISTRY_URL
  value: {{ .Values.config.registryUrl | quote }}
- name: ORDER_SAGA_COMMIT_INTERVAL_MS
  value: {{ .Values.config.commitIntervalMs | quote }}
- name: ORDER_SAGA_TRANSACTION_TIMEOUT_MS
  value: {{ .Values.config.transactionTimeoutMs | quote }}
- name: ORDER_SAGA_STATE_RETENTION_MS
  value: {{ .Values.config.stateRetentionMs | quote }}
- name: ORDER_SAGA_STEP_TIMEOUT_MS
  value: {{ .Values.config.stepTimeoutMs | quote }}
- name: ORDER_SAGA_MAX_ATTEMPTS
  value: {{ .Values.config.maxAttempts | quote }}
- name: ORDER_SAGA_RETRY_BACKOFF_MS
  value: {{ .Values.config.retryBackoffMs | quote }}
- name: ORDER_SAGA_SINK_GROUP
  value: {{ .Values.config.sinkGroup | quote }}
- name: ORDER_SAGA_LOG_FORMAT
  value: {{ .Values.config.logFormat | quote }}
- name: ORDER_SAGA_OTLP_ENDPOINT
  value: {{ .Values.config.otlpEndpoint | quote }}
- name: ORDER_SAGA_METRICS_INTERVAL_MS
  value: {{ .Values.config.metricsIntervalMs | quote }}
- name: ORDER_SAGA_STUCK_AFTER_MS
  value: {{ .Values.config.stuckAfterMs | quote }}
- name: ORDER_SAGA_DATABASE_URL
  valueFrom:
    secretKeyRef:
      name: {{ .Values.database.existingSecret }}
      key: {{ .Values.database.urlKey }}
{{- end -}}
