# shellcheck shell=bash
# Prometheus with its OTLP receiver, the metrics backend of the local stack. Sourced by
# scripts/stack, which provides say/die/launch/stop_process/our_pid/running_as/port_open.
#
# Debian 12 ships Prometheus 2.42, which has no OTLP receiver, and bookworm-backports has
# none, so it is built once with `go install` from the Go module proxy (Prometheus 3.x is the
# Go module version v0.3xx) and cached outside the checkout:
# ${XDG_CACHE_HOME:-$HOME/.cache}/order-saga/tools/prometheus-<version>/prometheus.
# `remove_all_sd` leaves out the cloud service discoveries nobody uses here. No web UI assets
# are built in (the HTTP API is complete without them).
#
# Knobs: STACK_PROMETHEUS (1; 0 = `up` does not start it), STACK_PROMETHEUS_PORT (9090),
# STACK_PROMETHEUS_VERSION (v0.316.0, i.e. Prometheus 3.16.0).

PROM_VERSION=${STACK_PROMETHEUS_VERSION:-v0.316.0}
PROM_PORT=${STACK_PROMETHEUS_PORT:-9090}
PROM_ENABLED=${STACK_PROMETHEUS:-1}
PROM_TOOLS=${XDG_CACHE_HOME:-$HOME/.cache}/order-saga/tools/prometheus-$PROM_VERSION
PROM_BIN=$PROM_TOOLS/prometheus
PROM_HOME=$STACK_DIR/prometheus
PROM_URL=http://127.0.0.1:$PROM_PORT
PROM_OTLP_ENDPOINT=$PROM_URL/api/v1/otlp
PROM_TIMEOUT=60

ensure_prometheus() {
  if [[ -x $PROM_BIN ]]; then
    return 0
  fi
  # The machine's Go may sit outside a non-login shell's PATH.
  if ! command -v go >/dev/null 2>&1 && [[ -x /usr/local/go/bin/go ]]; then
    PATH=/usr/local/go/bin:$PATH
  fi
  command -v go >/dev/null 2>&1 ||
    die prometheus "" "building Prometheus needs the go command (Go 1.26 or newer) on PATH"
  mkdir -p -- "$PROM_TOOLS"
  say "building Prometheus $PROM_VERSION with go install (once; cached in $PROM_TOOLS)"
  local started=$SECONDS
  # A private GOBIN, so a half-written binary never sits where the check above looks.
  rm -rf -- "$PROM_TOOLS/bin"
  GOBIN=$PROM_TOOLS/bin GOFLAGS=-buildvcs=false CGO_ENABLED=0 \
    go install -tags remove_all_sd "github.com/prometheus/prometheus/cmd/prometheus@$PROM_VERSION" \
    >>"$LOG_DIR/install.log" 2>&1 </dev/null ||
    die prometheus "$LOG_DIR/install.log" "go install of Prometheus $PROM_VERSION failed"
  mv -- "$PROM_TOOLS/bin/prometheus" "$PROM_BIN"
  rm -rf -- "$PROM_TOOLS/bin"
  say "Prometheus built in $((SECONDS - started))s"
}

write_prometheus_config() {
  mkdir -p -- "$PROM_HOME/data"
  # No scrape jobs: everything arrives over OTLP. service.name and service.instance.id
  # become the job and instance labels; the other resource attributes are kept in
  # target_info, and these are also put on every series for simpler queries.
  cat >"$PROM_HOME/prometheus.yml.tmp" <<'EOF'
global:
  evaluation_interval: 15s
otlp:
  promote_resource_attributes:
    - service.version
storage:
  tsdb:
    out_of_order_time_window: 30m
EOF
  mv -- "$PROM_HOME/prometheus.yml.tmp" "$PROM_HOME/prometheus.yml"
}

prometheus_answers() {
  curl -fsS -m 2 "$PROM_URL/-/ready" >/dev/null 2>&1
}

start_prometheus() {
  local signature="$PROM_VERSION port=$PROM_PORT"
  if running_as prometheus "$signature"; then
    return 0
  fi
  if port_open "$PROM_PORT"; then
    die prometheus "" "port $PROM_PORT is taken by another process; set STACK_PROMETHEUS_PORT"
  fi
  write_prometheus_config
  say "starting Prometheus on $PROM_URL"
  launch prometheus "$signature" "$LOG_DIR/prometheus.log" "$PROM_HOME" \
    "$PROM_BIN" \
    "--config.file=$PROM_HOME/prometheus.yml" \
    "--storage.tsdb.path=$PROM_HOME/data" \
    "--storage.tsdb.retention.time=7d" \
    "--web.listen-address=127.0.0.1:$PROM_PORT" \
    "--web.enable-otlp-receiver" \
    "--web.enable-lifecycle"
}

wait_prometheus() {
  local i
  for ((i = 0; i < PROM_TIMEOUT * 2; i++)); do
    prometheus_answers && return 0
    our_pid prometheus >/dev/null ||
      die prometheus "$LOG_DIR/prometheus.log" "exited during start-up"
    sleep 0.5
  done
  die prometheus "$LOG_DIR/prometheus.log" "not ready on $PROM_URL after ${PROM_TIMEOUT}s"
}

# The lines .stack/env gets while Prometheus runs.
prometheus_env() {
  if prometheus_answers; then
    printf 'ORDER_SAGA_OTLP_ENDPOINT=%s\n' "$PROM_OTLP_ENDPOINT"
    printf 'STACK_PROMETHEUS_URL=%s\n' "$PROM_URL"
  fi
}

prometheus_status() {
  local state=down
  prometheus_answers && state=up
  printf '%-10s %-45s %s\n' prometheus "$PROM_URL (OTLP: $PROM_OTLP_ENDPOINT)" "$state"
  [[ $state == up ]]
}

# `scripts/stack up-metrics`: only the metrics backend, e.g. beside a stack started
# elsewhere. Writes the endpoint to .stack/env.metrics (and into .stack/env if there is one).
cmd_up_metrics() {
  check_number STACK_PROMETHEUS_PORT "$PROM_PORT"
  ensure_command curl curl
  ensure_prometheus
  start_prometheus
  wait_prometheus
  prometheus_env >"$STACK_DIR/env.metrics"
  if [[ -f $ENV_FILE ]]; then
    grep -v -e '^ORDER_SAGA_OTLP_ENDPOINT=' -e '^STACK_PROMETHEUS_URL=' "$ENV_FILE" \
      >"$ENV_FILE.tmp" || true
    cat "$STACK_DIR/env.metrics" >>"$ENV_FILE.tmp"
    mv -- "$ENV_FILE.tmp" "$ENV_FILE"
  fi
  say "Prometheus ready; settings in $STACK_DIR/env.metrics"
  prometheus_status
}

cmd_down_metrics() {
  stop_process prometheus 30
  rm -f -- "$STACK_DIR/env.metrics"
}
