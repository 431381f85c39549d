"""Raw partitions with the defects production data has, and the other input layouts, for the data-prep tests."""

from __future__ import annotations

import csv
import io
import shutil
from pathlib import Path

from PIL import Image

CLASSES = ("circle", "cross", "square", "triangle")


def image_bytes(fmt: str = "PNG", size: tuple[int, int] = (40, 30), seed: int = 0) -> bytes:
    """An image of random pixels (so that most of the file is image data, not headers)."""
    import numpy as np

    pixels = np.random.default_rng(seed).integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format=fmt)
    return buf.getvalue()


def read_rows(raw: Path) -> list[list[str]]:
    return list(csv.reader(open(raw / "labels.csv", newline="")))


def write_rows(raw: Path, rows: list[list[str]]) -> None:
    with open(raw / "labels.csv", "w", newline="") as f:
        csv.writer(f).writerows(rows)


def add_defects(raw: Path) -> dict[str, str]:
    """Adds one file (or manifest row) of every kind of bad record to a manifest-layout partition.

    Returns:
        ``{record id: the reason the prep must give}``. With ``labels=CLASSES`` declared, the partition's
        original records all stay valid.
    """
    img = raw / "images"
    good_jpeg = image_bytes("JPEG", (64, 48))
    good_png = image_bytes("PNG", (64, 48))
    corrupt_png = bytearray(good_png)
    idat = corrupt_png.index(b"IDAT")
    corrupt_png[idat + 6:idat + 12] = b"\x00\x11\x22\x33\x44\x55"  # data changed, checksum not
    files = {
        "images/truncated.jpg": (good_jpeg[: len(good_jpeg) // 2], "circle", "truncated"),
        "images/truncated.png": (good_png[: len(good_png) * 3 // 5], "square", "truncated"),
        "images/corrupt.png": (bytes(corrupt_png), "cross", "corrupt"),
        "images/empty.jpg": (b"", "circle", "empty"),
        "images/notes.jpg": (b"these are not the pixels you are looking for\n" * 4, "triangle", "not_an_image"),
        "images/anim.gif": (image_bytes("GIF", (32, 32)), "square", "unsupported_format"),
        "images/tiny.png": (image_bytes("PNG", (4, 4)), "circle", "too_small"),
        "images/wrong-label.jpg": (good_jpeg, "hexagon", "unknown_label"),
        "images/no-label.png": (good_png, "", "missing_label"),
    }
    rows = read_rows(raw)
    expected = {}
    for rel, (data, label, reason) in files.items():
        (raw / rel).write_bytes(data)
        rows.append([rel, label])
        expected[rel] = reason
    (img / "unlisted.jpg").write_bytes(good_jpeg)
    expected["images/unlisted.jpg"] = "unlabelled"
    rows.append(["images/gone.jpg", "cross"])
    expected["images/gone.jpg"] = "missing_file"
    write_rows(raw, rows)
    return expected


def to_folders(manifest_partition: Path, dest: Path) -> Path:
    """The same records as one folder per class (``<label>/<file name>``), with ``_SUCCESS``."""
    dest.mkdir(parents=True)
    for rel, label in read_rows(manifest_partition)[1:]:
        (dest / label).mkdir(exist_ok=True)
        shutil.copyfile(manifest_partition / rel, dest / label / Path(rel).name)
    (dest / "_SUCCESS").write_bytes(b"")
    return dest


def to_parquet(manifest_partition: Path, dest: Path, files: int = 2, row_group_size: int = 7) -> Path:
    """The same records as Parquet files of ``(path, label, image)`` rows, in several row groups, with
    ``_SUCCESS``."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = read_rows(manifest_partition)[1:]
    dest.mkdir(parents=True)
    for k in range(files):
        part = rows[k::files]
        table = pa.table({
            "path": [rel for rel, _ in part],
            "label": [label for _, label in part],
            "image": pa.array([(manifest_partition / rel).read_bytes() for rel, _ in part], pa.binary()),
        })
        pq.write_table(table, dest / f"part-{k:05d}.parquet", row_group_size=row_group_size)
    (dest / "_SUCCESS").write_bytes(b"")
    return dest


def read_tfrecords(paths) -> list[dict]:
    """Every ``tf.train.Example`` of the files, parsed with TensorFlow, features as Python values."""
    import tensorflow as tf

    out = []
    for path in paths:
        for rec in tf.data.TFRecordDataset(str(path)):
            feats = tf.train.Example.FromString(rec.numpy()).features.feature
            row = {}
            for key, f in feats.items():
                kind = f.WhichOneof("kind")
                value = getattr(f, kind).value[0]
                row[key] = value.decode() if kind == "bytes_list" and key != "image/encoded" else value
            out.append(row)
    return out
