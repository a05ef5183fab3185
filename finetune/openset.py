""""None of these": an open-set score, a threshold that keeps a stated share of known images, and the verdict.

A classifier of ten kinds of clothing still gives a photo of a dog one of its ten labels, often
with high confidence. The remedy measured here (`benchmarks/bench_trust.py`): a score of how much
an image looks like the training classes, and a threshold on it chosen on held-out images of the
known classes so that a stated share of them (default 95%) stay above it. Below it, `predict` and
the app answer "unknown (closest: LABEL, p)".

Two scores are measured (Hendrycks & Gimpel 2017; Liu et al. 2020):
    max_probability  the largest calibrated class probability;
    energy           T * logsumexp(logits / T), the negative free energy (higher: more known),
                     which keeps the logits' magnitude that the softmax normalises away.
The product uses `max_probability`: it needs nothing but the probabilities every model, ensemble,
TTA graph and export already gives, and the benchmark did not find energy better on our pairs
(see the README's table).

    threshold = fit_threshold(max_probability(val_probabilities), keep=0.95)
    verdict(probabilities_row, labels, threshold)  # {"unknown": bool, "closest": ..., "probability": ...}
"""

from __future__ import annotations

import numpy as np

from finetune.errors import FinetuneError

SCORE = "max_probability"
UNKNOWN_CHOICES = ("off", "auto")  # or a threshold in (0, 1)


def max_probability(probabilities) -> np.ndarray:
    """The top class probability of each row."""
    return np.asarray(probabilities, dtype=np.float64).max(axis=1)


def energy_score(logits, temperature: float = 1.0) -> np.ndarray:
    """T * logsumexp(logits / T) of each row: the negative free energy, higher for images like the training data."""
    scaled = np.asarray(logits, dtype=np.float64) / float(temperature)
    top = scaled.max(axis=1, keepdims=True)
    return float(temperature) * (top[:, 0] + np.log(np.exp(scaled - top).sum(axis=1)))


def fit_threshold(scores, keep: float) -> float:
    """The score that at least `keep` of these held-out known images reach (the lower quantile)."""
    scores = np.asarray(scores, dtype=np.float64)
    if not 0.0 < keep <= 1.0:
        raise FinetuneError(f"`keep` must be in (0, 1]. Received: keep={keep}")
    if len(scores) == 0:
        raise FinetuneError("No held-out images to choose the unknown threshold on.")
    return float(np.quantile(scores, 1.0 - keep, method="lower"))


def auroc(known_scores, unknown_scores) -> float:
    """Area under the ROC curve of telling known (positive) from unknown images by the score; 0.5 is chance."""
    from sklearn.metrics import roc_auc_score

    known, unknown = np.asarray(known_scores, dtype=np.float64), np.asarray(unknown_scores, dtype=np.float64)
    truth = np.concatenate([np.ones(len(known)), np.zeros(len(unknown))])
    return float(roc_auc_score(truth, np.concatenate([known, unknown])))


def resolve_threshold(unknown, recorded: dict | None) -> float | None:
    """The threshold `predict` applies: None for "off", the run's recorded one for "auto", or a number.

    Args:
        unknown: "off", "auto" (the threshold training recorded, none when it recorded none), or a
            threshold in (0, 1) on the calibrated top probability, as a number or a string.
        recorded: the run's config.json "unknown" entry, or None.
    """
    if unknown is None or unknown == "auto":
        return None if not recorded else recorded.get("threshold")
    if unknown == "off":
        return None
    try:
        value = float(unknown)
    except (TypeError, ValueError):
        value = None
    if value is None or not 0.0 < value < 1.0:
        raise FinetuneError(
            "`unknown` must be off, auto (the threshold training chose) or a threshold between 0 and 1 on the top "
            f"probability, e.g. 0.5. Received: unknown={unknown!r}"
        )
    return value


def verdict(probabilities, labels, threshold: float | None) -> dict:
    """{"unknown": whether the top probability is under `threshold`, "closest": top label, "probability": it}."""
    probabilities = np.asarray(probabilities, dtype=np.float64)
    top = int(np.argmax(probabilities))
    probability = float(probabilities[top])
    return {"unknown": threshold is not None and probability < threshold, "closest": labels[top],
            "probability": probability}


def describe(result: dict) -> str:
    """A verdict as the terminal and the app show it: "unknown (closest: bag, 0.41)" or "bag"."""
    if result["unknown"]:
        return f"unknown (closest: {result['closest']}, {result['probability']:.2f})"
    return str(result["closest"])
