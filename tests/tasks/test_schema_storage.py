from __future__ import annotations

import pytest

from tasks.core import schema
from tasks.io import commit, storage


def test_split_is_a_stable_function_of_the_record_id():
    ids = [f"images/img-{i:05d}.jpg" for i in range(5000)]
    fractions = (0.7, 0.1, 0.2)
    first = [schema.split_of(i, fractions) for i in ids]
    assert first == [schema.split_of(i, fractions) for i in ids]
    share = {s: first.count(s) / len(ids) for s in schema.SPLITS}
    assert share["train"] == pytest.approx(0.7, abs=0.03)
    assert share["eval"] == pytest.approx(0.1, abs=0.02)
    assert share["test"] == pytest.approx(0.2, abs=0.03)
    # Adding records to a partition does not move the others.
    assert [schema.split_of(i, fractions) for i in ids[:100]] == first[:100]


def test_shard_of_covers_all_shards():
    shards = {schema.shard_of(f"r{i}", 7) for i in range(2000)}
    assert shards == set(range(7))


def test_image_format_from_magic_bytes():
    assert schema.image_format(b"\xff\xd8\xff\xe0rest") == "jpeg"
    assert schema.image_format(b"\x89PNG\r\n\x1a\nrest") == "png"
    assert schema.image_format(b"GIF89a") is None


def test_local_path_rejects_what_it_cannot_serve():
    assert str(storage.local_path("file:///a/b")) == "/a/b"
    with pytest.raises(storage.StorageError, match="relative"):
        storage.local_path("a/b")
    with pytest.raises(storage.StorageError, match="scheme 'hdfs'"):
        storage.local_path("hdfs://nn:8020/a")
    with pytest.raises(storage.StorageError, match="names host"):
        storage.local_path("file://otherhost/a")


def test_commit_dir_replaces_existing_output_whole(tmp_path):
    url = f"file://{tmp_path}/out"
    for content in ("first", "second"):
        staging = commit.output_staging(url)
        (staging / "data").write_text(content)
        commit.publish_dir(staging, url)
    assert (tmp_path / "out" / "data").read_text() == "second"
    assert not (tmp_path / "out" / "out").exists()  # a rename onto a folder must not nest
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_clean_stale_removes_leftovers_of_killed_attempts(tmp_path):
    url = f"file://{tmp_path}/out"
    commit.output_staging(url)
    (tmp_path / "keep").mkdir()
    commit.clean_stale(url)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep"]
