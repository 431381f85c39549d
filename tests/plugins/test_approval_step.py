"""The approval step's parts that run without a scheduler: the pass-through with ``approval`` ``none``, the request
a reviewer reads (with its comment field), the answer's handling (decision and comment in the log and the blessing
record), and the decision written into the blessing record through the storage hook, atomically, on ``file://`` and
over WebHDFS (the test server). The waiting and the answers go through the real scheduler in
tests/e2e/test_approval.py."""

from __future__ import annotations

import datetime as dt
import json
import logging
from pathlib import Path

import pytest

from tests.support.webhdfs_server import WebHdfsTestServer
from tfhub_spark.gate import record_approval
from tfhub_spark.hooks.storage import StorageHook
from tfhub_spark.operators.approval import ModelApprovalOperator

BLESSING = {"blessed": True, "reasons": ["accuracy 0.9500 >= min_accuracy 0.9000",
                                         "accuracy 0.9500 >= baseline version 20261119 accuracy 0.9300 - tolerance "
                                         "0.0100"],
            "candidate": {"accuracy": 0.95, "loss": 0.2, "num_examples": 120},
            "baseline": {"version": 20261119, "accuracy": 0.93, "num_examples": 120}}
METRICS = {"accuracy": 0.95, "num_examples": 120, "split": "test", "partition": "ds=2026-11-20",
           "per_class": {"circle": {"precision": 0.9, "recall": 1.0, "f1": 0.95, "support": 30},
                         "cross": {"precision": 1.0, "recall": 0.8, "f1": 0.89, "support": 30}}}


@pytest.fixture
def run_dir(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("AIRFLOW_VAR_TFHUB_PIPELINE", json.dumps({"storage_root": f"file://{tmp_path}"}))
    monkeypatch.setenv("AIRFLOW__API__BASE_URL", "http://airflow.example:8080")
    run = tmp_path / "runs" / "ds=2026-11-20"
    run.mkdir(parents=True)
    (run / "blessing.json").write_text(json.dumps(BLESSING))
    (run / "metrics.json").write_text(json.dumps(METRICS))
    return run


def operator(run: Path, approval: str = "required") -> ModelApprovalOperator:
    return ModelApprovalOperator(task_id="approve", run_dir=f"file://{run}", approval=approval,
                                 approval_timeout="90", model_name="shapes", version="20261120")


def test_approval_none_passes_through_without_asking(tmp_path):
    # No run folder is read and no request is written (that would need the task runner): it returns at once.
    assert operator(tmp_path / "nowhere", approval="none").execute(context={}) is None
    with pytest.raises(ValueError, match="approval 'maybe' is not one of"):
        operator(tmp_path / "nowhere", approval="maybe").execute(context={})


def test_the_request_shows_metrics_baseline_reasons_and_links(run_dir):
    body = operator(run_dir).review_body(BLESSING, METRICS, dt.datetime(2026, 11, 21, 12, 0))
    assert "| candidate | **0.9500** |" in body
    assert "published version 20261119" in body and "0.9300 (+0.0200)" in body
    assert "| circle | 1.000 |" in body and "| cross | 0.800 |" in body
    assert "- accuracy 0.9500 >= min_accuracy 0.9000" in body
    view = "http://airflow.example:8080/tfhub/files/runs/ds=2026-11-20"
    assert f"[Evaluation report]({view}/report.md)" in body
    assert f"[Confusion matrix]({view}/confusion_matrix.png)" in body
    assert f"[Training curves]({view}/training_curves.png)" in body
    assert "2026-11-21 12:00 UTC nothing is published" in body


def test_the_request_has_a_comment_field(run_dir):
    from airflow.sdk import DAG, Param

    # In a DAG, as the pipeline builds it: the DAG's params reach the operator too, and stay out of the request.
    with DAG("review", params={"approval": Param("required", type="string")}, schedule=None):
        in_dag = operator(run_dir)
    for op in (operator(run_dir), in_dag):
        assert op.options == ["Approve", "Reject"]
        assert list(op.serialized_params) == ["comment"]
        field = op.serialized_params["comment"]
        assert field["value"] is None and field["schema"]["type"] == ["null", "string"]
        assert field["schema"]["title"] == "Comment" and "blessing.json" in field["description"]


def test_the_pipelines_approve_task_asks_for_a_comment():
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(Path(__file__).resolve().parents[2] / "dags" / "tfhub_finetune.py"))
    dag = bag.dags["tfhub_finetune"]
    assert list(dag.get_task("approve").serialized_params) == ["comment"]


@pytest.mark.parametrize("option, decision, comment", [
    ("Approve", "approved", "curves look fine; the cross recall is expected"),
    ("Reject", "rejected", "  cross recall 0.8 is too low  "),
    ("Approve", "approved", None),  # no comment given: the form sends null
])
def test_the_reviewers_comment_goes_into_the_record_and_the_log(run_dir, caplog, monkeypatch, option, decision,
                                                                comment):
    op = operator(run_dir)
    # The task's structlog logger does not reach caplog: the test's logger stands in for it.
    monkeypatch.setattr(ModelApprovalOperator, "log", property(lambda self: logging.getLogger("approve-test")))
    event = {"chosen_options": [option], "params_input": {"comment": comment},
             "responded_at": dt.datetime(2026, 11, 21, 10, 0, tzinfo=dt.timezone.utc),
             "responded_by_user": {"id": "anna", "name": "anna"}}
    with caplog.at_level("INFO"):
        op.execute_complete(context={}, event=event)
    approval = json.loads((run_dir / "blessing.json").read_text())["approval"]
    assert approval["decision"] == decision and approval["by"] == "anna"
    assert approval["at"] == "2026-11-21T10:00:00+00:00"
    said = (comment or "").strip()
    assert approval["comment"] == said
    assert approval["reason"].startswith(f"{decision} by anna at 2026-11-21T10:00:00+00:00"
                                         + (f' ("{said}")' if said else ":"))
    assert f"{decision.upper()}: {approval['reason']}" in caplog.text
    assert (f"reviewer's comment: {said}" in caplog.text) is bool(said)


def test_the_decision_is_recorded_in_the_blessing_atomically(run_dir):
    url = f"file://{run_dir}/blessing.json"
    record_approval(url, {"decision": "rejected", "reason": "rejected by admin at 2026-11-21T10:00:00+00:00"})
    record = json.loads((run_dir / "blessing.json").read_text())
    assert record["approval"]["decision"] == "rejected"
    assert record["reasons"][-1] == "approval: rejected by admin at 2026-11-21T10:00:00+00:00"
    assert {k: record[k] for k in BLESSING} == {**BLESSING, "reasons": record["reasons"]}
    # A rerun's decision replaces the earlier one; nothing is left beside the record.
    record_approval(url, {"decision": "approved", "reason": "approved by admin"})
    record = json.loads((run_dir / "blessing.json").read_text())
    assert record["approval"]["decision"] == "approved"
    assert [r for r in record["reasons"] if r.startswith("approval: ")] == ["approval: approved by admin"]
    assert sorted(p.name for p in run_dir.iterdir()) == ["blessing.json", "metrics.json"]


def test_atomic_write_over_webhdfs(tmp_path, monkeypatch):
    with WebHdfsTestServer(tmp_path / "hdfs") as srv:
        monkeypatch.setenv("AIRFLOW_CONN_WEBHDFS_TFHUB", json.dumps(
            {"conn_type": "webhdfs", "host": "127.0.0.1", "port": srv.port, "login": "tester"}))
        (tmp_path / "hdfs" / "runs" / "ds=2026-11-20").mkdir(parents=True)
        (tmp_path / "hdfs" / "runs" / "ds=2026-11-20" / "blessing.json").write_text(json.dumps(BLESSING))
        url = "hdfs://namenode:8020/runs/ds=2026-11-20/blessing.json"
        record_approval(url, {"decision": "timed_out", "reason": "no answer"}, webhdfs_conn_id="webhdfs_tfhub")
        hook = StorageHook(webhdfs_conn_id="webhdfs_tfhub")
        assert json.loads(hook.read_text(url))["approval"]["decision"] == "timed_out"
        # Written beside the record under a hidden name, then renamed over it.
        ops = [(r.op, r.path) for r in srv.requests if r.node == "namenode" and r.op in ("CREATE", "RENAME")]
        assert [op for op, _ in ops] == ["CREATE", "RENAME"]
        assert ops[0][1].startswith("/runs/ds=2026-11-20/.blessing.json.tmp-")
        assert [e.name for e in hook.list("hdfs://namenode:8020/runs/ds=2026-11-20")] == ["blessing.json"]
