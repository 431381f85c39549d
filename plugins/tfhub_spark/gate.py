"""The blessing gate between evaluation and export."""

from __future__ import annotations

import json
import logging

from tfhub_spark.hooks.storage import StorageHook

log = logging.getLogger(__name__)


def is_blessed(blessing_url: str, webhdfs_conn_id: str = "webhdfs_default") -> bool:
    """Reads the evaluation's blessing record and says whether the model may be exported.

    :param blessing_url: storage URL of the evaluate task's ``blessing.json``.
    :return: True to export; False skips the export and what follows it (the run still succeeds).
    """
    hook = StorageHook(webhdfs_conn_id=webhdfs_conn_id)
    if not hook.exists(blessing_url):
        raise FileNotFoundError(f"{blessing_url} does not exist: the evaluate task did not write its blessing")
    blessing = json.loads(hook.read_text(blessing_url))
    for reason in blessing["reasons"]:
        log.info("blessing: %s", reason)
    if blessing["blessed"]:
        log.info("BLESSED: exporting (accuracy %.4f)", blessing["candidate"]["accuracy"])
        return True
    log.warning("NOT BLESSED: export skipped; see %s and the report beside it", blessing_url)
    return False


def record_approval(blessing_url: str, approval: dict, webhdfs_conn_id: str = "webhdfs_default") -> dict:
    """Adds the reviewer's decision to the blessing record, so a later reader sees why a blessed model was or was
    not published: ``approval`` (the decision, who, when, why) and a line in ``reasons``. Written atomically.

    :param blessing_url: storage URL of the evaluate task's ``blessing.json``.
    :param approval: ``decision`` (approved, rejected, timed_out), ``reason``, and who and when.
    :return: the updated record.
    """
    hook = StorageHook(webhdfs_conn_id=webhdfs_conn_id)
    blessing = json.loads(hook.read_text(blessing_url))
    reasons = [r for r in blessing["reasons"] if not r.startswith("approval: ")]  # a rerun's decision replaces
    blessing = {**blessing, "approval": approval, "reasons": [*reasons, f"approval: {approval['reason']}"]}
    hook.write_text_atomic(blessing_url, json.dumps(blessing, indent=2))
    log.info("recorded the approval decision in %s: %s", blessing_url, approval["reason"])
    return blessing
