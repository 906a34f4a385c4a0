#!/usr/bin/env bash
# Kafka relay throughput through Orbit beside a bare rdkafka relay, in the same run, against a
# tansu broker started here on a free port (in-memory storage):
#   kafka source → kafka sink (idempotent, acks=all)  vs  BaseConsumer → BaseProducer, same settings
# COUNT records of SIZE bytes; prints records/s and the ratio (median of RUNS runs).
#
#   bench/kafka.sh                 # COUNT=1000000 SIZE=100 RUNS=3
#   IN_FLIGHT=1 bench/kafka.sh     # the sink's window (sink.max_in_flight); default: the host's
set -euo pipefail
cd "$(dirname "$0")/.."
COUNT=${COUNT:-1000000}
SIZE=${SIZE:-100}
RUNS=${RUNS:-3}
cargo build --release --workspace --quiet
B=target/release/baseline-kafka
work=$(mktemp -d)
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
tansu broker --listener-url "tcp://127.0.0.1:$port" --advertised-listener-url "tcp://127.0.0.1:$port" \
  --storage-engine memory://tansu/ > "$work/tansu.log" 2>&1 &
tansu_pid=$!
trap 'kill $tansu_pid 2>/dev/null; rm -rf "$work"' EXIT
brokers="127.0.0.1:$port"
until (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; do sleep 0.1; done
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

tansu topic create in --broker "tcp://$brokers" --partitions 3 > /dev/null
$B fill "$brokers" in "$COUNT" "$SIZE"
base=() orbit=()
for i in $(seq 1 "$RUNS"); do
  tansu topic create "bare-$i" --broker "tcp://$brokers" --partitions 3 > /dev/null
  base+=("$($B relay "$brokers" in "bare-$i" "$COUNT")")

  tansu topic create "orbit-$i" --broker "tcp://$brokers" --partitions 3 > /dev/null
  cat > "$work/relay.yaml" <<YAML
name: bench-kafka-relay
source: { plugin: kafka, config: { brokers: "$brokers", topic: in, group: orbit-bench-$i-$$ } }
sink: { plugin: kafka, ${IN_FLIGHT:+max_in_flight: $IN_FLIGHT, }config: { brokers: "$brokers", topic: orbit-$i } }
batch: { max_records: ${BATCH:-1000} }
YAML
  # Done when the host reports COUNT records written (tansu's watermarks do not count records
  # exactly, so the topic is not asked).
  s=$(date +%s.%N)
  ORBIT_LOG=info NO_COLOR=1 target/release/orbit-host --state-dir "$work/state" --progress 200ms "$work/relay.yaml" 2> "$work/orbit.log" &
  pid=$!
  until grep -q "written=$COUNT " "$work/orbit.log"; do sleep 0.1; done
  e=$(date +%s.%N)
  kill -TERM $pid; wait $pid
  orbit+=("$(echo "$COUNT / ($e - $s)" | bc -l | xargs printf '%.0f')")
done
b=$(printf '%s\n' "${base[@]}" | median); o=$(printf '%s\n' "${orbit[@]}" | median)
echo "kafka relay ${SIZE}B x $COUNT: bare rdkafka $b rec/s (${base[*]}), orbit $o rec/s (${orbit[*]}), ratio $(echo "$o / $b" | bc -l | xargs printf '%.2f')x"
