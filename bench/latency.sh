#!/usr/bin/env bash
# Request latency of `http source (ack_mode: delivered) → file sink` (default batch settings:
# a 200 comes once the record is written and fsynced) beside a bare axum handler that appends
# and fsyncs each body before answering 200 (bench/src/bin/latency_baseline.rs), in the same
# run. One JSON record of 100 B per request, from bench/src/bin/latency_load.rs:
#  * open:   RATE requests/s on schedule for SECS, each timed from its scheduled send time (a
#            stall shows in the figures instead of slowing the load down: coordinated omission)
#  * closed: CLIENTS keep-alive clients sending back to back for SECS (saturation)
# The output files go to /dev/shm when it exists (tmpfs: the fsync costs next to nothing, so
# the figures are the services' own latency, not the disk's). Prints p50/p99 in ms and
# requests/s for each: medians of RUNS runs, baseline and orbit alternating.
# Target: orbit p99 ≤ 5 ms at 100 requests/s.
#
#   bench/latency.sh       # RATE=100 SECS=10 CLIENTS=4 RUNS=3
set -euo pipefail
cd "$(dirname "$0")/.."
RATE=${RATE:-100}
SECS=${SECS:-10}
CLIENTS=${CLIENTS:-4}
RUNS=${RUNS:-3}
BASE_PORT=${BASE_PORT:-18997}
ORBIT_PORT=${ORBIT_PORT:-18998}
TARGET_P99_MS=5
cargo build --release --workspace --quiet
if [ -d /dev/shm ] && [ -w /dev/shm ]; then
  work=$(mktemp -d /dev/shm/orbit-latency.XXXXXX)
else
  work=$(mktemp -d)
fi
srv=
# Stops the server under test (if one runs) and waits for it, so the next one finds its port
# free and the line count sees everything it wrote.
stop_server() {
  if [ -n "$srv" ]; then
    kill -TERM "$srv" 2>/dev/null || true
    wait "$srv" 2>/dev/null || true
    srv=
  fi
}
trap 'stop_server; rm -rf "$work"' EXIT
trap 'exit 130' INT TERM

cat > "$work/pipeline.yaml" <<YAML
name: bench-latency
source: { plugin: http, config: { address: "127.0.0.1:$ORBIT_PORT", path: /ingest, ack_mode: delivered } }
sink: { plugin: file, config: { path: "$work/orbit.jsonl" } }
YAML

# Waits (10 s at most) until the server accepts connections; fails with its log otherwise.
wait_port() {
  for _ in $(seq 1 200); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
    kill -0 "$srv" 2>/dev/null || break
    sleep 0.05
  done
  echo "nothing listening on 127.0.0.1:$1 after 10 s; server log:" >&2
  cat "$work/server.log" >&2
  exit 1
}

field() { sed -n "s/.* $1=\([^ ]*\).*/\1/p"; }
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

# run_one SYSTEM MODE N: starts a fresh server (empty file, no offsets), loads it, stops it and
# checks that it wrote exactly one line per 200 answer. Sets `result` to the load's summary line
# (not printed through $(...): a subshell would leave the server running if it failed).
run_one() {
  local system=$1 mode=$2 n=$3 port out
  out="$work/$system.jsonl"
  rm -rf "$out" "$work/state"
  if [ "$system" = baseline ]; then
    port=$BASE_PORT
    target/release/latency-baseline "$port" "$out" 2> "$work/server.log" &
  else
    port=$ORBIT_PORT
    ORBIT_LOG=warn NO_COLOR=1 target/release/orbit-host --state-dir "$work/state" --progress 0s \
      "$work/pipeline.yaml" 2> "$work/server.log" &
  fi
  srv=$!
  wait_port "$port"
  if ! result=$(target/release/latency-load "$mode" "http://127.0.0.1:$port/ingest" "$n" "$SECS"); then
    echo "$system, $mode: not every request was answered 200 (${result:-no summary}); server log:" >&2
    cat "$work/server.log" >&2
    exit 1
  fi
  stop_server
  local answered lines
  answered=$(field answered_200 <<< "$result")
  lines=$(wc -l < "$out")
  if [ "$lines" -ne "$answered" ]; then
    echo "$system, $mode: $lines lines written for $answered answers 200; server log:" >&2
    cat "$work/server.log" >&2
    exit 1
  fi
}

declare -A runs # "system mode metric" → that metric of each run, space-separated
for mode in open closed; do
  if [ "$mode" = open ]; then n=$RATE; else n=$CLIENTS; fi
  for _ in $(seq 1 "$RUNS"); do
    for system in baseline orbit; do
      run_one "$system" "$mode" "$n"
      for metric in p50_ms p99_ms max_ms rps; do
        runs[$system $mode $metric]+="$(field "$metric" <<< "$result") "
      done
    done
  done
done

med() { printf '%s\n' ${runs[$1]} | median; }
where=$(df --output=fstype "$work" 2>/dev/null | tail -1)
echo "http source (ack_mode: delivered) → file sink, default batch, 100 B JSON per request, files on ${where:-?} ($work)"
echo "median of $RUNS runs, baseline and orbit alternating; $SECS s per run; latency in ms"
printf '%-22s | %8s %8s %8s | %8s %8s %8s\n' mode "base p50" "p99" "req/s" "orbit p50" "p99" "req/s"
for mode in open closed; do
  if [ "$mode" = open ]; then label="open, $RATE req/s"; else label="closed, $CLIENTS clients"; fi
  printf '%-22s | %8.3f %8.3f %8.0f | %8.3f %8.3f %8.0f\n' "$label" \
    "$(med "baseline $mode p50_ms")" "$(med "baseline $mode p99_ms")" "$(med "baseline $mode rps")" \
    "$(med "orbit $mode p50_ms")" "$(med "orbit $mode p99_ms")" "$(med "orbit $mode rps")"
done
echo "runs:"
for mode in open closed; do
  for system in baseline orbit; do
    printf '  %-6s %-8s p50 %s| p99 %s| max %s| req/s %s\n' "$mode" "$system" \
      "${runs[$system $mode p50_ms]}" "${runs[$system $mode p99_ms]}" \
      "${runs[$system $mode max_ms]}" "${runs[$system $mode rps]}"
  done
done
p99=$(med "orbit open p99_ms")
if awk -v a="$p99" -v b="$TARGET_P99_MS" 'BEGIN { exit !(a <= b) }'; then verdict=met; else verdict="NOT met"; fi
echo "target: orbit p99 ≤ $TARGET_P99_MS ms at 100 requests/s — at $RATE requests/s: $p99 ms, $verdict"
