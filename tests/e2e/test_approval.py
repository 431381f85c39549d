"""The human approval step through the real scheduler and API server (`airflow standalone`), answered over the REST
API as the UI answers it: a run with ``approval`` ``required`` waits after the gate (in ``awaiting_input``, Airflow
3.3's state for a human-in-the-loop task: no worker slot, no triggerer) showing the metrics, the baseline and the
links; approved, it publishes; rejected, or not answered in time, it publishes nothing and still succeeds, and the
blessing record says why.

Whole-DAG runs on small partitions, one epoch, one worker, every model blessed: every task runs, quickly. The
rejected and the timed-out runs go together (the DAG allows two active runs). The approved path is the run of
tests/e2e/test_browser.py, approved in the UI, with the same checks of the waiting request over the REST API (the
helpers below serve both files).
"""

from __future__ import annotations

import json
import time

import pytest

from tasks.demo import make_dataset
from tests.support.airflow_standalone import patient

pytestmark = pytest.mark.e2e

DAG = "tfhub_finetune"
QUICK = {"epochs": 1, "num_workers": 1, "min_accuracy": 0.0, "baseline_tolerance": 1.0}
SMALL = 64
HITL = "/taskInstances/approve/-1/hitlDetails"


@pytest.fixture(scope="module")
def af(scheduler_airflow):
    known = {x["dag_run_id"] for x in scheduler_airflow.runs(DAG)}
    r = scheduler_airflow.patch(f"/dags/{DAG}", {"is_paused": False})
    assert r.status_code == 200, r.text
    scheduler_airflow.known_runs = known
    yield scheduler_airflow
    scheduler_airflow.patch(f"/dags/{DAG}", {"is_paused": True})


def make_partition(af, ds: str) -> None:
    make_dataset.run(make_dataset.Config(raw_root=f"file://{af.storage}/raw", ds=ds, num_images=SMALL))


def stop_stray_scheduled_runs(af) -> None:
    """Unpausing makes the scheduler create the run of the day that just ended, whose partition nobody writes
    here; when this module runs first, that run would hold one of the DAG's two active runs for hours."""
    for run in af.runs(DAG):
        if run["run_type"] == "scheduled" and run["dag_run_id"] not in af.known_runs \
                and run["state"] in ("queued", "running"):
            af.patch(f"/dags/{DAG}/dagRuns/{run['dag_run_id']}", {"state": "failed"})


def trigger(af, conf: dict, partition_key: str) -> str:
    r = af.post(f"/dags/{DAG}/dagRuns", {"logical_date": None, "conf": conf, "partition_key": partition_key})
    assert r.status_code == 200, r.text
    return r.json()["dag_run_id"]


def awaiting_input(af, run_id: str, timeout: float = 1500) -> None:
    def parked():
        states = af.task_states(DAG, run_id)
        assert states.get("evaluate") not in ("failed", "upstream_failed"), states
        # An approve step that ended without asking (a pass-through) fails here at once, not after the timeout.
        assert states.get("approve") not in ("success", "skipped", "failed", "upstream_failed"), (
            f"approve ended without waiting for an answer: {states}")
        return states.get("approve") == "awaiting_input"

    af.wait_for(patient(parked), timeout, f"run {run_id} waiting for approval", interval=3)


def wait_run(af, run_id: str, timeout: float = 1500) -> dict:
    def finished():
        run = af.get(f"/dags/{DAG}/dagRuns/{run_id}")
        return run if run["state"] in ("success", "failed") else None

    return af.wait_for(patient(finished), timeout, f"end of run {run_id}")


# Seconds between a task parking itself and a test's answer. Airflow 3.3 race: an answer that resumes the task
# before the scheduler has processed the executor's "success" event of the process that parked it makes the
# scheduler take that event for the resumed run's and mark it up_for_retry (which asks again). A person does
# not answer within seconds; on this busy machine the event takes a few.
ANSWER_AFTER_S = 20


def answer(af, run_id: str, option: str, comment: str | None = None) -> dict:
    """Answers the request as the UI's Required Actions form does: an option and, optionally, a comment."""
    time.sleep(ANSWER_AFTER_S)
    r = af.patch(f"/dags/{DAG}/dagRuns/{run_id}{HITL}",
                 {"chosen_options": [option], "params_input": {"comment": comment} if comment else {}})
    assert r.status_code == 200, r.text
    return r.json()


def task_log(af, run_id: str, task_id: str) -> str:
    ti = af.get(f"/dags/{DAG}/dagRuns/{run_id}/taskInstances/{task_id}")
    body = af.get(f"/dags/{DAG}/dagRuns/{run_id}/taskInstances/{task_id}/logs/{ti['try_number']}", full_content=True)
    content = body.get("content", body)
    return json.dumps(content) if not isinstance(content, str) else content


def links(af, run_id: str, task_id: str) -> dict:
    return af.get(f"/dags/{DAG}/dagRuns/{run_id}/taskInstances/{task_id}/links")["extra_links"]


def blessing(af, ds: str) -> dict:
    return json.loads((af.storage / f"runs/ds={ds}/blessing.json").read_text())


def test_rejected_and_timed_out_runs_publish_nothing_and_succeed(af):
    stop_stray_scheduled_runs(af)
    make_partition(af, "2026-11-15")
    make_partition(af, "2026-11-16")
    rejected = trigger(af, {**QUICK, "approval": "required", "approval_timeout": 60}, "2026-11-15")
    timed_out = trigger(af, {**QUICK, "approval": "required", "approval_timeout": 0.5}, "2026-11-16")
    awaiting_input(af, rejected)
    answer(af, rejected, "Reject")
    for run_id in (rejected, timed_out):
        assert wait_run(af, run_id)["state"] == "success", af.task_states(DAG, run_id)

    states = af.task_states(DAG, rejected)
    assert states["approve"] == "success" and states["export_model"] == "skipped", states
    states = af.task_states(DAG, timed_out)
    assert states["approve"] == "skipped" and states["export_model"] == "skipped", states
    for ds in ("2026-11-15", "2026-11-16"):
        assert not (af.storage / f"serving/shapes/{ds.replace('-', '')}").exists()
        assert not (af.storage / f"runs/ds={ds}/published.json").exists()

    record = blessing(af, "2026-11-15")
    assert record["blessed"] is True  # the evaluation blessed it; the reviewer did not
    assert record["approval"]["decision"] == "rejected" and record["approval"]["by"]
    assert any(r.startswith("approval: rejected by") for r in record["reasons"]), record["reasons"]
    assert "REJECTED" in task_log(af, rejected, "approve")

    record = blessing(af, "2026-11-16")
    assert record["approval"]["decision"] == "timed_out", record["approval"]
    assert "no answer within approval_timeout 0.5 minutes" in record["approval"]["reason"]
    assert "TIMED OUT" in task_log(af, timed_out, "approve")
