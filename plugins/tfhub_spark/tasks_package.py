"""The ``tasks`` package as spark-submit receives it: where it is, and the archive shipped on ``--py-files``.

The spark-submit applications (``tasks/<job>.py``) import the ``tasks`` library on the driver and the executors;
``build_tasks_zip`` makes the one archive both import from. (The Airflow side never imports ``tasks``: it only
ships the files.)
"""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

DEFAULT_TASKS_DIR = Path(__file__).resolve().parents[2] / "tasks"

EXCLUDED_FROM_ZIP = ("demo",)
"""Folders of ``tasks/`` that no spark-submit application imports, left out of the archive."""


def build_tasks_zip(tasks_dir: Path, dest_dir: str) -> str:
    """Zips the ``tasks`` package for ``--py-files`` so drivers and executors import the same code.

    The demo inputs (``tasks/demo/``: generated data sets and hub modules, run by hand or by ``make``) stay out:
    no application imports them. Entries are sorted and carry a fixed timestamp, so the same sources give the same
    archive.

    :param tasks_dir: the ``tasks`` package folder.
    :param dest_dir: where to write ``tasks.zip``.
    :return: the archive's path.
    """
    if not (tasks_dir / "__init__.py").exists():
        raise FileNotFoundError(f"{tasks_dir} is not the tasks package (no __init__.py); set tasks_dir")
    out = os.path.join(dest_dir, "tasks.zip")
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as zf:
        for path in sorted(tasks_dir.rglob("*.py")):
            if "__pycache__" in path.parts or path.relative_to(tasks_dir).parts[0] in EXCLUDED_FROM_ZIP:
                continue
            info = zipfile.ZipInfo(str(Path("tasks") / path.relative_to(tasks_dir)), date_time=(2020, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, path.read_bytes())
    return out
