from __future__ import annotations

import datetime as dt
import json

import pytest

from tfhub_spark.gate import is_blessed
from tfhub_spark.partition import partition_date, partition_version
from tfhub_spark.sensors.partition import PartitionReadySensor


def test_sensor_waits_for_the_success_marker(tmp_path, capsys):
    part = tmp_path / "raw" / "ds=2026-11-20"
    sensor = PartitionReadySensor(task_id="wait", path=f"file://{part}")
    assert sensor.poke({}) is False
    assert "does not exist or is empty" in capsys.readouterr().out
    part.mkdir(parents=True)
    (part / "a.jpg").write_bytes(b"x")
    assert sensor.poke({}) is False
    assert "has no _SUCCESS marker yet" in capsys.readouterr().out
    (part / "_SUCCESS").write_bytes(b"")
    assert sensor.poke({}) is True


def test_sensor_rejects_unknown_scheme():
    with pytest.raises(ValueError, match="scheme 's3' is not supported"):
        PartitionReadySensor(task_id="wait", path="s3://bucket/raw").poke({})


def test_partition_comes_from_param_or_data_interval():
    start = dt.datetime(2026, 11, 20, tzinfo=dt.timezone.utc)
    assert partition_date(None, start) == "2026-11-20"
    assert partition_date("2026-01-31", start) == "2026-01-31"
    with pytest.raises(ValueError, match="not a date"):
        partition_date("20260131", start)
    with pytest.raises(ValueError):
        partition_date("2026-02-30", start)
    with pytest.raises(ValueError, match="set the 'partition' param"):
        partition_date(None, None)
    assert partition_version("2026-11-20") == 20261120


def test_gate_follows_the_blessing_record(tmp_path):
    record = tmp_path / "blessing.json"
    record.write_text(json.dumps({"blessed": True, "reasons": ["accuracy 0.93 >= min_accuracy 0.9"],
                                  "candidate": {"accuracy": 0.93}}))
    assert is_blessed(f"file://{record}") is True
    record.write_text(json.dumps({"blessed": False, "reasons": ["accuracy 0.5 < baseline"],
                                  "candidate": {"accuracy": 0.5}}))
    assert is_blessed(f"file://{record}") is False
    with pytest.raises(FileNotFoundError, match="evaluate task did not write its blessing"):
        is_blessed(f"file://{tmp_path}/missing.json")
