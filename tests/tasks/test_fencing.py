"""Storage-level fencing: a stale driver or chief (an older Airflow attempt that survived) cannot commit to the run
folder, nor publish for serving, once a newer attempt wrote the attempt token; the owning attempt commits as
before, and writes outside the run folder are not fenced."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tasks.io import commit, fencing, storage
from tasks.training import checkpoints
from tfhub_spark import fencing as operator_fencing

OLD = operator_fencing.Attempt("tfhub_finetune", "manual__2026-11-21", "finetune", -1, 1, "0ld0ld0ld0ld0ld0")
NEW = operator_fencing.Attempt("tfhub_finetune", "manual__2026-11-21", "finetune", -1, 2, "9e99e99e99e99e99")


class _Local:
    """What the operator gives ``write_token`` for ``file://`` URLs."""

    @staticmethod
    def _scheme_path(url: str):
        return "file", url.removeprefix("file://")


def run_as(monkeypatch, attempt, run_dir: str) -> str:
    """This process becomes a driver of ``attempt``, as the operator starts one; returns the token URL."""
    url = operator_fencing.token_url(run_dir, attempt)
    monkeypatch.setenv(fencing.ATTEMPT_ENV, attempt.to_json())
    monkeypatch.setenv(fencing.TOKEN_ENV, url)
    return url


def fake_checkpoint(scratch: Path) -> None:
    chief = scratch / "checkpoints" / "chief"
    chief.mkdir(parents=True)
    (chief / "checkpoint").write_text("model_checkpoint_path: 'ckpt-1'\n")
    (chief / "ckpt-1.index").write_bytes(b"\0" * 16)


def test_stale_driver_cannot_commit_after_a_newer_attempt_took_over(tmp_path, monkeypatch):
    run = tmp_path / "runs" / "ds=2026-11-20"
    run_dir = f"file://{run}"
    token = run_as(monkeypatch, OLD, run_dir)
    operator_fencing.write_token(_Local, token, OLD)
    # While the old attempt owns the run, its chief commits checkpoints and the model as before.
    store = checkpoints.TrainingStore(run_dir, tmp_path / "old-scratch", 0)
    fake_checkpoint(tmp_path / "old-scratch")
    record = store.push({"epoch": 1, "step": 5, "global_step": 5, "attempt": 0, "time": 0.0})
    assert record["airflow_attempt"] == {"task_id": "finetune", "try_number": 1, "id": OLD.id}
    assert json.loads((run / "checkpoints" / "progress-000001.json").read_text())["airflow_attempt"]["id"] == OLD.id
    commit.write_text_atomic(f"{run_dir}/history.json", "[1]")

    # The retry (try 2) takes the run over; the old driver is still alive and tries to commit.
    operator_fencing.write_token(_Local, token, NEW)
    before = sorted(p.relative_to(run) for p in run.rglob("*"))
    with pytest.raises(fencing.StaleAttemptError) as e:
        store.push({"epoch": 2, "step": 10, "global_step": 10, "attempt": 0, "time": 0.0})
    assert "try 1 (0ld0ld0ld0ld0ld0) refuses to commit checkpoint v000002" in str(e.value)
    assert f"try 2 ({NEW.id}) owns {run_dir}" in str(e.value)
    with pytest.raises(fencing.StaleAttemptError, match="refuses to commit a file to .*history.json"):
        commit.write_text_atomic(f"{run_dir}/history.json", "[1, 2]")
    model = commit.output_staging(f"{run_dir}/model")
    (model / "saved_model.pb").write_bytes(b"x")
    with pytest.raises(fencing.StaleAttemptError, match="refuses to commit a folder to .*/model"):
        commit.publish_dir(model, f"{run_dir}/model")
    with pytest.raises(fencing.StaleAttemptError, match="refuses to commit a deletion"):
        storage.remove(f"{run_dir}/checkpoints/progress-000001.json")
    with pytest.raises(fencing.StaleAttemptError, match="version 20261120 of shapes for serving"):
        fencing.check("version 20261120 of shapes for serving", f"file://{tmp_path}/serving/shapes/20261120")
    # Nothing of the old attempt's reached the run folder after the takeover.
    assert (run / "history.json").read_text() == "[1]"
    assert not (run / "model").exists()
    # (but the hidden staging folder of the refused model, which its caller deletes)
    assert sorted(p.relative_to(run) for p in run.rglob("*")
                  if not p.relative_to(run).parts[0].startswith(".model.staging")) == before

    # The new attempt's driver commits; outside the run folder (prepared examples) nothing is fenced.
    run_as(monkeypatch, NEW, run_dir)
    commit.write_text_atomic(f"{run_dir}/history.json", "[1, 2]")
    assert (run / "history.json").read_text() == "[1, 2]"
    run_as(monkeypatch, OLD, run_dir)
    commit.write_text_atomic(f"file://{tmp_path}/examples/ds=2026-11-20/manifest.json", "{}")


def test_missing_or_foreign_token_is_refused_and_no_token_means_no_fencing(tmp_path, monkeypatch):
    run_dir = f"file://{tmp_path}/run"
    token = run_as(monkeypatch, NEW, run_dir)
    with pytest.raises(fencing.StaleAttemptError, match=r"the attempt token .*/run/_attempts/finetune.json is "
                                                        r"missing"):
        commit.write_text_atomic(f"{run_dir}/metrics.json", "{}")
    Path(token.removeprefix("file://")).parent.mkdir(parents=True)
    Path(token.removeprefix("file://")).write_text("{not json")
    with pytest.raises(fencing.StaleAttemptError, match="is unreadable"):
        commit.write_text_atomic(f"{run_dir}/metrics.json", "{}")
    monkeypatch.delenv(fencing.ATTEMPT_ENV)
    monkeypatch.delenv(fencing.TOKEN_ENV)
    commit.write_text_atomic(f"{run_dir}/metrics.json", "{}")  # a job run by hand: not fenced


def test_stale_commit_to_hdfs_is_refused(hdfs, monkeypatch):
    run_dir = "hdfs://namenode:8020/data/runs/ds=2026-11-20"
    commit.write_text_atomic(operator_fencing.token_url(run_dir, NEW),
                              json.dumps(operator_fencing.token_record(NEW)))
    run_as(monkeypatch, OLD, run_dir)
    with pytest.raises(fencing.StaleAttemptError, match=f"try 2 \\({NEW.id}\\) owns {run_dir}"):
        commit.write_text_atomic(f"{run_dir}/metrics.json", "{}")
    assert not storage.exists(f"{run_dir}/metrics.json")
    run_as(monkeypatch, NEW, run_dir)
    commit.write_text_atomic(f"{run_dir}/metrics.json", "{}")
    assert storage.read_text(f"{run_dir}/metrics.json") == "{}"
