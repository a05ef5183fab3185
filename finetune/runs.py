"""The training runs in a folder as a table, newest first: what `finetune runs [DIR]` prints.

Each row comes from a run's JSON files only (config.json, metrics.json, labels.json), read with
`finetune.run.load_run`, so that listing a hundred runs loads no model. The accuracy shown is the
run's honest estimate (`finetune.run.honest_accuracy`): validation accuracy when the validation
images were held out, else the cross-validated accuracy, labelled which. Runs that cannot be
read are returned apart, with the reason, instead of stopping the listing.

Example:
>>> rows, problems = list_runs(finetune.run.models_dir())
>>> print(format_runs(rows, problems))
"""

from __future__ import annotations

import dataclasses
import datetime
from pathlib import Path

from finetune.errors import FinetuneError
from finetune.run import (
    EXPORT_FILE,
    LABELS_FILE,
    MODEL_FILE,
    find_model_directories,
    honest_accuracy,
    load_run,
)

# How the table names each kind of estimate, and what the legend under it says of each.
ESTIMATE_SHORT = {"validation": "val", "cross-validated": "cv", "validation, not held out": "seen"}
ESTIMATE_LEGEND = {
    "val": "validation accuracy on images the final model was not fit on",
    "cv": "cross-validated accuracy (the head was fit on the validation images too)",
    "seen": "validation accuracy on images the model was fit on: not an honest estimate",
}
COLUMNS = ("run", "data", "backbone", "strategy", "size", "estimate", "test", "time", "date")


@dataclasses.dataclass(frozen=True)
class RunRow:
    """One training run as `finetune runs` shows it; None where the run did not record it."""

    name: str  # its path under the listed folder
    path: str
    data: str | None
    backbone: str | None
    strategy: str | None
    image_size: int | None
    estimate: float | None
    estimate_kind: str | None  # of `finetune.run.honest_accuracy`: validation, cross-validated, ...
    test_accuracy: float | None
    train_seconds: float | None
    date: str  # when it was made, ISO 8601 to the second (local time)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def read_run(directory, folder=None) -> RunRow:
    """The row of the run in `directory`; `folder` (the listed one) shortens its name.

    Raises:
        FinetuneError, OSError, ValueError, KeyError, TypeError: the run cannot be read.
    """
    directory = Path(directory)
    run = load_run(directory)
    config, metrics = dict(run.config), dict(run.metrics)
    model = config.get("model") if isinstance(config.get("model"), dict) else {}
    data = config.get("data") if isinstance(config.get("data"), dict) else {}
    estimate, kind = honest_accuracy(metrics)
    strategy = metrics.get("strategy") or config.get("strategy")
    if isinstance(strategy, dict):
        strategy = strategy.get("used") or strategy.get("strategy")
    test = metrics.get("test_accuracy")
    seconds = metrics.get("train_seconds")
    return RunRow(
        name=str(directory.relative_to(folder)) if folder is not None else directory.name,
        path=str(directory),
        data=_data_name(data.get("source")),
        backbone=model.get("backbone"),
        strategy=str(strategy) if strategy else None,
        image_size=int(run.image_size) if config.get("image_size") is not None else None,
        estimate=estimate,
        estimate_kind=kind,
        test_accuracy=float(test) if test is not None else None,
        train_seconds=float(seconds) if seconds is not None else None,
        date=_date(config.get("created"), directory / MODEL_FILE),
    )


def list_runs(folder) -> tuple[list[RunRow], list[dict]]:
    """The training runs under `folder` (two levels deep), newest first, and those that cannot be read.

    Exports (`finetune export`) are not training runs and are left out. A folder directly in
    `folder` that holds a run's first files but no model.keras is reported as unfinished.

    Returns:
        (rows, problems): `problems` are {"path", "reason"}.
    """
    folder = Path(folder)
    rows, problems = [], []
    try:
        candidates = [path for path in find_model_directories(folder) if not (path / EXPORT_FILE).is_file()]
        unfinished = _unfinished(folder)
    except OSError as error:
        return [], [{"path": str(folder), "reason": f"cannot be listed ({error})"}]
    for directory in candidates:
        try:
            rows.append(read_run(directory, folder))
        except FinetuneError as error:
            problems.append({"path": str(directory), "reason": str(error)})
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:  # hand-edited JSON of the wrong shape
            problems.append({"path": str(directory), "reason": f"{type(error).__name__}: {error}"})
    problems += [{"path": str(directory), "reason": f"unfinished: no {MODEL_FILE} (it stopped before its end; the same "
                                                    "command with the same --out resumes it)"} for directory in unfinished]
    rows.sort(key=lambda row: row.name)
    rows.sort(key=lambda row: row.date, reverse=True)
    return rows, sorted(problems, key=lambda problem: problem["path"])


def _unfinished(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    return [path for path in sorted(folder.iterdir()) if path.is_dir() and (path / LABELS_FILE).is_file()
            and not (path / MODEL_FILE).is_file() and not (path / EXPORT_FILE).is_file()]


def format_runs(rows: list[RunRow], problems: list[dict], folder=None) -> str:
    """The table `finetune runs` prints: one line per run, a legend of the estimates, then the unreadable runs."""
    lines = []
    if rows:
        cells = [COLUMNS] + [_cells(row) for row in rows]
        widths = [max(len(line[index]) for line in cells) for index in range(len(COLUMNS))]
        right = {"size", "estimate", "test", "time"}
        for line in cells:
            lines.append("  ".join(cell.rjust(width) if name in right else cell.ljust(width)
                                   for name, cell, width in zip(COLUMNS, line, widths)).rstrip())
        kinds = [short for short in ESTIMATE_LEGEND if any(ESTIMATE_SHORT.get(row.estimate_kind) == short for row in rows)]
        lines += [f"estimate {short}: {ESTIMATE_LEGEND[short]}" for short in kinds]
    else:
        where = f" in {folder}" if folder is not None else ""
        lines.append(f"No training runs{where}. Train one with `finetune train DATA_DIR` or `finetune demo`.")
    if problems:
        lines.append(f"Could not read {len(problems)} run{'s' if len(problems) > 1 else ''}:")
        lines += [f"  {problem['path']}: {problem['reason']}" for problem in problems]
    return "\n".join(lines)


def _cells(row: RunRow) -> tuple[str, ...]:
    estimate = "-" if row.estimate is None else f"{row.estimate:.4f} {ESTIMATE_SHORT.get(row.estimate_kind, '?')}"
    return (
        row.name, row.data or "-", row.backbone or "-", row.strategy or "-",
        str(row.image_size) if row.image_size is not None else "-", estimate,
        "-" if row.test_accuracy is None else f"{row.test_accuracy:.4f}",
        format_duration(row.train_seconds), row.date.replace("T", " ")[:16],
    )


def format_duration(seconds: float | None) -> str:
    """"45s", "3m07s", "2h05m"; "-" for None."""
    if seconds is None:
        return "-"
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def _data_name(source) -> str | None:
    """"textures" of "finetune/sample_data/textures", "tfds:beans" as it is."""
    if not source:
        return None
    text = str(source)
    return text if text.startswith("tfds:") else Path(text.rstrip("/")).name or text


def _date(created, model_file: Path) -> str:
    """config.json's "created" when a run records it, else when model.keras was written."""
    if created:
        return str(created)[:19]
    return datetime.datetime.fromtimestamp(model_file.stat().st_mtime).isoformat(timespec="seconds")
