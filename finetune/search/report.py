"""What a search leaves in its folder: trials.csv, search.png and best.json, rebuilt from the study at any time.

    rows = trial_rows(studies, parameters)    # one dict per trial, coarse then fine
    write_trials_csv(out / "trials.csv", rows, parameters)
    plot_search(out / "search.png", rows, parameters, metric="val_accuracy")
    best = best_row(rows)                     # the best trial measured on the whole data
"""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path

from finetune.files import atomic_write_text

TRIALS_FILE = "trials.csv"
PLOT_FILE = "search.png"
BEST_FILE = "best.json"
SUMMARY_FILE = "search.json"
COLUMNS = ("trial", "stage", "state", "metric", "value", "loss", "epochs", "epochs_run", "train_images", "seconds", "reason")


def trial_rows(studies: dict, parameters: list) -> list[dict]:
    """One row per trial of each study ({"coarse": study, "fine": study}), with its values and what it measured."""
    rows = []
    for stage, study in studies.items():
        if study is None:
            continue
        retried = set(study.user_attrs.get("retried", []))
        for trial in study.get_trials(deepcopy=False):
            attributes = trial.user_attrs
            if trial.number in retried and not attributes.get("reason"):
                attributes = {**attributes, "reason": "interrupted (the search was killed, or failed): run again"}
            intermediate = trial.intermediate_values
            row = {
                "trial": f"{stage}-{trial.number}",
                "stage": stage,
                "state": trial.state.name.lower(),
                "metric": attributes.get("metric"),
                "value": trial.value,
                # A pruned trial's last reported value, for the plot.
                "last_value": trial.value if trial.value is not None else
                (intermediate[max(intermediate)] if intermediate else None),
                "loss": attributes.get("loss"),
                "epochs": attributes.get("epochs"),
                "epochs_run": attributes.get("epochs_run"),
                "train_images": attributes.get("train_images"),
                "linear_rival": attributes.get("linear_rival"),
                "full_data": attributes.get("full_data", False),
                "seconds": attributes.get("seconds"),
                "reason": attributes.get("reason", ""),
                "params": dict(trial.params),
                "number": trial.number,
            }
            rows.append(row)
    return rows


def write_trials_csv(path: Path, rows: list[dict], parameters: list) -> None:
    names = [parameter.name for parameter in parameters]
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(list(COLUMNS) + names)
    for row in rows:
        cells = ["" if row.get(column) is None else row[column] for column in COLUMNS]
        writer.writerow(cells + [row["params"].get(name, "") for name in names])
    atomic_write_text(path, buffer.getvalue())


def best_row(rows: list[dict]) -> dict | None:
    """The best finished trial measured on the whole training split (what best.json can reproduce), else the best coarse one.

    Ties go to the lower loss, then to the fine stage (longer trials), then to the earlier trial.
    """
    finished = [row for row in rows if row["state"] == "complete" and row["value"] is not None]
    whole = [row for row in finished if row["full_data"]]
    pool = whole or finished
    if not pool:
        return None
    return max(pool, key=lambda row: (row["value"], -(row["loss"] if row["loss"] is not None else math.inf),
                                      row["stage"] == "fine", -row["number"]))


def plot_search(path: Path, rows: list[dict], parameters: list, *, metric: str) -> None:
    """Validation accuracy against each parameter: log axes where sampled log-uniform, coarse and fine apart, pruned hollow."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    from finetune.curves import save_figure

    columns = min(3, max(1, len(parameters)))
    lines = math.ceil(len(parameters) / columns)
    figure, axes = plt.subplots(lines, columns, figsize=(4.2 * columns, 3.4 * lines), squeeze=False)
    styles = {"coarse": ("tab:gray", "o"), "fine": ("tab:blue", "D")}
    best = best_row(rows)
    for axis, parameter in zip(axes.flat, parameters):
        for stage, (colour, marker) in styles.items():
            for finished in (True, False):
                points = [(row["params"][parameter.name], row["last_value"]) for row in rows
                          if row["stage"] == stage and parameter.name in row["params"]
                          and row["last_value"] is not None and (row["state"] == "complete") == finished]
                if not points:
                    continue
                xs = [_position(parameter, x) for x, _ in points]
                axis.scatter(xs, [y for _, y in points], marker=marker, s=36, edgecolors=colour,
                             facecolors=colour if finished else "none", alpha=0.85,
                             label=f"{stage}{'' if finished else ' (pruned)'}")
        if best is not None and parameter.name in best["params"]:
            axis.scatter([_position(parameter, best["params"][parameter.name])], [best["value"]], marker="*", s=260,
                         facecolors="none", edgecolors="tab:red", linewidths=1.5, label="best", zorder=3)
        if parameter.kind == "log":
            axis.set_xscale("log")
            axis.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())  # within a decade they overlap
        if parameter.kind == "categorical":
            axis.set_xticks(range(len(parameter.choices)), [str(choice) for choice in parameter.choices])
        axis.set_xlabel(parameter.name + (" (log)" if parameter.kind == "log" else ""))
        axis.set_ylabel(metric)
        axis.grid(alpha=0.3)
    for axis in list(axes.flat)[len(parameters):]:
        axis.set_visible(False)
    handles, labels = axes.flat[0].get_legend_handles_labels()
    unique = dict(zip(labels, handles))
    axes.flat[0].legend(unique.values(), unique.keys(), fontsize="small")
    figure.suptitle(f"{metric} by hyperparameter (red star: the best)")
    save_figure(figure, path)  # through a temporary file and a rename


def _position(parameter, value):
    if parameter.kind == "categorical":
        return list(parameter.choices).index(value) if value in parameter.choices else -1
    return value


def format_summary(summary: dict) -> str:
    """What `finetune search` prints at the end: the best trial against the baseline, edge warnings, the files."""
    best, baseline, metric = summary["best"], summary.get("baseline"), summary["metric"]
    counts = summary["trials"]
    lines = [f"Search of {summary['strategy']} at {summary['image_size']} px: {counts['complete']} trials finished, "
             f"{counts['pruned']} pruned, {counts['fail']} failed, in {summary['seconds'] / 60:.1f} min."]
    values = ", ".join(f"{name}={value:.4g}" if isinstance(value, float) else f"{name}={value}"
                       for name, value in best["params"].items())
    lines.append(f"Best: {metric} {best['value']:.4f} ({best['trial']}, {best['stage']}"
                 + (f", {best['epochs']} epochs" if best.get("epochs") else "") + f"): {values}")
    if baseline and baseline.get("value") is not None:
        lines.append(f"Baseline (the configuration's own values, a coarse trial): {metric} {baseline['value']:.4f}")
    if best.get("linear_rival") is not None:
        lines.append(f"The best linear head of the stage search scores {best['linear_rival']:.4f} on the same validation "
                     "images; training keeps whichever of the two is better.")
    if not best["full_data"]:
        lines.append("No trial on the whole training split finished: best.json holds the best coarse values, untested "
                     "on the whole data.")
    lines += [f"Warning: {edge['message']}" for edge in summary["edges"]]
    files = summary["files"]
    lines.append(f"Trials: {files[TRIALS_FILE]}; plot: {files[PLOT_FILE]}")
    lines.append(f"Train the best configuration: finetune train DATA_DIR --config {files[BEST_FILE]}")
    return "\n".join(lines)
