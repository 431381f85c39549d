"""Whether a record's bytes are an image that training can decode, within the configured size bounds.

Runs in Spark executors: PIL only, no TensorFlow. An image passes when PIL identifies it as JPEG or PNG (the
formats the training input and the served model decode), ``verify()`` accepts its structure (PNG chunk checksums),
its sides are within bounds, and a full decode (``load()``) succeeds, which is what catches a truncated file. A
corrupt image is rejected before it can stop a training job hours later.

Every rejection is a ``BadRecord`` with a reason code from ``REASONS`` and a detail naming what was found.
"""

from __future__ import annotations

import dataclasses
import io
import struct

from PIL import Image, UnidentifiedImageError

REASONS = {
    "missing_file": "the labels manifest lists a path that has no file",
    "empty": "zero bytes (an empty file, or a null image value)",
    "too_many_bytes": "more bytes than max_image_bytes (not read, not copied to quarantine)",
    "not_an_image": "no image format recognised in the bytes",
    "unsupported_format": "an image, but neither JPEG nor PNG",
    "truncated": "the image data ends early",
    "corrupt": "the image does not decode",
    "too_small": "a side shorter than min_image_side",
    "too_large": "a side longer than max_image_side",
    "unlabelled": "no label: a file the labels manifest does not list, or one outside the class folders",
    "missing_label": "an empty label",
    "invalid_label": "a label with control characters or longer than 200 characters",
    "unknown_label": "a label outside the declared labels, or not in the vocabulary under --new-label-policy "
                     "quarantine",
    "duplicate_id": "the same record id more than once",
    "missing_id": "a manifest row or Parquet row without a record id",
    "unexpected_file": "a file that is not part of the layout (in a Parquet partition, a file that is not .parquet)",
    "undecodable_text": "text that is not UTF-8, or binary data",
    "empty_text": "text that is blank, or shorter than min_text_chars",
    "text_too_long": "text longer than max_text_chars",
}
"""Reason codes of bad records, and what each means."""

DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, struct.error, IndexError)
"""What PIL raises for malformed image data (``UnidentifiedImageError`` is an ``OSError``; PNG checksum errors
are ``SyntaxError``). Anything else is a bug or an environment problem and is left to fail the task."""

FORMATS = {"JPEG": "jpeg", "PNG": "png"}

_JPEG_END = b"\xff\xd9"
_PNG_END = b"IEND\xaeB`\x82"


class BadRecord(Exception):
    """A record that fails a check: ``reason`` (a key of ``REASONS``) and ``detail``."""

    def __init__(self, reason: str, detail: str) -> None:
        if reason not in REASONS:
            raise ValueError(f"unknown bad-record reason {reason!r}")
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclasses.dataclass(frozen=True)
class Bounds:
    """Size bounds of an acceptable image."""

    min_side: int = 8
    """Shortest acceptable width or height, in pixels."""
    max_side: int = 16384
    """Longest acceptable width or height, in pixels; larger images are not decoded at all."""
    max_bytes: int = 64 * 2**20
    """Largest acceptable encoded size, in bytes."""


@dataclasses.dataclass(frozen=True)
class ImageInfo:
    """What a valid image is."""

    format: str
    """``jpeg`` or ``png``."""
    width: int
    height: int


def _decode_failure(data: bytes, fmt: str | None, e: BaseException) -> BadRecord:
    message = f"{type(e).__name__}: {e}"
    ends = {"JPEG": _JPEG_END, "PNG": _PNG_END}.get(fmt or "")
    # PIL says "truncated" for JPEG; a missing end marker tells the same for either format.
    if "truncat" in message.lower() or (ends is not None and ends not in data[-64:]):
        return BadRecord("truncated", f"{fmt or 'image'} data ends early ({len(data)} bytes): {message}")
    return BadRecord("corrupt", f"{fmt or 'image'} does not decode: {message}")


def check_image(data: bytes, bounds: Bounds) -> ImageInfo:
    """Checks encoded image bytes.

    Args:
        data: the record's bytes.
        bounds: size limits.

    Returns:
        The image's format and size.

    Raises:
        BadRecord: with the first check that fails.
    """
    if not data:
        raise BadRecord("empty", "0 bytes")
    if len(data) > bounds.max_bytes:
        raise BadRecord("too_many_bytes", f"{len(data)} bytes > max_image_bytes {bounds.max_bytes}")
    fmt = None
    try:
        with Image.open(io.BytesIO(data)) as im:
            fmt, (width, height) = im.format, im.size
            if fmt in FORMATS:
                im.verify()
    except UnidentifiedImageError:
        raise BadRecord("not_an_image", f"no image format recognised ({len(data)} bytes, starting "
                                        f"{data[:8]!r})") from None
    except Image.DecompressionBombError as e:
        raise BadRecord("too_large", str(e)) from None
    except DECODE_ERRORS as e:
        raise _decode_failure(data, fmt, e) from None
    if fmt not in FORMATS:
        raise BadRecord("unsupported_format", f"{fmt} image; only JPEG and PNG are accepted")
    if min(width, height) < bounds.min_side:
        raise BadRecord("too_small", f"{width}x{height} pixels, a side < min_image_side {bounds.min_side}")
    if max(width, height) > bounds.max_side:
        raise BadRecord("too_large", f"{width}x{height} pixels, a side > max_image_side {bounds.max_side}")
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
    except DECODE_ERRORS as e:
        raise _decode_failure(data, fmt, e) from None
    return ImageInfo(FORMATS[fmt], width, height)


def label_problem(label: str | None) -> BadRecord | None:
    """Why a label cannot be used, or None. Labels become lines of the served model's ``labels.txt``, so a
    newline or any other control character is refused."""
    if label is None or not label.strip():
        return BadRecord("missing_label", "empty label")
    if len(label) > 200:
        return BadRecord("invalid_label", f"label of {len(label)} characters (at most 200): {label[:40]!r}...")
    if any(ord(c) < 32 or ord(c) == 127 for c in label):
        return BadRecord("invalid_label", f"label {label!r} has control characters")
    return None
