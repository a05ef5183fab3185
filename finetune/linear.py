"""The linear strategies: heads on frozen stage features, chosen by the stage search, put into a model.

    linear             the top stage's head on the whole backbone;
    multistage_linear  the best candidate of the search (a stage, a mean of 2-3 stage heads or
                       the concatenation of all) on the backbone cut after the stages it uses.

Heads are fit to convergence on cached features (`finetune.head`, `finetune.stages`), never by
epochs of forward passes. The same module fits the head finetuning starts from, and the linear
rival a finetuned model must beat (`linear_rival`).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from finetune.files import atomic_write_text
from finetune.model import build_classifier, set_head, truncated_backbone


@dataclasses.dataclass
class StageFeatures:
    """Pooled features of every stage (bottom to top) of the training and validation images, and the search over them."""

    train: list[np.ndarray]
    train_labels: np.ndarray
    val: list[np.ndarray] | None
    val_labels: np.ndarray | None
    # Training and validation images together: (features per stage, labels).
    labelled: tuple[list[np.ndarray], np.ndarray]
    search: object  # finetune.stages.StageSearch
    class_weight: dict | None


@dataclasses.dataclass
class LinearResult:
    """A model with a fitted head, what metrics.json records of it, and what history.csv gets."""

    model: object
    stages: dict
    head: object  # finetune.head.LinearHead
    train_features: np.ndarray  # the head's inputs, for history.csv
    val_features: np.ndarray | None
    # Predictions of images the head was not fit on, when the validation split is not such:
    # (out-of-fold probabilities, labels, where they come from), to calibrate the head on.
    held_out: tuple | None = None


def _joined(split_features, indices):
    return None if split_features is None else np.concatenate([split_features[index] for index in indices], axis=1)


def fits_on_val(features: StageFeatures, config) -> bool:
    """Whether linear heads are refit on the validation images too: asked for, and the validation split is small.

    With `config.held_out_val_per_class` or more validation images in every class the split
    stays held out, so that its metrics are an honest estimate.
    """
    if not config.linear_fit_on_val or features.val is None or len(features.val_labels) == 0:
        return False
    smallest = int(np.bincount(np.asarray(features.val_labels), minlength=int(np.max(features.train_labels)) + 1).min())
    return smallest < config.held_out_val_per_class


def fit_linear_model(candidate, backbone, spec, *, cut: bool, image_size: int, num_classes: int,
                     features: StageFeatures, config) -> LinearResult:
    """A model of the backbone and the head of one `candidate` of the stage search.

    Args:
        candidate: a `finetune.stages.Candidate` (the search's best, or its top stage).
        backbone: the frozen backbone the features came from.
        spec: its `finetune.zoo.BackboneSpec`.
        cut: truncate the backbone after the candidate's stages (multistage_linear); else it is
            whole and the candidate is the top stage (linear).
        image_size, num_classes: of the model.
        features: the stage features and the search.
        config: the `TrainConfig`. The head is fit on every labelled image when `fits_on_val`
            (its cross-validated accuracy is then the honest estimate), else on the training split.
    """
    from finetune.stages import fit_candidate

    fit_on_val = fits_on_val(features, config)
    stage_features, labels = features.labelled if fit_on_val else (features.train, features.train_labels)
    head = fit_candidate(candidate, stage_features, labels, num_classes, features.class_weight, config.seed)
    indices = list(candidate.stages)
    network = truncated_backbone(backbone, spec, indices) if cut else backbone
    model = build_classifier(network, spec.preprocessing, num_classes, image_size, dropout=config.model.dropout)
    set_head(model, head)
    scored = candidate.to_dict()  # unscored values as None
    stages = {
        "head": {"c": head.c, "stages": [spec.stage_endpoints[index] for index in indices], "kind": candidate.kind,
                 "cv_accuracy": scored["cv_accuracy"], "cv_loss": scored["cv_loss"],
                 "fit_on": "train+val" if fit_on_val else "train"},
        "search": features.search.to_dict(),
    }
    if cut:
        stages["multistage"] = {
            "candidates": [item.to_dict() for item in features.search.candidates],
            "chosen": candidate.name,
            "chosen_stages": [spec.stage_endpoints[index] for index in indices],
        }
    held_out = None
    if fit_on_val and candidate.oof_logits is not None:
        logits = candidate.oof_logits - candidate.oof_logits.max(axis=1, keepdims=True)
        held_out = (np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True), candidate.oof_labels,
                    f"out-of-fold predictions of the stage search ({features.search.folds} folds)")
    return LinearResult(model, stages, head, _joined(features.train, indices), _joined(features.val, indices),
                        held_out)


def describe_linear(result: LinearResult, search, candidate) -> list[str]:
    """The lines training prints about the search and the kept head."""
    lines = [f"  {item.name}: cross-validated accuracy {item.cv_accuracy:.3f}, log loss {item.cv_loss:.3f}"
             for item in search.candidates[:5]]
    fit_on = "training and validation" if result.stages["head"]["fit_on"] == "train+val" else "training"
    lines.append(f"Kept {candidate.name} (C={result.head.c}), fit on {fit_on} images.")
    return lines


def fit_start_head(features: StageFeatures, num_classes: int, config):
    """The top stage's head on the training split, C chosen on validation data: where finetuning starts."""
    from finetune.head import fit_linear_head

    return fit_linear_head(
        features.train[-1], features.train_labels, num_classes, None if features.val is None else features.val[-1],
        features.val_labels, c_grid=config.head_c_grid, class_weight=features.class_weight, seed=config.seed,
    )


def linear_rival(candidate, features: StageFeatures, *, num_classes: int, seed: int) -> dict:
    """A linear head of the stage search fit on the training split, scored on the validation split (as finetuning is)."""
    from finetune.stages import fit_candidate

    head = fit_candidate(candidate, features.train, features.train_labels, num_classes, features.class_weight, seed)
    joined = _joined(features.val, candidate.stages)
    predictions = head.probabilities(np.asarray(joined, dtype=np.float64)).argmax(axis=1)
    accuracy = float((predictions == np.asarray(features.val_labels)).mean())
    return {"name": candidate.name, "stages": [features.search.endpoints[index] for index in candidate.stages],
            "val_accuracy": accuracy}


def write_head_history(path, head, train_features, train_labels, val_features=None, val_labels=None) -> None:
    """history.csv of a run without finetuning epochs: one line for the head, as Keras' CSVLogger writes."""

    def accuracy_and_loss(features, labels):
        probabilities = head.probabilities(np.asarray(features, dtype=np.float64))
        picked = probabilities[np.arange(len(labels)), labels]
        return float((probabilities.argmax(1) == labels).mean()), float(-np.log(np.clip(picked, 1e-12, 1)).mean())

    accuracy, loss = accuracy_and_loss(train_features, train_labels)
    row = ["0", repr(accuracy), repr(loss)]
    if val_features is not None:
        row += [repr(value) for value in accuracy_and_loss(val_features, val_labels)]
    header = "epoch,accuracy,loss" + (",val_accuracy,val_loss" if val_features is not None else "")
    atomic_write_text(path, header + "\n" + ",".join(row) + "\n")
