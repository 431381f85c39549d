"""Storage URLs of the pipeline: ``file://`` folders on this machine, ``hdfs://`` through WebHDFS.

Every stage names its inputs and outputs by URL under one storage root, so that switching from the embedded
default (``file://``) to a cluster (``hdfs://``) changes the root and nothing else. This module turns those URLs
into something a stage can open, and gives the stages their atomic-commit primitives.

The stages work on local folders and publish them: ``fetch`` gives a local path for an input (the path itself for
``file://``, a download into scratch space for ``hdfs://``); ``output_staging`` gives a local folder to build an
output in, and ``publish_dir`` puts it in place in one step (a rename or an exchange on ``file://``; an upload
to a hidden sibling and renames on ``hdfs://``). TensorFlow 2.21 has no ``hdfs://`` file system, so TensorFlow
only ever sees local paths.

Outputs written by many Spark tasks at once go to a staging folder on the storage itself: ``new_staging`` makes
it, each task writes its files with ``atomic_writer`` (whole files only, a retried or speculative attempt's copy
included), and the driver puts the folder in place with ``commit_staging``. Tasks read inputs with ``walk``,
``read_child`` and ``open_child`` (seekable, by byte ranges on ``hdfs://``), and receive the driver's WebHDFS
settings (``webhdfs_settings``, applied with ``use_webhdfs``). ``create_new`` creates a file only if it does not
exist yet, for writers that must not overwrite each other.

Every commit into a run folder (a file renamed into place, a folder published or swapped in, a deletion) is fenced
first (``fencing.check_commit``): when a newer attempt of the Airflow task owns the run, it raises
``fencing.StaleAttemptError`` before touching anything.
"""

from __future__ import annotations

import contextlib
import errno
import io
import logging
import os
import re
import shutil
import tempfile
import time
import uuid
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import BinaryIO
from urllib.parse import urlparse

from tasks import fencing

log = logging.getLogger("storage")


class StorageError(RuntimeError):
    """A storage URL that cannot be used, with the URL and the reason."""


def join(base: str, *parts: str) -> str:
    """Joins URL path segments with exactly one slash between them."""
    out = base.rstrip("/")
    for p in parts:
        out += "/" + p.strip("/")
    return out


def check_segments(url: str, arg: str) -> str | None:
    """Why ``url`` may not be used as the value of the argument ``arg``, or None when it may: a path segment of
    ``.`` or ``..`` would put the stage's reads and writes somewhere else than the URL seems to say (outside the
    storage root, for ``<root>/../raw``) on ``file://``, and HDFS refuses such names with a less helpful error."""
    path = urlparse(url).path if "://" in url else url
    bad = sorted({seg for seg in path.split("/") if seg in (".", "..")})
    if bad:
        return (f"{arg} {url!r} has a {' and a '.join(repr(b) for b in bad)} path segment; storage URLs name their "
                "folders plainly (a dataset or model_name of '.' or '..' would step out of the storage root)")
    return None


# The DAG's Param schema for dataset and model_name says the same (tests/dags/test_params_paths.py checks that they
# agree): letters, digits, _ . -, not starting with a dot.
FOLDER_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9_.-]*")


def check_name(name: str, arg: str) -> str | None:
    """Why ``name`` may not be used as the single folder name ``arg`` (a model name), or None when it may: letters,
    digits, ``_ . -``, not starting with ``.`` (``.`` and ``..`` step out of the folder; other dot names are hidden,
    and the storage helpers keep hidden names for their own work folders)."""
    if not FOLDER_NAME.fullmatch(name):
        return f"{arg} {name!r} must be a plain folder name: letters, digits, _ . -, not starting with '.'"
    return None


def is_remote(url: str) -> bool:
    return "://" in url and not url.startswith("file://")


def scheme(url: str) -> str:
    """``file`` or ``hdfs``; anything else is refused with the URL named."""
    s = urlparse(url).scheme if "://" in url else "file"
    if s not in ("file", "hdfs"):
        raise StorageError(f"storage URL {url!r} has scheme {s!r}; use file:// or hdfs://")
    return s


_client = None


def webhdfs():
    """The process's WebHDFS client, configured from ``TFHUB_WEBHDFS_URL`` (see ``tasks.webhdfs``)."""
    global _client
    if _client is None:
        from tasks.webhdfs import WebHdfsClient

        _client = WebHdfsClient.from_env()
    return _client


_WEBHDFS_ENV = ("TFHUB_WEBHDFS_URL", "TFHUB_WEBHDFS_USER", "TFHUB_WEBHDFS_KERBEROS")


def webhdfs_settings() -> dict[str, str]:
    """This process's WebHDFS settings (the ``TFHUB_WEBHDFS_*`` environment), to hand to Spark tasks.

    Python workers inherit the environment of the JVM that started them, not the driver's; a driver configured
    after its JVM started (or a cluster whose executors lack the variables) would leave executors unable to
    reach ``hdfs://``. The driver ships these settings with the tasks, which apply them with ``use_webhdfs``.
    """
    return {k: os.environ[k] for k in _WEBHDFS_ENV if k in os.environ}


def use_webhdfs(settings: Mapping[str, str]) -> None:
    """Makes this process use the given WebHDFS settings (from ``webhdfs_settings``), replacing a client that was
    made with others (a reused Spark Python worker may have served another job)."""
    global _client
    current = webhdfs_settings()
    if dict(settings) == current:
        return
    for k in _WEBHDFS_ENV:
        if k in settings:
            os.environ[k] = settings[k]
        else:
            os.environ.pop(k, None)
    if _client is not None:
        _client.close()
    _client = None


def _hidden_sibling(url: str, kind: str) -> str:
    head, _, name = url.rstrip("/").rpartition("/")
    return f"{head}/.{name}.{kind}-{uuid.uuid4().hex}"


def local_path(url: str) -> Path:
    """The local path of a ``file://`` URL or a plain absolute path.

    Raises:
        StorageError: for any other scheme, naming it.
    """
    if "://" not in url:
        p = Path(url)
        if not p.is_absolute():
            raise StorageError(f"storage path {url!r} is relative; use an absolute path or a file:// URL")
        return p
    parsed = urlparse(url)
    if parsed.scheme != "file":
        raise StorageError(
            f"storage URL {url!r} has scheme {parsed.scheme!r}; this stage reads and writes file:// URLs"
        )
    if parsed.netloc not in ("", "localhost"):
        raise StorageError(f"file URL {url!r} names host {parsed.netloc!r}; use file:///absolute/path")
    return Path(parsed.path)


def file_url(path: os.PathLike | str) -> str:
    return "file://" + str(Path(path).resolve())


def read_bytes(url: str) -> bytes:
    if scheme(url) == "hdfs":
        return webhdfs().read_bytes(url)
    return local_path(url).read_bytes()


def read_text(url: str) -> str:
    return read_bytes(url).decode("utf-8")


def exists(url: str) -> bool:
    if scheme(url) == "hdfs":
        return webhdfs().exists(url)
    return local_path(url).exists()


def list_names(url: str) -> list[str]:
    """Names directly under a folder; empty when it does not exist."""
    if scheme(url) == "hdfs":
        client = webhdfs()
        return sorted(st["pathSuffix"] for st in client.list(url)) if client.exists(url) else []
    p = local_path(url)
    return sorted(c.name for c in p.iterdir()) if p.is_dir() else []


def makedirs(url: str) -> None:
    if scheme(url) == "hdfs":
        webhdfs().mkdirs(url)
    else:
        local_path(url).mkdir(parents=True, exist_ok=True)


def remove(url: str) -> None:
    """Deletes a file or a folder tree; nothing when it does not exist."""
    fencing.check_commit("a deletion", url)
    if scheme(url) == "hdfs":
        webhdfs().delete(url, recursive=True)
    else:
        p = local_path(url)
        if p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
        elif p.exists():
            p.unlink()


def write_bytes_atomic(url: str, data: bytes) -> None:
    """Writes a file by writing a hidden sibling and renaming it over the target."""
    fencing.check_commit("a file", url)
    if scheme(url) == "hdfs":
        client, tmp = webhdfs(), _hidden_sibling(url, "tmp")
        client.mkdirs(url.rstrip("/").rpartition("/")[0])
        client.write_bytes(tmp, data, overwrite=True)
        # HDFS refuses to rename onto an existing file: delete it first (readers may see it absent, never partial).
        client.delete(url, recursive=False)
        if not client.rename(tmp, url):
            raise StorageError(f"could not rename {tmp} to {url}")
        return
    target = local_path(url)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp-{uuid.uuid4().hex}")
    tmp.write_bytes(data)
    os.replace(tmp, target)


def write_text_atomic(url: str, text: str) -> None:
    write_bytes_atomic(url, text.encode("utf-8"))


def staging_dir(url: str) -> Path:
    """A fresh hidden sibling folder of ``url`` to write a whole output into before ``commit_dir``."""
    target = local_path(url)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = target.with_name(f".{target.name}.staging-{uuid.uuid4().hex}")
    staging.mkdir()
    return staging


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


def swap_in(staging: Path, url: str) -> Path | None:
    """Puts a finished staging folder at ``url`` and keeps what was there.

    A plain ``rename`` onto an existing folder fails (and ``mv`` nests the new folder inside the old), so an
    existing output is exchanged with the staging folder in one ``renameat2(RENAME_EXCHANGE)``: readers (and
    TF Serving's poller) see the old complete folder, then the new complete one, never a gap or a partial
    folder. Where the file system cannot exchange, the old folder is renamed aside first, then the new one renamed
    in: between the two renames the path is absent. The log says which of the two ran (and how long the gap was).

    Returns:
        Where the previous output now is (a hidden sibling), or None when there was none. Pass it to
        ``discard`` once the new output is accepted, or to ``roll_back`` to restore it.
    """
    fencing.check_commit("a folder", url)
    target = local_path(url)
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


def discard(previous: Path | None) -> None:
    if previous is not None:
        shutil.rmtree(previous, ignore_errors=True)


def roll_back(url: str, previous: Path | None) -> None:
    """Undoes ``swap_in``: the previous output goes back in place (or the path is removed if there was none)."""
    target = local_path(url)
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


def commit_dir(staging: Path, url: str) -> None:
    """Puts a finished staging folder in place of ``url`` (see ``swap_in``) and deletes the old output."""
    discard(swap_in(staging, url))


def clean_stale(url: str) -> None:
    """Deletes staging and aside folders left next to ``url`` by an attempt that was killed."""
    head, _, name = url.rstrip("/").rpartition("/")
    prefixes = tuple(f".{name}.{kind}-" for kind in ("staging", "old", "rejected", "tmp"))
    for child in list_names(head):
        if child.startswith(prefixes):
            remove(f"{head}/{child}")


def fetch(url: str, scratch: os.PathLike | str) -> Path:
    """A local path holding the file or folder at ``url``: the path itself for ``file://``, a download into
    ``scratch`` for ``hdfs://``."""
    if scheme(url) == "file":
        return local_path(url)
    client = webhdfs()
    st = client.status(url)
    if st is None:
        raise StorageError(f"{url} does not exist")
    dest = Path(scratch) / url.rstrip("/").rpartition("/")[2]
    if st["type"] == "DIRECTORY":
        client.download_dir(url, dest)
    else:
        dest.parent.mkdir(parents=True, exist_ok=True)
        client.download(url, dest)
    return dest


def output_staging(url: str) -> Path:
    """A fresh local folder to build the output for ``url`` in, before ``publish_dir``: a hidden sibling on the
    same file system for ``file://`` (so publishing is a rename), a temporary folder for ``hdfs://``."""
    if scheme(url) == "file":
        return staging_dir(url)
    import tempfile

    return Path(tempfile.mkdtemp(prefix=f"{url.rstrip('/').rpartition('/')[2]}-"))


def publish_dir(local_dir: Path, url: str, keep_previous: bool = False) -> str | None:
    """Puts a finished output folder in place of ``url`` in one step for readers.

    ``file://``: ``swap_in`` (rename, or exchange with the existing folder). ``hdfs://``: upload to a hidden
    sibling, rename the existing folder aside and the new one into place (HDFS renames are atomic), then delete
    the old one.

    Returns:
        With ``keep_previous``, where the previous output now is (for ``roll_back_url``), else None.
    """
    if scheme(url) == "file":
        previous = swap_in(local_dir, url)
        if keep_previous:
            return None if previous is None else str(previous)
        discard(previous)
        return None
    fencing.check_commit("a folder", url)
    client = webhdfs()
    staging = _hidden_sibling(url, "staging")
    try:
        client.upload_dir(local_dir, staging)
        previous = _hdfs_swap_in(staging, url)
    except BaseException:
        client.delete(staging, recursive=True)
        raise
    finally:
        shutil.rmtree(local_dir, ignore_errors=True)
    if keep_previous:
        return previous
    if previous:
        client.delete(previous, recursive=True)
    return None


def _hdfs_swap_in(staging: str, url: str) -> str | None:
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
        previous = _hidden_sibling(url, "old")
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


def discard_url(previous: str | None) -> None:
    if previous:
        remove(previous)


def roll_back_url(url: str, previous: str | None) -> None:
    """Undoes ``publish_dir(..., keep_previous=True)``."""
    if scheme(url) == "file":
        roll_back(url, None if previous is None else Path(local_path(previous)))
        return
    client = webhdfs()
    rejected = _hidden_sibling(url, "rejected")
    t0 = time.perf_counter()
    client.rename(url, rejected)
    if previous:
        client.rename(previous, url)
        log.info("%s: previous copy put back by two renames (hdfs:// cannot exchange); the path was absent for "
                 "%.1f ms in between", url, 1000 * (time.perf_counter() - t0))
    client.delete(rejected, recursive=True)


def _is_hidden(name: str) -> bool:
    # Hadoop's convention (FileInputFormat's hidden-file filter): markers and work folders start with _ or .
    return name.startswith(("_", "."))


def walk(url: str, include_hidden: bool = False) -> list[tuple[str, int]]:
    """Every file under a folder, recursively, as ``(path relative to the folder, size in bytes)``, sorted.

    Args:
        url: the folder.
        include_hidden: also list files and folders whose name starts with ``_`` or ``.`` (markers such as
            ``_SUCCESS``, staging folders); they are skipped by default, as Hadoop's input formats skip them.

    Raises:
        StorageError: when the folder does not exist or is a file.
    """
    out: list[tuple[str, int]] = []
    if scheme(url) == "hdfs":
        client = webhdfs()
        st = client.status(url)
        if st is None or st["type"] != "DIRECTORY":
            raise StorageError(f"{url} " + ("does not exist" if st is None else "is a file, not a folder"))
        from tasks.webhdfs import hdfs_path

        base = hdfs_path(url).rstrip("/")
        pending = [""]
        while pending:
            rel = pending.pop()
            for entry in client.list(f"{base}/{rel}" if rel else base):
                name = entry["pathSuffix"]
                if not include_hidden and _is_hidden(name):
                    continue
                child = f"{rel}/{name}" if rel else name
                if entry["type"] == "DIRECTORY":
                    pending.append(child)
                else:
                    out.append((child, int(entry["length"])))
        return sorted(out)
    root = local_path(url)
    if not root.is_dir():
        raise StorageError(f"{url} " + ("is a file, not a folder" if root.exists() else "does not exist"))
    for dirpath, dirnames, filenames in os.walk(root):
        if not include_hidden:
            dirnames[:] = [d for d in dirnames if not _is_hidden(d)]
        rel = Path(dirpath).relative_to(root).as_posix()
        for name in filenames:
            if include_hidden or not _is_hidden(name):
                p = Path(dirpath) / name
                out.append((name if rel == "." else f"{rel}/{name}", p.stat().st_size))
    return sorted(out)


def _child_path(url: str, rel: str) -> str:
    """The HDFS path of ``rel`` under the folder ``url``, built without URL parsing so that names holding ``#``,
    ``?`` or ``%`` stay literal."""
    from tasks.webhdfs import hdfs_path

    return hdfs_path(url).rstrip("/") + "/" + rel


def read_child(url: str, rel: str) -> bytes:
    """The content of the file ``rel`` (a relative path as ``walk`` gives it) under the folder ``url``."""
    if scheme(url) == "hdfs":
        return webhdfs().read_bytes(_child_path(url, rel))
    return (local_path(url) / rel).read_bytes()


def create_new(url: str, data: bytes) -> bool:
    """Creates a file holding ``data`` only if nothing is at ``url`` yet, complete when it appears.

    A compare-and-set for writers that must not overwrite each other: the data goes to a hidden sibling, which is
    then hard-linked (``file://``) or renamed (``hdfs://``, whose rename refuses an existing destination) to
    ``url``.

    Returns:
        True when this call created the file, False when one was there already.
    """
    fencing.check_commit("a file", url)
    if scheme(url) == "hdfs":
        client, tmp = webhdfs(), _hidden_sibling(url, "tmp")
        client.mkdirs(url.rstrip("/").rpartition("/")[0])
        client.write_bytes(tmp, data, overwrite=True)
        if client.rename(tmp, url):
            return True
        client.delete(tmp, recursive=False)
        if client.exists(url):
            return False
        raise StorageError(f"could not rename {tmp} to {url}")
    target = local_path(url)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp-{uuid.uuid4().hex}")
    tmp.write_bytes(data)
    try:
        os.link(tmp, target)
        return True
    except FileExistsError:
        return False
    finally:
        tmp.unlink()


def new_staging(url: str) -> str:
    """The URL of a fresh hidden sibling folder of ``url`` on the same storage, for writers that run elsewhere
    (Spark tasks) to fill before ``commit_staging`` puts it in place; ``clean_stale`` removes abandoned ones."""
    if scheme(url) == "hdfs":
        staging = _hidden_sibling(url, "staging")
        webhdfs().mkdirs(staging)
        return staging
    return "file://" + str(staging_dir(url))


def commit_staging(staging_url: str, url: str) -> None:
    """Puts a complete staging folder from ``new_staging`` in place of ``url`` and deletes the previous output.

    Temporary files that writers left in the folder (an attempt killed mid-write, see ``atomic_writer``) are
    deleted first, so the committed folder holds only complete files.
    """
    for name in list_names(staging_url):
        if name.startswith(".") and ".tmp-" in name:
            remove(join(staging_url, name))
    if scheme(url) == "hdfs":
        fencing.check_commit("a folder", url)
        previous = _hdfs_swap_in(staging_url, url)
        if previous:
            webhdfs().delete(previous, recursive=True)
        return
    commit_dir(local_path(staging_url), url)


@contextlib.contextmanager
def atomic_writer(url: str) -> Iterator[BinaryIO]:
    """A local binary file to write ``url``'s content into; the file appears at ``url`` complete, or not at all.

    ``file://``: written as a hidden sibling and renamed over ``url``. ``hdfs://``: written to a local temporary
    file, uploaded to a hidden sibling and renamed to ``url``; when a file is already there (a speculative or
    retried Spark attempt got there first) that one is kept. Both are right only for content that does not depend
    on the attempt, which is what the stages write: either copy is the same bytes.
    """
    if scheme(url) == "hdfs":
        fd, local = tempfile.mkstemp(prefix="tfhub-upload-")
        try:
            with os.fdopen(fd, "wb") as f:
                yield f
            fencing.check_commit("a file", url)
            client, tmp = webhdfs(), _hidden_sibling(url, "tmp")
            client.upload(local, tmp, overwrite=True)
            if not client.rename(tmp, url):
                client.delete(tmp, recursive=False)
                if not client.exists(url):
                    raise StorageError(f"could not rename {tmp} to {url}")
        finally:
            os.unlink(local)
        return
    target = local_path(url)
    tmp = target.with_name(f".{target.name}.tmp-{uuid.uuid4().hex}")
    try:
        with open(tmp, "wb") as f:
            yield f
        fencing.check_commit("a file", url)
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


class _WebHdfsRangeFile(io.RawIOBase):
    """A seekable read-only file over WebHDFS ``OPEN`` with ``offset`` and ``length``: readers such as Parquet's
    fetch only the byte ranges they need."""

    def __init__(self, path: str, size: int) -> None:
        super().__init__()
        self._path, self._size, self._pos = path, size, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._size}[whence]
        if base + offset < 0:
            raise OSError(errno.EINVAL, f"seek before the start of {self._path}")
        self._pos = base + offset
        return self._pos

    def readinto(self, buffer) -> int:
        n = min(len(buffer), self._size - self._pos)
        if n <= 0:
            return 0
        data = webhdfs().read_bytes(self._path, offset=self._pos, length=n)
        if len(data) != n:
            raise OSError(errno.EIO, f"{self._path}: asked for {n} bytes at {self._pos}, got {len(data)}")
        buffer[:n] = data
        self._pos += n
        return n


def open_child(url: str, rel: str) -> BinaryIO:
    """A seekable binary file object reading the file ``rel`` under the folder ``url`` (close it when done)."""
    if scheme(url) == "hdfs":
        path = _child_path(url, rel)
        st = webhdfs().status(path)
        if st is None or st["type"] != "FILE":
            raise StorageError(f"{url}/{rel} " + ("does not exist" if st is None else "is a folder, not a file"))
        return io.BufferedReader(_WebHdfsRangeFile(path, int(st["length"])), buffer_size=1 << 20)
    return open(local_path(url) / rel, "rb")


def fetch_files(url: str, names: Iterable[str], scratch: os.PathLike | str) -> Path:
    """A local folder holding the named files of the folder at ``url``: the folder itself for ``file://``; for
    ``hdfs://`` a folder under ``scratch`` with only those files downloaded (a stage that reads one split of a
    dataset need not copy the others)."""
    if scheme(url) == "file":
        return local_path(url)
    dest = Path(scratch) / url.rstrip("/").rpartition("/")[2]
    dest.mkdir(parents=True, exist_ok=True)
    client = webhdfs()
    for name in names:
        client.download(_child_path(url, name), dest / name)
    return dest
