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
    order = ["wait_for_raw_partition", "prepare_examples", "finetune", "evaluate", "gate", "export_model"]
    assert sorted(dag.task_ids) == sorted(order)
    for up, down in zip(order, order[1:]):
        assert dag.get_task(up).downstream_task_ids == {down}
    assert dag.get_task("export_model").downstream_task_ids == set()
    assert dag.get_task("finetune").pool == "tfhub_training"
    assert type(dag.get_task("finetune")).__name__ == "TfHubFinetuneOperator"
    assert [o.name for o in dag.get_task("export_model").outlets] == ["tfhub_served_model"]


def test_consumer_is_scheduled_on_the_published_model(dagbag):
    consumer = dagbag.dags["tfhub_model_consumer"]
    assert [a.name for a in consumer.timetable.asset_condition.objects] == ["tfhub_served_model"]


def test_params_have_defaults_for_scheduled_runs(dagbag):
    params = dagbag.dags["tfhub_finetune"].params
    for name in ("task_type", "layout", "epochs", "batch_size", "learning_rate", "num_workers", "fine_tune", "min_accuracy",
                 "min_class_recall", "baseline_tolerance"):
        assert params[name] is not None, name
    assert params["partition"] is None
    # Empty: the task type's demo module, the storage root itself, the Variable's model name.
    assert params["hub_module"] is None and params["dataset"] is None and params["model_name"] is None


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
