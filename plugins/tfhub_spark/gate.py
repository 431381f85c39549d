"""The blessing gate between evaluation and export."""

from __future__ import annotations

import json
import logging

from tfhub_spark.hooks.storage import StorageHook

log = logging.getLogger(__name__)


def passes_min_accuracy(metrics_url: str, min_accuracy: float, webhdfs_conn_id: str = "webhdfs_default") -> bool:
    """Reads ``metrics.json`` and says whether the model may be exported.

    :param metrics_url: storage URL of the evaluation's ``metrics.json``.
    :param min_accuracy: the least test accuracy to export.
    :return: True to export; False skips the export (the run still succeeds).
    """
    hook = StorageHook(webhdfs_conn_id=webhdfs_conn_id)
    if not hook.exists(metrics_url):
        raise FileNotFoundError(f"{metrics_url} does not exist: the evaluate task did not write its metrics")
    metrics = json.loads(hook.read_text(metrics_url))
    accuracy = float(metrics["accuracy"])
    if accuracy >= min_accuracy:
        log.info("blessed: test accuracy %.4f >= min_accuracy %.4f on %d examples", accuracy, min_accuracy,
                 metrics["num_examples"])
        return True
    log.warning("not blessed, export skipped: test accuracy %.4f < min_accuracy %.4f on %d examples", accuracy,
                min_accuracy, metrics["num_examples"])
    return False
