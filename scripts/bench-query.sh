#!/usr/bin/env bash
# Archive scan speed of `flowstage-collector query` against `nfdump -R` over the same
# flows, in one run on one machine. The generator sends FLOWS flows (IPFIX, over
# loopback, at RATE flows/s) once to nfcapd and once to a Flowstage collector; both
# write their files (nfcapd with LZ4, `-y`; Flowstage: Parquet + zstd). Then, from
# the page cache, each tool answers the same two questions RUNS times:
#   top 10 destination ports by bytes   nfdump -s dstport/bytes -n 10 | query --by dst-port --top 10
#   top 10 source addresses by bytes    nfdump -s srcip/bytes -n 10   | query --by src-ip --top 10
# and the best time of each is reported as flows/s, with the ratio Flowstage / nfdump,
# and both archives' bytes per flow. Both tools use every core (nfdump is
# multi-threaded since 1.7).
#
#   bash scripts/bench-query.sh                 # 6 M flows
#   FLOWS=1000000 RUNS=3 bash scripts/bench-query.sh
#
# Needs nfdump (apt-get install nfdump) and PostgreSQL 15 server binaries (the
# collector writes its aggregates to a throwaway cluster). Loopback only; it stops by
# itself and removes everything it made.
set -euo pipefail
cd "$(dirname "$0")/.."
FLOWS=${FLOWS:-6000000}
RATE=${RATE:-400000}
RUNS=${RUNS:-5}

cargo build --release --locked --bin flowstage-collector >&2
bin=target/release/flowstage-collector
work=$(mktemp -d /tmp/flowstage-querybench-XXXXXX)
. scripts/throwaway-pg.sh
cleanup() {
    [ -n "${nfcapd:-}" ] && kill "$nfcapd" 2>/dev/null || true
    [ -n "${collector:-}" ] && kill "$collector" 2>/dev/null || true
    pg_stop
    rm -rf "$work"
}
trap cleanup EXIT
pg_start

udp=$((40000 + RANDOM % 10000))
echo "# sending $FLOWS flows to nfcapd and to flowstage-collector" >&2
mkdir -p "$work/nfcapd"
nfcapd -y -w "$work/nfcapd" -p "$udp" -b 127.0.0.1 -B 33554432 >/dev/null 2>&1 &
nfcapd=$!
sleep 1
"$bin" gen --target "127.0.0.1:$udp" --protocol ipfix --flows "$FLOWS" --rate "$RATE" --exporters 4 --seed 9 >/dev/null 2>&1
sleep 2
kill -TERM "$nfcapd"; wait "$nfcapd" 2>/dev/null || true; nfcapd=
printf '[collector]\narchive_rotate_secs = 86400\n' > "$work/flowstage.toml"
"$bin" run --config "$work/flowstage.toml" --database "$url" --data-dir "$work/fs" --listen "127.0.0.1:$udp" 2>"$work/collector.log" &
collector=$!
sleep 1
"$bin" gen --target "127.0.0.1:$udp" --protocol ipfix --flows "$FLOWS" --rate "$RATE" --exporters 4 --seed 9 >/dev/null 2>&1
sleep 3
kill -TERM "$collector"; wait "$collector" 2>/dev/null || true; collector=

nf_flows=$(nfdump -R "$work/nfcapd" -I 2>/dev/null | awk '/^Flows:/ {s += $2} END {print s + 0}')
fs_flows=$("$bin" query --config "$work/flowstage.toml" --data-dir "$work/fs" --from -1d --to +1d --by total --format json \
    | awk -F': ' '/"flows"/ {gsub(/[^0-9]/, "", $2); print $2; exit}')
nf_bytes=$(du -sb "$work/nfcapd" | cut -f1)
fs_bytes=$(du -sb "$work/fs/archive" | cut -f1)
echo "# stored: nfcapd $nf_flows flows in $nf_bytes bytes ($(echo "scale=1; $nf_bytes / $nf_flows" | bc) B/flow), flowstage $fs_flows flows in $fs_bytes bytes ($(echo "scale=1; $fs_bytes / $fs_flows" | bc) B/flow)" >&2
# Warm the page cache.
cat "$work"/nfcapd/* "$(find "$work/fs/archive" -name '*.parquet' | head -1)" >/dev/null

best() { # command... -> best wall time in seconds over RUNS
    local b=999999 t
    for _ in $(seq "$RUNS"); do
        t=$( { TIMEFORMAT=%R; time "$@" >/dev/null 2>&1; } 2>&1 )
        b=$(echo "if ($t < $b) $t else $b" | bc)
    done
    echo "$b"
}
printf '%-22s %12s %12s %12s %12s %8s\n' question nfdump_s flowstage_s nfdump_Mf/s flowstage_Mf/s ratio
for q in "dstport:dst-port" "srcip:src-ip"; do
    nf=${q%%:*}; by=${q##*:}
    tn=$(best nfdump -R "$work/nfcapd" -s "$nf/bytes" -n 10 -q)
    tf=$(best "$bin" query --config "$work/flowstage.toml" --data-dir "$work/fs" --from -1d --to +1d --by "$by" --top 10)
    rn=$(echo "scale=1; $nf_flows / $tn / 1000000" | bc)
    rf=$(echo "scale=1; $fs_flows / $tf / 1000000" | bc)
    ratio=$(echo "scale=2; ($fs_flows / $tf) / ($nf_flows / $tn)" | bc)
    printf '%-22s %12s %12s %12s %12s %8s\n' "top 10 $nf" "$tn" "$tf" "$rn" "$rf" "$ratio"
done
