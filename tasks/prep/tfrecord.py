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


def _varint(n: int) -> bytes:
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


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited field (wire type 2)."""
    return _varint((number << 3) | 2) + _varint(len(payload)) + payload


def _feature(value: FeatureValue) -> bytes:
    if isinstance(value, (bytes, str, int, float)):
        value = [value]
    values = list(value)
    if not values:
        raise ValueError("an empty feature has no type; pass at least one value")
    first = values[0]
    if isinstance(first, (bytes, str)):
        items = b"".join(_field(1, v.encode() if isinstance(v, str) else bytes(v)) for v in values)
        return _field(1, items)  # Feature.bytes_list
    if isinstance(first, bool) or not isinstance(first, (int, float)):
        raise TypeError(f"unsupported feature value type {type(first).__name__}")
    if isinstance(first, int):
        packed = b"".join(_varint(int(v)) for v in values)
        return _field(3, _field(1, packed))  # Feature.int64_list, packed
    packed = struct.pack(f"<{len(values)}f", *values)
    return _field(2, _field(1, packed))  # Feature.float_list, packed


def encode_example(features: Mapping[str, FeatureValue]) -> bytes:
    """Serialises a ``tf.train.Example`` with the given features, keys in sorted order.

    Args:
        features: name to value; bytes/str give a BytesList, int an Int64List, float a FloatList; a list of
            one type gives a list feature.

    Returns:
        The serialised protobuf, identical for identical input.
    """
    entries = b"".join(
        _field(1, _field(1, key.encode()) + _field(2, _feature(features[key]))) for key in sorted(features)
    )
    return _field(1, entries)  # Example.features


def frame(record: bytes) -> bytes:
    """One record in TFRecord framing."""
    header = struct.pack("<Q", len(record))
    return header + struct.pack("<I", masked_crc32c(header)) + record + struct.pack("<I", masked_crc32c(record))


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
