"""Writes one date partition of the demo image dataset, the way an upstream producer would.

Layout of ``<raw_root>/ds=YYYY-MM-DD/``::

    images/img-00000.jpg ...   JPEG and PNG mixed, sizes varied
    labels.csv                 path,label (path relative to the partition)
    _SUCCESS                   written last: the partition is complete

Usage::

    python -m tasks.demo.make_dataset --raw-root file:///.../raw --ds 2026-11-20 --num-images 600
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import hashlib
import io
import logging
import shutil
from pathlib import Path

import numpy as np

from tasks.core import run_folder, runtime
from tasks.io import storage
from tasks.demo import shapes

log = logging.getLogger(__name__)


@dataclasses.dataclass
class Config:
    raw_root: str
    """Storage URL of the raw dataset; the partition goes to ``<raw_root>/ds=<ds>``."""
    ds: str
    """The partition's date, YYYY-MM-DD."""
    num_images: int = 600
    """Images in the partition, spread evenly over the classes."""
    min_size: int = 56
    """Smallest image side in pixels."""
    max_size: int = 112
    """Largest image side in pixels."""
    png_fraction: float = 0.4
    """Fraction of images written as PNG; the rest are JPEG."""
    seed: int | None = None
    """Random seed; by default derived from ``ds`` so a date always gets the same images."""
    classes: tuple[str, ...] = shapes.TARGET_CLASSES
    """Class names drawn."""


def partition_parser(description: str) -> argparse.ArgumentParser:
    """The options of every demo partition generator: where (``--raw-root``), which date (``--ds``), which seed."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--raw-root", required=True)
    p.add_argument("--ds", required=True)
    p.add_argument("--seed", type=int, default=None)
    return p


def parse_args(argv: list[str]) -> Config:
    p = partition_parser(__doc__.splitlines()[0])
    p.add_argument("--num-images", type=int, default=Config.num_images)
    p.add_argument("--min-size", type=int, default=Config.min_size,
                   help="smallest image side in pixels (the real-size demo: 320)")
    p.add_argument("--max-size", type=int, default=Config.max_size,
                   help="largest image side in pixels (the real-size demo: 640)")
    a = p.parse_args(argv)
    if not 8 <= a.min_size <= a.max_size:
        p.error(f"need 8 <= --min-size <= --max-size, got {a.min_size} and {a.max_size}")
    return Config(raw_root=a.raw_root, ds=a.ds, num_images=a.num_images, min_size=a.min_size, max_size=a.max_size,
                  seed=a.seed)


def seed_for(ds: str) -> int:
    return int.from_bytes(hashlib.sha256(ds.encode()).digest()[:4], "big")


def new_partition(raw_root: str, ds: str) -> tuple[str, Path]:
    """The partition's URL and its folder, emptied. Like a producer's job, the folder then fills up file by file
    and ``_SUCCESS`` is written last, so readers must wait for the marker rather than for the folder."""
    part_url = storage.join(raw_root, f"ds={ds}")
    part = storage.local_path(part_url)
    if part.exists():
        shutil.rmtree(part)
    part.mkdir(parents=True)
    return part_url, part


def complete_partition(part_url: str, part: Path, what: str) -> str:
    """Marks the partition written (``_SUCCESS``, last: see ``new_partition``), logs ``what`` it holds and returns
    its URL."""
    (part / run_folder.SUCCESS).write_bytes(b"")
    log.info("wrote %s to %s", what, part_url)
    return part_url


def encode(img, fmt: str, rng: np.random.Generator) -> bytes:
    buf = io.BytesIO()
    if fmt == "JPEG":
        img.save(buf, format="JPEG", quality=int(rng.integers(80, 96)))
    else:
        img.save(buf, format="PNG")
    return buf.getvalue()


def run(cfg: Config) -> str:
    """Writes the partition and returns its URL. An existing partition of that date is rewritten."""
    if cfg.num_images < len(cfg.classes):
        raise ValueError(f"num_images={cfg.num_images} is fewer than the {len(cfg.classes)} classes")
    rng = np.random.default_rng(seed_for(cfg.ds) if cfg.seed is None else cfg.seed)
    part_url, part = new_partition(cfg.raw_root, cfg.ds)
    (part / "images").mkdir()
    rows = []
    for i in range(cfg.num_images):
        label = cfg.classes[i % len(cfg.classes)]
        size = int(rng.integers(cfg.min_size, cfg.max_size + 1))
        fmt = "PNG" if rng.random() < cfg.png_fraction else "JPEG"
        rel = f"images/img-{i:05d}.{'png' if fmt == 'PNG' else 'jpg'}"
        (part / rel).write_bytes(encode(shapes.draw(label, rng, size), fmt, rng))
        rows.append((rel, label))
    # A producer's manifest is not in class order.
    order = rng.permutation(len(rows))
    with open(part / "labels.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "label"])
        for k in order:
            w.writerow(rows[k])
    return complete_partition(part_url, part, f"{cfg.num_images} images of {len(cfg.classes)} classes")


def main(argv: list[str] | None = None) -> None:
    print(runtime.run_application(parse_args, run, argv, log))


if __name__ == "__main__":
    main()
