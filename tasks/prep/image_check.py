"""Whether a record's bytes are an image that training can decode, within the configured size bounds.

Runs in Spark executors: PIL, libjpeg-turbo (``simplejpeg``) and ISA-L's inflate (``isal``), no TensorFlow. An
image passes when PIL identifies it as JPEG or PNG (the formats the training input and the served model decode),
``verify()`` accepts its structure (PNG chunk checksums), its sides are within bounds, and its pixel data decodes,
which is what catches a truncated or corrupt file. A corrupt image is rejected before it can stop a training job
hours later.

Every rejection is a ``BadRecord`` with a reason code from ``REASONS`` and a detail naming what was found.

Two checks give the same verdicts:

* ``check_image_full``, the reference: a full decode (``load()``) of every image.
* ``check_image``, what prep runs, at about 40% of the cost (PIL's full decode was most of prep's time). It decodes
  a JPEG at 1/8 scale with libjpeg-turbo in strict mode (``simplejpeg``: libjpeg still reads and entropy-decodes
  every byte of every scan, which is where truncation and corruption show, but skips most of the inverse DCT and
  colour conversion; strict turns each of libjpeg's warnings, such as corrupt data or a premature end, into a
  failure); for a JPEG whose headers hold nothing PIL parses itself (``_plain_jpeg_size``: no Exif, ICC, MPF or
  Adobe segment) it skips opening it with PIL, whose Python parse of the headers was about 8% of the check. For a
  plain 8-bit PNG it inflates the pixel data (ISA-L's inflate, about 1.6 times zlib's here) and checks its length
  and row filters without unfiltering it, which is all PIL's decoder can fail on. Whatever that finds wrong, and
  any image outside those cases, gets the full decode, so every rejection carries exactly the reference's reason
  and detail; a valid image is never decoded twice. ``tests/tasks/test_image_check.py`` compares the two on
  damaged images of every kind.
"""

from __future__ import annotations

import dataclasses
import io
import struct

import simplejpeg
from isal import isal_zlib
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


def _identify(im: Image.Image, data: bytes, bounds: Bounds) -> tuple[str, int, int]:
    """The format and size of an opened image; for a PNG, ``verify()`` first (chunk structure and checksums).

    Raises:
        BadRecord: a structure PIL rejects, a format other than JPEG and PNG, or a side out of bounds.
    """
    fmt, (width, height) = im.format, im.size
    try:
        # A JPEG's verify() only closes the file: skipped, so that the same image object can then be decoded.
        if fmt == "PNG":
            im.verify()
    except DECODE_ERRORS as e:
        raise _decode_failure(data, fmt, e) from None
    if fmt not in FORMATS:
        raise BadRecord("unsupported_format", f"{fmt} image; only JPEG and PNG are accepted")
    if min(width, height) < bounds.min_side:
        raise BadRecord("too_small", f"{width}x{height} pixels, a side < min_image_side {bounds.min_side}")
    if max(width, height) > bounds.max_side:
        raise BadRecord("too_large", f"{width}x{height} pixels, a side > max_image_side {bounds.max_side}")
    return fmt, width, height


def _opened(data: bytes) -> Image.Image:
    """``Image.open`` on the bytes, with what it raises as a ``BadRecord``."""
    try:
        return Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise BadRecord("not_an_image", f"no image format recognised ({len(data)} bytes, starting "
                                        f"{data[:8]!r})") from None
    except Image.DecompressionBombError as e:
        raise BadRecord("too_large", str(e)) from None
    except DECODE_ERRORS as e:
        raise _decode_failure(data, None, e) from None


def _check_bytes(data: bytes, bounds: Bounds) -> None:
    if not data:
        raise BadRecord("empty", "0 bytes")
    if len(data) > bounds.max_bytes:
        raise BadRecord("too_many_bytes", f"{len(data)} bytes > max_image_bytes {bounds.max_bytes}")


def _full_decode(data: bytes, fmt: str) -> None:
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
    except DECODE_ERRORS as e:
        raise _decode_failure(data, fmt, e) from None


def check_image_full(data: bytes, bounds: Bounds) -> ImageInfo:
    """The reference check: what ``check_image`` does, with a full decode of every image.

    Args:
        data: the record's bytes.
        bounds: size limits.

    Returns:
        The image's format and size.

    Raises:
        BadRecord: with the first check that fails.
    """
    _check_bytes(data, bounds)
    with _opened(data) as im:
        fmt, width, height = _identify(im, data, bounds)
    _full_decode(data, fmt)
    return ImageInfo(FORMATS[fmt], width, height)


def check_image(data: bytes, bounds: Bounds) -> ImageInfo:
    """Checks encoded image bytes (``data``) against ``bounds``, with the verdicts of ``check_image_full`` at about
    40% of its cost: the image's format and size, or ``BadRecord`` with the reason and detail of the first check
    that fails, those ``check_image_full`` gives."""
    _check_bytes(data, bounds)
    plain = _plain_jpeg_size(data, bounds)
    if plain is not None and _jpeg_decodes_at_reduced_scale(data):
        return ImageInfo(FORMATS["JPEG"], *plain)
    with _opened(data) as im:
        fmt, width, height = _identify(im, data, bounds)
    # A plain JPEG got here because libjpeg did not decode it cleanly: no second try.
    decoded = plain is None and (_jpeg_decodes_at_reduced_scale(data) if fmt == "JPEG" else _png_pixels_complete(data))
    if not decoded:  # damaged, or a case the fast check does not cover: the reference decides, and says why
        _full_decode(data, fmt)
    return ImageInfo(FORMATS[fmt], width, height)


_JPEG_FRAMES = {0xC0, 0xC1, 0xC2}
"""Start-of-frame markers of a plain JPEG: baseline, extended and progressive, Huffman-coded."""
_JPEG_TABLES = {0xC4, 0xDD, 0xFE}
"""Segments PIL skips or keeps as they are: Huffman tables, the restart interval, comments."""


def _plain_jpeg_size(data: bytes, bounds: Bounds) -> tuple[int, int] | None:
    """``(width, height)`` of a JPEG whose headers PIL is known to open as a JPEG of that size, within ``bounds``;
    None for anything else (the caller then opens it with PIL, as the reference does).

    Plain: an APP0 PIL reads whole (a JFIF one of at least 14 bytes, or another), no Exif (PIL parses it when
    opening), no APP2 (an ICC profile, or MPF, which makes PIL open the file as MPO) and no other APP segment that
    PIL parses (Photoshop, Adobe), quantization tables that PIL's parser accepts, one 8-bit frame of 1 or 3
    components, every segment complete up to the start of scan, and no more pixels than PIL opens without a
    decompression-bomb warning. Walking them costs a few microseconds; PIL's own parse of the same headers (in
    Python) cost about 8% of the whole check."""
    if not data.startswith(b"\xff\xd8\xff"):
        return None
    pos, end, size = 2, len(data), None
    while True:
        if pos + 4 > end or data[pos] != 0xFF:
            return None
        marker, length = data[pos + 1], (data[pos + 2] << 8) | data[pos + 3]
        body = data[pos + 4:pos + 2 + length]
        if length < 2 or pos + 2 + length > end:
            return None
        if marker == 0xDA:  # start of scan: the headers end
            break
        if marker in _JPEG_FRAMES:
            if size is not None or len(body) < 6 or body[0] != 8 or body[5] not in (1, 3) \
                    or len(body) != 6 + 3 * body[5]:
                return None
            size = ((body[3] << 8) | body[4], (body[1] << 8) | body[2])
        elif marker == 0xDB:
            while body:  # PIL's DQT: one byte of precision and index, then 64 values of 1 or 2 bytes
                table = 1 + 64 * (1 if body[0] >> 4 == 0 else 2)
                if len(body) < table:
                    return None
                body = body[table:]
        elif marker == 0xE0:
            if body.startswith(b"JFIF") and len(body) < 14:
                return None
        elif marker == 0xE1:
            if body.startswith(b"Exif"):
                return None
        elif marker not in _JPEG_TABLES:
            return None
        pos += 2 + length
    if size is None:
        return None
    width, height = size
    if min(width, height) < bounds.min_side or max(width, height) > bounds.max_side:
        return None
    if Image.MAX_IMAGE_PIXELS is not None and width * height > Image.MAX_IMAGE_PIXELS:
        return None
    return size


def _jpeg_decodes_at_reduced_scale(data: bytes) -> bool:
    """Whether a JPEG decodes at 1/8 scale without an error or a warning from libjpeg. The entropy-coded data is
    read and decoded in full at any scale, so a file that ends early or whose scans are broken fails here as it
    does at full size; the reason and detail then come from the full decode."""
    try:
        simplejpeg.decode_jpeg(data, colorspace="GRAY", fastdct=True, fastupsample=True, min_height=1, min_width=1,
                               min_factor=8, strict=True)
    except ValueError:  # what simplejpeg raises for libjpeg's errors, and its warnings under strict
        return False
    return True


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}
"""Samples per pixel of each PNG colour type: grey, RGB, palette, grey and alpha, RGBA."""
_APNG_CHUNKS = {b"acTL", b"fcTL", b"fdAT"}


def _png_pixels_complete(data: bytes) -> bool:
    """Whether a PNG that ``verify()`` accepted decodes, without unfiltering it: True only when it is
    non-interlaced, not animated, 8 bits per sample, its IDAT chunks are consecutive and followed by IEND, and
    their zlib stream inflates (checksum included) to exactly one filter-type byte (0 to 4) and the pixels of
    each row. PIL's PNG decoder fails only on a zlib error, an unknown filter type, or pixel data that ends before
    the last row (``ZipDecode.c``), so such a PNG decodes. False says only that the full decode must decide:
    PIL accepts some of these (a short stream, trailing data)."""
    # The first chunk is the header (PIL read it so), 13 bytes after the 8 of the signature and its length and type.
    if len(data) < 33 or not data.startswith(_PNG_SIGNATURE + b"\x00\x00\x00\x0dIHDR"):
        return False
    width, height, depth, colour, compression, filtering, interlace = struct.unpack_from(">IIBBBBB", data, 16)
    if depth != 8 or colour not in _PNG_CHANNELS or (compression, filtering, interlace) != (0, 0, 0):
        return False
    pos, end, idat, after_idat = 33, len(data), [], None
    while pos + 8 <= end:
        length, cid = struct.unpack_from(">I4s", data, pos)
        body = pos + 8
        if body + length + 4 > end or cid in _APNG_CHUNKS or cid == b"IHDR":
            return False
        if cid == b"IDAT":
            if after_idat is not None:  # IDAT chunks apart: PIL reads only the first run
                return False
            idat.append(data[body:body + length])
        elif idat and after_idat is None:
            after_idat = cid
        if cid == b"IEND":
            break
        pos = body + length + 4
    if not idat or after_idat != b"IEND":
        return False
    stride = 1 + width * _PNG_CHANNELS[colour]
    expected = height * stride
    z = isal_zlib.decompressobj()
    pixels = bytearray()
    try:
        for last, chunk in enumerate(idat, 1 - len(idat)):  # chunk by chunk: no joined copy of the stream
            pixels += z.decompress(chunk, expected + 1 - len(pixels))
            if z.eof or len(pixels) > expected:
                break
    except isal_zlib.error:
        return False
    # ``last`` is 0 at the last chunk: the stream must end there, as it had to end with the joined chunks.
    return (len(pixels) == expected and z.eof and not z.unused_data and last == 0
            and max(pixels[::stride], default=0) <= 4)


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
