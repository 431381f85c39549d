"""Data-prep growth benchmark: how the cost of a prep run grows with the record count, on N and 4N records.

Each run is ``tasks/prepare_examples.py`` as Airflow runs it: its own ``spark-submit`` on ``local[2]`` (with the
``tasks`` package zipped on ``--py-files``, ``prelude.spark_submit``) over a generated raw partition in the
manifest layout. For each run it prints the records, the wall time (launching spark-submit to its exit, Spark's
start-up included), records/s, and the peak RSS of the driver: the spark-submit JVM and the Python driver process
it starts (``prepare_examples.py``), sampled every 0.2 s from ``/proc/<pid>/status`` (VmRSS), apart and summed; the
peak is that of the sum. The Python workers that pyspark's daemon forks are executors, not the driver: their RSS is
printed for context and not counted. Then ``prep_cost_growth_wall`` (wall time at 4N over N; goal at most 4.4) and
last the headline ``prep_cost_growth_driver_rss`` (peak driver RSS at 4N over N; goal at most 1.3), each after a
line saying whether its goal is met; the baseline of each ratio is the N run of the same invocation. It fails when a
run fails or its manifest does not account for every generated record; a missed goal only prints ``MISSED``, with
where the time went (the job's own log lines: listing, the Spark job, the rest) and which process's memory grew.

The images are small (64 to 128 pixels wide, from ``bench_prep``'s generator, one bad in 400): the question is how
the cost grows with the record count (the driver lists and plans every record), not what decoding a large image
costs, which ``bench_prep.py`` measures. Both partitions are generated once under ``BENCH_GROWTH_DIR`` (default
``<repo>/var/bench/prep_growth``, about 0.6 GB with the defaults, a minute to make on two cores) and reused; each
run's log and RSS samples are left in ``runs/`` there. With the defaults the two runs take about a minute and a half.
Settings: ``BENCH_GROWTH_RECORDS`` (N, default 20000). Run it on a quiet machine: a busy one stretches both runs
and both ratios.

Usage::

    make bench            # every bench/bench_*.py
    python bench/bench_prep_growth.py
    BENCH_GROWTH_RECORDS=2000 python bench/bench_prep_growth.py    # a quick try
"""

from __future__ import annotations

import csv
import dataclasses
import os
import re
import shutil
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import prelude  # noqa: F401  (first: the repository on sys.path, the environment)
from prelude import DS, say, spark_submit
from tasks.core import run_folder

import bench_prep  # noqa: E402  (its image generator)

RECORDS = prelude.setting("BENCH_GROWTH_RECORDS", 20000)
SCALE = 4
BENCH_DIR = prelude.work_dir("BENCH_GROWTH_DIR", "prep_growth")
WIDTHS = (64, 128)
SAMPLE_EVERY_S = 0.2
WALL_GOAL, RSS_GOAL = 4.4, 1.3
JVM_MAIN = "org.apache.spark.deploy.SparkSubmit"
LAUNCHER_MAIN = "org.apache.spark.launcher.Main"
"""spark-class runs this first to build the JVM's command line, with SparkSubmit among its arguments."""


def vm_kb(pid: int, field: str) -> int:
    """A ``/proc/<pid>/status`` memory field (``VmRSS``, ``VmHWM``) in KiB; 0 once the process is gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError):
        pass
    return 0


def role(cmdline: list[str]) -> str:
    """What a process under spark-submit is: ``jvm`` (the SparkSubmit JVM: driver and, on local[N], executors),
    ``driver`` (the application's Python process), ``worker`` (pyspark's daemon and the executors' Python workers
    it forks, all with the daemon's command line), or ``other`` (spark-class's launcher, shells)."""
    if not cmdline:
        return "other"
    line, program = " ".join(cmdline), Path(cmdline[0]).name
    if program == "java" and JVM_MAIN in line and LAUNCHER_MAIN not in line:
        return "jvm"
    if not program.startswith("python"):
        return "other"
    if "pyspark.daemon" in line or "pyspark.worker" in line:
        return "worker"
    return "driver" if any(arg.endswith("prepare_examples.py") for arg in cmdline) else "other"


class DriverSampler(threading.Thread):
    """Samples, every ``SAMPLE_EVERY_S``, the RSS of the processes under this one (the spark-submit launched
    from the main thread), by role; keeps the peaks and every sample."""

    def __init__(self) -> None:
        super().__init__(name="rss-sampler", daemon=True)
        self.roles: dict[int, str] = {}
        """Each process seen, by pid: its role (``role``)."""
        self.samples: list[tuple[float, int, int, int]] = []
        """``(seconds since start, driver KiB, JVM KiB, workers KiB)``."""
        self.hwm = {"driver": 0, "jvm": 0}
        """VmHWM (the kernel's own peak RSS of the process) last read, KiB: the peak between samples too."""
        self._finished = threading.Event()

    def run(self) -> None:
        import psutil

        me, t0 = psutil.Process(), time.time()
        while not self._finished.wait(SAMPLE_EVERY_S):
            kb = {"driver": 0, "jvm": 0, "worker": 0, "other": 0}
            for proc in me.children(recursive=True):
                # An "other" is asked again: spark-submit's own pid is a shell until spark-class execs the JVM.
                if self.roles.get(proc.pid, "other") == "other":
                    try:
                        self.roles[proc.pid] = role(proc.cmdline())
                    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                        continue
                kind = self.roles[proc.pid]
                kb[kind] += vm_kb(proc.pid, "VmRSS")
                if kind in self.hwm:
                    self.hwm[kind] = max(self.hwm[kind], vm_kb(proc.pid, "VmHWM"))
            self.samples.append((time.time() - t0, kb["driver"], kb["jvm"], kb["worker"]))

    def stop(self) -> None:
        self._finished.set()
        self.join()

    def peaks(self) -> dict[str, float]:
        """Peak MB of the driver Python process, of the JVM, of their sum, and of the executors' Python workers."""
        if not any(d and j for _, d, j, _ in self.samples):
            raise SystemExit("bench_prep_growth: never saw the Python driver and the SparkSubmit JVM running at "
                             f"once (roles seen: {sorted(set(self.roles.values()))}); is spark-submit launching "
                             "tasks/prepare_examples.py as its child?")
        return {"driver": max(s[1] for s in self.samples) / 1024, "jvm": max(s[2] for s in self.samples) / 1024,
                "sum": max(s[1] + s[2] for s in self.samples) / 1024,
                "workers": max(s[3] for s in self.samples) / 1024}


@dataclasses.dataclass
class RunResult:
    records: int
    wall_s: float
    rss_mb: dict[str, float]
    """``DriverSampler.peaks``."""
    hwm_mb: dict[str, float]
    """Each driver process's own peak RSS (VmHWM)."""
    phases: dict[str, float]
    """Seconds of each phase of ``PHASES``, from the job's log; empty when its lines were not found."""
    reported: dict[str, float]
    """The seconds the job's lines report (``phases``)."""
    processes: dict[str, int]
    """How many processes of each role were seen (``role``)."""


MARKS = {"listed": r"records listed, \d+ already bad \(([\d.]+)s\)", "planned": r"vocabulary v\d+ at ",
         "job_done": r"checked and wrote \d+ records in \d+ shard tasks: ([\d.]+)s",
         "written": r"wrote \d+ records to \S+ in \d+ files"}
"""The job's progress lines (``prepare_examples.run``, ``shard_job.execute``) that end its phases; the number a
pattern captures is the seconds the line reports."""
PHASES = {"start_and_listing": "JVM and Python driver start, listing", "session_and_plan": "Spark session and plan",
          "job": "Spark job (staging, check and write)", "outputs": "quarantine, statistics, manifest, commit",
          "exit": "shut-down"}
LOG_LINE = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),(\d{3}) INFO prepare_examples: (.*)$")
"""A line of the job's own log (``tasks.core.runtime.LOG_FORMAT``), local time."""


def phases(log: Path, submitted: float, ended: float) -> tuple[dict[str, float], dict[str, float]]:
    """Seconds of each of ``PHASES``, by the times of the job's lines ``MARKS``; and the seconds those lines
    report (``listed``: the listing alone; ``job_done``: the Spark job alone). Both empty when a line is missing."""
    at, reported = {}, {}
    for line in log.read_text(errors="replace").splitlines():
        if not (m := LOG_LINE.match(line)):
            continue
        for mark, pattern in MARKS.items():
            if mark not in at and (found := re.search(pattern, m.group(3))):
                at[mark] = time.mktime(time.strptime(m.group(1), "%Y-%m-%d %H:%M:%S")) + int(m.group(2)) / 1000
                if found.groups():
                    reported[mark] = float(found.group(1))
    if len(at) < len(MARKS):
        return {}, {}
    ends = [at["listed"], at["planned"], at["job_done"], at["written"], ended]
    return dict(zip(PHASES, (b - a for a, b in zip([submitted, *ends], ends)))), reported


def prep(raw: Path, records: int, py_files: Path, runs: Path) -> RunResult:
    """One prep run through spark-submit, sampled; checks that its manifest accounts for every record."""
    out = runs / f"out-{records}"
    examples = out / "examples" / f"ds={DS}"
    log = runs / f"prepare-{records}.log"
    sampler = DriverSampler()
    sampler.start()
    try:
        submitted = spark_submit("prepare_examples.py", ["--raw", f"file://{raw}", "--output", f"file://{examples}",
                                                       "--partition", DS, "--min-shards", "4"], {}, py_files, log)
        ended = time.time()
    finally:
        sampler.stop()
    with open(runs / f"rss-{records}.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["seconds", "driver_kib", "jvm_kib", "workers_kib"])
        w.writerows((f"{t:.2f}", d, j, k) for t, d, j, k in sampler.samples)
    manifest = prelude.read_json(examples, run_folder.MANIFEST)
    corrupted = sum(1 for i in range(records) if i % bench_prep.BAD_EVERY == 7)
    valid, bad = manifest["num_records"], manifest["bad_records"]
    if valid + bad != records or bad > corrupted:
        raise SystemExit(f"bench_prep_growth: {examples} holds {valid} valid and {bad} bad records, but {records} "
                         f"were generated, {corrupted} of them damaged; see {log}")
    say(f"{records} records prepared: {valid} valid, {bad} bad ({corrupted} generated damaged), in "
        f"{sum(len(files) for files in manifest['files'].values())} shards")
    shutil.rmtree(out)  # the shards are not needed after the check; the log and the samples stay
    spans, reported = phases(log, submitted, ended)
    return RunResult(records, ended - submitted, sampler.peaks(), {k: v / 1024 for k, v in sampler.hwm.items()},
                     spans, reported, dict(Counter(sampler.roles.values())))


def report(r: RunResult) -> None:
    say(f"{r.records} records: wall {r.wall_s:.1f}s, {r.records / r.wall_s:.0f} records/s; peak driver RSS "
        f"{r.rss_mb['sum']:.0f} MB (Python {r.rss_mb['driver']:.0f} MB + JVM {r.rss_mb['jvm']:.0f} MB at their "
        f"peaks apart; VmHWM Python {r.hwm_mb['driver']:.0f} MB, JVM {r.hwm_mb['jvm']:.0f} MB); executors' Python "
        f"workers, not counted: {r.rss_mb['workers']:.0f} MB; processes seen by role {r.processes}")
    if r.phases:
        say("  time: " + ", ".join(f"{PHASES[k]} {v:.1f}s" for k, v in r.phases.items())
            + f" (listing alone {r.reported['listed']:.1f}s, Spark job alone {r.reported['job_done']:.1f}s)")
    else:
        say(f"  time: the job's log lacks one of its progress lines {sorted(MARKS)}: no breakdown")


def verdict(name: str, value: float, goal: float) -> None:
    say(f"{name} {value:.3f}: goal <= {goal}: {'met' if value <= goal else 'MISSED'}")


def main() -> int:
    runs = BENCH_DIR / "runs"
    shutil.rmtree(runs, ignore_errors=True)
    runs.mkdir(parents=True)
    py_files = prelude.tasks_zip(runs)
    raws = {}
    for n in (RECORDS, SCALE * RECORDS):
        raws[n] = BENCH_DIR / f"raw-{n}-w{WIDTHS[0]}-{WIDTHS[1]}" / f"ds={DS}"
        size = bench_prep.make_partition(raws[n], n, WIDTHS)
        say(f"partition {raws[n]}: {n} records, {size / 2**20:.0f} MB")
        bench_prep.warm_page_cache(raws[n])
    say(f"{os.cpu_count()} cores; load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")

    one = prep(raws[RECORDS], RECORDS, py_files, runs)
    many = prep(raws[SCALE * RECORDS], SCALE * RECORDS, py_files, runs)
    report(one)
    report(many)
    say(f"load average now {' '.join(f'{x:.2f}' for x in os.getloadavg())}; logs and RSS samples in {runs}")
    wall, rss = many.wall_s / one.wall_s, many.rss_mb["sum"] / one.rss_mb["sum"]
    say(f"growth at {SCALE}x the records: wall {wall:.2f}, driver RSS {rss:.2f} (Python "
        f"{many.rss_mb['driver'] / one.rss_mb['driver']:.2f}, JVM {many.rss_mb['jvm'] / one.rss_mb['jvm']:.2f})")
    verdict("prep_cost_growth_wall", wall, WALL_GOAL)
    verdict("prep_cost_growth_driver_rss", rss, RSS_GOAL)
    print(f"prep_cost_growth_wall={wall:.3f}")
    print(f"prep_cost_growth_driver_rss={rss:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
