#!/usr/bin/env bash
# `make bench`: build the bench virtualenvs if needed, measure the core throughput goal
# (bench/core_throughput.py), then run every system (bench/run.py), which writes
# bench/results/run-*.json and, on a full run, the table in bench/README.md.
#   bench/run.sh                     full run (3 repetitions; about 20-25 minutes)
#   bench/run.sh --quick             1 repetition, 5,000 jobs, 3 s latency (smoke test)
#   bench/run.sh --only celery,dramatiq [--reps 3 ...]   any bench/run.py option
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
"$here/venv.sh"
py="$here/.venv/bin/python"
core_args=(--runs 3)
core_name=core-latest.json
for arg in "$@"; do
  case "$arg" in
    --quick) core_args=(--runs 1 --n 5000 --quiet-wait 3); core_name=core-quick.json ;;
    --only*|--skip*) core_args=() ;;  # a partial run of run.py: skip the core measurement
  esac
done
run_args=()
if ((${#core_args[@]})); then
  mkdir -p "$here/results"
  core_json="$here/results/$core_name"
  "$py" "$here/core_throughput.py" "${core_args[@]}" --json "$core_json"
  run_args=(--core "$core_json")
fi
exec "$py" "$here/run.py" "${run_args[@]}" "$@"
