#!/usr/bin/env bash
# End-to-end throughput: generate → json (set one field) → file, 250-byte JSON records,
# through orbit-host beside a hand-written single-process loop doing the same work, in the
# same run. Prints records/s of each and the ratio (median of RUNS alternating runs).
#
#   bench/generate-json-file.sh            # 1,000,000 records, 3 runs each
#   COUNT=200000 RUNS=5 bench/generate-json-file.sh
set -euo pipefail
cd "$(dirname "$0")/.."
COUNT=${COUNT:-1000000}
RUNS=${RUNS:-3}
cargo build --release --workspace --quiet
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

orbit_rates=() base_rates=()
for i in $(seq 1 "$RUNS"); do
  rm -rf "$work"/*
  base_rates+=("$(target/release/baseline-generate-json-file "$COUNT" "$work/base.jsonl")")
  start=$(date +%s.%N)
  BENCH_COUNT=$COUNT BENCH_OUT="$work/orbit.jsonl" ORBIT_LOG=warn \
    target/release/orbit-host --state-dir "$work/state" --progress 0s bench/generate-json-file.yaml
  end=$(date +%s.%N)
  orbit_rates+=("$(echo "$COUNT / ($end - $start)" | bc -l | xargs printf '%.0f')")
  lines=$(wc -l < "$work/orbit.jsonl")
  [ "$lines" -eq "$COUNT" ] || { echo "orbit wrote $lines of $COUNT records" >&2; exit 1; }
  [ "$(head -c 300 "$work/orbit.jsonl" | head -1 | wc -c)" -ge 250 ] || { echo "records under 250 bytes" >&2; exit 1; }
done
base=$(printf '%s\n' "${base_rates[@]}" | median)
orbit=$(printf '%s\n' "${orbit_rates[@]}" | median)
echo "records:        $COUNT ($(head -1 "$work/orbit.jsonl" | wc -c) bytes per output line)"
echo "baseline loop:  $base records/s   (runs: ${base_rates[*]})"
echo "orbit-host:     $orbit records/s   (runs: ${orbit_rates[*]})"
echo "ratio:          $(echo "$orbit / $base" | bc -l | xargs printf '%.2f')x"
