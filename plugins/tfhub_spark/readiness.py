"""When is a producer's partition complete? One check shared by the sensor (poke) and its trigger (deferred)."""

from __future__ import annotations

from dataclasses import dataclass

from tfhub_spark.hooks.storage import StorageHook
from tfhub_spark.run_folder import SUCCESS

# Names that writers use for files still being written: HDFS `put` writes `<name>._COPYING_`; Hadoop and Spark
# output committers write under `_temporary/`; many tools write hidden `.<name>.tmp` files or `*.tmp`.
IN_FLIGHT_MARKERS = ("._COPYING_", ".tmp", ".inprogress", ".part")
IN_FLIGHT_DIRS = ("_temporary", "_COPYING_")


@dataclass(frozen=True)
class Readiness:
    ready: bool
    reason: str
    files: int = 0
    bytes: int = 0


def check_partition(hook: StorageHook, path: str, marker: str = SUCCESS, min_files: int = 0,
                    min_bytes: int = 0) -> Readiness:
    """Says whether the partition at ``path`` is complete, and if not, what is missing.

    Ready means: the ``marker`` exists, no in-flight (``_COPYING_``, temporary) files remain anywhere under the
    partition, at least ``min_files`` data files holding ``min_bytes`` bytes are there, and no file is still held
    open by a writer. On HDFS a file under construction lists like any other (with the length of its completed
    blocks), so the last check asks the NameNode about each file; it runs only once everything else is ready.
    """
    base = path.rstrip("/")
    top = hook.list(base)
    if not top:
        return Readiness(False, f"{base} does not exist or is empty")
    files = nbytes = 0
    in_flight: list[str] = []
    urls: list[str] = []
    pending = [(base, top)]
    while pending:
        folder, entries = pending.pop()
        for e in entries:
            url = f"{folder}/{e.name}"
            if e.name in IN_FLIGHT_DIRS or e.name.endswith(IN_FLIGHT_MARKERS):
                in_flight.append(url)
            elif e.is_dir:
                pending.append((url, hook.list(url)))
            elif not (folder == base and e.name == marker):
                files += 1
                nbytes += e.size
                urls.append(url)
    if not any(e.name == marker and not e.is_dir for e in top):
        return Readiness(False, f"{base} has no {marker} marker yet ({files} files, {nbytes} bytes so far)", files,
                         nbytes)
    if in_flight:
        return Readiness(False, f"{base} has {marker} but {len(in_flight)} files are still being written: "
                                f"{', '.join(sorted(in_flight)[:5])}", files, nbytes)
    if files < min_files:
        return Readiness(False, f"{base} has {files} data files, fewer than min_files={min_files}", files, nbytes)
    if nbytes < min_bytes:
        return Readiness(False, f"{base} holds {nbytes} bytes, fewer than min_bytes={min_bytes}", files, nbytes)
    for url in urls:
        if hook.being_written(url):
            return Readiness(False, f"{base} has {marker} but {url} is still open for writing (a writer holds its "
                                    f"lease)", files, nbytes)
    return Readiness(True, f"{base} is complete: {marker}, {files} files, {nbytes} bytes", files, nbytes)
