"""The label vocabulary of a dataset: each label's id is given once and kept on every later day.

The vocabulary lives beside the dataset's partitions (``<storage root>/examples/_vocabulary/`` by default) as
numbered, immutable versions ``v000001.json``, ``v000002.json``... Each holds the whole list (a label's id is its
index) and the history of additions. A partition's prep reads the highest version; a new version is created with
``commit.create_new``, which fails when another run created that number first, so two runs that add labels at
the same time cannot give one id to two labels: the loser re-reads and retries.

A label a later partition brings that the vocabulary lacks follows the run's policy (``POLICIES``).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re

from tasks.io import commit, storage

log = logging.getLogger(__name__)

POLICIES = {
    "fail": "the stage fails, naming the new labels and how many records carry them",
    "append": "new labels get the next ids, in sorted order, and are reported",
    "quarantine": "records with a new label go to quarantine (reason unknown_label)",
}
"""What happens to labels that are not in the vocabulary yet. A partition with no vocabulary before it creates
the first version from its labels, sorted, whatever the policy."""

_VERSION = re.compile(r"^v(\d{6})\.json$")


class VocabularyError(RuntimeError):
    """A vocabulary that cannot be read, or new labels under the ``fail`` policy."""


@dataclasses.dataclass(frozen=True)
class Vocabulary:
    """One version of the vocabulary."""

    url: str
    """The vocabulary folder."""
    version: int
    """Its number; 0 when no version exists yet."""
    labels: tuple[str, ...]
    """Label names; a label's id is its index."""
    history: tuple[dict, ...] = ()
    """``{"version", "partition", "added"}`` of each version, oldest first."""

    def ids(self) -> dict[str, int]:
        return {name: i for i, name in enumerate(self.labels)}

    def version_url(self) -> str:
        return storage.join(self.url, f"v{self.version:06d}.json")

    def to_json(self) -> str:
        return json.dumps({"version": self.version, "labels": list(self.labels), "history": list(self.history)},
                          indent=2)


def load(url: str) -> Vocabulary:
    """The highest version under the folder ``url``; version 0 with no labels when there is none."""
    versions = sorted(int(m.group(1)) for m in map(_VERSION.match, storage.list_names(url)) if m)
    if not versions:
        return Vocabulary(url, 0, ())
    vocab = Vocabulary(url, versions[-1], ())
    text = storage.read_text(vocab.version_url())
    try:
        data = json.loads(text)
        labels = tuple(data["labels"])
        history = tuple(data.get("history", ()))
    except (ValueError, KeyError, TypeError) as e:
        raise VocabularyError(f"label vocabulary {vocab.version_url()} is not valid: {e}") from e
    if len(set(labels)) != len(labels) or data.get("version") != vocab.version:
        raise VocabularyError(f"label vocabulary {vocab.version_url()} is not valid: duplicate labels or a "
                              f"version field other than {vocab.version}")
    return dataclasses.replace(vocab, labels=labels, history=history)


def extend(vocab: Vocabulary, new_labels: list[str], partition: str) -> Vocabulary:
    """The next version: the labels of ``vocab`` with ``new_labels`` appended in sorted order."""
    added = sorted(set(new_labels) - set(vocab.labels))
    return Vocabulary(vocab.url, vocab.version + 1, vocab.labels + tuple(added),
                      vocab.history + ({"version": vocab.version + 1, "partition": partition, "added": added},))


def save(vocab: Vocabulary) -> bool:
    """Creates this version; False when another run created this version number first."""
    return commit.create_new(vocab.version_url(), vocab.to_json().encode())


def resolve(current: Vocabulary, seen: dict[str, int], policy: str, partition: str) -> tuple[Vocabulary, list[str]]:
    """The vocabulary a partition's records are written with, and the labels it adds.

    Args:
        current: the latest saved version.
        seen: record count of each (valid) label in the partition.
        policy: a key of ``POLICIES``.
        partition: the partition's name, recorded in the history.

    Returns:
        ``(vocabulary, new labels)``. With ``quarantine`` the vocabulary is ``current`` and the new labels are
        those whose records the caller must quarantine; with ``append`` (or when there is no vocabulary yet) a
        new version to save once the partition's data is written.

    Raises:
        VocabularyError: new labels under the ``fail`` policy.
    """
    if policy not in POLICIES:
        raise ValueError(f"unknown new-label policy {policy!r}; use one of {sorted(POLICIES)}")
    new = sorted(set(seen) - set(current.labels))
    if not new:
        return current, []
    if current.version == 0:
        return extend(current, new, partition), new
    if policy == "fail":
        listed = ", ".join(f"{name!r} ({seen[name]} records)" for name in new)
        raise VocabularyError(
            f"{partition}: labels not in vocabulary v{current.version} ({current.url}, labels "
            f"{', '.join(current.labels)}): {listed}. Re-run with --new-label-policy append to give them new ids, "
            "or quarantine to set their records aside, or correct the labels"
        )
    if policy == "append":
        return extend(current, new, partition), new
    return current, new
