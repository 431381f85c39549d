# Environment of the embedded default: source it before running airflow, spark-submit or the tasks by hand.
#   . scripts/env.sh
# The Makefile sources it for every target. AIRFLOW_HOME and TFHUB_STORAGE_ROOT may be set beforehand (tests do).
PROJECT_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]:-$0}")/.." && pwd)"
export PROJECT_ROOT
export AIRFLOW_HOME="${AIRFLOW_HOME:-$PROJECT_ROOT/var/airflow}"
export TFHUB_STORAGE_ROOT="${TFHUB_STORAGE_ROOT:-file://$PROJECT_ROOT/var/storage}"
# The embedded default's Spark SQL catalog (layout table): Hive metastore on Derby and the warehouse, in one folder.
export TFHUB_CATALOG_DIR="${TFHUB_CATALOG_DIR:-$PROJECT_ROOT/var/catalog}"
# The class-data sharing archive of Spark's driver JVM (scripts/spark_cds.sh): cheaper JVM start-up, or ignored.
export TFHUB_SPARK_CDS="${TFHUB_SPARK_CDS:-$PROJECT_ROOT/var/spark-cds/driver.jsa}"
export AIRFLOW__CORE__DAGS_FOLDER="$PROJECT_ROOT/dags"
export AIRFLOW__CORE__PLUGINS_FOLDER="$PROJECT_ROOT/plugins"
export AIRFLOW__CORE__LOAD_EXAMPLES=False
export AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION="${AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION:-True}"
export AIRFLOW__OPERATORS__DEFAULT_DEFERRABLE="${AIRFLOW__OPERATORS__DEFAULT_DEFERRABLE:-True}"
export AIRFLOW__LOGGING__LOGGING_LEVEL="${AIRFLOW__LOGGING__LOGGING_LEVEL:-INFO}"
# hub.KerasLayer is a tf-keras layer; Keras 3 rejects it.
export TF_USE_LEGACY_KERAS=1
export TF_CPP_MIN_LOG_LEVEL="${TF_CPP_MIN_LOG_LEVEL:-1}"
export PATH="$PROJECT_ROOT/.venv/bin:$PATH"
export PYTHONPATH="$PROJECT_ROOT${PYTHONPATH:+:$PYTHONPATH}"
