#!/usr/bin/env bash
# Report API latency of flowstage-web over a synthetic appliance: EXPORTERS exporters ×
# INTERFACES interfaces with DAYS days of hour aggregates and the last MINUTES minutes
# of minute aggregates (totals, three protocols, and KEYS keys per AS/IP/port report
# per bucket, both directions), loaded straight into a throwaway PostgreSQL 15. Then
# `flowstage-collector rollup` rolls the minutes up to hours and the hours up to days,
# weeks, months and years, as the timer does on an appliance. Every report kind is
# asked RUNS times per period through /api/v1/report as an admin; p50/p95 per kind and
# period are printed. Periods: the last hour, day, 7 and 30 days up to now, and
# yesterday and the last 28 whole days (ending at today's 00:00 UTC, as the navigator's
# calendar links do).
#
#   bash scripts/bench-web.sh                           # 50 × 20 interfaces, 30 days
#   DAYS=2 RUNS=5 bash scripts/bench-web.sh             # quick
#   KEEP=1 DAYS=8 bash scripts/bench-web.sh             # keep the database for EXPLAIN
#
# Needs PostgreSQL 15 server binaries and curl. Only loopback is used; it stops by
# itself and removes everything it made.
set -euo pipefail
cd "$(dirname "$0")/.."
EXPORTERS=${EXPORTERS:-50}
INTERFACES=${INTERFACES:-20}
DAYS=${DAYS:-30}
MINUTES=${MINUTES:-120}
KEYS=${KEYS:-5}
RUNS=${RUNS:-20}
PG=/usr/lib/postgresql/15/bin

cargo build --release --locked --bin flowstage-web --bin flowstage-setup --bin flowstage-collector >&2
work=$(mktemp -d /tmp/flowstage-webbench-XXXXXX)
chmod 755 "$work"
as_pg() { if [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- sh -c "$1"; else sh -c "$1"; fi; }
cleanup() {
    if [ -n "${KEEP:-}" ]; then
        echo "# KEEP: the database stays up at $url until $work/done exists" >&2
        while [ ! -e "$work/done" ]; do sleep 1; done
    fi
    [ -n "${web:-}" ] && kill "$web" 2>/dev/null || true
    as_pg "$PG/pg_ctl -D $work/pg -m fast stop" >/dev/null 2>&1 || true
    rm -rf "$work"
}
trap cleanup EXIT
[ "$(id -u)" -ne 0 ] || chown postgres "$work"
port=$((20000 + RANDOM % 20000))
as_pg "$PG/initdb -D $work/pg -U postgres --auth=trust --no-sync >/dev/null"
as_pg "$PG/pg_ctl -D $work/pg -l $work/pg.log -o \"-k $work -p $port -c listen_addresses='' -c fsync=off -c shared_buffers=512MB\" start >/dev/null"
url="postgresql:///bench?host=$work&port=$port&user=postgres"
psql -h "$work" -p "$port" -U postgres -qc "CREATE DATABASE bench"

# The web daemon applies the migrations on its first connection.
webport=$((40000 + RANDOM % 10000))
printf '[web]\ntls = "off"\n' > "$work/web.toml"
target/release/flowstage-web --config "$work/web.toml" --listen "127.0.0.1:$webport" --database "$url" 2>"$work/web.log" &
web=$!
for _ in $(seq 100); do curl -sf "127.0.0.1:$webport/healthz" >/dev/null && break; sleep 0.1; done

echo "# loading $EXPORTERS exporters × $INTERFACES interfaces: $DAYS days of hours, $MINUTES minutes, $KEYS keys per report kind" >&2
start=$(date +%s)
psql -h "$work" -p "$port" -U postgres -d bench -q <<SQL
\o /dev/null
SELECT count(flowstage_ensure_day(d::date)) FROM generate_series(now() - interval '$MINUTES minutes' - interval '1 day', now(), interval '1 day') d;
SELECT flowstage_ensure_rollup('hour', now() - interval '$DAYS days' - interval '1 day', now() + interval '1 day');
\o
INSERT INTO exporters (address) SELECT ('10.0.' || (e / 256) || '.' || (e % 256))::inet FROM generate_series(1, $EXPORTERS) e;
INSERT INTO interfaces (exporter_id, ifindex) SELECT e.id, i FROM exporters e, generate_series(1, $INTERFACES) i;
-- Minutes: the last MINUTES minutes. Hours: DAYS days before the first of them.
CREATE TEMP TABLE edge AS SELECT date_trunc('hour', now() - interval '$MINUTES minutes') AS hour;
CREATE TEMP TABLE buckets AS
  SELECT date_trunc('minute', now()) - m * interval '1 minute' AS minute, i.exporter_id, i.ifindex, d AS direction
  FROM generate_series(1, $MINUTES) m, interfaces i, generate_series(0, 1) d;
DELETE FROM buckets WHERE minute < (SELECT hour FROM edge);
INSERT INTO flow_totals SELECT minute, exporter_id, ifindex, direction, 1, 1500000, 1200, 40 FROM buckets;
INSERT INTO flow_proto SELECT minute, exporter_id, ifindex, direction, p, 500000, 400, 13 FROM buckets, (VALUES (6), (17), (1)) v(p);
INSERT INTO flow_as SELECT minute, exporter_id, ifindex, direction, s, 64500 + (k * 7 + ifindex) % 200, 1500000 / $KEYS, 1200 / $KEYS, 40 / $KEYS
  FROM buckets, generate_series(0, 1) s, generate_series(1, $KEYS) k;
INSERT INTO flow_ip SELECT minute, exporter_id, ifindex, direction, s, ('192.0.' || ((k * 31 + ifindex + exporter_id) % 256) || '.' || k)::inet, 1500000 / $KEYS, 1200 / $KEYS, 40 / $KEYS
  FROM buckets, generate_series(0, 1) s, generate_series(1, $KEYS) k;
INSERT INTO flow_port SELECT minute, exporter_id, ifindex, direction, s, (k * 97 + ifindex) % 65536, 1500000 / $KEYS, 1200 / $KEYS, 40 / $KEYS
  FROM buckets, generate_series(0, 1) s, generate_series(1, $KEYS) k;
CREATE TEMP TABLE hours AS
  SELECT (SELECT hour FROM edge) - h * interval '1 hour' AS bucket, i.exporter_id, i.ifindex, d AS direction
  FROM generate_series(1, $DAYS * 24) h, interfaces i, generate_series(0, 1) d;
-- In the order rollups write them: one direction (and side) together.
INSERT INTO flow_totals_hour SELECT bucket, exporter_id, ifindex, direction, 1, 90000000, 72000, 2400 FROM hours ORDER BY 4, 1;
INSERT INTO flow_proto_hour SELECT bucket, exporter_id, ifindex, direction, p, 30000000, 24000, 800 FROM hours, (VALUES (6), (17), (1)) v(p) ORDER BY 4, 1;
INSERT INTO flow_as_hour SELECT bucket, exporter_id, ifindex, direction, s, 64500 + (k * 7 + ifindex) % 200, 90000000 / $KEYS, 72000 / $KEYS, 2400 / $KEYS
  FROM hours, generate_series(0, 1) s, generate_series(1, $KEYS) k ORDER BY 4, 5, 1;
INSERT INTO flow_ip_hour SELECT bucket, exporter_id, ifindex, direction, s, ('192.0.' || ((k * 31 + ifindex + exporter_id) % 256) || '.' || k)::inet, 90000000 / $KEYS, 72000 / $KEYS, 2400 / $KEYS
  FROM hours, generate_series(0, 1) s, generate_series(1, $KEYS) k ORDER BY 4, 5, 1;
INSERT INTO flow_port_hour SELECT bucket, exporter_id, ifindex, direction, s, (k * 97 + ifindex) % 65536, 90000000 / $KEYS, 72000 / $KEYS, 2400 / $KEYS
  FROM hours, generate_series(0, 1) s, generate_series(1, $KEYS) k ORDER BY 4, 5, 1;
-- The loaded hours count as rolled up, as if the timer had run all month.
UPDATE rollup_levels SET done_from = (SELECT hour FROM edge) - interval '$DAYS days', done_to = (SELECT hour FROM edge)
  WHERE level = 'hour';
ANALYZE;
SQL
echo "# loaded in $(( $(date +%s) - start )) s" >&2
start=$(date +%s)
printf '[collector]\ntop_n = 200\n' > "$work/rollup.toml"
target/release/flowstage-collector rollup --config "$work/rollup.toml" --database "$url" >&2
psql -h "$work" -p "$port" -U postgres -d bench -qc "ANALYZE"
echo "# rolled up in $(( $(date +%s) - start )) s; $(psql -h "$work" -p "$port" -U postgres -d bench -qtAc "SELECT pg_size_pretty(pg_database_size('bench'))")" >&2

printf 'bench password\n' | target/release/flowstage-setup --config /dev/null --database "$url" users add bench --role admin --password-stdin >/dev/null 2>&1
token=$(target/release/flowstage-setup --config /dev/null --database "$url" users token bench bench 2>/dev/null | awk '{print $NF}')

today=$(date -u +%Y-%m-%dT00:00:00Z)
yesterday=$(date -u -d yesterday +%Y-%m-%dT00:00:00Z)
four_weeks=$(date -u -d '28 days ago' +%Y-%m-%dT00:00:00Z)
printf '%-10s %-10s %8s %8s %8s\n' period by p50_ms p95_ms max_ms
for period in "last-1h|-1h|now" "last-1d|-1d|now" "last-7d|-7d|now" "last-30d|-30d|now" "yesterday|$yesterday|$today" "28-days|$four_weeks|$today"; do
    IFS='|' read -r name from to <<<"$period"
    for by in total exporter interface src-as dst-as src-ip dst-ip src-port dst-port proto; do
        times=()
        for _ in $(seq "$RUNS"); do
            t=$(curl -sf -o /dev/null -w '%{time_total}' -H "Authorization: Bearer $token" \
                "127.0.0.1:$webport/api/v1/report?by=$by&from=$from&to=$to&top=20")
            times+=("$t")
        done
        printf '%s\n' "${times[@]}" | sort -n | awk -v by="$by" -v period="$name" '{ a[NR] = $1 * 1000 } END {
            p50 = a[int((NR + 1) * 0.5)]; i95 = int(NR * 0.95 + 0.999); if (i95 < 1) i95 = 1;
            printf "%-10s %-10s %8.1f %8.1f %8.1f\n", period, by, p50, a[i95], a[NR] }'
    done
done
