# tests/integration/kafka_lib.sh - helpers for the Kafka tests, sourced after
# lib.sh. The shared cluster is librdkafka's mock cluster started by
# tests/services/services.sh (PGT_KAFKA_BROKERS); tests that take brokers
# down or inject broker errors start a private one (start_kmock). Topic and
# group names carry KTAG, unique per test run, so tests can run in parallel
# against the shared cluster.
: "${PGT_KAFKA_BROKERS:?kafka not started: run tests/services/services.sh start kafka}"
KCLI=${KCLI:-$(dirname "$RELAY_BIN")/tests/kcli}
[ -x "$KCLI" ] || bail "kcli not built ($KCLI): build the tests with meson"
KTAG=${TEST_NAME}_$$_$RANDOM

kcli() { "$KCLI" "$@"; }

# kafka_consume <brokers> <topics> <n> [kcli options]: records as JSON lines
kafka_consume() { "$KCLI" consume "$@" 2>>"$TEST_TMP/kcli.log"; }

# --- private mock clusters -----------------------------------------------------
declare -A KMOCK_PIDS=()
# start_kmock <id> [kmock args]: sets KMOCK_BROKERS_<id>; commands with kmock_cmd
start_kmock() {
    local id=$1; shift
    local d=$TEST_TMP/kmock_$id
    mkdir -p "$d"; rm -f "$d/ctl"; mkfifo "$d/ctl"
    "${PGT_KMOCK:?kafka not started}" "$@" <"$d/ctl" >"$d/out" 2>"$d/log" &
    KMOCK_PIDS[$id]=$!
    local fd; exec {fd}>"$d/ctl"
    eval "KMOCK_FD_$id=$fd"
    wait_until 5 "[ -s '$d/out' ]" || bail "kmock $id did not start"
    eval "KMOCK_BROKERS_$id=\$(head -1 '$d/out')"
}
kmock_brokers() { eval "echo \$KMOCK_BROKERS_$1"; }
# kmock_cmd <id> <command>: run a fault-injection command and wait for its reply
kmock_cmd() {
    local id=$1 cmd=$2 d=$TEST_TMP/kmock_$1 fd
    eval "fd=\$KMOCK_FD_$id"
    local before; before=$(wc -l <"$d/out")
    echo "$cmd" >&"$fd"
    wait_until 5 "[ \$(wc -l <'$d/out') -gt $before ]" || bail "kmock $id: no reply to '$cmd'"
    tail -1 "$d/out" | grep -q '^ok ' || bail "kmock $id: $(tail -1 "$d/out")"
}
stop_kmock() {
    local id=$1 pid=${KMOCK_PIDS[$1]:-}
    [ -n "$pid" ] || return 0
    kill -TERM "$pid" 2>/dev/null; wait "$pid" 2>/dev/null
    unset "KMOCK_PIDS[$id]"
}
_kafka_cleanup() {
    for id in "${!KMOCK_PIDS[@]}"; do kill -TERM "${KMOCK_PIDS[$id]}" 2>/dev/null; done
    _cleanup
}
trap _kafka_cleanup EXIT

# --- relay side -----------------------------------------------------------------
# pipeline_status <relay id> <pipeline>: that pipeline's /status object
pipeline_status() { http_get "$1" /status | jq -c ".pipelines[] | select(.name == \"$2\")"; }
health_status() { http_get "$1" /health | jq -r .status; }
