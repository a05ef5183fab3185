"""How a run did, as data for the app: its confusion.png and per-class precision/recall per split.

Read from the run's files (`confusion.png`, `metrics.json`) as `finetune train` wrote them; an
export records no per-class figures of its own, so it has no report. A run with no picture
(older runs) gets its confusion matrix as a table instead.

Example:
>>> report = run_report(entry)  # None for exports and runs that measured no split
>>> report.picture, [split.title for split in report.splits]
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import finetune
from finetune.run import CONFUSION_FILE, load_run

EXPANDER_LABEL = "How this model did: confusion matrix and per-class precision/recall"
SPLITS = (("val", "Validation"), ("test", "Test"))


@dataclasses.dataclass(frozen=True)
class SplitReport:
    """One split's figures: a title with its accuracy, rows {class, precision, recall, support}, the counts."""

    title: str
    per_class: list[dict]
    confusion: list[dict]  # rows {"true class": name, <predicted name>: count, ...}; empty when not recorded


@dataclasses.dataclass(frozen=True)
class RunReport:
    picture: Path | None  # confusion.png, when the run has one
    splits: list[SplitReport]
    notes: list[str]


def run_report(entry) -> RunReport | None:
    """The report of a run entry (`app.listing.ModelEntry`); None for an export or when there is nothing to show."""
    if entry.kind != "run":
        return None
    try:
        metrics = dict(load_run(entry.path).metrics or {})
    except finetune.FinetuneError:  # gone or damaged since it was listed: the sidebar says so on the next listing
        return None
    picture = Path(entry.path) / CONFUSION_FILE
    picture = picture if picture.is_file() else None
    splits, notes = [], []
    for key, name in SPLITS:
        if isinstance(metrics.get(key), dict):
            split = split_report(name, metrics[key])
            if split is None:
                notes.append(f"The {name.lower()} figures in metrics.json have no per-class numbers.")
            else:
                splits.append(split)
            if metrics[key].get("held_out") is False:
                notes.append(f"The {name.lower()} images are not held out: the head was fit on them too, so their "
                             "figures flatter the model.")
    if metrics.get("confusion_plot_error"):
        notes.append(f"The picture could not be drawn when training finished: {metrics['confusion_plot_error']}")
    if picture is None and not splits:
        return None
    return RunReport(picture=picture, splits=splits, notes=notes)


def split_report(name: str, metrics: dict) -> SplitReport | None:
    """`name`'s figures from the dict of `finetune.evaluate`/metrics.json; None when they are missing or malformed."""
    per_class = metrics.get("per_class")
    if not isinstance(per_class, dict) or not per_class:
        return None
    try:
        rows = [{"class": str(label), "precision": round(float(row["precision"]), 3),
                 "recall": round(float(row["recall"]), 3), "support": int(row["support"])}
                for label, row in per_class.items()]
    except (KeyError, TypeError, ValueError):  # hand-edited: show what the sidebar shows, not a traceback
        return None
    images = sum(row["support"] for row in rows)
    accuracy = metrics.get("accuracy")
    title = f"{name}: accuracy {float(accuracy):.1%} on {images} images" if isinstance(accuracy, (int, float)) else name
    return SplitReport(title=title, per_class=rows, confusion=_confusion_rows(metrics))


def _confusion_rows(metrics: dict) -> list[dict]:
    names, matrix = metrics.get("class_names"), metrics.get("confusion_matrix")
    if not isinstance(names, list) or not isinstance(matrix, list) or len(matrix) != len(names):
        return []
    if not all(isinstance(row, list) and len(row) == len(names) for row in matrix):
        return []
    return [{"true class": str(true_name), **{str(name): count for name, count in zip(names, row)}}
            for true_name, row in zip(names, matrix)]
