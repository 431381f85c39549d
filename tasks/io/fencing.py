"""Attempt fencing, the jobs' side: a driver or worker commits to the run folder only while its task attempt owns it.

An Airflow task attempt that dies without cleaning up (SIGKILL, out of memory, a lost node) can leave its Spark
application running. The next attempt stops it before it submits its own (``plugins/tfhub_spark/fencing.py``); this
module is the last line for an application that survived anyway (a partitioned host that comes back). The
operator that submits a job:

* puts the submitting attempt in the environment of the driver and the executors (``TFHUB_ATTEMPT``: JSON with
  ``dag_id``, ``run_id``, ``task_id``, ``map_index``, ``try_number`` and ``id``, random per execution) and the URL
  of the attempt token (``TFHUB_ATTEMPT_TOKEN``: ``<run_dir>/_attempts/<task_id>.json``);
* writes that token, naming itself, before it submits.

Every commit under the run folder (``tasks/io/storage.py``: atomic files, published folders, staged folders) and the
publication for serving (``export_model``) first reads the token and raises :class:`StaleAttemptError` when it
names another attempt: a newer attempt of the task owns the run, and this application must stop. Without the two
variables (a job run by hand, a test) nothing is checked.

The names here are the operator's too (``ATTEMPT_ENV``, ``TOKEN_ENV``, ``TOKEN_DIR``): the jobs cannot import the
Airflow side, so tests/plugins/test_fencing.py checks that the two agree.
"""

from __future__ import annotations

import json
import logging
import os

log = logging.getLogger(__name__)

ATTEMPT_ENV = "TFHUB_ATTEMPT"
TOKEN_ENV = "TFHUB_ATTEMPT_TOKEN"
TOKEN_DIR = "_attempts"


class StaleAttemptError(RuntimeError):
    """A commit refused: another (newer) attempt of the task owns the run folder."""


def current() -> dict | None:
    """This process's task attempt (from ``TFHUB_ATTEMPT``); None when the job was not started by an operator."""
    value = os.environ.get(ATTEMPT_ENV)
    if not value:
        return None
    try:
        attempt = json.loads(value)
        attempt["id"]
    except (ValueError, TypeError, KeyError):
        raise StaleAttemptError(f"{ATTEMPT_ENV}={value!r} is not the attempt JSON the operator sets") from None
    return attempt


def token_url() -> str | None:
    """The attempt token this process checks (``TFHUB_ATTEMPT_TOKEN``); None when fencing is off."""
    return os.environ.get(TOKEN_ENV) or None


def fenced_dir() -> str | None:
    """The folder the token fences: the run folder holding ``_attempts/``; None when fencing is off."""
    url = token_url()
    if url is None:
        return None
    parent = url.rstrip("/").rsplit("/", 1)[0]
    if not parent.endswith("/" + TOKEN_DIR):
        raise StaleAttemptError(f"{TOKEN_ENV}={url!r} is not a token in a {TOKEN_DIR}/ folder of a run folder")
    return parent[: -len(TOKEN_DIR) - 1]


def label(attempt: dict) -> str:
    mapped = f"[{attempt['map_index']}]" if attempt.get("map_index", -1) >= 0 else ""
    return (f"{attempt.get('dag_id')}.{attempt.get('task_id')}{mapped} run {attempt.get('run_id')} "
            f"try {attempt.get('try_number')} ({attempt.get('id')})")


def is_fenced(url: str) -> bool:
    """Whether ``url`` lies in the fenced run folder (commits there are checked)."""
    root = fenced_dir()
    if root is None:
        return False
    url, root = url.rstrip("/"), root.rstrip("/")
    return url == root or url.startswith(root + "/")


def check(what: str, url: str) -> None:
    """Refuses the commit of ``what`` at ``url`` unless this process's attempt owns the run folder.

    Args:
        what: what is committed, for the message (``checkpoint v000003``, ``model``, ``published version``).
        url: where.

    Raises:
        StaleAttemptError: the token names another attempt, is missing or unreadable.
    """
    attempt, url_token = current(), token_url()
    if attempt is None or url_token is None:
        return
    from tasks.io import storage

    mine = label(attempt)
    owner = None
    if storage.exists(url_token):
        try:
            owner = json.loads(storage.read_text(url_token))
        except ValueError as e:
            raise StaleAttemptError(f"{mine} refuses to commit {what} to {url}: the attempt token {url_token} is "
                                    f"unreadable ({e})") from None
    if owner is None:
        raise StaleAttemptError(f"{mine} refuses to commit {what} to {url}: the attempt token {url_token} is "
                                f"missing (the operator writes it before it submits; an attempt is taking over)")
    if owner.get("id") != attempt["id"]:
        raise StaleAttemptError(
            f"{mine} refuses to commit {what} to {url}: {label(owner)} owns {fenced_dir()} since its token "
            f"{url_token} was written by {owner.get('host')} pid {owner.get('pid')}; this application belongs to "
            f"an older attempt that should have been stopped and stops here without writing")


def check_commit(what: str, url: str) -> None:
    """:func:`check` for a commit in the run folder; commits elsewhere (prepared examples) are not fenced."""
    if is_fenced(url):
        check(what, url)


def stamp() -> dict:
    """The attempt fields a committed record carries (``{"airflow_attempt": ...}``); empty when fencing is off."""
    attempt = current()
    return {"airflow_attempt": {k: attempt.get(k) for k in ("task_id", "try_number", "id")}} if attempt else {}
