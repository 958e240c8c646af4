#!/usr/bin/env bash
# sFlow end to end on loopback: Flowstage (decode, aggregate every Stager dimension,
# store in PostgreSQL, archive every flow in Parquet; and once more with the archive
# off) against pmacct's sfacctd (decode, aggregate by protocol and destination port,
# print to CSV), fed the same generated flow samples
# one after the other at the same offered rates, in the same run. Reported per tool:
# samples stored, loss, and the CPU time the daemon spent per million samples (from
# /proc, user + system), which is steadier on a shared machine than wall time.
#
#   bash scripts/bench-sflow.sh [RATES...]      # samples/s, default: 100000 300000 600000
#   SECONDS_PER_RUN=5 EXPORTERS=4 bash scripts/bench-sflow.sh 200000
#
# Everything is sent to 127.0.0.1 and stops by itself. Needs PostgreSQL 15 server
# binaries and pmacct (apt-get install postgresql-15 pmacct).
set -euo pipefail
cd "$(dirname "$0")/.."
RATES=("$@")
[ ${#RATES[@]} -gt 0 ] || RATES=(100000 300000 600000)
SECS=${SECONDS_PER_RUN:-5}
EXPORTERS=${EXPORTERS:-4}
BIN=$PWD/target/release/flowstage-collector
TICK=$(getconf CLK_TCK)

cargo build --release --locked --bin flowstage-collector >&2
work=$(mktemp -d /tmp/flowstage-bench-XXXXXX)
pids=()
. scripts/throwaway-pg.sh
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    pg_stop
    rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
pg_start -c synchronous_commit=off
db_url() { echo "postgresql:///$1?host=$work&port=$pgport&user=postgres"; }
# CPU seconds (user + system) a process and its children (pmacct's plugins are
# processes of their own) have used so far.
cpu() {
    local total=0 p
    for p in "$1" $(pgrep -P "$1" || true); do
        total=$(awk -v t="$TICK" -v s="$total" '{printf "%.3f", s + ($14 + $15) / t}' "/proc/$p/stat" 2>/dev/null || echo "$total")
    done
    echo "$total"
}
send() {
    "$BIN" gen --protocol sflow --target "127.0.0.1:$1" --flows "$samples" --rate "$rate" \
        --exporters "$EXPORTERS" --seed 7 --expected "$work/expected.json" 2>/dev/null
}
row() {
    python3 - "$@" <<'EOF'
import sys
tool, rate, sent, stored, cpu = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5])
print(f"{tool:<15} {rate:>9} {sent:>10} {stored:>10} {100*(sent-stored)/sent:>7.3f} {cpu:>8.2f} {1e6*cpu/max(stored,1):>12.2f}")
EOF
}

udp=$((40000 + RANDOM % 10000))
echo "# $(date -u +%FT%TZ) $(nproc) CPUs: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
printf '%-15s %9s %10s %10s %7s %8s %12s\n' tool offered sent stored loss% cpu_s cpu_s/Msample
for rate in "${RATES[@]}"; do
    samples=$((rate * SECS))
    # Flowstage, as installed (with the Parquet archive) and with the archive off.
    for variant in flowstage flowstage-noarc; do
        db="s_${rate}_${variant//-/_}"
        psql -h "$work" -p "$pgport" -U postgres -qc "CREATE DATABASE $db"
        rm -rf "$work/data"
        if [ "$variant" = flowstage ]; then : >"$work/fs.toml"; else printf '[collector]\narchive = false\n' >"$work/fs.toml"; fi
        "$BIN" run --config "$work/fs.toml" --database "$(db_url "$db")" --listen "127.0.0.1:$((udp + 2))" \
            --sflow-listen "127.0.0.1:$udp" --data-dir "$work/data" --metrics "127.0.0.1:$((udp + 1))" \
            --stats-interval 0 2>"$work/collector.log" &
        cpid=$!; pids+=("$cpid")
        for _ in $(seq 50); do curl -sf "127.0.0.1:$((udp + 1))" >/dev/null && break; sleep 0.1; done
        before=$(cpu "$cpid")
        send "$udp"
        sleep 3
        used=$(cpu "$cpid")
        kill -TERM "$cpid"
        wait "$cpid" || true
        stored=$("$BIN" report --config /dev/null --database "$(db_url "$db")" --from -1d --to +1h --format json \
            | python3 -c 'import json,sys; print(json.load(sys.stdin)["total"]["flows"])')
        row "$variant" "$rate" "$samples" "$stored" "$(python3 -c "print($used - $before)")"
    done

    # sfacctd, the same samples at the same offered rate
    rm -f "$work/out.csv" "$work/sfacctd.log"
    cat >"$work/sfacctd.conf" <<EOF
daemonize: false
sfacctd_ip: 127.0.0.1
sfacctd_port: $udp
sfacctd_renormalize: true
sfacctd_pipe_size: 33554432
plugins: print[p]
aggregate[p]: proto, dst_port
print_output[p]: csv
print_output_file[p]: $work/out.csv
print_output_file_append[p]: true
print_refresh_time[p]: 1
logfile: $work/sfacctd.log
EOF
    sfacctd -f "$work/sfacctd.conf" >/dev/null 2>&1 &
    spid=$!; pids+=("$spid")
    for _ in $(seq 50); do grep -q "waiting for sFlow data" "$work/sfacctd.log" 2>/dev/null && break; sleep 0.1; done
    before=$(cpu "$spid")
    send "$udp"
    sleep 3
    used=$(cpu "$spid")
    # Its CSV is written every second, so nothing is lost by a hard stop; a SIGTERM
    # to sfacctd reaches its whole process group (this script too, in CI's shell).
    pkill -KILL -P "$spid" || true
    kill -KILL "$spid"; wait "$spid" 2>/dev/null || true
    stored=$(python3 - "$work/out.csv" <<'EOF'
import csv, sys
total = 0
cols = None
for row in csv.reader(open(sys.argv[1])):
    if "PACKETS" in row:
        cols = row
        continue
    if cols and len(row) == len(cols):
        total += int(row[cols.index("PACKETS")])
print(total)
EOF
)
    row sfacctd "$rate" "$samples" "$stored" "$(python3 -c "print($used - $before)")"
done
