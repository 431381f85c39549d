"""Shared fixtures: an isolated Airflow home, a small hub module, generated image partitions."""

from __future__ import annotations

import os
import sys
import tempfile
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


@pytest.fixture(scope="session")
def small_hub_module(tmp_path_factory) -> Path:
    """A demo hub module with little pre-training: for tests of the module API and the plumbing, not accuracy."""
    from tasks.demo import make_hub_module

    out = tmp_path_factory.mktemp("hub") / "small_fv"
    make_hub_module.run(make_hub_module.Config(output=f"file://{out}", image_size=32, feature_dim=16,
                                               pretext_images=220, epochs=1, batch_size=32))
    return out


@pytest.fixture(scope="session")
def spark():
    """A real local[2] Spark session, shared by the tests of the Spark stages."""
    from pyspark.sql import SparkSession

    session = (SparkSession.builder.master("local[2]").appName("tfhub-tests")
               .config("spark.ui.enabled", "false")
               .config("spark.sql.shuffle.partitions", "4")
               .config("spark.python.worker.reuse", "false")
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

    out = tmp_path_factory.mktemp("demo_hub") / "shapes_fv_32"
    make_hub_module.run(make_hub_module.Config(output=f"file://{out}"))
    return out


def install_hub_module(module: Path, storage: Path) -> None:
    """Puts a built hub module where the DAG's default ``hub_module`` param looks: ``<storage>/hub/shapes_fv_32``."""
    import shutil

    shutil.copytree(module, storage / "hub" / "shapes_fv_32")
