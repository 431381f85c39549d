"""Shared fixtures: an isolated Airflow home, a small hub module, generated image partitions, and what is costly
and can be shared across modules, built once per session: the demo hub module, a prepared demo dataset, a whole
DAG run that trained and published a demo model (image and text), and one ``airflow standalone``.

Session fixtures are read-only for their users: a test that writes copies them first (``copy_storage``).
Every run ends with ``pytest total: N s`` and the ten slowest tests, with their phases.

``make test`` runs the suite on two pytest-xdist workers (``-n 2``): most of a whole-DAG test is
one busy core (a JVM or a Python starting, the scheduler's loop), so two of them fill the machine's two. The tests
that share a session fixture which is a running service or a trained DAG run form one group (``GROUPS``), run by
one worker in file order, and so do the tests of a file with a module-scoped fixture; the session's files that
only need building once (hub module, prepared dataset) are built by the first worker that needs them and reused
by the other (``built_once``).
"""

from __future__ import annotations

import dataclasses
import fcntl
import functools
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# Before anything imports airflow or tensorflow: a throw-away Airflow home for in-process tests (the e2e tests
# make their own), legacy Keras for hub.KerasLayer, no example DAGs.
_HOME = tempfile.mkdtemp(prefix="tfhub-test-airflow-")
os.environ["AIRFLOW_HOME"] = _HOME
os.environ["AIRFLOW__CORE__LOAD_EXAMPLES"] = "False"
os.environ["AIRFLOW__CORE__DAGS_FOLDER"] = str(ROOT / "dags")
os.environ["AIRFLOW__CORE__PLUGINS_FOLDER"] = str(ROOT / "plugins")
os.environ["TF_USE_LEGACY_KERAS"] = "1"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# Spark's Python workers inherit the environment, not sys.path: they need the repository to import `tasks`.
os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
os.environ["PYSPARK_PYTHON"] = sys.executable
os.environ["PYSPARK_DRIVER_PYTHON"] = sys.executable


def built_once(tmp_path_factory: pytest.TempPathFactory, name: str, build: Callable[[Path], None]) -> Path:
    """The folder ``name``, filled by ``build(folder)`` once per test session, also when the session runs on
    several xdist workers: the first worker to ask builds it under a lock in the folder the workers share, the
    others wait for it and reuse it. Read-only for its users, like every session fixture."""
    if "PYTEST_XDIST_WORKER" not in os.environ:
        folder = tmp_path_factory.mktemp(name)
        build(folder)
        return folder
    shared = tmp_path_factory.getbasetemp().parent  # the session's basetemp; each worker's is a folder in it
    folder, done = shared / name, shared / f"{name}.built"
    with open(shared / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not done.exists():
            shutil.rmtree(folder, ignore_errors=True)  # what a worker that failed half way left
            folder.mkdir()
            build(folder)
            done.touch()
    return folder


# The tests that share a running service or a trained DAG run, by file: each group runs on one xdist worker, in
# file order, the groups first, in this order, so that the other worker fills in around them. The first two start
# together: one builds the demo hub module while the other starts the minicluster and needs the module later.
# (name, the session fixtures that make them one group, their files or folders)
GROUPS = (
    ("airflow-standalone", {"scheduler_airflow"},
     ("tests/e2e/test_scheduler.py", "tests/e2e/test_approval.py", "tests/e2e/test_browser.py")),
    ("minihadoop", {"minihadoop"}, ("tests/hadoop/",)),
    ("trained-dag-runs", {"trained_demo_run", "trained_text_run"},
     ("tests/e2e/test_pipeline_e2e.py", "tests/e2e/test_text_pipeline_e2e.py", "tests/e2e/test_batch_score_e2e.py",
      "tests/e2e/test_crash_retry.py")),
    ("spark-standalone", set(), ("tests/standalone/",)),
)
# Of the airflow-standalone group, these unpause tfhub_finetune, which makes the scheduler create the run of the
# day that just ended: they run after test_scheduler.py, whose late-partition test expects to be the first to
# unpause it (see scheduler_airflow).
AFTER_THE_SCHEDULER_TESTS = ("test_approval.py", "test_browser.py")


def group_of(nodeid: str) -> int:
    """The index in ``GROUPS`` of the test ``nodeid``'s group; ``len(GROUPS)`` for a test of no group."""
    path = nodeid.split("::")[0]
    return next((k for k, (_, _, files) in enumerate(GROUPS)
                 if any(path == f or (f.endswith("/") and path.startswith(f)) for f in files)), len(GROUPS))


def pytest_collection_modifyitems(config, items) -> None:
    for item in items:
        k = group_of(item.nodeid)
        for name, fixtures, _ in GROUPS:
            if fixtures & set(item.fixturenames) and (k == len(GROUPS) or GROUPS[k][0] != name):
                raise pytest.UsageError(f"{item.nodeid} uses {sorted(fixtures & set(item.fixturenames))}: add its "
                                        f"file to the group {name!r} in GROUPS of tests/conftest.py")
    items.sort(key=lambda item: (group_of(item.nodeid), item.path.name in AFTER_THE_SCHEDULER_TESTS))  # stable


@functools.cache
def has_module_fixtures(path: str) -> bool:
    """Whether the test file ``path`` (relative to the repository) defines a module-scoped fixture."""
    return 'scope="module"' in (ROOT / path).read_text()


def pytest_xdist_make_scheduler(config, log):
    """Load scheduling in which a group of ``GROUPS`` is one unit of work (sent whole to one worker), so is a file
    that defines a module-scoped fixture (built once, its tests in file order), and every other test is a unit of
    its own, in collection order. (xdist's own ``--dist loadgroup`` marks the groups in the test ids, which pytest 9
    no longer lets it do.)"""
    from xdist.scheduler import LoadScopeScheduling

    class GroupScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            k = group_of(nodeid)
            path = nodeid.split("::")[0]
            return GROUPS[k][0] if k < len(GROUPS) else path if has_module_fixtures(path) else nodeid

    config.option.loadscopereorder = False  # keep the collection order: the groups first, in GROUPS' order
    return GroupScheduling(config, log)


@pytest.fixture(scope="session")
def small_hub_module(tmp_path_factory) -> Path:
    """A demo hub module with little pre-training: for tests of the module API and the plumbing, not accuracy."""
    from tasks.demo import make_hub_module

    def build(folder: Path) -> None:
        make_hub_module.run(make_hub_module.Config(output=f"file://{folder / 'small_fv'}", image_size=32,
                                                   feature_dim=16, pretext_images=220, epochs=1, batch_size=32))

    return built_once(tmp_path_factory, "hub", build) / "small_fv"


# As config/embedded sets them: the JIT's top tier costs short-lived JVMs more CPU than it saves them, and the class-data
# sharing archive of `make spark-cds` (scripts/spark_cds.sh) saves a third of a short job's JVM CPU; the JVM
# ignores an archive that is missing or does not match.
SPARK_DRIVER_JAVA_OPTIONS = ("-XX:TieredStopAtLevel=1 -XX:SharedArchiveFile="
                             + os.environ.get("TFHUB_SPARK_CDS", str(ROOT / "var" / "spark-cds" / "driver.jsa")))


@pytest.fixture(scope="session")
def spark(tmp_path_factory):
    """A real local[2] Spark session, shared by the tests of the Spark stages."""
    from pyspark.sql import SparkSession

    session = (SparkSession.builder.master("local[2]").appName("tfhub-tests")
               .config("spark.ui.enabled", "false")
               # Its catalog's default database folder, made when a test uses Spark SQL tables: not in the checkout.
               .config("spark.sql.warehouse.dir", str(tmp_path_factory.mktemp("spark-warehouse")))
               .config("spark.sql.shuffle.partitions", "4")
               .config("spark.python.worker.reuse", "false")
               .config("spark.driver.extraJavaOptions", SPARK_DRIVER_JAVA_OPTIONS)
               .getOrCreate())
    session.sparkContext.setLogLevel("WARN")
    yield session
    session.stop()


def make_partition(raw_root: Path, ds: str, num_images: int, seed: int | None = None) -> Path:
    from tasks.demo import make_dataset

    make_dataset.run(make_dataset.Config(raw_root=f"file://{raw_root}", ds=ds, num_images=num_images, seed=seed))
    return raw_root / f"ds={ds}"


@pytest.fixture(scope="session")
def demo_hub_module(tmp_path_factory) -> Path:
    """The demo hub module with its default pre-training (about 90 s), built once per test session."""
    from tasks.demo import make_hub_module

    def build(folder: Path) -> None:
        make_hub_module.run(make_hub_module.Config(output=f"file://{folder / 'shapes_fv_32'}"))

    return built_once(tmp_path_factory, "demo_hub", build) / "shapes_fv_32"


def install_hub_module(module: Path, storage: Path) -> None:
    """Puts a built hub module where the DAG's default ``hub_module`` param looks: ``<storage>/hub/shapes_fv_32``."""
    shutil.copytree(module, storage / "hub" / "shapes_fv_32")


# --- the closing summary: the session's wall time and the ten slowest tests --------------------------------------

_SESSION_START = time.monotonic()
_PHASES: dict[str, dict[str, float]] = {}
_SUMMARY_PRINTED: list[bool] = []


def pytest_runtest_logreport(report) -> None:
    _PHASES.setdefault(report.nodeid, {})[report.when] = report.duration


@pytest.hookimpl(trylast=True)
def pytest_terminal_summary(terminalreporter) -> None:
    if _SUMMARY_PRINTED:  # an interrupted session calls this hook twice
        return
    _SUMMARY_PRINTED.append(True)
    total = time.monotonic() - _SESSION_START
    slowest = sorted(_PHASES.items(), key=lambda kv: sum(kv[1].values()), reverse=True)[:10]
    tr = terminalreporter
    tr.write_sep("=", "time budget")
    tr.write_line(f"pytest total: {total:.0f} s ({total / 60:.1f} min, budget of `make test`: 35 min)")
    tr.write_line("slowest ten tests (setup includes the module or session fixtures the test was the first to use):")
    for nodeid, phases in slowest:
        parts = ", ".join(f"{when} {phases[when]:.1f} s" for when in ("setup", "call", "teardown") if when in phases)
        tr.write_line(f"{sum(phases.values()):8.1f} s  {nodeid}  ({parts})")
    by_file: dict[str, float] = {}
    for nodeid, phases in _PHASES.items():
        name = nodeid.split("::")[0]
        by_file[name] = by_file.get(name, 0.0) + sum(phases.values())
    tr.write_line("slowest ten test files (all their tests and the fixtures they were the first to use):")
    for name, seconds in sorted(by_file.items(), key=lambda kv: kv[1], reverse=True)[:10]:
        tr.write_line(f"{seconds:8.1f} s  {name}")


# --- session fixtures that tests of several modules share ------------------------------------------------------

def airflow_env(home: Path, storage: Path) -> dict:
    """The environment of an Airflow CLI on its own home and storage root."""
    env = dict(os.environ)
    env.update(AIRFLOW_HOME=str(home), TFHUB_STORAGE_ROOT=f"file://{storage}")
    return env


def airflow_sh(cmd: str, env: dict, timeout: int) -> subprocess.CompletedProcess:
    """Runs ``cmd`` in bash with ``scripts/env.sh`` sourced, from the repository root."""
    return subprocess.run(["bash", "-c", f". {ROOT}/scripts/env.sh && {cmd}"], env=env, capture_output=True,
                          text=True, timeout=timeout, cwd=ROOT)


def setup_airflow_home(home: Path, storage: Path) -> dict:
    """An Airflow home set up by the project's script for the storage root ``storage``; returns its env."""
    env = airflow_env(home, storage)
    setup = airflow_sh("bash scripts/setup_airflow.sh", env, timeout=300)
    assert setup.returncode == 0, setup.stdout[-3000:] + setup.stderr[-3000:]
    return env


@dataclasses.dataclass(frozen=True)
class DagRunResult:
    """One ``airflow dags test tfhub_finetune`` on its own Airflow home and storage root. Read-only for its users.

    Attributes:
        base: the folder holding ``airflow/`` (the Airflow home), ``storage/`` and ``dags-test.log``.
        storage: the storage root (a plain path; the DAG saw ``file://<storage>``).
        env: the environment the run had (``AIRFLOW_HOME``, ``TFHUB_STORAGE_ROOT``).
        ds: the partition the run processed.
        run_date: the logical date given to ``airflow dags test``.
        result: the finished ``airflow dags test`` process (``returncode``, ``stdout``, ``stderr``).
    """

    base: Path
    storage: Path
    env: dict
    ds: str
    run_date: str
    result: subprocess.CompletedProcess

    @property
    def output(self) -> str:
        return self.result.stdout + self.result.stderr


DEMO_DS = "2026-11-20"
DEMO_RUN_DATE = "2026-11-21"


@pytest.fixture(scope="session")
def trained_demo_run(tmp_path_factory, demo_hub_module) -> DagRunResult:
    """The image demo through the whole DAG, once per session: the demo hub module at ``hub/shapes_fv_32``, the
    generated 600-image partition ``raw/ds=2026-11-20``, prepared into ``examples/ds=2026-11-20``, trained and
    evaluated in ``runs/ds=2026-11-20`` (15 epochs, default params) and published as
    ``serving/shapes/20261120``, by ``airflow dags test tfhub_finetune`` with ``{"partition": "2026-11-20"}`` and
    no logical date (as ``make demo`` runs it). ``DEMO_RUN_DATE`` is the logical date whose run processes the same
    partition without the param (the day before the end of its data interval), for tests that run it that way.

    The run's success is not asserted here (the end-to-end test does): check ``result.returncode`` first.
    Read-only: copy it (``copy_storage``) to write.
    """
    from tasks.demo import make_dataset

    base = tmp_path_factory.mktemp("trained-demo")
    home, storage = base / "airflow", base / "storage"
    env = setup_airflow_home(home, storage)
    install_hub_module(demo_hub_module, storage)
    make_dataset.run(make_dataset.Config(raw_root=f"file://{storage}/raw", ds=DEMO_DS))
    res = airflow_sh(f"airflow dags test tfhub_finetune -c '{json.dumps({'partition': DEMO_DS})}'", env, timeout=1500)
    (base / "dags-test.log").write_text(res.stdout + res.stderr)
    return DagRunResult(base, storage, env, DEMO_DS, DEMO_RUN_DATE, res)


TEXT_CONF = {"task_type": "text_classification", "layout": "csv", "dataset": "topics", "model_name": "topics"}
TEXT_BAD_ROWS = [("bad-blank", "   ", "sports"), ("bad-nolabel", "a text with no label at all", "")]  # id,text,label


@pytest.fixture(scope="session")
def trained_text_run(tmp_path_factory) -> DagRunResult:
    """The text demo through the whole DAG, once per session, with ``TEXT_CONF``: the demo text module at
    ``hub/text_embed_64`` (default pre-training), a generated CSV partition ``topics/raw/ds=2026-11-20`` of 600
    texts plus ``TEXT_BAD_ROWS``, prepared, trained (15 epochs), evaluated and published as
    ``serving/topics/20261120``. Success is not asserted here; read-only.
    """
    import csv

    from tasks.demo import make_text_dataset, make_text_module

    base = tmp_path_factory.mktemp("trained-text")
    home, storage = base / "airflow", base / "storage"
    env = setup_airflow_home(home, storage)
    # Where the DAG looks when hub_module is empty and task_type is text_classification.
    make_text_module.run(make_text_module.Config(output=f"file://{storage}/hub/text_embed_64"))
    make_text_dataset.run(make_text_dataset.Config(raw_root=f"file://{storage}/topics/raw", ds=DEMO_DS))
    part = storage / "topics" / "raw" / f"ds={DEMO_DS}"
    (part / "_SUCCESS").unlink()
    with open(part / "texts.csv", "a", newline="") as f:
        csv.writer(f).writerows(TEXT_BAD_ROWS)
    (part / "_SUCCESS").write_bytes(b"")
    res = airflow_sh(f"airflow dags test tfhub_finetune -c '{json.dumps({**TEXT_CONF, 'partition': DEMO_DS})}'", env,
                     timeout=1500)
    (base / "dags-test.log").write_text(res.stdout + res.stderr)
    return DagRunResult(base, storage, env, DEMO_DS, DEMO_RUN_DATE, res)


def copy_storage(run: DagRunResult, dest: Path) -> tuple[Path, dict]:
    """A writable copy of a session run: its storage root under ``dest/storage`` and a copy of its Airflow home
    under ``dest/airflow`` (database, connections, pools). Returns the storage root and the environment for
    ``airflow_sh``, in which the ``tfhub_pipeline`` Variable names the copy (``AIRFLOW_VAR_TFHUB_PIPELINE``, which
    Airflow reads before the database), so no setup runs again.
    """
    storage, home = dest / "storage", dest / "airflow"
    shutil.copytree(run.storage, storage, symlinks=True)
    shutil.copytree(run.base / "airflow", home, ignore=shutil.ignore_patterns("logs", "airflow.cfg", "*.pid"))
    # airflow.cfg holds the Fernet key the connections are encrypted with: keep it, with its paths (database, logs)
    # moved under the new home.
    cfg = (run.base / "airflow" / "airflow.cfg").read_text()
    (home / "airflow.cfg").write_text(cfg.replace(str(run.base / "airflow"), str(home)))
    variables = json.loads((home / "rendered-config" / "variables.json").read_text())
    pipeline = {**variables["tfhub_pipeline"], "storage_root": f"file://{storage}"}
    env = airflow_env(home, storage)
    env["AIRFLOW_VAR_TFHUB_PIPELINE"] = json.dumps(pipeline)
    return storage, env


@dataclasses.dataclass(frozen=True)
class PreparedDataset:
    """A generated demo partition and its prepared examples, built once per session. Read-only.

    Attributes:
        root: a storage root holding ``raw/ds=<ds>/`` and ``examples/ds=<ds>/``.
        ds: the partition.
        num_images: records in the raw partition.
        min_shards: ``--min-shards`` of the prep (4: two per worker of a 2-worker training).
    """

    root: Path
    ds: str
    num_images: int
    min_shards: int

    @property
    def raw(self) -> Path:
        return self.root / "raw" / f"ds={self.ds}"

    @property
    def examples(self) -> Path:
        return self.root / "examples" / f"ds={self.ds}"

    def copy_to(self, root: Path) -> Path:
        """Copies ``raw/`` and ``examples/`` under another storage root; returns its ``examples/ds=...``."""
        for sub in ("raw", "examples"):
            shutil.copytree(self.root / sub, root / sub, dirs_exist_ok=True)
        return root / "examples" / f"ds={self.ds}"


@pytest.fixture(scope="session")
def prepared_demo_dataset(tmp_path_factory, request) -> PreparedDataset:
    """The demo's 600-image partition ``2026-11-20`` (default seed), prepared by the prep stage on the shared
    local Spark session with 4 shards minimum: the dataset of the tests that train on "a dataset"."""
    from tasks import prepare_examples as P

    def build(root: Path) -> None:
        data = PreparedDataset(root, DEMO_DS, 600, 4)
        make_partition(root / "raw", data.ds, data.num_images)
        P.run(P.Config(raw=f"file://{data.raw}", output=f"file://{data.examples}", partition=data.ds,
                       min_shards=data.min_shards), request.getfixturevalue("spark"))

    return PreparedDataset(built_once(tmp_path_factory, "prepared-demo", build), DEMO_DS, 600, 4)


# One `airflow standalone` for the session's scheduler tests; stopped after the last test that uses it, so that
# its scheduler and DAG processor do not compete with the rest of the suite for the CPUs.
_STANDALONE_USERS: list = []
_STANDALONE: list = []


def pytest_collection_finish(session) -> None:
    _STANDALONE_USERS[:] = [item for item in session.items if "scheduler_airflow" in getattr(item, "fixturenames", ())]


@pytest.hookimpl(wrapper=True)
def pytest_runtest_teardown(item, nextitem):
    try:
        return (yield)
    finally:
        if _STANDALONE and _STANDALONE_USERS and item is _STANDALONE_USERS[-1]:
            _STANDALONE.pop().stop()


@pytest.fixture(scope="session")
def scheduler_airflow(tmp_path_factory, demo_hub_module):
    """A running ``airflow standalone`` (scheduler, DAG processor, triggerer, API server) on its own Airflow home
    and storage root (``.storage``, with the demo hub module at ``hub/shapes_fv_32``), shared by every test of
    the session that drives the DAGs through a real scheduler; stopped after the last of them.

    The DAGs start paused; a test that unpauses one pauses it again. Runs stay in the database: count what a test
    adds, never assume an empty list. Unpausing ``tfhub_finetune`` makes the scheduler create the run of the
    latest daily interval, which tests/e2e/test_scheduler.py's late-partition test expects to be the first to
    create: other modules leave ``tfhub_finetune`` paused (their own DAGs are theirs to unpause).
    """
    from tests.support.airflow_standalone import AirflowStandalone

    base = tmp_path_factory.mktemp("scheduler")
    storage = base / "storage"
    storage.mkdir()
    install_hub_module(demo_hub_module, storage)
    airflow = AirflowStandalone(base, f"file://{storage}")
    airflow.storage = storage
    airflow.start()
    _STANDALONE.append(airflow)
    yield airflow
    airflow.stop()
