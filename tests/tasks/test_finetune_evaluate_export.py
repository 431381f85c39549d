"""Fine-tuning in a real Spark barrier stage (2 TF workers), then evaluation and export of what it trained."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from tasks import evaluate as E
from tasks import export_model as X
from tasks import finetune as F
from tasks import prepare_examples as P
from tests.conftest import make_partition


@pytest.fixture(scope="module")
def trained(spark, small_hub_module, tmp_path_factory):
    root = tmp_path_factory.mktemp("storage")
    raw = make_partition(root / "raw", "2026-11-20", num_images=48)
    examples = f"file://{root}/examples/ds=2026-11-20"
    P.run(P.Config(raw=f"file://{raw}", output=examples, min_shards=2), spark)
    run_dir = f"file://{root}/runs/ds=2026-11-20"
    cfg = F.Config(examples=examples, run_dir=run_dir, storage_root=f"file://{root}",
                   hub_module=str(small_hub_module), num_workers=2, epochs=2, batch_size=8, fine_tune=True)
    history = F.run(cfg, spark)
    return root, examples, run_dir, history


def test_barrier_stage_trains_and_only_the_chief_writes(trained):
    root, _, run_dir, history = trained
    run = root / "runs" / "ds=2026-11-20"
    assert (run / "model" / "saved_model.pb").exists()
    assert sorted(p.name for p in run.iterdir()) == ["finetune_config.json", "history.json", "model"]
    saved = json.loads((run / "history.json").read_text())
    assert saved["num_workers"] == 2 and len(saved["history"]) == 2
    assert {"loss", "accuracy", "examples_per_sec", "val_accuracy"} <= set(saved["history"][0])
    # The two workers read different files.
    files = saved["worker_files"]
    assert set(files["0"]).isdisjoint(files["1"]) and files["0"] and files["1"]
    assert saved["steps_per_epoch"] == F.steps_per_epoch(
        json.loads((root / "examples/ds=2026-11-20/manifest.json").read_text())["counts"]["train"], 8)


def test_evaluate_writes_metrics_for_the_test_split(trained):
    root, examples, run_dir, _ = trained
    metrics = E.run(E.Config(examples=examples, run_dir=run_dir))
    manifest = json.loads((root / "examples/ds=2026-11-20/manifest.json").read_text())
    assert metrics["num_examples"] == manifest["counts"]["test"]
    assert np.array(metrics["confusion_matrix"]).sum() == manifest["counts"]["test"]
    assert set(metrics["per_class"]) == set(manifest["labels"])
    assert json.loads((root / "runs/ds=2026-11-20/metrics.json").read_text()) == json.loads(json.dumps(metrics))


def test_export_publishes_a_servable_version_and_replaces_it_on_rerun(trained):
    root, examples, run_dir, _ = trained
    cfg = X.Config(run_dir=run_dir, examples=examples, serving_root=f"file://{root}/serving", model_name="shapes",
                   version=20261120)
    url = X.run(cfg)
    version = root / "serving" / "shapes" / "20261120"
    assert url.endswith("/serving/shapes/20261120") and (version / "saved_model.pb").exists()
    assert (version / "assets" / "labels.txt").read_text().split() == json.loads(
        (root / "runs/ds=2026-11-20/history.json").read_text())["labels"]
    X.run(cfg)  # a rerun replaces the version: one folder, no leftovers, nothing nested
    assert sorted(p.name for p in (root / "serving" / "shapes").iterdir()) == ["20261120"]
    assert not (version / "20261120").exists()

    # A fresh process loads it with plain TensorFlow and classifies raw image bytes.
    image = next((root / "raw" / "ds=2026-11-20" / "images").iterdir()).read_bytes()
    code = textwrap.dedent(f"""
        import json, tensorflow as tf
        m = tf.saved_model.load({str(version)!r})
        out = m.signatures["serving_default"](image_bytes=tf.constant([{image!r}, {image!r}]))
        print(json.dumps({{k: v.numpy().tolist() for k, v in out.items()}}, default=bytes.decode))
    """)
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    out = json.loads(res.stdout.strip().splitlines()[-1])
    labels = ["circle", "cross", "square", "triangle"]
    assert np.array(out["probabilities"]).shape == (2, 4)
    assert np.allclose(np.array(out["probabilities"]).sum(axis=1), 1.0, atol=1e-5)
    assert out["labels"] == [labels, labels]
    assert out["class_names"][0] == labels[out["class_ids"][0]]


def test_classification_metrics_on_known_predictions():
    y = np.array([0, 0, 1, 1, 2])
    probs = np.array([[0.9, 0.1, 0], [0.2, 0.8, 0], [0.1, 0.9, 0], [0.6, 0.4, 0], [0, 0, 1.0]])
    m = E.classification_metrics(y, probs, ["a", "b", "c"])
    assert m["accuracy"] == pytest.approx(3 / 5)
    assert m["confusion_matrix"] == [[1, 1, 0], [1, 1, 0], [0, 0, 1]]
    assert m["per_class"]["a"] == {"precision": 0.5, "recall": 0.5, "support": 2}
    assert m["per_class"]["c"] == {"precision": 1.0, "recall": 1.0, "support": 1}
    assert m["loss"] == pytest.approx(-np.mean(np.log([0.9, 0.2, 0.9, 0.4, 1.0])), rel=1e-6)


def test_files_are_split_between_workers_by_record_count():
    files = [{"name": f"train-{i}", "records": n} for i, n in enumerate([50, 40, 30, 20, 10, 10])]
    shares = F.assign_files(files, 2)
    assert set(shares[0]).isdisjoint(shares[1]) and len(shares[0]) + len(shares[1]) == 6
    counts = [sum(f["records"] for f in files if f["name"] in s) for s in shares]
    assert abs(counts[0] - counts[1]) <= 10
    with pytest.raises(F.FinetuneError, match="3 workers but only 2 non-empty training files"):
        F.assign_files([{"name": "a", "records": 5}, {"name": "b", "records": 5}, {"name": "c", "records": 0}], 3)


def test_steps_per_epoch_comes_from_the_global_count():
    assert F.steps_per_epoch(420, 32) == 13
    assert F.steps_per_epoch(5, 32) == 1


def test_finetune_args_are_validated():
    base = ["--examples", "file:///e", "--run-dir", "file:///r", "--storage-root", "file:///s", "--hub-module", "h"]
    cfg = F.parse_args(base + ["--fine-tune", "False", "--num-workers", "4", "--batch-size", "64"])
    assert cfg.fine_tune is False and cfg.num_workers == 4
    with pytest.raises(SystemExit):
        F.parse_args(base + ["--num-workers", "3", "--batch-size", "32"])
    with pytest.raises(SystemExit):
        F.parse_args(base + ["--fine-tune", "maybe"])


def test_more_workers_than_slots_fails_before_launching(trained, spark):
    root, examples, run_dir, _ = trained
    cfg = F.Config(examples=examples, run_dir=f"file://{root}/runs/other", storage_root=f"file://{root}",
                   hub_module=json.loads((root / "runs/ds=2026-11-20/history.json").read_text())["hub_module"],
                   num_workers=2, batch_size=8)
    cfg.num_workers = 3
    with pytest.raises(F.FinetuneError, match="3 workers but only 2 non-empty|3 barrier tasks wanted but the "
                                              "application has 2 task slots"):
        F.run(cfg, spark)
