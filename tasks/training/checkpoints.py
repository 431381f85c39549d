"""The training state of a run on storage: the chief commits each Keras checkpoint under ``<run_dir>/checkpoints/``
as a new version with a pointer written last (``TrainingStore.push``), every worker of a relaunched stage brings the
last committed one down (``pull``, ``read_progress``), and the TensorBoard logs go up beside them.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import tempfile
import time
from pathlib import Path

from tasks.core import run_folder
from tasks.io import commit, fencing, storage
from tasks.training.preflight import FinetuneError

log = logging.getLogger("finetune")


CHECKPOINT_VERSION = re.compile(r"v(\d{6})")
"""A committed checkpoint's folder under ``<run_dir>/checkpoints/``: ``v000001``, ``v000002``..."""
CHECKPOINT_POINTER = re.compile(r"progress-(\d{6})\.json")
"""Its pointer (the commit), written after the folder is complete: ``progress-000001.json``..."""

PUSH_STEPS = ("copied", "uploaded", "committed", "pruned")
"""The steps of ``TrainingStore.push``, in order, each reported to its ``on_push_step`` hook once done."""


class TrainingStore:
    """A worker's view of the run's checkpoints and TensorBoard logs.

    Keras's ``BackupAndRestore`` writes and reads checkpoints in a local folder (``checkpoints``). After each save
    the chief publishes it under ``<run_dir>/checkpoints/`` as a new commit N (``push``):

    1. copied: the checkpoint is copied aside locally (Keras may write the next one meanwhile);
    2. uploaded: the copy is put in place as ``vNNNNNN/`` (uploaded under a hidden name, then renamed in);
    3. committed: the pointer ``progress-NNNNNN.json`` (epoch, step, global step, attempt, version) is written
       under a name that did not exist, in one rename: the checkpoint now counts;
    4. pruned: older commits, and whatever a chief that died in an earlier push left, are deleted.

    The committed checkpoint is the one of the highest-numbered pointer (``read_progress``). A chief that dies at
    any point leaves the previous commit complete and in place until the next one is committed, so ``pull``, which
    every worker of a relaunched stage runs before training, brings down the last committed checkpoint, never a
    partial one. One pointer per commit, not one ``progress.json`` rewritten: HDFS cannot rename onto an existing
    file, so rewriting one would mean deleting it first, and a chief dying in between would leave no pointer.

    On ``file://`` and on ``hdfs://`` alike; TensorBoard logs are the storage folder itself on ``file://`` (written
    by the chief only), local and copied up after each checkpoint on ``hdfs://``.

    Args:
        run_dir: the run's folder (a storage URL).
        scratch: this task's local folder.
        rank: this worker's rank; 0 is the chief.
        on_push_step: called with each step's name (``PUSH_STEPS``) once ``push`` has done it; a test kills the
            chief there.
    """

    def __init__(self, run_dir: str, scratch: Path, rank: int, on_push_step=None) -> None:
        self.checkpoints_url = storage.join(run_dir, run_folder.CHECKPOINTS)
        self.tensorboard_url = storage.join(run_dir, run_folder.TENSORBOARD)
        self.remote = storage.scheme(run_dir) == "hdfs"
        self.chief = rank == 0
        self.on_push_step = on_push_step
        self.checkpoints = scratch / run_folder.CHECKPOINTS
        if self.remote:
            self.tensorboard = scratch / run_folder.TENSORBOARD
        else:
            self.tensorboard = storage.local_path(self.tensorboard_url)  # written by the chief only
        self.checkpoints.mkdir(parents=True, exist_ok=True)

    def pull(self) -> dict | None:
        """Brings the last committed checkpoint (and the chief's TensorBoard logs) down into the local folder
        Keras restores from; returns its progress record, or None when there is none yet."""
        progress = read_progress(self.checkpoints_url)
        if progress is not None:
            url = storage.join(self.checkpoints_url, f"v{progress['version']:06d}")
            if not storage.exists(url):
                raise FinetuneError(f"checkpoint pointer progress-{progress['version']:06d}.json in "
                                    f"{self.checkpoints_url} names {url}, which is missing")
            local = self.checkpoints / "chief"
            shutil.rmtree(local, ignore_errors=True)
            if self.remote:
                storage.fetch(url, self.checkpoints).rename(local)
            else:
                shutil.copytree(storage.fetch(url, self.checkpoints), local)
        if self.remote and self.chief and storage.exists(self.tensorboard_url):
            storage.fetch(self.tensorboard_url, self.tensorboard.parent)
        return progress

    def history(self) -> list[dict]:
        url = storage.join(self.checkpoints_url, run_folder.HISTORY)
        return json.loads(storage.read_text(url)) if storage.exists(url) else []

    def save_history(self, rows: list[dict]) -> None:
        commit.write_text_atomic(storage.join(self.checkpoints_url, run_folder.HISTORY), json.dumps(rows))

    def _done(self, step: str) -> None:
        if self.on_push_step is not None:
            self.on_push_step(step)

    def push(self, progress: dict) -> dict:
        """After a checkpoint (chief only): commits it as the next version (see the class), then copies the
        TensorBoard logs up; returns the committed progress record (``progress`` with its ``version``)."""
        t0 = time.time()
        local = self.checkpoints / "chief"
        if not (local / "checkpoint").exists():
            raise FinetuneError(f"worker 0: no checkpoint in {local} to push (Keras wrote none)")
        names = storage.list_names(self.checkpoints_url)
        version = 1 + max((int(m.group(1)) for n in names if (m := CHECKPOINT_POINTER.fullmatch(n))), default=0)
        url = storage.join(self.checkpoints_url, f"v{version:06d}")
        # A chief of an older Airflow attempt that is still alive stops here, before it uploads anything.
        fencing.check(f"checkpoint v{version:06d}", url)
        staging = commit.output_staging(url)
        shutil.copytree(local, staging, dirs_exist_ok=True)
        self._done("copied")
        commit.publish_dir(staging, url)  # replaces what a chief that died before committing left there
        self._done("uploaded")
        record = {**progress, "version": version, **fencing.stamp()}
        commit.write_text_atomic(storage.join(self.checkpoints_url, f"progress-{version:06d}.json"),
                                  json.dumps(record))
        self._done("committed")
        for name in names:
            m = CHECKPOINT_POINTER.fullmatch(name) or CHECKPOINT_VERSION.fullmatch(name)
            # Older commits, then leftovers of pushes that died: hidden staging, aside and temporary copies.
            if (m and int(m.group(1)) < version) or name.startswith((".v", ".progress-")):
                storage.remove(storage.join(self.checkpoints_url, name))
        self._done("pruned")
        self.push_tensorboard()
        log.info("worker 0 checkpoint at epoch %d step %d (global step %d) saved to %s in %.2fs",
                 progress["epoch"], progress["step"], progress["global_step"], url, time.time() - t0)
        return record

    def push_tensorboard(self) -> None:
        if self.remote and self.tensorboard.exists():
            copy = Path(tempfile.mkdtemp(prefix="push-", dir=self.tensorboard.parent))
            shutil.copytree(self.tensorboard, copy, dirs_exist_ok=True)
            commit.publish_dir(copy, self.tensorboard_url)


def read_progress(checkpoints_url: str) -> dict | None:
    """The progress record of the last committed checkpoint (1-based epoch, step, global step, version): the
    highest-numbered pointer; None without one."""
    names = storage.list_names(checkpoints_url)
    versions = [int(m.group(1)) for n in names if (m := CHECKPOINT_POINTER.fullmatch(n))]
    if not versions:
        return None
    url = storage.join(checkpoints_url, f"progress-{max(versions):06d}.json")
    try:
        return json.loads(storage.read_text(url))
    except ValueError as e:
        raise FinetuneError(f"checkpoint pointer {url} is unreadable ({e}); delete {checkpoints_url} to restart "
                            "the run from the start") from None
