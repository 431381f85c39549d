"""The input size of an image module: what it records, what its signature fixes, or the run's ``image_size``; and,
when none of them says, an error that names the DAG's ``image_size`` param."""

from __future__ import annotations

import pytest

from tasks import finetune as F
from tasks.training import hub_module


@pytest.fixture(scope="module")
def open_size_module(tmp_path_factory):
    """A feature-vector module as TF Hub publishes some: its traced signature takes images of any size, and it
    carries no ``module_info.json``."""
    import tensorflow as tf

    class OpenSize(tf.Module):
        def __init__(self):
            super().__init__()
            self.w = tf.Variable(tf.ones([3, 4]))

        @tf.function(input_signature=[tf.TensorSpec([None, None, None, 3], tf.float32)])
        def __call__(self, images):
            return tf.reduce_mean(images, axis=[1, 2]) @ self.w

    out = tmp_path_factory.mktemp("hub") / "open_size"
    tf.saved_model.save(OpenSize(), str(out))
    assert not (out / hub_module.INFO_PATH).exists()
    return out


def test_an_open_size_module_without_image_size_names_the_param(open_size_module):
    with pytest.raises(hub_module.HubModuleError) as err:
        hub_module.module_image_size(f"file://{open_size_module}")
    message = str(err.value)
    assert str(open_size_module) in message and "leaves it open" in message
    assert "image_size param" in message and "--image-size" in message


def test_the_runs_image_size_sizes_an_open_module(open_size_module):
    cfg = F.parse_args(["--examples", "file:///srv/e", "--run-dir", "file:///srv/r", "--storage-root", "file:///srv",
                        "--hub-module", str(open_size_module), "--image-size", "64"])
    assert cfg.image_size == 64
    # what the job's pre-flight does with it
    assert hub_module.module_image_size(f"file://{open_size_module}", cfg.image_size or None) == (64, 64)


def test_a_module_whose_signature_fixes_the_size_needs_no_param(small_hub_module, tmp_path):
    import shutil

    copy = tmp_path / "no_info"
    shutil.copytree(small_hub_module, copy)
    (copy / hub_module.INFO_PATH).unlink()
    assert hub_module.module_image_size(f"file://{copy}") == (32, 32)
