"""The scoring engine on real Spark (``local[2]``) and real TensorFlow: batch scoring of a raw partition with a
published model, and evaluation on the executors.

The published model is the small hub module under an untrained head, exported by ``export_model``'s own serving
module: its accuracy does not matter, only that Spark gives the same numbers as one process.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tasks import evaluate as E
from tasks import score_partition as S
from tasks.serving import evaluation, models, scoring
from tests.conftest import make_partition

DS = "2026-11-20"
LABELS = ("circle", "cross", "square", "triangle")
TRAIN_COUNTS = {"circle": 10, "cross": 10, "square": 10, "triangle": 10}


def publish(keras_model, version_dir: Path, labels, task_type: str, image_size, train_counts: dict) -> None:
    """What ``export_model`` publishes (its serving module, labels asset, provenance), without its run folder."""
    import tensorflow as tf

    from tasks.serving import export

    assets = version_dir.parent / f".assets-{version_dir.name}"
    assets.mkdir(parents=True)
    (assets / "labels.txt").write_text("".join(f"{name}\n" for name in labels))
    module = export.build_serving_module(keras_model, str(assets / "labels.txt"), image_size, task_type)
    tf.saved_model.save(module, str(version_dir), signatures={"serving_default": module.serve,
                                                              "classify": module.classify})
    (version_dir / "assets.extra").mkdir(exist_ok=True)
    (version_dir / models.PROVENANCE).write_text(json.dumps({"task_type": task_type, "labels": list(labels),
                                                              "train_label_counts": train_counts}))
    shutil.rmtree(assets)


def image_model(hub_module: Path, seed: int = 1):
    from tasks.training import model as M

    M.tf.keras.utils.set_random_seed(seed)
    return M.build_model(str(hub_module), M.ModelConfig(num_classes=len(LABELS), image_size=(32, 32)))


@pytest.fixture(scope="module")
def scored(spark, small_hub_module, tmp_path_factory):
    """A published image model, a raw partition with one truncated image, and its scoring."""
    root = tmp_path_factory.mktemp("scoring")
    publish(image_model(small_hub_module), root / "serving" / "shapes" / "20261120", LABELS,
            "image_classification", (32, 32), TRAIN_COUNTS)
    raw = make_partition(root / "raw", DS, num_images=24)
    first = sorted(raw.rglob("*.jpg"))[0]
    (raw / "_SUCCESS").unlink()
    (raw / "broken.jpg").write_bytes(first.read_bytes()[: len(first.read_bytes()) // 2])
    with open(raw / "labels.csv", "a", newline="") as f:
        csv.writer(f).writerow(["broken.jpg", "circle"])
    (raw / "_SUCCESS").write_bytes(b"")
    stats = S.run(cfg(root, DS), spark)
    return root, raw, stats


def cfg(root: Path, ds: str, **kw) -> S.Config:
    return S.Config(raw=f"file://{root}/raw/ds={ds}", output=f"file://{root}/predictions/shapes/ds={ds}",
                    serving_root=f"file://{root}/serving", model_name="shapes", partition=ds, max_bad_fraction=0.1,
                    **kw)


def test_predictions_equal_the_model_in_one_process(scored):
    import tensorflow as tf

    root, raw, stats = scored
    out = root / "predictions" / "shapes" / f"ds={DS}"
    assert (out / "_SUCCESS").exists()
    df = pd.read_parquet(out)  # the folder reads as one table: _stats.json, _manifest.json are skipped
    assert list(df.columns) == list(scoring.PREDICTION_COLUMNS)
    labels = {r["path"]: r["label"] for r in csv.DictReader(open(raw / "labels.csv"))}
    assert len(df) == 24 and sorted(df.record_id) == sorted(p for p in labels if p != "broken.jpg")
    assert set(df.model_name) == {"shapes"} and set(df.model_version) == {20261120} and set(df.partition) == {DS}
    assert all(df.label == [labels[i] for i in df.record_id])

    serve = tf.saved_model.load(str(root / "serving" / "shapes" / "20261120")).signatures["serving_default"]
    df = df.sort_values("record_id")
    expected = serve(image_bytes=tf.constant([(raw / i).read_bytes() for i in df.record_id]))
    got = np.stack(df.probabilities.to_numpy())
    np.testing.assert_allclose(got, expected["probabilities"].numpy(), atol=1e-5)
    assert list(df.predicted_label) == [n.decode() for n in expected["class_names"].numpy()]
    np.testing.assert_allclose(df.top_probability, got.max(axis=1), atol=1e-6)

    manifest = json.loads((out / S.MANIFEST).read_text())
    assert manifest["labels"] == list(LABELS) and manifest["model_version"] == 20261120
    assert stats["records"] == {"total": 25, "scored": 24, "bad": 1, "bad_fraction": 0.04}
    assert sum(stats["predicted"].values()) == 24
    assert stats["predicted"] == dict(df.predicted_label.value_counts().reindex(LABELS, fill_value=0))
    assert stats["mean_top_probability"] == pytest.approx(df.top_probability.mean(), abs=1e-5)
    drift = stats["drift_from_training"]
    assert drift["training_labels"] == TRAIN_COUNTS and "total_variation" in drift
    assert stats["model_load"]["loads"] >= 1 and len(stats["model_load"]["load_seconds"]) == stats["model_load"]["loads"]


def test_a_corrupt_record_is_quarantined_and_the_rest_scored(scored):
    root, _, stats = scored
    q = root / "quarantine" / "predictions" / "shapes" / f"ds={DS}"
    assert (q / "_SUCCESS").exists()
    index = [json.loads(line) for line in open(q / "quarantine.jsonl")]
    assert [(r["id"], r["reason"]) for r in index] == [("broken.jpg", "truncated")]
    assert stats["bad_reasons"] == {"truncated": 1}
    assert len(list(q.glob("part-*.tfrecord"))) == 1


def test_a_rerun_replaces_only_its_own_partition(scored, spark):
    root, raw, _ = scored
    mine, theirs = (root / "predictions" / "shapes" / f"ds={d}" for d in (DS, "2026-11-21"))
    shutil.copytree(mine, theirs)  # another day's committed predictions (their partition column says DS)
    before = {p.name: p.read_bytes() for p in theirs.iterdir()}
    (mine / "stray.parquet").write_bytes(b"left by someone")
    S.run(cfg(root, DS), spark)
    assert not (mine / "stray.parquet").exists() and (mine / "_SUCCESS").exists()
    assert {p.name: p.read_bytes() for p in theirs.iterdir()} == before
    assert len(pd.read_parquet(mine)) == 24


def test_a_pinned_version_that_is_not_published_fails_with_the_published_ones(scored, spark):
    root, _, _ = scored
    with pytest.raises(models.ScoringError, match=r"version 20261101 .* published: \[20261120\]"):
        S.run(cfg(root, DS, version=20261101), spark)


def test_the_model_is_loaded_once_per_process(scored):
    root, _, _ = scored
    ref = models.ModelRef(f"file://{root}/serving/shapes/20261120", models.SERVED, "image_classification")
    first, seconds = models.load_scorer(ref)
    again, none = models.load_scorer(ref)
    assert again is first and none is None and (seconds is None or seconds > 0)


def test_evaluation_on_the_executors_gives_the_in_process_metrics(prepared_demo_dataset, small_hub_module, spark,
                                                                   tmp_path):
    """The candidate's metrics and the baseline's accuracy, scored on Spark, equal one process's."""
    import tensorflow as tf

    from tasks.training import model as M

    manifest = json.loads((prepared_demo_dataset.examples / "manifest.json").read_text())
    labels = manifest["labels"]
    keras_model = image_model(small_hub_module, seed=2)
    run = tmp_path / "runs" / f"ds={prepared_demo_dataset.ds}"
    keras_model.save(str(run / "model"), include_optimizer=False)
    (run / "history.json").write_text(json.dumps({"image_size": [32, 32], "labels": labels, "train_seconds": 1.0,
                                                  "task_type": "image_classification"}))
    publish(image_model(small_hub_module, seed=3), tmp_path / "serving" / "shapes" / "20261119", labels,
            "image_classification", (32, 32), manifest["label_counts"]["train"])
    examples = prepared_demo_dataset.examples
    E.run(E.Config(examples=f"file://{examples}", run_dir=f"file://{run}", serving_root=f"file://{tmp_path}/serving",
                   model_name="shapes"), spark)
    metrics = json.loads((run / "metrics.json").read_text())

    files = [str(examples / f["name"]) for f in manifest["files"]["test"] if f["records"]]
    y, probs = evaluation.predict_split(M.load_trained(str(run / "model")), files, (32, 32), 64)
    expected = evaluation.classification_metrics(y, probs, labels)
    assert metrics["num_examples"] == expected["num_examples"] == manifest["counts"]["test"]
    assert metrics["confusion_matrix"] == expected["confusion_matrix"]
    for key in ("accuracy", "loss", "top_2_accuracy", "top_3_accuracy"):
        assert metrics[key] == pytest.approx(expected[key], abs=1e-6), key
    for name in labels:
        for key in ("precision", "recall", "f1"):
            assert metrics["per_class"][name][key] == pytest.approx(expected["per_class"][name][key], abs=1e-9)

    images, label_ids = M.read_split(str(examples), manifest, "test")
    serve = tf.saved_model.load(str(tmp_path / "serving" / "shapes" / "20261119")).signatures["serving_default"]
    names = [n.decode() for n in serve(image_bytes=tf.constant(images))["class_names"].numpy()]
    accuracy = sum(n == labels[i] for n, i in zip(names, label_ids)) / len(images)
    blessing = json.loads((run / "blessing.json").read_text())
    assert blessing["baseline"]["version"] == 20261119
    assert blessing["baseline"]["accuracy"] == pytest.approx(accuracy, abs=1e-9)
    assert blessing["baseline"]["num_examples"] == len(images)


def test_small_units_share_a_spark_task_and_real_ones_do_not():
    """Packing: a small input is one Spark task (one Python worker importing TensorFlow), a unit of real size is a
    task of its own, and a unit whose record count is unknown is never packed."""
    small = [scoring.Unit(i, "tfrecord", f"s{i}", records=30) for i in range(4)]
    assert [[u.index for u in g] for g in scoring.task_groups(small)] == [[0, 1, 2, 3]]
    assert [[u.index for u in g] for g in scoring.task_groups(small, pack_records=60)] == [[0, 1], [2, 3]]
    assert [[u.index for u in g] for g in scoring.task_groups(small, pack_records=0)] == [[0], [1], [2], [3]]
    real = [scoring.Unit(i, "tfrecord", f"r{i}", records=scoring.PACK_RECORDS) for i in range(3)]
    assert [[u.index for u in g] for g in scoring.task_groups(real)] == [[0], [1], [2]]
    unknown = [scoring.Unit(0, "tfrecord", "a"), scoring.Unit(1, "tfrecord", "b", records=1),
               scoring.Unit(2, "tfrecord", "c")]
    assert [[u.index for u in g] for g in scoring.task_groups(unknown)] == [[0], [1], [2]]
    split = scoring.split_units({"files": {"test": [{"name": "a", "records": 7}, {"name": "b", "records": 0},
                                                    {"name": "c", "records": 5}]}}, "test")
    assert [(u.file, u.count) for u in split] == [("a", 7), ("c", 5)]


def test_one_spark_task_per_unit_gives_the_same_predictions(scored, spark, tmp_path, monkeypatch):
    """The small partition above ran as one packed Spark task; unpacked, one task per unit, every part file, the
    counts and the quarantine are the same."""
    root, _, stats = scored
    assert stats["model_load"]["units"] >= 2 and stats["model_load"]["workers"] == 1
    monkeypatch.setattr(scoring, "PACK_RECORDS", 0)
    out = tmp_path / "unpacked"
    unpacked = S.run(dataclasses.replace(cfg(root, DS), output=f"file://{out}/predictions/shapes/ds={DS}"), spark)
    assert unpacked["records"] == stats["records"] and unpacked["predicted"] == stats["predicted"]
    assert unpacked["bad_reasons"] == stats["bad_reasons"]
    assert unpacked["model_load"]["units"] == stats["model_load"]["units"]
    packed_dir, unpacked_dir = root / "predictions" / "shapes" / f"ds={DS}", out / "predictions" / "shapes" / f"ds={DS}"
    parts = sorted(p.name for p in packed_dir.glob("part-*.parquet"))
    assert parts == sorted(p.name for p in unpacked_dir.glob("part-*.parquet")) and len(parts) >= 2
    for name in parts:
        pd.testing.assert_frame_equal(pd.read_parquet(packed_dir / name), pd.read_parquet(unpacked_dir / name))
