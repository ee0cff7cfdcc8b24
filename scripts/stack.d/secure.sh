# shellcheck shell=bash
# The secured local stack: `STACK_SECURE=1 scripts/stack up|down|status|reset`.
# Sourced by scripts/stack, whose helpers it uses; it runs beside the plaintext stack with
# its own ports, its own data under .stack/secure and its own PostgreSQL cluster name.
#
#   Kafka       SASL_SSL on 127.0.0.1:9192 (SCRAM-SHA-512/256), mutual TLS on 9194,
#               controller 9193 (SASL_PLAINTEXT/PLAIN, loopback), StandardAuthorizer, ACLs
#   PostgreSQL  127.0.0.1:55433, ssl = on, hostssl-only for the application role
#   Registry    https://127.0.0.1:8443 with basic auth: nginx (Debian package) in front of
#               the plaintext stack's Apicurio registry on 127.0.0.1:$STACK_REGISTRY_PORT
#               (Apicurio 3 authenticates only through an OIDC identity server), so the
#               plaintext stack must be up too.
#
# Principals: `admin` (super user: the broker itself and the setup), `order` (the
# service: prefixed ACLs below), `intruder` (authenticates, has no ACL at all).
# Service ACLs, all PREFIXED on each of SECURE_PREFIXES: topics Read, Write, Describe,
# Create, DescribeConfigs; groups Read, Describe; transactional ids Write, Describe; and
# IdempotentWrite on the cluster. Deployments and tests on this stack use topic
# prefixes (and application ids) starting with `sec-`.
#
# Knobs: STACK_SECURE_KAFKA_PORT (9192), STACK_SECURE_KAFKA_CONTROLLER_PORT (9193),
# STACK_SECURE_KAFKA_MTLS_PORT (9194),
# STACK_SECURE_PG_PORT (55433), STACK_SECURE_REGISTRY_PORT (8443).

SECURE_PREFIXES=order,inventory-,payment-,shipping-,notification-,sec-

secure_setup_vars() {
  PLAIN_REGISTRY_PORT=$REGISTRY_PORT
  KAFKA_PORT=${STACK_SECURE_KAFKA_PORT:-9192}
  KAFKA_CONTROLLER_PORT=${STACK_SECURE_KAFKA_CONTROLLER_PORT:-9193}
  KAFKA_MTLS_PORT=${STACK_SECURE_KAFKA_MTLS_PORT:-9194}
  PG_PORT=${STACK_SECURE_PG_PORT:-55433}
  SECURE_REGISTRY_PORT=${STACK_SECURE_REGISTRY_PORT:-8443}
  check_number STACK_SECURE_KAFKA_PORT "$KAFKA_PORT"
  check_number STACK_SECURE_KAFKA_CONTROLLER_PORT "$KAFKA_CONTROLLER_PORT"
  check_number STACK_SECURE_KAFKA_MTLS_PORT "$KAFKA_MTLS_PORT"
  check_number STACK_SECURE_PG_PORT "$PG_PORT"
  check_number STACK_SECURE_REGISTRY_PORT "$SECURE_REGISTRY_PORT"

  # Downloads stay shared with the plaintext stack (KAFKA_LIBS, KAFKA_TOOLS keep their
  # values); everything with state moves under .stack/secure. our_pid matches a process by
  # this directory in its command line, so neither stack ever takes the other's for its own.
  STACK_DIR=$REPO_ROOT/.stack/secure
  LOG_DIR=$STACK_DIR/logs
  RUN_DIR=$STACK_DIR/run
  KAFKA_HOME=$STACK_DIR/kafka
  KAFKA_DATA=$KAFKA_HOME/data
  KAFKA_CONF=$KAFKA_HOME/server.properties
  PG_DIR=$STACK_DIR/pg
  PG_DATA=$PG_DIR/data
  ENV_FILE=$STACK_DIR/env
  TLS_DIR=$STACK_DIR/tls
  SECRETS_DIR=$STACK_DIR/secrets
  NGINX_DIR=$STACK_DIR/nginx
  # Its own prefix: the plaintext stack's drop_stale_clusters matches `ordersaga_` only,
  # which `ordersagasec_` does not start with, and this stack's matches only its own.
  PG_CLUSTER=ordersagasec_$(printf '%s' "$REPO_ROOT" | sha256sum | cut -c1-8)
  PG_CLUSTER_PREFIX=ordersagasec_
  KAFKA_BOOTSTRAP=127.0.0.1:$KAFKA_PORT
  REGISTRY_URL=https://127.0.0.1:$SECURE_REGISTRY_PORT/apis/ccompat/v7
  DATABASE_URL="postgres://order@127.0.0.1:$PG_PORT/order?sslmode=verify-full&sslrootcert=$TLS_DIR/ca.pem"
}

secret() { cat -- "$SECRETS_DIR/$1.password"; }

# Random secrets, made once: hex, so they need no quoting in JAAS, SQL or properties.
ensure_secrets() {
  mkdir -p -- "$SECRETS_DIR"
  chmod 700 "$SECRETS_DIR"
  local name
  for name in admin order intruder postgres registry keystore; do
    [[ -s $SECRETS_DIR/$name.password ]] && continue
    (umask 077 && openssl rand -hex 16 >"$SECRETS_DIR/$name.password")
  done
}

# A CA and one server certificate (SAN 127.0.0.1, localhost) for Kafka, PostgreSQL and
# nginx; plus an unrelated CA, for tests of a client that trusts the wrong one.
ensure_certs() {
  mkdir -p -- "$TLS_DIR"
  [[ -s $TLS_DIR/server.pem && -s $TLS_DIR/other-ca.pem && -s $TLS_DIR/server.p12 ]] && return 0
  say "making a CA and a server certificate in $TLS_DIR (openssl)"
  local log=$LOG_DIR/tls.log
  (
    set -e
    cd -- "$TLS_DIR"
    umask 077
    openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj "/CN=order-saga local CA" \
      -keyout ca.key -out ca.pem
    openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj "/CN=some other CA" \
      -keyout other-ca.key -out other-ca.pem
    openssl req -newkey rsa:2048 -nodes -subj "/CN=localhost" -keyout server.key -out server.csr
    printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n' >server.ext
    openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 825 \
      -extfile server.ext -out server.pem
    openssl pkcs12 -export -in server.pem -inkey server.key -certfile ca.pem -name broker \
      -passout "file:$SECRETS_DIR/keystore.password" -out server.p12
    chmod 644 ca.pem other-ca.pem server.pem
  ) >>"$log" 2>&1 || die tls "$log" "openssl could not make the certificates"
}

# A client certificate for the mutual-TLS listener; CN=order maps to the principal
# User:order (ssl.principal.mapping.rules), so it has the service's ACLs.
ensure_client_cert() {
  [[ -s $TLS_DIR/client.pem ]] && return 0
  local log=$LOG_DIR/tls.log
  (
    set -e
    cd -- "$TLS_DIR"
    umask 077
    openssl req -newkey rsa:2048 -nodes -subj "/CN=order" -keyout client.key -out client.csr
    printf 'extendedKeyUsage=clientAuth\n' >client.ext
    openssl x509 -req -in client.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 825 \
      -extfile client.ext -out client.pem
  ) >>"$log" 2>&1 || die tls "$log" "openssl could not make the client certificate"
}

write_secure_kafka_config() {
  local admin
  admin=$(secret admin)
  mkdir -p -- "$KAFKA_HOME"
  (umask 077 && cat >"$KAFKA_CONF" <<EOF
# Generated by scripts/stack (STACK_SECURE=1); holds secrets, mode 600.
process.roles=broker,controller
node.id=1
controller.quorum.bootstrap.servers=127.0.0.1:$KAFKA_CONTROLLER_PORT
listeners=SASL_SSL://127.0.0.1:$KAFKA_PORT,CONTROLLER://127.0.0.1:$KAFKA_CONTROLLER_PORT,SSL://127.0.0.1:$KAFKA_MTLS_PORT
advertised.listeners=SASL_SSL://127.0.0.1:$KAFKA_PORT,SSL://127.0.0.1:$KAFKA_MTLS_PORT
inter.broker.listener.name=SASL_SSL
controller.listener.names=CONTROLLER
listener.security.protocol.map=CONTROLLER:SASL_PLAINTEXT,SASL_SSL:SASL_SSL,SSL:SSL
# Mutual TLS: a client certificate of the CA is required; its CN is the principal.
listener.name.ssl.ssl.client.auth=required
ssl.principal.mapping.rules=RULE:^CN=([a-zA-Z0-9._-]+)\$/\$1/,DEFAULT
sasl.enabled.mechanisms=SCRAM-SHA-512,SCRAM-SHA-256
sasl.mechanism.inter.broker.protocol=SCRAM-SHA-512
listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required username="admin" password="$admin";
listener.name.sasl_ssl.scram-sha-256.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;
# SCRAM credentials live in the metadata log the controller serves, so the controller
# listener authenticates with PLAIN against this file instead.
sasl.mechanism.controller.protocol=PLAIN
listener.name.controller.sasl.enabled.mechanisms=PLAIN
listener.name.controller.plain.sasl.jaas.config=org.apache.kafka.common.security.plain.PlainLoginModule required username="admin" password="$admin" user_admin="$admin";
ssl.keystore.type=PKCS12
ssl.keystore.location=$TLS_DIR/server.p12
ssl.keystore.password=$(secret keystore)
ssl.truststore.type=PEM
ssl.truststore.location=$TLS_DIR/ca.pem
authorizer.class.name=org.apache.kafka.metadata.authorizer.StandardAuthorizer
super.users=User:admin
allow.everyone.if.no.acl.found=false
log.dirs=$KAFKA_DATA
num.partitions=$PARTITIONS
default.replication.factor=1
min.insync.replicas=1
auto.create.topics.enable=false
offsets.topic.replication.factor=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
EOF
  )
  # The admin principal's client settings, for the setup tool.
  (umask 077 && cat >"$KAFKA_HOME/admin.properties" <<EOF
security.protocol=SASL_SSL
sasl.mechanism=SCRAM-SHA-512
sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required username="admin" password="$admin";
ssl.truststore.type=PEM
ssl.truststore.location=$TLS_DIR/ca.pem
EOF
  )
}

format_secure_kafka_storage() {
  [[ -f $KAFKA_DATA/meta.properties ]] && return 0
  say "formatting secured Kafka storage with SCRAM users admin, order, intruder"
  mkdir -p -- "$KAFKA_DATA"
  local cluster_id
  cluster_id=$(java "${TOOL_JAVA_OPTS[@]}" -cp "$KAFKA_LIBS/*" kafka.tools.StorageTool random-uuid \
    2>>"$LOG_DIR/kafka.log") || die kafka "$LOG_DIR/kafka.log" "StorageTool random-uuid failed"
  # The passwords go on this JVM's command line for a second; the format output (logged)
  # does not repeat them.
  java "${TOOL_JAVA_OPTS[@]}" -cp "$KAFKA_LIBS/*" kafka.tools.StorageTool format \
    --config "$KAFKA_CONF" --cluster-id "$cluster_id" --standalone \
    --add-scram "SCRAM-SHA-512=[name=admin,password=$(secret admin)]" \
    --add-scram "SCRAM-SHA-512=[name=order,password=$(secret order)]" \
    --add-scram "SCRAM-SHA-256=[name=order,password=$(secret order)]" \
    --add-scram "SCRAM-SHA-512=[name=intruder,password=$(secret intruder)]" \
    >>"$LOG_DIR/kafka.log" 2>&1 ||
    die kafka "$LOG_DIR/kafka.log" "formatting storage in $KAFKA_DATA failed"
}

start_secure_kafka() {
  local signature="secure $KAFKA_VERSION $KAFKA_PORT $KAFKA_CONTROLLER_PORT $KAFKA_MTLS_PORT"
  running_as kafka "$signature" && return 0
  KAFKA_STARTED=1
  local port
  for port in "$KAFKA_PORT" "$KAFKA_CONTROLLER_PORT" "$KAFKA_MTLS_PORT"; do
    port_open "$port" && die kafka "" "127.0.0.1:$port is already in use; set" \
      "STACK_SECURE_KAFKA_PORT / STACK_SECURE_KAFKA_CONTROLLER_PORT / STACK_SECURE_KAFKA_MTLS_PORT"
  done
  write_secure_kafka_config
  format_secure_kafka_storage
  say "starting secured Kafka $KAFKA_VERSION on SASL_SSL://$KAFKA_BOOTSTRAP"
  launch kafka "$signature" "$LOG_DIR/kafka.log" "$KAFKA_HOME" \
    java -Xms256m -Xmx768m -XX:+UseG1GC -XX:MaxGCPauseMillis=20 -XX:+ExitOnOutOfMemoryError \
    -Djava.awt.headless=true "-Dkafka.logs.dir=$LOG_DIR" \
    "-Dlog4j2.configurationFile=$CONF_DIR/log4j2-broker.xml" \
    -cp "$KAFKA_LIBS/*" kafka.Kafka "$KAFKA_CONF"
}

secure_kafka_setup() {
  local deadline=$((SECONDS + KAFKA_TIMEOUT))
  until port_open "$KAFKA_PORT"; do
    our_pid kafka >/dev/null || die kafka "$LOG_DIR/kafka.log" "the broker exited during start-up"
    ((SECONDS < deadline)) ||
      die kafka "$LOG_DIR/kafka.log" "did not open $KAFKA_BOOTSTRAP within ${KAFKA_TIMEOUT}s"
    sleep 0.5
  done
  [[ -z $KAFKA_STARTED && -f $RUN_DIR/kafka.setup ]] && return 0
  local src=$CONF_DIR/SecureSetup.java class=$KAFKA_TOOLS/SecureSetup.class
  if [[ ! -f $class || $src -nt $class ]]; then
    mkdir -p -- "$KAFKA_TOOLS"
    javac -nowarn -d "$KAFKA_TOOLS" -cp "$KAFKA_LIBS/*" "$src" >>"$LOG_DIR/fetch.log" 2>&1 ||
      die kafka "$LOG_DIR/fetch.log" "could not compile $src"
  fi
  java "${TOOL_JAVA_OPTS[@]}" -cp "$KAFKA_TOOLS:$KAFKA_LIBS/*" SecureSetup "$KAFKA_BOOTSTRAP" \
    "$KAFKA_HOME/admin.properties" "$PARTITIONS" "$KAFKA_TIMEOUT" order "$SECURE_PREFIXES" \
    "${TOPICS[@]}" 2>>"$LOG_DIR/kafka-setup.log" | sed 's/^/stack: kafka: /' ||
    die kafka "$LOG_DIR/kafka-setup.log" "creating ACLs and topics failed"
  touch "$RUN_DIR/kafka.setup"
}

ensure_secure_pg_cluster() {
  ensure_pg_cluster
  local confd=/etc/postgresql/$PG_VERSION/$PG_CLUSTER/conf.d pgtls=$PG_DIR/tls
  # The server reads its key as postgres and refuses one others can read.
  mkdir -p -- "$pgtls"
  install -o postgres -g postgres -m 600 "$TLS_DIR/server.key" "$pgtls/server.key"
  install -o postgres -g postgres -m 644 "$TLS_DIR/server.pem" "$pgtls/server.pem"
  install -o postgres -g postgres -m 644 "$TLS_DIR/ca.pem" "$pgtls/ca.pem"
  cat >"$confd/zz-ordersaga.conf" <<EOF
# Generated by scripts/stack (STACK_SECURE=1) for $REPO_ROOT
listen_addresses = '127.0.0.1'
ssl = on
ssl_cert_file = '$pgtls/server.pem'
ssl_key_file = '$pgtls/server.key'
ssl_ca_file = '$pgtls/ca.pem'
ssl_min_protocol_version = 'TLSv1.2'
password_encryption = 'scram-sha-256'
EOF
  # TLS or nothing for the application role; the postgres superuser only over the local
  # socket (peer), for this script.
  cat >"/etc/postgresql/$PG_VERSION/$PG_CLUSTER/pg_hba.conf" <<'EOF'
# Generated by scripts/stack (STACK_SECURE=1).
local   all     postgres                peer
hostssl order   order     127.0.0.1/32  scram-sha-256
hostssl order   order     ::1/128       scram-sha-256
EOF
  chown -R postgres:postgres "$confd" "/etc/postgresql/$PG_VERSION/$PG_CLUSTER/pg_hba.conf"
}

ensure_secure_pg_role() {
  local password
  password=$(secret postgres)
  as_postgres psql --cluster "$PG_VERSION/$PG_CLUSTER" -X -q -v ON_ERROR_STOP=1 -d postgres \
    >>"$LOG_DIR/postgres-admin.log" 2>&1 <<SQL ||
SET log_statement = 'none';
DO \$\$
BEGIN
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'order') THEN
    CREATE ROLE "order" LOGIN PASSWORD '$password';
  ELSE
    ALTER ROLE "order" LOGIN PASSWORD '$password';
  END IF;
END
\$\$;
SELECT 'CREATE DATABASE "order" OWNER "order" ENCODING ''UTF8'''
WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = 'order')
\gexec
SQL
    die postgres "$LOG_DIR/postgres-admin.log" "creating role/database \"order\" failed"
}

ensure_nginx() {
  command -v nginx >/dev/null 2>&1 && return 0
  # Debian's package would start a system-wide nginx on port 80; a policy-rc.d that says
  # "no" keeps it from starting (only made if the machine has none).
  local made=
  if [[ ! -e /usr/sbin/policy-rc.d ]]; then
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
    chmod +x /usr/sbin/policy-rc.d
    made=1
  fi
  apt_install nginx-light
  [[ -z $made ]] || rm -f /usr/sbin/policy-rc.d
}

write_nginx_config() {
  mkdir -p -- "$NGINX_DIR/tmp"
  chown nobody:nogroup "$NGINX_DIR/tmp"
  # The workers (user nobody) read the password file per request; nobody else may.
  local hash
  hash=$(openssl passwd -6 -stdin <"$SECRETS_DIR/registry.password")
  (umask 077 && printf 'order:%s\n' "$hash" >"$NGINX_DIR/htpasswd")
  chown nobody:nogroup "$NGINX_DIR/htpasswd"
  cat >"$NGINX_DIR/nginx.conf" <<EOF
# Generated by scripts/stack (STACK_SECURE=1).
user nobody nogroup;
worker_processes 1;
pid $RUN_DIR/nginx.pid.nginx;
error_log $LOG_DIR/nginx-error.log warn;
events { worker_connections 256; }
http {
  access_log $LOG_DIR/nginx-access.log;
  client_body_temp_path $NGINX_DIR/tmp/body;
  proxy_temp_path $NGINX_DIR/tmp/proxy;
  fastcgi_temp_path $NGINX_DIR/tmp/fastcgi;
  uwsgi_temp_path $NGINX_DIR/tmp/uwsgi;
  scgi_temp_path $NGINX_DIR/tmp/scgi;
  server {
    listen 127.0.0.1:$SECURE_REGISTRY_PORT ssl;
    ssl_certificate $TLS_DIR/server.pem;
    ssl_certificate_key $TLS_DIR/server.key;
    ssl_protocols TLSv1.2 TLSv1.3;
    auth_basic "order-saga registry";
    auth_basic_user_file $NGINX_DIR/htpasswd;
    location / {
      proxy_pass http://127.0.0.1:$PLAIN_REGISTRY_PORT;
      proxy_set_header Host \$host;
      proxy_set_header X-Forwarded-Proto https;
      # The registry must not see (or log) the caller's credentials.
      proxy_set_header Authorization "";
    }
  }
}
EOF
}

start_nginx() {
  local signature="nginx $SECURE_REGISTRY_PORT $PLAIN_REGISTRY_PORT"
  write_nginx_config
  running_as nginx "$signature" && return 0
  port_open "$SECURE_REGISTRY_PORT" &&
    die registry "" "127.0.0.1:$SECURE_REGISTRY_PORT is already in use; set STACK_SECURE_REGISTRY_PORT"
  say "starting nginx (https, basic auth) on 127.0.0.1:$SECURE_REGISTRY_PORT in front of the registry on $PLAIN_REGISTRY_PORT"
  launch nginx "$signature" "$LOG_DIR/nginx.log" "$NGINX_DIR" \
    nginx -c "$NGINX_DIR/nginx.conf" -p "$NGINX_DIR" -g 'daemon off;'
}

# A few tries: a registry that has just started can drop a connection nginx hands it
# (nginx then answers 502), which is not the secured path being down.
secure_registry_answers() {
  local try
  for try in 1 2 3 4 5; do
    [[ $(curl -s -o /dev/null -m 3 -w '%{http_code}' --cacert "$TLS_DIR/ca.pem" \
      -u "order:$(secret registry)" "$REGISTRY_URL/subjects" 2>/dev/null) == 200 ]] && return 0
    ((try < 5)) && sleep 1
  done
  return 1
}

# Values are shell words: the file is meant for `set -a; . .stack/secure/env; set +a`, and
# the database URL holds an `&`.
write_secure_env() {
  (umask 077 && cat >"$STACK_DIR/client.properties.tmp" <<EOF
security.protocol=SASL_SSL
sasl.mechanism=SCRAM-SHA-512
sasl.username=order
sasl.password=$(secret order)
ssl.ca.location=$TLS_DIR/ca.pem
EOF
  )
  mv -- "$STACK_DIR/client.properties.tmp" "$STACK_DIR/client.properties"
  cat >"$ENV_FILE.tmp" <<EOF
ORDER_SAGA_BOOTSTRAP=$KAFKA_BOOTSTRAP
ORDER_SAGA_KAFKA_SECURITY_PROTOCOL=sasl_ssl
ORDER_SAGA_KAFKA_SASL_MECHANISM=SCRAM-SHA-512
ORDER_SAGA_KAFKA_SASL_USERNAME=order
ORDER_SAGA_KAFKA_SASL_PASSWORD_FILE=$SECRETS_DIR/order.password
ORDER_SAGA_KAFKA_SSL_CA_FILE=$TLS_DIR/ca.pem
ORDER_SAGA_REGISTRY_URL=$REGISTRY_URL
ORDER_SAGA_REGISTRY_CA_FILE=$TLS_DIR/ca.pem
ORDER_SAGA_REGISTRY_USERNAME=order
ORDER_SAGA_REGISTRY_PASSWORD_FILE=$SECRETS_DIR/registry.password
ORDER_SAGA_DATABASE_URL='$DATABASE_URL'
ORDER_SAGA_DATABASE_PASSWORD_FILE=$SECRETS_DIR/postgres.password
STACK_PARTITIONS=$PARTITIONS
STACK_SECURE_CLIENT_PROPERTIES=$STACK_DIR/client.properties
STACK_SECURE_INTRUDER_USERNAME=intruder
STACK_SECURE_INTRUDER_PASSWORD_FILE=$SECRETS_DIR/intruder.password
STACK_SECURE_OTHER_CA_FILE=$TLS_DIR/other-ca.pem
STACK_SECURE_SECRETS_DIR=$SECRETS_DIR
STACK_SECURE_MTLS_BOOTSTRAP=127.0.0.1:$KAFKA_MTLS_PORT
STACK_SECURE_CLIENT_CERT_FILE=$TLS_DIR/client.pem
STACK_SECURE_CLIENT_KEY_FILE=$TLS_DIR/client.key
EOF
  mv -- "$ENV_FILE.tmp" "$ENV_FILE"
}

secure_cmd_up() {
  local started=$SECONDS
  ensure_command curl curl
  ensure_command javac openjdk-17-jdk-headless
  ensure_command openssl openssl
  ensure_kafka_libs
  ensure_kafka_tools
  ensure_nginx
  ensure_secrets
  ensure_certs
  ensure_client_cert
  # The registry behind nginx is the plaintext stack's: it must answer first.
  [[ $(curl -s -o /dev/null -m 3 -w '%{http_code}' \
    "http://127.0.0.1:$PLAIN_REGISTRY_PORT/apis/ccompat/v7/subjects" 2>/dev/null) == 200 ]] ||
    die registry "" "no registry on 127.0.0.1:$PLAIN_REGISTRY_PORT to put https in front of;" \
      "run scripts/stack up first"
  local pg_running=
  if pg_running_here; then
    pg_running=1
  else
    ensure_postgres_installed
    ensure_secure_pg_cluster
    check_pg_port_free
  fi
  start_secure_kafka
  if [[ -z $pg_running ]]; then
    start_postgres
  fi
  wait_postgres
  ensure_secure_pg_role
  start_nginx
  secure_kafka_setup
  local deadline=$((SECONDS + 30))
  until secure_registry_answers; do
    ((SECONDS < deadline)) || die registry "$LOG_DIR/nginx-error.log" "$REGISTRY_URL did not answer 200"
    sleep 0.5
  done
  write_secure_env
  say "secured stack up in $((SECONDS - started))s; settings in $ENV_FILE"
  secure_cmd_status
}

secure_cmd_status() {
  local rc=0 state
  if port_open "$KAFKA_PORT"; then state=up; else state=down rc=1; fi
  printf '%-10s %-60s %s\n' kafka "SASL_SSL://$KAFKA_BOOTSTRAP" "$state"
  if port_open "$KAFKA_MTLS_PORT"; then state=up; else state=down rc=1; fi
  printf '%-10s %-60s %s\n' kafka "SSL://127.0.0.1:$KAFKA_MTLS_PORT (mutual TLS)" "$state"
  if [[ -d $SECRETS_DIR ]] && secure_registry_answers; then state=up; else state=down rc=1; fi
  printf '%-10s %-60s %s\n' registry "$REGISTRY_URL" "$state"
  if command -v pg_isready >/dev/null && pg_isready -q -h 127.0.0.1 -p "$PG_PORT" -t 2; then
    state=up
  else
    state=down rc=1
  fi
  printf '%-10s %-60s %s\n' postgres "postgres://order@127.0.0.1:$PG_PORT/order (verify-full)" "$state"
  return "$rc"
}

secure_cmd_down() {
  stop_process nginx 10
  stop_process kafka 60
  stop_postgres
  rm -f -- "$ENV_FILE" "$RUN_DIR/kafka.setup"
}

secure_cmd_reset() {
  secure_cmd_down
  if command -v pg_lsclusters >/dev/null && [[ -n $(pg_cluster_info "$PG_CLUSTER") ]]; then
    say "dropping PostgreSQL cluster $PG_CLUSTER"
    pg_dropcluster --stop "$PG_VERSION" "$PG_CLUSTER" >/dev/null 2>&1 ||
      die postgres "" "pg_dropcluster $PG_VERSION $PG_CLUSTER failed"
  fi
  say "deleting $STACK_DIR (certificates and secrets too)"
  rm -rf -- "$STACK_DIR"
}

secure_main() {
  local cmd=${1:-}
  case $cmd in
    up | down | status | reset) ;;
    *)
      echo "usage: STACK_SECURE=1 scripts/stack up|down|status|reset" >&2
      exit 2
      ;;
  esac
  check_number STACK_PARTITIONS "$PARTITIONS"
  check_number STACK_REGISTRY_PORT "$REGISTRY_PORT"
  secure_setup_vars
  if [[ $cmd == status ]]; then
    secure_cmd_status
    return
  fi
  mkdir -p -- "$LOG_DIR" "$RUN_DIR"
  exec 9>"$STACK_DIR/.lock"
  if ! flock -n 9; then
    say "waiting for another secured scripts/stack command in this checkout to finish"
    flock -w 300 9 || die stack "" "another scripts/stack command held $STACK_DIR/.lock for 300s"
  fi
  "secure_cmd_$cmd"
}
