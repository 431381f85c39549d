#!/usr/bin/env bash
# Creates (or updates) the project-local Airflow of the embedded default: metadata DB on SQLite, and the
# connections, variables and pools the DAG needs, from config/embedded/. Idempotent.
# AIRFLOW_HOME and TFHUB_STORAGE_ROOT may be set beforehand to set up another home (the e2e tests do).
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/env.sh"
CONFIG_DIR="${TFHUB_CONFIG_DIR:-$PROJECT_ROOT/config/embedded}"

mkdir -p "$AIRFLOW_HOME"
case "$TFHUB_STORAGE_ROOT" in
  file://*|/*) mkdir -p "${TFHUB_STORAGE_ROOT#file://}" ;;  # remote roots (hdfs://) are made by their own init
esac
# The Spark SQL catalog of layout table (see spark_conf in variables.json): Spark creates the metastore on first use.
mkdir -p "$TFHUB_CATALOG_DIR/warehouse"

rendered="$AIRFLOW_HOME/rendered-config"
mkdir -p "$rendered"
for f in connections variables pools; do
  sed -e "s#@PROJECT_ROOT@#$PROJECT_ROOT#g" -e "s#@STORAGE_ROOT@#$TFHUB_STORAGE_ROOT#g" \
    -e "s#@CATALOG_DIR@#$TFHUB_CATALOG_DIR#g" -e "s#@SPARK_CDS@#$TFHUB_SPARK_CDS#g" \
    "$CONFIG_DIR/$f.json" >"$rendered/$f.json"
done
# The migration and the three imports in one interpreter (scripts/airflow_cli.py): one Airflow start-up, not four.
python "$PROJECT_ROOT/scripts/airflow_cli.py" "db migrate" \
  "connections import --overwrite '$rendered/connections.json'" \
  "variables import --action-on-existing-key overwrite '$rendered/variables.json'" \
  "pools import '$rendered/pools.json'" >"$AIRFLOW_HOME/setup.log" 2>&1 || { cat "$AIRFLOW_HOME/setup.log"; exit 1; }
grep -E "^(Imported|Uploaded|[0-9]+ of [0-9]+)" "$AIRFLOW_HOME/setup.log" || true
echo "Airflow home $AIRFLOW_HOME ready; storage root $TFHUB_STORAGE_ROOT; Spark SQL catalog $TFHUB_CATALOG_DIR"
