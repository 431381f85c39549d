"""Builds the demo TF Hub image feature-vector module, pre-trained on a pretext task.

Nothing can be downloaded at run time here, so the demo makes its own module. It is what a real TF2 image
feature-vector module is: a reusable SavedModel whose ``__call__(images, training=...)`` maps a batch of
float32 RGB images in [0, 1] of a fixed size to feature vectors, and that exposes ``variables``,
``trainable_variables`` and ``regularization_losses``, so ``hub.KerasLayer(path, trainable=...)`` loads it.

It is pre-trained on ``shapes.PRETEXT_CLASSES`` (outlines, stripes, textures), disjoint from the classes the
pipeline fine-tunes on, so fine-tuning transfers features rather than starting from random ones.

The expected input size is recorded in ``assets.extra/module_info.json`` (see ``tasks.training.hub_module``).

Usage::

    python -m tasks.demo.make_hub_module --output file:///.../hub/shapes_fv_32
"""

from __future__ import annotations

import dataclasses
import logging
import time

import numpy as np

from tasks.core import runtime
from tasks.training import hub_module
from tasks.demo import shapes

log = logging.getLogger(__name__)


@dataclasses.dataclass
class Config:
    output: str
    """Storage URL of the module folder; replaced whole if it exists."""
    image_size: int = 32
    """Input height and width the module expects."""
    feature_dim: int = 128
    """Length of the feature vector."""
    pretext_images: int = 9000
    """Generated images for pre-training (spread over the pretext classes)."""
    epochs: int = 6
    """Pre-training epochs."""
    batch_size: int = 64
    """Pre-training batch size."""
    l2: float = 1e-5
    """L2 weight decay of the conv kernels, exposed as the module's regularization_losses."""
    seed: int = 7
    """Seed of the pretext images and of the initial weights."""


def parse_args(argv: list[str]) -> Config:
    """Every field of ``Config`` is an option, its help the field's docstring."""
    return Config(**vars(runtime.build_parser(Config, __doc__.splitlines()[0]).parse_args(argv)))


def pretext_data(cfg: Config) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(cfg.seed)
    n = len(shapes.PRETEXT_CLASSES)
    labels = np.arange(cfg.pretext_images) % n
    images = np.stack([shapes.draw_array(shapes.PRETEXT_CLASSES[k], rng, cfg.image_size) for k in labels])
    return images, labels.astype(np.int32)


def build_feature_extractor(cfg: Config):
    """The module's network: per-image standardisation, four conv blocks, global average pooling. No batch
    norm, so that a fine-tuning job with small per-worker batches behaves the same in training and inference."""
    import tensorflow as tf

    reg = tf.keras.regularizers.l2(cfg.l2)
    inputs = tf.keras.Input(shape=(cfg.image_size, cfg.image_size, 3), name="images")
    # Colours and contrast vary wildly between images; standardising each image makes the features about shape.
    x = tf.keras.layers.Lambda(tf.image.per_image_standardization, name="standardize")(inputs)
    for i, filters in enumerate((24, 48, 96, cfg.feature_dim)):
        x = tf.keras.layers.Conv2D(filters, 3, padding="same", activation="relu", kernel_regularizer=reg,
                                   name=f"conv{i}")(x)
        if i < 3:
            x = tf.keras.layers.MaxPooling2D(name=f"pool{i}")(x)
    features = tf.keras.layers.GlobalAveragePooling2D(name="feature_vector")(x)
    return tf.keras.Model(inputs, features, name="shapes_feature_vector")


def run(cfg: Config) -> dict:
    """Pre-trains the module, saves it to ``cfg.output`` atomically, and returns its module info."""
    import tensorflow as tf

    tf.keras.utils.set_random_seed(cfg.seed)
    t0 = time.time()
    x, y = pretext_data(cfg)
    log.info("generated %d pretext images of %d classes in %.1fs", len(x), len(shapes.PRETEXT_CLASSES),
             time.time() - t0)
    n_val = len(x) // 10
    extractor = build_feature_extractor(cfg)
    model = tf.keras.Sequential([
        extractor,
        tf.keras.layers.Dense(len(shapes.PRETEXT_CLASSES), activation="softmax", name="pretext_head"),
    ])
    model.compile(optimizer=tf.keras.optimizers.Adam(2e-3), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    hist = model.fit(x[n_val:], y[n_val:], validation_data=(x[:n_val], y[:n_val]), epochs=cfg.epochs,
                     batch_size=cfg.batch_size, verbose=2)
    pretext_accuracy = float(hist.history["val_accuracy"][-1])
    log.info("pretext validation accuracy %.3f after %d epochs (%.1fs)", pretext_accuracy, cfg.epochs,
             time.time() - t0)

    info = {
        "format": "tf2-reusable-savedmodel",
        "kind": "image_feature_vector",
        "image_size": [cfg.image_size, cfg.image_size],
        "input_range": [0.0, 1.0],
        "feature_dim": cfg.feature_dim,
        "pretext_classes": list(shapes.PRETEXT_CLASSES),
        "pretext_val_accuracy": round(pretext_accuracy, 4),
    }
    hub_module.save_module(extractor, info, cfg.output)
    log.info("saved hub module to %s", cfg.output)
    return info


def main(argv: list[str] | None = None) -> None:
    runtime.run_application(parse_args, run, argv, log)


if __name__ == "__main__":
    main()
