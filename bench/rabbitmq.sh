#!/usr/bin/env bash
# RabbitMQ throughput through Orbit beside bare lapin, in the same run, against the broker on
# 127.0.0.1:5672 (guest/guest):
#  * sink:   generate → rabbitmq sink (confirms, window 1024)  vs  a lapin publisher, same window,
#            awaiting each publish (the usual loop), and the same publisher pipelined (each
#            publish polled once and its socket write awaited later, as Orbit's sink does)
#  * source: rabbitmq source → file sink (fsync per batch)     vs  a lapin consumer writing and
#            fsyncing the same batches, then acking them (multiple)
# for 1 KB and 12-byte messages. Prints messages/s and the ratio (median of RUNS runs).
#
#   bench/rabbitmq.sh              # COUNT=100000 RUNS=3
#   IN_FLIGHT=1 bench/rabbitmq.sh  # the sink's window (sink.max_in_flight); default: the host's
set -euo pipefail
cd "$(dirname "$0")/.."
COUNT=${COUNT:-100000}
RUNS=${RUNS:-3}
Q=orbit-bench
cargo build --release --workspace --quiet
B=target/release/baseline-rabbitmq
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
rate() { echo "$COUNT / ($2 - $1)" | bc -l | xargs printf '%.0f'; }

# Starts a command in the background and prints messages/s from its start until FILE holds
# BYTES (both source runs are timed this way: process start-up and connecting included), then
# stops it. Usage: timed_until_written FILE BYTES COMMAND...
timed_until_written() {
  local file=$1 want=$2
  shift 2
  local s e pid
  s=$(date +%s.%N)
  ${WRAP:-} "$@" > /dev/null &
  pid=$!
  while [ "$(stat -c %s "$file" 2>/dev/null || echo 0)" -lt "$want" ]; do sleep 0.01; done
  e=$(date +%s.%N)
  kill -TERM $pid 2>/dev/null || true
  wait $pid || true
  rate "$s" "$e"
}

template() { # a payload of $1 bytes
  head -c "$1" /dev/zero | tr '\0' 'x'
}

for size in 1024 12; do
  payload=$(template "$size")
  base=() piped=() orbit=()
  for i in $(seq 1 "$([ -n "${SOURCE_ONLY:-}" ] && echo 0 || echo "$RUNS")"); do
    $B purge $Q
    base+=("$($B publish $Q "$COUNT" "$size" 1024)")
    $B purge $Q
    piped+=("$($B publish $Q "$COUNT" "$size" 1024 pipelined)")
    $B purge $Q
    cat > "$work/sink.yaml" <<YAML
name: bench-rabbit-sink
source: { plugin: generate, config: { count: $COUNT, template: '$payload' } }
sink: { plugin: rabbitmq, ${IN_FLIGHT:+max_in_flight: $IN_FLIGHT, }config: { url: "amqp://guest:guest@127.0.0.1:5672/%2f", routing_key: $Q, confirm_window: 1024 } }
batch: { max_records: ${BATCH:-1000} }
YAML
    rm -rf "$work/state"
    # Orbit's own figure: from pipeline start (connecting included) to the last confirm.
    orbit+=("$(ORBIT_LOG=info NO_COLOR=1 target/release/orbit-host --state-dir "$work/state" --progress 0s "$work/sink.yaml" 2>&1 \
      | sed -n 's/.*dead-lettered in .*s (\([0-9]*\) records\/s).*/\1/p')")
  done
  if [ -z "${SOURCE_ONLY:-}" ]; then
    b=$(printf '%s\n' "${base[@]}" | median); p=$(printf '%s\n' "${piped[@]}" | median)
    o=$(printf '%s\n' "${orbit[@]}" | median)
    echo "sink   ${size}B: bare lapin $b msg/s (${base[*]}), pipelined $p msg/s (${piped[*]}), orbit $o msg/s (${orbit[*]}), ratio $(echo "$o / $b" | bc -l | xargs printf '%.2f')x (to pipelined $(echo "$o / $p" | bc -l | xargs printf '%.2f')x)"
  fi

  base=() orbit=()
  for i in $(seq 1 "$RUNS"); do
    $B purge $Q
    $B publish $Q "$COUNT" "$size" 1024 > /dev/null
    rm -f "$work/base.txt"
    base+=("$(timed_until_written "$work/base.txt" $((COUNT * (size + 1))) \
      $B consume $Q "$COUNT" "$work/base.txt" "${PREFETCH:-2000}" 1000)")
    $B purge $Q
    $B publish $Q "$COUNT" "$size" 1024 > /dev/null
    cat > "$work/source.yaml" <<YAML
name: bench-rabbit-source
source: { plugin: rabbitmq, config: { url: "amqp://guest:guest@127.0.0.1:5672/%2f", queue: $Q, prefetch: ${PREFETCH:-2000} } }
sink: { plugin: file, config: { path: "$work/orbit.txt" } }
batch: { max_records: ${BATCH:-1000}, max_wait: 20ms }
YAML
    rm -rf "$work/state" "$work/orbit.txt"
    orbit+=("$(ORBIT_LOG=warn timed_until_written "$work/orbit.txt" $((COUNT * (size + 1))) \
      target/release/orbit-host --state-dir "$work/state" --progress 0s "$work/source.yaml")")
  done
  b=$(printf '%s\n' "${base[@]}" | median); o=$(printf '%s\n' "${orbit[@]}" | median)
  echo "source ${size}B: bare lapin $b msg/s (${base[*]}), orbit $o msg/s (${orbit[*]}), ratio $(echo "$o / $b" | bc -l | xargs printf '%.2f')x"
done
$B purge $Q
