"""The human approval step between the blessing gate and the export: a reviewer approves or rejects a blessed model
in the Airflow UI (or over the REST API) before it is published."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Sequence
from typing import Any

from airflow.providers.standard.operators.hitl import ApprovalOperator
from airflow.sdk import Param
from airflow.sdk.definitions.param import ParamsDict
from airflow.sdk.exceptions import AirflowSkipException

from tfhub_spark.links import REVIEW_LINKS, api_base_url, files_url, storage_root
from tfhub_spark.run_folder import BLESSING, CONFUSION_MATRIX, METRICS, REPORT, TRAINING_CURVES

APPROVAL_MODES = ("none", "required")
"""``none``: the step passes through and the export goes ahead; ``required``: a reviewer decides."""
COMMENT = "comment"
"""The request's form field for the reviewer's comment (``params_input`` of the answer over the REST API)."""


def comment_param() -> Param:
    """The comment field of the request's form: optional text."""
    return Param(None, type=["null", "string"], maxLength=2000, title="Comment",
                 description="Why you approve or reject (optional). Recorded with your decision in the run's "
                             "blessing.json and in the task log.")


class ModelApprovalOperator(ApprovalOperator):
    """Asks a reviewer to approve the publication of a blessed model, showing the headline metrics (accuracy and
    the recall of each class), the comparison with the published baseline, the evaluation's reasons and links to
    the report and plots.

    With ``approval`` ``none`` it passes through at once (the export runs, as without this step). With
    ``required`` it writes the request and waits for the answer without holding a worker slot (Airflow 3.3 parks
    the task in ``awaiting_input``; the scheduler resolves a request that outlives ``approval_timeout``):

    * **Approve**: the export runs;
    * **Reject**: the export is skipped and the run succeeds;
    * **no answer** within ``approval_timeout``: this task and the export are skipped and the run succeeds.

    The request has one form field, the reviewer's ``comment`` (optional). Each decision is logged and written into
    the run's ``blessing.json`` (``approval``, with the comment, and a line in ``reasons``) through the storage
    hook, atomically.

    :param run_dir: storage URL of the run folder (templated).
    :param approval: ``none`` or ``required`` (templated, from the run's params).
    :param approval_timeout: minutes to wait for an answer (templated).
    :param model_name: the model's published name, shown in the request (templated).
    :param version: the version it would be published as, shown in the request (templated).
    :param webhdfs_conn_id: the WebHDFS connection for ``hdfs://`` storage.
    """

    template_fields: Sequence[str] = (*ApprovalOperator.template_fields, "run_dir", "approval", "approval_timeout",
                                      "model_name", "version")
    operator_extra_links = REVIEW_LINKS
    ui_color = "#fff8e1"

    def __init__(self, *, run_dir: str, approval: str, approval_timeout: float | str, model_name: str,
                 version: str | int, webhdfs_conn_id: str = "webhdfs_default", **kwargs: Any) -> None:
        kwargs.setdefault("subject", "Publish the model?")
        # The DAG's params arrive here too (they are the DAG-level ones, which the request leaves out): the
        # comment field is added as the task's own.
        params = kwargs.get("params")
        params = params if isinstance(params, ParamsDict) else ParamsDict(params or {})
        fields = {k: params.get_param(k) for k in params}
        if COMMENT not in fields or fields[COMMENT].source != "task":
            fields[COMMENT] = comment_param()
            fields[COMMENT].source = "task"
        kwargs["params"] = ParamsDict(fields)
        super().__init__(**kwargs)
        self.run_dir = run_dir
        self.approval = approval
        self.approval_timeout = approval_timeout
        self.model_name = model_name
        self.version = version
        self.webhdfs_conn_id = webhdfs_conn_id

    @property
    def blessing_url(self) -> str:
        return f"{self.run_dir.rstrip('/')}/{BLESSING}"

    def _read_json(self, name: str) -> dict:
        from tfhub_spark.hooks.storage import StorageHook

        return json.loads(StorageHook(webhdfs_conn_id=self.webhdfs_conn_id).read_text(
            f"{self.run_dir.rstrip('/')}/{name}"))

    def review_body(self, blessing: dict, metrics: dict, deadline: dt.datetime) -> str:
        """The request a reviewer reads (Markdown): headline metrics, baseline, the evaluation's reasons, links."""
        root, base = storage_root(), api_base_url()

        def link(name: str) -> str:
            return files_url(f"{self.run_dir.rstrip('/')}/{name}", root, base)

        lines = [f"**Model `{self.model_name}`, version {self.version}** (partition "
                 f"{metrics.get('partition', '?')}, {metrics.get('split', 'test')} split, "
                 f"{metrics['num_examples']} examples)", "",
                 "| | accuracy |", "| --- | --- |", f"| candidate | **{metrics['accuracy']:.4f}** |"]
        base_line = blessing.get("baseline")
        if base_line:
            delta = metrics["accuracy"] - base_line["accuracy"]
            lines.append(f"| baseline: published version {base_line['version']}, re-scored on the same examples | "
                         f"{base_line['accuracy']:.4f} ({delta:+.4f}) |")
        else:
            lines.append("| baseline | none: nothing is published under this name yet |")
        lines += ["", "| class | recall | precision | support |", "| --- | --- | --- | --- |"]
        for name, m in metrics["per_class"].items():
            lines.append(f"| {name} | {m['recall']:.3f} | {m['precision']:.3f} | {m['support']} |")
        lines += ["", "Evaluation: " + ("BLESSED" if blessing["blessed"] else "NOT BLESSED"), ""]
        lines += [f"- {r}" for r in blessing["reasons"]]
        lines += ["", f"[Evaluation report]({link(REPORT)}) · [Confusion matrix]({link(CONFUSION_MATRIX)}) · "
                      f"[Training curves]({link(TRAINING_CURVES)})", "",
                  f"Approve to publish it; Reject to publish nothing (the run still succeeds). Without an answer by "
                  f"{deadline:%Y-%m-%d %H:%M} UTC nothing is published. The comment goes into the run's record "
                  f"with your decision."]
        return "\n".join(lines)

    def execute(self, context):
        if self.approval not in APPROVAL_MODES:
            raise ValueError(f"{self.task_id}: approval {self.approval!r} is not one of {APPROVAL_MODES}")
        if self.approval == "none":
            self.log.info("approval none: no reviewer asked; the export goes ahead")
            return None
        minutes = float(self.approval_timeout)
        if minutes <= 0:
            raise ValueError(f"{self.task_id}: approval_timeout must be more than 0 minutes, got {minutes}")
        self.response_timeout = dt.timedelta(minutes=minutes)
        blessing, metrics = self._read_json(BLESSING), self._read_json(METRICS)
        deadline = dt.datetime.now(dt.timezone.utc) + self.response_timeout
        self.subject = (f"Publish {self.model_name} version {self.version}? accuracy {metrics['accuracy']:.4f}"
                        + (f" (baseline {blessing['baseline']['accuracy']:.4f})" if blessing.get("baseline") else ""))
        self.body = self.review_body(blessing, metrics, deadline)
        self.log.info("asking for approval, waiting up to %.1f minutes (until %s UTC):\n%s\n%s", minutes,
                      f"{deadline:%Y-%m-%d %H:%M:%S}", self.subject, self.body)
        return super().execute(context)

    def _record(self, decision: str, reason: str, **fields: Any) -> None:
        from tfhub_spark.gate import record_approval

        record_approval(self.blessing_url, {"decision": decision, "reason": reason,
                                            "timeout_minutes": float(self.approval_timeout), **fields},
                        webhdfs_conn_id=self.webhdfs_conn_id)

    def execute_complete(self, context, event: dict[str, Any]) -> Any:
        if event.get("error_type") == "timeout":
            reason = (f"no answer within approval_timeout {float(self.approval_timeout):g} minutes: "
                      f"{self.model_name} version {self.version} is not published")
            self.log.warning("TIMED OUT: %s", reason)
            self._record("timed_out", reason, at=dt.datetime.now(dt.timezone.utc).isoformat())
            raise AirflowSkipException(reason)
        if "error" not in event:
            # Recorded before the provider's handling, which on Reject ends by skipping the export (in Airflow 3
            # skipping downstream tasks raises, so nothing after it would run).
            self.validate_chosen_options(event["chosen_options"])
            user = event.get("responded_by_user") or {}
            who = user.get("name") or user.get("id") or "an unknown user"
            at = event.get("responded_at")
            at = at.isoformat() if isinstance(at, dt.datetime) else str(at)
            comment = str((event.get("params_input") or {}).get(COMMENT) or "").strip()
            said = f' ("{comment}")' if comment else ""
            if event["chosen_options"] == [self.APPROVE]:
                reason = f"approved by {who} at {at}{said}: publishing {self.model_name} version {self.version}"
                self.log.info("APPROVED: %s", reason)
                self._record("approved", reason, by=who, at=at, comment=comment)
            else:
                reason = (f"rejected by {who} at {at}{said}: {self.model_name} version {self.version} is not "
                          "published")
                self.log.warning("REJECTED: %s", reason)
                self._record("rejected", reason, by=who, at=at, comment=comment)
            if comment:
                self.log.info("reviewer's comment: %s", comment)
        return super().execute_complete(context, event)
