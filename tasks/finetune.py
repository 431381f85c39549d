"""Spark application: distributed fine-tuning of a TF Hub module in a Spark barrier stage that survives a lost worker.

The driver checks everything a barrier stage needs before launching it (pre-flight), then launches ``num_workers``
barrier tasks. Each task imports TensorFlow, gets the hub module onto local disk and its own share of the
training files ready (read in place on ``file://``; on ``hdfs://`` streamed while it trains, or downloaded first:
``input_mode``, ``tasks.training.streamed_input``), exchanges ``host:port`` with the others through
``BarrierTaskContext.allGather`` (a lone worker skips that barrier sync and the closing one: each costs a second of
Spark's polling), sets ``TF_CONFIG`` and trains one ``MultiWorkerMirroredStrategy`` model. Steps
per epoch come from the manifest's global count, and each worker's input repeats, so every worker runs the same
number of steps whatever its share of the files.

Pre-flight (fails in well under a minute with what to change):

- the prepared dataset is complete (``_SUCCESS``, manifest, every listed training and eval file present) and has at
  least one non-empty training file per worker;
- the hub module resolves (see ``tasks.training.hub_module.locate``) and its input size is known;
- ``spark.dynamicAllocation.enabled`` is false and ``spark.python.worker.reuse`` is false;
- the application has ``num_workers`` task slots (executor cores / ``spark.task.cpus``, as Spark counts them for
  barrier stages), waiting up to ``slots_wait_s`` for executors to register.

Surviving a lost worker: the chief checkpoints with ``BackupAndRestore`` every ``checkpoint_every_steps`` steps,
locally, and commits each checkpoint to ``<run_dir>/checkpoints`` as a new version, its pointer written last
(``TrainingStore``); every worker fetches the last committed one before a restart. A failed barrier stage is not
retried by Spark ("Could not recover from a failed barrier ResultStage"), so the driver catches the failed job and
relaunches the stage, up to ``max_restarts`` times; Keras resumes from the checkpoint's epoch and step. Failures reach
the driver in bounded time:

- a worker process that dies: Spark fails its task at once (the executor reads EOF) and kills the others;
- a worker that freezes in training: TensorFlow's coordination service misses its heartbeats and fails its peers'
  collectives within seconds (``UnavailableError``), and every collective times out after ``stall_timeout_s``;
- a worker that hangs anywhere else (before the rendezvous, say): the driver's watchdog (``tasks.training.logrelay``)
  cancels the stage when a worker sent nothing for ``stall_timeout_s``;
- a worker waiting at a Spark barrier: ``spark.barrier.sync.timeout`` (set to 900 s when this job creates the
  Spark context) and the watchdog.

Logs: every worker sends its log records, progress and, on failure, its traceback to the driver
(``tasks.training.logrelay``), which logs them: on a cluster a worker's stderr is in its executor's log, not in the
Airflow task log.

GPUs: a task given GPUs by Spark (``spark.task.resource.gpu.amount``) sees only those (``CUDA_VISIBLE_DEVICES``);
a task given none sees no GPU and trains on its CPU cores.

Output under ``<run_dir>/``: ``model/`` (Keras SavedModel, written by the chief), ``history.json`` (epochs,
restarts, timings), ``training_curves.png``, ``tensorboard/`` (event files), ``finetune_config.json``.

Usage (spark-submit with the ``tasks`` package on ``--py-files``)::

    spark-submit tasks/finetune.py --examples file:///.../examples/ds=2026-11-20 \\
        --run-dir file:///.../runs/ds=2026-11-20 --storage-root file:///... --hub-module hub/shapes_fv_32 \\
        --max-restarts 2 --checkpoint-every-steps 50

The work is in ``tasks.training``: ``preflight`` (the checks and the Spark context), ``worker`` (a barrier task),
``checkpoints`` (the training state on storage) and ``driver`` (launch, restarts, the report).
"""

from __future__ import annotations

import dataclasses
import logging
import secrets
import socket
import time

from tasks.core import run_folder, runtime
from tasks.io import storage
from tasks.prep import modality
from tasks.training import driver, hub_module, logrelay, preflight, streamed_input
from tasks.training.worker import WorkerSpec

log = logging.getLogger("finetune")


@dataclasses.dataclass
class Config:
    examples: str
    """Storage URL of the prepared dataset (the output of prepare_examples)."""
    run_dir: str
    """Storage URL of this run's folder; the model, history, checkpoints and TensorBoard logs are written there."""
    storage_root: str
    """Storage root; relative hub_module paths and the TF Hub cache live under it."""
    hub_module: str
    """TF Hub module: URL, Kaggle handle, absolute path, hdfs:// URL or path relative to the storage root."""
    num_workers: int = 2
    """Barrier tasks, one TensorFlow worker each."""
    epochs: int = 15
    """Passes over the training split (by global example count)."""
    batch_size: int = 32
    """Global batch size, split evenly over the workers."""
    learning_rate: float = 2e-3
    """Adam learning rate of the head (and of the module, times module_lr_scale)."""
    fine_tune: bool = True
    """Also train the hub module's weights (otherwise only the head)."""
    module_lr_scale: float = 1.0
    """With fine_tune, the hub module's learning rate is learning_rate times this (e.g. 0.1 to move the
    pre-trained weights gently); its own optimizer when not 1."""
    image_size: int = 0
    """Input height and width in pixels for image modules; 0: what the module records or its signature fixes
    (needed for a module whose signature leaves the size open)."""
    seed: int = 42
    """Seed of weights initialisation and shuffling."""
    max_restarts: int = 2
    """How many times the driver relaunches a failed barrier stage, resuming from the last checkpoint."""
    checkpoint_every_steps: int = 50
    """Steps between two checkpoints (BackupAndRestore) of the training state."""
    stall_timeout_s: float = 300.0
    """A worker that reports nothing for this long (and a collective that waits this long) fails the stage."""
    slots_wait_s: float = 30.0
    """How long pre-flight waits for executors to register before failing for lack of task slots."""
    input_mode: str = "auto"
    """How workers read a dataset on hdfs://: stream (ranged WebHDFS reads with read-ahead while training, no local
    copy), prefetch (download the worker's whole share to local disk first), or auto (prefetch when the share is at
    most input_prefetch_max_mb, else stream). A file:// dataset is read in place."""
    input_prefetch_max_mb: float = 256.0
    """With input_mode auto, the largest share (a worker's training files and the eval files, in MB) that is
    downloaded before training rather than streamed."""
    input_cache_mb: float = 1024.0
    """When streaming, the most MB of each worker's shards kept on its local disk as they stream, read from there
    on the next passes (the rest is streamed on every pass); 0 keeps nothing on disk."""


def parse_args(argv: list[str]) -> Config:
    p = runtime.build_parser(Config, __doc__.splitlines()[0], choices={"input_mode": streamed_input.MODES})
    cfg = Config(**vars(p.parse_args(argv)))
    for name in ("num_workers", "epochs", "batch_size", "checkpoint_every_steps"):
        if getattr(cfg, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1, got {getattr(cfg, name)}")
    if cfg.batch_size % cfg.num_workers:
        p.error(f"--batch-size {cfg.batch_size} must be a multiple of --num-workers {cfg.num_workers}")
    if not 0 < cfg.learning_rate < 1:
        p.error(f"--learning-rate must be in (0, 1), got {cfg.learning_rate}")
    if cfg.module_lr_scale < 0:
        p.error(f"--module-lr-scale must be at least 0, got {cfg.module_lr_scale}")
    if cfg.max_restarts < 0:
        p.error(f"--max-restarts must be at least 0, got {cfg.max_restarts}")
    if cfg.stall_timeout_s < 10:
        p.error(f"--stall-timeout-s must be at least 10 seconds, got {cfg.stall_timeout_s}")
    if cfg.slots_wait_s < 0:
        p.error(f"--slots-wait-s must be at least 0, got {cfg.slots_wait_s}")
    for name in ("input_prefetch_max_mb", "input_cache_mb"):
        if getattr(cfg, name) < 0:
            p.error(f"--{name.replace('_', '-')} must be at least 0, got {getattr(cfg, name)}")
    for name in ("examples", "run_dir", "storage_root"):
        problem = storage.check_segments(getattr(cfg, name), f"--{name.replace('_', '-')}")
        if problem:
            p.error(problem)
    return cfg


def run(cfg: Config, spark=None) -> dict:
    """Pre-flight, the barrier stage (with restarts), then the history and plots; returns the history."""
    import psutil

    timeline = {"driver_process_start": psutil.Process().create_time(), "driver_run": time.time()}
    t0 = time.time()
    manifest = preflight.load_manifest(cfg.examples)
    preflight.check_training_data(cfg.examples, manifest)
    shares = preflight.assign_files(manifest["files"]["train"], cfg.num_workers)  # fail before launching if not
    sampling = preflight.sampling_rates(manifest["files"]["train"], shares, cfg.batch_size)
    preflight.log_sampling(sampling)
    kind, module_url, image_size = _module(cfg, manifest)

    sc = spark.sparkContext if spark is not None else preflight.create_context(f"finetune {manifest['partition']}")
    timeline["session_ready"] = time.time()
    preflight.check_spark_conf(sc.getConf())
    slots = preflight.wait_for_slots(sc, cfg.num_workers, cfg.slots_wait_s)
    log.info("pre-flight passed in %.1fs: %d task slots for %d workers", time.time() - t0, slots, cfg.num_workers)
    driver.start_run_folder(cfg)

    group = f"finetune-{secrets.token_hex(4)}"
    conf = sc.getConf()
    relay = logrelay.RelayServer(conf.get("spark.driver.host") or socket.gethostname(), secrets.token_hex(16),
                                 cfg.stall_timeout_s, on_stall=lambda reason: sc.cancelJobGroup(group),
                                 bind_host=conf.get("spark.driver.bindAddress"))

    def spec_for(attempt: int) -> WorkerSpec:
        return WorkerSpec(cfg=cfg, manifest=manifest, module_url=module_url, image_size=image_size,
                          task_type=kind.task_type, relay=relay.address, token=relay.token, attempt=attempt,
                          webhdfs=storage.webhdfs_settings())

    timeline["stage_launched"] = time.time()
    with relay:
        results, attempts, workers = driver.run_barrier_stage(sc, cfg, spec_for, relay, group)
    timeline["workers"] = {w.rank: w.phases for w in workers}

    chief = next(r for r in results if r["rank"] == 0)
    history = {"history": chief["history"], "steps_per_epoch": chief["steps_per_epoch"],
               "num_workers": cfg.num_workers, "train_seconds": chief["train_seconds"],
               "task_type": kind.task_type, "image_size": list(image_size) if image_size else None,
               "labels": manifest["labels"], "hub_module": cfg.hub_module,
               "hub_module_url": module_url, "worker_files": {r["rank"]: r["files"] for r in results},
               "sampling": sampling, "restarts": len(attempts) - 1, "attempts": attempts,
               "resumed_from": chief["resumed_from"], "input": {r["rank"]: r["input"] for r in results},
               "timeline": timeline}
    title = f"{manifest['partition']}: {cfg.num_workers} workers, fine_tune={cfg.fine_tune}"
    if len(attempts) > 1:
        title += f", {len(attempts) - 1} restarts"
    driver.write_report(cfg, chief, history, title)
    last = chief["history"][-1] if chief["history"] else {}
    log.info("fine-tuning done in %.1fs (%d restarts): final loss %.4f accuracy %.4f val_accuracy %.4f; model at %s",
             time.time() - t0, len(attempts) - 1, last.get("loss", float("nan")), last.get("accuracy", float("nan")),
             last.get("val_accuracy", float("nan")), storage.join(cfg.run_dir, run_folder.MODEL))
    return history


def _module(cfg: Config, manifest: dict):
    """The dataset's task type, where the hub module is, and its input size (None for text); fails when the module
    does not fit the task type."""
    kind = modality.of_manifest(manifest)
    module_url = hub_module.locate(cfg.hub_module, cfg.storage_root)
    hub_module.check_kind(module_url, kind.module_kind, kind.task_type)
    image_size = (hub_module.module_image_size(module_url, cfg.image_size or None)
                  if kind is modality.IMAGE else None)
    log.info("%s: hub module %s -> %s, input %s; %d train / %d eval records, %d labels", kind.task_type,
             cfg.hub_module, module_url, f"{image_size[0]}x{image_size[1]}" if image_size else "strings",
             manifest["counts"]["train"], manifest["counts"]["eval"], len(manifest["labels"]))
    return kind, module_url, image_size


def main(argv: list[str] | None = None) -> None:
    runtime.run_application(parse_args, run, argv, log)


if __name__ == "__main__":
    # Run as the importable module, so the objects shipped to the executors pickle by reference to tasks.finetune.
    from tasks import finetune

    finetune.main()
