"""Worker-to-driver log relay and progress watchdog of the fine-tuning barrier stage.

On a Spark cluster a barrier task's Python logging goes to its executor's stderr file, on another machine, not to
the driver's output that Airflow shows. So the driver runs a small TCP server (``RelayServer``) and every worker
sends it newline-delimited JSON messages through a ``RelayClient``:

- ``hello``: rank, attempt, host and pid, when a worker starts (so a test or an operator can find the process);
- ``log``: a log record, with its formatted traceback if it has one (``RelayHandler``);
- ``beat``: a phase change or training progress (epoch, step): the watchdog's evidence that the worker moves;
- ``failed``: the worker's exception type and traceback, sent before the task fails.

The driver re-logs each record under the logger ``finetune.worker`` with a ``[w<rank> host:pid]`` prefix, keeps
the last state of each worker, and runs a watchdog: a worker (or a stage that never started) silent for longer
than ``stall_timeout_s`` makes the driver cancel the Spark job group, so a worker stuck in a collective or a
barrier cannot hang the job.

A message carries the run's random token; connections that do not present it are closed.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import socket
import socketserver
import threading
import time
import traceback
from collections.abc import Callable

log = logging.getLogger("finetune.relay")
worker_log = logging.getLogger("finetune.worker")

_MAX_LINE = 1 << 20


@dataclasses.dataclass
class WorkerState:
    """What the driver last heard from one worker of one attempt."""

    rank: int
    attempt: int
    host: str = ""
    pid: int = 0
    phase: str = "starting"
    epoch: int = 0
    step: int = 0
    last_seen: float = 0.0
    phases: dict[str, float] = dataclasses.field(default_factory=dict)
    """Wall-clock time of each phase the worker reported (``task_start``, ``tf_imported``...)."""
    failure: dict | None = None
    """``{"error_type", "traceback"}`` when the worker reported an exception."""


class _Handler(socketserver.StreamRequestHandler):
    def handle(self) -> None:
        server: RelayServer = self.server.relay  # type: ignore[attr-defined]
        authenticated = False
        while True:
            line = self.rfile.readline(_MAX_LINE)
            if not line:
                return
            try:
                msg = json.loads(line)
            except ValueError:
                log.warning("relay: dropping a malformed message from %s", self.client_address)
                continue
            if not authenticated:
                if msg.get("token") != server.token:
                    log.warning("relay: closing a connection from %s without the run's token", self.client_address)
                    return
                authenticated = True
            server.receive(msg)


class _TcpServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True


class RelayServer:
    """The driver's side: receives worker messages, re-logs them, tracks worker state and watches for stalls.

    Args:
        host: the address the workers connect to (the driver's ``spark.driver.host``).
        token: shared secret the workers present.
        stall_timeout_s: a worker silent this long (or a stage with no worker after this long) is stalled.
        on_stall: called once per attempt, from the watchdog thread, with a description of the stall.
        poll_s: how often the watchdog looks.
        bind_host: the local address to listen on, when it is not ``host`` (``spark.driver.bindAddress``).
        clock: the time source of ``last_seen`` and of the stall check (a test drives it by hand).
    """

    def __init__(self, host: str, token: str, stall_timeout_s: float,
                 on_stall: Callable[[str], None] | None = None, poll_s: float = 1.0,
                 bind_host: str | None = None, clock: Callable[[], float] = time.time) -> None:
        self.token = token
        self._clock = clock
        self.stall_timeout_s = stall_timeout_s
        self.on_stall = on_stall
        self.poll_s = poll_s
        self._lock = threading.Lock()
        self._workers: dict[tuple[int, int], WorkerState] = {}
        self._attempt = -1
        self._attempt_started = 0.0
        self._stalled: str | None = None
        self._server = _TcpServer((bind_host or host, 0), _Handler)
        self._server.relay = self  # type: ignore[attr-defined]
        self.address = (host, self._server.server_address[1])
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.2},
                                          name="relay-server", daemon=True),
                         threading.Thread(target=self._watch, name="relay-watchdog", daemon=True)]

    def start(self) -> RelayServer:
        for t in self._threads:
            t.start()
        log.info("log relay listening on %s:%d; a worker silent for %.0fs is declared stalled", *self.address,
                 self.stall_timeout_s)
        return self

    def stop(self) -> None:
        self._stop.set()
        self._server.shutdown()
        self._server.server_close()
        for t in self._threads:
            t.join(timeout=5)

    def __enter__(self) -> RelayServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- attempts and state ------------------------------------------------------------------------------------

    def begin_attempt(self, attempt: int) -> None:
        """Starts watching a new launch of the barrier stage; messages of older attempts are still logged."""
        with self._lock:
            self._attempt = attempt
            self._attempt_started = self._clock()
            self._stalled = None

    def end_attempt(self) -> None:
        with self._lock:
            self._attempt = -1

    def workers(self, attempt: int) -> list[WorkerState]:
        with self._lock:
            return sorted((dataclasses.replace(w, phases=dict(w.phases)) for (a, _), w in self._workers.items()
                           if a == attempt), key=lambda w: w.rank)

    @property
    def stalled(self) -> str | None:
        """The description of the current attempt's stall, once the watchdog declared one."""
        with self._lock:
            return self._stalled

    def receive(self, msg: dict) -> None:
        """Handles one worker message (called from the connection threads)."""
        rank, attempt, kind = int(msg.get("rank", -1)), int(msg.get("attempt", -1)), msg.get("t")
        with self._lock:
            w = self._workers.setdefault((attempt, rank), WorkerState(rank=rank, attempt=attempt))
            w.last_seen = self._clock()
            if kind == "hello":
                w.host, w.pid = str(msg.get("host", "")), int(msg.get("pid", 0))
            elif kind == "beat":
                # A progress beat without a phase means the worker is in its training loop.
                w.phase = str(msg.get("phase", "training" if "epoch" in msg else w.phase))
                w.epoch, w.step = int(msg.get("epoch", w.epoch)), int(msg.get("step", w.step))
                if "phase" in msg and msg["phase"] not in w.phases:
                    w.phases[msg["phase"]] = float(msg.get("time", w.last_seen))
            elif kind == "failed":
                w.failure = {"error_type": msg.get("error_type", ""), "traceback": msg.get("traceback", "")}
            prefix = f"[w{rank} {w.host}:{w.pid}]" + (f" (attempt {attempt})" if attempt else "")
        if kind == "hello":
            worker_log.info("%s worker %d of attempt %d started: pid %d on host %s", prefix, rank, attempt,
                            int(msg.get("pid", 0)), msg.get("host", ""))
        elif kind == "log":
            text = str(msg.get("msg", ""))
            if msg.get("exc"):
                text += "\n" + str(msg["exc"]).rstrip()
            worker_log.log(int(msg.get("level", logging.INFO)), "%s %s", prefix, text)
        elif kind == "failed":
            worker_log.error("%s worker %d failed with %s:\n%s", prefix, rank, msg.get("error_type", "?"),
                             str(msg.get("traceback", "")).rstrip())

    def _watch(self) -> None:
        while not self._stop.wait(self.poll_s):
            self.check_stalls()

    def check_stalls(self) -> str | None:
        """One look of the watchdog (it runs every ``poll_s``): declares the current attempt stalled, once, when a
        worker was silent (or no worker started) for longer than ``stall_timeout_s`` by ``clock``; calls
        ``on_stall``. Returns the stall's description when this look declared it."""
        with self._lock:
            if self._attempt < 0 or self._stalled is not None:
                return None
            now = self._clock()
            current = [w for (a, _), w in self._workers.items() if a == self._attempt]
            silent = [w for w in current if w.failure is None and now - w.last_seen > self.stall_timeout_s]
            if not current and now - self._attempt_started > self.stall_timeout_s:
                reason = (f"no worker of attempt {self._attempt} started within {self.stall_timeout_s:g}s "
                          "(are the barrier tasks waiting for executors?)")
            elif silent:
                reason = "; ".join(
                    f"worker {w.rank} ({w.host} pid {w.pid}) silent for {now - w.last_seen:.0f}s in phase "
                    f"{w.phase} at epoch {w.epoch} step {w.step}" for w in sorted(silent, key=lambda w: w.rank))
            else:
                return None
            self._stalled = reason
            attempt = self._attempt
        log.error("watchdog: attempt %d stalled: %s (stall_timeout_s=%.0f)", attempt, reason, self.stall_timeout_s)
        if self.on_stall is not None:
            self.on_stall(reason)
        return reason


class RelayClient:
    """A worker's side: one connection to the driver's relay, used by ``RelayHandler``, ``beat`` and ``failed``.

    Args:
        address: the driver's ``(host, port)``.
        token: the run's token.
        rank: this worker's rank.
        attempt: the barrier stage's launch number (0 for the first).
        connect_timeout_s: how long to try to connect.

    Raises:
        ConnectionError: naming the address, when the driver's relay cannot be reached.
    """

    def __init__(self, address: tuple[str, int], token: str, rank: int, attempt: int,
                 connect_timeout_s: float = 30.0) -> None:
        self.address, self.token, self.rank, self.attempt = tuple(address), token, rank, attempt
        self._lock = threading.Lock()
        self._last_beat = 0.0
        try:
            self._sock = socket.create_connection(self.address, timeout=connect_timeout_s)
        except OSError as e:
            raise ConnectionError(f"worker {rank}: cannot reach the driver's log relay at "
                                  f"{address[0]}:{address[1]}: {e}") from e
        # Sends must never block training for long: a driver that stopped reading is a dead driver.
        self._sock.settimeout(30.0)
        self.send({"t": "hello", "host": socket.gethostname(), "pid": os.getpid()})

    def send(self, msg: dict) -> None:
        """Sends one message; raises ``OSError`` when the connection is broken."""
        data = (json.dumps({"token": self.token, "rank": self.rank, "attempt": self.attempt, "time": time.time(),
                            **msg}, default=str) + "\n").encode()
        with self._lock:
            self._sock.sendall(data)

    def beat(self, phase: str | None = None, epoch: int | None = None, step: int | None = None,
             min_interval_s: float = 0.0, at: float | None = None) -> None:
        """Reports a phase change (which started at ``at``, by default now) or progress; progress beats closer than
        ``min_interval_s`` are skipped."""
        now = time.time()
        if phase is None and now - self._last_beat < min_interval_s:
            return
        self._last_beat = now
        msg: dict = {"t": "beat"}
        if phase is not None:
            msg["phase"] = phase
        if epoch is not None:
            msg["epoch"], msg["step"] = epoch, step or 0
        if at is not None:
            msg["time"] = at
        self.send(msg)

    def failed(self, exc: BaseException) -> None:
        self.send({"t": "failed", "error_type": type(exc).__name__,
                   "traceback": "".join(traceback.format_exception(exc))})

    def close(self) -> None:
        with self._lock:
            self._sock.close()


class RelayHandler(logging.Handler):
    """Sends log records to the driver through a ``RelayClient``.

    A record that cannot be sent goes through ``logging.Handler.handleError`` (a note on the executor's stderr),
    so a driver that went away does not also kill the worker's logging.
    """

    def __init__(self, client: RelayClient, level: int = logging.INFO) -> None:
        super().__init__(level)
        self.client = client

    def emit(self, record: logging.LogRecord) -> None:
        try:
            msg = {"t": "log", "level": record.levelno, "logger": record.name, "msg": record.getMessage()}
            if record.exc_info:
                msg["exc"] = "".join(traceback.format_exception(*record.exc_info))
            self.client.send(msg)
        except (OSError, ValueError, TypeError):
            self.handleError(record)
