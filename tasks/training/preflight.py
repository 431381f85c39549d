"""Fine-tuning pre-flight, run by the driver before it launches the barrier stage: the prepared dataset is complete
and splits between the workers (``assign_files``, ``sampling_rates``), the Spark context has the settings a barrier
stage needs (``SESSION_CONF``, ``check_spark_conf``) and enough task slots (``wait_for_slots``). Each check fails with
a ``FinetuneError`` that says what to change.
"""

from __future__ import annotations

import json
import logging
import os
import re
import time

from tasks.core import schema
from tasks.io import storage

log = logging.getLogger("finetune")


class FinetuneError(RuntimeError):
    """A fine-tuning failure that a relaunch of the barrier stage would meet again (data, configuration)."""


BARRIER_SYNC_TIMEOUT_S = 900
"""``spark.barrier.sync.timeout`` this job sets when it creates the Spark context (Spark's default is a year)."""

SESSION_CONF = {
    # A barrier stage needs a fixed set of executors.
    "spark.dynamicAllocation.enabled": "false",
    # A process that ran a MultiWorkerMirroredStrategy cannot configure another one: never reuse Python workers.
    "spark.python.worker.reuse": "false",
}
"""Spark settings a barrier stage cannot do without: this job sets them on the Spark context it creates, over any
other value (a cluster's ``spark-defaults.conf`` often turns dynamic allocation on). The one place they are written:
the Airflow operator passes none of them, so the job runs the same from Airflow, spark-submit, tests and benches."""

SESSION_DEFAULTS = {
    "spark.barrier.sync.timeout": str(BARRIER_SYNC_TIMEOUT_S),
    # Spark's own check that a barrier stage can get its slots retries for 40 x 15 s by default; 6 x 5 s here.
    "spark.scheduler.barrier.maxConcurrentTasksCheck.interval": "5s",
    "spark.scheduler.barrier.maxConcurrentTasksCheck.maxFailures": "6",
}
"""Spark settings this job applies to a Spark context it creates, unless spark-submit already set them."""


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


def create_context(app_name: str):
    """The job's ``SparkContext``, with ``SESSION_CONF``, and ``SESSION_DEFAULTS`` for the settings spark-submit
    left unset.

    A context, not a ``SparkSession``: the barrier stage needs only the context, and building a session (its SQL
    state in the JVM) cost this job 6-10 s per run on a 2-core machine for nothing it uses.
    """
    from pyspark import SparkConf, SparkContext

    conf = SparkConf().setAppName(app_name)
    for key, value in SESSION_CONF.items():
        if conf.get(key, value) != value:
            log.info("%s=%s from spark-submit replaced by %s: the barrier stage needs it", key, conf.get(key), value)
        conf.set(key, value)
    for key, value in SESSION_DEFAULTS.items():
        conf.setIfMissing(key, value)
    return SparkContext.getOrCreate(conf)


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
