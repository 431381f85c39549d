"""Data-prep benchmark: our Spark prep with every core against a single Python process, on the same partition.

Both turn one generated raw partition (JPEG and some PNG photos-like images of 320 to 640 pixels, a labels.csv,
and a few corrupt, truncated and empty files) into the same sharded TFRecords:

* ours: ``tasks.prepare_examples.run`` on Spark ``local[*]``, with a session already started (its start-up time
  is printed apart: spark-submit pays it once per job, whatever the data) whose JVM has the JIT options of the
  jobs' drivers (``driver_jit_options``);
* baseline: one Python process that lists and plans the partition with the job's ``plan_partition``, then for
  each shard reads every file, checks it with the same ``image_check.check_image`` and writes it with
  ``tf.io.TFRecordWriter`` (bad records to a quarantine file, the same way). The ``tf.train.Example`` bytes come
  from the same encoder as ours (``prep_tasks.example_bytes``): TensorFlow's protobuf runtime serialises the
  feature map in another order ("label/text" before "label" even with ``deterministic=True``), which TensorFlow
  parses the same but which is not the same bytes;
* ceiling: ``tf.io.TFRecordWriter.write`` alone, on the records already serialised.

Ours and the baseline run ``BENCH_PREP_REPEATS`` times each, alternating, and the best run of each is compared (as
the training benchmarks do); the TFRecord files of each pair must be byte-identical, or the benchmark fails. It
prints records/s of each run, then ``prep_records_per_sec=`` (ours), ``prep_ceiling_records_per_sec=``,
``prep_fraction_of_ceiling=`` (ours over the ceiling), and ends with ``prep_speedup=<ours/baseline>``. It uses prep's
public interface only: ``prepare_examples.run`` for ours; ``prepare_examples.plan_partition``,
``image_check.check_image`` and ``prep_tasks.example_bytes`` for the baseline.

The partition is generated once into ``var/bench/raw/`` (about 1 GB with the defaults, about a minute on two
cores) and reused. Settings: ``BENCH_PREP_IMAGES`` (default 20000), ``BENCH_PREP_REPEATS`` (default 3),
``BENCH_PREP_DIR`` (default ``<repo>/var/bench``).

Usage::

    make bench            # every bench/bench_*.py
    python bench/bench_prep.py
"""

from __future__ import annotations

import hashlib
import io
import json
import multiprocessing
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import prelude  # noqa: F401  (first: the repository on sys.path, the environment)
from prelude import say
from tasks.core import run_folder

prelude.spark_in_this_process()

NUM_IMAGES = prelude.setting("BENCH_PREP_IMAGES", 20000)
REPEATS = prelude.setting("BENCH_PREP_REPEATS", 3)
"""Runs of ours and of the baseline, alternating; the best of each is kept (a run is about 15 and 25 s here, and
one run moved by 15% from one try to the next on the quiet machine)."""
BENCH_DIR = prelude.work_dir("BENCH_PREP_DIR")
PARTITION = "2026-01-01"
DS = f"ds={PARTITION}"
CLASSES = ("cat", "dog", "bird", "fish", "horse", "car", "plane", "ship")
BAD_EVERY = 400  # one bad file in 400: corrupt, truncated or empty, in turn
WIDTHS = (320, 640)
"""The images' smallest and largest width in pixels (``bench_prep_growth.py`` makes smaller ones)."""


def _image(i: int, widths: tuple[int, int] = WIDTHS) -> tuple[str, bytes]:
    """Image ``i``: a smooth random background with a few discs and sensor-like noise, as a JPEG (PNG one in
    ten), ``widths[0]`` to ``widths[1]`` pixels wide (320 to 640 by default), 4:3."""
    import numpy as np
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(i)
    w = int(rng.integers(widths[0], widths[1] + 1))
    h = w * 3 // 4
    img = Image.fromarray(rng.integers(0, 256, size=(6, 8, 3), dtype=np.uint8)).resize((w, h), Image.BICUBIC)
    d = ImageDraw.Draw(img)
    for _ in range(3):
        x, y, r = int(rng.integers(0, w)), int(rng.integers(0, h)), int(rng.integers(10, w // 4))
        d.ellipse([x - r, y - r, x + r, y + r], fill=tuple(int(c) for c in rng.integers(0, 256, 3)))
    noisy = np.asarray(img).astype(np.int16) + rng.integers(-12, 13, size=(h, w, 1), dtype=np.int16)
    img = Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8))
    buf = io.BytesIO()
    if i % 10 == 3:
        img.save(buf, format="PNG", compress_level=1)
        ext = "png"
    else:
        img.save(buf, format="JPEG", quality=85)
        ext = "jpg"
    data = buf.getvalue()
    if i % BAD_EVERY == 7:
        kind = (i // BAD_EVERY) % 3
        data = [data[: len(data) // 2], b"", data[:200] + os.urandom(len(data) - 200)][kind]
    return f"images/{i // 1000:03d}/img-{i:06d}.{ext}", data


def _write_image(args: tuple[Path, int, tuple[int, int]]) -> tuple[str, int]:
    raw, i, widths = args
    rel, data = _image(i, widths)
    path = raw / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return rel, len(data)


def make_partition(raw: Path, num_images: int = NUM_IMAGES, widths: tuple[int, int] = WIDTHS) -> int:
    """Generates the raw partition of ``num_images`` images once; returns its size in bytes."""
    params = {"images": num_images, "classes": list(CLASSES), "bad_every": BAD_EVERY, "version": 1}
    if widths != WIDTHS:  # only then, so that partitions generated before widths were a parameter stay valid
        params["widths"] = list(widths)
    marker = raw / "_bench_params.json"
    if (raw / run_folder.SUCCESS).exists() and marker.exists() and json.loads(marker.read_text()) == params:
        return sum(p.stat().st_size for p in raw.rglob("*") if p.is_file())
    say(f"generating {num_images} images into {raw} (once)")
    shutil.rmtree(raw, ignore_errors=True)
    raw.mkdir(parents=True)
    t = time.time()
    with multiprocessing.Pool(os.cpu_count()) as pool:
        written = pool.map(_write_image, [(raw, i, widths) for i in range(num_images)], chunksize=64)
    # Classes are skewed (the first has four times the share of the last), as real ones are.
    weights = [len(CLASSES) - k // 2 for k in range(len(CLASSES))]
    bag = [c for c, w in zip(CLASSES, weights) for _ in range(w)]
    lines = ["path,label"] + [f"{rel},{bag[int(hashlib.sha256(rel.encode()).hexdigest(), 16) % len(bag)]}"
                              for rel, _ in written]
    (raw / "labels.csv").write_text("\n".join(lines) + "\n")
    marker.write_text(json.dumps(params))
    (raw / run_folder.SUCCESS).write_bytes(b"")
    say(f"generated in {time.time() - t:.0f}s")
    return sum(n for _, n in written)


def warm_page_cache(raw: Path) -> None:
    """Reads every raw file once, so that neither contender pays the first read from disk."""
    for p in raw.rglob("*"):
        if p.is_file():
            p.read_bytes()


def driver_jit_options() -> str:
    """The JIT options of the jobs' Spark drivers, from the deployment's Spark settings
    (``config/embedded/variables.json``, ``spark.driver.extraJavaOptions``): the ``-XX:`` options that name no
    file (the class-data archive only shortens start-up, which is not counted here), so that Spark's JVM runs as
    the jobs' does: with the default JIT its optimising compiler is busy through the job (on 5,000 of these images
    the JVM took 0.3 to 0.6 ms of CPU a record, against 0.1 with these options)."""
    conf = json.loads((prelude.ROOT / "config" / "embedded" / "variables.json").read_text())
    options = conf["tfhub_pipeline"]["spark_conf"].get("spark.driver.extraJavaOptions", "")
    return " ".join(o for o in options.split() if o.startswith("-XX:") and "@" not in o and "File" not in o)


def tree_cpu_seconds() -> float:
    """CPU seconds used so far by this process and its descendants (the Spark JVM and its Python workers)."""
    import psutil

    me = psutil.Process()
    total = 0.0
    for proc in [me, *me.children(recursive=True)]:
        try:
            t = proc.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += t.user + t.system + t.children_user + t.children_system
    return total


def run_ours(spark, raw: Path, out: Path):
    from tasks import prepare_examples as P

    cfg = P.Config(raw=f"file://{raw}", output=f"file://{out}/examples/{DS}", partition=PARTITION,
                   max_bad_fraction=0.05)
    cpu, t = tree_cpu_seconds(), time.time()
    manifest = P.run(cfg, spark)
    return time.time() - t, tree_cpu_seconds() - cpu, manifest


def run_baseline(raw: Path, out: Path, tf) -> tuple[float, float, int, float]:
    """The single-process loop: the job's own listing and plan (``plan_partition``), the same check
    (``image_check.check_image``) and Example bytes (``prep_tasks.example_bytes``), ``tf.io.TFRecordWriter``.

    Returns:
        Wall seconds, CPU seconds, records written, and the seconds of those spent in ``check_image``.
    """
    from tasks.core import schema
    from tasks.io import storage
    from tasks.prep import image_check, modality, prep_tasks, tfrecord
    from tasks import prepare_examples as P

    t, cpu = time.time(), time.process_time()
    cfg = P.Config(raw=f"file://{raw}", output=f"file://{out}/examples/{DS}", partition=PARTITION)
    _, plan = P.plan_partition(cfg)
    bounds = image_check.Bounds(cfg.min_image_side, cfg.max_image_side, cfg.max_image_bytes)
    dest = out / "examples" / DS
    dest.mkdir(parents=True)
    raw_dir = storage.local_path(cfg.raw)

    written, checking = 0, 0.0
    with tf.io.TFRecordWriter(str(out / "quarantine.tfrecord")) as bad_writer:
        for task in plan.tasks:
            with tf.io.TFRecordWriter(str(dest / task.name)) as writer:
                for r in task.records:
                    data = (raw_dir / r.source).read_bytes() if r.source else b""
                    problem = r.problem
                    if problem is None:
                        started = time.perf_counter()
                        try:
                            info = image_check.check_image(data, bounds)
                        except image_check.BadRecord as bad:
                            problem = (bad.reason, bad.detail)
                        checking += time.perf_counter() - started
                    if problem is None:
                        writer.write(prep_tasks.example_bytes(r.id, data, info.format, r.label_id, r.label,
                                                              modality.IMAGE))
                        written += 1
                    else:
                        bad_writer.write(tfrecord.encode_example({
                            schema.RECORD_ID: r.id, schema.LABEL_TEXT: r.label,
                            prep_tasks.QUARANTINE_REASON: problem[0], prep_tasks.QUARANTINE_DETAIL: problem[1],
                            prep_tasks.QUARANTINE_SOURCE: r.source, schema.IMAGE: data}))
    return time.time() - t, time.process_time() - cpu, written, checking


def ceiling(files: list[Path], tf, scratch: Path) -> tuple[float, int, int]:
    """TFRecordWriter.write alone on pre-serialised records: seconds, records, bytes."""
    records = [bytes(r.numpy()) for r in tf.data.TFRecordDataset([str(f) for f in files])]
    t = time.time()
    with tf.io.TFRecordWriter(str(scratch / "ceiling.tfrecord")) as w:
        for r in records:
            w.write(r)
    return time.time() - t, len(records), sum(map(len, records))


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def start_spark(cores: int):
    """A Spark session ``local[*]`` whose JVM has the jobs' drivers' JIT options, its Python workers already up;
    its start-up time is said apart (spark-submit pays it once per job, whatever the data)."""
    from pyspark.sql import SparkSession

    t = time.time()
    java_options = driver_jit_options()
    spark = (SparkSession.builder.master("local[*]").appName("bench_prep")
             .config("spark.ui.enabled", "false").config("spark.ui.showConsoleProgress", "false")
             .config("spark.driver.extraJavaOptions", java_options)
             .getOrCreate())
    spark.sparkContext.setLogLevel("ERROR")
    spark.sparkContext.parallelize(range(cores), cores).count()  # Python workers up
    say(f"Spark session local[*] ({java_options or 'default JIT'}) started in {time.time() - t:.1f}s (not counted "
        "below)")
    return spark


def timed_pair(spark, raw: Path, work: Path, k: int, tf) -> dict:
    """Run ``k`` of ours then of the baseline, their outputs checked byte for byte; keeps run 0's outputs (the
    ceiling writes its records again) and removes the others'."""
    cores = os.cpu_count()
    ours_s, ours_cpu, manifest = run_ours(spark, raw, work / f"ours-{k}")
    total = manifest["num_records"] + manifest["bad_records"]
    say(f"ours (Spark local[*], {cores} cores), run {k + 1} of {REPEATS}: {total} records ({manifest['num_records']} "
        f"valid, {manifest['bad_records']} bad) in {ours_s:.1f}s = {total / ours_s:.0f} records/s")
    base_s, base_cpu, written, checking = run_baseline(raw, work / f"baseline-{k}", tf)
    say(f"baseline (one Python process, tf.io.TFRecordWriter), run {k + 1} of {REPEATS}: {total} records "
        f"({written} valid) in {base_s:.1f}s = {total / base_s:.0f} records/s; image checks {checking:.1f}s of it "
        f"({100 * checking / base_s:.0f}%, {1000 * checking / total:.2f} ms a record)")
    ours_dir, base_dir = work / f"ours-{k}" / "examples" / DS, work / f"baseline-{k}" / "examples" / DS
    names = [f["name"] for s in manifest["files"].values() for f in s]
    differ = [n for n in names if digest(ours_dir / n) != digest(base_dir / n)]
    if written != manifest["num_records"] or differ:
        raise SystemExit(f"bench_prep: FAIL: outputs differ: {written} vs {manifest['num_records']} records; "
                         f"files {differ[:5]}")
    say(f"outputs identical: {len(names)} TFRecord files, "
        f"{sum((ours_dir / n).stat().st_size for n in names) / 2**20:.0f} MB")
    shutil.rmtree(work / f"baseline-{k}")
    if k:
        shutil.rmtree(work / f"ours-{k}")
    return {"ours_s": ours_s, "ours_cpu": ours_cpu, "base_s": base_s, "base_cpu": base_cpu, "total": total,
            "files": [work / "ours-0" / "examples" / DS / n for n in names]}


def main() -> int:
    import logging

    logging.basicConfig(level=logging.WARNING, format="[%(name)s %(asctime)s] %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("prepare_examples").setLevel(logging.INFO)  # its progress lines
    raw = BENCH_DIR / "raw" / DS
    size = make_partition(raw)
    cores = os.cpu_count()
    say(f"partition {raw}: {NUM_IMAGES} records, {size / 2**20:.0f} MB; {cores} cores; "
        f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    warm_page_cache(raw)

    import tensorflow as tf

    spark = start_spark(cores)
    work = Path(tempfile.mkdtemp(prefix="bench-prep-", dir=BENCH_DIR))
    try:
        runs = [timed_pair(spark, raw, work, k, tf) for k in range(REPEATS)]
        spark.stop()
        ours = min(runs, key=lambda r: r["ours_s"])
        base = min(runs, key=lambda r: r["base_s"])
        total, ours_s, base_s = ours["total"], ours["ours_s"], base["base_s"]
        seconds = {k: ", ".join(f"{r[k]:.1f}" for r in runs) for k in ("ours_s", "base_s")}
        say(f"best of {REPEATS}: ours {ours_s:.1f}s (runs {seconds['ours_s']}), baseline {base_s:.1f}s (runs "
            f"{seconds['base_s']})")
        ceil_s, n, nbytes = ceiling(ours["files"], tf, work)
        say(f"ceiling (TFRecordWriter.write on pre-serialised records): {n} records, {nbytes / 2**20:.0f} MB in "
            f"{ceil_s:.2f}s = {n / ceil_s:.0f} records/s; ours runs at {100 * (total / ours_s) / (n / ceil_s):.1f}% "
            f"of it, the baseline at {100 * (total / base_s) / (n / ceil_s):.1f}%")
        print(f"prep_records_per_sec={total / ours_s:.0f}")
        print(f"prep_ceiling_records_per_sec={n / ceil_s:.0f}")
        print(f"prep_fraction_of_ceiling={(total / ours_s) / (n / ceil_s):.3f}")
        ours_cpu, base_cpu = ours["ours_cpu"], base["base_cpu"]
        say(f"CPU time: ours {ours_cpu:.1f}s (driver, JVM and Python workers), baseline {base_cpu:.1f}s: ours "
            f"spends {100 * (ours_cpu / base_cpu - 1):+.0f}% CPU; on {cores} idle cores its wall time cannot go below "
            f"{ours_cpu / cores:.1f}s, a speedup of at most {base_cpu / (ours_cpu / cores):.2f}")
        say(f"load average now {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"prep_speedup={base_s / ours_s:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
