"""Calibrated probabilities: temperature scaling, expected calibration error and a reliability diagram.

A network's confidence is not its accuracy: finetuned with label smoothing it is too humble,
a linear head on few images is often too sure. Temperature scaling (Guo et al., 2017, "On
calibration of modern neural networks") divides the logits by one scalar T fit on held-out
predictions by their log loss; it cannot change any prediction's label (argmax), only how sure
it is. Our models end in a softmax, so the logits are recovered as log-probabilities: softmax
is shift-invariant, so softmax(log(p) / T) = softmax(z / T) for the model's logits z, and the
same holds for an ensemble's or TTA's averaged probabilities: they are calibrated as a whole.

    temperature = fit_temperature(val_probabilities, val_labels)
    report = calibration_report(test_probabilities, test_labels, temperature)  # ECE, log loss before/after
"""

from __future__ import annotations

import numpy as np

# Equal-width confidence bins of the expected calibration error: the 15 of Guo et al.
ECE_BINS = 15
# The temperatures searched, on a log scale: beyond them a model is broken, not miscalibrated.
TEMPERATURE_RANGE = (0.05, 20.0)
_TINY = 1e-12


def apply_temperature(probabilities, temperature: float) -> np.ndarray:
    """softmax(log(p) / T), row by row: T > 1 softens, T < 1 sharpens, T = 1 keeps p."""
    logits = np.log(np.clip(np.asarray(probabilities, dtype=np.float64), _TINY, 1.0)) / float(temperature)
    logits -= logits.max(axis=1, keepdims=True)
    exponentials = np.exp(logits)
    return exponentials / exponentials.sum(axis=1, keepdims=True)


def log_loss(probabilities, labels) -> float:
    """Mean negative log-probability of the true class (natural log)."""
    probabilities, labels = np.asarray(probabilities, dtype=np.float64), np.asarray(labels, dtype=np.int64)
    return float(-np.log(np.clip(probabilities[np.arange(len(labels)), labels], _TINY, 1.0)).mean()) + 0.0


def reliability_bins(probabilities, labels, bins: int = ECE_BINS) -> list[dict]:
    """Per equal-width confidence bin: {"low", "high", "count", "confidence", "accuracy"} (empty bins: count 0)."""
    probabilities, labels = np.asarray(probabilities, dtype=np.float64), np.asarray(labels, dtype=np.int64)
    confidence = probabilities.max(axis=1)
    correct = probabilities.argmax(axis=1) == labels
    edges = np.linspace(0.0, 1.0, bins + 1)
    # Bin k holds (edge k, edge k+1]; a confidence of exactly 0 joins the first bin.
    index = np.clip(np.searchsorted(edges, confidence, side="left") - 1, 0, bins - 1)
    rows = []
    for k in range(bins):
        inside = index == k
        count = int(inside.sum())
        rows.append({"low": float(edges[k]), "high": float(edges[k + 1]), "count": count,
                     "confidence": float(confidence[inside].mean()) if count else None,
                     "accuracy": float(correct[inside].mean()) if count else None})
    return rows


def expected_calibration_error(probabilities, labels, bins: int = ECE_BINS) -> float:
    """ECE: the mean gap |accuracy - confidence| over equal-width confidence bins, weighted by their images."""
    rows = reliability_bins(probabilities, labels, bins)
    total = sum(row["count"] for row in rows)
    if total == 0:
        return 0.0
    return float(sum(row["count"] * abs(row["accuracy"] - row["confidence"]) for row in rows if row["count"]) / total)


def fit_temperature(probabilities, labels) -> float:
    """The temperature with the lowest log loss on these held-out predictions.

    One scalar, found by a bounded search over log T (the loss is smooth and has one minimum).
    1.0 when there are no images, or when every one of them is predicted right: the loss then
    falls for ever as T shrinks, and nothing says how sure to be of the mistakes to come.
    """
    from scipy.optimize import minimize_scalar

    probabilities, labels = np.asarray(probabilities, dtype=np.float64), np.asarray(labels, dtype=np.int64)
    if len(labels) == 0 or np.all(probabilities.argmax(axis=1) == labels):
        return 1.0
    low, high = np.log(TEMPERATURE_RANGE[0]), np.log(TEMPERATURE_RANGE[1])
    result = minimize_scalar(lambda log_t: log_loss(apply_temperature(probabilities, np.exp(log_t)), labels),
                             bounds=(low, high), method="bounded", options={"xatol": 1e-4})
    temperature = float(np.exp(result.x))
    # Keep T = 1 unless scaling actually lowers the loss (a flat loss leaves the bounded search anywhere).
    if log_loss(apply_temperature(probabilities, temperature), labels) >= log_loss(probabilities, labels):
        return 1.0
    return temperature


def calibration_report(probabilities, labels, temperature: float, bins: int = ECE_BINS) -> dict:
    """ECE and log loss before and after `temperature`, and the images they rest on."""
    after = apply_temperature(probabilities, temperature)
    return {
        "images": int(len(labels)),
        "ece_before": expected_calibration_error(probabilities, labels, bins),
        "ece_after": expected_calibration_error(after, labels, bins),
        "log_loss_before": log_loss(probabilities, labels),
        "log_loss_after": log_loss(after, labels),
    }


def plot_reliability(panels: dict, temperature: float, path, title: str | None = None) -> None:
    """A reliability diagram per split, before and after temperature scaling, written atomically as PNG.

    Args:
        panels: {split name: (probabilities, labels)}, e.g. {"validation": ..., "test": ...}.
        temperature: the fitted T.
        path: the PNG to write.
        title: above the panels. Defaults to none.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from finetune.curves import save_figure

    figure, axes = plt.subplots(1, len(panels), figsize=(4.6 * len(panels), 4.4), squeeze=False)
    for axis, (name, (probabilities, labels)) in zip(axes[0], panels.items()):
        axis.plot([0, 1], [0, 1], color="0.6", linestyle="--", linewidth=1, label="perfect calibration")
        for label, values, colour in (("before", np.asarray(probabilities), "#d1495b"),
                                      (f"after (T = {temperature:.2f})", apply_temperature(probabilities, temperature),
                                       "#1f6feb")):
            rows = [row for row in reliability_bins(values, labels) if row["count"]]
            ece = expected_calibration_error(values, labels)
            axis.plot([row["confidence"] for row in rows], [row["accuracy"] for row in rows], marker="o", markersize=4,
                      color=colour, label=f"{label}: ECE {ece:.3f}")
        axis.set(xlim=(0, 1), ylim=(0, 1.02), xlabel="confidence (top probability)", ylabel="accuracy",
                 title=f"{name} ({len(labels)} images)")
        axis.grid(alpha=0.3)
        axis.legend(loc="upper left", fontsize=8)
    if title:
        figure.suptitle(title, fontsize=10)
    save_figure(figure, path)
