"""The one commit protocol every writer of the pipeline uses: write aside, check the fence, rename into place.

Work in progress is written under a hidden sibling of its target (``storage.hidden_sibling``: ``.<name>.tmp-…``,
``.<name>.staging-…``), which readers skip. When it is complete, the fence is checked (``fencing.check_commit``:
when a newer attempt of the Airflow task owns the run, ``fencing.StaleAttemptError`` is raised before anything is
touched) and the work is renamed into place in one step (``_put_file``, ``_swap_in``). A reader sees the old
content or the new, never a part; ``clean_stale`` deletes what a killed writer left beside a target.

A file:

* ``write_bytes_atomic`` / ``write_text_atomic``: replace whatever is there;
* ``create_new``: only if nothing is there yet (a compare-and-set for writers that must not overwrite each other);
* ``atomic_writer``: streamed, for content that does not depend on the attempt (a retried or speculative Spark
  task writes the same bytes): either copy will do.

A folder, built in a staging folder and put in place whole with ``publish_dir``:

* ``output_staging``: a local folder (the process that writes it publishes it);
* ``new_staging``: a folder on the storage itself, filled by writers that run elsewhere (Spark tasks, each with
  ``atomic_writer``) and published by the driver.

``publish_dir(..., keep_previous=True)`` keeps the previous copy until the new one is accepted: then ``discard``
it, or ``roll_back`` to put it back.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from tasks.core import run_folder
from tasks.io import fencing, storage
from tasks.io.storage import StorageError, hidden_sibling, local_path, scheme, webhdfs

log = logging.getLogger("storage")

REPLACE, KEEP, EITHER = "replace", "keep", "either"
"""What a file commit does when the target exists: replace it, keep it (and report that nothing was written), or
either (the content does not depend on the writer: replace where that is one rename, keep on ``hdfs://``)."""


# -- files ----------------------------------------------------------------------------------------------------------


def write_bytes_atomic(url: str, data: bytes) -> None:
    """Writes a file whole, replacing what is there (on ``hdfs://``, which cannot rename onto an existing file,
    readers may see it absent for a moment, never partial)."""
    _commit_bytes(url, data, REPLACE)


def write_text_atomic(url: str, text: str) -> None:
    write_bytes_atomic(url, text.encode("utf-8"))


def create_new(url: str, data: bytes) -> bool:
    """Creates a file holding ``data`` only if nothing is at ``url`` yet, complete when it appears.

    Returns:
        True when this call created the file, False when one was there already.
    """
    return _commit_bytes(url, data, KEEP)


@contextlib.contextmanager
def atomic_writer(url: str) -> Iterator[BinaryIO]:
    """A local binary file to write ``url``'s content into; the file appears at ``url`` complete, or not at all.

    For content that does not depend on the attempt, which is what the stages write: when a file is already there
    (a speculative or retried Spark attempt got there first), either copy is the same bytes (``EITHER``).
    """
    if scheme(url) == "hdfs":
        fd, local = tempfile.mkstemp(prefix="tfhub-upload-")
        try:
            with os.fdopen(fd, "wb") as f:
                yield f
            fencing.check_commit("a file", url)
            tmp = hidden_sibling(url, "tmp")
            webhdfs().upload(local, tmp, overwrite=True)
            _put_file(tmp, url, EITHER)
        finally:
            os.unlink(local)
        return
    tmp = _local_tmp(url)
    try:
        with open(tmp, "wb") as f:
            yield f
        fencing.check_commit("a file", url)
        _put_file(str(tmp), url, EITHER)
    finally:
        tmp.unlink(missing_ok=True)


def _commit_bytes(url: str, data: bytes, if_exists: str) -> bool:
    fencing.check_commit("a file", url)
    if scheme(url) == "hdfs":
        tmp = hidden_sibling(url, "tmp")
        client = webhdfs()
        client.mkdirs(url.rstrip("/").rpartition("/")[0])
        client.write_bytes(tmp, data, overwrite=True)
        return _put_file(tmp, url, if_exists)
    target = local_path(url)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = _local_tmp(url)
    tmp.write_bytes(data)
    try:
        return _put_file(str(tmp), url, if_exists)
    finally:
        tmp.unlink(missing_ok=True)


def _local_tmp(url: str) -> Path:
    target = local_path(url)
    return target.with_name(f".{target.name}.tmp-{uuid.uuid4().hex}")


def _put_file(tmp: str, url: str, if_exists: str) -> bool:
    """Renames a complete hidden sibling ``tmp`` (a local path for ``file://``, an HDFS URL) to ``url``.

    Returns:
        Whether ``url`` now holds this writer's copy (False: ``KEEP`` or ``EITHER`` found one there).
    """
    if scheme(url) == "hdfs":
        client = webhdfs()
        if if_exists == REPLACE:
            # HDFS refuses to rename onto an existing file: delete it first.
            client.delete(url, recursive=False)
        if client.rename(tmp, url):
            return True
        client.delete(tmp, recursive=False)
        if if_exists != REPLACE and client.exists(url):
            return False
        raise StorageError(f"could not rename {tmp} to {url}")
    target = local_path(url)
    if if_exists == KEEP:
        try:
            os.link(tmp, target)  # refuses an existing target, unlike rename
            return True
        except FileExistsError:
            return False
    os.replace(tmp, target)
    return True


# -- folders --------------------------------------------------------------------------------------------------------


def output_staging(url: str) -> Path:
    """A fresh local folder to build the output for ``url`` in, before ``publish_dir``: a hidden sibling on the
    same file system for ``file://`` (so publishing is a rename), a temporary folder for ``hdfs://``."""
    if scheme(url) == "file":
        target = local_path(url)
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = target.with_name(f".{target.name}.staging-{uuid.uuid4().hex}")
        staging.mkdir()
        return staging
    return Path(tempfile.mkdtemp(prefix=f"{url.rstrip('/').rpartition('/')[2]}-"))


def new_staging(url: str) -> str:
    """The URL of a fresh hidden sibling folder of ``url`` on the same storage, for writers that run elsewhere
    (Spark tasks) to fill before ``publish_dir`` puts it in place; ``clean_stale`` removes abandoned ones."""
    if scheme(url) == "hdfs":
        staging = hidden_sibling(url, "staging")
        webhdfs().mkdirs(staging)
        return staging
    return "file://" + str(output_staging(url))


def publish_dir(staging: Path | str, url: str, keep_previous: bool = False) -> str | None:
    """Puts a finished staging folder in place of ``url`` in one step for readers.

    ``staging`` is a local folder from ``output_staging`` or a storage URL from ``new_staging``. A staging folder
    on the storage first loses the temporary files its writers left (an attempt killed mid-write, see
    ``atomic_writer``), so the published folder holds only complete files. A local folder bound for ``hdfs://`` is
    uploaded to a hidden sibling first (and deleted locally either way). Then ``_swap_in``.

    Returns:
        With ``keep_previous``, where the previous output now is (for ``discard`` or ``roll_back``), else None.
    """
    if isinstance(staging, str):
        for name in storage.list_names(staging):
            if name.startswith(".") and ".tmp-" in name:
                storage.remove(storage.join(staging, name))
    remote = scheme(url) == "hdfs"
    if remote and isinstance(staging, Path):
        fencing.check_commit("a folder", url)
        uploaded = hidden_sibling(url, "staging")
        try:
            webhdfs().upload_dir(staging, uploaded)
            previous = _swap_in_hdfs(uploaded, url)
        except BaseException:
            webhdfs().delete(uploaded, recursive=True)
            raise
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    else:
        previous = _swap_in(staging if remote else str(local_path(str(staging))), url)
    if keep_previous:
        return previous
    discard(previous, fenced=False)
    return None


def publish_with_success(staging: str, url: str, json_files: dict[str, dict]) -> None:
    """Writes the JSON files of a staged output (a manifest, statistics), then its ``_SUCCESS`` marker last, and
    publishes it in place of ``url``."""
    for name, content in json_files.items():
        write_text_atomic(storage.join(staging, name), json.dumps(content, indent=2, sort_keys=True))
    write_bytes_atomic(storage.join(staging, run_folder.SUCCESS), b"")
    publish_dir(staging, url)


def discard(previous: str | None, fenced: bool = True) -> None:
    """Deletes the previous copy ``publish_dir(..., keep_previous=True)`` kept, once the new one is accepted."""
    if not previous:
        return
    if fenced:
        storage.remove(previous)
    elif scheme(previous) == "hdfs":
        webhdfs().delete(previous, recursive=True)
    else:
        shutil.rmtree(local_path(previous), ignore_errors=True)


def roll_back(url: str, previous: str | None) -> None:
    """Undoes ``publish_dir(..., keep_previous=True)``: the previous copy goes back in place (or the path is
    removed if there was none)."""
    if scheme(url) == "file":
        _roll_back_local(local_path(url), None if previous is None else local_path(previous))
        return
    client = webhdfs()
    rejected = hidden_sibling(url, "rejected")
    t0 = time.perf_counter()
    client.rename(url, rejected)
    if previous:
        client.rename(previous, url)
        log.info("%s: previous copy put back by two renames (hdfs:// cannot exchange); the path was absent for "
                 "%.1f ms in between", url, 1000 * (time.perf_counter() - t0))
    client.delete(rejected, recursive=True)


def clean_stale(url: str) -> None:
    """Deletes staging and aside folders left next to ``url`` by an attempt that was killed."""
    head, _, name = url.rstrip("/").rpartition("/")
    prefixes = tuple(f".{name}.{kind}-" for kind in ("staging", "old", "rejected", "tmp"))
    for child in storage.list_names(head):
        if child.startswith(prefixes):
            storage.remove(f"{head}/{child}")


def _swap_in(staging: str, url: str) -> str | None:
    """Renames a complete staging folder (a local path for ``file://``, an HDFS URL) into place of ``url``, after
    the fence; returns where the previous one now is, if there was one."""
    fencing.check_commit("a folder", url)
    if scheme(url) == "hdfs":
        return _swap_in_hdfs(staging, url)
    previous = _swap_in_local(Path(staging), local_path(url))
    return None if previous is None else str(previous)


_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def exchange(a: Path, b: Path) -> None:
    """Swaps two paths in one step with Linux ``renameat2(RENAME_EXCHANGE)``.

    Raises:
        OSError: when the kernel, the C library or the file system cannot (ENOSYS, EINVAL, EXDEV...).
    """
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    renameat2 = getattr(libc, "renameat2", None)
    if renameat2 is None:
        raise OSError(errno.ENOSYS, "renameat2 is not available in this C library")
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"renameat2({a}, {b}, RENAME_EXCHANGE): {os.strerror(err)}")


def _swap_in_local(staging: Path, target: Path) -> Path | None:
    """Puts a finished staging folder at ``target`` and keeps what was there.

    A plain ``rename`` onto an existing folder fails (and ``mv`` nests the new folder inside the old), so an
    existing output is exchanged with the staging folder in one ``renameat2(RENAME_EXCHANGE)``: readers (and
    TF Serving's poller) see the old complete folder, then the new complete one, never a gap or a partial
    folder. Where the file system cannot exchange, the old folder is renamed aside first, then the new one renamed
    in: between the two renames the path is absent. The log says which of the two ran (and how long the gap was).
    """
    if not target.exists():
        os.rename(staging, target)
        return None
    try:
        exchange(staging, target)
        log.info("%s exchanged with its previous copy in one renameat2(RENAME_EXCHANGE): never absent", target)
        return staging
    except OSError as e:
        if e.errno not in (errno.ENOSYS, errno.EINVAL, errno.EXDEV, errno.EPERM, errno.ENOTSUP):
            raise
        reason = e
    aside = target.with_name(f".{target.name}.old-{uuid.uuid4().hex}")
    t0 = time.perf_counter()
    os.rename(target, aside)
    try:
        os.rename(staging, target)
    except BaseException:
        os.rename(aside, target)
        raise
    log.warning("%s replaced by the fallback, not an exchange (%s): the previous copy was renamed aside, then the new "
                "one in; the path was absent for %.3f ms in between", target, reason,
                1000 * (time.perf_counter() - t0))
    return aside


def _roll_back_local(target: Path, previous: Path | None) -> None:
    rejected = target.with_name(f".{target.name}.rejected-{uuid.uuid4().hex}")
    if previous is None:
        os.rename(target, rejected)
    else:
        try:
            exchange(previous, target)
            rejected = previous
            log.info("%s: previous copy exchanged back into place", target)
        except OSError as e:
            t0 = time.perf_counter()
            os.rename(target, rejected)
            os.rename(previous, target)
            log.warning("%s: previous copy put back by the fallback, not an exchange (%s); the path was absent for "
                        "%.3f ms", target, e, 1000 * (time.perf_counter() - t0))
    shutil.rmtree(rejected, ignore_errors=True)


def _swap_in_hdfs(staging: str, url: str) -> str | None:
    """Renames a complete HDFS folder into place of ``url``; returns where the previous one was moved, if any.

    HDFS cannot exchange two paths (WebHDFS has no such operation), and a rename onto an existing folder would move
    the source inside it: the old folder is renamed aside first, then the new one into place. Each rename is
    atomic, so a reader finds the old complete folder, then nothing for the time between the two renames (two
    NameNode calls, logged), then the new complete folder; never a partial one, because the new folder is complete
    under its hidden name before the first rename and nothing else happens between the two.
    """
    client = webhdfs()
    previous = None
    t0 = time.perf_counter()
    if client.exists(url):
        previous = hidden_sibling(url, "old")
        t0 = time.perf_counter()
        if not client.rename(url, previous):
            raise StorageError(f"could not move {url} aside to {previous}")
    if not client.rename(staging, url):
        if previous:
            client.rename(previous, url)
        raise StorageError(f"could not rename {staging} to {url}")
    if previous:
        log.info("%s replaced by two renames (hdfs:// cannot exchange): the previous copy aside, the new one in; the "
                 "path was absent for %.1f ms in between", url, 1000 * (time.perf_counter() - t0))
    return previous
