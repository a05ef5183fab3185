"""Training curves: the plot every run leaves behind, and what its shape says.

`diagnose_curves` reads the loss curve the way the course teaches: a loss that explodes means
the rate is too high; a slow, straight fall means it is too low; a flat start and a late drop
suggest a bad initialisation; a widening gap between training and validation is overfitting;
both accuracies low is underfitting.

Example:

```python
plot_curves(run_dir / "history.csv", run_dir / "curves.png")
diagnose_curves(run_dir / "history.csv")["verdict"]  # "healthy", "overfitting", ...
```
"""

from __future__ import annotations

import csv
import math
import os
from pathlib import Path

import numpy as np

from finetune.errors import FinetuneError

VERDICTS = (
    "no_history",
    "learning_rate_too_high",
    "bad_initialisation",
    "learning_rate_too_low",
    "overfitting",
    "underfitting",
    "healthy",
)


def read_history(history) -> dict[str, list[float]]:
    """A history as {column: [value per epoch]}: from a dict, a `keras.callbacks.History` or a CSV file."""
    if hasattr(history, "history"):
        history = history.history
    if isinstance(history, (str, Path)):
        path = Path(history)
        if not path.is_file():
            raise FinetuneError(f"History file {path} does not exist. Pass the history.csv of a run or a dict of lists.")
        with path.open(newline="", encoding="utf-8") as file:
            rows = list(csv.DictReader(file))
        columns = rows[0].keys() if rows else []
        return {column: [_number(row[column]) for row in rows] for column in columns if column != "epoch"}
    if not isinstance(history, dict):
        raise FinetuneError(
            f"`history` must be a dict of lists, a keras History or a CSV path. Received: history={type(history).__name__}"
        )
    return {str(key): [float(value) for value in values] for key, values in history.items() if key != "epoch"}


def _number(text) -> float:
    try:
        return float(text)
    except (TypeError, ValueError):
        return math.nan


def save_figure(figure, out_png) -> Path:
    """Writes a matplotlib figure to `out_png` through a temporary file and a rename, then closes it."""
    import matplotlib.pyplot as plt

    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    temporary = out_png.with_name(f".tmp-{os.getpid()}-{out_png.name}")
    try:
        figure.tight_layout()
        figure.savefig(temporary, dpi=100, format="png")
        os.replace(temporary, out_png)
    finally:
        temporary.unlink(missing_ok=True)
        plt.close(figure)
    return out_png


def plot_curves(history, out_png, title: str | None = None) -> Path:
    """Draws training/validation loss, accuracy, the learning rate and update ratios per epoch into `out_png`.

    Args:
        history: a dict of lists, a `keras.callbacks.History` or a history CSV.
        out_png: where the PNG goes (e.g. run_dir / "curves.png").
        title: a title; defaults to the diagnosis of the curves.

    Returns:
        The path written.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    values = read_history(history)
    panels = [("loss", "loss"), ("accuracy", "accuracy")]
    if "learning_rate" in values:
        panels.append(("learning_rate", "learning rate"))
    ratios = sorted(key for key in values if key.startswith("update_ratio_"))
    if ratios:
        panels.append(("update_ratio", "update / weight ratio"))
    figure, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.4))
    for axis, (key, label) in zip(np.atleast_1d(axes), panels):
        if key == "update_ratio":
            for name in ratios:
                axis.plot(np.arange(1, len(values[name]) + 1), values[name], marker="o", markersize=3, label=name[len(key) + 1 :])
            axis.axhline(1e-3, color="gray", linestyle=":", label="healthy ~1e-3")
            axis.set_yscale("log")
            axis.set_xlabel("epoch")
            axis.set_ylabel(label)
            axis.legend(fontsize="small")
            continue
        for prefix, style in (("", "-"), ("val_", "--")):
            series = values.get(prefix + key)
            if series:
                epochs = np.arange(1, len(series) + 1)
                axis.plot(epochs, series, style, marker="o", markersize=3, label="validation" if prefix else "training")
        if key == "learning_rate" and any(value > 0 for value in values.get(key, [])):
            axis.set_yscale("log")
        axis.set_xlabel("epoch")
        axis.set_ylabel(label)
        axis.grid(alpha=0.3)
        if key != "learning_rate" and axis.get_legend_handles_labels()[0]:
            axis.legend()
    figure.suptitle(title if title is not None else diagnose_curves(values)["verdict"].replace("_", " "))
    return save_figure(figure, out_png)


def diagnose_curves(history) -> dict:
    """What the shape of the curves says, as {"verdict", "explanation"}.

    Verdicts, checked in this order: "no_history" (fewer than 2 epochs), "learning_rate_too_high"
    (the loss becomes NaN/inf or rises well above its start), "bad_initialisation" (flat, then a
    late drop), "learning_rate_too_low" (a slow, straight fall), "overfitting" (validation loss
    turns up while training loss falls, or a wide and widening accuracy gap), "underfitting"
    (training accuracy itself stays low), "healthy".
    """
    values = read_history(history)
    loss = np.asarray(values.get("loss", []), dtype=np.float64)
    if len(loss) < 2:
        return _verdict("no_history", "Fewer than two epochs were recorded: nothing to read from the curves.")
    first = loss[0]
    if not np.all(np.isfinite(loss)):
        epoch = int(np.flatnonzero(~np.isfinite(loss))[0]) + 1
        return _verdict(
            "learning_rate_too_high",
            f"The training loss became NaN/inf at epoch {epoch}: the updates blew up. Lower the learning "
            "rate (10x), add warmup, or run `finetune check` for a learning-rate range test.",
        )
    if loss.max() > 1.5 * first and loss[-1] > first:
        return _verdict(
            "learning_rate_too_high",
            f"The training loss rose from {first:.3f} to {loss.max():.3f}: the steps overshoot. Lower the "
            "learning rate (try 3-10x lower) or add warmup.",
        )
    epochs = len(loss)
    if epochs >= 4:
        third = max(1, epochs // 3)
        early_drop = (loss[0] - loss[third]) / first
        late_drop = (loss[third] - loss[-1]) / first
        if early_drop < 0.03 and late_drop > 0.25:
            return _verdict(
                "bad_initialisation",
                f"The loss stayed flat for {third} epochs (fell {early_drop:.1%}) and then dropped {late_drop:.1%}: "
                "training took a while to find its way, typical of a poor initialisation. Start the head from "
                "small weights (or the head fit on cached features) and check the initial loss with `finetune check`.",
            )
        half = epochs // 2
        first_half = loss[0] - loss[half]
        second_half = loss[half] - loss[-1]
        decreasing = np.mean(np.diff(loss) < 0) >= 0.8
        if decreasing and first_half > 0 and second_half > 0 and 0.6 <= second_half / first_half <= 1.6:
            return _verdict(
                "learning_rate_too_low",
                f"The loss falls in a slow, nearly straight line ({first:.3f} to {loss[-1]:.3f}, as much in the second "
                "half as in the first): it has far to go. Raise the learning rate (3x) or train longer.",
            )
    verdict = _overfitting(values, loss)
    if verdict:
        return verdict
    accuracy = values.get("accuracy")
    if accuracy:
        final_accuracy = float(np.nanmax(accuracy[-2:]))
        val_accuracy = values.get("val_accuracy")
        if final_accuracy < 0.7:
            val_text = f" and {float(val_accuracy[-1]):.1%} on validation" if val_accuracy else ""
            return _verdict(
                "underfitting",
                f"Training accuracy is only {final_accuracy:.1%}{val_text}: the model cannot fit even the training "
                "data. Unfreeze more groups, train longer or at a higher rate, or use less regularisation and augmentation.",
            )
    return _verdict("healthy", "The loss fell quickly and then levelled off, and validation follows training.")


def _overfitting(values: dict, loss: np.ndarray) -> dict | None:
    val_loss = np.asarray(values.get("val_loss", []), dtype=np.float64)
    if len(val_loss) >= 3 and np.all(np.isfinite(val_loss)):
        best = int(np.argmin(val_loss))
        rise = (val_loss[-1] - val_loss[best]) / max(val_loss[best], 1e-8)
        if best < len(val_loss) - 1 and rise > 0.1 and loss[-1] < loss[best]:
            return _verdict(
                "overfitting",
                f"Validation loss was lowest at epoch {best + 1} ({val_loss[best]:.3f}) and rose {rise:.0%} since, while "
                "training loss kept falling: the model memorises the training images. Use more augmentation or "
                "regularisation (dropout, weight decay), fewer unfrozen groups, or stop earlier.",
            )
    accuracy, val_accuracy = values.get("accuracy"), values.get("val_accuracy")
    if accuracy and val_accuracy and len(accuracy) >= 3 and len(val_accuracy) == len(accuracy):
        gap = np.asarray(accuracy) - np.asarray(val_accuracy)
        if gap[-1] > 0.1 and gap[-1] > gap[0] + 0.05:
            return _verdict(
                "overfitting",
                f"Training accuracy ({accuracy[-1]:.1%}) is {gap[-1]:.1%} above validation ({val_accuracy[-1]:.1%}) and the gap "
                "widened: more augmentation or regularisation, or fewer unfrozen groups.",
            )
    return None


def _verdict(verdict: str, explanation: str) -> dict:
    return {"verdict": verdict, "explanation": explanation}
