"""Spark application: distributed fine-tuning of a TF Hub module in a Spark barrier stage that survives a lost worker.

The driver checks everything a barrier stage needs before launching it (pre-flight), then launches ``num_workers``
barrier tasks. Each task imports TensorFlow, gets the hub module onto local disk and its own share of the
training files ready (read in place on ``file://``; on ``hdfs://`` streamed while it trains, or downloaded first:
``input_mode``, ``tasks.streamed_input``), exchanges ``host:port`` with the others through
``BarrierTaskContext.allGather``, sets ``TF_CONFIG`` and trains one ``MultiWorkerMirroredStrategy`` model. Steps
per epoch come from the manifest's global count, and each worker's input repeats, so every worker runs the same
number of steps whatever its share of the files.

Pre-flight (fails in well under a minute with what to change):

- the prepared dataset is complete (``_SUCCESS``, manifest, every listed training and eval file present) and has at
  least one non-empty training file per worker;
- the hub module resolves (see ``tasks.hub_module.locate``) and its input size is known;
- ``spark.dynamicAllocation.enabled`` is false and ``spark.python.worker.reuse`` is false;
- the application has ``num_workers`` task slots (executor cores / ``spark.task.cpus``, as Spark counts them for
  barrier stages), waiting up to ``slots_wait_s`` for executors to register.

Surviving a lost worker: the chief checkpoints with ``BackupAndRestore`` every ``checkpoint_every_steps`` steps,
locally, and commits each checkpoint to ``<run_dir>/checkpoints`` as a new version, its pointer written last
(``TrainingStore``); every worker fetches the last committed one before a restart. A failed barrier stage is not
retried by Spark ("Could not recover from a failed barrier ResultStage"), so the driver catches the failed job and
relaunches the stage, up to ``max_restarts`` times; Keras resumes from the checkpoint's epoch and step. Failures reach the driver in bounded time:

- a worker process that dies: Spark fails its task at once (the executor reads EOF) and kills the others;
- a worker that freezes in training: TensorFlow's coordination service misses its heartbeats and fails its peers'
  collectives within seconds (``UnavailableError``), and every collective times out after ``stall_timeout_s``;
- a worker that hangs anywhere else (before the rendezvous, say): the driver's watchdog (``tasks.logrelay``)
  cancels the stage when a worker sent nothing for ``stall_timeout_s``;
- a worker waiting at a Spark barrier: ``spark.barrier.sync.timeout`` (set to 900 s when this job creates the
  session) and the watchdog.

Logs: every worker sends its log records, progress and, on failure, its traceback to the driver (``tasks.logrelay``),
which logs them: on a cluster a worker's stderr is in its executor's log, not in the Airflow task log.

GPUs: a task given GPUs by Spark (``spark.task.resource.gpu.amount``) sees only those (``CUDA_VISIBLE_DEVICES``);
a task given none sees no GPU and trains on its CPU cores.

Output under ``<run_dir>/``: ``model/`` (Keras SavedModel, written by the chief), ``history.json`` (epochs,
restarts, timings), ``training_curves.png``, ``tensorboard/`` (event files), ``finetune_config.json``.

Usage (spark-submit with the ``tasks`` package on ``--py-files``)::

    spark-submit tasks/finetune.py --examples file:///.../examples/ds=2026-11-20 \\
        --run-dir file:///.../runs/ds=2026-11-20 --storage-root file:///... --hub-module hub/shapes_fv_32 \\
        --max-restarts 2 --checkpoint-every-steps 50
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import os
import re
import secrets
import shutil
import socket
import sys
import tempfile
import time
from pathlib import Path

from tasks import fencing, hub_module, logrelay, modality, run_folder, runtime, schema, storage, streamed_input

log = logging.getLogger("finetune")

BARRIER_SYNC_TIMEOUT_S = 900
"""``spark.barrier.sync.timeout`` this job sets when it creates the Spark session (Spark's default is a year)."""

SESSION_CONF = {
    # A barrier stage needs a fixed set of executors.
    "spark.dynamicAllocation.enabled": "false",
    # A process that ran a MultiWorkerMirroredStrategy cannot configure another one: never reuse Python workers.
    "spark.python.worker.reuse": "false",
}
"""Spark settings a barrier stage cannot do without: this job sets them on the session it creates, over any other
value (a cluster's ``spark-defaults.conf`` often turns dynamic allocation on). The one place they are written:
the Airflow operator passes none of them, so the job runs the same from Airflow, spark-submit, tests and benches."""

SESSION_DEFAULTS = {
    "spark.barrier.sync.timeout": str(BARRIER_SYNC_TIMEOUT_S),
    # Spark's own check that a barrier stage can get its slots retries for 40 x 15 s by default; 6 x 5 s here.
    "spark.scheduler.barrier.maxConcurrentTasksCheck.interval": "5s",
    "spark.scheduler.barrier.maxConcurrentTasksCheck.maxFailures": "6",
}
"""Spark settings this job applies to a session it creates, unless spark-submit already set them."""

NON_RETRIABLE = frozenset({"FinetuneError", "HubModuleError", "StorageError"})
"""Worker exceptions that a relaunch would meet again (bad data or configuration): no restart for those."""


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


class FinetuneError(RuntimeError):
    pass


# -- pre-flight: data --------------------------------------------------------------------------------------------


def load_manifest(examples: str) -> dict:
    if not storage.exists(storage.join(examples, schema.SUCCESS)):
        raise FinetuneError(f"prepared dataset {examples} has no {schema.SUCCESS}: run prepare_examples first")
    return json.loads(storage.read_text(storage.join(examples, schema.MANIFEST)))


def check_training_data(examples: str, manifest: dict) -> None:
    """Every non-empty training and eval file the manifest lists is in the dataset folder.

    Raises:
        FinetuneError: naming the missing files.
    """
    present = set(storage.list_names(examples))
    listed = [f["name"] for split in ("train", "eval") for f in manifest["files"][split] if f["records"]]
    missing = [name for name in listed if name not in present]
    if missing:
        raise FinetuneError(f"prepared dataset {examples}: {len(missing)} files listed in {schema.MANIFEST} are "
                            f"missing (first: {missing[:5]}); re-run prepare_examples")
    if not manifest["counts"]["train"]:
        raise FinetuneError(f"prepared dataset {examples} has no training records")
    unsized = [f["name"] for split in ("train", "eval") for f in manifest["files"][split] if "bytes" not in f]
    if unsized:  # the workers choose how to read their share by its size
        raise FinetuneError(f"prepared dataset {examples}: {schema.MANIFEST} gives no size (bytes) for {len(unsized)} "
                            f"files (first: {unsized[:5]}); re-run prepare_examples")


def assign_files(files: list[dict], num_workers: int) -> list[list[str]]:
    """Splits shard files between workers so each reads different files, balancing record counts.

    Largest files first, each to the worker with the fewest records so far; then, while it narrows the gap between
    the most and the least loaded workers, one file moves from the first to the second, or two files swap. Every
    move or swap lowers the sum of squared loads, so this ends; it reaches the even split whenever one move or swap
    at a time can, which the greedy pass alone misses (30, 30, 20, 20, 20 records over 2 workers: 70/50, then 60/60).

    Raises:
        FinetuneError: when some worker would get no records at all (fewer non-empty files than workers).
    """
    shares: list[list[dict]] = [[] for _ in range(num_workers)]
    loads = [0] * num_workers
    for f in sorted(files, key=lambda f: (-f["records"], f["name"])):
        i = loads.index(min(loads))
        shares[i].append(f)
        loads[i] += f["records"]
    while num_workers > 1:
        hi, lo = loads.index(max(loads)), loads.index(min(loads))
        gap = loads[hi] - loads[lo]
        # (records moved from hi to lo, the file leaving hi, the file leaving lo or None); 0 < moved < gap narrows it.
        options = [(f["records"], f, None) for f in shares[hi]]
        options += [(f["records"] - g["records"], f, g) for f in shares[hi] for g in shares[lo]]
        best = min((o for o in options if 0 < o[0] < gap), key=lambda o: (abs(gap - 2 * o[0]), o[1]["name"]),
                   default=None)
        if best is None:
            break
        moved, f, g = best
        shares[hi].remove(f)
        shares[lo].append(f)
        if g is not None:
            shares[lo].remove(g)
            shares[hi].append(g)
        loads[hi] -= moved
        loads[lo] += moved
    if min(loads) == 0:
        raise FinetuneError(
            f"{num_workers} workers but only {sum(1 for f in files if f['records'])} non-empty training files: "
            "re-run prepare_examples with --min-shards at least num_workers"
        )
    return [sorted(f["name"] for f in s) for s in shares]


SAMPLING_SKEW_WARNING = 1.1
"""Worst-to-best ratio of the workers' sampling rates above which the driver warns about the split."""


def sampling_rates(files: list[dict], shares: list[list[str]], global_batch: int) -> dict:
    """How often a training record is drawn per epoch, on average, on each worker.

    Every worker runs the same steps (``steps_per_epoch`` of the global count) with the same per-worker batch over
    its own files, repeating them; so a worker with fewer records draws each of them more often. Equal when the
    split is even; ``log_sampling`` reports it.

    Returns:
        ``records`` (per worker), ``draws_per_epoch`` (records each worker draws per epoch) and ``rates`` (draws per
        record per epoch, per worker).
    """
    count = {f["name"]: f["records"] for f in files}
    records = [sum(count[name] for name in share) for share in shares]
    draws = steps_per_epoch(sum(count.values()), global_batch) * (global_batch // len(shares))
    return {"records": records, "draws_per_epoch": draws, "rates": [round(draws / max(r, 1), 4) for r in records]}


def log_sampling(sampling: dict) -> None:
    """Logs the workers' sampling rates; a warning naming the rates when the split leaves them uneven."""
    rates, records = sampling["rates"], sampling["records"]
    per_worker = ", ".join(f"worker {i}: {n} records, {r:.2f}" for i, (n, r) in enumerate(zip(records, rates)))
    if max(rates) > SAMPLING_SKEW_WARNING * min(rates):
        hi, lo = rates.index(max(rates)), rates.index(min(rates))
        log.warning("the training files cannot be split evenly between the workers, and each worker draws %d "
                    "records per epoch from its own: a record is drawn this often per epoch (%s); one on worker %d "
                    "%.1f times as often as one on worker %d. Re-run prepare_examples with more --min-shards for an "
                    "even split", sampling["draws_per_epoch"], per_worker, hi, rates[hi] / rates[lo], lo)
    else:
        log.info("training records per worker and draws per record per epoch: %s", per_worker)


def steps_per_epoch(num_train: int, global_batch: int) -> int:
    return max(1, num_train // global_batch)


# -- pre-flight: Spark ------------------------------------------------------------------------------------------


def create_session(app_name: str):
    """A Spark session with ``SESSION_CONF``, and ``SESSION_DEFAULTS`` for the settings spark-submit left unset."""
    from pyspark import SparkConf
    from pyspark.sql import SparkSession

    conf = SparkConf()
    for key, value in SESSION_CONF.items():
        if conf.get(key, value) != value:
            log.info("%s=%s from spark-submit replaced by %s: the barrier stage needs it", key, conf.get(key), value)
        conf.set(key, value)
    for key, value in SESSION_DEFAULTS.items():
        conf.setIfMissing(key, value)
    return SparkSession.builder.appName(app_name).config(conf=conf).getOrCreate()


_TIME_UNITS = {"ms": 0.001, "s": 1, "m": 60, "min": 60, "h": 3600, "d": 86400}


def _seconds(value: str) -> float:
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-z]*)\s*", value.lower())
    if not m or m.group(2) not in ("", *_TIME_UNITS):
        raise FinetuneError(f"cannot read the duration {value!r}")
    return float(m.group(1)) * _TIME_UNITS.get(m.group(2) or "s", 1)


def check_spark_conf(conf) -> None:
    """Fails on Spark settings a resilient barrier stage cannot work with; logs the barrier sync bound.

    Args:
        conf: the running application's ``SparkConf``.

    Raises:
        FinetuneError: naming the setting and the value to use.
    """
    if conf.get("spark.dynamicAllocation.enabled", "false").strip().lower() == "true":
        raise FinetuneError("spark.dynamicAllocation.enabled=true: a barrier stage needs a fixed set of executors; "
                            "set spark.dynamicAllocation.enabled=false for this job")
    if conf.get("spark.python.worker.reuse", "true").strip().lower() != "false":
        raise FinetuneError("spark.python.worker.reuse is not false: a Python worker that ran one TensorFlow "
                            "worker cannot start another (as a restart would); set spark.python.worker.reuse=false")
    timeout = conf.get("spark.barrier.sync.timeout")
    if timeout is None:
        log.warning("spark.barrier.sync.timeout is not set (Spark's default is 365 days): a worker waiting at a "
                    "barrier is bounded only by the driver's watchdog; set it (e.g. %d)", BARRIER_SYNC_TIMEOUT_S)
    else:
        log.info("barrier syncs time out after %.0fs (spark.barrier.sync.timeout)", _seconds(timeout))


def task_slots(sc) -> int:
    """Tasks the application can run at once with the default resource profile: what Spark checks a barrier stage
    against (executor cores / ``spark.task.cpus``, and GPUs per task when asked for)."""
    jsc = sc._jsc.sc()
    return int(jsc.maxNumConcurrentTasks(jsc.resourceProfileManager().defaultResourceProfile()))


def _executors(sc) -> str:
    """The registered executors, for error messages: how many, and on which hosts."""
    infos = sc._jsc.sc().statusTracker().getExecutorInfos()
    hosts = sorted(str(i.host()) for i in infos)
    driver = sc.getConf().get("spark.driver.host")
    if not sc.master.startswith("local") and driver in hosts:
        hosts.remove(driver)  # outside local mode the driver's block manager is listed too
    return f"{len(hosts)} executors on {sorted(set(hosts))}"


def configured_slots(master: str, conf) -> int | None:
    """The most task slots the application's settings allow, when they say: ``local[N]``, ``local-cluster``,
    ``spark.executor.instances`` x ``spark.executor.cores`` (YARN, Kubernetes) or ``spark.cores.max`` (standalone),
    divided by ``spark.task.cpus``. None when executors may keep coming (standalone without ``spark.cores.max``).
    """
    task_cpus = int(conf.get("spark.task.cpus", "1"))
    if m := re.fullmatch(r"local(?:\[(\d+|\*)(?:,\s*\d+)?\])?", master):
        n = m.group(1) or "1"
        return (os.cpu_count() or 1 if n == "*" else int(n)) // task_cpus
    if m := re.fullmatch(r"local-cluster\[(\d+),\s*(\d+),\s*\d+\]", master):
        return int(m.group(1)) * int(m.group(2)) // task_cpus
    if conf.get("spark.executor.instances"):
        return int(conf.get("spark.executor.instances")) * int(conf.get("spark.executor.cores", "1")) // task_cpus
    if conf.get("spark.cores.max"):
        return int(conf.get("spark.cores.max")) // task_cpus
    return None


def wait_for_slots(sc, wanted: int, wait_s: float, poll_s: float = 0.5) -> int:
    """Waits until the application has ``wanted`` task slots, for executors still registering.

    When the settings cannot give that many (``configured_slots``), fails as soon as the executors they allow have
    registered; otherwise after ``wait_s``.

    Returns:
        The number of slots.

    Raises:
        FinetuneError: naming slots wanted and available and the settings that decide them.
    """
    conf = sc.getConf()
    capacity = configured_slots(sc.master, conf)
    short = capacity is not None and capacity < wanted
    deadline = time.monotonic() + wait_s
    next_note = time.monotonic() + 5
    while True:
        slots = task_slots(sc)
        if slots >= wanted:
            return slots
        if time.monotonic() >= deadline or (short and slots >= capacity):
            limit = f"the settings allow at most {capacity}" if short else f"waited {wait_s:.0f}s for executors"
            raise FinetuneError(
                f"num_workers={wanted} barrier tasks wanted but {slots} task slots available ({limit}; master "
                f"{sc.master}, {_executors(sc)}, spark.executor.cores={conf.get('spark.executor.cores', 'unset')}, "
                f"spark.task.cpus={conf.get('spark.task.cpus', '1')}, spark.executor.instances="
                f"{conf.get('spark.executor.instances', 'unset')}, spark.cores.max="
                f"{conf.get('spark.cores.max', 'unset')}): a barrier stage runs all its tasks at once; lower "
                "num_workers or give the application more executors or cores")
        if time.monotonic() >= next_note:
            log.info("waiting for executors: %d of %d task slots", slots, wanted)
            next_note = time.monotonic() + 5
        time.sleep(poll_s)


# -- the worker side --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class WorkerSpec:
    """Everything a barrier task needs, shipped to it by the driver."""

    cfg: Config
    manifest: dict
    module_url: str
    """Where the hub module is (``hub_module.locate``)."""
    image_size: tuple[int, int] | None
    """The module's input size; None for text."""
    task_type: str
    """From the dataset's manifest (``tasks.modality``)."""
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


CHECKPOINT_VERSION = re.compile(r"v(\d{6})")
"""A committed checkpoint's folder under ``<run_dir>/checkpoints/``: ``v000001``, ``v000002``..."""
CHECKPOINT_POINTER = re.compile(r"progress-(\d{6})\.json")
"""Its pointer (the commit), written after the folder is complete: ``progress-000001.json``..."""

PUSH_STEPS = ("copied", "uploaded", "committed", "pruned")
"""The steps of ``TrainingStore.push``, in order, each reported to its ``on_push_step`` hook once done."""


class TrainingStore:
    """A worker's view of the run's checkpoints and TensorBoard logs.

    Keras's ``BackupAndRestore`` writes and reads checkpoints in a local folder (``checkpoints``). After each save
    the chief publishes it under ``<run_dir>/checkpoints/`` as a new commit N (``push``):

    1. copied: the checkpoint is copied aside locally (Keras may write the next one meanwhile);
    2. uploaded: the copy is put in place as ``vNNNNNN/`` (uploaded under a hidden name, then renamed in);
    3. committed: the pointer ``progress-NNNNNN.json`` (epoch, step, global step, attempt, version) is written
       under a name that did not exist, in one rename: the checkpoint now counts;
    4. pruned: older commits, and whatever a chief that died in an earlier push left, are deleted.

    The committed checkpoint is the one of the highest-numbered pointer (``read_progress``). A chief that dies at
    any point leaves the previous commit complete and in place until the next one is committed, so ``pull``, which
    every worker of a relaunched stage runs before training, brings down the last committed checkpoint, never a
    partial one. One pointer per commit, not one ``progress.json`` rewritten: HDFS cannot rename onto an existing
    file, so rewriting one would mean deleting it first, and a chief dying in between would leave no pointer.

    On ``file://`` and on ``hdfs://`` alike; TensorBoard logs are the storage folder itself on ``file://`` (written
    by the chief only), local and copied up after each checkpoint on ``hdfs://``.

    Args:
        run_dir: the run's folder (a storage URL).
        scratch: this task's local folder.
        rank: this worker's rank; 0 is the chief.
        on_push_step: called with each step's name (``PUSH_STEPS``) once ``push`` has done it; a test kills the
            chief there.
    """

    def __init__(self, run_dir: str, scratch: Path, rank: int, on_push_step=None) -> None:
        self.checkpoints_url = storage.join(run_dir, run_folder.CHECKPOINTS)
        self.tensorboard_url = storage.join(run_dir, run_folder.TENSORBOARD)
        self.remote = storage.scheme(run_dir) == "hdfs"
        self.chief = rank == 0
        self.on_push_step = on_push_step
        self.checkpoints = scratch / run_folder.CHECKPOINTS
        if self.remote:
            self.tensorboard = scratch / run_folder.TENSORBOARD
        else:
            self.tensorboard = storage.local_path(self.tensorboard_url)  # written by the chief only
        self.checkpoints.mkdir(parents=True, exist_ok=True)

    def pull(self) -> dict | None:
        """Brings the last committed checkpoint (and the chief's TensorBoard logs) down into the local folder
        Keras restores from; returns its progress record, or None when there is none yet."""
        progress = read_progress(self.checkpoints_url)
        if progress is not None:
            url = storage.join(self.checkpoints_url, f"v{progress['version']:06d}")
            if not storage.exists(url):
                raise FinetuneError(f"checkpoint pointer progress-{progress['version']:06d}.json in "
                                    f"{self.checkpoints_url} names {url}, which is missing")
            local = self.checkpoints / "chief"
            shutil.rmtree(local, ignore_errors=True)
            if self.remote:
                storage.fetch(url, self.checkpoints).rename(local)
            else:
                shutil.copytree(storage.fetch(url, self.checkpoints), local)
        if self.remote and self.chief and storage.exists(self.tensorboard_url):
            storage.fetch(self.tensorboard_url, self.tensorboard.parent)
        return progress

    def history(self) -> list[dict]:
        url = storage.join(self.checkpoints_url, run_folder.HISTORY)
        return json.loads(storage.read_text(url)) if storage.exists(url) else []

    def save_history(self, rows: list[dict]) -> None:
        storage.write_text_atomic(storage.join(self.checkpoints_url, run_folder.HISTORY), json.dumps(rows))

    def _done(self, step: str) -> None:
        if self.on_push_step is not None:
            self.on_push_step(step)

    def push(self, progress: dict) -> dict:
        """After a checkpoint (chief only): commits it as the next version (see the class), then copies the
        TensorBoard logs up; returns the committed progress record (``progress`` with its ``version``)."""
        t0 = time.time()
        local = self.checkpoints / "chief"
        if not (local / "checkpoint").exists():
            raise FinetuneError(f"worker 0: no checkpoint in {local} to push (Keras wrote none)")
        names = storage.list_names(self.checkpoints_url)
        version = 1 + max((int(m.group(1)) for n in names if (m := CHECKPOINT_POINTER.fullmatch(n))), default=0)
        url = storage.join(self.checkpoints_url, f"v{version:06d}")
        # A chief of an older Airflow attempt that is still alive stops here, before it uploads anything.
        fencing.check(f"checkpoint v{version:06d}", url)
        staging = storage.output_staging(url)
        shutil.copytree(local, staging, dirs_exist_ok=True)
        self._done("copied")
        storage.publish_dir(staging, url)  # replaces what a chief that died before committing left there
        self._done("uploaded")
        record = {**progress, "version": version, **fencing.stamp()}
        storage.write_text_atomic(storage.join(self.checkpoints_url, f"progress-{version:06d}.json"),
                                  json.dumps(record))
        self._done("committed")
        for name in names:
            m = CHECKPOINT_POINTER.fullmatch(name) or CHECKPOINT_VERSION.fullmatch(name)
            # Older commits, then leftovers of pushes that died: hidden staging, aside and temporary copies.
            if (m and int(m.group(1)) < version) or name.startswith((".v", ".progress-")):
                storage.remove(storage.join(self.checkpoints_url, name))
        self._done("pruned")
        self.push_tensorboard()
        log.info("worker 0 checkpoint at epoch %d step %d (global step %d) saved to %s in %.2fs",
                 progress["epoch"], progress["step"], progress["global_step"], url, time.time() - t0)
        return record

    def push_tensorboard(self) -> None:
        if self.remote and self.tensorboard.exists():
            copy = Path(tempfile.mkdtemp(prefix="push-", dir=self.tensorboard.parent))
            shutil.copytree(self.tensorboard, copy, dirs_exist_ok=True)
            storage.publish_dir(copy, self.tensorboard_url)


def read_progress(checkpoints_url: str) -> dict | None:
    """The progress record of the last committed checkpoint (1-based epoch, step, global step, version): the
    highest-numbered pointer; None without one."""
    names = storage.list_names(checkpoints_url)
    versions = [int(m.group(1)) for n in names if (m := CHECKPOINT_POINTER.fullmatch(n))]
    if not versions:
        return None
    url = storage.join(checkpoints_url, f"progress-{max(versions):06d}.json")
    try:
        return json.loads(storage.read_text(url))
    except ValueError as e:
        raise FinetuneError(f"checkpoint pointer {url} is unreadable ({e}); delete {checkpoints_url} to restart "
                            "the run from the start") from None


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
    cfg, manifest, n = spec.cfg, spec.manifest, spec.cfg.num_workers
    from tasks import model as M

    tf = M.tf
    relay.beat("tf_imported")
    tf.config.threading.set_intra_op_parallelism_threads(cpus)
    tf.config.threading.set_inter_op_parallelism_threads(max(2, cpus))

    t0 = time.time()
    train_share = assign_files(manifest["files"]["train"], n)[rank]
    eval_names = [f["name"] for f in manifest["files"]["eval"] if f["records"]]
    sizes = {f["name"]: f["bytes"] for split in ("train", "eval") for f in manifest["files"][split]}
    inputs = streamed_input.plan_inputs(cfg.examples, train_share, eval_names, sizes, scratch / "examples",
                                        cfg.input_mode, cfg.input_prefetch_max_mb, rank, cfg.input_cache_mb)
    train_files, eval_files = inputs.train, inputs.eval
    module_dir = hub_module.local_module(spec.module_url, Path(scratch_root()) / "tfhub-modules")
    store = TrainingStore(cfg.run_dir, scratch, rank)
    progress = store.pull()
    history = store.history() if rank == 0 else []
    steps = steps_per_epoch(manifest["counts"]["train"], cfg.batch_size)
    log.info("worker %d/%d: %d train files %s (%d eval), %.1f MB from %s, input %s, ready in %.2fs; %d steps per "
             "epoch of global batch %d; %d cpus%s", rank, n, len(train_share), train_share, len(eval_files),
             inputs.mb, storage.scheme(cfg.examples), inputs.mode, time.time() - t0, steps, cfg.batch_size, cpus,
             f"; checkpoint at epoch {progress['epoch']} step {progress['step']}" if progress else "")
    relay.beat("inputs_ready")

    cluster = all_gather(f"{host}:{_free_port()}")
    relay.beat("rendezvous")
    log.info("worker %d: cluster %s (attempt %d)", rank, cluster, spec.attempt)
    os.environ["TF_CONFIG"] = json.dumps({"cluster": {"worker": cluster}, "task": {"type": "worker", "index": rank}})
    strategy = tf.distribute.MultiWorkerMirroredStrategy(
        communication_options=tf.distribute.experimental.CommunicationOptions(
            implementation=tf.distribute.experimental.CommunicationImplementation.RING,
            timeout_seconds=cfg.stall_timeout_s))
    relay.beat("strategy_ready")
    tf.keras.utils.set_random_seed(cfg.seed)

    def train_fn(ctx):
        # One pipeline per worker over its own files; per-replica batch size from the input context.
        return streamed_input.make_dataset(inputs, train_files, spec.image_size,
                                           ctx.get_per_replica_batch_size(cfg.batch_size), training=True,
                                           seed=cfg.seed + rank, threads=cpus, task_type=spec.task_type)

    # Each worker validates its share of the eval records (every n-th, all workers reading them in one order), each
    # record once per epoch: its share's batches, then empty batches up to the steps of the largest share.
    largest_share = -(-manifest["counts"]["eval"] // n)  # worker 0's
    eval_steps = max(1, -(-largest_share // (cfg.batch_size // n)))

    def eval_fn(ctx):
        ds = streamed_input.make_dataset(inputs, eval_files, spec.image_size,
                                         ctx.get_per_replica_batch_size(cfg.batch_size), training=False,
                                         threads=cpus, shard=(n, rank), task_type=spec.task_type)
        return M.padded_passes(ds, eval_steps)

    options = tf.distribute.InputOptions(experimental_fetch_to_device=False)
    train_ds = strategy.distribute_datasets_from_function(train_fn, options)
    eval_ds = strategy.distribute_datasets_from_function(eval_fn, options) if eval_files else None

    with strategy.scope():
        model = M.build_model(module_dir, M.ModelConfig(num_classes=len(manifest["labels"]),
                                                         image_size=spec.image_size, fine_tune=cfg.fine_tune,
                                                         task_type=spec.task_type))
        trained = M.compile_for_training(model, cfg.learning_rate, cfg.module_lr_scale, cfg.fine_tune)
    relay.beat("model_built")

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

    class EpochHistory(tf.keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            store.save_history(logger.history)

    callbacks = [M.BackupAndRestoreHook(str(store.checkpoints), save_freq=cfg.checkpoint_every_steps,
                                        after_backup=after_backup), M.ValidationExamples(), logger]
    if rank == 0:
        callbacks += [EpochHistory(), M.EpochSummaries(str(store.tensorboard))]
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

    # Every worker saves (saving can run collectives); only the chief's copy is kept.
    model_url = storage.join(cfg.run_dir, run_folder.MODEL)
    target = storage.output_staging(model_url) if rank == 0 else Path(tempfile.mkdtemp(dir=scratch))
    try:
        model.save(str(target), include_optimizer=False)
        if rank == 0:
            fencing.check("the trained model", model_url)
            storage.publish_dir(target, model_url)
            store.push_tensorboard()
    finally:
        # After a publish the staging folder is gone (renamed or uploaded); after a failure it is removed here.
        shutil.rmtree(target, ignore_errors=True)
    relay.beat("saved")
    return {"rank": rank, "history": logger.history, "steps_per_epoch": steps, "train_seconds": train_seconds,
            "files": train_share, "first_step_end": logger.first_step_end, "resumed_from": resumed,
            "input": {"mode": inputs.mode, "reason": inputs.reason}}


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


# -- the driver side --------------------------------------------------------------------------------------------


def spark_failure(e: Exception, max_lines: int = 40) -> str:
    """The readable part of a failed Spark job's error: messages and Python tracebacks, no JVM stack frames."""
    java = getattr(e, "java_exception", None)
    text = str(java.toString()) if java is not None else str(e)
    lines = [ln for ln in text.splitlines() if ln.strip() and not ln.startswith(("\tat ", "\t... "))]
    return "\n".join(lines[:max_lines])


class BarrierStageFailed(FinetuneError):
    pass


def run_barrier_stage(sc, cfg: Config, spec_for, relay: logrelay.RelayServer, group: str) -> list[dict]:
    """Launches the barrier stage, relaunching it after a failure up to ``cfg.max_restarts`` times.

    Args:
        sc: the SparkContext.
        cfg: the job's config.
        spec_for: ``attempt -> WorkerSpec``.
        relay: the driver's relay (worker states, stall detection).
        group: the Spark job group the watchdog cancels.

    Returns:
        The workers' results of the attempt that succeeded, a record of each attempt, and the succeeded
        attempt's worker states (for their phase timings).

    Raises:
        FinetuneError: when the last allowed attempt failed, or a worker failed for a reason a relaunch would meet
            again; with the Spark failure and the workers' last known state.
    """
    from py4j.protocol import Py4JJavaError

    ckpt_url = storage.join(cfg.run_dir, run_folder.CHECKPOINTS)
    attempts: list[dict] = []
    for attempt in range(cfg.max_restarts + 1):
        if attempt:
            wait_for_slots(sc, cfg.num_workers, cfg.slots_wait_s)
        spec = spec_for(attempt)
        record = {"attempt": attempt, "started": time.time()}
        attempts.append(record)
        relay.begin_attempt(attempt)
        sc.setJobGroup(group, f"finetune barrier stage, attempt {attempt}", interruptOnCancel=True)
        log.info("launching barrier stage of %d workers (attempt %d of at most %d)", cfg.num_workers, attempt + 1,
                 cfg.max_restarts + 1)
        try:
            rows = (sc.parallelize(range(cfg.num_workers), cfg.num_workers)
                    .barrier()
                    .mapPartitions(functools.partial(barrier_task, spec))
                    .collect())
            relay.end_attempt()
            record.update(ended=time.time(), outcome="succeeded")
            return [json.loads(r) for r in rows], attempts, relay.workers(attempt)
        except Py4JJavaError as e:
            relay.end_attempt()
            workers = relay.workers(attempt)
            reason = relay.stalled or spark_failure(e)
            record.update(ended=time.time(), outcome="failed", reason=reason.splitlines()[0])
            states = "\n".join(f"  worker {w.rank} on {w.host} pid {w.pid}: phase {w.phase}, epoch {w.epoch + 1} "
                               f"step {w.step}, last heard {time.time() - w.last_seen:.0f}s ago"
                               + (f", raised {w.failure['error_type']}" if w.failure else "") for w in workers)
            log.error("barrier stage attempt %d failed after %.0fs: %s\nlast known state of the workers:\n%s",
                      attempt + 1, record["ended"] - record["started"], reason, states or "  (none started)")
            fatal = [w for w in workers if w.failure and w.failure["error_type"] in NON_RETRIABLE]
            if fatal:
                w = fatal[0]
                raise BarrierStageFailed(f"worker {w.rank} failed with {w.failure['error_type']}, which a relaunch "
                                         f"would meet again:\n{w.failure['traceback']}") from None
            if attempt == cfg.max_restarts:
                raise BarrierStageFailed(f"the barrier stage failed {attempt + 1} times (max_restarts="
                                         f"{cfg.max_restarts}); last failure: {reason}") from None
            progress = read_progress(ckpt_url)
            if progress:
                record["next_resumes_from"] = {k: progress[k] for k in ("epoch", "step", "global_step", "version")}
                log.warning("restart %d of %d: relaunching the barrier stage; it resumes from the checkpoint at "
                            "epoch %d step %d (global step %d), committed as version %d", attempt + 1,
                            cfg.max_restarts, progress["epoch"], progress["step"], progress["global_step"],
                            progress["version"])
            else:
                log.warning("restart %d of %d: relaunching the barrier stage from the start (no checkpoint yet)",
                            attempt + 1, cfg.max_restarts)
    raise AssertionError("unreachable")


def _write_png(plot, url: str) -> None:
    with tempfile.TemporaryDirectory(prefix="plot-") as tmp:
        path = Path(tmp) / "plot.png"
        plot(path)
        storage.write_bytes_atomic(url, path.read_bytes())


def run(cfg: Config, spark=None) -> dict:
    """Pre-flight, the barrier stage (with restarts), then the history and plots; returns the history."""
    import psutil

    timeline = {"driver_process_start": psutil.Process().create_time(), "driver_run": time.time()}
    t0 = time.time()
    manifest = load_manifest(cfg.examples)
    check_training_data(cfg.examples, manifest)
    shares = assign_files(manifest["files"]["train"], cfg.num_workers)  # fail before launching if it cannot work
    sampling = sampling_rates(manifest["files"]["train"], shares, cfg.batch_size)
    log_sampling(sampling)
    kind = modality.of_manifest(manifest)
    module_url = hub_module.locate(cfg.hub_module, cfg.storage_root)
    hub_module.check_kind(module_url, kind.module_kind, kind.task_type)
    image_size = (hub_module.module_image_size(module_url, cfg.image_size or None)
                  if kind is modality.IMAGE else None)
    log.info("%s: hub module %s -> %s, input %s; %d train / %d eval records, %d labels", kind.task_type,
             cfg.hub_module, module_url, f"{image_size[0]}x{image_size[1]}" if image_size else "strings",
             manifest["counts"]["train"], manifest["counts"]["eval"], len(manifest["labels"]))

    spark = spark or create_session(f"finetune {manifest['partition']}")
    sc = spark.sparkContext
    timeline["session_ready"] = time.time()
    check_spark_conf(sc.getConf())
    slots = wait_for_slots(sc, cfg.num_workers, cfg.slots_wait_s)
    log.info("pre-flight passed in %.1fs: %d task slots for %d workers", time.time() - t0, slots, cfg.num_workers)

    # A new run starts from scratch; only restarts within it resume.
    storage.makedirs(cfg.run_dir)
    storage.clean_stale(storage.join(cfg.run_dir, run_folder.MODEL))
    for name in (run_folder.CHECKPOINTS, run_folder.TENSORBOARD):
        storage.remove(storage.join(cfg.run_dir, name))
    storage.write_text_atomic(storage.join(cfg.run_dir, run_folder.FINETUNE_CONFIG), runtime.config_json(cfg))

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
        results, attempts, workers = run_barrier_stage(sc, cfg, spec_for, relay, group)
    timeline["workers"] = {w.rank: w.phases for w in workers}

    chief = next(r for r in results if r["rank"] == 0)
    model_url = storage.join(cfg.run_dir, run_folder.MODEL)
    if not storage.exists(storage.join(model_url, "saved_model.pb")):
        raise FinetuneError(f"training finished but the chief wrote no model at {model_url}")
    storage.remove(storage.join(cfg.run_dir, run_folder.CHECKPOINTS))
    history = {"history": chief["history"], "steps_per_epoch": chief["steps_per_epoch"],
               "num_workers": cfg.num_workers, "train_seconds": chief["train_seconds"],
               "task_type": kind.task_type, "image_size": list(image_size) if image_size else None,
               "labels": manifest["labels"], "hub_module": cfg.hub_module,
               "hub_module_url": module_url, "worker_files": {r["rank"]: r["files"] for r in results},
               "sampling": sampling, "restarts": len(attempts) - 1, "attempts": attempts,
               "resumed_from": chief["resumed_from"], "input": {r["rank"]: r["input"] for r in results},
               "timeline": timeline}
    storage.write_text_atomic(storage.join(cfg.run_dir, run_folder.HISTORY), json.dumps(history, indent=2))
    if chief["history"]:
        from tasks import plots

        title = f"{manifest['partition']}: {cfg.num_workers} workers, fine_tune={cfg.fine_tune}"
        if len(attempts) > 1:
            title += f", {len(attempts) - 1} restarts"
        _write_png(lambda p: plots.training_curves(chief["history"], p, title=title),
                   storage.join(cfg.run_dir, run_folder.TRAINING_CURVES))
    last = chief["history"][-1] if chief["history"] else {}
    log.info("fine-tuning done in %.1fs (%d restarts): final loss %.4f accuracy %.4f val_accuracy %.4f; model at %s",
             time.time() - t0, len(attempts) - 1, last.get("loss", float("nan")), last.get("accuracy", float("nan")),
             last.get("val_accuracy", float("nan")), model_url)
    return history


def main(argv: list[str] | None = None) -> None:
    runtime.run_application(parse_args, run, argv, log)


if __name__ == "__main__":
    # Run as the importable module, so the objects shipped to the executors pickle by reference to tasks.finetune.
    from tasks import finetune

    finetune.main()
