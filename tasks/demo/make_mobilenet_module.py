"""Builds a real-size image feature-vector module: MobileNetV2 (width 1.0) at 224×224, pre-trained here.

The interface is that of TF Hub's ``imagenet/mobilenet_v2_100_224/feature_vector`` (TF2 SavedModel): called on a
batch of float32 RGB images of 224×224 in [0, 1] with ``training=...``, it returns 1280-d average-pooled features,
and it exposes ``variables``, ``trainable_variables`` and ``regularization_losses``, so ``hub.KerasLayer`` loads it
like the downloaded one. The network is tf-keras' ``MobileNetV2`` definition with no downloaded weights
(``weights=None``), behind a rescaling from [0, 1] to MobileNetV2's [-1, 1]. Batch norm is handled as TF Hub's
feature-vector modules do: with ``training=True`` (``hub.KerasLayer(trainable=True)`` in a training step) it
normalises with the batch statistics and updates its moving averages; otherwise it uses the moving averages.

Nothing can be downloaded at run time here, so it is pre-trained on generated 224×224 images of
``shapes.PRETEXT_CLASSES`` (outlines, stripes, textures: no class of the fine-tuning task), so that fine-tuning is
transfer. ``--pretext-images 0`` saves the untrained network (for speed measurements, and as the untrained
comparison of transfer). The input size is recorded in ``assets.extra/module_info.json``; the module's signature
fixes it too.

Usage::

    python -m tasks.demo.make_mobilenet_module --output file:///.../hub/mobilenet_v2_100_224
"""

from __future__ import annotations

import dataclasses
import logging
import sys
import time

import numpy as np

from tasks import hub_module, runtime
from tasks.demo import shapes

log = logging.getLogger(__name__)

FEATURE_DIM = 1280


@dataclasses.dataclass
class Config:
    output: str
    """Storage URL of the module folder; replaced whole if it exists."""
    image_size: int = 224
    """Input height and width the module expects."""
    pretext_images: int = 2400
    """Generated 224×224 images for pre-training (spread over the pretext classes); 0: save it untrained."""
    epochs: int = 3
    """Pre-training epochs."""
    batch_size: int = 32
    """Pre-training batch size."""
    learning_rate: float = 2e-3
    """Pre-training Adam learning rate."""
    seed: int = 7
    """Seed of the pretext images and of the initial weights."""


def parse_args(argv: list[str]) -> Config:
    return Config(**vars(runtime.build_parser(Config, __doc__.splitlines()[0]).parse_args(argv)))


def build_feature_extractor(cfg: Config):
    """MobileNetV2 1.0 without its classifier, average-pooled, taking images in [0, 1]."""
    import tensorflow as tf

    inputs = tf.keras.Input(shape=(cfg.image_size, cfg.image_size, 3), name="images")
    x = tf.keras.layers.Rescaling(2.0, offset=-1.0, name="to_minus1_1")(inputs)
    base = tf.keras.applications.MobileNetV2(input_shape=(cfg.image_size, cfg.image_size, 3), alpha=1.0,
                                             include_top=False, weights=None, pooling="avg")
    features = base(x)
    return tf.keras.Model(inputs, features, name="mobilenet_v2_100_224_feature_vector")


def pretext_dataset(cfg: Config, count: int, seed: int):
    """``count`` pretext images drawn at the module's size, as uint8 (a float copy of 2,400 would be 1.4 GB)."""
    import tensorflow as tf

    rng = np.random.default_rng(seed)
    n = len(shapes.PRETEXT_CLASSES)
    labels = (np.arange(count) % n).astype(np.int32)
    images = np.stack([np.asarray(shapes.draw(shapes.PRETEXT_CLASSES[k], rng, cfg.image_size), dtype=np.uint8)
                       for k in labels])
    ds = tf.data.Dataset.from_tensor_slices((images, labels))
    return ds.map(lambda x, y: (tf.cast(x, tf.float32) / 255.0, y))


def pretrain(extractor, cfg: Config) -> float | None:
    """Trains the extractor under a pretext head; returns the pretext validation accuracy (None if untrained)."""
    import tensorflow as tf

    if cfg.pretext_images <= 0:
        return None
    t0 = time.time()
    n_val = max(cfg.pretext_images // 10, len(shapes.PRETEXT_CLASSES))
    train = pretext_dataset(cfg, cfg.pretext_images, cfg.seed).shuffle(512, seed=cfg.seed)
    val = pretext_dataset(cfg, n_val, cfg.seed + 1)
    log.info("generated %d + %d pretext images of %d px in %.1fs", cfg.pretext_images, n_val, cfg.image_size,
             time.time() - t0)
    model = tf.keras.Sequential([
        extractor, tf.keras.layers.Dense(len(shapes.PRETEXT_CLASSES), activation="softmax", name="pretext_head")])
    model.compile(optimizer=tf.keras.optimizers.Adam(cfg.learning_rate), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    hist = model.fit(train.batch(cfg.batch_size).prefetch(2), validation_data=val.batch(cfg.batch_size),
                     epochs=cfg.epochs, verbose=2)
    accuracy = float(hist.history["val_accuracy"][-1])
    log.info("pretext validation accuracy %.3f after %d epochs (%.0fs; chance %.3f)", accuracy, cfg.epochs,
             time.time() - t0, 1 / len(shapes.PRETEXT_CLASSES))
    return accuracy


def run(cfg: Config) -> dict:
    """Builds and pre-trains the module, saves it to ``cfg.output`` atomically, and returns its module info."""
    import tensorflow as tf

    tf.keras.utils.set_random_seed(cfg.seed)
    t0 = time.time()
    extractor = build_feature_extractor(cfg)
    accuracy = pretrain(extractor, cfg)
    info = {
        "format": "tf2-reusable-savedmodel",
        "kind": "image_feature_vector",
        "architecture": "mobilenet_v2_100",
        "image_size": [cfg.image_size, cfg.image_size],
        "input_range": [0.0, 1.0],
        "feature_dim": FEATURE_DIM,
        "parameters": int(sum(np.prod(v.shape) for v in extractor.variables)),
        "pretext_classes": list(shapes.PRETEXT_CLASSES) if accuracy is not None else [],
        "pretext_images": cfg.pretext_images,
        "pretext_epochs": cfg.epochs if accuracy is not None else 0,
        "pretext_val_accuracy": None if accuracy is None else round(accuracy, 4),
        "build_seconds": round(time.time() - t0, 1),
    }
    hub_module.save_module(extractor, info, cfg.output)
    log.info("saved %s module (%d parameters) to %s", info["architecture"], info["parameters"], cfg.output)
    return info


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    run(parse_args(sys.argv[1:] if argv is None else argv))


if __name__ == "__main__":
    main()
