"""What differs between task types, behind one small interface; every stage is shared.

A task type (``image_classification``, ``text_classification``) decides:

* which ``tf.Example`` feature holds a record's input (``feature``) and which column holds it in a table layout
  (``column``, of Arrow type ``arrow_type``);
* how a record's bytes are validated (``check``: a ``BadRecord`` or the record's format and measures) and which
  measures the statistics describe (``measures``, under ``stats_key``);
* the input of the served model's ``serving_default`` signature (``serving_input``);
* which hub module kind it fine-tunes (``module_kind``, from the module's ``module_info.json``).

The TensorFlow side (decoding, the model's input layer, augmentation) is in ``tasks.training.model``, keyed by the same
task type. The task type is chosen once, by data prep (``--task-type``), and written into the dataset's
``manifest.json``; fine-tuning, evaluation and export read it from there, so they take no option for it.

Runs in Spark executors: no TensorFlow import.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Callable

from tasks.core import schema
from tasks.prep import image_check
from tasks.prep.image_check import BadRecord

IMAGE_CLASSIFICATION = "image_classification"
TEXT_CLASSIFICATION = "text_classification"


@dataclasses.dataclass(frozen=True)
class TextBounds:
    """What an acceptable text is."""

    min_chars: int = 1
    """Fewest characters after stripping white space; fewer is ``empty_text``."""
    max_chars: int = 20000
    """Most characters; more is ``text_too_long`` (a model truncates silently; we say so instead)."""
    max_bytes: int = 1 * 2**20
    """Largest acceptable encoded size, in bytes; larger records are not read."""


@dataclasses.dataclass(frozen=True)
class Checked:
    """What a valid record is: its format and the measures its statistics describe."""

    format: str
    measures: dict[str, int]


_WORD = re.compile(r"\w+", re.UNICODE)


def check_image(data: bytes, bounds: image_check.Bounds) -> Checked:
    info = image_check.check_image(data, bounds)
    return Checked(info.format, {"width": info.width, "height": info.height, "bytes": len(data)})


def check_text(data: bytes, bounds: TextBounds) -> Checked:
    """UTF-8 text (a BOM is allowed), not blank, within the length bounds.

    Raises:
        BadRecord: ``empty``, ``too_many_bytes``, ``undecodable_text``, ``empty_text`` or ``text_too_long``.
    """
    if not data:
        raise BadRecord("empty", "0 bytes")
    if len(data) > bounds.max_bytes:
        raise BadRecord("too_many_bytes", f"{len(data)} bytes > max_text_bytes {bounds.max_bytes}")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise BadRecord("undecodable_text", f"not UTF-8: {e.reason} at byte {e.start} "
                                            f"({data[max(0, e.start - 8):e.start + 8]!r})") from None
    if "\x00" in text:
        raise BadRecord("undecodable_text", f"NUL character at {text.index(chr(0))}: binary data, not text")
    stripped = text.strip()
    if len(stripped) < bounds.min_chars:
        raise BadRecord("empty_text", f"{len(stripped)} characters after stripping white space "
                                      f"(min_text_chars {bounds.min_chars})")
    if len(text) > bounds.max_chars:
        raise BadRecord("text_too_long", f"{len(text)} characters > max_text_chars {bounds.max_chars}")
    return Checked("utf-8", {"chars": len(text), "words": len(_WORD.findall(text)), "bytes": len(data)})


@dataclasses.dataclass(frozen=True)
class Modality:
    task_type: str
    feature: str
    """The ``tf.Example`` feature of the input (bytes)."""
    column: str
    """Default column of the input in table layouts (Parquet, CSV)."""
    arrow_type: str
    """Arrow type of that column: ``binary`` or ``string``."""
    layouts: tuple[str, ...]
    """Raw layouts this task type reads (``tasks.prep.layouts.LAYOUTS``)."""
    measures: tuple[str, ...]
    """Per-record measures in the statistics."""
    stats_key: str
    """Key of those measures in ``stats.json``."""
    serving_input: str
    """Input name of the exported ``serving_default`` signature (a string tensor)."""
    module_kind: str
    """``kind`` in the hub module's ``module_info.json`` that this task type fine-tunes."""
    check: Callable[[bytes, object], Checked]
    """Validates a record's bytes against the bounds of ``bounds_of``."""


IMAGE = Modality(IMAGE_CLASSIFICATION, schema.IMAGE, "image", "binary", ("manifest", "folders", "parquet", "table"),
                 ("width", "height", "bytes"), "image_size", "image_bytes", "image_feature_vector", check_image)
TEXT = Modality(TEXT_CLASSIFICATION, schema.TEXT, "text", "string", ("csv", "parquet", "folders", "manifest",
                                                                    "table"),
                ("chars", "words", "bytes"), "text_length", "text", "text_embedding", check_text)

TASK_TYPES = {m.task_type: m for m in (IMAGE, TEXT)}


def of(task_type: str | None) -> Modality:
    """The modality of a task type; a manifest written before task types existed is an image dataset."""
    try:
        return TASK_TYPES[task_type or IMAGE_CLASSIFICATION]
    except KeyError:
        raise ValueError(f"unknown task_type {task_type!r}; use one of {sorted(TASK_TYPES)}") from None


def of_manifest(manifest: dict) -> Modality:
    return of(manifest.get("task_type"))
