"""The model and its input pipeline, shared by fine-tuning, evaluation and export.

Import this module only after ``runtime.set_legacy_keras()``: ``hub.KerasLayer`` is a tf-keras layer.
"""

from __future__ import annotations

import dataclasses
import logging
import time

from tasks import runtime, schema

runtime.set_legacy_keras()

import tensorflow as tf  # noqa: E402
import tensorflow_hub as hub  # noqa: E402

log = logging.getLogger(__name__)

AUTOTUNE = tf.data.AUTOTUNE


@dataclasses.dataclass
class ModelConfig:
    num_classes: int
    """Classes of the head."""
    image_size: tuple[int, int]
    """(height, width) the hub module expects."""
    fine_tune: bool = False
    """Train the hub module's weights too, not only the head."""
    dropout: float = 0.2
    """Dropout before the head."""


def build_model(module_dir: str, cfg: ModelConfig) -> tf.keras.Model:
    """``hub.KerasLayer`` feature extractor and a softmax classification head."""
    h, w = cfg.image_size
    inputs = tf.keras.Input(shape=(h, w, 3), name="images")
    features = hub.KerasLayer(module_dir, trainable=cfg.fine_tune, name="hub_module")(inputs)
    x = tf.keras.layers.Dropout(cfg.dropout, name="dropout")(features)
    outputs = tf.keras.layers.Dense(cfg.num_classes, activation="softmax", name="classifier")(x)
    return tf.keras.Model(inputs, outputs, name="hub_classifier")


def load_trained(model_dir: str) -> tf.keras.Model:
    return tf.keras.models.load_model(model_dir, custom_objects={"KerasLayer": hub.KerasLayer}, compile=False)


def decode_image(encoded: tf.Tensor, image_size: tuple[int, int]) -> tf.Tensor:
    """Encoded JPEG/PNG bytes to a float32 [h, w, 3] image in [0, 1], the TF Hub image input convention."""
    img = tf.io.decode_image(encoded, channels=3, expand_animations=False)
    img = tf.image.resize(img, image_size, method="bilinear", antialias=True) / 255.0
    img.set_shape((image_size[0], image_size[1], 3))
    return img


_FEATURES = {
    schema.IMAGE: tf.io.FixedLenFeature([], tf.string),
    schema.LABEL: tf.io.FixedLenFeature([], tf.int64),
}


def parse_example(serialized: tf.Tensor, image_size: tuple[int, int]) -> tuple[tf.Tensor, tf.Tensor]:
    ex = tf.io.parse_single_example(serialized, _FEATURES)
    return decode_image(ex[schema.IMAGE], image_size), tf.cast(ex[schema.LABEL], tf.int32)


def make_dataset(files: list[str], image_size: tuple[int, int], batch_size: int, *, training: bool,
                 seed: int = 0) -> tf.data.Dataset:
    """A ``tf.data`` pipeline over TFRecord files: read, decode, resize, batch, prefetch.

    Args:
        files: local TFRecord paths.
        image_size: (height, width) to resize to.
        batch_size: batch size of this pipeline (per worker).
        training: shuffle, augment, repeat forever and drop the last partial batch; otherwise one pass in file
            order, keeping the partial batch.
        seed: shuffle seed.
    """
    if not files:
        raise ValueError("make_dataset got no files")
    ds = tf.data.Dataset.from_tensor_slices(list(files))
    if training:
        ds = ds.shuffle(len(files), seed=seed, reshuffle_each_iteration=True)
    ds = ds.interleave(tf.data.TFRecordDataset, cycle_length=min(4, len(files)), num_parallel_calls=AUTOTUNE,
                       deterministic=not training)
    if training:
        ds = ds.shuffle(2048, seed=seed, reshuffle_each_iteration=True).repeat()
    ds = ds.map(lambda s: parse_example(s, image_size), num_parallel_calls=AUTOTUNE, deterministic=not training)
    if training:
        ds = ds.map(lambda x, y: (tf.image.random_flip_left_right(x, seed=seed), y), num_parallel_calls=AUTOTUNE)
    return ds.batch(batch_size, drop_remainder=training).prefetch(AUTOTUNE)


class ProgressLogger(tf.keras.callbacks.Callback):
    """Logs epoch, step, loss, accuracy and examples/s to the job log (and so to the Airflow task log)."""

    def __init__(self, worker: int, global_batch: int, steps_per_epoch: int, epochs: int, every_steps: int = 0):
        super().__init__()
        self.worker, self.global_batch = worker, global_batch
        self.steps_per_epoch, self.epochs = steps_per_epoch, epochs
        self.every_steps = every_steps or max(1, steps_per_epoch // 4)
        self.history: list[dict] = []

    def on_train_begin(self, logs=None):
        self.t_train = time.time()

    def on_epoch_begin(self, epoch, logs=None):
        self.t_epoch = time.time()
        self.epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        step = batch + 1
        if step % self.every_steps == 0 and step < self.steps_per_epoch:
            # Batch-level metrics under a multi-worker strategy are not reduced across workers the way epoch
            # metrics are, so only the epoch line reports loss and accuracy.
            dt = time.time() - self.t_epoch
            log.info("worker %d epoch %d/%d step %d/%d %.1f examples/s", self.worker, self.epoch + 1, self.epochs,
                     step, self.steps_per_epoch, step * self.global_batch / max(dt, 1e-9))

    def on_epoch_end(self, epoch, logs=None):
        dt = time.time() - self.t_epoch
        row = {k: float(v) for k, v in (logs or {}).items()}
        row.update(epoch=epoch + 1, seconds=round(dt, 3),
                   examples_per_sec=round(self.steps_per_epoch * self.global_batch / max(dt, 1e-9), 2))
        self.history.append(row)
        elapsed = time.time() - self.t_train
        eta = elapsed / (epoch + 1) * (self.epochs - epoch - 1)
        log.info("worker %d epoch %d/%d done: loss %.4f accuracy %.4f val_loss %.4f val_accuracy %.4f "
                 "%.1f examples/s, %.1fs, eta %.0fs", self.worker, epoch + 1, self.epochs, row.get("loss", 0),
                 row.get("accuracy", 0), row.get("val_loss", float("nan")), row.get("val_accuracy", float("nan")),
                 row["examples_per_sec"], dt, eta)


def read_split(examples_dir: str, manifest: dict, split: str, limit: int | None = None) -> tuple[list[bytes], list[int]]:
    """Encoded images and label ids of a split, in manifest file order (for scoring exported models, which take
    image bytes)."""
    images, labels = [], []
    files = [f"{examples_dir}/{f['name']}" for f in manifest["files"][split] if f["records"]]
    for serialized in tf.data.TFRecordDataset(files) if files else []:
        ex = tf.train.Example.FromString(serialized.numpy()).features.feature
        images.append(ex[schema.IMAGE].bytes_list.value[0])
        labels.append(int(ex[schema.LABEL].int64_list.value[0]))
        if limit is not None and len(images) >= limit:
            break
    return images, labels
