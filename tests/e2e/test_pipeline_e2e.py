"""The whole DAG through Airflow's real task runner (`airflow dags test`), on a fresh Airflow home and storage.

Builds the demo hub module with its default pre-training and a generated partition, runs the DAG for the day
2026-11-20 (run date 2026-11-21: the partition comes from the run's data interval), then checks the outputs.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tasks import schema
from tasks.demo import make_dataset, make_hub_module, shapes

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
DS = "2026-11-20"
RUN_DATE = "2026-11-21"


def airflow_env(home: Path, storage: Path) -> dict:
    env = dict(os.environ)
    env.update(AIRFLOW_HOME=str(home), TFHUB_STORAGE_ROOT=f"file://{storage}")
    return env


def sh(cmd: str, env: dict, timeout: int) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", "-c", f". {ROOT}/scripts/env.sh && {cmd}"], env=env, capture_output=True,
                          text=True, timeout=timeout, cwd=ROOT)


@pytest.fixture(scope="module")
def dag_run(tmp_path_factory):
    base = tmp_path_factory.mktemp("e2e")
    home, storage = base / "airflow", base / "storage"
    env = airflow_env(home, storage)
    setup = sh("bash scripts/setup_airflow.sh", env, timeout=300)
    assert setup.returncode == 0, setup.stdout[-3000:] + setup.stderr[-3000:]
    make_hub_module.run(make_hub_module.Config(output=f"file://{storage}/hub/shapes_fv_32"))
    make_dataset.run(make_dataset.Config(raw_root=f"file://{storage}/raw", ds=DS))
    res = sh(f"airflow dags test tfhub_finetune {RUN_DATE}", env, timeout=1500)
    (base / "dags-test.log").write_text(res.stdout + res.stderr)
    return base, storage, res


def test_dag_run_succeeds(dag_run):
    base, _, res = dag_run
    out = res.stdout + res.stderr
    assert res.returncode == 0, out[-5000:]
    assert "state=success" in out, out[-5000:]
    # The partition came from the data interval [2026-11-20, 2026-11-21).
    assert f"raw/ds={DS}" in out


def test_task_log_shows_spark_and_training_progress(dag_run):
    out = dag_run[2].stdout + dag_run[2].stderr
    assert "TaskSetManager: Finished task" in out                      # Spark progress
    assert "epoch 15/15 done: loss" in out and "examples/s" in out    # per-epoch training progress
    assert "test accuracy" in out                                      # evaluation summary


def test_tfrecord_counts_equal_raw_counts(dag_run):
    import tensorflow as tf

    _, storage, _ = dag_run
    raw = storage / "raw" / f"ds={DS}"
    raw_count = sum(1 for _ in csv.DictReader(open(raw / "labels.csv")))
    examples = storage / "examples" / f"ds={DS}"
    manifest = json.loads((examples / schema.MANIFEST).read_text())
    counted = {s: sum(1 for f in examples.glob(f"{s}-*.tfrecord") for _ in tf.data.TFRecordDataset(str(f)))
               for s in schema.SPLITS}
    assert counted == manifest["counts"]
    assert sum(counted.values()) == raw_count == 600


def test_test_accuracy_meets_the_bar(dag_run):
    _, storage, _ = dag_run
    metrics = json.loads((storage / "runs" / f"ds={DS}" / "metrics.json").read_text())
    assert metrics["accuracy"] >= 0.9, metrics


def test_exported_model_classifies_held_back_images_in_a_fresh_process(dag_run, tmp_path):
    _, storage, _ = dag_run
    version = storage / "serving" / "shapes" / "20261120"
    assert (version / "saved_model.pb").exists()
    assert sorted(p.name for p in version.parent.iterdir()) == ["20261120"]
    # Images the pipeline never saw: another seed, another day.
    held = make_dataset.run(make_dataset.Config(raw_root=f"file://{tmp_path}", ds="2027-01-01", num_images=80,
                                                seed=987654))
    rows = list(csv.DictReader(open(tmp_path / "ds=2027-01-01" / "labels.csv")))
    paths = [str(tmp_path / "ds=2027-01-01" / r["path"]) for r in rows]
    code = textwrap.dedent(f"""
        import json, tensorflow as tf
        model = tf.saved_model.load({str(version)!r})
        images = [open(p, "rb").read() for p in {paths!r}]
        out = model.signatures["serving_default"](image_bytes=tf.constant(images))
        print(json.dumps([n.decode() for n in out["class_names"].numpy()]))
    """)
    env = {k: v for k, v in os.environ.items() if k != "TF_USE_LEGACY_KERAS"}  # plain TensorFlow, as a server has
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env)
    assert res.returncode == 0, res.stderr[-3000:]
    predicted = json.loads(res.stdout.strip().splitlines()[-1])
    truth = [r["label"] for r in rows]
    accuracy = sum(p == t for p, t in zip(predicted, truth)) / len(truth)
    assert set(truth) == set(shapes.TARGET_CLASSES)
    assert accuracy >= 0.9, list(zip(truth, predicted))
    assert held.endswith("ds=2027-01-01")
