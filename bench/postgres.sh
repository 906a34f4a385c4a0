#!/usr/bin/env bash
# PostgreSQL throughput through Orbit beside bare clients, in the same run, against the server on
# 127.0.0.1:5432 (user postgres, database test, wal_level=logical):
#  * cdc:  COUNT rows inserted (transactions of 1000 rows, multi-row INSERT ... SELECT) and read
#          back by logical replication: postgres_cdc (snapshot: never) → file sink (fsync per
#          batch)  vs  a bare pgwire-replication consumer writing the same JSON event lines,
#          fsyncing every BATCH records and then acknowledging the commit's end LSN. Each has
#          its own pgoutput slot, created before the inserts; each is timed from process start
#          until its file holds the last row (then the line count is checked).
#  * sink: COUNT rows from the generate source → postgres sink (mode insert)  vs  bare
#          tokio-postgres, one transaction per BATCH rows with one INSERT ... SELECT unnest(...);
#          and the same bare client with the sink's statement (INSERT ... SELECT FROM
#          json_populate_recordset($1::text::json), the rows serialized as one JSON array).
# Prints records/s and the ratio orbit/baseline (median of RUNS runs, fresh slots / an emptied
# table each run; the order of the two alternates between runs).
# On 2 cores the cdc baseline is bimodal (~150-200k/s when it keeps up with the walsender and
# reads it a message or two per recv, ~250-330k/s when it lags and reads in bulk): use RUNS=7.
#
#   bench/postgres.sh                 # COUNT=1000000 RUNS=3 BATCH=1000
#   ONLY=cdc bench/postgres.sh        # or ONLY=sink
set -euo pipefail
cd "$(dirname "$0")/.."
COUNT=${COUNT:-1000000}
RUNS=${RUNS:-3}
BATCH=${BATCH:-1000}
ONLY=${ONLY:-}
URL=postgres://postgres@127.0.0.1:5432/test
export PGOPTIONS="-c client_min_messages=warning"
PSQL=(psql -h 127.0.0.1 -U postgres -d test -qAtX -v ON_ERROR_STOP=1)
T_CDC=orbit_bench_cdc T_SINK=orbit_bench_sink PUB=orbit_bench_pub
SLOT_O=orbit_bench_orbit SLOT_B=orbit_bench_base
cargo build --release --workspace --quiet
B=target/release/baseline-postgres
work=$(mktemp -d)

drop_slots() {
  "${PSQL[@]}" -c "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots
                   WHERE slot_name IN ('$SLOT_O', '$SLOT_B')" > /dev/null
}
cleanup() {
  # Leftover slots pin WAL. An active slot cannot be dropped: give a consumer that is still
  # stopping a few seconds.
  for _ in 1 2 3 4 5; do drop_slots 2>/dev/null && break; sleep 1; done
  "${PSQL[@]}" -c "DROP PUBLICATION IF EXISTS $PUB" -c "DROP TABLE IF EXISTS $T_CDC, $T_SINK" || true
  rm -rf "$work"
}
trap cleanup EXIT
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
ratio() { echo "$1 / $2" | bc -l | xargs printf '%.2f'; }

# Prints records/s of a command from its start until FILE's last line is the change of row COUNT
# (polled by the baseline binary: a shell loop's forks would take CPU from the consumers), then
# checks the line count. Usage: timed_until_last_row FILE COMMAND...
timed_until_last_row() {
  local file=$1 lines
  shift
  $B until-row "$file" "$COUNT" "$@"
  lines=$(wc -l < "$file")
  [ "$lines" -eq "$COUNT" ] || echo "warning: $file has $lines lines, not $COUNT" >&2
}

# Other work on the machine (a build) skews everything: say so.
busy() { awk '/^cpu /{print $2+$3+$4+$7+$8}' /proc/stat; }
b0=$(busy); sleep 1; b1=$(busy)
[ $((b1 - b0)) -lt 25 ] || echo "warning: $((b1 - b0))% of a core was busy before starting: figures will be low and noisy" >&2

drop_slots
"${PSQL[@]}" <<SQL
DROP PUBLICATION IF EXISTS $PUB;
DROP TABLE IF EXISTS $T_CDC, $T_SINK;
CREATE TABLE $T_CDC (id int PRIMARY KEY, name text, qty int, at timestamptz);
CREATE TABLE $T_SINK (id int PRIMARY KEY, name text, qty int);
CREATE PUBLICATION $PUB FOR TABLE $T_CDC;
SQL

rows=()
if [ "$ONLY" != sink ]; then
  base=() orbit=()
  cat > "$work/cdc.yaml" <<YAML
name: bench-pg-cdc
source: { plugin: postgres_cdc, config: { url: "$URL", tables: [public.$T_CDC], slot: $SLOT_O, publication: $PUB, snapshot: never } }
sink: { plugin: file, config: { path: "$work/orbit.jsonl" } }
batch: { max_records: $BATCH }
YAML
  for i in $(seq 1 "$RUNS"); do
    drop_slots
    "${PSQL[@]}" -c "TRUNCATE $T_CDC" \
      -c "SELECT pg_create_logical_replication_slot('$SLOT_O', 'pgoutput')" \
      -c "SELECT pg_create_logical_replication_slot('$SLOT_B', 'pgoutput')" > /dev/null
    # One transaction of 1000 rows per statement (psql autocommits each).
    awk -v n="$COUNT" -v t="$T_CDC" 'BEGIN { for (a = 1; a <= n; a += 1000) {
        b = a + 999; if (b > n) b = n
        printf "INSERT INTO %s SELECT i, '"'"'name '"'"' || i, i * 2, now() FROM generate_series(%d, %d) i;\n", t, a, b } }' \
      | "${PSQL[@]}"
    # No autovacuum of the new rows, nor a checkpoint, while the consumers are timed.
    "${PSQL[@]}" -c "VACUUM ANALYZE $T_CDC" -c CHECKPOINT
    rm -rf "$work/state" "$work/orbit.jsonl" "$work/base.jsonl"
    run_base() { base+=("$(timed_until_last_row "$work/base.jsonl" \
      $B cdc "$URL" $SLOT_B $PUB "$COUNT" "$work/base.jsonl" "$BATCH")"); }
    run_orbit() { orbit+=("$(ORBIT_LOG=warn timed_until_last_row "$work/orbit.jsonl" \
      target/release/orbit-host --state-dir "$work/state" --progress 0s "$work/cdc.yaml")"); }
    if [ $((i % 2)) = 1 ]; then run_base; run_orbit; else run_orbit; run_base; fi
    cmp -s "$work/base.jsonl" "$work/orbit.jsonl" || echo "warning: the two outputs differ (run $i)" >&2
    echo "cdc run $i: baseline ${base[-1]}, orbit ${orbit[-1]} rec/s" >&2
  done
  drop_slots
  b=$(printf '%s\n' "${base[@]}" | median); o=$(printf '%s\n' "${orbit[@]}" | median)
  rows+=("cdc (postgres_cdc -> file)|$o|$b|$(ratio "$o" "$b")|orbit ${orbit[*]}; baseline ${base[*]}")
fi

if [ "$ONLY" != cdc ]; then
  base=() orbit=() json=()
  cat > "$work/sink.yaml" <<YAML
name: bench-pg-sink
source: { plugin: generate, config: { count: $COUNT, template: '{"id":{{seq}},"name":"name {{seq}}","qty":{{seq}}}' } }
sink: { plugin: postgres, config: { url: "$URL", table: public.$T_SINK, mode: insert } }
batch: { max_records: $BATCH }
YAML
  check_rows() {
    local n
    n=$("${PSQL[@]}" -c "SELECT count(*) FROM $T_SINK")
    [ "$n" -eq "$COUNT" ] || echo "warning: $T_SINK has $n rows, not $COUNT" >&2
    "${PSQL[@]}" -c "TRUNCATE $T_SINK" -c CHECKPOINT
  }
  run_base() {
    base+=("$($B insert "$URL" $T_SINK "$COUNT" "$BATCH")"); check_rows
    json+=("$($B insert "$URL" $T_SINK "$COUNT" "$BATCH" json)"); check_rows
  }
  run_orbit() {
    rm -rf "$work/state"
    # Orbit's own figure: from pipeline start (connecting included) to the last commit.
    orbit+=("$(ORBIT_LOG=info NO_COLOR=1 target/release/orbit-host --state-dir "$work/state" --progress 0s "$work/sink.yaml" 2>&1 \
      | sed -n 's/.*dead-lettered in .*s (\([0-9]*\) records\/s).*/\1/p')")
    check_rows
  }
  "${PSQL[@]}" -c "TRUNCATE $T_SINK" -c CHECKPOINT
  for i in $(seq 1 "$RUNS"); do
    if [ $((i % 2)) = 1 ]; then run_base; run_orbit; else run_orbit; run_base; fi
    echo "sink run $i: baseline ${base[-1]} (json ${json[-1]}), orbit ${orbit[-1]} rec/s" >&2
  done
  b=$(printf '%s\n' "${base[@]}" | median); o=$(printf '%s\n' "${orbit[@]}" | median)
  j=$(printf '%s\n' "${json[@]}" | median)
  rows+=("sink (generate -> postgres)|$o|$b|$(ratio "$o" "$b")|orbit ${orbit[*]}; baseline ${base[*]}")
  rows+=("  baseline with Orbit's SQL|$o|$j|$(ratio "$o" "$j")|json_populate_recordset ${json[*]}")
fi

echo "PostgreSQL, $COUNT records, batch $BATCH, median of $RUNS runs ($(nproc) cores)"
printf '%-28s %12s %15s %6s   %s\n' benchmark "orbit rec/s" "baseline rec/s" ratio runs
for r in "${rows[@]}"; do
  IFS='|' read -r name o b x all <<< "$r"
  printf '%-28s %12s %15s %6s   %s\n' "$name" "$o" "$b" "$x" "$all"
done
