"""The whole DAG through Airflow's real task runner (`airflow dags test`), on a fresh Airflow home and storage.

The session fixture ``trained_demo_run`` (tests/conftest.py) builds the demo hub module with its default
pre-training and a generated partition and runs the DAG for the day 2026-11-20 (run date 2026-11-21: the
partition comes from the run's data interval); this module checks the outputs.
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

from tasks.core import schema
from tasks.demo import make_dataset, shapes
from tests.conftest import DEMO_DS as DS
from tests.conftest import airflow_sh as sh
from tests.conftest import copy_storage

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def dag_run(trained_demo_run):
    """The session's image demo run (``trained_demo_run``): this module checks what it did."""
    return trained_demo_run.base, trained_demo_run.storage, trained_demo_run.result


def shuffle_train_labels(partition: Path, fractions=(0.7, 0.1, 0.2), seed: int = 3) -> None:
    """Permutes the labels of the records that land in the train split: a model trained on it learns noise,
    while the eval and test splits keep their true labels."""
    import random

    rows = list(csv.DictReader(open(partition / "labels.csv")))
    train = [r for r in rows if schema.split_of(r["path"], fractions) == "train"]
    labels = [r["label"] for r in train]
    random.Random(seed).shuffle(labels)
    for r, label in zip(train, labels):
        r["label"] = label
    with open(partition / "labels.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["path", "label"])
        w.writeheader()
        w.writerows(rows)


@pytest.fixture(scope="module")
def worse_candidate_run(trained_demo_run, tmp_path_factory):
    """A second day whose training labels are shuffled (two epochs, one worker); min_accuracy 0 so that only the
    baseline can refuse it.
    Runs on a copy of the session's demo run (whose published model is the baseline), which stays read-only."""
    assert trained_demo_run.result.returncode == 0, "the first run must publish the baseline"
    base = tmp_path_factory.mktemp("e2e-worse")
    storage, env = copy_storage(trained_demo_run, base)
    part = Path(make_dataset.run(make_dataset.Config(raw_root=f"file://{storage}/raw", ds="2026-11-21"))[7:])
    shuffle_train_labels(part)
    # Two epochs on one worker: with shuffled labels the candidate stays near chance however long it trains.
    conf = {"min_accuracy": 0.0, "epochs": 2, "num_workers": 1}
    res = sh(f"airflow dags test tfhub_finetune 2026-11-22 -c '{json.dumps(conf)}'", env, timeout=1500)
    (base / "dags-test-worse.log").write_text(res.stdout + res.stderr)
    return storage, res


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


def test_first_run_is_blessed_without_baseline_and_reports_it(dag_run):
    _, storage, _ = dag_run
    run = storage / "runs" / f"ds={DS}"
    blessing = json.loads((run / "blessing.json").read_text())
    assert blessing["blessed"] is True and blessing["baseline"] is None
    assert "baseline: none" in (run / "report.md").read_text()
    published = json.loads((run / "published.json").read_text())
    assert published["version"] == 20261120 and published["verified"] is True
    assert published["accuracy"] == json.loads((run / "metrics.json").read_text())["accuracy"]


def test_worse_candidate_is_not_blessed_and_nothing_is_published(worse_candidate_run):
    storage, res = worse_candidate_run
    out = res.stdout + res.stderr
    assert res.returncode == 0, out[-5000:]                  # not blessed is not a failure
    blessing = json.loads((storage / "runs" / "ds=2026-11-21" / "blessing.json").read_text())
    assert blessing["blessed"] is False
    assert blessing["baseline"]["version"] == 20261120
    assert blessing["baseline"]["accuracy"] >= 0.9 > blessing["candidate"]["accuracy"]
    assert any("< baseline version 20261120" in r for r in blessing["reasons"])
    assert "NOT BLESSED" in out
    assert sorted(p.name for p in (storage / "serving" / "shapes").iterdir()) == ["20261120"]
    assert not (storage / "runs" / "ds=2026-11-21" / "published.json").exists()


def test_exported_model_classifies_held_back_images_in_a_fresh_process(dag_run, tmp_path):
    _, storage, _ = dag_run
    version = storage / "serving" / "shapes" / "20261120"
    assert (version / "saved_model.pb").exists()
    assert sorted(p.name for p in version.parent.iterdir()) == ["20261120"]
    # Images the pipeline never saw: another seed, another day. 200 of them: with 80, a model of 0.93 test accuracy
    # fell under the bar one run in ten by chance (71 of 80 right, measured on 2026-12-01).
    held = make_dataset.run(make_dataset.Config(raw_root=f"file://{tmp_path}", ds="2027-01-01", num_images=200,
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
