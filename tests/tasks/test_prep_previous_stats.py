"""A previous day's ``stats.json`` that cannot be read does not fail the prep, and is reported as unreadable, with
its location, not as missing."""

from __future__ import annotations

import json
import logging

import pytest

from tasks.prep import prep_stats
from tasks import prepare_examples as P
from tests.conftest import make_partition


def test_a_corrupt_previous_stats_is_named_unreadable_with_its_location(spark, tmp_path, caplog):
    previous = tmp_path / "examples" / "ds=2026-11-19" / P.STATS
    previous.parent.mkdir(parents=True)
    previous.write_text('{"partition": "ds=2026-11-19", "labels": {"circle": 3')  # cut off mid-write
    raw = make_partition(tmp_path / "raw", "2026-11-20", num_images=8)
    with caplog.at_level(logging.INFO, logger="prepare_examples"):
        P.run(P.Config(raw=f"file://{raw}", output=f"file://{tmp_path}/examples/{raw.name}", partition="2026-11-20",
                       min_shards=1), spark)
    drift = json.loads((tmp_path / "examples" / raw.name / P.STATS).read_text())["label_drift"]
    assert drift["previous"] is None and drift["unreadable"] is True
    assert drift["note"].startswith(f"previous statistics file://{previous} are unreadable: not UTF-8 JSON (")
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(f"file://{previous} are unreadable" in w for w in warnings), warnings
    assert not any("no statistics of a previous partition" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("data, reason", [
    (b"\xff\xfe{}", "not UTF-8 JSON"),
    (b"[1, 2]", "no 'labels' object of label counts in it (list)"),
    (b'{"partition": "ds=2026-11-19"}', "no 'labels' object of label counts in it (keys partition)"),
    (b'{"labels": {"circle": "many"}}', "no 'labels' object of label counts in it (keys labels)"),
])
def test_previous_stats_of_the_wrong_shape_are_unreadable(data, reason):
    url = "hdfs://namenode:8020/x/examples/ds=2026-11-19/stats.json"
    stats, problem = prep_stats.read_previous(data, url)
    assert stats is None and problem.startswith(f"previous statistics {url} are unreadable: {reason}")
    drift = prep_stats.label_drift({"circle": 1}, None, "ds=2026-11-19", 0.2, unreadable=problem)
    assert drift == {"previous": None, "note": problem, "unreadable": True}


def test_readable_previous_stats_give_the_drift():
    stats, problem = prep_stats.read_previous(b'{"partition": "ds=2026-11-19", "labels": {"circle": 2, "cross": 2}}',
                                              "file:///s.json")
    assert problem is None
    drift = prep_stats.label_drift({"circle": 4}, stats, stats["partition"], 0.2)
    assert drift["previous"] == "ds=2026-11-19" and drift["total_variation"] == 0.5 and drift["moved"] is True
