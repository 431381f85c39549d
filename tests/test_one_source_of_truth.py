"""One source of truth across the process boundary: what the DAGs and operators (``dags/``, ``plugins/``, which never
import ``tasks``) say about the jobs agrees with what the jobs (``tasks/``) say about themselves.

- a DAG Param passed to a job option has the job's default for it (the job's ``Config`` holds the only defaults);
- an operator declares no default of a job option (it passes only what the run sets);
- the Airflow side's copy of the run-folder file names and of the version rule agrees with the jobs';
- every option of every job has ``--help`` text, from its ``Config`` field's docstring;
- the README's parameter table lists every DAG Param with its default.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import importlib
import inspect
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
JOBS = ("prepare_examples", "finetune", "evaluate", "export_model", "score_partition")
DAGS = ("tfhub_finetune", "tfhub_batch_score")
# A job option whose value is a DAG Param as it is, or empty (left out) when the Param is null.
PARAM_TEMPLATE = re.compile(r"^\{\{ params\.(\w+)(?: or '')? \}\}$")


@pytest.fixture(scope="module")
def dagbag():
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(ROOT / "dags"))
    assert bag.import_errors == {}
    return bag


def job_module(job: str):
    return importlib.import_module(f"tasks.{job}")


def required_argv(job: str) -> list[str]:
    """The job's required options, with valid values."""
    argv = []
    for f in dataclasses.fields(job_module(job).Config):
        if f.default is dataclasses.MISSING:
            value = "shapes" if f.name == "model_name" else "20261120" if f.type == "int" else \
                "2026-11-20" if f.name == "partition" else f"file:///srv/tfhub/{f.name}"
            argv += ["--" + f.name.replace("_", "-"), value]
    if job == "score_partition":
        argv += ["--raw", "file:///srv/tfhub/raw/ds=2026-11-20"]
    return argv


def param_options(dag):
    """(task, job, flag, param) for every job option a DAG sets from one of its Params."""
    from tfhub_spark.operators.spark_job import PipelineSparkSubmitOperator

    for task in dag.tasks:
        if not isinstance(task, PipelineSparkSubmitOperator):
            continue
        args = task.build_application_args()
        for flag, value in zip(args[::2], args[1::2]):
            if m := PARAM_TEMPLATE.match(value):
                yield task.task_id, task.job, flag, m.group(1)


@pytest.mark.parametrize("dag_id", DAGS)
def test_every_dag_param_default_is_the_jobs_default(dagbag, dag_id):
    dag = dagbag.dags[dag_id]
    checked = 0
    for task_id, job, flag, param in param_options(dag):
        default = dag.params[param]
        if default is None or default == "":
            continue  # left out of the command line: the job's default applies
        parse = job_module(job).parse_args
        base = required_argv(job)
        # str(default): what {{ params.x }} renders
        assert parse(base + [flag, str(default)]) == parse(base), (
            f"{dag_id} param {param!r} defaults to {default!r}, but {job} {flag} defaults to something else: "
            f"change the Param's default to the job's (tasks/{job}.py, Config)")
        checked += 1
    assert checked >= (10 if dag_id == "tfhub_finetune" else 5)


def test_the_finetune_dag_passes_every_tuning_param(dagbag):
    """The fine-tuning params reach the job (the operator passes only what the run sets)."""
    dag = dagbag.dags["tfhub_finetune"]
    flags = {(task_id, flag): param for task_id, _, flag, param in param_options(dag)}
    for name in ("epochs", "batch_size", "learning_rate", "num_workers", "fine_tune", "module_lr_scale",
                 "max_restarts", "image_size"):
        assert flags.get(("finetune", "--" + name.replace("_", "-"))) == name, name
    for name in ("labels_file", "id_column", "label_column", "image_column", "text_column"):
        assert flags.get(("prepare_examples", "--" + name.replace("_", "-"))) == name, name


def test_every_prep_option_is_reachable_from_the_dag(dagbag):
    """Every option of prepare_examples is a Param of the DAG, or one the DAG derives (paths, the shard count)."""
    derived = {"--raw", "--output", "--min-shards", "--vocabulary", "--quarantine", "--previous-stats"}
    args = dagbag.dags["tfhub_finetune"].get_task("prepare_examples").build_application_args()
    # wired: the value is made from the Param of the option's name
    wired = {flag for flag, value in zip(args[::2], args[1::2])
             if re.search(r"\bparams\." + flag[2:].replace("-", "_") + r"\b", value)}
    parser_flags = {a.option_strings[0] for a in _parser("prepare_examples")._actions if a.option_strings[0] != "-h"}
    assert parser_flags - wired - derived == set()


@pytest.mark.parametrize("operator, job", [("TfHubFinetuneOperator", "finetune"),
                                           ("ModelExportOperator", "export_model")])
def test_operators_declare_no_job_default(operator, job):
    from tfhub_spark.operators import spark_job

    cls = getattr(spark_job, operator)
    options = {f.name for f in dataclasses.fields(job_module(job).Config)}
    params = inspect.signature(cls.__init__).parameters
    redeclared = {name: p.default for name, p in params.items()
                  if name in options and p.default not in (inspect.Parameter.empty, None)}
    assert redeclared == {}, f"{operator} re-declares defaults of {job}'s options: {redeclared}"
    # What the operator passes is an option of the job.
    assert set(cls.JOB_OPTIONS) <= options
    assert set(cls.JOB_OPTIONS) <= set(params)


def test_the_run_folder_names_agree():
    from tfhub_spark import run_folder as airflow_side

    from tasks.core import run_folder

    names = {k: v for k, v in vars(airflow_side).items() if k.isupper()}
    assert names and names == {k: getattr(run_folder, k) for k in names}


def test_no_run_folder_name_literal_outside_its_module():
    literal = re.compile(r"[\"'](history|published|blessing|metrics|finetune_config)\.json[\"']")
    for path in list((ROOT / "tasks").rglob("*.py")) + list((ROOT / "plugins").rglob("*.py")) + \
            list((ROOT / "dags").rglob("*.py")):
        if path.name == "run_folder.py":
            continue
        assert not literal.search(path.read_text()), path


def test_both_sides_give_the_same_version_for_a_date():
    from tfhub_spark.partition import partition_version

    from tasks.core.partition import version_of

    day = dt.date(1999, 12, 25)
    while day < dt.date(2031, 3, 1):
        ds = day.isoformat()
        assert partition_version(ds) == version_of(ds), ds
        day += dt.timedelta(days=7)
    for ds in ("2026-01-01", "2026-12-31", "2028-02-29", "2026-11-20"):
        assert partition_version(ds) == version_of(ds) == int(ds.replace("-", ""))


def _parser(job: str):
    """The job's argparse parser, as its parse_args builds it."""
    import argparse

    captured = {}
    original = argparse.ArgumentParser.parse_args

    def capture(self, args=None, namespace=None):
        captured["parser"] = self
        raise SystemExit(0)

    argparse.ArgumentParser.parse_args = capture
    try:
        with pytest.raises(SystemExit):
            job_module(job).parse_args([])
    finally:
        argparse.ArgumentParser.parse_args = original
    return captured["parser"]


@pytest.mark.parametrize("job", JOBS)
def test_every_job_option_has_help(job):
    parser = _parser(job)
    missing = [a.option_strings[0] for a in parser._actions if a.option_strings and not (a.help or "").strip()]
    assert missing == []
    # and it is the Config's docstring, not a second copy
    from tasks.core import runtime

    docs = runtime.field_docs(job_module(job).Config)
    for action in parser._actions:
        name = action.dest
        if name in docs:
            assert action.help.replace("%%", "%").startswith(docs[name]), name


@pytest.mark.parametrize("job", JOBS)
def test_help_on_the_command_line(job):
    res = subprocess.run([sys.executable, str(ROOT / "tasks" / f"{job}.py"), "--help"], capture_output=True,
                         text=True, timeout=120, cwd=ROOT)
    assert res.returncode == 0, res.stderr[-2000:]
    from tasks.core import runtime

    docs = runtime.field_docs(job_module(job).Config)
    assert docs
    flat = "".join(res.stdout.split())  # the help wraps lines, and may break them at hyphens
    for name, doc in docs.items():
        if name == "task_type" and job == "score_partition":
            continue  # not an option
        assert "".join(doc.split()[:6]) in flat, (job, name)


def test_the_readme_tables_are_the_params(dagbag):
    """README.md's parameter tables are what ``scripts/params_table.py`` writes from the DAGs' Params."""
    import runpy

    table = runpy.run_path(str(ROOT / "scripts" / "params_table.py"))
    readme = (ROOT / "README.md").read_text()
    for dag_id in DAGS:
        assert f"<!-- params: {dag_id} -->" in readme, dag_id
    assert table["render"](readme, dagbag.dags) == readme, "run: python scripts/params_table.py"
    for dag_id in DAGS:  # every Param is a row
        for name in dagbag.dags[dag_id].params:
            assert f"| `{name}` |" in readme, (dag_id, name)


def test_image_size_is_a_typed_param_passed_only_when_set(dagbag):
    import jinja2
    from airflow.sdk.definitions.param import ParamValidationError

    dag = dagbag.dags["tfhub_finetune"]
    param = dag.params.get_param("image_size")
    assert param.schema["type"] == ["null", "integer"] and dag.params["image_size"] is None
    for bad in ("224px", 0, 2.5):
        with pytest.raises(ParamValidationError):
            param.resolve(bad)
    template = jinja2.Template(dag.get_task("finetune").image_size)
    assert template.render(params={"image_size": None}) == ""  # left out: the module's own size
    assert template.render(params={"image_size": 224}) == "224"
