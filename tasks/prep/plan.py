"""The plan of a data prep run, made on the driver before any record is read: every record's label id (the
vocabulary resolved against this partition's labels), split and shard, and the shard tasks (``make_plan``).
"""

from __future__ import annotations

import dataclasses
import math
from collections import Counter

from tasks.core import schema
from tasks.prep import image_check, layouts, prep_tasks, vocabulary
from tasks.prep.layouts import PrepError


def num_shards(split_bytes: int, cfg) -> int:
    """Enough shards of about ``target_shard_bytes``, at least ``min_shards``, a multiple of ``min_shards``."""
    wanted = max(1, math.ceil(split_bytes / cfg.target_shard_bytes))
    return cfg.min_shards * math.ceil(wanted / cfg.min_shards)


@dataclasses.dataclass
class Plan:
    """Every record's label id, split and shard, and the shard tasks."""

    vocabulary: vocabulary.Vocabulary
    new_labels: list[str]
    """Labels this partition adds to the vocabulary."""
    unknown_labels: list[str]
    """Labels new to the vocabulary whose records are quarantined (policy ``quarantine``)."""
    shards: dict[str, int]
    tasks: list[prep_tasks.ShardTask]
    task_of: list[int]
    """The task of each listed record, in listing order."""
    planned: list[prep_tasks.Planned]
    """Each listed record as planned, in listing order."""


def make_plan(raw: layouts.RawPartition, current: vocabulary.Vocabulary, cfg, partition: str) -> Plan:
    """Checks labels, resolves the vocabulary, assigns every record to a split and a shard.

    Raises:
        PrepError: new labels under the ``fail`` policy.
    """
    declared = set(cfg.labels)
    problems = []
    label_checks: dict[str, image_check.BadRecord | None] = {}  # a partition has few labels: each checked once
    for r in raw.records:
        problem = r.problem
        if problem is None:
            if r.label not in label_checks:
                label_checks[r.label] = image_check.label_problem(r.label)
            bad = label_checks[r.label]
            if bad is not None:
                problem = (bad.reason, bad.detail)
            elif declared and r.label not in declared:
                problem = ("unknown_label", f"label {r.label!r} is not one of the declared labels "
                                            f"({', '.join(sorted(declared))})")
        problems.append(problem)
    seen = Counter(r.label for r, problem in zip(raw.records, problems) if problem is None)
    try:
        vocab, new = vocabulary.resolve(current, dict(seen), cfg.new_label_policy, partition)
    except vocabulary.VocabularyError as e:
        raise PrepError(str(e)) from e
    unknown: list[str] = []
    if new and vocab.version == current.version:  # the quarantine policy: the vocabulary stays as it is
        unknown, new = new, []
        for i, r in enumerate(raw.records):
            if problems[i] is None and r.label in unknown:
                problems[i] = ("unknown_label", f"label {r.label!r} is not in vocabulary v{current.version} "
                                                "(--new-label-policy quarantine)")
    ids = vocab.ids()

    split_bytes = dict.fromkeys(schema.SPLITS, 0)
    splits = [schema.split_of(r.id, cfg.split_fractions) for r in raw.records]
    for r, split, problem in zip(raw.records, splits, problems):
        if problem is None:
            split_bytes[split] += r.size
    shards = {s: num_shards(split_bytes[s], cfg) for s in schema.SPLITS}
    keys = [(s, i) for s in schema.SPLITS for i in range(shards[s])]
    index_of = {k: n for n, k in enumerate(keys)}
    members: list[list[prep_tasks.Planned]] = [[] for _ in keys]
    planned, task_of = [], []
    for r, split, problem in zip(raw.records, splits, problems):
        p = prep_tasks.Planned(r.id, r.label, r.source, r.size, problem,
                                label_id=-1 if problem else ids[r.label])
        n = index_of[(split, schema.shard_of(r.id, shards[split]))]
        planned.append(p)
        task_of.append(n)
        members[n].append(p)
    files_layout = raw.files
    tasks = [prep_tasks.ShardTask(n, s, schema.shard_name(s, i, shards[s]),
                                  tuple(sorted(members[n], key=lambda p: (p.id, p.source))) if files_layout else ())
             for n, (s, i) in enumerate(keys)]
    return Plan(vocab, new, unknown, shards, tasks, task_of, planned)

