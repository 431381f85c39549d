"""spark-submit application: exports the fine-tuned model for TF Serving and publishes it atomically.

The exported SavedModel takes encoded image bytes, so clients send JPEG/PNG files as they are: decoding and
resizing run inside the graph, and the label vocabulary travels as an asset (``labels.txt``).

``serving_default``: ``image_bytes`` (string[N]) -> ``probabilities`` (float[N, C]), ``class_ids`` (int64[N]),
``class_names`` (string[N]), ``labels`` (string[N, C], the class name of each probability column).

Published to ``<serving_root>/<model_name>/<version>/`` (TF Serving's layout) by writing a hidden, non-numeric
sibling and renaming it into place, so TF Serving never sees a half-written numeric folder.

Usage::

    spark-submit tasks/export_model.py --run-dir file:///.../runs/ds=... --examples file:///.../examples/ds=... \
        --serving-root file:///.../serving --model-name shapes --version 20261120
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import shutil
import sys
import time

import numpy as np

from tasks import runtime, schema, storage

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


def parse_args(argv: list[str]) -> Config:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run-dir", required=True)
    p.add_argument("--examples", required=True)
    p.add_argument("--serving-root", required=True)
    p.add_argument("--model-name", required=True)
    p.add_argument("--version", type=int, required=True)
    a = p.parse_args(argv)
    if a.version <= 0:
        p.error(f"--version must be a positive integer, got {a.version}")
    if not a.model_name or "/" in a.model_name or a.model_name.startswith("."):
        p.error(f"--model-name {a.model_name!r} must be a plain folder name")
    return Config(run_dir=a.run_dir, examples=a.examples, serving_root=a.serving_root, model_name=a.model_name,
                  version=a.version)


def build_serving_module(keras_model, labels_file: str, image_size: tuple[int, int]):
    """A ``tf.Module`` whose ``serve`` signature decodes image bytes and classifies them."""
    from tasks import model as M

    tf = M.tf

    class ServingModule(tf.Module):
        def __init__(self):
            super().__init__()
            self.model = keras_model
            self.labels_asset = tf.saved_model.Asset(labels_file)
            self.labels_table = tf.lookup.StaticHashTable(
                tf.lookup.TextFileInitializer(self.labels_asset, tf.int64, tf.lookup.TextFileIndex.LINE_NUMBER,
                                              tf.string, tf.lookup.TextFileIndex.WHOLE_LINE), default_value="")
            self.num_classes = int(keras_model.output_shape[-1])

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="image_bytes")])
        def serve(self, image_bytes):
            images = tf.map_fn(lambda b: M.decode_image(b, image_size), image_bytes,
                               fn_output_signature=tf.TensorSpec((image_size[0], image_size[1], 3), tf.float32))
            probs = self.model(images, training=False)
            class_ids = tf.argmax(probs, axis=1)
            all_names = self.labels_table.lookup(tf.range(self.num_classes, dtype=tf.int64))
            return {
                "probabilities": probs,
                "class_ids": class_ids,
                "class_names": self.labels_table.lookup(class_ids),
                "labels": tf.tile(all_names[None, :], [tf.shape(probs)[0], 1]),
            }

    return ServingModule()


def test_records(examples: str, manifest: dict, limit: int) -> tuple[list[bytes], np.ndarray]:
    from tasks import tfrecord

    from tasks import model as M

    tf = M.tf
    images, labels = [], []
    for f in manifest["files"]["test"]:
        with open(storage.local_path(storage.join(examples, f["name"])), "rb") as fh:
            for rec in tfrecord.read_records(fh):
                ex = tf.train.Example.FromString(rec).features.feature
                images.append(ex[schema.IMAGE].bytes_list.value[0])
                labels.append(ex[schema.LABEL].int64_list.value[0])
                if len(images) >= limit:
                    return images, np.array(labels)
    return images, np.array(labels)


def run(cfg: Config) -> str:
    """Exports and publishes; returns the published version's URL."""
    runtime.set_legacy_keras()
    from tasks import model as M

    tf = M.tf
    t0 = time.time()
    history = json.loads(storage.read_text(storage.join(cfg.run_dir, "history.json")))
    manifest = json.loads(storage.read_text(storage.join(cfg.examples, schema.MANIFEST)))
    labels, image_size = history["labels"], tuple(history["image_size"])
    keras_model = M.load_trained(str(storage.local_path(storage.join(cfg.run_dir, "model"))))

    version_url = storage.join(cfg.serving_root, cfg.model_name, str(cfg.version))
    storage.clean_stale(version_url)
    staging = storage.staging_dir(version_url)
    try:
        scratch = staging.with_name(staging.name + "-assets")
        scratch.mkdir()
        labels_file = scratch / "labels.txt"
        labels_file.write_text("".join(name + "\n" for name in labels))
        module = build_serving_module(keras_model, str(labels_file), image_size)
        tf.saved_model.save(module, str(staging), signatures={"serving_default": module.serve})
        shutil.rmtree(scratch)

        # Check the export against the model it came from before anyone can load it.
        images, y = test_records(cfg.examples, manifest, limit=64)
        if images:
            served = tf.saved_model.load(str(staging)).signatures["serving_default"]
            out = served(image_bytes=tf.constant(images))
            expected = keras_model(tf.stack([M.decode_image(b, image_size) for b in images]), training=False).numpy()
            diff = float(np.abs(out["probabilities"].numpy() - expected).max())
            if diff > 1e-4:
                raise RuntimeError(f"exported model disagrees with the trained model by {diff:.2e} on test records")
            names = [n.decode() for n in out["class_names"].numpy()]
            if names != [labels[i] for i in expected.argmax(axis=1)]:
                raise RuntimeError("exported class names do not match the label vocabulary")
            log.info("export check: %d test records, max probability difference %.2e, accuracy %.3f", len(images),
                     diff, float((expected.argmax(axis=1) == y).mean()))
        (staging / "assets.extra").mkdir(exist_ok=True)
        metrics_url = storage.join(cfg.run_dir, "metrics.json")
        provenance = {"run_dir": cfg.run_dir, "examples": cfg.examples, "partition": manifest["partition"],
                      "hub_module": history["hub_module"], "labels": labels}
        if storage.exists(metrics_url):
            m = json.loads(storage.read_text(metrics_url))
            provenance["metrics"] = {"accuracy": m["accuracy"], "loss": m["loss"]}
        (staging / "assets.extra" / "provenance.json").write_text(json.dumps(provenance, indent=2))
        storage.commit_dir(staging, version_url)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        shutil.rmtree(staging.with_name(staging.name + "-assets"), ignore_errors=True)
        raise
    log.info("published %s (%.1fs)", version_url, time.time() - t0)
    return version_url


def main(argv: list[str] | None = None) -> None:
    runtime.setup_logging()
    cfg = parse_args(sys.argv[1:] if argv is None else argv)
    log.info("config:\n%s", runtime.config_json(cfg))
    print(run(cfg))


if __name__ == "__main__":
    main()
