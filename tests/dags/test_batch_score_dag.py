"""The batch-scoring DAG: its task graph, its schedule (daily and on every published model), its params, and
which partition, version and model a run scores."""

from __future__ import annotations

import datetime as dt
import types
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def dag():
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(ROOT / "dags" / "tfhub_batch_score.py"))
    assert bag.import_errors == {}
    return bag.dags["tfhub_batch_score"]


def test_task_graph_uses_the_pipeline_operators_and_sensor(dag):
    order = ["choose_run", "wait_for_raw_partition", "score_partition", "summarize"]
    assert sorted(dag.task_ids) == sorted(order)
    for up, down in zip(order, order[1:]):
        assert dag.get_task(up).downstream_task_ids == {down}
    assert type(dag.get_task("wait_for_raw_partition")).__name__ == "PartitionReadySensor"
    score = dag.get_task("score_partition")
    assert type(score).__name__ == "PipelineSparkSubmitOperator" and score.job == "score_partition"
    assert score.conf == {"spark.python.worker.reuse": "true"}
    assert score.job_args["--output"].endswith("/predictions/{{ ti.xcom_pull(task_ids='choose_run')['model_name'] }}"
                                               "/ds={{ ti.xcom_pull(task_ids='choose_run')['partition'] }}")


def test_scheduled_daily_and_on_every_published_model(dag):
    from airflow.sdk import AssetOrTimeSchedule, CronDataIntervalTimetable

    # The serialized DAG is what the scheduler sees.
    assert type(dag.timetable).__name__ == "AssetOrTimeSchedule" or isinstance(dag.timetable, AssetOrTimeSchedule)
    assert [a.name for a in dag.timetable.asset_condition.objects] == ["tfhub_served_model"]
    inner = dag.timetable.timetable
    assert isinstance(inner, CronDataIntervalTimetable) or type(inner).__name__ == "CronDataIntervalTimetable"


def test_params_are_typed_with_defaults_for_scheduled_runs(dag):
    params = dag.params
    assert params["partition"] is None and params["version"] is None and params["model_name"] is None
    assert params["batch_size"] == 64 and params["layout"] == "manifest"
    schema = dag.params.get_param("version").schema
    assert schema["type"] == ["null", "integer"] and schema["minimum"] == 1
    from airflow.sdk.definitions.param import ParamValidationError

    with pytest.raises(ParamValidationError):
        dag.params.get_param("version").resolve(0)
    with pytest.raises(ParamValidationError):
        dag.params.get_param("layout").resolve("tsv")


def _event(model_name, version):
    return types.SimpleNamespace(extra={"model_name": model_name, "version": version})


def test_a_scheduled_run_scores_its_interval_with_the_highest_version():
    from tfhub_spark.batch_score import choose_run

    start = dt.datetime(2026, 11, 20, tzinfo=dt.timezone.utc)
    assert choose_run("shapes", None, None, start, {})["partition"] == "2026-11-20"
    assert choose_run("shapes", None, None, start, {})["version"] is None  # the job's default: the highest
    pinned = choose_run("shapes", "2026-11-18", 20261101, start, {})
    assert (pinned["partition"], pinned["version"]) == ("2026-11-18", 20261101)


def test_a_publication_scores_its_own_partition_with_its_version_and_ignores_other_models():
    from tfhub_spark.batch_score import choose_run

    events = {"tfhub_served_model": [_event("shapes", 20261119), _event("topics", 20261121),
                                     _event("shapes", 20261120)]}
    chosen = choose_run("shapes", None, None, None, events)
    assert (chosen["partition"], chosen["version"], chosen["model_name"]) == ("2026-11-20", 20261120, "shapes")
    assert choose_run("other", None, None, None, events) == {}
    with pytest.raises(ValueError, match="not a date YYYYMMDD"):
        choose_run("shapes", None, None, None, {"a": [_event("shapes", 7)]})
