#!/usr/bin/env bash
# Rollup speed: one busy day of minute aggregates (ROWS rows in all, spread over the
# five minute tables like a real day: totals, protocols, and top keys per AS, IP and
# port report) loaded straight into a throwaway PostgreSQL 15, then
# `flowstage-collector rollup` run as the timer would the next morning: five minutes,
# hours, the day, its week, month and year. Prints the time of the whole run and per
# level.
#
#   bash scripts/bench-rollup.sh                # 1 M minute rows
#   ROWS=5000000 bash scripts/bench-rollup.sh
#
# Needs PostgreSQL 15 server binaries. Loopback only (a unix socket); removes what it made.
set -euo pipefail
cd "$(dirname "$0")/.."
ROWS=${ROWS:-1000000}

cargo build --release --locked --bin flowstage-collector >&2
bin=target/release/flowstage-collector
work=$(mktemp -d /tmp/flowstage-rollupbench-XXXXXX)
. scripts/throwaway-pg.sh
cleanup() {
    pg_stop
    rm -rf "$work"
}
trap cleanup EXIT
pg_start -c shared_buffers=512MB
port=$pgport
"$bin" purge --config /dev/null --database "$url" --dry-run >/dev/null

# Per interface-minute and direction: 1 totals + 3 protocols + 2 sides × 8 keys × 3
# kinds = 52 rows; interfaces = ROWS / (1440 × 2 × 52).
ifaces=$(( ROWS / (1440 * 2 * 52) + 1 ))
day=$(date -u -d yesterday +%Y-%m-%d)
echo "# loading $day: $ifaces interfaces × 1440 minutes × 2 directions, about $ROWS minute rows" >&2
psql -h "$work" -p "$port" -U postgres -q <<SQL
\o /dev/null
SELECT flowstage_ensure_day('$day');
\o
INSERT INTO exporters (address) SELECT ('10.0.0.' || e)::inet FROM generate_series(1, 10) e;
INSERT INTO interfaces (exporter_id, ifindex) SELECT 1 + (i % 10), i FROM generate_series(1, $ifaces) i;
CREATE TEMP TABLE b AS SELECT m AS minute, i.exporter_id, i.ifindex, d AS direction
  FROM generate_series(timestamptz '$day 00:00Z', timestamptz '$day 23:59Z', interval '1 minute') m,
       interfaces i, generate_series(0, 1) d;
INSERT INTO flow_totals SELECT minute, exporter_id, ifindex, direction, 1, 8000000, 6000, 300 FROM b;
INSERT INTO flow_proto SELECT minute, exporter_id, ifindex, direction, p, 2000000, 2000, 100 FROM b, (VALUES (1), (6), (17)) v(p);
INSERT INTO flow_as SELECT minute, exporter_id, ifindex, direction, s, 64500 + (k * 13 + extract(minute FROM minute)::int) % 300, 900000, 700, 30
  FROM b, generate_series(0, 1) s, generate_series(1, 8) k;
INSERT INTO flow_ip SELECT minute, exporter_id, ifindex, direction, s,
    ('10.' || ifindex % 200 || '.' || k || '.' || (extract(minute FROM minute)::int * 7 + k) % 250)::inet, 900000, 700, 30
  FROM b, generate_series(0, 1) s, generate_series(1, 8) k;
INSERT INTO flow_port SELECT minute, exporter_id, ifindex, direction, s, (k * 1009 + extract(minute FROM minute)::int) % 65536, 900000, 700, 30
  FROM b, generate_series(0, 1) s, generate_series(1, 8) k;
ANALYZE;
SQL
rows=$(psql -h "$work" -p "$port" -U postgres -qtAc "SELECT (SELECT count(*) FROM flow_totals) + (SELECT count(*) FROM flow_proto) + (SELECT count(*) FROM flow_as) + (SELECT count(*) FROM flow_ip) + (SELECT count(*) FROM flow_port)")
echo "# $rows minute rows" >&2
start=$(date +%s.%N)
"$bin" rollup --config /dev/null --database "$url" --now "$(date -u +%Y-%m-%dT%H:%M:%SZ)" --json > "$work/summary.json"
end=$(date +%s.%N)
printf 'rollup of %s minute rows (one day): %.2f s\n' "$rows" "$(echo "$end - $start" | bc)"
python3 -c "
import json
for l in json.load(open('$work/summary.json')):
    print(f\"{l['level']:<6} {l['new_buckets']:>6} buckets {l['rows_written']:>9} rows\")"
