"""Which date partition a DAG run processes.

A run of ``tfhub_finetune`` carries its partition as Airflow's ``partition_key`` (``YYYY-MM-DD``): the
``CronPartitionTimetable`` gives scheduled runs the day that ended, a backfill one key per date, and a manual run
the key typed in the trigger form or sent as ``partition_key`` to ``POST /dagRuns``. Runs without a key
(``airflow dags test``, which cannot set one, triggers written for the old ``partition`` param, and the runs made
before the DAG was partitioned) fall back to the ``partition`` param, then to the last day that ended within the
run's data interval: the day before its end. That is the day a daily run of the old data-interval schedule
processed (``[2026-11-20, 2026-11-21)``: 2026-11-20), and for ``airflow dags test tfhub_finetune 2026-11-21``
(a zero-length interval at 2026-11-21) the day that had ended when the run was due.
"""

from __future__ import annotations

import datetime as dt
import re

KEY_FORMAT = "%Y-%m-%d"
"""The partition keys of the DAG's timetable (a date partition ``raw/ds=<key>``)."""

_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")


def _check(value: str, what: str) -> str:
    if not _DATE.match(value):
        raise ValueError(f"{what} {value!r} is not a date of the form YYYY-MM-DD")
    try:
        dt.date.fromisoformat(value)
    except ValueError as e:
        raise ValueError(f"{what} {value!r} is not a date: {e}") from None
    return value


def run_partition(partition_key: str | None, partition: str | None, data_interval_end: dt.datetime | None) -> str:
    """The run's partition, ``YYYY-MM-DD``: its ``partition_key``; for a run without one, the ``partition`` param,
    else the day before its data interval's end. Never the wall clock, so a retry, a rerun or a backfill reads its
    date.

    :param partition_key: the run's ``partition_key``, or None.
    :param partition: the run's ``partition`` param (for runs without a partition key), or None.
    :param data_interval_end: the run's data interval end, or None (a manual run without a logical date).
    :raises ValueError: a key or param that is not a date; a param that names another date than the key; a run
        with neither a key, nor the param, nor a data interval.
    """
    if partition_key:
        _check(partition_key, "partition key")
        if partition and partition != partition_key:
            raise ValueError(f"the run's partition key is {partition_key} but its partition param says {partition}: "
                             "leave the param empty (it is for runs without a partition key)")
        return partition_key
    if partition:
        return _check(partition, "partition param")
    if data_interval_end is None:
        raise ValueError("this run has no partition key and no logical date: trigger it with a partition key "
                         "(the trigger form's Partition Key, or partition_key in POST /dagRuns)")
    return (data_interval_end - dt.timedelta(days=1)).strftime(KEY_FORMAT)


def partition_date(partition: str | None, data_interval_start: dt.datetime | None) -> str:
    """The partition of a run of a data-interval DAG, ``YYYY-MM-DD``: the ``partition`` param when given, else the
    day the run's data interval starts on.

    :param partition: the run's ``partition`` param, or None.
    :param data_interval_start: the run's data interval start, or None for a manual run without one.
    """
    if partition:
        return _check(partition, "partition param")
    if data_interval_start is None:
        raise ValueError(
            "this run has no data interval (a manual run without a logical date): set the 'partition' param"
        )
    return data_interval_start.strftime(KEY_FORMAT)


def partition_version(partition: str) -> int:
    """The serving version of a partition, ``YYYYMMDD``: the same date always publishes the same version."""
    return int(partition.replace("-", ""))


# Prefixed: Airflow 3.3 puts its own `partition_date` (of partitioned timetables) into the template context.
MACROS = {"tfhub_partition": run_partition, "tfhub_version": partition_version}
