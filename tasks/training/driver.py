"""The driver side of the fine-tuning barrier stage: launching it, relaunching it after a failure from the last
committed checkpoint up to ``max_restarts`` times (``run_barrier_stage``), telling a failure a relaunch would meet
again (``NON_RETRIABLE``) from one it may not, and the run folder's history and training curves once it is done
(``write_report``).
"""

from __future__ import annotations

import functools
import json
import logging
import tempfile
import time
from pathlib import Path

from tasks.core import run_folder, runtime
from tasks.io import commit, storage
from tasks.training import logrelay
from tasks.training.checkpoints import read_progress
from tasks.training.preflight import FinetuneError, wait_for_slots
from tasks.training.worker import barrier_task

log = logging.getLogger("finetune")

NON_RETRIABLE = frozenset({"FinetuneError", "HubModuleError", "StorageError"})
"""Worker exceptions that a relaunch would meet again (bad data or configuration): no restart for those."""



def spark_failure(e: Exception, max_lines: int = 40) -> str:
    """The readable part of a failed Spark job's error: messages and Python tracebacks, no JVM stack frames."""
    java = getattr(e, "java_exception", None)
    text = str(java.toString()) if java is not None else str(e)
    lines = [ln for ln in text.splitlines() if ln.strip() and not ln.startswith(("\tat ", "\t... "))]
    return "\n".join(lines[:max_lines])


class BarrierStageFailed(FinetuneError):
    pass


def run_barrier_stage(sc, cfg, spec_for, relay: logrelay.RelayServer,
                      group: str) -> tuple[list[dict], list[dict], list[logrelay.WorkerState]]:
    """Launches the barrier stage, relaunching it after a failure up to ``cfg.max_restarts`` times.

    Args:
        sc: the SparkContext.
        cfg: the job's config (``tasks.finetune.Config``).
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
            _after_failure(cfg, attempt, record, relay.workers(attempt), relay.stalled or spark_failure(e))
    raise AssertionError("unreachable")


def _after_failure(cfg, attempt: int, record: dict, workers: list, reason: str) -> None:
    """Logs a failed attempt with the workers' last known state; raises when no relaunch may follow, else records
    and logs where the next attempt resumes from."""
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
    progress = read_progress(storage.join(cfg.run_dir, run_folder.CHECKPOINTS))
    if progress:
        record["next_resumes_from"] = {k: progress[k] for k in ("epoch", "step", "global_step", "version")}
        log.warning("restart %d of %d: relaunching the barrier stage; it resumes from the checkpoint at "
                    "epoch %d step %d (global step %d), committed as version %d", attempt + 1,
                    cfg.max_restarts, progress["epoch"], progress["step"], progress["global_step"],
                    progress["version"])
    else:
        log.warning("restart %d of %d: relaunching the barrier stage from the start (no checkpoint yet)",
                    attempt + 1, cfg.max_restarts)


def start_run_folder(cfg) -> None:
    """A new run starts from scratch (only restarts within it resume): no model, checkpoints or TensorBoard logs of
    an earlier run; the resolved config written first."""
    storage.makedirs(cfg.run_dir)
    commit.clean_stale(storage.join(cfg.run_dir, run_folder.MODEL))
    for name in (run_folder.CHECKPOINTS, run_folder.TENSORBOARD):
        storage.remove(storage.join(cfg.run_dir, name))
    commit.write_text_atomic(storage.join(cfg.run_dir, run_folder.FINETUNE_CONFIG), runtime.config_json(cfg))


def write_report(cfg, chief: dict, history: dict, title: str) -> None:
    """After a successful stage: checks the chief's model is there, removes the checkpoints, writes the history
    and the training curves."""
    model_url = storage.join(cfg.run_dir, run_folder.MODEL)
    if not storage.exists(storage.join(model_url, "saved_model.pb")):
        raise FinetuneError(f"training finished but the chief wrote no model at {model_url}")
    storage.remove(storage.join(cfg.run_dir, run_folder.CHECKPOINTS))
    commit.write_text_atomic(storage.join(cfg.run_dir, run_folder.HISTORY), json.dumps(history, indent=2))
    if chief["history"]:
        from tasks.core import plots

        _write_png(lambda p: plots.training_curves(chief["history"], p, title=title),
                   storage.join(cfg.run_dir, run_folder.TRAINING_CURVES))


def _write_png(plot, url: str) -> None:
    with tempfile.TemporaryDirectory(prefix="plot-") as tmp:
        path = Path(tmp) / "plot.png"
        plot(path)
        commit.write_bytes_atomic(url, path.read_bytes())
