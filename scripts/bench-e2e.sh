#!/usr/bin/env bash
# End-to-end loopback benchmark: the highest offered NetFlow rate stored with zero
# loss, for Flowstage (aggregates with all of Stager's dimensions in PostgreSQL) and
# for nfcapd (flow files), measured in the same run on the same machine.
#
#   bash scripts/bench-e2e.sh [RATES...]        # default: 1000000 1500000 2000000 2500000 3000000
#   PROTOCOLS="v5 v9 ipfix" SECONDS_PER_RUN=5 EXPORTERS=4 bash scripts/bench-e2e.sh
#   PIN=1 bash scripts/bench-e2e.sh 3000000 5000000   # receiver on CPU 1, generator on CPU 0
#
# Everything is sent to 127.0.0.1 and stops by itself. Needs PostgreSQL 15 server
# binaries and nfdump (apt-get install postgresql-15 nfdump).
set -euo pipefail
cd "$(dirname "$0")/.."
RATES=("$@")
[ ${#RATES[@]} -gt 0 ] || RATES=(1000000 1500000 2000000 2500000 3000000)
PROTOCOLS=${PROTOCOLS:-v5}
SECS=${SECONDS_PER_RUN:-5}
EXPORTERS=${EXPORTERS:-4}
PG=/usr/lib/postgresql/15/bin
BIN=$PWD/target/release/flowstage-collector
# With PIN=1 the receiver under test gets CPU 1 to itself and the generator CPU 0, so
# both tools are compared on exactly one core each.
if [ "${PIN:-0}" = 1 ]; then RECV=(taskset -c 1); SEND=(taskset -c 0); else RECV=(); SEND=(); fi

cargo build --release --locked --bin flowstage-collector >&2
work=$(mktemp -d /tmp/flowstage-bench-XXXXXX)
chmod 755 "$work"
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    as_pg "$PG/pg_ctl -D $work/pg -m fast stop" >/dev/null 2>&1 || true
    rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
as_pg() { if [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- sh -c "$1"; else sh -c "$1"; fi; }
[ "$(id -u)" -ne 0 ] || chown postgres "$work"
port=$((20000 + RANDOM % 20000))
as_pg "$PG/initdb -D $work/pg -U postgres --auth=trust --no-sync >/dev/null"
as_pg "$PG/pg_ctl -D $work/pg -l $work/pg.log -o \"-k $work -p $port -c listen_addresses='' -c fsync=off -c synchronous_commit=off\" start >/dev/null"
# The rate the generator really reached (it cannot always keep up on a busy machine).
achieved_rate() { sed -n 's/.*rate="\{0,1\}\([0-9]*\).*/\1/p' "$work/gen.log" | tail -1; }
# Send rate × SECS flows to the receiver with pid $1, then stop it with SIGTERM;
# sets $achieved and $rss (peak, MB).
measure() {
    "${SEND[@]}" "$BIN" gen --target "127.0.0.1:$udp" --protocol "$proto" --flows "$flows" --rate "$rate" \
        --exporters "$EXPORTERS" --expected "$work/expected.json" 2>"$work/gen.log"
    achieved=$(achieved_rate)
    sleep 2
    rss=$(awk '/VmHWM/ {print int($2/1024)}' "/proc/$1/status")
    kill -TERM "$1"; wait "$1" || true
}
row() {
    loss=$(python3 -c "print(f'{100*($flows-$stored)/$flows:.3f}')")
    printf '%-9s %-6s %10s %10s %10s %10s %8s %7s\n' "$1" "$proto" "$rate" "$achieved" "$flows" "$stored" "$loss" "$rss"
}
url() { echo "postgresql:///$1?host=$work&port=$port&user=postgres"; }

udp=$((40000 + RANDOM % 10000))
metrics=$((udp + 1))
echo "# $(date -u +%FT%TZ) $(nproc) CPUs: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
printf '%-9s %-6s %10s %10s %10s %10s %8s %7s\n' tool proto offered achieved sent stored loss% rss_mb
for proto in $PROTOCOLS; do
    for rate in "${RATES[@]}"; do
        flows=$((rate * SECS))
        # Flowstage
        db="b_${proto}_$rate"
        psql -h "$work" -p "$port" -U postgres -qc "CREATE DATABASE $db"
        rm -rf "$work/data"
        "${RECV[@]}" "$BIN" run --config /dev/null --database "$(url "$db")" --listen "127.0.0.1:$udp" \
            --data-dir "$work/data" --metrics "127.0.0.1:$metrics" --stats-interval 0 2>"$work/collector.log" &
        cpid=$!; pids+=("$cpid")
        for _ in $(seq 50); do curl -sf "127.0.0.1:$metrics" >/dev/null && break; sleep 0.1; done
        measure "$cpid"
        stored=$("$BIN" report --config /dev/null --database "$(url "$db")" --from -1d --to +1h --format json \
            | python3 -c 'import json,sys; print(json.load(sys.stdin)["total"]["flows"])')
        row flowstage
        # nfcapd, same offered rate
        rm -rf "$work/nfcapd" && mkdir -p "$work/nfcapd"
        "${RECV[@]}" nfcapd -w "$work/nfcapd" -p "$udp" -b 127.0.0.1 -B 33554432 >/dev/null 2>&1 &
        npid=$!; pids+=("$npid")
        sleep 1
        measure "$npid"
        stored=$(nfdump -R "$work/nfcapd" -I 2>/dev/null | awk '/^Flows:/ {s += $2} END {print s + 0}')
        row nfcapd
    done
done
