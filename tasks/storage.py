"""Storage URLs of the pipeline: ``file://`` folders on this machine, ``hdfs://`` through WebHDFS.

Every stage names its inputs and outputs by URL under one storage root, so that switching from the embedded
default (``file://``) to a cluster (``hdfs://``) changes the root and nothing else. This module turns those URLs
into something a stage can open, and gives the stages their atomic-commit primitives.

The stages work on local folders and publish them: ``fetch`` gives a local path for an input (the path itself for
``file://``, a download into scratch space for ``hdfs://``); ``output_staging`` gives a local folder to build an
output in, and ``publish_dir`` puts it in place in one step (a rename or an exchange on ``file://``; an upload
to a hidden sibling and renames on ``hdfs://``). TensorFlow 2.21 has no ``hdfs://`` file system, so TensorFlow
only ever sees local paths.
"""

from __future__ import annotations

import errno
import os
import shutil
import uuid
from pathlib import Path
from urllib.parse import urlparse


class StorageError(RuntimeError):
    """A storage URL that cannot be used, with the URL and the reason."""


def join(base: str, *parts: str) -> str:
    """Joins URL path segments with exactly one slash between them."""
    out = base.rstrip("/")
    for p in parts:
        out += "/" + p.strip("/")
    return out


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
    folder. Where the file system cannot exchange, the old folder is renamed aside first (a gap of one rename).

    Returns:
        Where the previous output now is (a hidden sibling), or None when there was none. Pass it to
        ``discard`` once the new output is accepted, or to ``roll_back`` to restore it.
    """
    target = local_path(url)
    if not target.exists():
        os.rename(staging, target)
        return None
    try:
        exchange(staging, target)
        return staging
    except OSError as e:
        if e.errno not in (errno.ENOSYS, errno.EINVAL, errno.EXDEV, errno.EPERM, errno.ENOTSUP):
            raise
    aside = target.with_name(f".{target.name}.old-{uuid.uuid4().hex}")
    os.rename(target, aside)
    try:
        os.rename(staging, target)
    except BaseException:
        os.rename(aside, target)
        raise
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
        except OSError:
            os.rename(target, rejected)
            os.rename(previous, target)
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
    client = webhdfs()
    staging = _hidden_sibling(url, "staging")
    try:
        client.upload_dir(local_dir, staging)
        previous = None
        if client.exists(url):
            previous = _hidden_sibling(url, "old")
            if not client.rename(url, previous):
                raise StorageError(f"could not move {url} aside to {previous}")
        if not client.rename(staging, url):
            if previous:
                client.rename(previous, url)
            raise StorageError(f"could not rename {staging} to {url}")
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
    client.rename(url, rejected)
    if previous:
        client.rename(previous, url)
    client.delete(rejected, recursive=True)
