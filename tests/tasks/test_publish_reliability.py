"""Publishing a model version: the fresh-process check on what was published, the rollback it triggers, and which
replace path ran (an exchange, or the fallback with its window) on ``file://`` and ``hdfs://``.

The run folder is made here without Spark: the small hub module's classifier (untrained head), saved as the
fine-tuning stage saves it, and a few generated PNGs as the test split.
"""

from __future__ import annotations

import errno
import json
import logging
import os
from pathlib import Path

import pytest

from tasks import export_model as X
from tasks.core import run_folder, schema
from tasks.io import commit, storage
from tasks.prep import tfrecord

LABELS = ["circle", "square"]
PARTITION = "ds=2026-11-20"


@pytest.fixture(scope="module")
def run_store(small_hub_module, tmp_path_factory):
    """A storage root with ``examples/ds=2026-11-20`` (3 test records) and ``runs/ds=2026-11-20`` (model and
    history) that ``export_model`` can publish from."""
    from tasks.training import model as M

    tf = M.tf
    root = tmp_path_factory.mktemp("publish")
    examples, run = root / "examples" / PARTITION, root / "runs" / PARTITION
    examples.mkdir(parents=True)
    run.mkdir(parents=True)
    rng = tf.random.Generator.from_seed(7)
    pngs = [tf.io.encode_png(tf.cast(rng.uniform((40, 40, 3), 0, 256, dtype=tf.int32), tf.uint8)).numpy()
            for _ in range(3)]
    name = schema.shard_name("test", 0, 1)
    with open(examples / name, "wb") as f:
        tfrecord.write_records(f, (tfrecord.encode_example({schema.IMAGE: png, schema.LABEL: i % 2})
                                   for i, png in enumerate(pngs)))
    manifest = {"partition": PARTITION, "task_type": "image_classification", "labels": LABELS,
                "files": {"train": [], "eval": [], "test": [{"name": name, "records": 3}]},
                "label_counts": {s: dict.fromkeys(LABELS, 0) for s in schema.SPLITS}}
    (examples / schema.MANIFEST).write_text(json.dumps(manifest))
    model = M.build_model(str(small_hub_module), M.ModelConfig(num_classes=len(LABELS), image_size=(32, 32)))
    model.save(str(run / "model"), include_optimizer=False)
    (run / "history.json").write_text(json.dumps({"labels": LABELS, "image_size": [32, 32],
                                                  "hub_module": str(small_hub_module)}))
    return root


def export_cfg(root: Path, **kw) -> X.Config:
    return X.Config(run_dir=f"file://{root}/runs/{PARTITION}", examples=f"file://{root}/examples/{PARTITION}",
                    serving_root=f"file://{root}/serving", model_name="shapes", version=20261120, **kw)


def tree_bytes(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def published(run_store):
    """The run published with one warm-up input (the smallest export; the tests below need one version)."""
    return X.run(export_cfg(run_store, warmup_records=1))


def test_a_single_warmup_record_verifies(run_store, published):
    """With one warm-up input the batched request has one row too; it is compared with the whole expectation."""
    from tensorflow_serving.apis import prediction_log_pb2

    version = run_store / "serving" / "shapes" / "20261120"
    assert published == f"file://{version}"
    with open(version / run_folder.WARMUP_FILE, "rb") as f:
        logs = [prediction_log_pb2.PredictionLog.FromString(r) for r in tfrecord.read_records(f)]
    assert [e.WhichOneof("log_type") for e in logs] == ["predict_log", "predict_log", "classify_log"]
    assert json.loads((run_store / "runs" / PARTITION / "published.json").read_text())["verified"] is True


def test_a_damaged_published_version_fails_the_real_check_and_the_previous_one_comes_back(run_store, published,
                                                                                          monkeypatch):
    """No mocked checker: the version is damaged on its way out (its variables' bytes overwritten after the
    in-process check, as a bad disk or copy would), the fresh process that loads it fails, and the previous
    version is back in place byte for byte."""
    folder = run_store / "serving" / "shapes"
    before = tree_bytes(folder / "20261120")
    published_before = (run_store / "runs" / PARTITION / "published.json").read_bytes()
    real_publish = commit.publish_dir

    def publish_damaged(local_dir, url, keep_previous=False):
        data = next((local_dir / "variables").glob("variables.data-*"))
        data.write_bytes(bytes(b ^ 0xFF for b in data.read_bytes()))
        return real_publish(local_dir, url, keep_previous=keep_previous)

    monkeypatch.setattr(commit, "publish_dir", publish_damaged)
    with pytest.raises(RuntimeError, match="failed its check in a fresh process") as failure:
        X.run(export_cfg(run_store, warmup_records=1))
    # The fresh process failed on what was injected: TensorFlow refuses the damaged variables.
    assert "checksum does not match" in str(failure.value), str(failure.value)[-2000:]
    assert sorted(p.name for p in folder.iterdir()) == ["20261120"]  # no staging, aside or rejected folder left
    assert tree_bytes(folder / "20261120") == before
    assert (run_store / "runs" / PARTITION / "published.json").read_bytes() == published_before


def staged(root_url: str, content: str) -> Path:
    staging = commit.output_staging(storage.join(root_url, "20261120"))
    (staging / "variables").mkdir()
    (staging / "variables" / "data").write_text(content)
    (staging / "saved_model.pb").write_text(content)
    return staging


def watch_renames(monkeypatch, target: Path) -> list[bool]:
    """After each ``os.rename`` that ``tasks.io.storage`` makes: whether ``target`` exists (what a poller would see)."""
    seen, real = [], os.rename

    def rename(src, dst):
        real(src, dst)
        seen.append(target.exists())

    monkeypatch.setattr(storage.os, "rename", rename)
    return seen


def test_file_publish_exchanges_and_says_so(tmp_path, monkeypatch, caplog):
    url = f"file://{tmp_path}/serving/shapes/20261120"
    commit.publish_dir(staged(f"file://{tmp_path}/serving/shapes", "one"), url)
    seen = watch_renames(monkeypatch, tmp_path / "serving" / "shapes" / "20261120")
    with caplog.at_level(logging.INFO, logger="storage"):
        previous = commit.publish_dir(staged(f"file://{tmp_path}/serving/shapes", "two"), url, keep_previous=True)
    assert seen == []  # one renameat2 exchange, no rename: the version was never absent
    assert any("exchanged with its previous copy in one renameat2(RENAME_EXCHANGE)" in r.getMessage()
               for r in caplog.records), caplog.text
    assert (Path(previous) / "saved_model.pb").read_text() == "one"
    assert (tmp_path / "serving" / "shapes" / "20261120" / "saved_model.pb").read_text() == "two"


def test_file_publish_falls_back_visibly_where_the_file_system_cannot_exchange(tmp_path, monkeypatch, caplog):
    def cannot_exchange(a, b):
        raise OSError(errno.EINVAL, f"renameat2({a}, {b}, RENAME_EXCHANGE): Invalid argument")

    monkeypatch.setattr(commit, "exchange", cannot_exchange)  # a file system without RENAME_EXCHANGE
    folder = tmp_path / "serving" / "shapes"
    url = f"file://{folder}/20261120"
    commit.publish_dir(staged(f"file://{folder}", "one"), url)
    seen = watch_renames(monkeypatch, folder / "20261120")
    with caplog.at_level(logging.INFO, logger="storage"):
        previous = commit.publish_dir(staged(f"file://{folder}", "two"), url, keep_previous=True)
    # The window the log admits to: absent after the first rename, back after the second.
    assert seen == [False, True]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("replaced by the fallback, not an exchange (" in w and "Invalid argument" in w and
               "the path was absent for" in w for w in warnings), caplog.text
    assert (folder / "20261120" / "saved_model.pb").read_text() == "two"
    commit.roll_back(url, previous)
    assert (folder / "20261120" / "saved_model.pb").read_text() == "one"
    assert sorted(p.name for p in folder.iterdir()) == ["20261120"]


def test_hdfs_publish_writes_everything_before_the_two_renames_and_states_the_window(hdfs, tmp_path, caplog):
    base = "hdfs://namenode:8020/serving/shapes"
    url = f"{base}/20261120"
    commit.publish_dir(staged(base, "one"), url)
    hdfs.clear_log()
    with caplog.at_level(logging.INFO, logger="storage"):
        commit.publish_dir(staged(base, "two"), url)
    calls = [(op, path) for _, op, path in hdfs.calls()]
    renames = [i for i, (op, _) in enumerate(calls) if op == "RENAME"]
    # Every file of the new copy is written (under its hidden name) before the old one is moved aside; the new
    # copy is renamed in by the very next call, so the version is absent only between those two renames.
    assert len(renames) == 2 and renames[1] == renames[0] + 1, calls
    assert calls[renames[0]][1] == "/serving/shapes/20261120"
    assert calls[renames[1]][1].startswith("/serving/shapes/.20261120.staging-")
    assert {op for op, _ in calls[:renames[0]]} >= {"CREATE"}
    assert not any(op == "CREATE" for op, _ in calls[renames[0]:])
    assert any("replaced by two renames (hdfs:// cannot exchange)" in r.getMessage() and "absent for" in r.getMessage()
               for r in caplog.records), caplog.text
    assert storage.read_text(f"{url}/saved_model.pb") == "two"
    assert storage.list_names(base) == ["20261120"]
