#!/usr/bin/env bash
# HTTP sink throughput through Orbit beside a bare reqwest loop, in the same run, against a local
# blackhole server (bench/src/bin/http_blackhole.rs, answers 200):
#   generate → http sink (json_array, max_batch_records CHUNK, concurrency CONC, batch BATCH)
#   vs baseline-http: the same records, batches, chunks and concurrency with one reqwest client.
# Prints records/s and the ratio (median of RUNS alternating runs).
#
#   bench/http.sh        # COUNT=1000000 RUNS=5 BATCH=1000 CHUNK=100 CONC=4 PADS="64 1000"
set -euo pipefail
cd "$(dirname "$0")/.."
COUNT=${COUNT:-1000000}
RUNS=${RUNS:-5}
BATCH=${BATCH:-1000}
CHUNK=${CHUNK:-100}
CONC=${CONC:-4}
PADS=${PADS:-64 1000}
PORT=${PORT:-18999}
cargo build --release --workspace --quiet
work=$(mktemp -d)
target/release/http-blackhole "$PORT" &
hole=$!
trap 'kill $hole 2>/dev/null; wait $hole 2>/dev/null; rm -rf "$work"' EXIT
while ! (exec 3<>/dev/tcp/127.0.0.1/$PORT) 2>/dev/null; do sleep 0.05; done
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
for PAD in $PADS; do
pad=$(head -c "$PAD" /dev/zero | tr '\0' 'x')
cat > "$work/sink.yaml" <<YAML
name: bench-http-sink
source: { plugin: generate, config: { count: $COUNT, template: '{"seq":{{seq}},"pad":"$pad"}' } }
sink:
  plugin: http
  config: { url: "http://127.0.0.1:$PORT/hook", body: json_array, max_batch_records: $CHUNK, concurrency: $CONC }
batch: { max_records: $BATCH }
YAML
base=() orbit=()
for i in $(seq 1 "$RUNS"); do
  base+=("$(target/release/baseline-http "http://127.0.0.1:$PORT/hook" "$COUNT" "$BATCH" "$CHUNK" "$CONC" "$PAD")")
  rm -rf "$work/state"
  orbit+=("$(ORBIT_LOG=info NO_COLOR=1 target/release/orbit-host --state-dir "$work/state" --progress 0s "$work/sink.yaml" 2>&1 \
    | sed -n 's/.*dead-lettered in .*s (\([0-9]*\) records\/s).*/\1/p')")
done
b=$(printf '%s\n' "${base[@]}" | median); o=$(printf '%s\n' "${orbit[@]}" | median)
echo "http sink, $COUNT records of $((PAD + 20)) B, batch $BATCH, $CHUNK per request, concurrency $CONC:"
echo "  bare reqwest $b records/s (${base[*]}), orbit $o records/s (${orbit[*]}), ratio $(echo "$o / $b" | bc -l | xargs printf '%.2f')x"
done
