#!/usr/bin/env bash
# tests/soak/soak.sh - one seeded soak run (issue 18, docs/reliability.md):
# steady load on several pipeline kinds at once, two relays in one group,
# and faults drawn from the seed; at the end the delivery invariant is
# checked per pipeline and printed as one line each.
#
#   SOAK_SECONDS  length of the loaded part (default 600)
#   SOAK_SEED     the schedule's seed (default: random, printed); the same
#                 seed gives the same schedule of faults
#   SOAK_FAULT_EVERY  seconds between faults (default 12)
#   SOAK_FAULTS   the kinds drawn from, with repeats as weights (default
#                 "kill9 kill9 pause nats pg partition")
#
# Pipelines (all on a private PostgreSQL and a private nats-server, so the
# faults touch nothing else; two relays r1, r2 share them):
#   o-nats   outbox "so"          -> NATS stream SOAK_OUT   (dedup: Nats-Msg-Id)
#   o-file   the same outbox      -> file                   (consumer dedups by key)
#   c-file   CDC of table soak_t  -> file
#   c-nats   CDC of table soak_t  -> NATS stream SOAK_CDC
#   i-nats   NATS stream SOAK_IN  -> inbox soak_inbox       (dedup: event_id)
# Load: every tick one transaction writes an outbox event, inserts row i into
# soak_t and updates row i-5, and records i in soak_ledger; a publisher puts
# messages with unique Nats-Msg-Ids into SOAK_IN.
# Faults, one every SOAK_FAULT_EVERY seconds, kind drawn from the seed:
#   kill9   kill -9 of one relay (mid-batch under this load), restarted 1-3 s later
#   pause   SIGSTOP of one relay for 3-10 s, then SIGCONT
#   nats    kill -9 of nats-server, restarted on the same store 1-3 s later
#   pg      immediate-mode restart of PostgreSQL
#   partition  (root, where network namespaces work) relay r2 runs in a
#           network namespace joined to the host by a veth pair; its link
#           goes down for 4-12 s: packets to PostgreSQL and NATS are
#           dropped, no TCP reset. PostgreSQL drops the silent sessions after
#           ~6 s (server keepalives), so r1 takes r2's pipelines over while r2
#           still believes it owns them: r2 must not acknowledge anything
#           afterwards (the fencing case). SOAK_PARTITION=0 turns it off.
# Invariant, per pipeline: every event the ground truth holds (the ledger,
# the rows of soak_t, the messages stored in SOAK_IN) is in the sink (lost =
# 0); after the sink's dedup layer no event twice; the dead-letter table
# empty (nothing here is meant to fail).
#
# TAP output; the summary lines start with "# soak:". Exit 1 when an
# invariant does not hold.
. "$(dirname "$0")/../integration/lib.sh"
. "$(dirname "$0")/../integration/nats_lib.sh"

SECS=${SOAK_SECONDS:-600}
SEED=${SOAK_SEED:-$(( $(date +%s) % 100000 ))}
EVERY=${SOAK_FAULT_EVERY:-12}
RANDOM=$SEED   # from here on, $RANDOM draws the schedule of this seed
diag "soak: seed $SEED, $SECS s of load, a fault every $EVERY s"

# ---- a network namespace for r2 (partition faults), where possible ---------
NETNS=""
soak_net_cleanup() { [ -n "$NETNS" ] && ip netns del "$NETNS" 2>/dev/null; ip link del "skh$$" 2>/dev/null; return 0; }
trap '_nats_cleanup; _cleanup; soak_net_cleanup' EXIT
if [ "$(id -u)" = 0 ] && [ "${SOAK_PARTITION:-1}" = 1 ]; then
    net=10.213.$(( $$ % 250 + 1 ))
    HOSTIP=$net.1 NSIP=$net.2
    if ip netns add "soak$$" 2>/dev/null; then
        NETNS=soak$$
        if ! { ip link add "skh$$" type veth peer name "skn$$" && ip link set "skn$$" netns "$NETNS" \
               && ip addr add "$HOSTIP/30" dev "skh$$" && ip link set "skh$$" up \
               && ip netns exec "$NETNS" ip addr add "$NSIP/30" dev "skn$$" \
               && ip netns exec "$NETNS" ip link set "skn$$" up \
               && ip netns exec "$NETNS" ip link set lo up; } 2>/dev/null; then
            soak_net_cleanup; NETNS=""
        fi
    fi
fi
if [ -n "$NETNS" ]; then
    # both relays and the tools reach the servers at the host's veth address;
    # the server drops a silent session after ~6 s (keepalives, user timeout)
    PRIV_PG_OPTIONS="-c listen_addresses=127.0.0.1,$HOSTIP -c tcp_keepalives_idle=2 -c tcp_keepalives_interval=1 -c tcp_keepalives_count=3 -c tcp_user_timeout=6000"
    PRIV_NATS_ADDR=$HOSTIP
    diag "soak: relay r2 runs in network namespace $NETNS ($NSIP), partitions enabled"
else
    diag "soak: no network namespace (not root, or ip netns failed): no partition faults"
fi
start_private_pg
if [ -n "$NETNS" ]; then
    echo "host all all $net.0/30 trust" >> "$PRIV_DIR/data/pg_hba.conf"
    "${PSQL[@]}" -d postgres -c "SELECT pg_reload_conf()" >/dev/null
    RELAY_URL="postgresql://postgres@$HOSTIP:$PRIV_PORT/$TEST_DB"
fi
setup_db
start_private_nats N
NURL=$(priv_nats_url N)
NATSCLI_URL=$NURL
OUT=$TEST_TMP/o-file.jsonl
CDC=$TEST_TMP/c-file.jsonl

natscli stream-add SOAK_OUT 'soak.out.>' --dup-ms 3600000 >/dev/null
natscli stream-add SOAK_CDC 'soak.cdc.>' --dup-ms 3600000 >/dev/null
natscli stream-add SOAK_IN 'soak.in.>' >/dev/null
sql "SELECT pgtrickle.enable_outbox('so');
     CREATE TABLE soak_t (id bigint PRIMARY KEY, v int NOT NULL);
     CREATE TABLE soak_ledger (i bigint PRIMARY KEY);
     CREATE PUBLICATION soak_pub FOR TABLE soak_t;
     SELECT pgtrickle.create_inbox('soak_inbox');" >/dev/null
nats_cfg() { echo "{\"type\":\"nats\",\"url\":\"$NURL\",\"stream\":\"$1\",\"subject_template\":\"$2\",\"ack_timeout_ms\":2000}"; }
sql "SELECT pgtrickle.set_relay_outbox('o-nats', 'so', NULL, '$(nats_cfg SOAK_OUT 'soak.out.{op}')');
     SELECT pgtrickle.set_relay_outbox('o-file', 'so', NULL, '$(file_sink "$OUT")');
     SELECT pgtrickle.set_relay_cdc('c-file', '{\"source\":{\"publication\":\"soak_pub\",\"slot\":\"soak_file\"},
                                     \"sink\":$(file_sink "$CDC")}');
     SELECT pgtrickle.set_relay_cdc('c-nats', '{\"source\":{\"publication\":\"soak_pub\",\"slot\":\"soak_nats\"},
                                     \"sink\":$(nats_cfg SOAK_CDC 'soak.cdc.{op}')}');
     SELECT pgtrickle.set_relay_inbox('i-nats', 'soak_inbox',
            '{\"type\":\"nats\",\"url\":\"$NURL\",\"stream\":\"SOAK_IN\",\"durable_name\":\"soak\",\"ack_wait_seconds\":5}');" >/dev/null

relay_up() {   # r2 runs in the namespace when there is one
    if [ "$1" = r2 ] && [ -n "$NETNS" ]; then
        local -a RELAY_WRAP=(ip netns exec "$NETNS")   # seen by start_relay (dynamic scope)
        RELAY_HOST=$NSIP start_relay "$1" --relay-group-id soak --shutdown-timeout 5s
    else
        start_relay "$1" --relay-group-id soak --shutdown-timeout 5s
    fi
}
RELAY_LOG_LEVEL=info
relay_up r1
relay_up r2

# ---- load ------------------------------------------------------------------------
# One psql session per 20 ticks, each tick its own transaction; a tick whose
# transaction fails (PostgreSQL restarting) is simply not in the ledger.
load_pg() {
    local i=0 end=$1
    while [ "$(date +%s)" -lt "$end" ]; do
        local sqlt=""
        for _ in $(seq 1 20); do
            i=$((i + 1))
            sqlt+="BEGIN; SELECT pgtrickle.outbox_write('so', '[{\"i\":$i}]');
                   INSERT INTO soak_t VALUES ($i, 0); UPDATE soak_t SET v = v + 1 WHERE id = $((i - 5));
                   INSERT INTO soak_ledger VALUES ($i); COMMIT;"
        done
        psql -X -q -At -h 127.0.0.1 -p "$PRIV_PORT" -U postgres -d "$TEST_DB" -c "$sqlt" >/dev/null 2>&1
        sleep 0.2
    done
}
load_nats() {
    local b=0 end=$1
    while [ "$(date +%s)" -lt "$end" ]; do
        b=$((b + 1))
        natscli pub-many soak.in.x 20 --id-prefix "in-$b-" --data "{\"b\":$b}" >/dev/null 2>&1
        sleep 0.2
    done
}
T_END=$(( $(date +%s) + SECS ))
load_pg "$T_END" & LOAD_PG=$!
load_nats "$T_END" & LOAD_NATS=$!

# ---- faults ------------------------------------------------------------------------
declare -A FAULTS=([kill9]=0 [pause]=0 [nats]=0 [pg]=0 [partition]=0)
read -r -a KINDS <<<"${SOAK_FAULTS:-kill9 kill9 pause nats pg partition}"
if [ -z "$NETNS" ]; then   # no namespace: draw from the rest
    kinds=(); for k in "${KINDS[@]}"; do [ "$k" = partition ] || kinds+=("$k"); done; KINDS=("${kinds[@]}")
fi
pick_relay() { if [ $((RANDOM % 2)) = 0 ]; then echo r1; else echo r2; fi; }
while [ $(( $(date +%s) + EVERY )) -lt "$T_END" ]; do
    sleep "$EVERY"
    k=${KINDS[$((RANDOM % ${#KINDS[@]}))]}
    r=$(pick_relay)
    d=$(( 1 + RANDOM % 3 ))
    case $k in
        kill9) kill9_relay "$r"; sleep "$d"; relay_up "$r" ;;
        pause) p=$(( 3 + RANDOM % 8 )); kill -STOP "$(relay_pid "$r")"; sleep "$p"; kill -CONT "$(relay_pid "$r")" ;;
        nats)  kill -9 "${PRIV_NATS_PIDS[N]}"; wait "${PRIV_NATS_PIDS[N]}" 2>/dev/null; sleep "$d"; start_private_nats N ;;
        pg)    _as_pg "$PGT_PGBIN/pg_ctl" -D "$PRIV_DIR/data" -m immediate -w stop >/dev/null 2>&1; private_pg_start ;;
        partition) p=$(( 4 + RANDOM % 9 )); ip link set "skh$$" down; sleep "$p"; ip link set "skh$$" up ;;
    esac
    FAULTS[$k]=$(( FAULTS[$k] + 1 ))
    case $k in kill9|pause) who=" ($r)" ;; partition) who=" (r2, $p s)" ;; *) who="" ;; esac
    diag "soak: t+$(( SECS - (T_END - $(date +%s)) )) s fault $k$who"
done
wait "$LOAD_PG" "$LOAD_NATS"
for r in r1 r2; do kill -0 "$(relay_pid "$r")" 2>/dev/null || relay_up "$r"; done

# ---- drain and check -----------------------------------------------------------------
LEDGER=$(sql "SELECT count(*) FROM soak_ledger")
ROWS_UPDATED=$(sql "SELECT count(*) FROM soak_t WHERE v > 0")
IN_STORED=$(natscli stream-info SOAK_IN | jq -r .messages)
drained() {
    [ "$(lines "$OUT")" -ge "$LEDGER" ] && [ "$(stream_count SOAK_OUT "$NURL")" -ge "$LEDGER" ] \
        && [ "$(lines "$CDC")" -ge $((LEDGER + ROWS_UPDATED)) ] \
        && [ "$(stream_count SOAK_CDC "$NURL")" -ge $((LEDGER + ROWS_UPDATED)) ] \
        && [ "$(sql "SELECT count(*) FROM pgtrickle.soak_inbox")" -ge "$IN_STORED" ]
}
wait_until 180 drained
sleep 2   # late duplicates, if any, land now
sql "COPY (SELECT i FROM soak_ledger) TO STDOUT" > "$TEST_TMP/ledger.txt"
sql "COPY (SELECT id, v FROM soak_t) TO STDOUT" > "$TEST_TMP/rows.txt"
sql "COPY (SELECT event_id FROM pgtrickle.soak_inbox) TO STDOUT" > "$TEST_TMP/inbox.txt"
DLQ=$(sql "SELECT count(*) FROM pgtrickle.relay_dlq")
natscli dump SOAK_OUT > "$TEST_TMP/out.dump"
natscli dump SOAK_CDC > "$TEST_TMP/cdc.dump"
natscli dump SOAK_IN > "$TEST_TMP/in.dump"
for r in r1 r2; do stop_relay "$r"; done

faults=""; for k in kill9 pause nats pg partition; do faults+="$k=${FAULTS[$k]} "; done
report=$(python3 "$(dirname "$0")/check.py" "$TEST_TMP" "$faults" "$SEED") ; rc=$?
while IFS= read -r line; do diag "soak: $line"; done <<<"$report"
ok "$rc" "every produced event is in its sink, once after dedup (seed $SEED)"
is "$DLQ" 0 "the dead-letter table is empty"
done_testing
