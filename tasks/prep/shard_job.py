"""The Spark job of data prep: one task per shard reads, checks and writes its records (files layouts), or the
records are checked where they are read (Parquet row groups, a table's rows) and shuffled to one writer per shard;
progress is logged while it runs (``execute``).
"""

from __future__ import annotations

import logging
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
            # One Spark task per shard reads its own files: no shuffle, and the bytes are read once. Largest first,
            # so that the last tasks to finish are small ones.
            order = sorted(tasks, key=lambda t: (-t.bytes, t.index))
            results = (sc.parallelize(order, len(order))
                       .map(lambda t: _counted(prep_tasks.write_files_shard(t, ctx), done))
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

