"""What data prep writes beside its shards, and the checks on it: the quarantine's index and summary
(``write_quarantine``), the bad-record bound (``check_bad_fraction``), the label vocabulary saved against a
concurrent run (``save_vocabulary``), the dataset's statistics (``build_stats``) and manifest (``build_manifest``).
"""

from __future__ import annotations

import json
import logging
from collections import Counter

from tasks.core import run_folder, runtime, schema
from tasks.io import commit, storage
from tasks.prep import image_check, modality, prep_stats, vocabulary
from tasks.prep.inputs import input_name, previous_stats_url
from tasks.prep.layouts import PrepError
from tasks.prep.plan import Plan

log = logging.getLogger("prepare_examples")


def _first_bad(bad: list[tuple], n: int = 5) -> str:
    return "; ".join(f"{b[0]} ({b[2]}: {b[3]})" for b in bad[:n])


def write_quarantine(q_staging: str, cfg, partition: str, results: list[dict], total: int) -> list[tuple]:
    """Writes the quarantine's index and summary into its staging folder; returns the bad records, sorted."""
    bad = sorted(((*b, r["quarantine_file"]) for r in results for b in r["bad"]), key=lambda b: (b[0], b[4]))
    lines = [json.dumps({"id": b[0], "label": b[1], "reason": b[2], "detail": b[3], "source": b[4], "bytes": b[5],
                         "file": b[6]}, sort_keys=True) for b in bad]
    commit.write_text_atomic(storage.join(q_staging, run_folder.QUARANTINE_INDEX),
                             "".join(line + "\n" for line in lines))
    summary = {"partition": partition, "source": input_name(cfg), "records": total, "bad": len(bad),
               "reasons": dict(sorted(Counter(b[2] for b in bad).items())),
               "files": sorted({b[6] for b in bad}), "reason_codes": image_check.REASONS}
    commit.write_text_atomic(storage.join(q_staging, run_folder.QUARANTINE_SUMMARY), json.dumps(summary, indent=2,
                                                                                      sort_keys=True))
    commit.write_bytes_atomic(storage.join(q_staging, schema.SUCCESS), b"")
    return bad


def check_bad_fraction(cfg, bad: list[tuple], total: int, quarantine: str) -> None:
    """Raises PrepError when no record is valid or too many are bad."""
    reasons = ", ".join(f"{k} {v}" for k, v in sorted(Counter(b[2] for b in bad).items()))
    if len(bad) == total:
        raise PrepError(f"{input_name(cfg)}: no valid records: all {total} records are bad ({reasons}); first: "
                        f"{_first_bad(bad)}. They are in {quarantine}")
    if len(bad) > cfg.max_bad_fraction * total:
        raise PrepError(f"{input_name(cfg)}: {len(bad)} of {total} records are bad ({len(bad) / total:.1%} > "
                        f"max_bad_fraction {cfg.max_bad_fraction:.1%}): {reasons}; first: {_first_bad(bad)}. "
                        f"They are in {quarantine}; fix the producer's data, or raise --max-bad-fraction")


def build_stats(cfg, partition: str, plan: Plan, results: list[dict], bad: list[tuple],
                label_totals: dict[str, int]) -> dict:
    previous_url, previous_name = previous_stats_url(cfg)
    previous, unreadable = None, None
    if previous_url is not None and storage.exists(previous_url):
        # A broken file of another day must not fail this one: stats.json and the log (a warning, from
        # prep_stats.log_summary) say that it is unreadable, and where.
        previous, unreadable = prep_stats.read_previous(storage.read_bytes(previous_url), previous_url)
    valid = sum(r["records"] for r in results)
    kind = modality.of(cfg.task_type)
    return {
        "partition": partition,
        "records": {"total": valid + len(bad), "valid": valid, "bad": len(bad),
                    "bad_fraction": round(len(bad) / (valid + len(bad)), 6)},
        "counts": {s: sum(r["records"] for r in results if r["split"] == s) for s in schema.SPLITS},
        "labels": label_totals,
        "bad_reasons": dict(sorted(Counter(b[2] for b in bad).items())),
        "formats": dict(sorted(sum((Counter(r["formats"]) for r in results), Counter()).items())),
        "task_type": cfg.task_type,
        kind.stats_key: {key: prep_stats.describe_sizes(prep_stats.merge_sizes(r["sizes"][key] for r in results))
                         for key in kind.measures},
        "vocabulary_version": plan.vocabulary.version,
        # From the vocabulary's history rather than from this run, so that a rerun writes the same statistics.
        "new_labels": sorted({name for h in plan.vocabulary.history if h["partition"] == partition
                              for name in h["added"]}),
        "unknown_labels": plan.unknown_labels,
        "label_drift": prep_stats.label_drift(label_totals, previous, previous_name if previous is None
                                              else previous.get("partition", previous_name), cfg.drift_threshold,
                                              unreadable=unreadable),
    }



class VocabularyRace(Exception):
    """Another run saved a vocabulary version that gives this partition's labels other ids: plan again."""


def save_vocabulary(plan: Plan, current: vocabulary.Vocabulary) -> vocabulary.Vocabulary:
    """Saves the plan's vocabulary when it adds labels; returns the vocabulary the dataset is written with.

    Raises:
        VocabularyRace: another run saved this version first with other ids for this partition's labels.
    """
    vocab = plan.vocabulary
    if vocab.version != current.version and not vocabulary.save(vocab):
        latest = vocabulary.load(vocab.url)
        used = {r.label for r in plan.planned if r.label_id >= 0}
        if any(latest.ids().get(name) != vocab.ids()[name] for name in used):
            raise VocabularyRace(f"vocabulary v{vocab.version} was saved by another run with other labels")
        vocab = latest
        log.info("vocabulary v%d saved by another run gives this partition's labels the same ids", vocab.version)
    elif vocab.version != current.version:
        log.info("saved vocabulary v%d: %s", vocab.version, ", ".join(vocab.labels))
    return vocab


def build_manifest(cfg, partition: str, vocab: vocabulary.Vocabulary, results: list[dict], bad: list[tuple],
                   quarantine: str) -> dict:
    """The dataset's ``manifest.json``: labels and vocabulary, counts per split and label, files and features."""
    counts = {s: sum(r["records"] for r in results if r["split"] == s) for s in schema.SPLITS}
    label_counts = {s: dict.fromkeys(vocab.labels, 0) for s in schema.SPLITS}
    for r in results:
        for name, n in r["labels"].items():
            label_counts[r["split"]][name] += n
    kind = modality.of(cfg.task_type)
    return {
        "partition": partition,
        "task_type": cfg.task_type,
        "source": input_name(cfg),
        "layout": cfg.layout,
        "labels": list(vocab.labels),
        "vocabulary": {"url": vocab.url, "version": vocab.version},
        "num_records": sum(counts.values()),
        "bad_records": len(bad),
        "quarantine": quarantine,
        "counts": counts,
        "label_counts": label_counts,
        "files": {s: [{"name": r["name"], "records": r["records"], "bytes": r["bytes"]}
                      for r in results if r["split"] == s] for s in schema.SPLITS},
        "features": {**({"image": schema.IMAGE, "format": schema.FORMAT} if kind is modality.IMAGE
                        else {"text": schema.TEXT}),
                     "label": schema.LABEL, "label_text": schema.LABEL_TEXT, "record_id": schema.RECORD_ID},
        "stats": run_folder.STATS,
        "config": json.loads(runtime.config_json(cfg)),
    }


def label_totals(manifest: dict) -> dict[str, int]:
    """Records per label over every split."""
    return {name: sum(manifest["label_counts"][s][name] for s in schema.SPLITS) for name in manifest["labels"]}
