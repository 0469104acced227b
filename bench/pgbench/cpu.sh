#!/usr/bin/env bash
# Backend CPU per producer transaction, without pgbench or Go: one session
# commits N transactions (an order row plus an outbox.intents row, or plus a
# plain JSON row) in a procedure and reads its own CPU time from
# /proc/self/schedstat before and after. Unlike commits per second, this
# moves little when other processes load the machine. Needs a superuser (it
# reads /proc through pg_read_file) and a migrated database on a Linux host:
#   bench/pgbench/cpu.sh postgres://postgres@127.0.0.1/pb
# Environment: RUNS (5), N (3000 transactions per run, after 300 to warm up).
# synchronous_commit is off in the session: the commit's wait is not CPU.
set -euo pipefail
db=${1:?usage: cpu.sh DATABASE_URL}
dir=$(dirname "$0")
payload=$(sed -n 's/^INSERT INTO outbox.intents (payload) VALUES (\(.*\));$/\1/p' "$dir/ours.sql")
psql "$db" -q <<SQL
SET client_min_messages = warning;
CREATE TABLE IF NOT EXISTS bench_orders (id bigserial PRIMARY KEY, customer text NOT NULL, placed_at timestamptz NOT NULL DEFAULT now());
CREATE TABLE IF NOT EXISTS naive_outbox (id bigserial PRIMARY KEY, payload jsonb NOT NULL, processed_at timestamptz);
CREATE OR REPLACE FUNCTION bench_cpu_ns() RETURNS bigint LANGUAGE sql AS
  \$\$ SELECT split_part(pg_read_file('/proc/self/schedstat'), ' ', 1)::bigint \$\$;
CREATE OR REPLACE PROCEDURE bench_produce(n int, target text) LANGUAGE plpgsql AS \$\$
DECLARE r text; tpl text := $payload;
BEGIN
    FOR i IN 1 .. n LOOP
        r := (random() * 2e9)::bigint::text;
        INSERT INTO bench_orders (customer) VALUES ('c' || r);
        IF target = 'ours' THEN
            INSERT INTO outbox.intents (payload) VALUES (replace(tpl, ':n', r)::jsonb);
        ELSE
            INSERT INTO naive_outbox (payload) VALUES (replace(tpl, ':n', r)::jsonb);
        END IF;
        COMMIT;
    END LOOP;
END \$\$;
SQL
run() {
	psql "$db" -qAt <<SQL | tail -1
SET synchronous_commit = off;
TRUNCATE outbox.intents, bench_orders, naive_outbox;
CALL bench_produce(300, '$1');
SELECT bench_cpu_ns() AS t0 \gset
CALL bench_produce(${N:-3000}, '$1');
SELECT round((bench_cpu_ns() - :t0) / 1000.0 / ${N:-3000}, 1);
SQL
}
for round in $(seq "${RUNS:-5}"); do
	echo "run $round: backend CPU per transaction: naive $(run naive) µs, ours $(run ours) µs"
done
