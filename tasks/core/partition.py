"""Date partitions as the job code sees them."""

from __future__ import annotations

import datetime as dt
import re


def version_of(ds: str) -> int:
    """The serving version of a partition date, YYYYMMDD (the DAG's ``partition_version`` macro does the same)."""
    return int(ds.replace("-", ""))


def date_problem(ds: str, option: str = "--partition") -> str | None:
    """What is wrong with ``ds`` as a partition date ``YYYY-MM-DD`` (naming ``option``), or None."""
    try:
        if not re.fullmatch(r"\d{4}-\d{2}-\d{2}", ds):
            raise ValueError("not of the form YYYY-MM-DD")
        dt.date.fromisoformat(ds)
    except ValueError as e:
        return f"{option} {ds!r} is not a date YYYY-MM-DD: {e}"
    return None
