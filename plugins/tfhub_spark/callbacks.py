"""Task callbacks that put the run's partition in every failure and retry message."""

from __future__ import annotations

import logging

from tfhub_spark.partition import run_partition

log = logging.getLogger(__name__)


def _partition(context) -> str:
    try:
        return run_partition(context.get("partition_key"), (context.get("params") or {}).get("partition"),
                             getattr(context.get("dag_run"), "data_interval_end", None))
    except ValueError as e:
        return f"unknown ({e})"


def _describe(context) -> str:
    ti = context["ti"]
    return (f"task {ti.task_id} of {ti.dag_id} run {ti.run_id} for partition {_partition(context)} "
            f"(try {ti.try_number})")


def log_failure(context) -> None:
    log.error("FAILED: %s: %s", _describe(context), context.get("exception"))


def log_retry(context) -> None:
    log.warning("RETRYING: %s after: %s", _describe(context), context.get("exception"))
