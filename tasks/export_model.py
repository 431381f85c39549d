"""spark-submit application: exports the fine-tuned model for TF Serving and publishes it atomically.

The exported SavedModel takes inputs as they are: an image model takes encoded image bytes, so clients send
JPEG/PNG files as they are (decoding and resizing run inside the graph); a text model takes UTF-8 strings (the hub
module tokenizes inside the graph). The label vocabulary travels as an asset (``labels.txt``).

Signatures, for both of TF Serving's APIs:

* ``serving_default`` (Predict): ``image_bytes`` or ``text`` (string[N]) -> ``probabilities`` (float[N, C]),
  ``class_ids`` (int64[N]), ``class_names`` (string[N]), ``labels`` (string[N, C], the class of each probability
  column);
* ``classify`` (Classify, method ``tensorflow/serving/classify``): ``inputs`` (serialized ``tf.train.Example``
  with the image bytes under ``image/encoded``, or the text under ``text``) -> ``classes`` (string[N, C]) and
  ``scores`` (float[N, C]).

Warm-up requests (``PredictionLog`` records, Predict and Classify) are in ``assets.extra/tf_serving_warmup_requests``.

Published to ``<serving_root>/<model_name>/<version>/`` (TF Serving's layout): on ``file://`` the version is
written as a hidden, non-numeric sibling, then exchanged with the existing version in one
``renameat2(RENAME_EXCHANGE)`` (or renamed into place); on ``hdfs://`` it is uploaded to a hidden sibling and
renamed into place (see ``commit.publish_dir``). Either way TF Serving never sees a half-written numeric
folder. The published version is then loaded in a fresh process that runs the warm-up requests and compares the
predictions with the evaluated model's; if they disagree, the previous version is put back.

The work is in ``tasks.serving.export``; this module reads the run, publishes and rolls back.

Usage::

    spark-submit tasks/export_model.py --run-dir file:///.../runs/ds=... --examples file:///.../examples/ds=... \
        --serving-root file:///.../serving --model-name shapes --version 20261120
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
import tempfile
import time
from pathlib import Path

from tasks.core import run_folder, runtime, schema
from tasks.io import commit, fencing, storage
from tasks.prep import modality, tfrecord
from tasks.serving import export

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


def run(cfg: Config) -> str:
    """Exports, publishes and verifies; returns the published version's URL.

    Inputs are read where they are for ``file://`` and downloaded into a scratch folder for ``hdfs://``. The
    version is built in ``commit.output_staging`` and published with ``commit.publish_dir`` (an exchange rename
    on ``file://``; an upload to a hidden sibling and renames on ``hdfs://``); the copy that was published is then
    verified (for ``hdfs://``, downloaded again), and the previous version is restored if it fails.
    """
    runtime.set_legacy_keras()
    with tempfile.TemporaryDirectory(prefix="export-") as scratch:
        return _run(cfg, Path(scratch))


def _run(cfg: Config, scratch: Path) -> str:
    from tasks.training import model as M

    t0 = time.time()
    history = json.loads(storage.read_text(storage.join(cfg.run_dir, run_folder.HISTORY)))
    manifest = json.loads(storage.read_text(storage.join(cfg.examples, schema.MANIFEST)))
    kind = modality.of_manifest(manifest)
    labels = history["labels"]
    image_size = tuple(history["image_size"]) if history.get("image_size") else None
    keras_model = M.load_trained(str(storage.fetch(storage.join(cfg.run_dir, run_folder.MODEL), scratch / "run")))
    images = export.warmup_inputs(cfg.examples, manifest, kind, cfg.warmup_records, scratch)
    expected = keras_model(M.preprocess_batch(M.tf.constant(images), image_size, kind.task_type),
                           training=False).numpy()

    version_url = storage.join(cfg.serving_root, cfg.model_name, str(cfg.version))
    commit.clean_stale(version_url)
    staging = commit.output_staging(version_url)
    assets = staging.with_name(staging.name + "-assets")
    check = scratch / run_folder.EXPORT_CHECK
    try:
        assets.mkdir()
        n_warmup, diff = export.build_version(staging, keras_model, labels, image_size, kind, cfg.model_name,
                                              images, expected, assets)
        provenance = _provenance(cfg, manifest, history, labels, kind)
        (staging / run_folder.PROVENANCE).write_text(json.dumps(provenance, indent=2))
        check.write_text(json.dumps({"labels": labels, "images": len(images), "expected": expected.tolist()}))
        commit.write_bytes_atomic(storage.join(cfg.run_dir, run_folder.EXPORT_CHECK), check.read_bytes())
        log.info("exported to staging %s: %d warm-up requests, max difference from the trained model %.2e", staging,
                 n_warmup, diff)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    finally:
        shutil.rmtree(assets, ignore_errors=True)
    version_dir = _publish_verified(cfg, staging, version_url, check, scratch)
    published = {"url": version_url,
                 "path": str(version_dir) if storage.scheme(version_url) == "file" else version_url,
                 "model_name": cfg.model_name, "version": cfg.version, "verified": True,
                 **provenance.get("metrics", {})}
    commit.write_text_atomic(storage.join(cfg.run_dir, run_folder.PUBLISHED), json.dumps(published, indent=2))
    log.info("verified %s in a fresh process (%.1fs)", version_url, time.time() - t0)
    return version_url


def _provenance(cfg: Config, manifest: dict, history: dict, labels: list[str], kind: modality.Modality) -> dict:
    """Where the published version came from, with the candidate's metrics when evaluate wrote them."""
    provenance = {"run_dir": cfg.run_dir, "examples": cfg.examples, "partition": manifest["partition"],
                  "hub_module": history["hub_module"], "labels": labels, "version": cfg.version,
                  "task_type": kind.task_type,
                  # What batch scoring compares its predicted distribution with (tasks.serving.scoring).
                  "train_label_counts": manifest["label_counts"]["train"]}
    metrics_url = storage.join(cfg.run_dir, run_folder.METRICS)
    if storage.exists(metrics_url):
        m = json.loads(storage.read_text(metrics_url))
        provenance["metrics"] = {"accuracy": m["accuracy"], "loss": m["loss"]}
    return provenance


def _publish_verified(cfg: Config, staging: Path, version_url: str, check: Path, scratch: Path) -> Path:
    """Publishes the staged version, verifies what readers get in a fresh process, and puts the previous copy
    back when that fails; returns the verified local folder."""
    # The serving root is outside the run folder: an older attempt's export is refused here explicitly.
    fencing.check(f"version {cfg.version} of {cfg.model_name} for serving", version_url)
    previous = commit.publish_dir(staging, version_url, keep_previous=True)
    log.info("published %s (%s)", version_url, "replacing the previous copy of this version" if previous else "new")
    try:
        # Verify what readers get: the published folder itself, or on hdfs:// a fresh download of it.
        version_dir = storage.fetch(version_url, scratch / "published")
        export.verify_in_fresh_process(version_dir, check)
    except BaseException:
        commit.roll_back(version_url, previous)
        log.error("rolled back %s: %s", version_url, "previous copy restored" if previous else "removed")
        raise
    commit.discard(previous)
    return version_dir


def main(argv: list[str] | None = None) -> None:
    # The fast CRC check first: the slow fallback would turn minutes into hours.
    print(runtime.run_application(parse_args, run, argv, log, checks=[tfrecord.require_fast_crc32c]))


if __name__ == "__main__":
    main()
