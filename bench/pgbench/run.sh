#!/usr/bin/env bash
# Producer cost without Go: pgbench, 8 clients, each transaction an order
# row plus either an outbox.intents row (ours) or a plain JSON row in a
# table with only a primary key (naive). Needs a migrated database:
#   createdb pb && DATABASE_URL=postgres://postgres@127.0.0.1/pb outbox-relay migrate
#   bench/pgbench/run.sh postgres://postgres@127.0.0.1/pb
set -euo pipefail
db=${1:?usage: run.sh DATABASE_URL}
dir=$(dirname "$0")
psql "$db" -qc "CREATE TABLE IF NOT EXISTS bench_orders (id bigserial PRIMARY KEY, customer text NOT NULL, placed_at timestamptz NOT NULL DEFAULT now());
                CREATE TABLE IF NOT EXISTS naive_outbox (id bigserial PRIMARY KEY, payload jsonb NOT NULL, processed_at timestamptz);"
tps() {
	psql "$db" -qc "TRUNCATE outbox.intents, bench_orders, naive_outbox; CHECKPOINT"
	pgbench "$db" -n -c 8 -j 2 -T "${SECONDS_PER_RUN:-6}" -f "$dir/$1.sql" 2>&1 | awk '/^tps/ {printf "%.0f", $3}'
}
for round in 1 2 3; do
	n=$(tps naive)
	o=$(tps ours)
	echo "round $round: naive $n tps, ours $o tps, ratio $(awk -v o="$o" -v n="$n" 'BEGIN {printf "%.2f", o/n}')"
done
