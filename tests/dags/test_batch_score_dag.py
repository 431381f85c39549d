"""The batch-scoring DAG: its task graph, its schedule (each published partition), its params, and which
partition, version and model a run scores."""

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


def test_scheduled_once_per_published_partition(dag):
    from airflow.sdk import PartitionedAssetTimetable

    assert isinstance(dag.timetable, PartitionedAssetTimetable)
    assert dag.timetable.asset_condition.name == "tfhub_served_model"
    # What the scheduler sees: a partitioned DAG, so each partitioned event makes a run with its key.
    from airflow.serialization.serialized_objects import DagSerialization

    core = DagSerialization.deserialize_dag(DagSerialization.serialize_dag(dag)).timetable
    assert core.partitioned and type(core).__name__ == "PartitionedAssetTimetable"


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


def test_a_run_scores_its_partition_key_or_what_its_publication_names(dag):
    choose = dag.get_task("choose_run").python_callable
    params = {"partition": None, "version": None}
    keyed = types.SimpleNamespace(partition_key="2026-11-18", data_interval_end=None)
    assert choose("shapes", params=params, dag_run=keyed, triggering_asset_events={})["partition"] == "2026-11-18"
    # A run made by a publication: that partition, with exactly the published version.
    events = {"tfhub_served_model": [_event("shapes", 20261118)]}
    chosen = choose("shapes", params=params, dag_run=keyed, triggering_asset_events=events)
    assert (chosen["partition"], chosen["version"]) == ("2026-11-18", 20261118)
    # `airflow dags test tfhub_batch_score 2026-11-21` (no key; the interval [2026-11-21, 2026-11-21]).
    unkeyed = types.SimpleNamespace(partition_key=None, data_interval_end=dt.datetime(2026, 11, 21,
                                                                                       tzinfo=dt.timezone.utc))
    assert choose("shapes", params=params, dag_run=unkeyed, triggering_asset_events={})["partition"] == "2026-11-20"
    assert choose("shapes", params={**params, "partition": "2026-11-02"}, dag_run=unkeyed,
                  triggering_asset_events={})["partition"] == "2026-11-02"
