"""spark-submit application: exports the fine-tuned model for TF Serving and publishes it atomically.

The exported SavedModel takes inputs as they are: an image model takes encoded image bytes, so clients send
JPEG/PNG files as they are (decoding and resizing run inside the graph); a text model takes UTF-8 strings (the hub
module tokenizes inside the graph). The label vocabulary travels as an asset (``labels.txt``).

Signatures, for both of TF Serving's APIs:

* ``serving_default`` (Predict): ``image_bytes`` or ``text`` (string[N]) -> ``probabilities`` (float[N, C]), ``class_ids``
  (int64[N]), ``class_names`` (string[N]), ``labels`` (string[N, C], the class of each probability column);
* ``classify`` (Classify, method ``tensorflow/serving/classify``): ``inputs`` (serialized ``tf.train.Example``
  with the image bytes under ``image/encoded``, or the text under ``text``) -> ``classes`` (string[N, C]) and
  ``scores`` (float[N, C]).

Warm-up requests (``PredictionLog`` records, Predict and Classify) are in ``assets.extra/tf_serving_warmup_requests``.

Published to ``<serving_root>/<model_name>/<version>/`` (TF Serving's layout): on ``file://`` the version is
written as a hidden, non-numeric sibling, then exchanged with the existing version in one
``renameat2(RENAME_EXCHANGE)`` (or renamed into place); on ``hdfs://`` it is uploaded to a hidden sibling and
renamed into place (see ``storage.publish_dir``). Either way TF Serving never sees a half-written numeric
folder. The published version is then loaded in a fresh process that runs the warm-up requests and compares the
predictions with the evaluated model's; if they disagree, the previous version is put back.

Usage::

    spark-submit tasks/export_model.py --run-dir file:///.../runs/ds=... --examples file:///.../examples/ds=... \
        --serving-root file:///.../serving --model-name shapes --version 20261120
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

import tasks
from tasks import fencing, modality, run_folder, runtime, schema, storage, tfrecord

log = logging.getLogger("export_model")


@dataclasses.dataclass
class Config:
    run_dir: str
    """Storage URL of the run folder holding ``model/``, ``history.json`` and ``metrics.json``."""
    examples: str
    """Storage URL of the prepared dataset; test records check the export."""
    serving_root: str
    """Storage URL of the serving root."""
    model_name: str
    """Model name: the folder under the serving root."""
    version: int
    """Numeric version folder; derived from the partition so reruns replace it."""
    warmup_records: int = 8
    """Test records used for warm-up requests (one Predict request each, one batched Predict, one Classify)."""

WARMUP_FILE = "assets.extra/tf_serving_warmup_requests"
CLASSIFY_METHOD = "tensorflow/serving/classify"


def parse_args(argv: list[str]) -> Config:
    p = runtime.build_parser(Config, __doc__.splitlines()[0])
    a = p.parse_args(argv)
    if a.version <= 0:
        p.error(f"--version must be a positive integer, got {a.version}")
    for problem in [storage.check_name(a.model_name, "--model-name")] + [
            storage.check_segments(getattr(a, k), f"--{k.replace('_', '-')}")
            for k in ("run_dir", "examples", "serving_root")]:
        if problem:
            p.error(problem)
    if a.warmup_records < 1:
        p.error(f"--warmup-records must be at least 1, got {a.warmup_records}")
    return Config(**vars(a))


def build_serving_module(keras_model, labels_file: str, image_size: tuple[int, int] | None,
                         task_type: str = modality.IMAGE_CLASSIFICATION):
    """A ``tf.Module`` whose ``serve`` signature takes inputs as stored (encoded image bytes, which it decodes and
    resizes, or texts) and classifies them; ``classify`` takes them in serialized ``tf.train.Example``."""
    from tasks import model as M

    tf = M.tf
    kind = modality.of(task_type)

    class ServingModule(tf.Module):
        def __init__(self):
            super().__init__()
            self.model = keras_model
            self.labels_asset = tf.saved_model.Asset(labels_file)
            self.labels_table = tf.lookup.StaticHashTable(
                tf.lookup.TextFileInitializer(self.labels_asset, tf.int64, tf.lookup.TextFileIndex.LINE_NUMBER,
                                              tf.string, tf.lookup.TextFileIndex.WHOLE_LINE), default_value="")
            self.num_classes = int(keras_model.output_shape[-1])

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name=kind.serving_input)])
        def serve(self, inputs):
            probs = self.model(M.preprocess_batch(inputs, image_size, task_type), training=False)
            class_ids = tf.argmax(probs, axis=1)
            all_names = self.labels_table.lookup(tf.range(self.num_classes, dtype=tf.int64))
            return {
                "probabilities": probs,
                "class_ids": class_ids,
                "class_names": self.labels_table.lookup(class_ids),
                "labels": tf.tile(all_names[None, :], [tf.shape(probs)[0], 1]),
            }

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="inputs")])
        def classify(self, serialized):
            parsed = tf.io.parse_example(serialized, {kind.feature: tf.io.FixedLenFeature([], tf.string)})
            out = self.serve(parsed[kind.feature])
            return {"classes": out["labels"], "scores": out["probabilities"]}

    return ServingModule()


def set_method_name(export_dir: Path, signature: str, method_name: str) -> None:
    """TF2's ``tf.saved_model.save`` marks every signature as Predict; TF Serving's Classify API needs the
    signature's method name to say classify, so it is set in ``saved_model.pb`` after saving."""
    from tensorflow.core.protobuf import saved_model_pb2

    pb = export_dir / "saved_model.pb"
    sm = saved_model_pb2.SavedModel()
    sm.ParseFromString(pb.read_bytes())
    for meta_graph in sm.meta_graphs:
        meta_graph.signature_def[signature].method_name = method_name
    pb.write_bytes(sm.SerializeToString())


def write_warmup(path: Path, model_name: str, images: list[bytes], kind: modality.Modality = modality.IMAGE) -> int:
    """TF Serving warm-up requests: one Predict request per input, one batched, one Classify. Returns the count."""
    from tensorflow_serving.apis import (classification_pb2, input_pb2, model_pb2, predict_pb2,
                                         prediction_log_pb2)

    from tasks import model as M

    tf = M.tf
    logs = []
    for batch in [[img] for img in images] + [images]:
        req = predict_pb2.PredictRequest(model_spec=model_pb2.ModelSpec(name=model_name,
                                                                        signature_name="serving_default"))
        req.inputs[kind.serving_input].CopyFrom(tf.make_tensor_proto(batch, dtype=tf.string))
        logs.append(prediction_log_pb2.PredictionLog(predict_log=prediction_log_pb2.PredictLog(request=req)))
    examples = [tf.train.Example(features=tf.train.Features(feature={
        kind.feature: tf.train.Feature(bytes_list=tf.train.BytesList(value=[img]))})) for img in images]
    creq = classification_pb2.ClassificationRequest(
        model_spec=model_pb2.ModelSpec(name=model_name, signature_name="classify"),
        input=input_pb2.Input(example_list=input_pb2.ExampleList(examples=examples)))
    logs.append(prediction_log_pb2.PredictionLog(classify_log=prediction_log_pb2.ClassifyLog(request=creq)))
    if len(logs) > 1000:
        raise ValueError(f"{len(logs)} warm-up requests; TF Serving reads at most 1000")
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        tfrecord.write_records(f, (log_.SerializeToString() for log_ in logs))
    return len(logs)


def verify_in_fresh_process(version_dir: Path, expected: Path, timeout: int = 300) -> None:
    """Loads the published model in a new Python process (plain TensorFlow, as a server would) and checks it.

    Raises:
        RuntimeError: with the checker's output, when it fails.
    """
    env = {k: v for k, v in os.environ.items() if k != "TF_USE_LEGACY_KERAS"}
    # The tasks package may come from a --py-files zip: hand its location to the child.
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(Path(tasks.__file__).parents[1]), env.get("PYTHONPATH")) if p)
    res = subprocess.run([sys.executable, "-m", "tasks.verify_export", "--model-dir", str(version_dir),
                          "--expected", str(expected)], capture_output=True, text=True, timeout=timeout, env=env)
    for line in (res.stdout + res.stderr).splitlines():
        if "verify_export" in line or "Error" in line:
            log.info("%s", line)
    if res.returncode != 0:
        raise RuntimeError(f"published model {version_dir} failed its check in a fresh process "
                           f"(exit {res.returncode}):\n{(res.stdout + res.stderr)[-3000:]}")


def run(cfg: Config) -> str:
    """Exports, publishes and verifies; returns the published version's URL.

    Inputs are read where they are for ``file://`` and downloaded into a scratch folder for ``hdfs://``. The
    version is built in ``storage.output_staging`` and published with ``storage.publish_dir`` (an exchange rename
    on ``file://``; an upload to a hidden sibling and renames on ``hdfs://``); the copy that was published is then
    verified (for ``hdfs://``, downloaded again), and the previous version is restored if it fails.
    """
    runtime.set_legacy_keras()
    with tempfile.TemporaryDirectory(prefix="export-") as scratch:
        return _run(cfg, Path(scratch))


def _run(cfg: Config, scratch: Path) -> str:
    from tasks import model as M

    tf = M.tf
    t0 = time.time()
    history = json.loads(storage.read_text(storage.join(cfg.run_dir, run_folder.HISTORY)))
    manifest = json.loads(storage.read_text(storage.join(cfg.examples, schema.MANIFEST)))
    kind = modality.of_manifest(manifest)
    labels = history["labels"]
    image_size = tuple(history["image_size"]) if history.get("image_size") else None
    keras_model = M.load_trained(str(storage.fetch(storage.join(cfg.run_dir, run_folder.MODEL), scratch / "run")))
    # Warm-up images: test records, or training ones when there are none; on hdfs:// only the files they are in
    # are downloaded, one at a time.
    images: list[bytes] = []
    files = [(s, f) for s in ("test", "train") for f in manifest["files"][s] if f["records"]]
    for split, f in files:
        if len(images) >= cfg.warmup_records or (images and split == "train"):
            break
        local = storage.fetch_files(cfg.examples, [f["name"]], scratch / split)
        more, _ = M.read_split(str(local), {"files": {split: [f]}, "task_type": kind.task_type}, split,
                               limit=cfg.warmup_records - len(images))
        images += more
    expected = keras_model(M.preprocess_batch(tf.constant(images), image_size, kind.task_type),
                           training=False).numpy()

    version_url = storage.join(cfg.serving_root, cfg.model_name, str(cfg.version))
    storage.clean_stale(version_url)
    staging = storage.output_staging(version_url)
    assets = staging.with_name(staging.name + "-assets")
    check = scratch / "export_check.json"
    try:
        assets.mkdir()
        labels_file = assets / Path(run_folder.LABELS_ASSET).name
        labels_file.write_text("".join(name + "\n" for name in labels))
        module = build_serving_module(keras_model, str(labels_file), image_size, kind.task_type)
        tf.saved_model.save(module, str(staging),
                            signatures={"serving_default": module.serve, "classify": module.classify})
        set_method_name(staging, "classify", CLASSIFY_METHOD)
        n_warmup = write_warmup(staging / WARMUP_FILE, cfg.model_name, images, kind)

        # Check the export against the model it came from before anyone can load it.
        out = tf.saved_model.load(str(staging)).signatures["serving_default"](
            **{kind.serving_input: tf.constant(images)})
        diff = float(np.abs(out["probabilities"].numpy() - expected).max())
        if diff > 1e-4:
            raise RuntimeError(f"exported model disagrees with the trained model by {diff:.2e} on test records")
        if [n.decode() for n in out["class_names"].numpy()] != [labels[i] for i in expected.argmax(axis=1)]:
            raise RuntimeError("exported class names do not match the label vocabulary")
        provenance = {"run_dir": cfg.run_dir, "examples": cfg.examples, "partition": manifest["partition"],
                      "hub_module": history["hub_module"], "labels": labels, "version": cfg.version,
                      "task_type": kind.task_type,
                      # What batch scoring compares its predicted distribution with (tasks.scoring).
                      "train_label_counts": manifest["label_counts"]["train"]}
        metrics_url = storage.join(cfg.run_dir, run_folder.METRICS)
        if storage.exists(metrics_url):
            m = json.loads(storage.read_text(metrics_url))
            provenance["metrics"] = {"accuracy": m["accuracy"], "loss": m["loss"]}
        (staging / run_folder.PROVENANCE).write_text(json.dumps(provenance, indent=2))
        check.write_text(json.dumps({"labels": labels, "images": len(images), "expected": expected.tolist()}))
        storage.write_bytes_atomic(storage.join(cfg.run_dir, run_folder.EXPORT_CHECK), check.read_bytes())
        log.info("exported to staging %s: %d warm-up requests, max difference from the trained model %.2e", staging,
                 n_warmup, diff)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    finally:
        shutil.rmtree(assets, ignore_errors=True)

    # The serving root is outside the run folder: an older attempt's export is refused here explicitly.
    fencing.check(f"version {cfg.version} of {cfg.model_name} for serving", version_url)
    previous = storage.publish_dir(staging, version_url, keep_previous=True)
    log.info("published %s (%s)", version_url, "replacing the previous copy of this version" if previous else "new")
    try:
        # Verify what readers get: the published folder itself, or on hdfs:// a fresh download of it.
        version_dir = storage.fetch(version_url, scratch / "published")
        verify_in_fresh_process(version_dir, check)
    except BaseException:
        storage.roll_back_url(version_url, previous)
        log.error("rolled back %s: %s", version_url, "previous copy restored" if previous else "removed")
        raise
    storage.discard_url(previous)
    published = {"url": version_url,
                 "path": str(version_dir) if storage.scheme(version_url) == "file" else version_url,
                 "model_name": cfg.model_name, "version": cfg.version, "verified": True,
                 **provenance.get("metrics", {})}
    storage.write_text_atomic(storage.join(cfg.run_dir, run_folder.PUBLISHED), json.dumps(published, indent=2))
    log.info("verified %s in a fresh process (%.1fs)", version_url, time.time() - t0)
    return version_url


def main(argv: list[str] | None = None) -> None:
    # The fast CRC check first: the slow fallback would turn minutes into hours.
    print(runtime.run_application(parse_args, run, argv, log, checks=[tfrecord.require_fast_crc32c]))


if __name__ == "__main__":
    main()
