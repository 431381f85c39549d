"""Our TF-free TFRecord/tf.Example writer, checked against TensorFlow's own reader and parser."""

from __future__ import annotations

import io

import pytest

from tasks.prep import tfrecord


@pytest.fixture(scope="module")
def tf():
    import tensorflow as tf

    return tf


def test_example_parses_with_tensorflow(tf):
    data = tfrecord.encode_example({
        "image/encoded": b"\x00\xffbytes",
        "label": 3,
        "big": -(2**40),
        "text": "héllo",
        "floats": [0.5, -1.25],
        "ints": [1, 2, 300],
    })
    ex = tf.io.parse_single_example(data, {
        "image/encoded": tf.io.FixedLenFeature([], tf.string),
        "label": tf.io.FixedLenFeature([], tf.int64),
        "big": tf.io.FixedLenFeature([], tf.int64),
        "text": tf.io.FixedLenFeature([], tf.string),
        "floats": tf.io.FixedLenFeature([2], tf.float32),
        "ints": tf.io.FixedLenFeature([3], tf.int64),
    })
    assert ex["image/encoded"].numpy() == b"\x00\xffbytes"
    assert int(ex["label"]) == 3
    assert int(ex["big"]) == -(2**40)
    assert ex["text"].numpy().decode() == "héllo"
    assert ex["floats"].numpy().tolist() == [0.5, -1.25]
    assert ex["ints"].numpy().tolist() == [1, 2, 300]
    # And TensorFlow's protobuf class reads the same message.
    assert tf.train.Example.FromString(data).features.feature["label"].int64_list.value == [3]


def test_encoding_is_deterministic_whatever_the_key_order():
    a = tfrecord.encode_example({"a": 1, "b": b"x", "c": "y"})
    b = tfrecord.encode_example({"c": "y", "a": 1, "b": b"x"})
    assert a == b


def test_tfrecord_dataset_reads_written_file(tf, tmp_path):
    records = [tfrecord.encode_example({"i": i}) for i in range(50)]
    path = tmp_path / "x.tfrecord"
    with open(path, "wb") as f:
        assert tfrecord.write_records(f, records) == 50
    read = [r.numpy() for r in tf.data.TFRecordDataset(str(path))]
    assert read == records
    with open(path, "rb") as f:
        assert list(tfrecord.read_records(f)) == records


def test_masked_crc_matches_tensorflow(tf, tmp_path):
    # TensorFlow's writer and ours produce the same bytes for the same records.
    path = tmp_path / "tf.tfrecord"
    with tf.io.TFRecordWriter(str(path)) as w:
        w.write(b"payload")
    assert path.read_bytes() == tfrecord.frame(b"payload")


def test_corruption_is_detected_with_offset():
    buf = bytearray(tfrecord.frame(b"first") + tfrecord.frame(b"second"))
    buf[-6] ^= 0xFF  # inside the second record's data
    with pytest.raises(ValueError, match="data checksum mismatch at byte 21"):
        list(tfrecord.read_records(io.BytesIO(bytes(buf))))
    with pytest.raises(ValueError, match="truncated"):
        list(tfrecord.read_records(io.BytesIO(tfrecord.frame(b"abc")[:-2])))


def test_rejects_values_it_cannot_type():
    with pytest.raises(ValueError, match="empty feature"):
        tfrecord.encode_example({"x": []})
    with pytest.raises(TypeError):
        tfrecord.encode_example({"x": [object()]})


def _reference_example(features) -> bytes:
    """The protobuf encoding written out level by level (each message serialised, then wrapped in its parent's
    field): what ``encode_example`` builds in pieces and joins once."""
    import struct

    def varint(n):
        n = n + (1 << 64) if n < 0 else n
        out = bytearray()
        while True:
            out.append((n & 0x7F) | (0x80 if n > 0x7F else 0))
            n >>= 7
            if not n:
                return bytes(out)

    def field(number, payload):
        return varint(number << 3 | 2) + varint(len(payload)) + payload

    def feature(value):
        values = value if isinstance(value, list) else [value]
        if isinstance(values[0], (bytes, bytearray, memoryview, str)):
            return field(1, b"".join(field(1, v.encode() if isinstance(v, str) else bytes(v)) for v in values))
        if isinstance(values[0], int):
            return field(3, field(1, b"".join(varint(v) for v in values)))
        return field(2, field(1, struct.pack(f"<{len(values)}f", *values)))

    return field(1, b"".join(field(1, field(1, k.encode()) + field(2, feature(features[k]))) for k in sorted(features)))


@pytest.mark.parametrize("features", [
    {"image/encoded": bytes(range(256)) * 300, "image/format": "jpeg", "label": 3, "label/text": "cat",
     "record/id": "images/000/img-000001.jpg"},
    {"k" * 200: b"", "é": "ü" * 70, "n": -1, "big": 2**62, "zero": 0, "edge": 127, "edge2": 128},
    {"list": [b"a", bytearray(b"b" * 130), memoryview(b"c")], "ints": list(range(-3, 300)), "f": [0.5, 1e-3]},
])
def test_encoding_and_framing_match_the_message_built_level_by_level(features):
    data = tfrecord.encode_example(features)
    assert data == _reference_example(features)
    f = io.BytesIO()
    assert tfrecord.write_example(f, features) == len(f.getvalue())
    assert f.getvalue() == tfrecord.frame(data)
