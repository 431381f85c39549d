"""The demo's own inputs: a producer-style image partition and a reusable TF Hub module."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from PIL import Image

from tasks.training import hub_module
from tasks.demo import shapes
from tests.conftest import make_partition


def test_partition_is_written_like_a_producer(tmp_path):
    part = make_partition(tmp_path / "raw", "2026-11-20", num_images=40)
    rows = list(csv.DictReader(open(part / "labels.csv")))
    assert len(rows) == 40
    assert {r["label"] for r in rows} == set(shapes.TARGET_CLASSES)
    formats = {Image.open(part / r["path"]).format for r in rows}
    assert formats == {"JPEG", "PNG"}
    sizes = {Image.open(part / r["path"]).size for r in rows}
    assert len(sizes) > 5
    assert (part / "_SUCCESS").exists()
    # The marker is the newest file: it was written last.
    newest = max(part.rglob("*"), key=lambda p: p.stat().st_mtime_ns)
    assert newest.name == "_SUCCESS"


def test_partition_is_reproducible_per_date(tmp_path):
    a = make_partition(tmp_path / "a", "2026-11-20", num_images=12)
    b = make_partition(tmp_path / "b", "2026-11-20", num_images=12)
    c = make_partition(tmp_path / "c", "2026-11-21", num_images=12)
    assert (a / "images/img-00003.png").exists() or (a / "images/img-00003.jpg").exists()
    files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    assert all((a / f).read_bytes() == (b / f).read_bytes() for f in files)
    assert (a / "labels.csv").read_bytes() != (c / "labels.csv").read_bytes()


def test_unknown_shape_is_refused():
    with pytest.raises(ValueError, match="unknown shape kind 'blob'"):
        shapes.draw("blob", np.random.default_rng(0), 32)


def test_hub_module_is_a_reusable_savedmodel(small_hub_module):
    import tensorflow as tf
    import tensorflow_hub as hub

    loaded = tf.saved_model.load(str(small_hub_module))
    assert len(loaded.variables) > 0
    assert len(loaded.trainable_variables) > 0
    assert len(loaded.regularization_losses) > 0  # the L2 kernel regularisers
    x = tf.random.uniform((3, 32, 32, 3))
    assert loaded(x, training=False).shape == (3, 16)
    assert loaded(x, training=True).shape == (3, 16)

    frozen = hub.KerasLayer(str(small_hub_module), trainable=False)
    trainable = hub.KerasLayer(str(small_hub_module), trainable=True)
    assert frozen(x).shape == (3, 16)
    assert trainable(x).shape == (3, 16)
    assert len(frozen.trainable_weights) == 0
    assert len(trainable.trainable_weights) == len(loaded.trainable_variables)
    assert len(trainable.losses) > 0


def test_hub_module_records_its_input_size(small_hub_module, tmp_path):
    info = json.loads((small_hub_module / hub_module.INFO_PATH).read_text())
    assert info["image_size"] == [32, 32]
    assert info["pretext_classes"] and not set(info["pretext_classes"]) & set(shapes.TARGET_CLASSES)
    assert hub_module.image_size(str(small_hub_module)) == (32, 32)
    assert hub_module.image_size(str(small_hub_module), override=48) == (48, 48)
    # Without the info file the size comes from the module's traced signature.
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(small_hub_module, copy)
    (copy / hub_module.INFO_PATH).unlink()
    assert hub_module.image_size(str(copy)) == (32, 32)


def test_hub_handles_resolve_relative_to_storage_root(small_hub_module):
    assert hub_module.handle_for("hub/x", "file:///data") == "file:///data/hub/x"
    assert hub_module.handle_for("https://tfhub.dev/google/x/1", "file:///data") == "https://tfhub.dev/google/x/1"
    kaggle = "google/mobilenet-v2/tensorFlow2/035-128-feature-vector/2"
    assert hub_module.handle_for(kaggle, "file:///data") == kaggle
    assert hub_module.resolve(f"file://{small_hub_module}") == str(small_hub_module)
    with pytest.raises(hub_module.HubModuleError, match="no saved_model.pb"):
        hub_module.resolve("file:///nonexistent/module")
