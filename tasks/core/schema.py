"""The contract between data prep and training: feature names, split names, file names."""

from __future__ import annotations

import hashlib

from tasks.core import run_folder

IMAGE = "image/encoded"
"""Encoded image bytes (JPEG or PNG), as the producer wrote them."""
TEXT = "text"
"""UTF-8 text of a text record (``text_classification``)."""
FORMAT = "image/format"
"""``jpeg`` or ``png``."""
LABEL = "label"
"""Integer class id, an index into the manifest's ``labels``."""
LABEL_TEXT = "label/text"
"""Class name."""
RECORD_ID = "record/id"
"""Stable id of the record: its path relative to the raw partition."""

SPLITS = ("train", "eval", "test")
MANIFEST = run_folder.MANIFEST
SUCCESS = run_folder.SUCCESS


def shard_name(split: str, index: int, count: int) -> str:
    return f"{split}-{index:05d}-of-{count:05d}.tfrecord"


def _unit(record_id: str, salt: bytes) -> float:
    digest = hashlib.sha256(salt + record_id.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def split_of(record_id: str, fractions: tuple[float, float, float]) -> str:
    """The split of a record: a function of its id alone, so the same record lands in the same split on every
    day and every rerun, whatever else is in the partition."""
    u = _unit(record_id, b"split:")
    if u < fractions[0]:
        return SPLITS[0]
    if u < fractions[0] + fractions[1]:
        return SPLITS[1]
    return SPLITS[2]


def shard_of(record_id: str, num_shards: int) -> int:
    """The shard of a record within its split, independent of the split hash."""
    return int(_unit(record_id, b"shard:") * num_shards)


def image_format(data: bytes) -> str | None:
    """``jpeg``, ``png`` or None, from the file's magic bytes."""
    if data[:3] == b"\xff\xd8\xff":
        return "jpeg"
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return "png"
    return None
