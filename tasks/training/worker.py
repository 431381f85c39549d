"""One barrier task of fine-tuning: a ``MultiWorkerMirroredStrategy`` worker. It gets its share of the training
files and the hub module onto local disk (or streams them), joins the other workers through the barrier's
``allGather``, trains from the last committed checkpoint, saves the model (the chief's copy is published), and
reports its phases, progress and failure to the driver's relay.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

from tasks.core import run_folder, runtime
from tasks.io import commit, fencing, storage
from tasks.training import hub_module, logrelay, streamed_input
from tasks.training.checkpoints import TrainingStore
from tasks.training.preflight import assign_files, steps_per_epoch

if TYPE_CHECKING:
    from tasks import finetune

log = logging.getLogger("finetune")


@dataclasses.dataclass(frozen=True)
class WorkerSpec:
    """Everything a barrier task needs, shipped to it by the driver."""

    cfg: finetune.Config
    """The job's config (``tasks.finetune.Config``)."""
    manifest: dict
    module_url: str
    """Where the hub module is (``hub_module.locate``)."""
    image_size: tuple[int, int] | None
    """The module's input size; None for text."""
    task_type: str
    """From the dataset's manifest (``tasks.prep.modality``)."""
    relay: tuple[str, int]
    """The driver's log relay."""
    token: str
    attempt: int
    """Launch number of the barrier stage, 0 for the first."""
    webhdfs: dict
    """The driver's WebHDFS settings (``storage.webhdfs_settings``), for executors that lack them."""


def gpu_visibility(resources: dict) -> str:
    """``CUDA_VISIBLE_DEVICES`` for a task: the GPU addresses Spark assigned to it, or none (CPU only)."""
    gpu = resources.get("gpu")
    return ",".join(gpu.addresses) if gpu is not None else ""


def scratch_root() -> str:
    """Local disk for a worker's copies of data and checkpoints: the node's Spark/YARN local dirs, else tmp."""
    for var in ("SPARK_LOCAL_DIRS", "LOCAL_DIRS"):
        if os.environ.get(var):
            return os.environ[var].split(",")[0]
    return tempfile.gettempdir()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def train_worker(spec: WorkerSpec, rank: int, cpus: int, host: str, all_gather, relay: logrelay.RelayClient,
                 scratch: Path) -> dict:
    """One TensorFlow worker: imports TensorFlow, gets its inputs, joins the others, trains, saves.

    Args:
        spec: what the driver sent.
        rank: this worker's index; 0 is the chief.
        cpus: cores Spark gave the task.
        host: the address the other workers reach this one at.
        all_gather: ``BarrierTaskContext.allGather``.
        relay: the connection to the driver, for phases and progress.
        scratch: this task's local folder.

    Returns:
        The history (and timings) for the driver.
    """
    cfg = spec.cfg
    from tasks.training import model as M

    tf = M.tf
    relay.beat("tf_imported")
    tf.config.threading.set_intra_op_parallelism_threads(cpus)
    tf.config.threading.set_inter_op_parallelism_threads(max(2, cpus))

    prepared = _prepare(spec, rank, cpus, scratch)
    relay.beat("inputs_ready")
    strategy = _join_cluster(spec, rank, host, all_gather, relay)
    relay.beat("strategy_ready")
    tf.keras.utils.set_random_seed(cfg.seed)
    train_ds, eval_ds, eval_steps = _datasets(spec, rank, cpus, strategy, prepared["inputs"])
    with strategy.scope():
        model = M.build_model(prepared["module_dir"], M.ModelConfig(
            num_classes=len(spec.manifest["labels"]), image_size=spec.image_size, fine_tune=cfg.fine_tune,
            task_type=spec.task_type))
        trained = M.compile_for_training(model, cfg.learning_rate, cfg.module_lr_scale, cfg.fine_tune)
    relay.beat("model_built")

    store, steps = prepared["store"], prepared["steps"]
    logger, callbacks = _callbacks(spec, rank, relay, store, steps, prepared["history"])
    t_fit = time.time()
    trained.fit(train_ds, epochs=cfg.epochs, steps_per_epoch=steps, validation_data=eval_ds,
                validation_steps=eval_steps, callbacks=callbacks, verbose=0)
    train_seconds = time.time() - t_fit
    relay.beat("trained")
    # Where this attempt started (1-based epoch, steps done in it); None when the checkpoint was the last step.
    resumed = None
    if logger.resumed_from is not None:
        epoch0, step = logger.resumed_from
        resumed = {"epoch": epoch0 + 1, "step": step, "global_step": epoch0 * steps + step}
    _save_model(model, cfg.run_dir, rank, store, scratch)
    relay.beat("saved")
    inputs = prepared["inputs"]
    return {"rank": rank, "history": logger.history, "steps_per_epoch": steps, "train_seconds": train_seconds,
            "files": prepared["train_share"], "first_step_end": logger.first_step_end, "resumed_from": resumed,
            "input": {"mode": inputs.mode, "reason": inputs.reason}}


def _prepare(spec: WorkerSpec, rank: int, cpus: int, scratch: Path) -> dict:
    """This worker's input plan, the hub module on local disk, and the training state pulled from the run."""
    cfg, manifest, n = spec.cfg, spec.manifest, spec.cfg.num_workers
    t0 = time.time()
    train_share = assign_files(manifest["files"]["train"], n)[rank]
    eval_names = [f["name"] for f in manifest["files"]["eval"] if f["records"]]
    sizes = {f["name"]: f["bytes"] for split in ("train", "eval") for f in manifest["files"][split]}
    inputs = streamed_input.plan_inputs(cfg.examples, train_share, eval_names, sizes, scratch / "examples",
                                        cfg.input_mode, cfg.input_prefetch_max_mb, rank, cfg.input_cache_mb)
    module_dir = hub_module.local_module(spec.module_url, Path(scratch_root()) / "tfhub-modules")
    store = TrainingStore(cfg.run_dir, scratch, rank)
    progress = store.pull()
    history = store.history() if rank == 0 else []
    steps = steps_per_epoch(manifest["counts"]["train"], cfg.batch_size)
    log.info("worker %d/%d: %d train files %s (%d eval), %.1f MB from %s, input %s, ready in %.2fs; %d steps per "
             "epoch of global batch %d; %d cpus%s", rank, n, len(train_share), train_share, len(inputs.eval),
             inputs.mb, storage.scheme(cfg.examples), inputs.mode, time.time() - t0, steps, cfg.batch_size, cpus,
             f"; checkpoint at epoch {progress['epoch']} step {progress['step']}" if progress else "")
    return {"train_share": train_share, "inputs": inputs, "module_dir": module_dir, "store": store,
            "history": history, "steps": steps}


def _join_cluster(spec: WorkerSpec, rank: int, host: str, all_gather, relay: logrelay.RelayClient):
    """Exchanges ``host:port`` with the other workers, sets ``TF_CONFIG``; the strategy over all of them."""
    from tasks.training.model import tf

    address = f"{host}:{_free_port()}"
    # A Spark barrier sync polls every second; a worker alone needs no exchange to know the cluster is itself.
    cluster = all_gather(address) if spec.cfg.num_workers > 1 else [address]
    relay.beat("rendezvous")
    log.info("worker %d: cluster %s (attempt %d)", rank, cluster, spec.attempt)
    os.environ["TF_CONFIG"] = json.dumps({"cluster": {"worker": cluster}, "task": {"type": "worker", "index": rank}})
    return tf.distribute.MultiWorkerMirroredStrategy(
        communication_options=tf.distribute.experimental.CommunicationOptions(
            implementation=tf.distribute.experimental.CommunicationImplementation.RING,
            timeout_seconds=spec.cfg.stall_timeout_s))


def _datasets(spec: WorkerSpec, rank: int, cpus: int, strategy, inputs):
    """The distributed training and eval datasets of this worker, and the eval steps per epoch."""
    from tasks.training import model as M

    cfg, n = spec.cfg, spec.cfg.num_workers

    def train_fn(ctx):
        # One pipeline per worker over its own files; per-replica batch size from the input context.
        return streamed_input.make_dataset(inputs, inputs.train, spec.image_size,
                                           ctx.get_per_replica_batch_size(cfg.batch_size), training=True,
                                           seed=cfg.seed + rank, threads=cpus, task_type=spec.task_type)

    # Each worker validates its share of the eval records (every n-th, all workers reading them in one order), each
    # record once per epoch: its share's batches, then empty batches up to the steps of the largest share.
    largest_share = -(-spec.manifest["counts"]["eval"] // n)  # worker 0's
    eval_steps = max(1, -(-largest_share // (cfg.batch_size // n)))

    def eval_fn(ctx):
        ds = streamed_input.make_dataset(inputs, inputs.eval, spec.image_size,
                                         ctx.get_per_replica_batch_size(cfg.batch_size), training=False,
                                         threads=cpus, shard=(n, rank), task_type=spec.task_type)
        return M.padded_passes(ds, eval_steps)

    options = M.tf.distribute.InputOptions(experimental_fetch_to_device=False)
    train_ds = strategy.distribute_datasets_from_function(train_fn, options)
    eval_ds = strategy.distribute_datasets_from_function(eval_fn, options) if inputs.eval else None
    return train_ds, eval_ds, eval_steps


def _callbacks(spec: WorkerSpec, rank: int, relay: logrelay.RelayClient, store: TrainingStore, steps: int,
               history: list[dict]):
    """The progress logger and the Keras callbacks: checkpoints (pushed by the chief), validation, progress to the
    relay; on the chief also the history after each epoch and TensorBoard summaries."""
    from tasks.training import model as M

    cfg = spec.cfg
    first_step = []

    def on_batch(epoch: int, step: int) -> None:
        if not first_step:
            first_step.append(time.time())
            relay.beat("first_step", epoch=epoch, step=step)
        else:
            relay.beat(epoch=epoch, step=step, min_interval_s=2.0)

    logger = M.ProgressLogger(rank, cfg.batch_size, steps, cfg.epochs, history=history, on_batch=on_batch)

    def after_backup(epoch: int, step: int) -> None:
        if rank == 0:
            store.push({"epoch": epoch + 1, "step": step, "global_step": epoch * steps + step,
                        "attempt": spec.attempt, "time": time.time()})

    class EpochHistory(M.tf.keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            store.save_history(logger.history)

    callbacks = [M.BackupAndRestoreHook(str(store.checkpoints), save_freq=cfg.checkpoint_every_steps,
                                        after_backup=after_backup), M.ValidationExamples(), logger]
    if rank == 0:
        callbacks += [EpochHistory(), M.EpochSummaries(str(store.tensorboard))]
    return logger, callbacks


def _save_model(model, run_dir: str, rank: int, store: TrainingStore, scratch: Path) -> None:
    """Every worker saves (saving can run collectives); only the chief's copy is published."""
    model_url = storage.join(run_dir, run_folder.MODEL)
    target = commit.output_staging(model_url) if rank == 0 else Path(tempfile.mkdtemp(dir=scratch))
    try:
        model.save(str(target), include_optimizer=False)
        if rank == 0:
            fencing.check("the trained model", model_url)
            commit.publish_dir(target, model_url)
            store.push_tensorboard()
    finally:
        # After a publish the staging folder is gone (renamed or uploaded); after a failure it is removed here.
        shutil.rmtree(target, ignore_errors=True)


def barrier_task(spec: WorkerSpec, _rows=None):
    """The body of one barrier task: connect to the driver's relay, train, report a failure with its traceback."""
    from pyspark import BarrierTaskContext

    started = time.time()
    ctx = BarrierTaskContext.get()
    rank = ctx.partitionId()
    if spec.webhdfs:
        storage.use_webhdfs(spec.webhdfs)
    runtime.setup_logging()
    relay = logrelay.RelayClient(spec.relay, spec.token, rank, spec.attempt)
    root = logging.getLogger()
    # The driver relays the worker's records to its log; stderr (the executor's log) keeps the warnings.
    for handler in root.handlers:
        handler.setLevel(logging.WARNING)
    handler = logrelay.RelayHandler(relay)
    # This job's records at INFO, the libraries' (TensorFlow's per-trace chatter) from WARNING.
    handler.addFilter(lambda r: r.levelno >= logging.WARNING or r.name.startswith(("finetune", "tasks")))
    root.addHandler(handler)
    scratch = Path(tempfile.mkdtemp(prefix=f"finetune-w{rank}-a{spec.attempt}-", dir=scratch_root()))
    try:
        relay.beat("task_start", at=started)
        # The GPU choice must be made before TensorFlow is imported.
        os.environ["CUDA_VISIBLE_DEVICES"] = gpu_visibility(ctx.resources())
        log.info("worker %d: task attempt %d of stage attempt %d, %d cpus, GPUs [%s], scratch %s", rank,
                 ctx.attemptNumber(), spec.attempt, ctx.cpus(), os.environ["CUDA_VISIBLE_DEVICES"], scratch)
        host = ctx.getTaskInfos()[rank].address.rsplit(":", 1)[0]
        result = train_worker(spec, rank, max(1, ctx.cpus()), host, ctx.allGather, relay, scratch)
        if spec.cfg.num_workers > 1:  # no worker leaves while a peer may still need it (as for the rendezvous)
            ctx.barrier()
        relay.beat("done")
    except BaseException as e:
        try:
            relay.failed(e)
        except OSError as report_error:
            # The exception itself matters more than the report: Spark still returns it to the driver.
            print(f"worker {rank}: could not send the failure to the driver: {report_error}", file=sys.stderr)
        raise
    finally:
        root.removeHandler(handler)
        relay.close()
        shutil.rmtree(scratch, ignore_errors=True)
    return [json.dumps(result)]
