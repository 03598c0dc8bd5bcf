# tests/integration/cdc_lib.sh - helpers shared by the cdc_*.sh tests (sourced
# after lib.sh). Replication slots belong to the whole server, so every slot
# a test makes is named after the test (cdc_<test>_...) and dropped when the
# test ends, and a test database cannot be dropped while a slot uses it.

# Drop every slot of this test's database (after its relays are gone).
cdc_drop_slots() {
    "${PSQL[@]}" -d postgres -c "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots
        WHERE database = '$TEST_DB' AND NOT active" >/dev/null 2>&1 || true
}
_cdc_cleanup() {
    for id in "${!RELAY_PIDS[@]}"; do kill -9 "${RELAY_PIDS[$id]}" 2>/dev/null; done
    wait 2>/dev/null
    RELAY_PIDS=()
    # a walsender may take a moment to notice its client is gone
    for _ in 1 2 3 4 5 6 7 8 9 10; do
        n=$("${PSQL[@]}" -d postgres -c "SELECT count(*) FROM pg_replication_slots WHERE database = '$TEST_DB' AND active" 2>/dev/null || echo 0)
        [ "${n:-0}" = 0 ] && break; sleep 0.3
    done
    cdc_drop_slots
    _cleanup
}
trap _cdc_cleanup EXIT

cdc_setup_db() { cdc_drop_slots; setup_db; }

# slot_lsn <slot>: confirmed_flush_lsn (empty when the slot does not exist)
slot_lsn() { sql "SELECT confirmed_flush_lsn FROM pg_replication_slots WHERE slot_name = '$1'"; }
# lsn_ge <a> <b>: a >= b
lsn_ge() { [ "$(sql "SELECT '$1'::pg_lsn >= '$2'::pg_lsn")" = t ]; }
slot_exists() { [ -n "$(slot_lsn "$1")" ]; }
# cdc_pipeline <name> <source json> <sink json>
cdc_pipeline() { sql "SELECT pgtrickle.set_relay_cdc('$1', '{\"source\":$2,\"sink\":$3}')" >/dev/null; }
# events <file> <jq filter>: compact JSON lines of the matching events
events() { [ -f "$1" ] && jq -rc "$2" "$1" 2>/dev/null; }
count_events() { if [ -f "$1" ]; then jq -c "$2" "$1" 2>/dev/null | wc -l | tr -d ' '; else echo 0; fi; }
status_field() { http_get "$1" /status | jq -r "$2"; }
