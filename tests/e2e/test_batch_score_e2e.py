"""The batch-scoring DAG through Airflow's real task runner (`airflow dags test`) on the demo's published models.

Reuses the session's trained demo runs (``trained_demo_run``, ``trained_text_run``: the whole training DAG has
published ``serving/shapes/20261120`` and ``serving/topics/20261120``) on a writable copy of their storage and
Airflow home, adds an undecodable record to the raw partition, and runs ``tfhub_batch_score`` for the same day.
"""

from __future__ import annotations

import csv
import json

import pandas as pd
import pytest

from tests.conftest import TEXT_CONF, airflow_sh, copy_storage

pytestmark = pytest.mark.e2e


def _score(run, dest, conf: dict, raw, add_bad) -> tuple:
    assert run.result.returncode == 0, "the training DAG must have published the model: " + run.output[-3000:]
    storage, env = copy_storage(run, dest)
    part = storage / raw
    (part / "_SUCCESS").unlink()
    add_bad(part)
    (part / "_SUCCESS").write_bytes(b"")
    res = airflow_sh(f"airflow dags test tfhub_batch_score {run.run_date} -c '{json.dumps(conf)}'", env, timeout=900)
    (dest / "dags-test.log").write_text(res.stdout + res.stderr)
    return storage, res


@pytest.fixture(scope="module")
def image_scored(trained_demo_run, tmp_path_factory):
    def add_bad(part):
        (part / "images" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)
        with open(part / "labels.csv", "a", newline="") as f:
            csv.writer(f).writerow(["images/broken.png", "circle"])

    return _score(trained_demo_run, tmp_path_factory.mktemp("score-image"), {}, f"raw/ds={trained_demo_run.ds}",
                  add_bad) + (trained_demo_run.ds,)


@pytest.fixture(scope="module")
def text_scored(trained_text_run, tmp_path_factory):
    def add_bad(part):
        with open(part / "texts.csv", "ab") as f:
            f.write(b"bad-bytes,\"caf\xe9 au lait\",cooking\n")  # Latin-1, not UTF-8

    conf = {k: TEXT_CONF[k] for k in ("dataset", "model_name", "layout")}
    return _score(trained_text_run, tmp_path_factory.mktemp("score-text"), conf,
                  f"topics/raw/ds={trained_text_run.ds}", add_bad) + (trained_text_run.ds,)


def test_images_are_scored_with_the_published_model(image_scored):
    storage, res, ds = image_scored
    out = res.stdout + res.stderr
    assert res.returncode == 0, out[-5000:]
    assert "state=success" in out
    predictions = storage / "predictions" / "shapes" / f"ds={ds}"
    assert (predictions / "_SUCCESS").exists()
    df = pd.read_parquet(predictions)
    assert len(df) == 600 and df.record_id.is_unique
    assert set(df.model_version) == {int(ds.replace("-", ""))} and set(df.partition) == {ds}
    # The model the training DAG blessed (test accuracy >= 0.9) on its own day's data, training split included.
    assert (df.predicted_label == df.label).mean() >= 0.9
    q = storage / "quarantine" / "predictions" / "shapes" / f"ds={ds}"
    assert [json.loads(x)["id"] for x in open(q / "quarantine.jsonl")] == ["images/broken.png"]
    stats = json.loads((predictions / "_stats.json").read_text())
    assert stats["records"]["scored"] == 600 and stats["records"]["bad"] == 1
    assert stats["drift_from_training"]["warning"] is False and stats["drift_from_training"]["total_variation"] < 0.1


def test_texts_are_scored_with_the_published_text_model(text_scored):
    storage, res, ds = text_scored
    out = res.stdout + res.stderr
    assert res.returncode == 0, out[-5000:]
    predictions = storage / "topics" / "predictions" / "topics" / f"ds={ds}"
    df = pd.read_parquet(predictions)
    # 600 texts and the one without a label (scoring needs none); the blank one and the Latin-1 one are bad.
    assert len(df) == 601 and "bad-nolabel" in set(df.record_id)
    labelled = df[df.label.notna()]
    assert (labelled.predicted_label == labelled.label).mean() >= 0.9
    reasons = {json.loads(x)["id"]: json.loads(x)["reason"]
               for x in open(storage / "topics" / "quarantine" / "predictions" / "topics" / f"ds={ds}" /
                             "quarantine.jsonl")}
    assert reasons == {"bad-blank": "empty_text", "bad-bytes": "undecodable_text"}
    manifest = json.loads((predictions / "_manifest.json").read_text())
    assert manifest["task_type"] == "text_classification" and manifest["model_name"] == "topics"
