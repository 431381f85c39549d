"""The real-size module (MobileNetV2 1.0 at 224×224, ``tasks.demo.make_mobilenet_module``): built with a tiny
pre-training, it has TF Hub's feature-vector interface, and the project's model code fine-tunes it.

Slow for a unit test (saving MobileNetV2 traces its call functions; tracing a training graph of it would add a
minute or more on 2 cores), so the module is built once for the file, with two eager pre-training steps on small
images and four calibration images, and the fine-tuning steps run eagerly: the traced ``fit`` path of the same code
is what the small module's tests and the end-to-end tests run; what is specific here is the module."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from tasks.core import runtime
from tasks.training import hub_module


@pytest.fixture(scope="module")
def realsize_module(tmp_path_factory):
    from tasks.demo import make_mobilenet_module as builder

    out = tmp_path_factory.mktemp("hub") / "mobilenet_v2_100_224"
    info = builder.run(builder.Config(output=f"file://{out}", pretext_steps=2, batch_size=4, pretext_images=8,
                                      pretext_size=64, calibration_images=4, val_images=4, eager=True))
    return out, info


def test_builder_options_come_from_its_config():
    from tasks.demo import make_mobilenet_module as builder

    cfg = builder.parse_args(["--output", "file:///m", "--pretext-steps", "3", "--batch-size", "4"])
    assert (cfg.pretext_steps, cfg.batch_size, cfg.image_size) == (3, 4, 224)


@pytest.mark.nightly
def test_the_module_has_the_tf_hub_feature_vector_interface(realsize_module, tmp_path):
    out, info = realsize_module
    runtime.set_legacy_keras()
    import tensorflow as tf

    recorded = json.loads((out / hub_module.INFO_PATH).read_text())
    assert recorded["image_size"] == [224, 224] and recorded["feature_dim"] == 1280
    assert recorded["pretext_steps"] == 2 and recorded["pretext_train_images"] == 8
    assert 0.0 <= recorded["pretext_val_accuracy"] <= 1.0
    assert hub_module.module_image_size(f"file://{out}") == (224, 224)
    # As TF Hub publishes it, without this project's file: the signature fixes 224×224.
    bare = tmp_path / "no_info"
    shutil.copytree(out, bare)
    (bare / hub_module.INFO_PATH).unlink()
    assert hub_module.module_image_size(f"file://{bare}") == (224, 224)

    module = tf.saved_model.load(str(out))
    # TF Hub's reusable SavedModel attributes; MobileNetV2 1.0 has 2.26 M variables, 2.22 M of them trainable.
    n_all = sum(int(np.prod(v.shape)) for v in module.variables)
    n_trainable = sum(int(np.prod(v.shape)) for v in module.trainable_variables)
    assert n_all == recorded["parameters"] == 2_257_984
    assert n_trainable == 2_223_872
    assert isinstance(list(module.regularization_losses), list)

    images = tf.random.stateless_uniform([2, 224, 224, 3], seed=[1, 2])
    inference = module(images, training=False)
    assert inference.shape == (2, 1280)
    # Training mode normalises with the batch's statistics, inference with the moving averages: they differ.
    training = module(images, training=True)
    assert training.shape == (2, 1280)
    assert not np.allclose(inference.numpy(), training.numpy())


@pytest.mark.nightly
def test_the_project_model_code_fine_tunes_it(realsize_module, tmp_path):
    """A few fine-tuning steps through ``tasks.training.model`` on four generated images of 240 px (decoded and resized to 224
    by the project's input pipeline): the module's weights move and the training loss goes down."""
    import io

    from tasks.core import schema
    from tasks.prep import modality, tfrecord
    from tasks.demo import shapes

    out, _ = realsize_module
    rng = np.random.default_rng(0)
    records = []
    for i in range(4):
        buf = io.BytesIO()
        shapes.draw(shapes.TARGET_CLASSES[i % 2], rng, 240).save(buf, format="JPEG", quality=90)
        records.append(tfrecord.encode_example({modality.IMAGE.feature: buf.getvalue(), schema.LABEL: i % 2}))
    path = tmp_path / "train-00000-of-00001.tfrecord"
    with open(path, "wb") as f:
        tfrecord.write_records(f, records)

    from tasks.training import model as M

    tf = M.tf
    tf.keras.utils.set_random_seed(0)
    model = M.build_model(str(out), M.ModelConfig(num_classes=2, image_size=(224, 224), fine_tune=True))
    hub_layer = model.get_layer("hub_module")
    assert len(hub_layer.trainable_weights) > 100  # the module itself is trained, not only the head
    before = [w.numpy().copy() for w in hub_layer.trainable_weights[:3]]
    trained = M.compile_for_training(model, 1e-3)
    trained.run_eagerly = True  # see the module docstring
    ds = M.make_dataset([str(path)], (224, 224), 4, training=True, seed=0)
    # The same records each step (4 records, batch 4): the loss on them must fall as the weights fit them.
    hist = trained.fit(ds, epochs=3, steps_per_epoch=1, verbose=0)
    losses = hist.history["loss"]
    assert losses[-1] < losses[0], losses
    after = hub_layer.trainable_weights[:3]
    assert any(not np.allclose(b, a.numpy()) for b, a in zip(before, after))
