"""The demo's text inputs: a producer-style text partition in three layouts and a reusable TF Hub text module."""

from __future__ import annotations

import csv
import json
import re

import numpy as np
import pytest

from tasks.training import hub_module
from tasks.demo import make_text_dataset, make_text_module, text

LAYOUTS = make_text_dataset.LAYOUTS


def write_partition(raw_root, ds: str, num_docs: int, layout: str, seed: int | None = None):
    make_text_dataset.run(make_text_dataset.Config(raw_root=f"file://{raw_root}", ds=ds, num_docs=num_docs,
                                                   layout=layout, seed=seed))
    return raw_root / f"ds={ds}"


def read_partition(part, layout: str) -> list[tuple[str, str, str]]:
    """The partition's ``(id, text, label)`` rows, in the order the layout lists them."""
    if layout == "csv":
        with open(part / "texts.csv", newline="", encoding="utf-8") as f:
            reader = csv.reader(f)
            assert next(reader) == ["id", "text", "label"]
            return [tuple(r) for r in reader]
    if layout == "parquet":
        import pyarrow.parquet as pq

        table = pq.read_table(part / "texts.parquet")
        assert table.schema.names == ["id", "text", "label"]
        assert all(str(t) == "string" for t in table.schema.types)
        return list(zip(*(table.column(c).to_pylist() for c in ("id", "text", "label"))))
    rows = []
    for p in sorted(part.glob("*/*.txt")):
        rows.append((p.stem, p.read_text(encoding="utf-8"), p.parent.name))
    assert sorted(p.name for p in part.iterdir()) == ["_SUCCESS", *sorted(text.TARGET_CLASSES)]
    return rows


@pytest.mark.parametrize("layout", LAYOUTS)
def test_text_partition_is_written_like_a_producer(tmp_path, layout):
    part = write_partition(tmp_path / "raw", "2026-11-20", num_docs=40, layout=layout)
    rows = read_partition(part, layout)
    assert sorted(r[0] for r in rows) == [f"doc-{i:05d}" for i in range(40)]
    labels = [r[2] for r in rows]
    assert {lab: labels.count(lab) for lab in set(labels)} == {c: 10 for c in text.TARGET_CLASSES}
    if layout != "folders":
        assert [r[0] for r in rows] != sorted(r[0] for r in rows), "rows should not be in id order"
    assert all(r[1] and "\n" not in r[1] for r in rows)
    assert (part / "_SUCCESS").read_bytes() == b""
    # The marker was written last: no file is newer (a partition of few files may share its clock tick).
    marker = (part / "_SUCCESS").stat().st_mtime_ns
    assert all(p.stat().st_mtime_ns <= marker for p in part.rglob("*") if p.is_file())


def test_layouts_hold_the_same_texts_with_quoting_and_utf8(tmp_path):
    by_layout = {lay: sorted(read_partition(write_partition(tmp_path / lay, "2026-11-20", 200, lay), lay))
                 for lay in LAYOUTS}
    assert by_layout["csv"] == by_layout["parquet"] == by_layout["folders"]
    texts = [r[1] for r in by_layout["csv"]]
    # Texts with commas and double quotes went through CSV quoting and came back whole.
    assert any("," in t for t in texts) and any('"' in t for t in texts)
    assert any(not t.isascii() for t in texts)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_text_partition_is_reproducible_per_date(tmp_path, layout):
    a = write_partition(tmp_path / "a", "2026-11-20", 24, layout)
    b = write_partition(tmp_path / "b", "2026-11-20", 24, layout)
    c = write_partition(tmp_path / "c", "2026-11-21", 24, layout)
    files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
    assert all((a / f).read_bytes() == (b / f).read_bytes() for f in files)
    assert read_partition(a, layout) != read_partition(c, layout)


def test_rewriting_a_partition_replaces_it_whole(tmp_path):
    write_partition(tmp_path / "raw", "2026-11-20", 12, "folders")
    part = write_partition(tmp_path / "raw", "2026-11-20", 12, "csv")
    assert sorted(p.name for p in part.iterdir()) == ["_SUCCESS", "texts.csv"]


def test_cli_writes_the_chosen_layout(tmp_path, capsys):
    make_text_dataset.main(["--raw-root", f"file://{tmp_path}", "--ds", "2026-11-20", "--num-docs", "8",
                            "--layout", "parquet", "--seed", "3"])
    assert capsys.readouterr().out.strip() == f"file://{tmp_path}/ds=2026-11-20"
    assert (tmp_path / "ds=2026-11-20" / "texts.parquet").exists()
    with pytest.raises(SystemExit):
        make_text_dataset.parse_args(["--raw-root", "file:///x", "--ds", "2026-11-20", "--layout", "json"])


def test_sentences_vary_in_length_and_stay_in_bounds():
    rng = np.random.default_rng(0)
    lengths = []
    for label in text.TARGET_CLASSES:
        for _ in range(50):
            lengths.append(len(re.findall(r"[^\W_]+", text.sentence(label, rng))))
    assert min(lengths) >= text.MIN_WORDS and max(lengths) <= text.MAX_WORDS
    assert len(set(lengths)) > 20
    assert len(text.corpus(np.random.default_rng(1), 30)) == 30
    with pytest.raises(ValueError, match="unknown topic 'gardening'"):
        text.sentence("gardening", rng)


@pytest.fixture(scope="module")
def small_text_module(tmp_path_factory):
    """A text module with little pre-training: for tests of the module API and of saving, not accuracy."""
    out = tmp_path_factory.mktemp("hub") / "small_text"
    make_text_module.run(make_text_module.Config(output=f"file://{out}", feature_dim=16, embed_dim=16,
                                                 num_buckets=512, pretext_sentences=300, epochs=1))
    return out


def test_text_module_is_a_reusable_savedmodel(small_text_module):
    import tensorflow as tf
    import tensorflow_hub as hub

    loaded = tf.saved_model.load(str(small_text_module))
    assert len(loaded.variables) == 3
    assert len(loaded.trainable_variables) == 3
    assert len(loaded.regularization_losses) == 1
    x = tf.constant(["The striker scored!", "Rain and thunder tomorrow", ""])
    for training in (False, True):
        out = loaded(x, training=training)
        assert out.shape == (3, 16) and out.dtype == tf.float32
        assert np.all(np.isfinite(out.numpy()))

    frozen = hub.KerasLayer(str(small_text_module), trainable=False)
    trainable = hub.KerasLayer(str(small_text_module), trainable=True)
    assert frozen(x).shape == (3, 16)
    assert trainable(x).shape == (3, 16)
    assert len(frozen.trainable_weights) == 0
    assert len(trainable.trainable_weights) == 3
    assert len(trainable.losses) == 1


def test_text_module_tokenizes_inside_the_graph(small_text_module):
    import tensorflow as tf

    loaded = tf.saved_model.load(str(small_text_module))
    same = loaded(tf.constant(["The STRIKER, scored -- again!", "the striker scored again"])).numpy()
    np.testing.assert_allclose(same[0], same[1], atol=1e-6)
    utf8 = loaded(tf.constant(["CRÈME brûlée", "crème brûlée", "creme brulee"])).numpy()
    np.testing.assert_allclose(utf8[0], utf8[1], atol=1e-6)
    assert not np.allclose(utf8[1], utf8[2])


def test_text_module_records_what_it_is(small_text_module):
    info = json.loads((small_text_module / hub_module.INFO_PATH).read_text())
    assert info["format"] == "tf2-reusable-savedmodel"
    assert info["kind"] == "text_embedding"
    assert info["input"] == "string"
    assert info["feature_dim"] == 16
    assert info["pretext_task"] == "masked_word_cbow" and info["pretext_uses_target_labels"] is False
    # Written atomically: no staging folder is left beside the module.
    assert [p.name for p in small_text_module.parent.iterdir()] == ["small_text"]


def test_keras_model_with_the_text_module_trains_saves_and_reloads(small_text_module, tmp_path):
    import tensorflow as tf
    import tensorflow_hub as hub

    rows = make_text_dataset.documents(make_text_dataset.Config(raw_root="file:///unused", ds="2026-11-20",
                                                                num_docs=64))
    x = np.array([r[1] for r in rows], dtype=object)
    y = np.array([text.TARGET_CLASSES.index(r[2]) for r in rows])
    tf.keras.utils.set_random_seed(0)
    inputs = tf.keras.Input(shape=(), dtype=tf.string)
    layer = hub.KerasLayer(str(small_text_module), trainable=True)
    model = tf.keras.Model(inputs, tf.keras.layers.Dense(4, activation="softmax")(layer(inputs)))
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    before = [w.numpy().copy() for w in layer.trainable_weights]
    model.fit(x, y, epochs=1, batch_size=16, verbose=0)
    assert any(not np.allclose(b, w.numpy()) for b, w in zip(before, layer.trainable_weights))

    model.save(str(tmp_path / "model"))
    assert (tmp_path / "model" / "saved_model.pb").exists()
    reloaded = tf.keras.models.load_model(str(tmp_path / "model"), custom_objects={"KerasLayer": hub.KerasLayer},
                                          compile=False)
    np.testing.assert_allclose(reloaded.predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-6)


def frozen_accuracy(module, ds: str) -> float:
    """Test accuracy of a Dense softmax head on the frozen module, trained on 70% of a 600-text partition."""
    import tensorflow as tf
    import tensorflow_hub as hub

    rows = make_text_dataset.documents(make_text_dataset.Config(raw_root="file:///unused", ds=ds, num_docs=600))
    x = np.array([r[1] for r in rows], dtype=object)
    y = np.array([text.TARGET_CLASSES.index(r[2]) for r in rows])
    n_train = int(0.7 * len(x))
    tf.keras.utils.set_random_seed(0)
    inputs = tf.keras.Input(shape=(), dtype=tf.string)
    features = hub.KerasLayer(str(module), trainable=False)(inputs)
    model = tf.keras.Model(inputs, tf.keras.layers.Dense(len(text.TARGET_CLASSES), activation="softmax")(features))
    model.compile(optimizer=tf.keras.optimizers.Adam(1e-2), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    model.fit(x[:n_train], y[:n_train], epochs=15, batch_size=32, verbose=0)
    return model.evaluate(x[n_train:], y[n_train:], verbose=0)[1]


def test_pretraining_transfers_to_the_target_classes(tmp_path):
    # A shortened pre-training (the default one reaches about 0.97); an untrained module of the same shape is the
    # baseline: what the head gets from random embeddings.
    shape = dict(feature_dim=32, embed_dim=64, num_buckets=2048)
    trained, untrained = tmp_path / "trained", tmp_path / "untrained"
    make_text_module.run(make_text_module.Config(output=f"file://{trained}", pretext_sentences=6000, epochs=3,
                                                 **shape))
    make_text_module.run(make_text_module.Config(output=f"file://{untrained}", pretext_sentences=300, epochs=0,
                                                 **shape))
    pretrained_acc, baseline_acc = frozen_accuracy(trained, "2026-11-20"), frozen_accuracy(untrained, "2026-11-20")
    assert pretrained_acc >= 0.85, pretrained_acc
    assert pretrained_acc >= baseline_acc + 0.2, (pretrained_acc, baseline_acc)


def test_finetune_refuses_a_hub_module_of_the_other_kind(small_text_module, small_hub_module):
    from tasks.prep import modality

    text_url, image_url = f"file://{small_text_module}", f"file://{small_hub_module}"
    hub_module.check_kind(text_url, modality.TEXT.module_kind, modality.TEXT.task_type)
    hub_module.check_kind(image_url, modality.IMAGE.module_kind, modality.IMAGE.task_type)
    with pytest.raises(hub_module.HubModuleError, match=r"is of kind 'image_feature_vector', but the "
                                                        r"dataset is for text_classification"):
        hub_module.check_kind(image_url, modality.TEXT.module_kind, modality.TEXT.task_type)
    with pytest.raises(hub_module.HubModuleError, match="is of kind 'text_embedding'"):
        hub_module.check_kind(text_url, modality.IMAGE.module_kind, modality.IMAGE.task_type)
