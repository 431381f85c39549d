"""The real-size module (MobileNetV2 1.0 at 224×224, ``tasks.demo.make_mobilenet_module``): built with a tiny
pre-training, it has TF Hub's feature-vector interface, the project's model code fine-tunes it, and the barrier job
fine-tunes it and the export publishes it.

The module is built once for the file, with two eager pre-training steps on small images and four calibration
images. The in-process fine-tuning steps run eagerly (tracing MobileNetV2's training graph costs seconds that the
barrier job's test spends anyway). About 80 s in all here, 50 of them the barrier job and the export."""

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


def test_the_project_model_code_fine_tunes_it(realsize_module, tmp_path):
    """A few fine-tuning steps through ``tasks.training.model`` on four generated images of 240 px (decoded and
    resized to 224 by the project's input pipeline): the module's weights move and the training loss goes down."""
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
    model = M.build_model(str(out), M.ModelConfig(num_classes=2, image_size=(224, 224), fine_tune=True,
                                                  dropout=0.0))
    hub_layer = model.get_layer("hub_module")
    assert len(hub_layer.trainable_weights) > 100  # the module itself is trained, not only the head
    before = [w.numpy().copy() for w in hub_layer.trainable_weights[:3]]
    trained = M.compile_for_training(model, 1e-3, module_lr_scale=0.1)
    trained.run_eagerly = True  # see the module docstring
    # One batch of the 4 records, decoded and resized by the project's pipeline, without the training pipeline's
    # random flips, and no dropout: each step descends on the same loss, which must fall. (With flips and dropout
    # the steps' losses went 0.86, 0.58, 0.87 in one run; in inference mode the moving averages of a module
    # pre-trained for 2 steps do not describe the features the head is trained on.)
    batch = M.make_dataset([str(path)], (224, 224), 4, training=False)
    images, labels = next(iter(batch))

    def loss() -> float:
        return float(tf.keras.losses.sparse_categorical_crossentropy(labels, model(images, training=True)).numpy()
                     .mean())

    loss_before = loss()
    trained.fit(batch.repeat(), epochs=3, steps_per_epoch=1, verbose=0)
    assert loss() < loss_before
    after = hub_layer.trainable_weights[:3]
    assert any(not np.allclose(b, a.numpy()) for b, a in zip(before, after))


def test_the_barrier_job_fine_tunes_it_and_the_export_publishes_it(realsize_module, spark, tmp_path):
    """The path of ``make demo SIZE=real`` at the smallest size, with the module as TF Hub publishes it (no
    ``module_info.json``: the size comes from its signature): 24 generated JPEG/PNG images of 240–320 px, prepared,
    fine-tuned (``fine_tune``, the module at a tenth of the head's rate) by 2 barrier workers for one epoch, then
    exported and verified in a fresh process."""
    from tasks import export_model as X
    from tasks import finetune as F
    from tasks import prepare_examples as P
    from tasks.demo import make_dataset

    out = tmp_path / "hub" / "mobilenet_v2_100_224"
    shutil.copytree(realsize_module[0], out)
    (out / hub_module.INFO_PATH).unlink()
    raw = tmp_path / "raw"
    make_dataset.run(make_dataset.Config(raw_root=f"file://{raw}", ds="2026-11-20", num_images=24, min_size=240,
                                         max_size=320, seed=3))
    examples = f"file://{tmp_path}/examples/ds=2026-11-20"
    P.run(P.Config(raw=f"file://{raw}/ds=2026-11-20", output=examples, partition="2026-11-20", min_shards=2,
                   split_fractions=(0.6, 0.2, 0.2)), spark)
    run_dir = f"file://{tmp_path}/runs/ds=2026-11-20"
    history = F.run(F.Config(examples=examples, run_dir=run_dir, storage_root=f"file://{tmp_path}",
                             hub_module=str(out), num_workers=2, epochs=1, batch_size=4, fine_tune=True,
                             module_lr_scale=0.1), spark)
    saved = json.loads((tmp_path / "runs/ds=2026-11-20/history.json").read_text())
    assert saved["num_workers"] == 2 and saved["image_size"] == [224, 224]
    assert len(history["history"]) == 1 and np.isfinite(history["history"][0]["loss"])

    url = X.run(X.Config(run_dir=run_dir, examples=examples, serving_root=f"file://{tmp_path}/serving",
                         model_name="shapes_real", version=20261120))
    version = tmp_path / "serving" / "shapes_real" / "20261120"
    assert url.endswith("/serving/shapes_real/20261120") and (version / "saved_model.pb").exists()
    published = json.loads((tmp_path / "runs/ds=2026-11-20/published.json").read_text())
    assert published["verified"] is True and published["version"] == 20261120
