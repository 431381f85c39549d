"""What a run of the batch-scoring DAG scores, and what its predictions' statistics say.

A run scores one date partition with one published version of one model:

* a manual run: its partition key, else the ``partition`` param, else the day its data interval starts, with the
  ``version`` param, else the model's highest published version (resolved by the Spark job, which sees the
  serving root);
* a run of the partitioned Asset schedule (one per published partition), triggered by the served-model Asset:
  the model that was just published, if it is the model this DAG scores (``model_name``): the partition it was
  trained on (its version is that date) with exactly that version, so that day's predictions are replaced by the new
  model's. An event for another model skips the run.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from typing import Any

from tfhub_spark.hooks.storage import StorageHook
from tfhub_spark.partition import partition_date

log = logging.getLogger(__name__)


def _version_date(version: int | str) -> str:
    text = str(version)
    try:
        return dt.datetime.strptime(text, "%Y%m%d").date().isoformat()
    except ValueError:
        raise ValueError(f"published version {version!r} is not a date YYYYMMDD: cannot tell which partition it "
                         "was trained on; set the partition param") from None


def choose_run(model_name: str, partition: str | None, version: int | None,
               data_interval_start: dt.datetime | None, asset_events: dict | None) -> dict[str, Any]:
    """The partition, version (None: the highest published) and model of a run, or an empty dict when a
    triggering event is about another model.

    :param model_name: the model this DAG scores (rendered ``model_name`` param or the pipeline Variable's).
    :param partition: the ``partition`` param.
    :param version: the ``version`` param.
    :param data_interval_start: the run's data interval start.
    :param asset_events: the run's ``triggering_asset_events`` (asset -> events), empty unless asset-triggered.
    """
    events = [e for evs in (asset_events or {}).values() for e in evs]
    if events and not partition:
        mine = [dict(e.extra or {}) for e in events if (e.extra or {}).get("model_name") == model_name]
        if not mine:
            names = sorted({str((e.extra or {}).get("model_name")) for e in events})
            log.info("triggered by the publication of %s, not of %r: nothing to score", names, model_name)
            return {}
        newest = max(mine, key=lambda extra: int(extra["version"]))
        chosen = {"partition": _version_date(newest["version"]), "version": int(newest["version"]),
                  "model_name": model_name, "reason": f"published version {newest['version']} of {model_name}"}
    else:
        # No version: the scoring job's default, the highest published (the DAG leaves --version out).
        chosen = {"partition": partition_date(partition, data_interval_start),
                  "version": int(version) if version else None,
                  "model_name": model_name, "reason": "the partition param" if partition else "the data interval"}
    log.info("scoring partition %s with %s of %s (from %s)", chosen["partition"],
             f"version {chosen['version']}" if chosen["version"] else "the highest published version",
             model_name, chosen["reason"])
    return chosen


def summarize(stats_url: str, webhdfs_conn_id: str = "webhdfs_default") -> dict[str, Any]:
    """Reads the scoring job's ``_stats.json``, logs it (a warning when the predicted distribution is far from the
    training one) and returns its headline numbers.

    :param stats_url: storage URL of the predictions' ``_stats.json``.
    :param webhdfs_conn_id: WebHDFS connection for ``hdfs://``.
    """
    stats = json.loads(StorageHook(webhdfs_conn_id=webhdfs_conn_id).read_text(stats_url))
    rec, drift = stats["records"], stats["drift_from_training"]
    log.info("%s version %s on %s: %d records scored, %d bad; predicted %s; mean top probability %s",
             stats["model_name"], stats["model_version"], stats["partition"], rec["scored"], rec["bad"],
             stats["predicted"], stats["mean_top_probability"])
    if drift.get("warning"):
        log.warning("predicted class distribution is far from the training labels: total variation %s > %s",
                    drift["total_variation"], drift["threshold"])
    return {"partition": stats["partition"], "model_name": stats["model_name"],
            "model_version": stats["model_version"], "scored": rec["scored"], "bad": rec["bad"],
            "mean_top_probability": stats["mean_top_probability"], "drift_warning": bool(drift.get("warning")),
            "total_variation": drift.get("total_variation")}
