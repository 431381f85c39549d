"""Storage URLs of the pipeline: ``file://`` folders on this machine.

Every stage names its inputs and outputs by URL under one storage root, so that switching from the embedded
default (``file://``) to a cluster changes the root and nothing else. This module turns those URLs into
something the stage can open and gives the stages one atomic-commit primitive.
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


def read_text(url: str) -> str:
    return local_path(url).read_text()


def exists(url: str) -> bool:
    return local_path(url).exists()


def write_text_atomic(url: str, text: str) -> None:
    """Writes a file by writing a hidden sibling and renaming it over the target."""
    target = local_path(url)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp-{uuid.uuid4().hex}")
    tmp.write_text(text)
    os.replace(tmp, target)


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
    target = local_path(url)
    if not target.parent.exists():
        return
    for p in target.parent.iterdir():
        if p.name.startswith(tuple(f".{target.name}.{kind}-" for kind in ("staging", "old", "rejected"))):
            shutil.rmtree(p, ignore_errors=True)
