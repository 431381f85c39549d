"""The same DAG with ``task_type=text_classification``, through Airflow's real task runner (`airflow dags test`).

The session fixture ``trained_text_run`` (tests/conftest.py) builds the demo text module with its default
pre-training and a generated CSV partition of texts (plus a few bad rows), under its own dataset folder and model
name, and runs the DAG for 2026-11-20; this module checks the outputs: the same stages, TFRecords of texts, the
accuracy bar of the image test, and an exported model that classifies held-back sentences in a fresh process
with plain TensorFlow.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from tasks.core import schema
from tasks.demo import text
from tests.conftest import DEMO_DS as DS

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def text_run(trained_text_run):
    """The session's text demo run (``trained_text_run``, with ``TEXT_CONF`` and ``TEXT_BAD_ROWS``)."""
    return trained_text_run.storage, trained_text_run.result


def test_text_dag_run_succeeds_through_the_same_stages(text_run):
    storage, res = text_run
    out = res.stdout + res.stderr
    assert res.returncode == 0, out[-5000:]
    assert "state=success" in out, out[-5000:]
    assert f"topics/raw/ds={DS}" in out
    assert "text_classification: hub module hub/text_embed_64" in out
    assert "epoch 15/15 done: loss" in out


def test_examples_hold_the_texts_and_bad_rows_are_quarantined(text_run):
    import tensorflow as tf

    storage, _ = text_run
    examples = storage / "topics" / "examples" / f"ds={DS}"
    manifest = json.loads((examples / schema.MANIFEST).read_text())
    assert manifest["task_type"] == "text_classification" and manifest["layout"] == "csv"
    assert manifest["num_records"] == 600 and manifest["bad_records"] == 2
    assert manifest["labels"] == sorted(text.TARGET_CLASSES)
    rows = {r["id"]: r for r in csv.DictReader(open(storage / "topics" / "raw" / f"ds={DS}" / "texts.csv"))}
    for f in examples.glob("train-*.tfrecord"):
        for rec in tf.data.TFRecordDataset(str(f)).take(5):
            feats = tf.train.Example.FromString(rec.numpy()).features.feature
            row = rows[feats[schema.RECORD_ID].bytes_list.value[0].decode()]
            assert feats[schema.TEXT].bytes_list.value[0].decode() == row["text"]
            assert feats[schema.LABEL_TEXT].bytes_list.value[0].decode() == row["label"]
    index = [json.loads(x) for x in open(storage / "topics" / "quarantine" / f"ds={DS}" / "quarantine.jsonl")]
    assert sorted((q["id"], q["reason"]) for q in index) == [("bad-blank", "empty_text"),
                                                              ("bad-nolabel", "missing_label")]
    stats = json.loads((examples / "stats.json").read_text())
    assert stats["text_length"]["words"]["min"] >= text.MIN_WORDS


def test_text_model_meets_the_accuracy_bar_and_is_published_under_its_name(text_run):
    storage, _ = text_run
    run = storage / "topics" / "runs" / f"ds={DS}"
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["accuracy"] >= 0.9, metrics
    history = json.loads((run / "history.json").read_text())
    assert history["task_type"] == "text_classification" and history["image_size"] is None
    assert "| task type | text_classification |" in (run / "report.md").read_text()
    assert sorted(p.name for p in (storage / "serving").iterdir()) == ["topics"]
    assert (storage / "serving" / "topics" / "20261120" / "assets.extra" / "tf_serving_warmup_requests").exists()


def test_exported_text_model_classifies_held_back_sentences_in_a_fresh_process(text_run):
    storage, _ = text_run
    version = storage / "serving" / "topics" / "20261120"
    rng = np.random.default_rng(424242)
    truth = [text.TARGET_CLASSES[i % len(text.TARGET_CLASSES)] for i in range(80)]
    sentences = [text.sentence(label, rng) for label in truth]
    code = textwrap.dedent(f"""
        import json, tensorflow as tf
        model = tf.saved_model.load({str(version)!r})
        sentences = {sentences!r}
        out = model.signatures["serving_default"](text=tf.constant(sentences))
        examples = [tf.train.Example(features=tf.train.Features(feature={{
            "text": tf.train.Feature(bytes_list=tf.train.BytesList(value=[s.encode()]))}})).SerializeToString()
            for s in sentences[:8]]
        classified = model.signatures["classify"](inputs=tf.constant(examples))
        best = tf.gather(classified["classes"], tf.argmax(classified["scores"], axis=1), batch_dims=1)
        print(json.dumps({{"predict": [n.decode() for n in out["class_names"].numpy()],
                          "classify": [n.decode() for n in best.numpy()]}}))
    """)
    env = {k: v for k, v in os.environ.items() if k != "TF_USE_LEGACY_KERAS"}  # plain TensorFlow, as a server has
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env)
    assert res.returncode == 0, res.stderr[-3000:]
    got = json.loads(res.stdout.strip().splitlines()[-1])
    accuracy = sum(p == t for p, t in zip(got["predict"], truth)) / len(truth)
    assert accuracy >= 0.9, list(zip(truth, got["predict"]))
    assert got["classify"] == got["predict"][:8]
