"""Spark application: distributed fine-tuning of a TF Hub module in one Spark barrier stage.

The driver launches ``num_workers`` barrier tasks. Each task picks a free port, the tasks exchange
``host:port`` with ``BarrierTaskContext.allGather``, set ``TF_CONFIG`` and train one
``MultiWorkerMirroredStrategy`` model on its own share of the training files. Steps per epoch come from the
manifest's global count, so every worker runs the same number of steps whatever its share. Only the chief
(worker 0) writes the model and the history; the others save to scratch, as MultiWorkerMirroredStrategy
requires every worker to take part in saving.

Output under ``<run_dir>/``: ``model/`` (Keras SavedModel), ``history.json``, ``finetune_config.json``.

Usage (spark-submit with the ``tasks`` package on ``--py-files``)::

    spark-submit tasks/finetune.py --examples file:///.../examples/ds=2026-11-20 \
        --run-dir file:///.../runs/ds=2026-11-20 --storage-root file:///... --hub-module hub/shapes_fv_32
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import shutil
import socket
import sys
import tempfile
import time

from tasks import hub_module, runtime, schema, storage

log = logging.getLogger("finetune")


@dataclasses.dataclass
class Config:
    examples: str
    """Storage URL of the prepared dataset (the output of prepare_examples)."""
    run_dir: str
    """Storage URL of this run's folder; the model and history are written there."""
    storage_root: str
    """Storage root; relative hub_module paths and the TF Hub cache live under it."""
    hub_module: str
    """TF Hub module: URL, Kaggle handle, absolute path or path relative to the storage root."""
    num_workers: int = 2
    """Barrier tasks, one TensorFlow worker each."""
    epochs: int = 15
    """Passes over the training split (by global example count)."""
    batch_size: int = 32
    """Global batch size, split evenly over the workers."""
    learning_rate: float = 2e-3
    """Adam learning rate."""
    fine_tune: bool = True
    """Also train the hub module's weights (otherwise only the head)."""
    image_size: int = 0
    """Override of the module's input size; 0 reads it from the module."""
    seed: int = 42
    """Seed of weights initialisation and shuffling."""


def _bool(s: str) -> bool:
    if s.lower() in ("1", "true", "yes"):
        return True
    if s.lower() in ("0", "false", "no"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {s!r}")


def parse_args(argv: list[str]) -> Config:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for f in dataclasses.fields(Config):
        flag = "--" + f.name.replace("_", "-")
        if f.default is dataclasses.MISSING:
            p.add_argument(flag, required=True)
        elif f.type in ("bool", bool):
            p.add_argument(flag, type=_bool, default=f.default)
        else:
            p.add_argument(flag, type=type(f.default), default=f.default)
    cfg = Config(**{k.replace("-", "_"): v for k, v in vars(p.parse_args(argv)).items()})
    for name in ("num_workers", "epochs", "batch_size"):
        if getattr(cfg, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1, got {getattr(cfg, name)}")
    if cfg.batch_size % cfg.num_workers:
        p.error(f"--batch-size {cfg.batch_size} must be a multiple of --num-workers {cfg.num_workers}")
    if not 0 < cfg.learning_rate < 1:
        p.error(f"--learning-rate must be in (0, 1), got {cfg.learning_rate}")
    return cfg


class FinetuneError(RuntimeError):
    pass


def load_manifest(examples: str) -> dict:
    path = storage.local_path(examples)
    if not (path / schema.SUCCESS).exists():
        raise FinetuneError(f"prepared dataset {examples} has no {schema.SUCCESS}: run prepare_examples first")
    return json.loads((path / schema.MANIFEST).read_text())


def assign_files(files: list[dict], num_workers: int) -> list[list[str]]:
    """Splits shard files between workers so each reads different files, balancing record counts.

    Raises:
        FinetuneError: when some worker would get no records at all (fewer non-empty files than workers).
    """
    shares: list[list[str]] = [[] for _ in range(num_workers)]
    loads = [0] * num_workers
    for f in sorted(files, key=lambda f: (-f["records"], f["name"])):
        i = loads.index(min(loads))
        shares[i].append(f["name"])
        loads[i] += f["records"]
    if min(loads) == 0:
        raise FinetuneError(
            f"{num_workers} workers but only {sum(1 for f in files if f['records'])} non-empty training files: "
            "re-run prepare_examples with --min-shards at least num_workers"
        )
    return [sorted(s) for s in shares]


def steps_per_epoch(num_train: int, global_batch: int) -> int:
    return max(1, num_train // global_batch)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def train_worker(cfg: Config, manifest: dict, module_dir: str, image_size: tuple[int, int], rank: int,
                 cluster: list[str], cpus: int) -> dict:
    """One TensorFlow worker: sets TF_CONFIG, builds the model under MultiWorkerMirroredStrategy and trains.

    Returns the history (and, for the chief, where the model went) for the driver.
    """
    os.environ["TF_CONFIG"] = json.dumps({"cluster": {"worker": cluster}, "task": {"type": "worker", "index": rank}})
    from tasks import model as M

    tf = M.tf
    tf.config.threading.set_intra_op_parallelism_threads(cpus)
    tf.config.threading.set_inter_op_parallelism_threads(max(2, cpus))
    strategy = tf.distribute.MultiWorkerMirroredStrategy(
        communication_options=tf.distribute.experimental.CommunicationOptions(
            implementation=tf.distribute.experimental.CommunicationImplementation.RING))
    n = len(cluster)
    tf.keras.utils.set_random_seed(cfg.seed)
    examples_dir = storage.local_path(cfg.examples)
    train_share = assign_files(manifest["files"]["train"], n)[rank]
    eval_files = [f["name"] for f in manifest["files"]["eval"] if f["records"]]
    per_worker = cfg.batch_size // n
    steps = steps_per_epoch(manifest["counts"]["train"], cfg.batch_size)
    log.info("worker %d/%d: %d train files %s, %d steps per epoch of global batch %d", rank, n, len(train_share),
             train_share, steps, cfg.batch_size)

    def train_fn(ctx):
        # One pipeline per worker over its own files; per-replica batch size from the input context.
        return M.make_dataset([str(examples_dir / f) for f in train_share], image_size,
                              ctx.get_per_replica_batch_size(cfg.batch_size), training=True, seed=cfg.seed + rank)

    def eval_fn(ctx):
        files = [str(examples_dir / f) for f in eval_files]
        ds = M.make_dataset(files, image_size, ctx.get_per_replica_batch_size(cfg.batch_size), training=False)
        return ds.repeat()

    options = tf.distribute.InputOptions(experimental_fetch_to_device=False)
    train_ds = strategy.distribute_datasets_from_function(train_fn, options)
    eval_steps = max(1, -(-manifest["counts"]["eval"] // cfg.batch_size)) if eval_files else None
    eval_ds = strategy.distribute_datasets_from_function(eval_fn, options) if eval_files else None

    with strategy.scope():
        model = M.build_model(module_dir, M.ModelConfig(num_classes=len(manifest["labels"]), image_size=image_size,
                                                         fine_tune=cfg.fine_tune))
        model.compile(optimizer=tf.keras.optimizers.Adam(cfg.learning_rate),
                      loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    progress = M.ProgressLogger(rank, cfg.batch_size, steps, cfg.epochs)
    t0 = time.time()
    model.fit(train_ds, epochs=cfg.epochs, steps_per_epoch=steps, validation_data=eval_ds,
              validation_steps=eval_steps, callbacks=[progress], verbose=0)
    train_seconds = time.time() - t0

    # Every worker saves (saving can run collectives); only the chief's copy is kept.
    chief = rank == 0
    if chief:
        model_url = storage.join(cfg.run_dir, "model")
        target = storage.staging_dir(model_url)
    else:
        target = tempfile.mkdtemp(prefix=f"finetune-worker{rank}-")
    try:
        model.save(str(target), include_optimizer=False)
        if chief:
            storage.commit_dir(target, model_url)
    finally:
        if not chief or os.path.exists(target):
            shutil.rmtree(target, ignore_errors=True)
    return {"rank": rank, "history": progress.history, "steps_per_epoch": steps, "train_seconds": train_seconds,
            "files": train_share}


def _barrier_partition(cfg: Config, manifest: dict, module_dir: str, image_size: tuple[int, int]):
    """The barrier task body: rendezvous, then ``train_worker``."""
    from pyspark import BarrierTaskContext

    runtime.setup_logging()
    ctx = BarrierTaskContext.get()
    rank = ctx.partitionId()
    host = ctx.getTaskInfos()[rank].address.rsplit(":", 1)[0]
    cluster = ctx.allGather(f"{host}:{_free_port()}")
    log.info("worker %d: cluster %s (attempt %d)", rank, cluster, ctx.attemptNumber())
    result = train_worker(cfg, manifest, module_dir, image_size, rank, cluster, max(1, ctx.cpus()))
    ctx.barrier()
    yield json.dumps(result)


def run(cfg: Config, spark=None) -> dict:
    """Runs the barrier stage and returns the chief's result (history, steps)."""
    from pyspark.sql import SparkSession

    t0 = time.time()
    manifest = load_manifest(cfg.examples)
    hub_module.configure_cache(cfg.storage_root)
    handle = hub_module.handle_for(cfg.hub_module, cfg.storage_root)
    module_dir = hub_module.resolve(handle)
    image_size = hub_module.image_size(module_dir, cfg.image_size or None)
    assign_files(manifest["files"]["train"], cfg.num_workers)  # fail before launching if it cannot work
    log.info("hub module %s -> %s, input %dx%d; %d train / %d eval records, %d labels", cfg.hub_module, module_dir,
             image_size[0], image_size[1], manifest["counts"]["train"], manifest["counts"]["eval"],
             len(manifest["labels"]))

    spark = spark or SparkSession.builder.appName(f"finetune {manifest['partition']}").getOrCreate()
    sc = spark.sparkContext
    slots = sc.defaultParallelism
    if cfg.num_workers > slots:
        raise FinetuneError(f"num_workers={cfg.num_workers} barrier tasks wanted but the application has "
                            f"{slots} task slots (spark.default.parallelism / executor cores)")
    storage.local_path(cfg.run_dir).mkdir(parents=True, exist_ok=True)
    storage.write_text_atomic(storage.join(cfg.run_dir, "finetune_config.json"), runtime.config_json(cfg))

    log.info("launching barrier stage of %d workers", cfg.num_workers)
    results = [json.loads(r) for r in
               sc.parallelize(range(cfg.num_workers), cfg.num_workers)
               .barrier()
               .mapPartitions(lambda _: _barrier_partition(cfg, manifest, module_dir, image_size))
               .collect()]
    chief = next(r for r in results if r["rank"] == 0)
    model_dir = storage.local_path(storage.join(cfg.run_dir, "model"))
    if not (model_dir / "saved_model.pb").exists():
        raise FinetuneError(f"training finished but the chief wrote no model at {model_dir}")
    history = {"history": chief["history"], "steps_per_epoch": chief["steps_per_epoch"],
               "num_workers": cfg.num_workers, "train_seconds": chief["train_seconds"],
               "image_size": list(image_size), "labels": manifest["labels"], "hub_module": cfg.hub_module,
               "worker_files": {r["rank"]: r["files"] for r in results}}
    storage.write_text_atomic(storage.join(cfg.run_dir, "history.json"), json.dumps(history, indent=2))
    if chief["history"]:
        from tasks import plots

        plots.training_curves(chief["history"], storage.local_path(storage.join(cfg.run_dir, "training_curves.png")),
                              title=f"{manifest['partition']}: {cfg.num_workers} workers, fine_tune={cfg.fine_tune}")
    last = chief["history"][-1] if chief["history"] else {}
    log.info("fine-tuning done in %.1fs: final loss %.4f accuracy %.4f val_accuracy %.4f; model at %s",
             time.time() - t0, last.get("loss", float("nan")), last.get("accuracy", float("nan")),
             last.get("val_accuracy", float("nan")), model_dir)
    return history


def main(argv: list[str] | None = None) -> None:
    runtime.setup_logging()
    cfg = parse_args(sys.argv[1:] if argv is None else argv)
    log.info("config:\n%s", runtime.config_json(cfg))
    run(cfg)


if __name__ == "__main__":
    main()
