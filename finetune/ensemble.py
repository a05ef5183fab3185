"""Ensembles as one Keras graph: several classifiers, one input, the average of their probabilities.

The members are the snapshots of one run (`run/snapshots/*.keras`) or the best models of
several runs trained on the same labels. The ensemble takes raw RGB images like each member
(preprocessing stays inside every member) and saves and loads like any model, with
`safe_mode=True`.

Example:

```python
members = load_members(snapshot_paths(run_dir))
ensemble = build_ensemble(members)
evaluate_members(members, images, labels)["ensemble"]["accuracy"]
```
"""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np

from finetune.errors import FinetuneError
from finetune.files import SNAPSHOT_DIR, snapshot_paths  # noqa: F401  where a run keeps its snapshots


def load_members(paths) -> list:
    """Loads each .keras file with `safe_mode=True` (no arbitrary code) and without its optimizer."""
    import keras

    import augment.tta  # noqa: F401  registers the TTA layers of ensembles exported with TTA
    import finetune.temperature  # noqa: F401  registers the calibration layer
    import finetune.zoo  # noqa: F401  registers the custom layers before loading
    models = []
    for path in paths:
        if not Path(path).is_file():
            raise FinetuneError(f"Ensemble member {path} does not exist. Pass .keras files written by `finetune train`.")
        try:
            models.append(keras.saving.load_model(path, safe_mode=True, compile=False))
        except ValueError as error:
            if "safe_mode" not in str(error):
                raise
            raise FinetuneError(  # Keras's own advice, safe_mode=False, would run the file's code
                f"Refusing to load {path}: it holds Python code (such as a Lambda layer) that loading would "
                "run, and models are loaded with safe_mode=True only. Load models written by `finetune train` "
                f"or `finetune export`, or rebuild this one without Lambda layers. Received: path={str(path)!r}"
            ) from None
    return models


def build_ensemble(models, name: str = "ensemble", tta=None, temperature: float | None = None):
    """One model that averages the class probabilities of `models`.

    Args:
        models: Keras classifiers with the same input shape and number of classes, each ending
            in a softmax.
        name: the ensemble model's name. Defaults to "ensemble".
        tta: None or "none", or a test-time augmentation mode of `augment.tta` ("flip",
            "center", "five_crop", "ten_crop", "multiscale"), applied around the whole ensemble:
            all views go through every member in one pass. Crop modes make the ensemble take
            larger images (`augment.tta.source_size`). Defaults to None.
        temperature: the ensemble's own temperature (`finetune.calibration`), fit on its averaged
            held-out probabilities: the members' own temperatures are then taken off, and it is
            applied after the average and the TTA views. Defaults to None: one member keeps its
            temperature (after the TTA views), several members keep theirs inside.

    Returns:
        A functional `keras.Model` with input "image"; each member is wrapped as its own model
        named `member_<k>`, so members that share a name (all classifiers are called
        "classifier_model") do not clash.

    Raises:
        FinetuneError: no models, or members that disagree on input shape or class count.
    """
    import keras

    from finetune.temperature import split_temperature, with_temperature

    models = list(models)
    if not models:
        raise FinetuneError("An ensemble needs at least one model. Received: models=[]")
    if temperature is not None or len(models) == 1:
        split = [split_temperature(model) for model in models]
        models = [core for core, _ in split]
        temperature = split[0][1] if temperature is None else temperature
    input_shapes = {tuple(model.input_shape[1:]) for model in models}
    output_shapes = {tuple(_single(model.outputs).shape[1:]) for model in models}
    if len(input_shapes) > 1 or len(output_shapes) > 1:
        raise FinetuneError(
            "Ensemble members must take the same input and give the same number of classes. "
            f"Received: input shapes {sorted(input_shapes)}, output shapes {sorted(output_shapes)}"
        )
    inputs = keras.Input(input_shapes.pop(), name="image")
    outputs = [keras.Model(model.inputs, _single(model.outputs), name=f"member_{index}")(inputs)
               for index, model in enumerate(models)]
    averaged = keras.layers.Average(name="average")(outputs) if len(outputs) > 1 else outputs[0]
    ensemble = with_temperature(keras.Model(inputs, averaged, name=name), temperature)
    return apply_tta(ensemble, tta)


def _single(outputs):
    """A member's one probability tensor: models saved by earlier versions have a one-element output list."""
    return outputs[0] if len(outputs) == 1 else outputs


def apply_tta(model, tta):
    """Wraps `model` with test-time augmentation from `augment.tta` when `tta` names a mode.

    A final temperature (`finetune.temperature`) moves after the views' average: calibrated as a whole.
    """
    if tta is None or tta == "none":
        return model
    from augment.tta import build_tta_model
    from finetune.temperature import split_temperature, with_temperature

    core, temperature = split_temperature(model)
    # The model then takes larger "source" images for the crop modes: see augment.tta.source_size.
    return with_temperature(build_tta_model(core, tta), temperature)


def _log_loss(labels: np.ndarray, probabilities: np.ndarray) -> float:
    picked = probabilities[np.arange(len(labels)), labels]
    return float(-np.mean(np.log(np.clip(picked, 1e-12, 1.0))))


def _scores(labels, probabilities) -> dict:
    return {
        "accuracy": float(np.mean(np.argmax(probabilities, axis=1) == labels)),
        "loss": _log_loss(labels, probabilities),
    }


def evaluate_members(models, images, labels, batch_size: int = 32, probabilities=None) -> dict:
    """Accuracy and log loss of each member, of the ensemble, and how much the ensemble gains.

    Args:
        models: Keras classifiers (or None when `probabilities` are given).
        images: float or uint8 images the members take, [N, S, S, 3].
        labels: int class indices [N].
        batch_size: for `predict`. Defaults to 32.
        probabilities: precomputed per-member probabilities [M, N, C] instead of running `models`.

    Returns:
        {"members": [{"accuracy", "loss"}], "ensemble": {"accuracy", "loss"},
        "cumulative_accuracy": accuracy of the first k members for k = 1..M,
        "mean_member_accuracy", "best_member_accuracy", "gain_over_mean", "gain_over_best",
        "disagreement": the mean share of images two members label differently (diversity)}.
    """
    labels = np.asarray(labels, dtype=np.int64)
    if probabilities is None:
        images = np.asarray(images, dtype=np.float32)
        probabilities = [np.asarray(model.predict(images, batch_size=batch_size, verbose=0)) for model in models]
    probabilities = np.asarray(probabilities, dtype=np.float64)
    if probabilities.ndim != 3 or probabilities.shape[1] != len(labels):
        raise FinetuneError(
            f"`probabilities` must be [members, {len(labels)} images, classes]. Received: shape {probabilities.shape}"
        )
    members = [_scores(labels, member) for member in probabilities]
    ensemble = _scores(labels, probabilities.mean(axis=0))
    cumulative = [float(np.mean(np.argmax(probabilities[: k + 1].mean(axis=0), axis=1) == labels)) for k in range(len(members))]
    predictions = np.argmax(probabilities, axis=2)
    pairs = list(itertools.combinations(range(len(members)), 2))
    disagreement = float(np.mean([np.mean(predictions[a] != predictions[b]) for a, b in pairs])) if pairs else 0.0
    accuracies = [member["accuracy"] for member in members]
    return {
        "members": members,
        "ensemble": ensemble,
        "cumulative_accuracy": cumulative,
        "mean_member_accuracy": float(np.mean(accuracies)),
        "best_member_accuracy": float(np.max(accuracies)),
        "gain_over_mean": ensemble["accuracy"] - float(np.mean(accuracies)),
        "gain_over_best": ensemble["accuracy"] - float(np.max(accuracies)),
        "disagreement": disagreement,
    }
