#!/usr/bin/env bash
# Warm each query once, then report EXPLAIN ANALYZE's execution time (best of 3).
DB="${DATABASE_URL:?set DATABASE_URL to a migrated scratch database}"
q() {
  local name="$1" sql="$2"
  psql "$DB" -Atqc "$sql" >/dev/null
  best=""
  for _ in 1 2 3; do
    t=$(psql "$DB" -Atqc "EXPLAIN (ANALYZE, BUFFERS) $sql" | sed -n 's/^Execution Time: \([0-9.]*\) ms/\1/p')
    if [ -z "$best" ] || awk "BEGIN{exit !($t < $best)}"; then best=$t; fi
  done
  printf '| %s | %s |\n' "$name" "$best"
}
q "status: counts by state" "WITH active AS (SELECT (SELECT count(*) FROM outbox.intents WHERE state = 'pending') AS pending, (SELECT count(*) FROM outbox.intents WHERE state = 'delivering') AS delivering, (SELECT count(*) FROM outbox.intents WHERE state = 'dead') AS dead), est AS (SELECT c.reltuples::bigint AS n FROM pg_catalog.pg_class c WHERE c.oid = 'outbox.intents'::regclass) SELECT a.pending, a.delivering, a.dead, CASE WHEN e.n < 100000 THEN (SELECT count(*) FROM outbox.intents WHERE state = 'done') ELSE greatest(e.n - a.pending - a.delivering - a.dead, 0) END, e.n >= 100000 FROM active a, est e"
q "status: oldest pending" "SELECT coalesce(extract(epoch FROM now() - min(created_at)), 0) FROM outbox.intents WHERE state = 'pending'"
q "status: 10 latest dead" "SELECT id, key, conversation_id, attempts, last_error, updated_at FROM outbox.intents WHERE state = 'dead' ORDER BY updated_at DESC, id DESC LIMIT 10"
q "status: lag" "SELECT lag_s FROM outbox.lag"
q "status: failed calls, last hour" "SELECT step, outcome, count(*) AS calls FROM outbox.attempts WHERE started_at > now() - interval '1 hour' AND outcome NOT IN ('ok', 'skipped') GROUP BY step, outcome ORDER BY calls DESC, step, outcome"
q "status: live relays" "SELECT id, started_at, heartbeat_at, version FROM outbox.relays WHERE heartbeat_at > now() - interval '1 minute' ORDER BY started_at"
q "status: pause" "SELECT paused_at, paused_by, reason FROM outbox.control WHERE paused_at IS NOT NULL"
q "relay gauges (every 10 s)" "SELECT l.pending, l.delivering, (SELECT count(*) FROM outbox.intents WHERE state = 'dead'), l.lag_s FROM outbox.lag l"
q "intent_status by id" "SELECT * FROM outbox.intent_status WHERE id = 500000"
q "intent_status by key" "SELECT * FROM outbox.intent_status WHERE key = 'order-500000'"
q "intent_status by conversation (100 intents)" "SELECT * FROM outbox.intent_status WHERE conversation_id = 'c4242'"
q "stuck_intents (all)" "SELECT * FROM outbox.stuck_intents"
q "dead_letters, 50 latest" "SELECT * FROM outbox.dead_letters ORDER BY died_at DESC LIMIT 50"
q "dead_letters, last 24 h" "SELECT * FROM outbox.dead_letters WHERE died_at > now() - interval '24 hours'"
q "calls_per_minute (the last hour)" "SELECT * FROM outbox.calls_per_minute"
q "lag" "SELECT * FROM outbox.lag"
q "conversation_history (100 intents)" "SELECT * FROM outbox.conversation_history WHERE conversation_id = 'c4242'"
q "user_history" "SELECT * FROM outbox.user_history WHERE user_id = 'u4242a'"
