"""Exporting a fine-tuned Keras model for TF Serving: the serving module and its two signatures
(``build_serving_module``: Predict on raw image bytes or text, Classify on ``tf.train.Example``), the warm-up
requests (``write_warmup``), the version folder built and checked against the trained model (``build_version``),
and the check of a published version in a fresh process (``verify_in_fresh_process``, ``tasks.serving.verify_export``).
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

import tasks
from tasks.core import run_folder
from tasks.io import storage
from tasks.prep import modality, tfrecord

log = logging.getLogger("export_model")

CLASSIFY_METHOD = "tensorflow/serving/classify"


def build_serving_module(keras_model, labels_file: str, image_size: tuple[int, int] | None,
                         task_type: str = modality.IMAGE_CLASSIFICATION):
    """A ``tf.Module`` whose ``serve`` signature takes inputs as stored (encoded image bytes, which it decodes and
    resizes, or texts) and classifies them; ``classify`` takes them in serialized ``tf.train.Example``."""
    from tasks.training import model as M

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

    from tasks.training import model as M

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
    res = subprocess.run([sys.executable, "-m", "tasks.serving.verify_export", "--model-dir", str(version_dir),
                          "--expected", str(expected)], capture_output=True, text=True, timeout=timeout, env=env)
    for line in (res.stdout + res.stderr).splitlines():
        if "verify_export" in line or "Error" in line:
            log.info("%s", line)
    if res.returncode != 0:
        raise RuntimeError(f"published model {version_dir} failed its check in a fresh process "
                           f"(exit {res.returncode}):\n{(res.stdout + res.stderr)[-3000:]}")



def warmup_inputs(examples: str, manifest: dict, kind: modality.Modality, limit: int, scratch: Path) -> list[bytes]:
    """Warm-up inputs: test records, or training ones when there are none; on hdfs:// only the files they are in
    are downloaded, one at a time."""
    from tasks.training import model as M

    images: list[bytes] = []
    files = [(s, f) for s in ("test", "train") for f in manifest["files"][s] if f["records"]]
    for split, f in files:
        if len(images) >= limit or (images and split == "train"):
            break
        local = storage.fetch_files(examples, [f["name"]], scratch / split)
        more, _ = M.read_split(str(local), {"files": {split: [f]}, "task_type": kind.task_type}, split,
                               limit=limit - len(images))
        images += more
    return images


def build_version(staging: Path, keras_model, labels: list[str], image_size, kind: modality.Modality,
                  model_name: str, images: list[bytes], expected: np.ndarray, assets: Path) -> tuple[int, float]:
    """Saves the serving SavedModel with its labels asset and warm-up requests into ``staging`` and checks it
    against the trained model's predictions ``expected`` on ``images``.

    Returns:
        The number of warm-up requests and the largest difference from the trained model.

    Raises:
        RuntimeError: the export disagrees with the trained model.
    """
    from tasks.training.model import tf

    labels_file = assets / Path(run_folder.LABELS_ASSET).name
    labels_file.write_text("".join(name + "\n" for name in labels))
    module = build_serving_module(keras_model, str(labels_file), image_size, kind.task_type)
    tf.saved_model.save(module, str(staging), signatures={"serving_default": module.serve, "classify": module.classify})
    set_method_name(staging, "classify", CLASSIFY_METHOD)
    n_warmup = write_warmup(staging / run_folder.WARMUP_FILE, model_name, images, kind)
    # Check the export against the model it came from before anyone can load it.
    out = tf.saved_model.load(str(staging)).signatures["serving_default"](**{kind.serving_input: tf.constant(images)})
    diff = float(np.abs(out["probabilities"].numpy() - expected).max())
    if diff > 1e-4:
        raise RuntimeError(f"exported model disagrees with the trained model by {diff:.2e} on test records")
    if [n.decode() for n in out["class_names"].numpy()] != [labels[i] for i in expected.argmax(axis=1)]:
        raise RuntimeError("exported class names do not match the label vocabulary")
    return n_warmup, diff
