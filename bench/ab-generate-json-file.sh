#!/usr/bin/env bash
# A/B of two builds on the generate → json → file pipeline (bench/generate-json-file.yaml):
# the release build of BASE (a commit, built in a git worktree with its own target directory)
# against the working tree's release build, alternating runs, in the same run. Prints records/s
# of each (median of RUNS) and HEAD/BASE.
#
#   bench/ab-generate-json-file.sh 09fabd4          # the last commit before the metrics
#   COUNT=500000 RUNS=7 bench/ab-generate-json-file.sh 09fabd4
#
# BASE_TARGET keeps the base build between invocations (default /tmp/orbit-ab-<BASE>).
set -euo pipefail
cd "$(dirname "$0")/.."
base=${1:?usage: bench/ab-generate-json-file.sh BASE_COMMIT}
COUNT=${COUNT:-1000000}
RUNS=${RUNS:-5}
base_target=${BASE_TARGET:-/tmp/orbit-ab-$base}
tree="$base_target/tree"

if [ ! -x "$base_target/release/orbit-host" ]; then
  rm -rf "$tree"
  mkdir -p "$base_target"
  git worktree add --detach "$tree" "$base" >/dev/null
  (cd "$tree" && CARGO_TARGET_DIR="$base_target" cargo build --release --workspace --quiet)
  git worktree remove --force "$tree"
fi
cargo build --release --workspace --quiet
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

run() { # binary [flags...] → records/s
  local bin=$1 start end lines
  shift
  rm -rf "$work/state" "$work/out.jsonl"
  start=$(date +%s.%N)
  BENCH_COUNT=$COUNT BENCH_OUT="$work/out.jsonl" ORBIT_LOG=warn \
    "$bin" --state-dir "$work/state" --progress 0s "$@" bench/generate-json-file.yaml
  end=$(date +%s.%N)
  lines=$(wc -l < "$work/out.jsonl")
  [ "$lines" -eq "$COUNT" ] || { echo "$bin wrote $lines of $COUNT records" >&2; exit 1; }
  echo "$COUNT / ($end - $start)" | bc -l | xargs printf '%.0f'
}

base_bin="$base_target/release/orbit-host"
# HEAD runs with its metrics served (admin on a free port); a base build from before the
# admin server has no such flag.
base_flags=()
"$base_bin" --help | grep -q -- --admin && base_flags=(--admin 127.0.0.1:0)

base_rates=() head_rates=()
for _ in $(seq 1 "$RUNS"); do
  base_rates+=("$(run "$base_bin" "${base_flags[@]}")")
  head_rates+=("$(run target/release/orbit-host --admin 127.0.0.1:0)")
done
b=$(printf '%s\n' "${base_rates[@]}" | median)
h=$(printf '%s\n' "${head_rates[@]}" | median)
echo "records:  $COUNT, $RUNS runs each, alternating"
echo "base $base:  $b records/s   (runs: ${base_rates[*]})"
echo "head $(git rev-parse --short HEAD)$(git diff --quiet || echo '+dirty'):  $h records/s   (runs: ${head_rates[*]})"
echo "ratio:    $(echo "$h / $b" | bc -l | xargs printf '%.3f')x"
