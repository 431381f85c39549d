"""Date partitions as the job code sees them."""

from __future__ import annotations


def version_of(ds: str) -> int:
    """The serving version of a partition date, YYYYMMDD (the DAG's ``partition_version`` macro does the same)."""
    return int(ds.replace("-", ""))
