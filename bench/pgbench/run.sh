#!/usr/bin/env bash
# Producer cost without Go: pgbench clients, each transaction an order row
# plus one of
#   naive         a plain JSON row in a table with only a primary key,
#   naive_notify  the same in a table whose statement trigger always NOTIFYs
#                 (the textbook LISTEN outbox),
#   ours          an outbox.intents row (validation, order lock, wake-up check).
# Rounds interleave the three, for each client count. Needs a migrated database:
#   createdb pb && DATABASE_URL=postgres://postgres@127.0.0.1/pb outbox-relay migrate
#   bench/pgbench/run.sh postgres://postgres@127.0.0.1/pb
# Environment: CLIENTS (default "8 32"), ROUNDS (3), SECONDS_PER_RUN (6).
set -euo pipefail
db=${1:?usage: run.sh DATABASE_URL}
dir=$(dirname "$0")
psql "$db" -qc "CREATE TABLE IF NOT EXISTS bench_orders (id bigserial PRIMARY KEY, customer text NOT NULL, placed_at timestamptz NOT NULL DEFAULT now());
                CREATE TABLE IF NOT EXISTS naive_outbox (id bigserial PRIMARY KEY, payload jsonb NOT NULL, processed_at timestamptz);
                CREATE TABLE IF NOT EXISTS naive_notify_outbox (id bigserial PRIMARY KEY, payload jsonb NOT NULL, processed_at timestamptz);
                CREATE OR REPLACE FUNCTION naive_notify() RETURNS trigger LANGUAGE plpgsql AS \$\$
                BEGIN PERFORM pg_notify('naive_outbox', ''); RETURN NULL; END \$\$;
                CREATE OR REPLACE TRIGGER naive_notify_outbox_notify AFTER INSERT ON naive_notify_outbox
                    FOR EACH STATEMENT EXECUTE FUNCTION naive_notify();"
tps() {
	psql "$db" -qc "TRUNCATE outbox.intents, bench_orders, naive_outbox, naive_notify_outbox; CHECKPOINT"
	pgbench "$db" -n -c "$2" -j 2 -T "${SECONDS_PER_RUN:-6}" -f "$dir/$1.sql" 2>&1 | awk '/^tps/ {printf "%.0f", $3}'
}
ratio() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.2f", a/b}'; }
for c in ${CLIENTS:-8 32}; do
	for round in $(seq "${ROUNDS:-3}"); do
		n=$(tps naive "$c")
		m=$(tps naive_notify "$c")
		o=$(tps ours "$c")
		echo "clients $c round $round: naive $n tps, naive_notify $m tps, ours $o tps; ours/naive $(ratio "$o" "$n"), ours/naive_notify $(ratio "$o" "$m")"
	done
done
