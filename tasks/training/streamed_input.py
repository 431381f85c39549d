"""How a training worker reads its share of a prepared dataset: streamed from ``hdfs://`` while it trains, or
downloaded whole first.

Modes (``finetune`` option ``input_mode``):

- ``stream``: each shard is read over WebHDFS in byte ranges of ``CHUNK_BYTES`` by a background thread that stays
  at most ``READAHEAD_CHUNKS`` ranges ahead of training (bounded memory); the records are cut from the TFRecord
  framing, both CRCs checked (``tasks.prep.tfrecord``), and fed to ``tf.data`` through ``Dataset.from_generator``. The
  first step waits for the first ranges of a few shards, not for the whole share. Shards are copied to local disk
  as they stream while the copies fit in a cap (``tasks.training.shard_cache``, ``cache_mb``; 0 for none): later
  passes read those copies and stream only the rest, so local disk stays under the cap whatever the dataset's size.
- ``prefetch``: the worker's whole share (training shards and eval files) is downloaded into local scratch before
  the rendezvous and read natively by ``TFRecordDataset``: one download, then local reads, which is quicker when
  the share is small.
- ``auto``: prefetch when the share is at most ``prefetch_max_mb``, else stream.
- a ``file://`` dataset is read in place whatever the mode (``local``).

A byte range that fails to arrive (an unreachable or failing datanode, a short answer) is read again with
exponential back-off, ``RETRIES`` times, on top of the WebHDFS client's own retries of 503s and connection
failures; then the read fails with ``StreamReadError`` naming the file and the range, which fails the worker and so
the barrier stage's attempt (the driver relaunches it within ``max_restarts``). Restarts resume from Keras's
checkpoint, which holds the epoch and step, not a position in the input: a relaunched worker opens new streams, as
it would reopen local files.

Surface: ``plan_inputs`` (choose the mode, say why in the log, download for prefetch) and ``make_dataset`` (the
``tf.data`` pipeline over a plan's files, in either mode); ``ShardStream`` reads one shard's records without
TensorFlow.
"""

from __future__ import annotations

import dataclasses
import logging
import queue
import struct
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from tasks.io import storage
from tasks.prep import modality, tfrecord
from tasks.training.shard_cache import ShardCache, shard_cache

log = logging.getLogger(__name__)

MODES = ("auto", "stream", "prefetch")
"""Values of ``input_mode``."""
CHUNK_BYTES = 4 << 20
"""Bytes asked for in one ranged WebHDFS read."""
READAHEAD_CHUNKS = 4
"""Ranges a shard's reader thread keeps ready ahead of training: at most this many chunks wait per open shard, and
one more is held by the thread while they do (up to 4 shards are open at once, interleaved): at most
4 x (4 + 1) x 4 MB in memory per pipeline."""
RETRIES = 5
"""Times a failed range is read again before the worker fails."""
BACKOFF_S = 0.5
"""Wait before the first repeated read; it doubles with each one, up to ``MAX_BACKOFF_S``."""
MAX_BACKOFF_S = 8.0
READ_TIMEOUT_S = 15.0
"""Connect and read timeout of one ranged read. With the client's own single retry and the back-offs above, a range
that never arrives fails the worker after about 3 minutes at most, within the default ``stall_timeout_s`` (300 s),
so the failure names the file rather than a collective's timeout."""


class StreamReadError(OSError):
    """A shard that could not be read over WebHDFS after the retries, or whose framing is corrupt; names the file."""


@dataclasses.dataclass(frozen=True)
class InputPlan:
    """What a worker reads and how.

    Attributes:
        mode: ``stream``, ``prefetch`` or ``local`` (a ``file://`` dataset, read in place).
        reason: why this mode, for the log.
        train: the training shards: ``hdfs://`` URLs when streamed, local paths otherwise.
        eval: the eval files, likewise.
        mb: megabytes of the share (training shards and eval files).
        cache_dir: with ``stream``, the local folder of the shard cache (``ShardCache``).
        cache_mb: with ``stream``, the cache's cap in MB; 0: no local copies at all.
    """

    mode: str
    reason: str
    train: list[str]
    eval: list[str]
    mb: float
    cache_dir: str = ""
    cache_mb: float = 0.0


def choose_mode(examples: str, input_mode: str, share_bytes: int, prefetch_max_mb: float) -> tuple[str, str]:
    """The mode a worker reads its share in, and why (see the module docstring)."""
    if input_mode not in MODES:
        raise ValueError(f"input_mode {input_mode!r}: use one of {', '.join(MODES)}")
    mb = share_bytes / 2**20
    if storage.scheme(examples) == "file":
        return "local", f"the dataset is on file://, read in place (input_mode={input_mode} applies to hdfs://)"
    if input_mode != "auto":
        return input_mode, f"input_mode={input_mode}"
    if mb <= prefetch_max_mb:
        return "prefetch", (f"input_mode=auto: this worker's share, {mb:.1f} MB, is at most input_prefetch_max_mb="
                            f"{prefetch_max_mb:g}: downloaded once, then read locally")
    return "stream", (f"input_mode=auto: this worker's share, {mb:.1f} MB, is over input_prefetch_max_mb="
                      f"{prefetch_max_mb:g}: streamed, so the first step does not wait for it and local disk stays "
                      "bounded")


def plan_inputs(examples: str, train_names: list[str], eval_names: list[str], sizes: dict[str, int],
                scratch: Path, input_mode: str, prefetch_max_mb: float, rank: int,
                cache_mb: float = 0.0) -> InputPlan:
    """Chooses how this worker reads its files, logs the choice and why, and downloads them for ``prefetch``.

    Args:
        examples: the prepared dataset's URL.
        train_names: this worker's training shards (names in ``examples``).
        eval_names: the eval files every worker reads (its share of their records).
        sizes: bytes of each file, from the manifest.
        scratch: local folder for prefetched copies.
        input_mode: ``auto``, ``stream`` or ``prefetch``.
        prefetch_max_mb: the share size up to which ``auto`` prefetches.
        rank: this worker's rank, for the log.
        cache_mb: with ``stream``, the most MB of streamed shards kept in ``scratch`` for the next passes.
    """
    t0 = time.time()
    share = sum(sizes[n] for n in train_names + eval_names)
    mode, reason = choose_mode(examples, input_mode, share, prefetch_max_mb)
    if mode == "local":
        base = storage.local_path(examples)
        train, evals = ([str(base / n) for n in names] for names in (train_names, eval_names))
    elif mode == "prefetch":
        train, evals = ([str(storage.fetch(storage.join(examples, n), scratch)) for n in names]
                        for names in (train_names, eval_names))
    else:
        train, evals = ([storage.join(examples, n) for n in names] for names in (train_names, eval_names))
    what = {"local": "read in place", "prefetch": f"downloaded to {scratch} in {time.time() - t0:.2f}s",
            "stream": f"streamed over WebHDFS ({CHUNK_BYTES >> 20} MB ranges, {READAHEAD_CHUNKS} ahead per shard), "
                      f"at most {cache_mb:g} MB of it kept on local disk for the next passes"}
    log.info("worker %d: input mode %s (%s): %d train and %d eval files, %.1f MB, %s", rank, mode, reason,
             len(train), len(evals), share / 2**20, what[mode])
    if mode != "stream":
        return InputPlan(mode, reason, train, evals, share / 2**20)
    return InputPlan(mode, reason, train, evals, share / 2**20, str(scratch), cache_mb)


def make_dataset(plan: InputPlan, files: list[str], image_size: tuple[int, int] | None, batch_size: int, *,
                 training: bool, seed: int = 0, threads: int | None = None, shard: tuple[int, int] | None = None,
                 task_type: str = modality.IMAGE_CLASSIFICATION):
    """The ``tf.data`` pipeline over ``files`` of ``plan``: ``tasks.training.model.make_dataset`` for local files; for
    streamed ones the same steps (arguments as there) over records read by ``ShardStream``."""
    from tasks.training import model as M

    read_file = None  # local files: TFRecordDataset
    if plan.mode == "stream":
        cache = (str(plan.cache_dir), int(plan.cache_mb * 2**20))

        def read_file(url):
            return M.tf.data.Dataset.from_generator(_records, args=(url, *cache),
                                                    output_signature=M.tf.TensorSpec((), M.tf.string))

    return M.make_dataset(files, image_size, batch_size, training=training, seed=seed, threads=threads,
                          shard=shard, task_type=task_type, read_file=read_file)


def _records(url: bytes, cache_dir: bytes, cache_bytes: int) -> Iterator[bytes]:
    # The settings as they are now (tests lower the retries and waits).
    yield from ShardStream(url.decode(), chunk_bytes=CHUNK_BYTES, readahead=READAHEAD_CHUNKS, retries=RETRIES,
                           backoff_s=BACKOFF_S, max_backoff_s=MAX_BACKOFF_S,
                           cache=shard_cache(cache_dir.decode(), int(cache_bytes)))


class ShardStream:
    """The records of one TFRecord file on ``hdfs://``, read in ranges by a background thread.

    Iterating starts the reader thread; it reads ``chunk_bytes`` at a time, at most ``readahead`` chunks ahead of
    the records handed out (and holds one more while they wait), and stops when the iteration ends or is abandoned.
    Each iteration reads the file again.

    Args:
        url: the file's ``hdfs://`` URL.
        client: a ``WebHdfsClient``; by default a new one per iteration, from the environment.
        chunk_bytes: bytes per ranged read.
        readahead: chunks buffered ahead at most.
        retries: repeated reads of a failed range before ``StreamReadError``.
        backoff_s: the first wait before a repeated read; doubles each time, up to ``max_backoff_s``.
        cache: where a complete, checked copy is kept while the cache has room; the next iterations read it.

    Attributes:
        max_buffered: the most bytes held in read-ahead at once, over the iterations so far: at most
            ``(readahead + 1) * chunk_bytes``.
        retried: ranges read again after a failure, over the iterations so far.
    """

    def __init__(self, url: str, client=None, *, chunk_bytes: int = CHUNK_BYTES, readahead: int = READAHEAD_CHUNKS,
                 retries: int = RETRIES, backoff_s: float = BACKOFF_S, max_backoff_s: float = MAX_BACKOFF_S,
                 cache: ShardCache | None = None) -> None:
        if chunk_bytes < 1 or readahead < 1 or retries < 0:
            raise ValueError("chunk_bytes and readahead must be at least 1, retries at least 0")
        self.url, self._client, self.cache = url, client, cache
        self.chunk_bytes, self.readahead = chunk_bytes, readahead
        self.retries, self.backoff_s, self.max_backoff_s = retries, backoff_s, max_backoff_s
        self.max_buffered = 0
        self.retried = 0
        self._buffered = 0
        self._lock = threading.Lock()

    def __iter__(self) -> Iterator[bytes]:
        local = self.cache.get(self.url) if self.cache is not None else None
        if local is not None:
            with open(local, "rb") as f:
                try:
                    yield from tfrecord.read_records(f)
                except (ValueError, struct.error) as e:
                    raise StreamReadError(f"{self.url} (cached as {local}): corrupt TFRecord framing: {e}") from None
            return
        chunks: queue.Queue = queue.Queue(maxsize=self.readahead)
        with self._lock:
            self._buffered = 0  # what an abandoned iteration left in its queue is not held any more
        stop = threading.Event()
        copy: dict = {}  # the reader thread's copy for the cache: {"path": ..., "size": ...} once reserved
        thread = threading.Thread(target=self._read_ahead, args=(chunks, stop, copy), daemon=True,
                                  name=f"shard-reader {self.url.rsplit('/', 1)[-1]}")
        thread.start()
        reader = _ChunkReader(self._take, chunks)
        complete = False
        try:
            yield from tfrecord.read_records(reader)
            complete = True
        except (ValueError, struct.error) as e:
            raise StreamReadError(f"{self.url}: corrupt TFRecord framing: {e}") from None
        finally:
            stop.set()
            thread.join(timeout=5)
            if copy:
                # Kept only when every record was read and checked; otherwise its space is given back.
                self.cache.finish(self.url, copy, keep=complete and not thread.is_alive())

    def _take(self, chunks: queue.Queue) -> bytes | None:
        item = chunks.get()
        if isinstance(item, BaseException):
            raise item
        if item is not None:
            with self._lock:
                self._buffered -= len(item)
        return item

    def _put(self, chunks: queue.Queue, item, stop: threading.Event) -> bool:
        if isinstance(item, bytes):
            with self._lock:  # counted before it is in the queue, so the count is never low
                self._buffered += len(item)
                self.max_buffered = max(self.max_buffered, self._buffered)
        while not stop.is_set():
            try:
                chunks.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _read_ahead(self, chunks: queue.Queue, stop: threading.Event, copy: dict) -> None:
        client = self._client
        own = client is None
        out = None
        try:
            if own:
                from tasks.io.webhdfs import WebHdfsClient

                client = WebHdfsClient.from_env(timeout_s=READ_TIMEOUT_S, retries=1)
            status = self._with_retries(stop, "its status", lambda: client.status(self.url))
            if status is None or status["type"] != "FILE":
                raise StreamReadError(f"{self.url}: " + ("does not exist" if status is None else "is a folder"))
            size, offset = int(status["length"]), 0
            if self.cache is not None:
                path = self.cache.reserve(self.url, size)
                if path is not None:
                    copy.update(path=path, size=size)
                    out = open(path, "wb")  # noqa: SIM115 - written chunk by chunk below, closed in finally
            while offset < size and not stop.is_set():
                n = min(self.chunk_bytes, size - offset)
                data = self._with_retries(stop, f"bytes {offset}-{offset + n - 1}",
                                          lambda: self._read_range(client, offset, n))
                if data is None:
                    return
                if out is not None:
                    out.write(data)
                if not self._put(chunks, data, stop):
                    return
                offset += n
            if out is not None:
                out.close()
            self._put(chunks, None, stop)
        except BaseException as e:  # handed to the consumer, which raises it in the training input
            self._put(chunks, e, stop)
        finally:
            if out is not None:
                out.close()
            if own and client is not None:
                client.close()

    def _read_range(self, client, offset: int, n: int) -> bytes:
        data = client.read_bytes(self.url, offset=offset, length=n)
        if len(data) != n:
            raise OSError(f"asked for {n} bytes at {offset}, got {len(data)}")
        return data

    def _with_retries(self, stop: threading.Event, what: str, read):
        from tasks.io.webhdfs import WebHdfsError

        for attempt in range(self.retries + 1):
            try:
                return read()
            except (WebHdfsError, OSError) as e:
                if isinstance(e, WebHdfsError) and e.exception == "FileNotFoundException":
                    raise StreamReadError(f"{self.url}: does not exist ({e})") from None
                if attempt == self.retries:
                    raise StreamReadError(f"{self.url}: reading {what} failed {attempt + 1} times, the last with: "
                                          f"{e}") from None
                wait = min(self.backoff_s * 2**attempt, self.max_backoff_s)
                log.warning("reading %s of %s failed (%s); retry %d of %d in %.1fs", what, self.url, e, attempt + 1,
                            self.retries, wait)
                with self._lock:
                    self.retried += 1
                if stop.wait(wait):
                    return None
        return None


class _ChunkReader:
    """``read(n)`` over the chunks a ``ShardStream`` thread hands over: what ``tfrecord.read_records`` reads."""

    def __init__(self, take, chunks: queue.Queue) -> None:
        self._take, self._chunks = take, chunks
        self._buf, self._pos, self._done = b"", 0, False

    def read(self, n: int) -> bytes:
        if len(self._buf) - self._pos >= n:
            self._pos += n
            return self._buf[self._pos - n:self._pos]
        parts, have = [self._buf[self._pos:]], len(self._buf) - self._pos
        self._buf, self._pos = b"", 0
        while have < n and not self._done:
            chunk = self._take(self._chunks)
            if chunk is None:
                self._done = True
                break
            take = min(n - have, len(chunk))
            parts.append(chunk[:take])
            have += take
            if take < len(chunk):
                self._buf, self._pos = chunk, take
        return b"".join(parts)
