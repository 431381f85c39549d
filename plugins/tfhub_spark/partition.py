"""Which date partition a DAG run processes."""

from __future__ import annotations

import datetime as dt
import re

_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")


def partition_date(partition: str | None, data_interval_start: dt.datetime | None) -> str:
    """The run's partition, ``YYYY-MM-DD``: the ``partition`` param when given, else the day the run's data
    interval starts on. Never the wall clock, so a retry, a rerun or a backfill of a date reads that date.

    :param partition: the run's ``partition`` param, or None.
    :param data_interval_start: the run's data interval start, or None for a manual run without one.
    """
    if partition:
        if not _DATE.match(partition):
            raise ValueError(f"partition param {partition!r} is not a date of the form YYYY-MM-DD")
        dt.date.fromisoformat(partition)
        return partition
    if data_interval_start is None:
        raise ValueError(
            "this run has no data interval (a manual run without a logical date): set the 'partition' param"
        )
    return data_interval_start.strftime("%Y-%m-%d")


def partition_version(partition: str) -> int:
    """The serving version of a partition, ``YYYYMMDD``: the same date always publishes the same version."""
    return int(partition.replace("-", ""))


# Prefixed: Airflow 3.3 puts its own `partition_date` (of partitioned timetables) into the template context.
MACROS = {"tfhub_partition": partition_date, "tfhub_version": partition_version}
