"""Classification metrics as plain data: accuracy, per-class precision and recall, confusion matrix."""

from __future__ import annotations

import numpy as np


def classification_metrics(labels, probabilities, class_names) -> dict:
    """Returns accuracy, num_images, per_class {name: precision, recall, support} and the confusion matrix.

    Rows of the confusion matrix are the true classes, columns the predicted ones.
    """
    labels = np.asarray(labels, dtype=np.int64)
    predicted = np.asarray(probabilities).argmax(axis=1)
    num_classes = len(class_names)
    confusion = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(confusion, (labels, predicted), 1)
    per_class = {}
    for index, name in enumerate(class_names):
        true_positive = int(confusion[index, index])
        predicted_count = int(confusion[:, index].sum())
        support = int(confusion[index, :].sum())
        per_class[name] = {
            "precision": true_positive / predicted_count if predicted_count else 0.0,
            "recall": true_positive / support if support else 0.0,
            "support": support,
        }
    return {
        "accuracy": float((predicted == labels).mean()) if len(labels) else 0.0,
        "num_images": int(len(labels)),
        "per_class": per_class,
        "confusion_matrix": confusion.tolist(),
        "class_names": list(class_names),
    }


def top_k(probabilities: np.ndarray, class_names, k: int) -> list[list[dict]]:
    """The k most probable labels of each row, most probable first."""
    k = max(1, min(k, len(class_names)))
    order = np.argsort(-probabilities, axis=1, kind="stable")[:, :k]
    return [
        [{"label": class_names[index], "probability": float(row[index])} for index in indices]
        for row, indices in zip(probabilities, order)
    ]
