"""The model and its input pipeline, shared by fine-tuning, evaluation and export.

Import this module only after ``runtime.set_legacy_keras()``: ``hub.KerasLayer`` is a tf-keras layer.
"""

from __future__ import annotations

import dataclasses
import logging
import time

from tasks.core import runtime, schema
from tasks.prep import modality

runtime.set_legacy_keras()

import tensorflow as tf  # noqa: E402
import tensorflow_hub as hub  # noqa: E402

log = logging.getLogger(__name__)

AUTOTUNE = tf.data.AUTOTUNE


@dataclasses.dataclass
class ModelConfig:
    num_classes: int
    """Classes of the head."""
    image_size: tuple[int, int] | None
    """(height, width) the hub module expects; None for text."""
    fine_tune: bool = False
    """Train the hub module's weights too, not only the head."""
    dropout: float = 0.2
    """Dropout before the head."""
    task_type: str = modality.IMAGE_CLASSIFICATION
    """What the model classifies (``tasks.prep.modality``)."""


def build_model(module_dir: str, cfg: ModelConfig) -> tf.keras.Model:
    """``hub.KerasLayer`` feature extractor (image feature vector or text embedding) and a softmax head.

    Images come in decoded and resized to the module's size, float32 in [0, 1]; texts come in as a batch of
    strings, which the text module tokenizes itself."""
    if cfg.task_type == modality.TEXT_CLASSIFICATION:
        inputs = tf.keras.Input(shape=(), dtype=tf.string, name="text")
    else:
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


def preprocess(raw: tf.Tensor, image_size: tuple[int, int] | None,
               task_type: str = modality.IMAGE_CLASSIFICATION) -> tf.Tensor:
    """One record's input as stored (encoded image bytes, or UTF-8 text) to what the model takes."""
    if task_type == modality.TEXT_CLASSIFICATION:
        return raw
    return decode_image(raw, image_size)


def preprocess_batch(raw: tf.Tensor, image_size: tuple[int, int] | None,
                     task_type: str = modality.IMAGE_CLASSIFICATION) -> tf.Tensor:
    """``preprocess`` over a batch (string[N]), as the serving signature does."""
    if task_type == modality.TEXT_CLASSIFICATION:
        return raw
    return tf.map_fn(lambda b: decode_image(b, image_size), raw,
                     fn_output_signature=tf.TensorSpec((image_size[0], image_size[1], 3), tf.float32))


def parse_example(serialized: tf.Tensor, image_size: tuple[int, int] | None,
                  task_type: str = modality.IMAGE_CLASSIFICATION) -> tuple[tf.Tensor, tf.Tensor]:
    feature = modality.of(task_type).feature
    ex = tf.io.parse_single_example(serialized, {feature: tf.io.FixedLenFeature([], tf.string),
                                                 schema.LABEL: tf.io.FixedLenFeature([], tf.int64)})
    return preprocess(ex[feature], image_size, task_type), tf.cast(ex[schema.LABEL], tf.int32)


def make_dataset(files: list[str], image_size: tuple[int, int] | None, batch_size: int, *, training: bool,
                 seed: int = 0, threads: int | None = None, shard: tuple[int, int] | None = None,
                 task_type: str = modality.IMAGE_CLASSIFICATION, read_file=None) -> tf.data.Dataset:
    """A ``tf.data`` pipeline over TFRecord files: read, parse, preprocess (decode and resize images), batch,
    prefetch.

    Args:
        files: local TFRecord paths.
        image_size: (height, width) to resize images to; None for text.
        batch_size: batch size of this pipeline (per worker).
        training: shuffle, augment, repeat forever and drop the last partial batch; otherwise one pass in file
            order, keeping the partial batch.
        seed: shuffle seed.
        threads: size of the pipeline's own thread pool (a worker given one core by Spark should not decode on
            every core of the machine); None uses TensorFlow's shared pool.
        shard: ``(count, index)``: keep every ``count``-th record from the ``index``-th, before decoding (workers
            splitting one pass over the same files); with ``training=False`` the shards partition the records.
        task_type: what the records hold (``tasks.prep.modality``); images are also flipped at random in training.
        read_file: a file name (a string tensor) to a dataset of its serialized records; default
            ``tf.data.TFRecordDataset`` (``tasks.training.streamed_input`` passes its ranged WebHDFS reader).
    """
    if not files:
        raise ValueError("make_dataset got no files")
    ds = tf.data.Dataset.from_tensor_slices(list(files))
    if training:
        ds = ds.shuffle(len(files), seed=seed, reshuffle_each_iteration=True)
    ds = ds.interleave(read_file or tf.data.TFRecordDataset, cycle_length=min(4, len(files)),
                       num_parallel_calls=AUTOTUNE, deterministic=not training)
    if shard is not None:
        ds = ds.shard(*shard)
    if training:
        ds = ds.shuffle(2048, seed=seed, reshuffle_each_iteration=True).repeat()
    ds = ds.map(lambda s: parse_example(s, image_size, task_type), num_parallel_calls=AUTOTUNE,
                deterministic=not training)
    if training and task_type == modality.IMAGE_CLASSIFICATION:
        ds = ds.map(lambda x, y: (tf.image.random_flip_left_right(x, seed=seed), y), num_parallel_calls=AUTOTUNE)
    ds = ds.batch(batch_size, drop_remainder=training).prefetch(AUTOTUNE)
    if threads:
        options = tf.data.Options()
        options.threading.private_threadpool_size = threads
        ds = ds.with_options(options)
    return ds


def padded_passes(ds: tf.data.Dataset, batches: int) -> tf.data.Dataset:
    """Repeats one pass over a finite batched dataset as passes of exactly ``batches`` batches: the pass's own
    batches, then empty ones (batch size 0) up to that count; a longer pass is cut there.

    For a validation pass split between workers: Keras runs the same ``validation_steps`` on every worker and keeps
    one iterator over a distributed dataset for all epochs, so each worker's share must fill exactly that many
    steps per epoch. Repeating a smaller share to fill them would score some records twice; an empty batch adds
    nothing to the loss or the metrics.
    """
    empty = tf.nest.map_structure(lambda spec: tf.zeros([0, *spec.shape[1:]], spec.dtype), ds.element_spec)
    return ds.concatenate(tf.data.Dataset.from_tensors(empty).repeat()).take(batches).repeat()


class ProgressLogger(tf.keras.callbacks.Callback):
    """Logs epoch, step, loss, accuracy and examples/s to the job log (and so to the Airflow task log).

    Batch lines carry this worker's running mean loss of the epoch (batch-level metrics are not reduced across
    workers); epoch lines carry the metrics Keras reduced over all workers. Examples/s count global examples.

    After a restart from a checkpoint, Keras starts in the middle of an epoch: the first batch seen tells where, it
    is logged as the point resumed from, and that epoch's rates count only the steps run since.

    Args:
        worker: rank, for the log lines.
        global_batch: examples per step over all workers.
        steps_per_epoch: steps of a full epoch.
        epochs: epochs of the run.
        every_steps: log a batch line every this many steps (default: four per epoch).
        history: epoch rows of a previous attempt to continue (``history`` of its ``ProgressLogger``).
        on_batch: called after every batch with ``(epoch, step)`` (0-based epoch, 1-based step), e.g. a heartbeat.
    """

    def __init__(self, worker: int, global_batch: int, steps_per_epoch: int, epochs: int, every_steps: int = 0,
                 *, history: list[dict] | None = None, on_batch=None):
        super().__init__()
        self.worker, self.global_batch = worker, global_batch
        self.steps_per_epoch, self.epochs = steps_per_epoch, epochs
        self.every_steps = every_steps or max(1, steps_per_epoch // 4)
        self.history: list[dict] = list(history or [])
        self.on_batch = on_batch
        self.resumed_from: tuple[int, int] | None = None
        """(epoch, step), both 0-based, of the first batch this attempt ran."""
        self.first_step_end: float | None = None

    def on_train_begin(self, logs=None):
        self.t_train = time.time()
        self.epochs_run = 0

    def on_epoch_begin(self, epoch, logs=None):
        self.t_epoch = self.t_last_batch = time.time()
        self.epoch = int(epoch)
        self.first_batch: int | None = None

    def on_train_batch_begin(self, batch, logs=None):
        batch = int(batch)  # Keras may pass a NumPy integer
        if self.first_batch is None:
            self.first_batch = batch
        if self.resumed_from is None:
            self.resumed_from = (self.epoch, batch)
            if (self.epoch, batch) != (0, 0):
                log.info("worker %d resumed from the checkpoint at epoch %d step %d (global step %d)", self.worker,
                         self.epoch + 1, batch, self.epoch * self.steps_per_epoch + batch)

    def on_train_batch_end(self, batch, logs=None):
        step = int(batch) + 1
        self.t_last_batch = time.time()
        if self.first_step_end is None:
            self.first_step_end = self.t_last_batch
        if self.on_batch is not None:
            self.on_batch(self.epoch, step)
        if step % self.every_steps == 0 and step < self.steps_per_epoch:
            dt = time.time() - self.t_epoch
            log.info("worker %d epoch %d/%d step %d/%d loss %.4f (this worker's running mean) %.1f examples/s",
                     self.worker, self.epoch + 1, self.epochs, step, self.steps_per_epoch,
                     float((logs or {}).get("loss", float("nan"))),
                     (step - self.first_batch) * self.global_batch / max(dt, 1e-9))

    def on_epoch_end(self, epoch, logs=None):
        dt = time.time() - self.t_epoch
        # Training examples over training time: validation, run before this call, is timed apart.
        train_dt = self.t_last_batch - self.t_epoch
        steps = self.steps_per_epoch - (self.first_batch or 0)
        row = {k: float(v) for k, v in (logs or {}).items()}
        row.update(epoch=epoch + 1, seconds=round(dt, 3), validation_seconds=round(dt - train_dt, 3),
                   examples_per_sec=round(steps * self.global_batch / max(train_dt, 1e-9), 2))
        # A relaunched attempt runs again the epochs after its checkpoint: their new rows replace the old ones.
        self.history = sorted([h for h in self.history if h["epoch"] != epoch + 1] + [row], key=lambda h: h["epoch"])
        self.epochs_run += 1
        elapsed = time.time() - self.t_train
        eta = elapsed / self.epochs_run * (self.epochs - epoch - 1)
        log.info("worker %d epoch %d/%d done: loss %.4f accuracy %.4f val_loss %.4f val_accuracy %.4f "
                 "%.1f examples/s, %.1fs (validation %.1fs), eta %.0fs", self.worker, epoch + 1, self.epochs,
                 row.get("loss", 0), row.get("accuracy", 0), row.get("val_loss", float("nan")),
                 row.get("val_accuracy", float("nan")), row["examples_per_sec"], dt, row["validation_seconds"], eta)


class Trainable(tf.keras.Model):
    """The model ``fit`` trains: built functionally over the layers of a ``build_model`` model (the weights are
    shared). Train this one, save the plain one.

    Its test step scores nothing for an empty batch (``padded_passes`` fills a worker's validation steps with them):
    oneDNN's fused convolution fails on a batch of 0 images on some CPUs ("input depth must be evenly divisible by
    filter depth: 3 vs 24" here, on AVX-512), so the model is not called on one.
    """

    def __init__(self, model: tf.keras.Model, name: str | None = None):
        super().__init__(model.inputs, model.outputs, name=name or f"{model.name}_trainable")

    def test_step(self, data):
        x, y = data

        # Not Keras's own test_step inside the condition: its metric read is a synchronisation point under
        # MultiWorkerMirroredStrategy, which may not sit in a branch (`merge_call` ... RuntimeError).
        def score():
            y_pred = self(x, training=False)
            self.compute_loss(x, y, y_pred)
            self.compiled_metrics.update_state(y, y_pred)
            return tf.constant(True)

        tf.cond(tf.shape(y)[0] > 0, score, lambda: tf.constant(False))
        return self.get_metrics_result()


class TwoRateModel(Trainable):
    """A classifier whose hub module variables get their own optimizer, so fine-tuning can move the pre-trained
    weights more slowly than the new head. Both optimizers apply their gradients through the distribution
    strategy, so each does its own all-reduce.

    Args:
        model: the model of ``build_model``.
        module_optimizer: the optimizer of the variables of the layer named ``module_layer``.
        module_layer: the hub layer's name.
    """

    def __init__(self, model: tf.keras.Model, module_optimizer, module_layer: str = "hub_module"):
        super().__init__(model, name=f"{model.name}_two_rate")
        self.module_optimizer = module_optimizer
        self._module_layer = module_layer

    def _split(self):
        module_ids = {id(v) for v in self.get_layer(self._module_layer).trainable_variables}
        module = [v for v in self.trainable_variables if id(v) in module_ids]
        head = [v for v in self.trainable_variables if id(v) not in module_ids]
        return module, head

    def build_optimizers(self) -> None:
        """Creates both optimizers' slots before ``fit``, so a checkpoint restores into them."""
        module, head = self._split()
        self.optimizer.build(head)
        self.module_optimizer.build(module)

    def train_step(self, data):
        x, y = data
        module, head = self._split()
        with tf.GradientTape() as tape:
            y_pred = self(x, training=True)
            loss = self.compute_loss(x, y, y_pred)
        grads = tape.gradient(loss, module + head)
        self.module_optimizer.apply_gradients(zip(grads[:len(module)], module))
        self.optimizer.apply_gradients(zip(grads[len(module):], head))
        return self.compute_metrics(x, y, y_pred, None)


def compile_for_training(model: tf.keras.Model, learning_rate: float, module_lr_scale: float = 1.0,
                         fine_tune: bool = True) -> tf.keras.Model:
    """The model to ``fit``, compiled with Adam: a ``Trainable`` over ``model``, or a ``TwoRateModel`` when the hub
    module is trained at ``learning_rate * module_lr_scale`` with a scale other than 1.

    Call under the distribution strategy's scope. Save ``model``, not the returned one.
    """
    two_rate = fine_tune and module_lr_scale != 1.0
    trained = (TwoRateModel(model, tf.keras.optimizers.Adam(learning_rate * module_lr_scale)) if two_rate
               else Trainable(model))
    trained.compile(optimizer=tf.keras.optimizers.Adam(learning_rate), loss="sparse_categorical_crossentropy",
                    metrics=["accuracy"])
    if two_rate:
        trained.build_optimizers()
    return trained


class EpochSummaries(tf.keras.callbacks.Callback):
    """Writes each epoch's metrics as TensorBoard scalars: ``<log_dir>/train`` and ``<log_dir>/validation``, tags
    ``epoch_loss``, ``epoch_accuracy``... (the layout of Keras's TensorBoard callback).

    Keras's callback calls ``tf.summary.scalar``, whose implementation is in the tensorboard package, which
    tensorflow-cpu 2.21 no longer installs; this writes the same events with TensorFlow's own ``tf.summary.write``
    and the scalars plugin's metadata, which TensorBoard reads.
    """

    def __init__(self, log_dir: str):
        super().__init__()
        from tensorflow.core.framework import summary_pb2

        metadata = summary_pb2.SummaryMetadata()
        metadata.plugin_data.plugin_name = "scalars"
        self._metadata = metadata.SerializeToString()
        self._writers = {split: tf.summary.create_file_writer(f"{log_dir}/{split}")
                         for split in ("train", "validation")}

    def on_epoch_end(self, epoch, logs=None):
        for key, value in (logs or {}).items():
            split, name = ("validation", key[4:]) if key.startswith("val_") else ("train", key)
            with self._writers[split].as_default():
                tf.summary.write(f"epoch_{name}", tf.constant(float(value)), step=epoch + 1,
                                 metadata=self._metadata)
        for writer in self._writers.values():
            writer.flush()

    def on_train_end(self, logs=None):
        for writer in self._writers.values():
            writer.close()


class ValidationExamples(tf.keras.callbacks.Callback):
    """Adds ``val_examples`` to an epoch's logs: how many examples its validation pass scored, over all workers.

    That is the count of Keras's ``loss`` metric, which weighs each batch by its size; under a distribution
    strategy reading it sums the replicas' counts. Place it before the callbacks that record the epoch's logs.
    """

    def on_test_begin(self, logs=None):
        self.count = None

    def on_test_end(self, logs=None):
        loss = next(m for m in self.model.metrics if m.name == "loss")
        self.count = int(round(float(loss.count.numpy())))

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None and getattr(self, "count", None) is not None:
            logs["val_examples"] = self.count


class BackupAndRestoreHook(tf.keras.callbacks.BackupAndRestore):
    """``BackupAndRestore`` that calls ``after_backup(epoch, step)`` once a checkpoint is written (0-based epoch,
    1-based step of the last batch it includes), to copy it to remote storage.

    It overrides ``_backup``, which every save of the pinned tf-keras goes through.
    """

    def __init__(self, backup_dir: str, save_freq, after_backup=None):
        super().__init__(backup_dir, save_freq=save_freq, delete_checkpoint=False)
        self.after_backup = after_backup

    def _backup(self, epoch, batch=0):
        super()._backup(epoch, batch)
        if self.after_backup is not None:
            self.after_backup(int(epoch), int(batch) + 1)


def read_split(examples_dir: str, manifest: dict, split: str,
               limit: int | None = None) -> tuple[list[bytes], list[int]]:
    """Inputs as stored (encoded images, or UTF-8 texts) and label ids of a split, in manifest file order (for
    scoring exported models, which take them as they are)."""
    feature = modality.of_manifest(manifest).feature
    images, labels = [], []
    files = [f"{examples_dir}/{f['name']}" for f in manifest["files"][split] if f["records"]]
    for serialized in tf.data.TFRecordDataset(files) if files else []:
        ex = tf.train.Example.FromString(serialized.numpy()).features.feature
        images.append(ex[feature].bytes_list.value[0])
        labels.append(int(ex[schema.LABEL].int64_list.value[0]))
        if limit is not None and len(images) >= limit:
            break
    return images, labels
