#!/usr/bin/env bash
# docker-compose service hdfs-init (apache/hadoop image, as the HDFS superuser): lays out HDFS for the cluster mode
# and uploads what demo-inputs made in /opt/tfhub/demo. Idempotent: what exists is kept.
#   $TFHUB_STORAGE_ROOT/{raw,hub,examples,runs,serving}   the pipeline's storage root (the tfhub_pipeline Variable)
#   /spark-history      spark.eventLog.dir, read by the spark-history service
#   /app-logs           yarn.nodemanager.remote-app-log-dir (yarn-site.xml)
#   /apps/spark         spark.yarn.archive
#   /user/airflow       home of the submitting user: Spark's .sparkStaging
set -euo pipefail
: "${TFHUB_STORAGE_ROOT:?set TFHUB_STORAGE_ROOT, e.g. hdfs://namenode:8020/tfhub}"
: "${DEMO_DS:?set DEMO_DS, the demo partition date (YYYY-MM-DD)}"
demo=/opt/tfhub/demo
root="${TFHUB_STORAGE_ROOT%/}"

hdfs dfs -mkdir -p "$root/raw" "$root/hub" "$root/examples" "$root/runs" "$root/serving" \
  /spark-history /app-logs /apps/spark /user/airflow /airflow/logs
hdfs dfs -chmod 1777 /spark-history /app-logs
hdfs dfs -chown -R airflow "$root" /user/airflow /airflow

# Uploads a local folder beside its target, then renames it into place (one HDFS rename): the sensor, which waits
# for raw/ds=.../_SUCCESS, never sees a partition whose files are still arriving.
publish() {
  local src="$1" dst="$2"
  local tmp
  tmp="$(dirname "$dst")/.$(basename "$dst").uploading"
  if hdfs dfs -test -e "$dst"; then
    echo "$dst exists"
    return
  fi
  [ -d "$src" ] || { echo "hdfs_init.sh: $src is missing: did demo-inputs run?" >&2; exit 1; }
  hdfs dfs -rm -r -f -skipTrash "$tmp"
  hdfs dfs -put "$src" "$tmp"
  hdfs dfs -mv "$tmp" "$dst"
  echo "uploaded $src to $dst"
}
publish "$demo/hub/shapes_fv_32" "$root/hub/shapes_fv_32"
publish "$demo/raw/ds=$DEMO_DS" "$root/raw/ds=$DEMO_DS"

shopt -s nullglob
archives=("$demo"/spark/spark-jars-*.zip)
[ ${#archives[@]} -gt 0 ] || { echo "hdfs_init.sh: no $demo/spark/spark-jars-*.zip: did demo-inputs run?" >&2; exit 1; }
for archive in "${archives[@]}"; do
  if hdfs dfs -test -e "/apps/spark/$(basename "$archive")"; then
    echo "/apps/spark/$(basename "$archive") exists"
  else
    hdfs dfs -put "$archive" /apps/spark/  # written as ._COPYING_, then renamed
  fi
done
hdfs dfs -chmod -R a+rX /apps/spark  # world-readable: NodeManagers cache it once for every application

hdfs dfs -ls "$root" "$root/raw" "$root/hub" /apps/spark
