"""Storage URLs of the pipeline: ``file://`` folders on this machine.

Every stage names its inputs and outputs by URL under one storage root, so that switching from the embedded
default (``file://``) to a cluster changes the root and nothing else. This module turns those URLs into
something the stage can open and gives the stages one atomic-commit primitive.
"""

from __future__ import annotations

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


def commit_dir(staging: Path, url: str) -> None:
    """Puts a finished staging folder in place of ``url``.

    A plain ``rename`` onto an existing folder fails (or, with ``mv``, nests the new folder inside the old),
    so an existing output is first renamed aside, the new one renamed in, and the old one deleted. Readers
    see the old complete folder or the new complete folder; the window in between, where the path is
    absent, is two renames long.
    """
    target = local_path(url)
    old = None
    if target.exists():
        old = target.with_name(f".{target.name}.old-{uuid.uuid4().hex}")
        os.rename(target, old)
    try:
        os.rename(staging, target)
    except BaseException:
        if old is not None:
            os.rename(old, target)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def clean_stale(url: str) -> None:
    """Deletes staging and aside folders left next to ``url`` by an attempt that was killed."""
    target = local_path(url)
    if not target.parent.exists():
        return
    for p in target.parent.iterdir():
        if p.name.startswith(f".{target.name}.staging-") or p.name.startswith(f".{target.name}.old-"):
            shutil.rmtree(p, ignore_errors=True)
