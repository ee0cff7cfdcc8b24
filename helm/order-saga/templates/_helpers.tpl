{{- define "order-saga.fullname" -}}
{{- printf "%s" .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "order-saga.labels" -}}
app.kubernetes.io/name: order-saga
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{/* Selector labels of one component: processor, sink or schemas. */}}
{{- define "order-saga.selectorLabels" -}}
app.kubernetes.io/name: order-saga
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "order-saga.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{- define "order-saga.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "order-saga.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/*
The grace period a pod gets after SIGTERM: the processor's commit of its open transaction
is bounded by the transaction timeout, the next commit interval may be under way, and the
margin covers leaving the group and the sink's last batch (10 s, in parallel).
*/}}
{{- define "order-saga.terminationGracePeriodSeconds" -}}
{{- if kindIs "invalid" .Values.terminationGracePeriodSeconds -}}
{{- $txn := divf (.Values.config.transactionTimeoutMs | int64) 1000 | ceil | int64 -}}
{{- $commit := divf (.Values.config.commitIntervalMs | int64) 1000 | ceil | int64 -}}
{{- add $txn $commit (.Values.drainMarginSeconds | int64) -}}
{{- else -}}
{{- .Values.terminationGracePeriodSeconds | int64 -}}
{{- end -}}
{{- end -}}

{{- define "order-saga.hasSasl" -}}
{{- if hasPrefix "sasl_" .Values.kafka.securityProtocol }}true{{ end -}}
{{- end -}}
{{- define "order-saga.hasKafkaTls" -}}
{{- if hasSuffix "ssl" .Values.kafka.securityProtocol }}true{{ end -}}
{{- end -}}

{{/* Where each Secret is mounted; files only, never environment values. */}}
{{- define "order-saga.secretDir" -}}/var/run/secrets/order-saga{{- end -}}

{{- define "order-saga.env" -}}
- name: ORDER_SAGA_BOOTSTRAP
  value: {{ .Values.config.bootstrap | quote }}
- name: ORDER_SAGA_APPLICATION_ID
  value: {{ .Values.config.applicationId | quote }}
- name: ORDER_SAGA_REGISTRY_URL
  value: {{ .Values.registry.url | quote }}
- name: ORDER_SAGA_COMMIT_INTERVAL_MS
  value: {{ .Values.config.commitIntervalMs | int64 | quote }}
- name: ORDER_SAGA_TRANSACTION_TIMEOUT_MS
  value: {{ .Values.config.transactionTimeoutMs | int64 | quote }}
- name: ORDER_SAGA_STATE_RETENTION_MS
  value: {{ .Values.config.stateRetentionMs | int64 | quote }}
- name: ORDER_SAGA_DEDUP_WINDOW_MS
  value: {{ .Values.config.dedupWindowMs | int64 | quote }}
- name: ORDER_SAGA_MAX_ORDERS_IN_MEMORY
  value: {{ .Values.config.maxOrdersInMemory | int64 | quote }}
- name: ORDER_SAGA_STEP_TIMEOUT_MS
  value: {{ .Values.config.stepTimeoutMs | int64 | quote }}
- name: ORDER_SAGA_MAX_ATTEMPTS
  value: {{ .Values.config.maxAttempts | int64 | quote }}
- name: ORDER_SAGA_RETRY_BACKOFF_MS
  value: {{ .Values.config.retryBackoffMs | int64 | quote }}
- name: ORDER_SAGA_SINK_GROUP
  value: {{ .Values.config.sinkGroup | quote }}
- name: ORDER_SAGA_STATS_INTERVAL_S
  value: {{ .Values.config.statsIntervalS | int64 | quote }}
- name: ORDER_SAGA_LOG_FORMAT
  value: {{ .Values.config.logFormat | quote }}
- name: ORDER_SAGA_OTLP_ENDPOINT
  value: {{ .Values.config.otlpEndpoint | quote }}
- name: ORDER_SAGA_METRICS_INTERVAL_MS
  value: {{ .Values.config.metricsIntervalMs | int64 | quote }}
- name: ORDER_SAGA_STUCK_AFTER_MS
  value: {{ .Values.config.stuckAfterMs | int64 | quote }}
- name: ORDER_SAGA_MAX_TASK_IDLE_MS
  value: {{ .Values.config.maxTaskIdleMs | int64 | quote }}
- name: ORDER_SAGA_EARLY_GRACE_MS
  value: {{ .Values.config.earlyGraceMs | int64 | quote }}
- name: ORDER_SAGA_TOPIC_PREFIX
  value: {{ .Values.config.topicPrefix | quote }}
- name: ORDER_SAGA_STATIC_MEMBERSHIP
  value: {{ .Values.config.staticMembership | quote }}
- name: ORDER_SAGA_HEARTBEAT_FILE
  value: /run/order-saga/heartbeat
- name: ORDER_SAGA_LIVENESS_TIMEOUT_MS
  value: {{ .Values.probes.livenessTimeoutMs | int64 | quote }}
- name: ORDER_SAGA_DATABASE_URL
  valueFrom:
    secretKeyRef:
      name: {{ .Values.database.existingSecret }}
      key: {{ .Values.database.urlKey }}
{{- with .Values.database.passwordKey }}
- name: ORDER_SAGA_DATABASE_PASSWORD_FILE
  value: {{ printf "%s/database/%s" (include "order-saga.secretDir" $) . | quote }}
{{- end }}
{{- if .Values.database.tls.existingSecret }}
- name: ORDER_SAGA_DATABASE_SSL_ROOT_CERT
  value: {{ printf "%s/database-tls/%s" (include "order-saga.secretDir" .) .Values.database.tls.caKey | quote }}
{{- end }}
- name: ORDER_SAGA_KAFKA_SECURITY_PROTOCOL
  value: {{ .Values.kafka.securityProtocol | quote }}
{{- if include "order-saga.hasSasl" . }}
- name: ORDER_SAGA_KAFKA_SASL_MECHANISM
  value: {{ .Values.kafka.sasl.mechanism | quote }}
- name: ORDER_SAGA_KAFKA_SASL_USERNAME
  value: {{ .Values.kafka.sasl.username | quote }}
- name: ORDER_SAGA_KAFKA_SASL_PASSWORD_FILE
  value: {{ printf "%s/kafka-sasl/%s" (include "order-saga.secretDir" .) .Values.kafka.sasl.passwordKey | quote }}
{{- end }}
{{- if include "order-saga.hasKafkaTls" . }}
- name: ORDER_SAGA_KAFKA_SSL_ENDPOINT_IDENTIFICATION
  value: {{ .Values.kafka.tls.endpointIdentification | quote }}
{{- if .Values.kafka.tls.existingSecret }}
- name: ORDER_SAGA_KAFKA_SSL_CA_FILE
  value: {{ printf "%s/kafka-tls/%s" (include "order-saga.secretDir" .) .Values.kafka.tls.caKey | quote }}
{{- if .Values.kafka.tls.certKey }}
- name: ORDER_SAGA_KAFKA_SSL_CERT_FILE
  value: {{ printf "%s/kafka-tls/%s" (include "order-saga.secretDir" .) .Values.kafka.tls.certKey | quote }}
- name: ORDER_SAGA_KAFKA_SSL_KEY_FILE
  value: {{ printf "%s/kafka-tls/%s" (include "order-saga.secretDir" .) .Values.kafka.tls.keyKey | quote }}
{{- end }}
{{- end }}
{{- end }}
{{- with .Values.kafka.properties }}
- name: ORDER_SAGA_KAFKA_PROPERTIES
  value: {{ include "order-saga.properties" . | quote }}
{{- end }}
{{- with .Values.registry.username }}
- name: ORDER_SAGA_REGISTRY_USERNAME
  value: {{ . | quote }}
{{- end }}
{{- with .Values.registry.passwordKey }}
- name: ORDER_SAGA_REGISTRY_PASSWORD_FILE
  value: {{ printf "%s/registry/%s" (include "order-saga.secretDir" $) . | quote }}
{{- end }}
{{- with .Values.registry.tokenKey }}
- name: ORDER_SAGA_REGISTRY_TOKEN_FILE
  value: {{ printf "%s/registry/%s" (include "order-saga.secretDir" $) . | quote }}
{{- end }}
{{- if .Values.registry.tls.existingSecret }}
- name: ORDER_SAGA_REGISTRY_CA_FILE
  value: {{ printf "%s/registry-tls/%s" (include "order-saga.secretDir" .) .Values.registry.tls.caKey | quote }}
{{- end }}
{{- end -}}

{{/* kafka.properties as key=value;key=value, numbers as integers. */}}
{{- define "order-saga.properties" -}}
{{- $parts := list -}}
{{- range $k, $v := . -}}
{{- if or (kindIs "float64" $v) (kindIs "int64" $v) (kindIs "int" $v) -}}
{{- $parts = append $parts (printf "%s=%d" $k ($v | int64)) -}}
{{- else -}}
{{- $parts = append $parts (printf "%s=%v" $k $v) -}}
{{- end -}}
{{- end -}}
{{- join ";" $parts -}}
{{- end -}}

{{/* One Secret volume: name, secret and the keys to project as files. */}}
{{- define "order-saga.secretVolume" -}}
- name: {{ .name }}
  secret:
    secretName: {{ .secret }}
    defaultMode: 0440
    items:
      {{- range .keys }}
      - key: {{ . }}
        path: {{ . }}
      {{- end }}
{{- end -}}

{{- define "order-saga.secretVolumes" -}}
{{- if and .Values.database.passwordKey }}
{{ include "order-saga.secretVolume" (dict "name" "database" "secret" .Values.database.existingSecret "keys" (list .Values.database.passwordKey)) }}
{{- end }}
{{- if .Values.database.tls.existingSecret }}
{{ include "order-saga.secretVolume" (dict "name" "database-tls" "secret" .Values.database.tls.existingSecret "keys" (list .Values.database.tls.caKey)) }}
{{- end }}
{{- if include "order-saga.hasSasl" . }}
{{ include "order-saga.secretVolume" (dict "name" "kafka-sasl" "secret" .Values.kafka.sasl.existingSecret "keys" (list .Values.kafka.sasl.passwordKey)) }}
{{- end }}
{{- if and (include "order-saga.hasKafkaTls" .) .Values.kafka.tls.existingSecret }}
{{- $keys := list .Values.kafka.tls.caKey }}
{{- if .Values.kafka.tls.certKey }}{{ $keys = append $keys .Values.kafka.tls.certKey }}{{ $keys = append $keys .Values.kafka.tls.keyKey }}{{ end }}
{{ include "order-saga.secretVolume" (dict "name" "kafka-tls" "secret" .Values.kafka.tls.existingSecret "keys" $keys) }}
{{- end }}
{{- if or .Values.registry.passwordKey .Values.registry.tokenKey }}
{{- $keys := list }}
{{- with .Values.registry.passwordKey }}{{ $keys = append $keys . }}{{ end }}
{{- with .Values.registry.tokenKey }}{{ $keys = append $keys . }}{{ end }}
{{ include "order-saga.secretVolume" (dict "name" "registry" "secret" .Values.registry.existingSecret "keys" $keys) }}
{{- end }}
{{- if .Values.registry.tls.existingSecret }}
{{ include "order-saga.secretVolume" (dict "name" "registry-tls" "secret" .Values.registry.tls.existingSecret "keys" (list .Values.registry.tls.caKey)) }}
{{- end }}
{{- end -}}

{{- define "order-saga.secretMounts" -}}
{{- $dir := include "order-saga.secretDir" . -}}
{{- if .Values.database.passwordKey }}
- { name: database, mountPath: {{ $dir }}/database, readOnly: true }
{{- end }}
{{- if .Values.database.tls.existingSecret }}
- { name: database-tls, mountPath: {{ $dir }}/database-tls, readOnly: true }
{{- end }}
{{- if include "order-saga.hasSasl" . }}
- { name: kafka-sasl, mountPath: {{ $dir }}/kafka-sasl, readOnly: true }
{{- end }}
{{- if and (include "order-saga.hasKafkaTls" .) .Values.kafka.tls.existingSecret }}
- { name: kafka-tls, mountPath: {{ $dir }}/kafka-tls, readOnly: true }
{{- end }}
{{- if or .Values.registry.passwordKey .Values.registry.tokenKey }}
- { name: registry, mountPath: {{ $dir }}/registry, readOnly: true }
{{- end }}
{{- if .Values.registry.tls.existingSecret }}
- { name: registry-tls, mountPath: {{ $dir }}/registry-tls, readOnly: true }
{{- end }}
{{- end -}}

{{- define "order-saga.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: 65532
runAsGroup: 65532
fsGroup: 65532
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{- define "order-saga.containerSecurityContext" -}}
runAsNonRoot: true
runAsUser: 65532
runAsGroup: 65532
readOnlyRootFilesystem: true
allowPrivilegeEscalation: false
privileged: false
capabilities:
  drop: ["ALL"]
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{/* Annotations a workload carries when it departs from a kube-score default on purpose. */}}
{{- define "order-saga.kubeScoreIgnores" -}}
{{- if ne .Values.image.pullPolicy "Always" }}
kube-score/ignore: container-image-pull-policy
order-saga/kube-score-ignore-reason: "image tags are release versions that are never rebuilt; pulling on every start adds a registry dependency to restarts"
{{- end }}
{{- end -}}

{{/* Spreading and anti-affinity for the pods of one component. */}}
{{- define "order-saga.spread" -}}
topologySpreadConstraints:
  {{- range .root.Values.spread.topologyKeys }}
  - maxSkew: 1
    topologyKey: {{ . }}
    whenUnsatisfiable: {{ if and $.root.Values.spread.hard (eq . "kubernetes.io/hostname") }}DoNotSchedule{{ else }}ScheduleAnyway{{ end }}
    labelSelector:
      matchLabels:
        {{- include "order-saga.selectorLabels" $ | nindent 8 }}
  {{- end }}
affinity:
  podAntiAffinity:
    {{- if .root.Values.spread.hard }}
    requiredDuringSchedulingIgnoredDuringExecution:
      - topologyKey: kubernetes.io/hostname
        labelSelector:
          matchLabels:
            {{- include "order-saga.selectorLabels" . | nindent 12 }}
    {{- else }}
    preferredDuringSchedulingIgnoredDuringExecution:
      - weight: 100
        podAffinityTerm:
          topologyKey: kubernetes.io/hostname
          labelSelector:
            matchLabels:
              {{- include "order-saga.selectorLabels" . | nindent 14 }}
    {{- end }}
{{- end -}}

{{/* The exec probes of a container whose components are given as a list. */}}
{{- define "order-saga.probes" -}}
{{- $health := list "/usr/local/bin/order-saga" "health" "--heartbeat-file" "/run/order-saga/heartbeat" "--liveness-timeout-ms" (.root.Values.probes.livenessTimeoutMs | int64 | toString) -}}
{{- range .components }}{{ $health = concat $health (list "--component" .) }}{{ end -}}
{{- $period := .root.Values.probes.periodSeconds | int64 -}}
startupProbe:
  exec:
    command: {{ toJson $health }}
  periodSeconds: {{ $period }}
  timeoutSeconds: 5
  failureThreshold: {{ .root.Values.probes.startupFailureThreshold | int64 }}
livenessProbe:
  exec:
    command: {{ toJson $health }}
  periodSeconds: {{ $period }}
  timeoutSeconds: 5
  failureThreshold: 3
readinessProbe:
  exec:
    command: {{ toJson (append $health "--readiness") }}
  periodSeconds: {{ $period }}
  timeoutSeconds: 5
  failureThreshold: 1
{{- end -}}

{{- define "order-saga.runVolumes" -}}
- name: run
  emptyDir:
    medium: Memory
    sizeLimit: 1Mi
- name: tmp
  emptyDir:
    sizeLimit: 64Mi
{{- end -}}

{{- define "order-saga.runMounts" -}}
- { name: run, mountPath: /run/order-saga }
- { name: tmp, mountPath: /tmp }
{{- end -}}
