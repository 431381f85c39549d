"""The DAG file imports cleanly, wires exactly the pipeline, and parses without heavy imports."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def dagbag():
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(ROOT / "dags"))


def test_no_import_errors(dagbag):
    assert dagbag.import_errors == {}
    assert sorted(dagbag.dags) == ["tfhub_batch_score", "tfhub_finetune", "tfhub_model_consumer"]


def test_task_graph_is_the_pipeline(dagbag):
    dag = dagbag.dags["tfhub_finetune"]
    order = ["wait_for_raw_partition", "prepare_examples", "finetune", "evaluate", "gate", "approve", "export_model"]
    assert sorted(dag.task_ids) == sorted(order)
    for up, down in zip(order, order[1:]):
        assert dag.get_task(up).downstream_task_ids == {down}
    assert dag.get_task("export_model").downstream_task_ids == set()
    assert dag.get_task("finetune").pool == "tfhub_training"
    assert type(dag.get_task("finetune")).__name__ == "TfHubFinetuneOperator"
    assert [o.name for o in dag.get_task("export_model").outlets] == ["tfhub_served_model"]
    # The approval step passes through unless a run asks for it: scheduled runs publish as before.
    assert type(dag.get_task("approve")).__name__ == "ModelApprovalOperator"
    assert dag.params["approval"] == "none"


def test_consumer_is_scheduled_on_the_published_model(dagbag):
    consumer = dagbag.dags["tfhub_model_consumer"]
    # Partitioned: the publication's events carry a partition key, which a plain asset schedule never receives.
    assert type(consumer.timetable).__name__ == "PartitionedAssetTimetable"
    assert consumer.timetable.asset_condition.name == "tfhub_served_model"


def test_params_have_defaults_for_scheduled_runs(dagbag):
    params = dagbag.dags["tfhub_finetune"].params
    for name in ("task_type", "layout", "epochs", "batch_size", "learning_rate", "num_workers", "fine_tune", "min_accuracy",
                 "min_class_recall", "baseline_tolerance"):
        assert params[name] is not None, name
    assert params["partition"] is None
    # Empty: the task type's demo module, the storage root itself, the Variable's model name.
    assert params["hub_module"] is None and params["dataset"] is None and params["model_name"] is None


def test_runs_are_daily_partitions_the_run_after_midnight_processing_the_day_that_ended(dagbag):
    import pendulum
    from airflow.serialization.serialized_objects import DagSerialization
    from airflow.timetables.base import DagRunInfo, TimeRestriction

    dag = dagbag.dags["tfhub_finetune"]
    assert type(dag.timetable).__name__ == "CronPartitionTimetable"
    # What the scheduler sees.
    core = DagSerialization.deserialize_dag(DagSerialization.serialize_dag(dag)).timetable
    assert core.partitioned
    after = DagRunInfo(run_after=pendulum.datetime(2026, 11, 20), data_interval=None,
                       partition_date=pendulum.datetime(2026, 11, 19), partition_key="2026-11-19")
    nxt = core.next_dagrun_info_v2(last_dagrun_info=after, restriction=TimeRestriction(
        earliest=pendulum.datetime(2026, 11, 1), latest=None, catchup=True))
    assert (nxt.run_after, nxt.partition_key) == (pendulum.datetime(2026, 11, 21), "2026-11-20")
    # A backfill over a partition-date range: one run per date, keyed by that date.
    keys = [i.partition_key for i in core.iter_partition_dagrun_infos(
        earliest=pendulum.datetime(2026, 11, 5), latest=pendulum.datetime(2026, 11, 7))]
    assert keys == ["2026-11-05", "2026-11-06", "2026-11-07"]


def render(dag, template: str, partition_key=None, partition=None, data_interval_end=None) -> str:
    import types

    run = types.SimpleNamespace(partition_key=partition_key, data_interval_end=data_interval_end)
    return dag.get_template_env().from_string(template).render(
        dag_run=run, params={**{k: dag.params[k] for k in dag.params}, "partition": partition},
        var={"json": {"tfhub_pipeline": {"storage_root": "file:///srv", "model_name": "shapes"}}})


def test_every_stage_gets_the_run_partition_key(dagbag):
    import datetime as dt

    dag = dagbag.dags["tfhub_finetune"]
    sensor, prep = dag.get_task("wait_for_raw_partition"), dag.get_task("prepare_examples")
    finetune, evaluate, export = (dag.get_task(t) for t in ("finetune", "evaluate", "export_model"))
    rendered = {
        "raw": render(dag, sensor.path, "2026-11-05"),
        "--partition": render(dag, prep.job_args["--partition"], "2026-11-05"),
        "--output": render(dag, prep.job_args["--output"], "2026-11-05"),
        "run_dir": render(dag, finetune.run_dir, "2026-11-05"),
        "--examples": render(dag, evaluate.job_args["--examples"], "2026-11-05"),
        "version": render(dag, export.version, "2026-11-05"),
        "partition": render(dag, export.partition, "2026-11-05"),
    }
    assert rendered == {"raw": "file:///srv/raw/ds=2026-11-05", "--partition": "2026-11-05",
                        "--output": "file:///srv/examples/ds=2026-11-05", "run_dir": "file:///srv/runs/ds=2026-11-05",
                        "--examples": "file:///srv/examples/ds=2026-11-05", "version": "20261105",
                        "partition": "2026-11-05"}
    # Runs without a key: the partition param, else the day before the data interval's end, which is the day
    # `airflow dags test tfhub_finetune 2026-11-21` (interval [21, 21]) and a run of the old daily data-interval
    # schedule ([20, 21)) processed.
    assert render(dag, prep.job_args["--partition"], partition="2026-11-03") == "2026-11-03"
    assert render(dag, prep.job_args["--partition"],
                  data_interval_end=dt.datetime(2026, 11, 21, tzinfo=dt.timezone.utc)) == "2026-11-20"
    with pytest.raises(ValueError, match="partition key is 2026-11-05 but its partition param says 2026-11-06"):
        render(dag, prep.job_args["--partition"], "2026-11-05", partition="2026-11-06")
    with pytest.raises(ValueError, match="trigger it with a partition key"):
        render(dag, prep.job_args["--partition"])
    with pytest.raises(ValueError, match="not a date"):
        render(dag, prep.job_args["--partition"], "2026-02-30")


def test_dag_file_parses_without_tensorflow_or_pyspark():
    code = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(ROOT / 'plugins')!r})
        from airflow.dag_processing.dagbag import DagBag
        bag = DagBag(dag_folder={str(ROOT / 'dags')!r})
        assert not bag.import_errors, bag.import_errors
        heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'pyspark', 'tensorflow_hub', 'tasks'))
        print(heavy)
    """)
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.strip().splitlines()[-1] == "[]"


def test_layers_keep_their_imports():
    """tasks/ never imports airflow; dags/ and plugins/ never import tensorflow, pyspark or tasks at top level."""
    import ast

    def top_level_imports(path):
        mods = set()
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.Import):
                mods |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module:
                mods.add(node.module.split(".")[0])
        return mods

    def all_imports(path):
        return {(n.module or "").split(".")[0] for n in ast.walk(ast.parse(path.read_text()))
                if isinstance(n, ast.ImportFrom)} | {a.name.split(".")[0] for n in ast.walk(ast.parse(path.read_text()))
                                                     if isinstance(n, ast.Import) for a in n.names}

    for f in (ROOT / "tasks").rglob("*.py"):
        assert "airflow" not in all_imports(f), f
    for f in list((ROOT / "dags").rglob("*.py")) + list((ROOT / "plugins").rglob("*.py")):
        assert not top_level_imports(f) & {"tensorflow", "pyspark", "tensorflow_hub", "tasks"}, f
