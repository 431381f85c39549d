#!/usr/bin/env bash
# Runs the whole DAG for one date with `airflow dags test` (the real task runner, in one process) and says where
# the results are. Called by `make demo` after setup, hub module and demo data are in place.
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/env.sh"
# Optional: DEMO_CONF (the run's params as JSON), DEMO_DATASET and DEMO_MODEL (where the summary looks).
ds="${1:?usage: run_demo.sh YYYY-MM-DD}"
conf="${DEMO_CONF:-{\}}"
dataset="${DEMO_DATASET:-}"
model="${DEMO_MODEL:-shapes}"
log_dir="$PROJECT_ROOT/var/demo-logs"
mkdir -p "$log_dir"
log="$log_dir/tfhub_finetune-${dataset:+$dataset-}$ds.log"
start=$(date +%s)
# `dags test` cannot give a run a partition key, so the partition goes in the run's `partition` param (the one way
# for a run without a key); no logical date: the run starts now, and the UI shows its true duration (a past
# logical date would make it look as long as the time since that date).
conf=$(python -c 'import json, sys; print(json.dumps({**json.loads(sys.argv[1]), "partition": sys.argv[2]}))' \
  "$conf" "$ds")
echo "running DAG tfhub_finetune for partition $ds, params $conf; full log: $log"
if ! airflow dags test tfhub_finetune -c "$conf" >"$log" 2>&1; then
  tail -n 60 "$log"
  echo "DAG run FAILED; full log: $log"
  exit 1
fi
python -m tasks.demo.summary --storage-root "$TFHUB_STORAGE_ROOT" --ds "$ds" --model-name "$model" --dataset "$dataset" --log "$log" \
  --airflow-logs "$AIRFLOW_HOME/logs" --seconds $(( $(date +%s) - start ))
