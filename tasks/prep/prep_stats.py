"""Statistics of a prepared partition (``stats.json``), their summary in the task log, and label drift.

Everything here is a function of the partition's records (and of the previous partition's statistics for the
drift), never of the run, so a rerun writes the same ``stats.json``.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from typing import Iterable

log = logging.getLogger("prepare_examples")


def merge_sizes(parts: Iterable[dict]) -> dict:
    """Merges the ``count/min/max/sum/hist`` size summaries of several tasks."""
    count, total, lo, hi, hist = 0, 0, None, None, Counter()
    for p in parts:
        if not p["count"]:
            continue
        count += p["count"]
        total += p["sum"]
        lo = p["min"] if lo is None else min(lo, p["min"])
        hi = p["max"] if hi is None else max(hi, p["max"])
        hist.update({int(k): v for k, v in p["hist"].items()})
    return {"count": count, "min": lo, "max": hi, "sum": total, "hist": dict(hist)}


def describe_sizes(merged: dict) -> dict:
    """``min``, ``max``, ``mean`` and a histogram keyed by ``"lo-hi"`` (power-of-two ranges, ``hi`` excluded)."""
    histogram = {}
    for k in sorted(merged["hist"]):
        lo, hi = (0, 1) if k == 0 else (2 ** (k - 1), 2**k)
        histogram[f"{lo}-{hi}"] = merged["hist"][k]
    mean = merged["sum"] / merged["count"] if merged["count"] else None
    return {"min": merged["min"], "max": merged["max"], "mean": None if mean is None else round(mean, 1),
            "histogram": histogram}


def total_variation(p: dict[str, int], q: dict[str, int]) -> float:
    """Total variation distance between two label distributions given as counts: half the sum of the absolute
    differences of the shares, 0 for the same distribution, 1 for disjoint ones."""
    np_, nq = sum(p.values()), sum(q.values())
    if not np_ or not nq:
        return 0.0 if np_ == nq else 1.0
    return 0.5 * sum(abs(p.get(k, 0) / np_ - q.get(k, 0) / nq) for k in set(p) | set(q))


def read_previous(data: bytes, url: str) -> tuple[dict | None, str | None]:
    """The previous partition's ``stats.json`` from its bytes, or why it cannot be used.

    Returns:
        ``(stats, None)``, or ``(None, reason)`` when the file is not UTF-8 JSON holding an object whose ``labels``
        maps label names to counts; the reason names ``url``.
    """
    try:
        stats = json.loads(data.decode("utf-8"))
    except ValueError as e:  # UnicodeDecodeError and JSONDecodeError alike
        return None, f"previous statistics {url} are unreadable: not UTF-8 JSON ({e})"
    labels = stats.get("labels") if isinstance(stats, dict) else None
    if not isinstance(labels, dict) or not all(isinstance(v, int) and not isinstance(v, bool)
                                               for v in labels.values()):
        found = f"keys {', '.join(sorted(stats)) or 'none'}" if isinstance(stats, dict) else type(stats).__name__
        return None, f"previous statistics {url} are unreadable: no 'labels' object of label counts in it ({found})"
    return stats, None


def label_drift(current: dict[str, int], previous_stats: dict | None, previous_name: str, threshold: float,
                unreadable: str | None = None) -> dict:
    """How far the label distribution moved from the previous partition's.

    Args:
        unreadable: why the previous statistics exist but could not be read (``read_previous``), if so.

    Returns:
        ``{"previous", "total_variation", "threshold", "moved"}``; ``{"previous": None, "note"}`` when there are
        no previous statistics to compare with, the note saying whether they are missing or unreadable (and where).
    """
    if previous_stats is None:
        if unreadable:
            return {"previous": None, "note": unreadable, "unreadable": True}
        return {"previous": None, "note": f"no statistics of a previous partition ({previous_name}) to compare with"}
    before = previous_stats["labels"]
    tv = total_variation(current, before)
    return {"previous": previous_name, "total_variation": round(tv, 4), "threshold": threshold,
            "moved": tv > threshold, "previous_labels": before}


def log_summary(stats: dict, manifest: dict, quarantine: str) -> None:
    """The task log's summary of a prepared partition."""
    rec = stats["records"]
    log.info("%s: %d valid records of %d, %d bad (%.2f%%)", stats["partition"], rec["valid"], rec["total"],
             rec["bad"], 100 * rec["bad_fraction"])
    splits = list(manifest["counts"])
    width = max([len("label")] + [len(name) for name in manifest["labels"]])
    log.info("%s %s", "label".ljust(width), " ".join(f"{s:>7}" for s in splits))
    for name in manifest["labels"]:
        log.info("%s %s", name.ljust(width), " ".join(f"{manifest['label_counts'][s][name]:>7}" for s in splits))
    log.info("%s %s", "all".ljust(width), " ".join(f"{manifest['counts'][s]:>7}" for s in splits))
    for s in splits:
        files = manifest["files"][s]
        log.info("split %s: %d records in %d files", s, manifest["counts"][s], len(files))
    if rec["bad"]:
        log.info("bad records by reason: %s; they are in %s", ", ".join(
            f"{reason} {n}" for reason, n in stats["bad_reasons"].items()), quarantine)
    if rec["valid"] and "image_size" in stats:
        sizes = stats["image_size"]
        log.info("image width %s..%s (mean %s), height %s..%s (mean %s), bytes %s..%s (mean %s); formats %s",
                 sizes["width"]["min"], sizes["width"]["max"], sizes["width"]["mean"], sizes["height"]["min"],
                 sizes["height"]["max"], sizes["height"]["mean"], sizes["bytes"]["min"], sizes["bytes"]["max"],
                 sizes["bytes"]["mean"], ", ".join(f"{k} {v}" for k, v in stats["formats"].items()))
    if rec["valid"] and "text_length" in stats:
        lengths = stats["text_length"]
        log.info("text length %s..%s words (mean %s), %s..%s characters (mean %s), bytes %s..%s (mean %s)",
                 lengths["words"]["min"], lengths["words"]["max"], lengths["words"]["mean"],
                 lengths["chars"]["min"], lengths["chars"]["max"], lengths["chars"]["mean"],
                 lengths["bytes"]["min"], lengths["bytes"]["max"], lengths["bytes"]["mean"])
    if stats["new_labels"]:
        log.info("labels this partition added to the vocabulary: %s (now v%d)", ", ".join(stats["new_labels"]),
                 stats["vocabulary_version"])
    if stats["unknown_labels"]:
        log.warning("labels not in the vocabulary, their records quarantined: %s", ", ".join(stats["unknown_labels"]))
    drift = stats["label_drift"]
    if drift["previous"] is None:
        (log.warning if drift.get("unreadable") else log.info)("label drift not checked: %s", drift["note"])
    elif drift["moved"]:
        log.warning("label distribution moved far from %s's: total variation distance %.3f > %.3f "
                    "(now %s, before %s)", drift["previous"], drift["total_variation"], drift["threshold"],
                    stats["labels"], drift["previous_labels"])
    else:
        log.info("label distribution close to %s's: total variation distance %.3f <= %.3f", drift["previous"],
                 drift["total_variation"], drift["threshold"])
