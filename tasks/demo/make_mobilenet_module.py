"""Builds a real-size image feature-vector module: MobileNetV2 (width 1.0) at 224×224, pre-trained here.

The interface is that of TF Hub's ``imagenet/mobilenet_v2_100_224/feature_vector`` (TF2 SavedModel): called on a
batch of float32 RGB images of 224×224 in [0, 1] with ``training=...``, it returns 1280-d average-pooled features,
and it exposes ``variables``, ``trainable_variables`` and ``regularization_losses``, so ``hub.KerasLayer`` loads it
like the downloaded one. The network is tf-keras' ``MobileNetV2`` definition with no downloaded weights
(``weights=None``), behind a rescaling from [0, 1] to MobileNetV2's [-1, 1]. Batch norm is handled as TF Hub's
feature-vector modules do: with ``training=True`` (``hub.KerasLayer(trainable=True)`` in a training step) it
normalises with the batch statistics and updates its moving averages; otherwise it uses the moving averages.

Nothing can be downloaded at run time here, so it is pre-trained on generated images of ``shapes.PRETEXT_CLASSES``
(outlines, stripes, textures: no class of the fine-tuning task), so that fine-tuning is transfer. A training step of
MobileNetV2 at 224×224 costs four times one at 112, so pre-training runs ``pretext_steps`` batches at
``pretext_size`` (112 px by default; the weights of a convolutional network with global pooling serve any size),
then the batch-norm statistics are calibrated on images of the module's size and the pretext task is validated
there. ``--pretext-steps 0`` saves the untrained network (calibrated the same way: for speed measurements, and as
the untrained comparison of transfer). The input size is recorded in ``assets.extra/module_info.json``, with what
pre-training reached; the module's signature fixes it too.

Usage::

    python -m tasks.demo.make_mobilenet_module --output file:///.../hub/mobilenet_v2_100_224
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

FEATURE_DIM = 1280


@dataclasses.dataclass
class Config:
    output: str
    """Storage URL of the module folder; replaced whole if it exists."""
    image_size: int = 224
    """Input height and width the module expects (and the size of the images that calibrate its batch norm)."""
    pretext_steps: int = 1200
    """Pre-training steps (batches); 0: save it untrained (for speed measurements, and as the untrained
    comparison of transfer). 1,200 steps took 189-208 s here (105 images/s at 112 px) and reached 0.83 pretext
    accuracy at 112 px; the demo's fine-tuning from them reached 0.98 held-out accuracy in 4 epochs. From 150
    steps (0.10 at 112 px) it reached 0.30, as from the untrained network."""
    batch_size: int = 16
    """Pre-training batch size."""
    pretext_size: int = 112
    """Side of the generated pretext training images. The network is convolutional with global pooling, so the
    weights learned at a smaller size serve ``image_size`` (progressive resizing); training ran at 105 images/s
    at 112 px here against 34 at 224. Batch norm is then calibrated, and the pretext task validated, at
    ``image_size``."""
    pretext_images: int = 9600
    """Distinct generated pretext training images, cycled through by the steps (spread over the pretext
    classes; 9,600 of 112 px take 7 s to draw and 360 MB); 0: save it untrained."""
    calibration_images: int = 64
    """Generated pretext images of ``image_size`` whose batch statistics set the batch-norm moving averages before
    saving (the untrained module's too, so that both start from statistics of this size)."""
    val_images: int = 100
    """Generated pretext images of ``image_size`` that measure the pre-training (inference mode)."""
    bn_momentum: float = 0.99
    """Batch-norm moving-average momentum, in pre-training and in the saved module (tf-keras' MobileNetV2 uses
    0.999, too slow for a few hundred fine-tuning steps to move the statistics)."""
    learning_rate: float = 2e-3
    """Pre-training Adam learning rate."""
    eager: bool = False
    """Run the pre-training steps eagerly: no graph to trace (about a minute for this network on 2 cores), each
    step slower; for a handful of steps (tests)."""
    seed: int = 7
    """Seed of the pretext images and of the initial weights."""


def parse_args(argv: list[str]) -> Config:
    return Config(**vars(runtime.build_parser(Config, __doc__.splitlines()[0]).parse_args(argv)))


def build_feature_extractor(cfg: Config, image_size: int | None = None):
    """MobileNetV2 1.0 without its classifier, average-pooled, taking images in [0, 1] of ``image_size`` (default
    ``cfg.image_size``); batch norm with momentum ``cfg.bn_momentum``."""
    import tensorflow as tf

    size = image_size or cfg.image_size
    inputs = tf.keras.Input(shape=(size, size, 3), name="images")
    x = tf.keras.layers.Rescaling(2.0, offset=-1.0, name="to_minus1_1")(inputs)
    base = tf.keras.applications.MobileNetV2(input_shape=(size, size, 3), alpha=1.0, include_top=False,
                                             weights=None, pooling="avg")
    for layer in base.layers:
        if isinstance(layer, tf.keras.layers.BatchNormalization):
            layer.momentum = cfg.bn_momentum
    features = base(x)
    return tf.keras.Model(inputs, features, name=f"mobilenet_v2_100_{size}_feature_vector")


def pretext_images(count: int, size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``count`` pretext images of ``size`` px as uint8 (a float copy of 2,400 at 224 would be 1.4 GB) and their
    labels, the classes in turn."""
    rng = np.random.default_rng(seed)
    labels = (np.arange(count) % len(shapes.PRETEXT_CLASSES)).astype(np.int32)
    images = np.stack([np.asarray(shapes.draw(shapes.PRETEXT_CLASSES[k], rng, size), dtype=np.uint8)
                       for k in labels])
    return images, labels


class _Progress:
    """A Keras callback logging pre-training progress (step, loss, accuracy, images/s, ETA) every ``every`` steps."""

    def __new__(cls, total: int, batch: int, every: int = 10):
        import tensorflow as tf

        class Progress(tf.keras.callbacks.Callback):
            def on_train_begin(self, logs=None):
                self.t0 = self.t_first = time.time()

            def on_train_batch_end(self, step, logs=None):
                done = step + 1
                if done == 1:
                    self.t_first = time.time()  # the first step traces the graph
                    log.info("pretext step 1/%d (tracing and first step %.1fs)", total, self.t_first - self.t0)
                elif done % every == 0 or done == total:
                    rate = (done - 1) * batch / max(time.time() - self.t_first, 1e-9)
                    log.info("pretext step %d/%d: loss %.3f accuracy %.3f, %.1f images/s, ETA %.0fs", done, total,
                             logs["loss"], logs["accuracy"], rate, (total - done) * batch / rate)

        return Progress()


def pretrain(extractor, cfg: Config) -> dict:
    """Trains the extractor's weights under a pretext head at ``cfg.pretext_size``; returns what it reached."""
    import tensorflow as tf

    t0 = time.time()
    x, y = pretext_images(cfg.pretext_images, cfg.pretext_size, cfg.seed)
    log.info("generated %d pretext images of %d px in %.1fs", len(x), cfg.pretext_size, time.time() - t0)
    # The same layers at the pretext size: convolutions and batch norm do not depend on the spatial size.
    small = extractor if cfg.pretext_size == cfg.image_size else _same_weights(extractor, cfg)
    model = tf.keras.Sequential([
        small, tf.keras.layers.Dense(len(shapes.PRETEXT_CLASSES), activation="softmax", name="pretext_head")])
    model.compile(optimizer=tf.keras.optimizers.Adam(cfg.learning_rate), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"], run_eagerly=cfg.eager)
    ds = (tf.data.Dataset.from_tensor_slices((x, y)).shuffle(len(x), seed=cfg.seed).repeat()
          .map(lambda a, b: (tf.cast(a, tf.float32) / 255.0, b)).batch(cfg.batch_size).prefetch(2))
    t1 = time.time()
    hist = model.fit(ds, epochs=1, steps_per_epoch=cfg.pretext_steps, verbose=0,
                     callbacks=[_Progress(cfg.pretext_steps, cfg.batch_size)])
    train_s = time.time() - t1
    if small is not extractor:
        extractor.set_weights(small.get_weights())
    head = model.layers[-1]
    reached = {}
    if cfg.val_images > 0:
        vx, vy = pretext_images(cfg.val_images, cfg.pretext_size, cfg.seed + 1)
        # At the pretext size, with the batch-norm averages pre-training left: what the weights learned.
        reached["pretext_val_accuracy_at_pretext_size"] = round(
            pretext_accuracy(small, head, vx, vy, cfg.batch_size), 4)
        log.info("pretext validation accuracy at %d px: %.3f on %d images", cfg.pretext_size,
                 reached["pretext_val_accuracy_at_pretext_size"], len(vx))
    return {**reached, "pretext_train_seconds": round(train_s, 1),
            "pretext_train_images": cfg.pretext_steps * cfg.batch_size,
            "pretext_last_loss": round(float(hist.history["loss"][-1]), 4),
            "pretext_train_accuracy": round(float(hist.history["accuracy"][-1]), 4), "head": head}


def _same_weights(extractor, cfg: Config):
    small = build_feature_extractor(cfg, cfg.pretext_size)
    small.set_weights(extractor.get_weights())
    return small


def calibrate_batch_norm(extractor, images: np.ndarray, batch_size: int) -> None:
    """Sets every batch-norm moving average to the mean of the batch statistics over ``images``.

    A short pre-training leaves the moving averages mostly at their initial values (or at the pretext size's
    statistics); one pass in training mode with momentum ``(k-1)/k`` at the k-th batch averages the batches
    instead. Runs eagerly, so the changed momentum takes effect (a traced function would keep the old one).
    """
    import tensorflow as tf

    bns = [l for l in extractor.submodules if isinstance(l, tf.keras.layers.BatchNormalization)]
    kept = [bn.momentum for bn in bns]
    try:
        for k, start in enumerate(range(0, len(images), batch_size), 1):
            for bn in bns:
                bn.momentum = (k - 1) / k
            extractor(tf.cast(images[start:start + batch_size], tf.float32) / 255.0, training=True)
    finally:
        for bn, m in zip(bns, kept):
            bn.momentum = m


def pretext_accuracy(extractor, head, images: np.ndarray, labels: np.ndarray, batch_size: int) -> float:
    """The pretext head's accuracy on ``images`` with the module in inference mode (moving averages)."""
    import tensorflow as tf

    correct = 0
    for start in range(0, len(images), batch_size):
        probs = head(extractor(tf.cast(images[start:start + batch_size], tf.float32) / 255.0, training=False))
        correct += int(np.sum(np.argmax(probs.numpy(), axis=1) == labels[start:start + batch_size]))
    return correct / len(images)


def run(cfg: Config) -> dict:
    """Builds and pre-trains the module, saves it to ``cfg.output`` atomically, and returns its module info."""
    import tensorflow as tf

    tf.keras.utils.set_random_seed(cfg.seed)
    t0 = time.time()
    extractor = build_feature_extractor(cfg)
    trained = cfg.pretext_steps > 0 and cfg.pretext_images > 0
    info = {
        "format": "tf2-reusable-savedmodel",
        "kind": "image_feature_vector",
        "architecture": "mobilenet_v2_100",
        "image_size": [cfg.image_size, cfg.image_size],
        "input_range": [0.0, 1.0],
        "feature_dim": FEATURE_DIM,
        "parameters": int(sum(np.prod(v.shape) for v in extractor.variables)),
        "bn_momentum": cfg.bn_momentum,
        "pretext_classes": list(shapes.PRETEXT_CLASSES) if trained else [],
        "pretext_steps": cfg.pretext_steps if trained else 0,
        "pretext_batch_size": cfg.batch_size,
        "pretext_size": cfg.pretext_size,
    }
    head = None
    if trained:
        reached = pretrain(extractor, cfg)
        head = reached.pop("head")
        info.update(reached)
    if cfg.calibration_images > 0:
        t1 = time.time()
        calib, _ = pretext_images(cfg.calibration_images, cfg.image_size, cfg.seed + 2)
        calibrate_batch_norm(extractor, calib, cfg.batch_size)
        info["bn_calibration_images"] = cfg.calibration_images
        log.info("batch norm calibrated on %d images of %d px in %.1fs", len(calib), cfg.image_size,
                 time.time() - t1)
    if head is not None and cfg.val_images > 0:
        vx, vy = pretext_images(cfg.val_images, cfg.image_size, cfg.seed + 1)
        accuracy = pretext_accuracy(extractor, head, vx, vy, cfg.batch_size)
        info["pretext_val_accuracy"] = round(accuracy, 4)
        log.info("pretext validation accuracy at %d px: %.3f on %d images (chance %.3f)", cfg.image_size, accuracy,
                 len(vx), 1 / len(shapes.PRETEXT_CLASSES))
    info["build_seconds"] = round(time.time() - t0, 1)
    hub_module.save_module(extractor, info, cfg.output)
    log.info("saved %s module (%d parameters) to %s in %.0fs: %s", info["architecture"], info["parameters"],
             cfg.output, time.time() - t0, {k: v for k, v in info.items() if k.startswith("pretext_")})
    return info


def main(argv: list[str] | None = None) -> None:
    runtime.run_application(parse_args, run, argv, log)


if __name__ == "__main__":
    main()
