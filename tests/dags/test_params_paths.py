"""The folder-naming params (``dataset``, ``model_name``) refuse names that step out of the storage root, through
the validation a trigger goes through: the DAG serialized as the API server holds it, its params merged with the
trigger's conf and validated (``SerializedDAG.create_dagrun``, which ``POST /dags/{dag_id}/dagRuns`` calls and
answers 400 on failure); and the jobs' own check agrees with the schema."""

from __future__ import annotations

from pathlib import Path

import pytest

from tasks.io import storage

ROOT = Path(__file__).resolve().parents[2]
NAMES = ["shapes", "topics", "my.set-1_x", "v2.0", "_x", "...", "..", ".", ".hidden", "a/b", "a b", ""]


@pytest.fixture(scope="module")
def dagbag():
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(ROOT / "dags"))


@pytest.fixture(scope="module", params=["tfhub_finetune", "tfhub_batch_score"])
def params(request, dagbag):
    from airflow.serialization.serialized_objects import DagSerialization

    dag = dagbag.dags[request.param]
    return DagSerialization.from_dict(DagSerialization.to_dict(dag)).params


@pytest.mark.parametrize("param", ["dataset", "model_name"])
@pytest.mark.parametrize("value", ["..", ".", ".hidden"])
def test_a_dot_name_is_refused_at_trigger(params, param, value):
    from airflow.sdk.exceptions import ParamValidationError

    with pytest.raises(ParamValidationError, match=f"Invalid input for param {param}: '{value}' does not match"):
        params.deep_merge({param: value}).validate()


def test_plain_names_and_empty_are_accepted(params):
    for conf in ({}, {"dataset": None, "model_name": None}, {"dataset": "topics", "model_name": "my.model-2_x"}):
        resolved = params.deep_merge(conf).validate()
        assert (resolved["dataset"], resolved["model_name"]) == (conf.get("dataset"), conf.get("model_name"))


def test_the_jobs_check_agrees_with_the_schema(params):
    """Two sides of one rule: a model name the trigger accepts is one the jobs accept, and the other way round."""
    from airflow.sdk.exceptions import ParamValidationError

    for name in NAMES:
        try:
            params.deep_merge({"model_name": name}).validate()
            schema_ok = True
        except ParamValidationError:
            schema_ok = False
        assert schema_ok == (storage.check_name(name, "--model-name") is None), name
