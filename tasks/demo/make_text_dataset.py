"""Writes one date partition of the demo text dataset, the way an upstream producer would.

Layout of ``<raw_root>/ds=YYYY-MM-DD/``, by ``--layout``::

    csv       texts.csv                 id,text,label (RFC 4180 quoting; rows not in id or class order)
    parquet   texts.parquet             string columns id, text, label (same rows and order as csv)
    folders   <label>/doc-00000.txt ... one UTF-8 text per file, the folder naming its class
    (all)     _SUCCESS                  written last: the partition is complete

Usage::

    python -m tasks.demo.make_text_dataset --raw-root file:///.../raw_text --ds 2026-11-20 --num-docs 600
"""

from __future__ import annotations

import csv
import dataclasses
import logging

import numpy as np

from tasks.core import runtime
from tasks.demo import text
from tasks.demo.make_dataset import complete_partition, new_partition, partition_parser, seed_for

log = logging.getLogger(__name__)

LAYOUTS = ("csv", "parquet", "folders")


@dataclasses.dataclass
class Config:
    raw_root: str
    """Storage URL of the raw dataset; the partition goes to ``<raw_root>/ds=<ds>``."""
    ds: str
    """The partition's date, YYYY-MM-DD."""
    num_docs: int = 600
    """Texts in the partition, spread evenly over the classes."""
    layout: str = "csv"
    """How the partition is written: ``csv``, ``parquet`` or ``folders`` (see the module docstring)."""
    min_words: int = text.MIN_WORDS
    """Fewest words in a text."""
    max_words: int = text.MAX_WORDS
    """Most words in a text."""
    seed: int | None = None
    """Random seed; by default derived from ``ds`` so a date always gets the same texts."""
    classes: tuple[str, ...] = text.TARGET_CLASSES
    """Class names written."""


def parse_args(argv: list[str]) -> Config:
    p = partition_parser(__doc__.splitlines()[0])
    p.add_argument("--num-docs", type=int, default=Config.num_docs)
    p.add_argument("--layout", choices=LAYOUTS, default=Config.layout)
    a = p.parse_args(argv)
    return Config(raw_root=a.raw_root, ds=a.ds, num_docs=a.num_docs, layout=a.layout, seed=a.seed)


def documents(cfg: Config) -> list[tuple[str, str, str]]:
    """The partition's rows ``(id, text, label)`` in the order a producer lists them (shuffled)."""
    rng = np.random.default_rng(seed_for(cfg.ds) if cfg.seed is None else cfg.seed)
    rows = []
    for i in range(cfg.num_docs):
        label = cfg.classes[i % len(cfg.classes)]
        rows.append((f"doc-{i:05d}", text.sentence(label, rng, cfg.min_words, cfg.max_words), label))
    # A producer's listing is not in class order.
    return [rows[k] for k in rng.permutation(len(rows))]


def _write_csv(rows, part) -> None:
    with open(part / "texts.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["id", "text", "label"])
        w.writerows(rows)


def _write_parquet(rows, part) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    ids, texts, labels = (list(c) for c in zip(*rows))
    table = pa.table({"id": pa.array(ids, pa.string()), "text": pa.array(texts, pa.string()),
                      "label": pa.array(labels, pa.string())})
    pq.write_table(table, part / "texts.parquet")


def _write_folders(rows, part) -> None:
    for doc_id, body, label in rows:
        (part / label).mkdir(exist_ok=True)
        (part / label / f"{doc_id}.txt").write_text(body, encoding="utf-8")


def run(cfg: Config) -> str:
    """Writes the partition and returns its URL. An existing partition of that date is rewritten."""
    if cfg.layout not in LAYOUTS:
        raise ValueError(f"layout={cfg.layout!r}; expected one of {LAYOUTS}")
    if cfg.num_docs < len(cfg.classes):
        raise ValueError(f"num_docs={cfg.num_docs} is fewer than the {len(cfg.classes)} classes")
    if not 1 <= cfg.min_words <= cfg.max_words:
        raise ValueError(f"min_words={cfg.min_words}, max_words={cfg.max_words}: need 1 <= min_words <= max_words")
    rows = documents(cfg)
    part_url, part = new_partition(cfg.raw_root, cfg.ds)
    {"csv": _write_csv, "parquet": _write_parquet, "folders": _write_folders}[cfg.layout](rows, part)
    return complete_partition(part_url, part, f"{cfg.num_docs} texts of {len(cfg.classes)} classes as {cfg.layout}")


def main(argv: list[str] | None = None) -> None:
    print(runtime.run_application(parse_args, run, argv, log))


if __name__ == "__main__":
    main()
