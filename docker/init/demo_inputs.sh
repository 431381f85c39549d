#!/usr/bin/env bash
# docker-compose service demo-inputs (tfhub-airflow image): makes the demo's inputs on local disk, in the demo-data
# volume at /opt/tfhub/demo, for hdfs-init to upload. Nothing can be downloaded at run time, so the project makes
# them itself, as `make demo` does:
#   hub/shapes_fv_32/          the demo TF Hub module (tasks.demo.make_hub_module)
#   raw/ds=$DEMO_DS/           one date partition, _SUCCESS last (tasks.demo.make_dataset)
#   spark/spark-jars-V.zip     the client's Spark jars, for spark.yarn.archive: YARN containers then take Spark from
#                              HDFS (cached by the NodeManager) instead of every spark-submit uploading ~450 MB
# Idempotent: what exists is kept.
set -euo pipefail
: "${DEMO_DS:?set DEMO_DS, the demo partition date (YYYY-MM-DD)}"
DEMO_IMAGES="${DEMO_IMAGES:-600}"
out=/opt/tfhub/demo
cd /opt/airflow  # dags/, plugins/, tasks/ are mounted here: `python -m tasks...` imports the mounted package

if [ -f "$out/hub/shapes_fv_32/saved_model.pb" ]; then
  echo "hub module $out/hub/shapes_fv_32 exists"
else
  python -m tasks.demo.make_hub_module --output "file://$out/hub/shapes_fv_32"
fi

if [ -f "$out/raw/ds=$DEMO_DS/_SUCCESS" ]; then
  echo "partition $out/raw/ds=$DEMO_DS exists"
else
  python -m tasks.demo.make_dataset --raw-root "file://$out/raw" --ds "$DEMO_DS" --num-images "$DEMO_IMAGES"
fi

python /opt/tfhub/init/spark_jars_archive.py "$out/spark"
