"""The local copies a streaming training worker keeps of the shards it streams from ``hdfs://``
(``tasks.training.streamed_input``), within a cap on local disk: ``ShardCache``, and ``shard_cache``, the one a
process's pipelines share.
"""

from __future__ import annotations

import itertools
import threading
from pathlib import Path


class ShardCache:
    """Local copies of streamed shards, at most ``cap_bytes`` in all: a shard is copied while it is streamed when
    it fits in what is left, kept once all its records were read and checked, and read from disk after that. Shards
    that do not fit are streamed on every pass. Nothing is evicted: the first shards read stay, which is what every
    pass reads again.

    Args:
        folder: a local folder of this worker (its scratch, removed with it).
        cap_bytes: the most bytes kept, copies being written included; 0 keeps none.
    """

    def __init__(self, folder: Path, cap_bytes: int) -> None:
        self.folder, self.cap_bytes = Path(folder), cap_bytes
        self.used = 0
        self.max_used = 0
        self._done: dict[str, Path] = {}
        self._writing: set[str] = set()
        self._seq = itertools.count()
        self._lock = threading.Lock()

    def get(self, url: str) -> Path | None:
        with self._lock:
            return self._done.get(url)

    def reserve(self, url: str, size: int) -> Path | None:
        """Room for a copy of ``url``: the path to write it to, or None (no room, or a copy already under way)."""
        with self._lock:
            if url in self._done or url in self._writing or self.used + size > self.cap_bytes:
                return None
            self.used += size
            self.max_used = max(self.max_used, self.used)
            self._writing.add(url)
            self.folder.mkdir(parents=True, exist_ok=True)
            return self.folder / f".{next(self._seq)}-{url.rsplit('/', 1)[-1]}.part"

    def finish(self, url: str, copy: dict, keep: bool) -> None:
        path = Path(copy["path"])
        with self._lock:
            self._writing.discard(url)
            if keep and path.exists() and path.stat().st_size == copy["size"]:
                final = path.with_name(path.name[1:-len(".part")])
                path.replace(final)
                self._done[url] = final
                return
            self.used -= copy["size"]
        path.unlink(missing_ok=True)


_caches: dict[tuple[str, int], ShardCache] = {}
_caches_lock = threading.Lock()


def shard_cache(folder: str, cap_bytes: int) -> ShardCache | None:
    """The process's cache in ``folder`` (one per folder and cap, shared by the pipelines that read it)."""
    if cap_bytes <= 0:
        return None
    with _caches_lock:
        return _caches.setdefault((folder, cap_bytes), ShardCache(Path(folder), cap_bytes))
