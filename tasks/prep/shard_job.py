"""The Spark job of data prep: a task reads, checks and writes the records of a few shards (files layouts), or the
records are checked where they are read (Parquet row groups, a table's rows) and shuffled to one writer per shard;
progress is logged while it runs (``execute``).
"""

from __future__ import annotations

import heapq
import logging
import math
import threading
import time

from tasks.prep import layouts, prep_tasks
from tasks.prep.plan import Plan

log = logging.getLogger("prepare_examples")


class _Progress:
    """Logs how many records the Spark job has checked, the rate and the time left, every ``every_s`` seconds.

    Tasks add their record count to an accumulator when they finish; a retried task may count twice, which only
    makes the progress line optimistic.
    """

    def __init__(self, sc, total: int, every_s: float = 15.0) -> None:
        self.done = sc.accumulator(0)
        self.total, self.every_s = total, every_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._log, name="prep-progress", daemon=True)

    def _log(self) -> None:
        t0 = time.time()
        while not self._stop.wait(self.every_s):
            done, elapsed = self.done.value, time.time() - t0
            rate = done / elapsed
            eta = f"{(self.total - done) / rate:.0f}s" if rate else "unknown"
            log.info("checked %d/%d records (%.0f%%), %.0f records/s, eta %s", done, self.total,
                     100 * done / max(1, self.total), rate, eta)

    def __enter__(self) -> _Progress:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


TASKS_PER_CORE = 3
"""Spark tasks per core for the files layouts: few enough that Spark's fixed cost per task (about 50 ms of CPU in
the JVM and the Python worker, measured on Spark 4.2 local mode) stays small beside a task's records, enough that
the cores finish together."""
MAX_SHARDS_PER_TASK = 8
"""About the most shards one Spark task writes (there are at least shards / 8 tasks): a cluster that has few cores
when the job starts (dynamic allocation) still gets tasks for the executors that join later, and a failed task
redoes little."""


def spark_task_count(shards: int, cores: int) -> int:
    """How many Spark tasks write ``shards`` shards (files layouts) on ``cores`` cores."""
    return max(TASKS_PER_CORE * cores, math.ceil(shards / MAX_SHARDS_PER_TASK))


def shard_groups(tasks: list[prep_tasks.ShardTask], count: int) -> list[list[prep_tasks.ShardTask]]:
    """The shard tasks in at most ``count`` groups of about the same bytes, each group one Spark task: largest
    shard first into the lightest group, and the heaviest group first, so that the last to finish are light.
    The groups depend only on the plan; which shards share a Spark task does not change what any shard holds."""
    count = max(1, min(count, len(tasks)))
    groups: list[list[prep_tasks.ShardTask]] = [[] for _ in range(count)]
    load = [(0, g) for g in range(count)]  # (bytes, group): a heap of the groups, lightest first
    for t in sorted(tasks, key=lambda t: (-t.bytes, t.index)):
        size, g = heapq.heappop(load)
        groups[g].append(t)
        heapq.heappush(load, (size + t.bytes, g))
    return sorted((g for g in groups if g), key=lambda g: (-sum(t.bytes for t in g), g[0].index))


def _counted(result: dict, done) -> dict:
    done.add(result["records"] + len(result["bad"]))
    return result


def execute(spark, raw: layouts.RawPartition, plan: Plan, ctx: prep_tasks.Context) -> list[dict]:
    """Runs the Spark job that checks and writes every record; returns each shard task's result, by index."""
    sc = spark.sparkContext
    tasks = plan.tasks
    t0 = time.time()
    with _Progress(sc, len(plan.planned)) as progress:
        done = progress.done
        if raw.files:
            # Each shard's task reads its own files: no shuffle, and the bytes are read once. Several shards go to
            # one Spark task (shard_groups), whose fixed cost is paid once for them.
            groups = shard_groups(tasks, spark_task_count(len(tasks), sc.defaultParallelism))
            results = (sc.parallelize(groups, len(groups))
                       .flatMap(lambda group: [_counted(prep_tasks.write_files_shard(t, ctx), done) for t in group])
                       .collect())
        else:
            if raw.frame is not None:
                # A table's rows: the executors that run the query check them, finding each row's plan by its
                # (id, label, digest); then the same shuffle to one writer per shard as for Parquet.
                lookup = sc.broadcast({key: (plan.task_of[i], plan.planned[i])
                                       for i, key in enumerate(raw.row_keys)})
                checked = raw.frame.rdd.mapPartitions(
                    lambda rows: prep_tasks.check_table_rows(rows, lookup.value, ctx))
            else:
                # Parquet row groups hold records of every shard: check them where they are read, then shuffle the
                # checked records to one writer per shard.
                groups = [(g.file, g.index, [(plan.task_of[g.first + i], plan.planned[g.first + i])
                                             for i in range(g.rows)]) for g in raw.parquet_groups]
                in_groups = {g.first + i for g in raw.parquet_groups for i in range(g.rows)}
                others = [(plan.task_of[i], p) for i, p in enumerate(plan.planned) if i not in in_groups]
                checked = (sc.parallelize(groups, max(1, len(groups)))
                           .flatMap(lambda g: prep_tasks.check_row_group(*g, ctx)))
                if others:
                    checked = checked.union(sc.parallelize(others, 1).mapPartitions(
                        lambda items: prep_tasks.check_files(list(items), ctx)))
            results = (checked.partitionBy(len(tasks), lambda k: k)
                       .mapPartitionsWithIndex(lambda i, items: [_counted(prep_tasks.write_checked(
                           tasks[i], (v for _, v in items), ctx), done)])
                       .collect())
    total, wall = len(plan.planned), max(time.time() - t0, 1e-9)
    busy = sum(r["seconds"] for r in results)
    log.info("checked and wrote %d records in %d shard tasks: %.1fs, %.0f records/s; task time %.1fs in all "
             "(CPU %.1fs), %.1fs the longest, %.1f tasks at a time on average", total, len(results), wall,
             total / wall, busy, sum(r["cpu_seconds"] for r in results), max(r["seconds"] for r in results),
             busy / wall)
    return sorted(results, key=lambda r: r["index"])

