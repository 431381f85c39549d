"""Fine-tuning in a real Spark barrier stage (2 TF workers), then evaluation and export of what it trained."""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from tasks import evaluate as E
from tasks import export_model as X
from tasks import finetune as F
from tasks import prepare_examples as P
from tasks.core import run_folder
from tasks.serving import evaluation, export
from tasks.training import preflight
from tests.conftest import make_partition


@pytest.fixture(scope="module")
def trained(spark, small_hub_module, tmp_path_factory):
    root = tmp_path_factory.mktemp("storage")
    raw = make_partition(root / "raw", "2026-11-20", num_images=48)
    examples = f"file://{root}/examples/ds=2026-11-20"
    # An eval split of 9 records: the workers' shares of 5 and 4 take 2 and 1 batches of 4, the case where
    # filling the larger share's steps by repeating the smaller one would score records twice.
    P.run(P.Config(raw=f"file://{raw}", output=examples, partition="2026-11-20", min_shards=2,
                   split_fractions=(0.55, 0.2, 0.25)), spark)
    run_dir = f"file://{root}/runs/ds=2026-11-20"
    cfg = F.Config(examples=examples, run_dir=run_dir, storage_root=f"file://{root}",
                   hub_module=str(small_hub_module), num_workers=2, epochs=2, batch_size=8, fine_tune=True)
    history = F.run(cfg, spark)
    return root, examples, run_dir, history


def test_barrier_stage_trains_and_only_the_chief_writes(trained):
    root, _, run_dir, history = trained
    run = root / "runs" / "ds=2026-11-20"
    assert (run / "model" / "saved_model.pb").exists()
    assert sorted(p.name for p in run.iterdir()) == ["finetune_config.json", "history.json", "model",
                                                     "tensorboard", "training_curves.png"]
    saved = json.loads((run / "history.json").read_text())
    assert saved["num_workers"] == 2 and len(saved["history"]) == 2
    assert {"loss", "accuracy", "examples_per_sec", "val_accuracy"} <= set(saved["history"][0])
    # The two workers read different files.
    files = saved["worker_files"]
    assert set(files["0"]).isdisjoint(files["1"]) and files["0"] and files["1"]
    manifest = json.loads((root / "examples/ds=2026-11-20/manifest.json").read_text())
    assert saved["steps_per_epoch"] == preflight.steps_per_epoch(manifest["counts"]["train"], 8)
    # Each epoch's validation pass scored every eval record once: no record repeated to even out the workers.
    assert manifest["counts"]["eval"] == 9
    assert [h["val_examples"] for h in saved["history"]] == [manifest["counts"]["eval"]] * 2, manifest["files"]["eval"]
    # The driver recorded how often each worker's records are drawn.
    records = {f["name"]: f["records"] for f in manifest["files"]["train"]}
    assert saved["sampling"]["records"] == [sum(records[n] for n in files[r]) for r in ("0", "1")]
    assert saved["sampling"]["draws_per_epoch"] == saved["steps_per_epoch"] * 4


def serving_cfg(root, examples, run_dir, version=20261120):
    return X.Config(run_dir=run_dir, examples=examples, serving_root=f"file://{root}/serving", model_name="shapes",
                    version=version)


@pytest.fixture(scope="module")
def published(trained):
    """The trained model published as version 20261120 of ``serving/shapes``: its URL. The tests that change
    the version leave one as complete."""
    root, examples, run_dir, _ = trained
    return X.run(serving_cfg(root, examples, run_dir))


def test_first_evaluation_has_no_baseline_and_writes_the_report(trained):
    root, examples, run_dir, _ = trained
    # A serving root of its own, empty: the baseline is absent whatever ran before in this module.
    blessing = E.run(E.Config(examples=examples, run_dir=run_dir, serving_root=f"file://{root}/serving-first",
                              model_name="shapes", min_accuracy=0.0))
    run = root / "runs" / "ds=2026-11-20"
    metrics = json.loads((run / "metrics.json").read_text())
    manifest = json.loads((root / "examples/ds=2026-11-20/manifest.json").read_text())
    assert metrics["num_examples"] == manifest["counts"]["test"]
    assert np.array(metrics["confusion_matrix"]).sum() == manifest["counts"]["test"]
    assert set(metrics["per_class"]) == set(manifest["labels"])
    assert {"precision", "recall", "f1", "support"} == set(next(iter(metrics["per_class"].values())))
    assert "top_2_accuracy" in metrics and "top_3_accuracy" in metrics
    assert blessing["blessed"] is True and blessing["baseline"] is None
    assert any(r.startswith("no baseline") for r in blessing["reasons"])
    assert json.loads((run / "blessing.json").read_text()) == blessing
    report = (run / "report.md").read_text()
    assert "BLESSED" in report and "baseline: none" in report and "hub_module" in report
    assert (run / "confusion_matrix.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (run / "training_curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_blessing_reasons():
    metrics = {"accuracy": 0.8, "loss": 0.5, "num_examples": 100,
               "per_class": {"a": {"recall": 0.9}, "b": {"recall": 0.6}}}
    cfg = E.Config(examples="", run_dir="", min_accuracy=0.75, min_class_recall=0.7, baseline_tolerance=0.02)
    b = evaluation.bless(metrics, cfg, {"version": 20261119, "accuracy": 0.81})
    assert b["blessed"] is False
    assert "recall below min_class_recall 0.7000 for b (0.6000)" in b["reasons"]
    assert any("baseline version 20261119" in r and ">=" in r for r in b["reasons"])
    cfg.min_class_recall = 0
    assert evaluation.bless(metrics, cfg, {"version": 20261119, "accuracy": 0.81})["blessed"] is True
    worse = evaluation.bless(metrics, cfg, {"version": 20261119, "accuracy": 0.85})
    assert worse["blessed"] is False
    assert worse["reasons"][-1] == ("accuracy 0.8000 < baseline version 20261119 accuracy 0.8500 - tolerance "
                                    "0.0200")


def test_export_publishes_a_servable_version(trained, published):
    root = trained[0]
    url = published
    version = root / "serving" / "shapes" / "20261120"
    assert url.endswith("/serving/shapes/20261120") and (version / "saved_model.pb").exists()
    assert (version / "assets" / "labels.txt").read_text().split() == json.loads(
        (root / "runs/ds=2026-11-20/history.json").read_text())["labels"]
    published = json.loads((root / "runs/ds=2026-11-20/published.json").read_text())
    assert published["verified"] is True and published["version"] == 20261120

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


def test_saved_model_cli_lists_predict_and_classify_signatures(trained, published):
    root = trained[0]
    version = root / "serving" / "shapes" / "20261120"
    cli = Path(sys.executable).parent / "saved_model_cli"
    res = subprocess.run([str(cli), "show", "--dir", str(version), "--all"], capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    out = res.stdout
    assert "signature_def['serving_default']" in out and "signature_def['classify']" in out
    assert "Method name is: tensorflow/serving/classify" in out
    assert "Method name is: tensorflow/serving/predict" in out
    assert "inputs['image_bytes']" in out and "inputs['inputs']" in out
    assert "outputs['classes']" in out and "outputs['scores']" in out


def test_warmup_requests_parse_as_prediction_logs(trained, published):
    from tensorflow_serving.apis import prediction_log_pb2

    from tasks.prep import tfrecord

    version = trained[0] / "serving" / "shapes" / "20261120"
    with open(version / run_folder.WARMUP_FILE, "rb") as f:
        logs = [prediction_log_pb2.PredictionLog.FromString(r) for r in tfrecord.read_records(f)]
    kinds = [entry.WhichOneof("log_type") for entry in logs]
    assert 2 <= len(logs) <= 1000
    assert kinds.count("classify_log") == 1 and kinds.count("predict_log") == len(logs) - 1
    assert logs[0].predict_log.request.model_spec.name == "shapes"
    assert logs[-1].classify_log.request.model_spec.signature_name == "classify"


def test_rerun_replaces_the_version_and_readers_never_see_a_partial_one(trained):
    root, examples, run_dir, _ = trained
    folder = root / "serving" / "shapes"
    X.run(serving_cfg(root, examples, run_dir))
    seen, stop = [], threading.Event()

    def poll():
        # What TF Serving does: list numeric folders, look inside.
        # The version exists throughout (it is exchanged in place): its absence, or its vanishing between the
        # listing and the look inside, is recorded as an empty (incomplete) folder.
        while not stop.is_set():
            versions = [p for p in folder.iterdir() if p.name.isdigit()]
            for p in versions:
                try:
                    seen.append(set(os.listdir(p)))
                except FileNotFoundError:
                    seen.append(set())
            if not versions:
                seen.append(set())

    t = threading.Thread(target=poll)
    t.start()
    try:
        X.run(serving_cfg(root, examples, run_dir))
    finally:
        stop.set()
        t.join()
    complete = {"saved_model.pb", "variables", "assets", "assets.extra", "fingerprint.pb"}
    assert seen and all(complete <= names for names in seen), [n for n in seen if not complete <= n][:3]
    assert sorted(p.name for p in folder.iterdir()) == ["20261120"]
    assert not (folder / "20261120" / "20261120").exists()


def test_killed_export_leaves_the_previous_version_and_no_numeric_partial(trained):
    root, examples, run_dir, _ = trained
    folder = root / "serving" / "shapes"
    X.run(serving_cfg(root, examples, run_dir))
    before = (folder / "20261120" / "saved_model.pb").read_bytes()
    cmd = [sys.executable, "-m", "tasks.export_model", "--run-dir", run_dir, "--examples", examples,
           "--serving-root", f"file://{root}/serving", "--model-name", "shapes", "--version", "20261120"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and not any(p.name.startswith(".20261120.staging-") and any(p.iterdir())
                                             for p in folder.iterdir() if p.is_dir()):
        time.sleep(0.05)
    proc.kill()
    proc.wait()
    assert (folder / "20261120" / "saved_model.pb").read_bytes() == before
    assert [p.name for p in folder.iterdir() if p.name.isdigit()] == ["20261120"]
    X.run(serving_cfg(root, examples, run_dir))  # the next run cleans the leftovers
    assert sorted(p.name for p in folder.iterdir()) == ["20261120"]


def test_a_failed_check_after_publishing_restores_the_previous_version(trained, monkeypatch):
    root, examples, run_dir, _ = trained
    folder = root / "serving" / "shapes"
    X.run(serving_cfg(root, examples, run_dir))
    before = {p.name: p.stat().st_ino for p in (folder / "20261120").iterdir()}

    def broken(version_dir, expected, timeout=300):
        raise RuntimeError("predictions disagree")

    monkeypatch.setattr(export, "verify_in_fresh_process", broken)
    with pytest.raises(RuntimeError, match="predictions disagree"):
        X.run(serving_cfg(root, examples, run_dir))
    assert {p.name: p.stat().st_ino for p in (folder / "20261120").iterdir()} == before
    with pytest.raises(RuntimeError, match="predictions disagree"):
        X.run(serving_cfg(root, examples, run_dir, version=20261121))
    assert sorted(p.name for p in folder.iterdir()) == ["20261120"]


def test_second_evaluation_compares_with_the_published_baseline(trained):
    root, examples, run_dir, _ = trained
    X.run(serving_cfg(root, examples, run_dir))
    blessing = E.run(E.Config(examples=examples, run_dir=run_dir, serving_root=f"file://{root}/serving",
                              model_name="shapes", min_accuracy=0.0, baseline_tolerance=0.0))
    # The baseline is this very model, re-scored through its serving signature: same accuracy, blessed.
    assert blessing["baseline"]["version"] == 20261120
    assert blessing["baseline"]["accuracy"] == pytest.approx(blessing["candidate"]["accuracy"])
    assert blessing["blessed"] is True


def test_classification_metrics_on_known_predictions():
    y = np.array([0, 0, 1, 1, 2])
    probs = np.array([[0.9, 0.1, 0], [0.2, 0.8, 0], [0.1, 0.9, 0], [0.6, 0.4, 0], [0, 0, 1.0]])
    m = evaluation.classification_metrics(y, probs, ["a", "b", "c"])
    assert m["accuracy"] == pytest.approx(3 / 5)
    assert m["confusion_matrix"] == [[1, 1, 0], [1, 1, 0], [0, 0, 1]]
    assert m["per_class"]["a"] == {"precision": 0.5, "recall": 0.5, "f1": 0.5, "support": 2}
    assert m["per_class"]["c"] == {"precision": 1.0, "recall": 1.0, "f1": 1.0, "support": 1}
    assert m["top_2_accuracy"] == pytest.approx(1.0)
    assert m["loss"] == pytest.approx(-np.mean(np.log([0.9, 0.2, 0.9, 0.4, 1.0])), rel=1e-6)


def test_files_are_split_between_workers_by_record_count():
    files = [{"name": f"train-{i}", "records": n} for i, n in enumerate([50, 40, 30, 20, 10, 10])]
    shares = preflight.assign_files(files, 2)
    assert set(shares[0]).isdisjoint(shares[1]) and len(shares[0]) + len(shares[1]) == 6
    counts = [sum(f["records"] for f in files if f["name"] in s) for s in shares]
    assert abs(counts[0] - counts[1]) <= 10
    with pytest.raises(preflight.FinetuneError, match="3 workers but only 2 non-empty training files"):
        preflight.assign_files([{"name": "a", "records": 5}, {"name": "b", "records": 5}, {"name": "c", "records": 0}], 3)
    # Largest first alone gives 70/50 here; moving and swapping files between workers evens it out.
    files = [{"name": f"train-{i}", "records": n} for i, n in enumerate([30, 30, 20, 20, 20])]
    shares = preflight.assign_files(files, 2)
    assert sorted(sum(f["records"] for f in files if f["name"] in s) for s in shares) == [60, 60]


def test_an_uneven_split_logs_how_often_each_worker_draws_its_records(caplog):
    # The 85/15 example: two files cannot be split evenly between two workers.
    files = [{"name": "train-0", "records": 850}, {"name": "train-1", "records": 150}]
    sampling = preflight.sampling_rates(files, preflight.assign_files(files, 2), 32)
    draws = preflight.steps_per_epoch(1000, 32) * 16
    assert sampling == {"records": [850, 150], "draws_per_epoch": draws,
                        "rates": [round(draws / 850, 4), round(draws / 150, 4)]}
    with caplog.at_level(logging.INFO, logger="finetune"):
        preflight.log_sampling(sampling)
    [warning] = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert "each worker draws 496 records per epoch" in warning
    assert "(worker 0: 850 records, 0.58, worker 1: 150 records, 3.31)" in warning
    assert "one on worker 1 5.7 times as often as one on worker 0" in warning
    caplog.clear()
    files = [{"name": f"train-{i}", "records": n} for i, n in enumerate([300, 250, 250, 200])]
    with caplog.at_level(logging.INFO, logger="finetune"):
        preflight.log_sampling(preflight.sampling_rates(files, preflight.assign_files(files, 2), 32))
    assert [r.levelno for r in caplog.records] == [logging.INFO]
    assert "worker 0: 500 records, 0.99, worker 1: 500 records, 0.99" in caplog.text


def test_steps_per_epoch_comes_from_the_global_count():
    assert preflight.steps_per_epoch(420, 32) == 13
    assert preflight.steps_per_epoch(5, 32) == 1


def test_finetune_args_are_validated():
    base = ["--examples", "file:///e", "--run-dir", "file:///r", "--storage-root", "file:///s", "--hub-module", "h"]
    cfg = F.parse_args(base + ["--fine-tune", "False", "--num-workers", "4", "--batch-size", "64"])
    assert cfg.fine_tune is False and cfg.num_workers == 4
    with pytest.raises(SystemExit):
        F.parse_args(base + ["--num-workers", "3", "--batch-size", "32"])
    with pytest.raises(SystemExit):
        F.parse_args(base + ["--fine-tune", "maybe"])


def resplit_training(examples: Path, count: int) -> list[int]:
    """Rewrites the training split of a prepared dataset as ``count`` files of about equal record counts."""
    from tasks.core import schema
    from tasks.prep import tfrecord

    manifest = json.loads((examples / schema.MANIFEST).read_text())
    records = []
    for f in manifest["files"]["train"]:
        if (examples / f["name"]).exists():
            with open(examples / f["name"], "rb") as fh:
                records += list(tfrecord.read_records(fh))
            (examples / f["name"]).unlink()
    manifest["files"]["train"] = []
    for i in range(count):
        name = schema.shard_name("train", i, count)
        with open(examples / name, "wb") as fh:
            tfrecord.write_records(fh, records[i::count])
        manifest["files"]["train"].append({"name": name, "records": len(records[i::count]),
                                           "bytes": (examples / name).stat().st_size})  # as prep writes it
    (examples / schema.MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True))
    return [f["records"] for f in manifest["files"]["train"]]


def test_more_workers_than_slots_fails_before_launching(trained, spark, tmp_path):
    root, examples, _, _ = trained
    # Three non-empty training files, so that three workers pass the data checks and meet the slot check.
    copy = tmp_path / "examples" / "ds=2026-11-20"
    shutil.copytree(root / "examples" / "ds=2026-11-20", copy)
    assert min(resplit_training(copy, 3)) > 0
    cfg = F.Config(examples=f"file://{copy}", run_dir=f"file://{tmp_path}/runs/other", storage_root=f"file://{root}",
                   hub_module=json.loads((root / "runs/ds=2026-11-20/history.json").read_text())["hub_module"],
                   num_workers=3, batch_size=9, slots_wait_s=1)
    with pytest.raises(preflight.FinetuneError, match=r"^num_workers=3 barrier tasks wanted but 2 task slots available "
                                              r"\(the settings allow at most 2; master local\[2\]"):
        F.run(cfg, spark)
    assert not (tmp_path / "runs").exists()  # refused before anything was written or launched


def test_evaluate_and_export_on_hdfs(trained, tmp_path, monkeypatch):
    """The same stages with examples, run folder and serving root on hdfs:// (the WebHDFS test server)."""
    import shutil

    from tasks.io import storage
    from tests.support.webhdfs_server import WebHdfsTestServer

    root = trained[0]
    with WebHdfsTestServer(tmp_path / "hdfs") as srv:
        monkeypatch.setenv("TFHUB_WEBHDFS_URL", srv.url)
        monkeypatch.setattr(storage, "_client", None)
        store = srv.root / "tfhub"
        shutil.copytree(root / "examples", store / "examples")
        run = store / "runs" / "ds=2026-11-20"
        run.mkdir(parents=True)
        shutil.copytree(root / "runs" / "ds=2026-11-20" / "model", run / "model")
        for name in ("history.json", "finetune_config.json"):
            shutil.copyfile(root / "runs" / "ds=2026-11-20" / name, run / name)
        hdfs = "hdfs://namenode:8020/tfhub"
        cfg = X.Config(run_dir=f"{hdfs}/runs/ds=2026-11-20", examples=f"{hdfs}/examples/ds=2026-11-20",
                       serving_root=f"{hdfs}/serving", model_name="shapes", version=20261120)

        url = X.run(cfg)
        version = store / "serving" / "shapes" / "20261120"
        assert url == f"{hdfs}/serving/shapes/20261120" and (version / "saved_model.pb").exists()
        assert (version / "assets" / "labels.txt").read_text().split() == ["circle", "cross", "square", "triangle"]
        published = json.loads((run / "published.json").read_text())
        assert published["verified"] is True and published["path"] == url
        # Uploaded to a hidden sibling, then renamed into place.
        assert any(op == "RENAME" and "/serving/shapes/.20261120.staging-" in path for _, op, path in srv.calls())
        before = (version / "saved_model.pb").read_bytes()

        # A failed check after publishing puts the previous copy back.
        def broken(version_dir, expected, timeout=300):
            raise RuntimeError("predictions disagree")

        monkeypatch.setattr(export, "verify_in_fresh_process", broken)
        with pytest.raises(RuntimeError, match="predictions disagree"):
            X.run(cfg)
        assert (version / "saved_model.pb").read_bytes() == before
        assert sorted(p.name for p in version.parent.iterdir()) == ["20261120"]

        blessing = E.run(E.Config(examples=cfg.examples, run_dir=cfg.run_dir, serving_root=cfg.serving_root,
                                  model_name="shapes", min_accuracy=0.0, baseline_tolerance=0.0))
        assert blessing["baseline"]["version"] == 20261120 and blessing["baseline"]["path"] == url
        assert blessing["baseline"]["accuracy"] == pytest.approx(blessing["candidate"]["accuracy"])
        assert json.loads((run / "blessing.json").read_text()) == blessing
        metrics = json.loads((run / "metrics.json").read_text())
        assert metrics["num_examples"] == json.loads(
            (store / "examples" / "ds=2026-11-20" / "manifest.json").read_text())["counts"]["test"]
        assert (run / "confusion_matrix.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert "BLESSED" in (run / "report.md").read_text()
