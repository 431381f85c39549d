"""``layout=table`` through the whole DAG with Airflow's real task runner: tables made with Spark SQL in the embedded
default's catalog (the Hive metastore on Derby and the warehouse that ``scripts/setup_airflow.sh`` configures), read
by the DAG's ``prepare_examples`` with a query that joins a label table and selects the run's partition with
``:ds``, then trained, evaluated and published like any other layout.

The producer is a process of its own, as it would be in production (and must be: the embedded Derby metastore
admits one process at a time). The DAG runs with ``airflow dags test`` and the run's conf (one epoch on one worker:
what is checked here is the path of the rows, not the model's quality).
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

from tasks.core import run_folder, schema
from tasks import prepare_examples as P
from tests.conftest import airflow_sh, setup_airflow_home
from tests.support import partitions as parts

pytestmark = pytest.mark.e2e

DS = "2026-11-20"
RUN_DATE = "2026-11-21"  # data interval [2026-11-20, 2026-11-21): partition ds=2026-11-20
IMAGES = 24

PRODUCER = textwrap.dedent("""
    import json, sys
    from pyspark.sql import SparkSession
    from tests.support.partitions import CLASSES, image_bytes

    builder = SparkSession.builder.master("local[1]").appName("table-producer").config("spark.ui.enabled", "false")
    for key, value in json.load(open(sys.argv[1])).items():
        builder = builder.config(key, value)
    spark = builder.getOrCreate()
    spark.sql("CREATE DATABASE IF NOT EXISTS shapes")
    spark.sql("CREATE TABLE shapes.images (id STRING, image BINARY, ds STRING) USING parquet")
    spark.sql("CREATE TABLE shapes.labels (image_id STRING, class STRING) USING parquet")
    images = [(f"img-{i:03d}", image_bytes("PNG" if i % 2 else "JPEG", (40, 30), seed=i), "2026-11-20")
              for i in range(int(sys.argv[2]))]
    images += [("broken", b"not an image", "2026-11-20"), ("old-0", image_bytes(seed=90), "2026-11-19")]
    labels = [(rid, CLASSES[i % 4]) for i, (rid, _, _) in enumerate(images)]
    spark.createDataFrame(images, "id string, image binary, ds string").createOrReplaceTempView("new_images")
    spark.createDataFrame(labels, "image_id string, class string").createOrReplaceTempView("new_labels")
    spark.sql("INSERT INTO shapes.images SELECT * FROM new_images")
    spark.sql("INSERT INTO shapes.labels SELECT * FROM new_labels")
    print("tables:", [t.name for t in spark.catalog.listTables("shapes")])
""")

QUERY = ("SELECT i.id, l.class AS label, i.image FROM shapes.images i JOIN shapes.labels l ON l.image_id = i.id "
         "WHERE i.ds = :ds")


def test_the_dag_trains_and_publishes_from_a_joined_table_of_the_local_catalog(tmp_path, monkeypatch,
                                                                                small_hub_module):
    catalog = tmp_path / "catalog"
    monkeypatch.setenv("TFHUB_CATALOG_DIR", str(catalog))
    home, storage = tmp_path / "airflow", tmp_path / "storage"
    env = setup_airflow_home(home, storage)
    pipeline = json.loads((home / "rendered-config" / "variables.json").read_text())["tfhub_pipeline"]
    spark_conf = pipeline["spark_conf"]
    assert spark_conf["spark.sql.catalogImplementation"] == "hive"
    (tmp_path / "spark_conf.json").write_text(json.dumps(spark_conf))
    (tmp_path / "producer.py").write_text(PRODUCER)
    made = subprocess.run([sys.executable, str(tmp_path / "producer.py"), str(tmp_path / "spark_conf.json"),
                           str(IMAGES)], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert made.returncode == 0, made.stdout[-3000:] + made.stderr[-3000:]
    assert (catalog / "metastore_db").is_dir() and (catalog / "warehouse" / "shapes.db" / "images").is_dir()

    conf = json.dumps({"layout": "table", "query": QUERY, "id_column": "id", "max_bad_fraction": 0.1,
                       "hub_module": str(small_hub_module), "num_workers": 1, "epochs": 1, "min_accuracy": 0.0})
    res = airflow_sh(f"airflow dags test tfhub_finetune {RUN_DATE} -c '{conf}'", env, timeout=900)
    out = res.stdout + res.stderr
    (tmp_path / "dags-test.log").write_text(out)
    assert res.returncode == 0, out[-6000:]
    assert "layout table reads a Spark SQL table, not a raw folder" in out  # the sensor did not wait for a folder
    assert not (storage / "raw").exists()

    examples = storage / "examples" / f"ds={DS}"
    manifest = json.loads((examples / schema.MANIFEST).read_text())
    assert manifest["layout"] == "table" and manifest["source"].startswith("query (SELECT i.id")
    assert (manifest["num_records"], manifest["bad_records"]) == (IMAGES, 1)
    assert manifest["labels"] == sorted(parts.CLASSES)
    assert sum(len(f) for f in manifest["files"].values()) == 3 * 2  # min_shards = 2 * num_workers per split
    records = parts.read_tfrecords(examples.glob("*.tfrecord"))
    assert sorted(r[schema.RECORD_ID] for r in records) == [f"img-{i:03d}" for i in range(IMAGES)]
    assert all(r[schema.IMAGE] == parts.image_bytes("PNG" if int(r[schema.RECORD_ID][4:]) % 2 else "JPEG",
                                                     (40, 30), seed=int(r[schema.RECORD_ID][4:])) for r in records)
    index = [json.loads(x) for x in open(storage / "quarantine" / f"ds={DS}" / P.QUARANTINE_INDEX)]
    assert [(q["id"], q["reason"]) for q in index] == [("broken", "not_an_image")]
    assert (examples / schema.SUCCESS).exists()

    # Trained, evaluated on the table's test rows and published, like any other layout.
    assert "state=success" in out, out[-6000:]
    run = storage / "runs" / f"ds={DS}"
    metrics = json.loads((run / run_folder.METRICS).read_text())
    assert metrics["num_examples"] == manifest["counts"]["test"]
    published = json.loads((run / run_folder.PUBLISHED).read_text())
    assert published["verified"] is True and published["version"] == 20261120
    assert (storage / "serving" / "shapes" / "20261120" / "saved_model.pb").exists()
