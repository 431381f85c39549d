"""The models the scoring engine applies: which one (a published version in TF Serving layout, ``served``, or a
run's Keras model, ``keras``), resolved on the driver (``published_versions``, ``resolve_served``), and loaded once
per Python worker on the executors (``load_scorer``, ``Scorer``).

``load_scorer`` keeps a module-level cache keyed by the model's URL, so with ``spark.python.worker.reuse`` (Spark's
default, set explicitly by the operators) every task a worker runs after the first scores with the model already
in memory. A served model's ``serving_default`` signature takes inputs as stored (encoded image bytes or texts); a
Keras model is fed through ``tasks.training.model.preprocess_batch``, as training and evaluation feed it.

Imports neither TensorFlow nor PySpark at module level: the driver only resolves.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
import time

import numpy as np

from tasks.core import run_folder, runtime
from tasks.io import storage
from tasks.prep import modality

SERVED = "served"
KERAS = "keras"
LABELS_ASSET = run_folder.LABELS_ASSET
PROVENANCE = run_folder.PROVENANCE


class ScoringError(RuntimeError):
    """A scoring job that cannot run, with the model, partition or setting to look at."""


@dataclasses.dataclass(frozen=True)
class ModelRef:
    """A model as the executors load it."""

    url: str
    """Storage URL of the model folder."""
    kind: str
    """``served`` (TF Serving layout) or ``keras`` (a run's ``model/``)."""
    task_type: str
    image_size: tuple[int, int] | None = None
    """(height, width) the Keras model takes; served models resize inside their graph."""
    threads: int = 0
    """TensorFlow threads per worker; 0: the Spark task's CPUs (1 when not in a Spark task)."""


def published_versions(serving_root: str, model_name: str) -> list[int]:
    """Numeric versions with a complete SavedModel under ``<serving_root>/<model_name>/``, highest last."""
    folder = storage.join(serving_root, model_name)
    if not storage.exists(folder):
        return []
    return sorted(int(name) for name in storage.list_names(folder)
                  if name.isdigit() and storage.exists(storage.join(folder, name, "saved_model.pb")))


@dataclasses.dataclass(frozen=True)
class Served:
    """A published version: where it is, and what its ``assets`` say about it."""

    url: str
    version: int
    labels: tuple[str, ...]
    task_type: str
    provenance: dict


def resolve_served(serving_root: str, model_name: str, version: int = 0) -> Served:
    """The published version to score with: ``version``, or the highest one when it is 0.

    Raises:
        ScoringError: nothing is published under that name, or the pinned version is not.
    """
    versions = published_versions(serving_root, model_name)
    if not versions:
        raise ScoringError(f"no published version of model {model_name!r} under {serving_root} (no numeric folder "
                           "with a saved_model.pb): publish one with tfhub_finetune, or set model_name")
    if version and version not in versions:
        raise ScoringError(f"version {version} of model {model_name!r} is not published under {serving_root}; "
                           f"published: {versions}")
    version = version or versions[-1]
    url = storage.join(serving_root, model_name, str(version))
    labels = tuple(line for line in storage.read_text(storage.join(url, LABELS_ASSET)).splitlines() if line)
    prov_url = storage.join(url, PROVENANCE)
    provenance = json.loads(storage.read_text(prov_url)) if storage.exists(prov_url) else {}
    return Served(url, version, labels, provenance.get("task_type", modality.IMAGE_CLASSIFICATION), provenance)


class Scorer:
    """A loaded model: ``predict(inputs)`` gives class probabilities for inputs as stored (bytes)."""

    def __init__(self, ref: ModelRef, local_dir: str) -> None:
        runtime.set_legacy_keras()
        import tensorflow as tf

        threads = ref.threads or _task_cpus()
        try:  # only possible before the process's first TensorFlow op; a reused worker already has them set
            tf.config.threading.set_intra_op_parallelism_threads(threads)
            tf.config.threading.set_inter_op_parallelism_threads(threads)
        except RuntimeError:
            pass
        self.tf, self.ref = tf, ref
        kind = modality.of(ref.task_type)
        if ref.kind == SERVED:
            serve = tf.saved_model.load(local_dir).signatures["serving_default"]
            takes = sorted(serve.structured_input_signature[1])
            if kind.serving_input not in takes:
                raise ScoringError(f"the model {ref.url} takes {takes}, not {kind.serving_input!r}: it is a model of "
                                   f"another task type than {ref.task_type}")
            self._fn = lambda batch: serve(**{kind.serving_input: batch})["probabilities"]
        elif ref.kind == KERAS:
            from tasks.training import model as M

            model = M.load_trained(local_dir)
            self._fn = lambda batch: model(M.preprocess_batch(batch, ref.image_size, ref.task_type), training=False)
        else:
            raise ValueError(f"unknown model kind {ref.kind!r}; use {SERVED!r} or {KERAS!r}")

    def predict(self, inputs: list[bytes]) -> np.ndarray:
        return self._fn(self.tf.constant(inputs, dtype=self.tf.string)).numpy()


def _task_cpus() -> int:
    try:
        from pyspark import TaskContext

        ctx = TaskContext.get()
        return int(ctx.cpus()) if ctx is not None else 1
    except ImportError:
        return 1


_SCORERS: dict[tuple[str, str], Scorer] = {}
_SCRATCH: list[str] = []


def load_scorer(ref: ModelRef) -> tuple[Scorer, float | None]:
    """The model of ``ref``, loaded once per process; returns it and the seconds this call spent loading it (None
    when it was already loaded)."""
    key = (ref.url, ref.kind)
    if key in _SCORERS:
        return _SCORERS[key], None
    t0 = time.perf_counter()
    if not _SCRATCH:
        _SCRATCH.append(tempfile.mkdtemp(prefix="tfhub-score-"))
    local = storage.fetch(ref.url, os.path.join(_SCRATCH[0], str(len(_SCORERS))))
    scorer = Scorer(ref, str(local))
    _SCORERS[key] = scorer
    return scorer, time.perf_counter() - t0
