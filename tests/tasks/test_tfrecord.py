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
