"""TFRecord files of ``tf.train.Example`` written without importing TensorFlow.

Spark executors that write TFRecords should not pay a TensorFlow import (seconds and hundreds of MB per Python
worker), and the peers' alternative is a Maven jar on the classpath. Both formats are small and stable:

* ``tf.train.Example`` is a protobuf (``tensorflow/core/example/{example,feature}.proto``); this module encodes
  it directly, with the feature keys in sorted order so the same record always gives the same bytes (protobuf's
  own map serialisation order is unspecified).
* A TFRecord is ``uint64 length | uint32 masked_crc32c(length) | data | uint32 masked_crc32c(data)``, little
  endian (``tensorflow/core/lib/io/record_writer.cc``).

The tests parse what is written here with TensorFlow's own ``TFRecordDataset`` and ``tf.io.parse_example``.

The CRC32C comes from ``google-crc32c``'s C extension. Where that extension is missing the package quietly falls back
to pure Python, about 2,000 times slower, which turns a minutes-long prep into hours: the jobs call
``require_fast_crc32c`` at start, and the first checksum in any process (a Spark executor included) checks too.
``TFHUB_ALLOW_SLOW_CRC32C=1`` accepts the slow path, for experiments.
"""

from __future__ import annotations

import functools
import logging
import os
import struct
import warnings
from typing import BinaryIO, Iterable, Mapping, Sequence, Union

with warnings.catch_warnings():
    # Its own warning about the pure-Python fallback; require_fast_crc32c says what to do instead.
    warnings.simplefilter("ignore", RuntimeWarning)
    import google_crc32c

log = logging.getLogger("tfrecord")

FeatureValue = Union[bytes, str, int, float, Sequence[bytes], Sequence[str], Sequence[int], Sequence[float]]

_MASK_DELTA = 0xA282EAD8
ALLOW_SLOW_CRC32C = "TFHUB_ALLOW_SLOW_CRC32C"
_crc32c_checked = False


class SlowCrc32cError(RuntimeError):
    """``google-crc32c`` runs without its C extension and the slow path was not allowed."""


def require_fast_crc32c() -> None:
    """Fails unless ``google-crc32c`` uses its C extension, or ``TFHUB_ALLOW_SLOW_CRC32C=1`` allows the slow path.

    Raises:
        SlowCrc32cError: naming the package's location and the two ways out.
    """
    global _crc32c_checked
    if google_crc32c.implementation != "c":
        where = os.path.dirname(google_crc32c.__file__)
        if os.environ.get(ALLOW_SLOW_CRC32C) != "1":
            raise SlowCrc32cError(
                f"google-crc32c in {where} has no C extension (google_crc32c.cext did not import) and would fall "
                "back to pure Python, about 2,000x slower: TFRecord checksums would dominate the job. Install a "
                "google-crc32c wheel for this platform (pip install --force-reinstall google-crc32c), or set "
                f"{ALLOW_SLOW_CRC32C}=1 to accept the slow path for an experiment")
        if not _crc32c_checked:
            log.warning("google-crc32c in %s has no C extension: pure-Python CRC32C, about 2,000x slower (allowed by "
                        "%s=1)", where, ALLOW_SLOW_CRC32C)
    _crc32c_checked = True


def masked_crc32c(data: bytes) -> int:
    if not _crc32c_checked:
        require_fast_crc32c()
    crc = google_crc32c.value(data)
    return (((crc >> 15) | (crc << 17)) + _MASK_DELTA) & 0xFFFFFFFF


_SMALL_VARINTS = tuple(bytes([n]) for n in range(128))


def _varint(n: int) -> bytes:
    if 0 <= n < 128:
        return _SMALL_VARINTS[n]
    if n < 0:
        n += 1 << 64  # int64 fields encode negatives as 10-byte two's complement
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


# The tags of the length-delimited fields (wire type 2) these messages use: field 1, 2, 3.
_F1, _F2, _F3 = b"\x0a", b"\x12", b"\x1a"

# A message is built as a list of pieces and its length, joined once at the end: an image's bytes are copied into
# the record once, not once per level of nesting (BytesList, Feature, map entry, Features, Example).


@functools.lru_cache(maxsize=1024)
def _key_field(key: str) -> bytes:
    """A feature map entry's key field (field 1)."""
    encoded = key.encode()
    return _F1 + _varint(len(encoded)) + encoded


def _feature(value: FeatureValue) -> tuple[list, int]:
    """A ``Feature`` message as pieces and its length."""
    if isinstance(value, (bytes, str, int, float)):
        value = [value]
    values = list(value)
    if not values:
        raise ValueError("an empty feature has no type; pass at least one value")
    first = values[0]
    if isinstance(first, (bytes, str)):
        pieces, n = [], 0
        for v in values:
            b = v.encode() if isinstance(v, str) else v if type(v) is bytes else bytes(v)
            size = _varint(len(b))
            pieces += (_F1, size, b)
            n += 1 + len(size) + len(b)
        size = _varint(n)
        return [_F1, size, *pieces], 1 + len(size) + n  # Feature.bytes_list
    if isinstance(first, bool) or not isinstance(first, (int, float)):
        raise TypeError(f"unsupported feature value type {type(first).__name__}")
    if isinstance(first, int):
        packed = b"".join([_varint(int(v)) for v in values])
        tag = _F3  # Feature.int64_list, packed
    else:
        packed = struct.pack(f"<{len(values)}f", *values)
        tag = _F2  # Feature.float_list, packed
    inner = _F1 + _varint(len(packed)) + packed
    body = tag + _varint(len(inner)) + inner
    return [body], len(body)


def _example(features: Mapping[str, FeatureValue]) -> tuple[list, int]:
    """A ``tf.train.Example`` as pieces and its length, keys in sorted order."""
    entries, n = [], 0
    for key in sorted(features):
        key_field = _key_field(key)
        feature, feature_len = _feature(features[key])
        feature_size = _varint(feature_len)
        entry_len = len(key_field) + 1 + len(feature_size) + feature_len
        entry_size = _varint(entry_len)
        entries += (_F1, entry_size, key_field, _F2, feature_size, *feature)  # Features.feature map entry
        n += 1 + len(entry_size) + entry_len
    size = _varint(n)
    return [_F1, size, *entries], 1 + len(size) + n  # Example.features


def encode_example(features: Mapping[str, FeatureValue]) -> bytes:
    """Serialises a ``tf.train.Example`` with the given features, keys in sorted order.

    Args:
        features: name to value; bytes/str give a BytesList, int an Int64List, float a FloatList; a list of
            one type gives a list feature.

    Returns:
        The serialised protobuf, identical for identical input.
    """
    return b"".join(_example(features)[0])


def _frame_ends(record: bytes) -> tuple[bytes, bytes]:
    """What TFRecord framing puts before a record (its length and that length's checksum) and after it (the
    record's checksum)."""
    header = struct.pack("<Q", len(record))
    return header + struct.pack("<I", masked_crc32c(header)), struct.pack("<I", masked_crc32c(record))


def frame(record: bytes) -> bytes:
    """One record in TFRecord framing."""
    head, tail = _frame_ends(record)
    return head + record + tail


def write_example(f: BinaryIO, features: Mapping[str, FeatureValue]) -> int:
    """Writes ``frame(encode_example(features))`` to an open binary file, the same bytes with the feature values
    copied once (into the record; the frame's header and checksum are written around it); returns the bytes
    written."""
    record = encode_example(features)
    head, tail = _frame_ends(record)
    f.write(head)
    f.write(record)
    f.write(tail)
    return len(head) + len(record) + len(tail)


def write_records(f: BinaryIO, records: Iterable[bytes]) -> int:
    """Writes records to an open binary file; returns how many."""
    n = 0
    for r in records:
        f.write(frame(r))
        n += 1
    return n


def read_records(f: BinaryIO) -> Iterable[bytes]:
    """Reads and checks TFRecord framing; raises ``ValueError`` naming the offset of a corrupt record."""
    offset = 0
    while True:
        header = f.read(8)
        if not header:
            return
        if len(header) < 8:
            raise ValueError(f"truncated record length at byte {offset}")
        (length,) = struct.unpack("<Q", header)
        (hcrc,) = struct.unpack("<I", f.read(4))
        if hcrc != masked_crc32c(header):
            raise ValueError(f"length checksum mismatch at byte {offset}")
        data = f.read(length)
        crc_bytes = f.read(4)
        if len(data) < length or len(crc_bytes) < 4:
            raise ValueError(f"truncated record at byte {offset}")
        if struct.unpack("<I", crc_bytes)[0] != masked_crc32c(data):
            raise ValueError(f"data checksum mismatch at byte {offset}")
        offset += 16 + length
        yield data
