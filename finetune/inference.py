"""Predicting labels of images and evaluating a run on a labelled folder: one path for the CLI, the API and the app.

`predict_arrays` is the core: decoded images in, each resized whole to the source size of the
test-time augmentation mode (`augment.tta_modes.source_size`), cut into the mode's views
(`augment.tta.TTACrops`), one forward pass per batch, the views' probabilities combined, top-k
labels out. `predict` (files and folders) and `evaluate` (a labelled folder) decode images with
`finetune.data` and go through the same forward pass; the app decodes uploads with
`decode_image` and calls `predict_arrays`, so that all three give the same probabilities.

Example:
>>> run = finetune.load_run("models/photos-mobilenet_v2-20261125-120000")
>>> image = decode_image(open("cat.jpg", "rb").read())
>>> predict_arrays(run, [image], tta="ten_crop", top_k=3)[0].predictions[0]["label"]
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from augment.tta_modes import COMBINES, MODES, resolve_mode, source_size, sources_per_pass
from finetune.config import DataConfig
from finetune.data import BadImageError, discover, list_images, load_image, load_images_for_prediction, load_split, resize_image
from finetune.errors import USER_ERRORS, FinetuneError, as_finetune_error
from finetune.forward import forward, graph_of, is_keras_model, views_of
from finetune.metrics import classification_metrics
from finetune.metrics import top_k as top_k_labels
from finetune.run import LABELS_FILE, Run, load_run

__all__ = [
    "TTA_COMBINES", "TTA_MODES", "BadImageError", "ImagePrediction", "decode_image", "evaluate", "explain_image",
    "predict", "predict_arrays", "recorded_tta",
]  # fmt: skip

# The test-time augmentation modes and combines, from `augment` (the one list: the CLI and the app read these).
TTA_MODES = MODES
TTA_COMBINES = COMBINES


@dataclasses.dataclass
class ImagePrediction:
    """What a run says of one image.

    Attributes:
        predictions: the top-k [{"label", "probability"}], most probable first.
        probabilities: every class's probability [num_classes], the views combined.
        member_labels: an ensemble's members' top-1 labels, in member order; [] for one model.
        agreement: the share of members whose top-1 is the ensemble's; None for one model.
        views: the images the model saw, uint8 [views, S, S, 3], when asked for; else None.
        unknown: True when the top probability is under the run's "unknown" threshold
            (`finetune.openset`): the image looks like none of the classes; `predictions[0]` is then
            the closest label. False when it clears it or no threshold applies.
        threshold: the threshold applied, or None.
    """

    predictions: list[dict]
    probabilities: np.ndarray
    member_labels: list[str] = dataclasses.field(default_factory=list)
    agreement: float | None = None
    views: np.ndarray | None = None
    unknown: bool = False
    threshold: float | None = None

    @property
    def answer(self) -> str:
        """What to show: the top label, or "unknown (closest: LABEL, p)"."""
        from finetune.openset import describe

        best = self.predictions[0]
        return describe({"unknown": self.unknown, "closest": best["label"], "probability": best["probability"]})


def decode_image(data, *, max_megapixels: float = DataConfig.max_megapixels) -> np.ndarray:
    """Decodes an image from its bytes (or a file) into uint8 RGB [height, width, 3], as training decodes it.

    The format is read from the content, never the name; EXIF orientation is applied.

    Args:
        data: the image's bytes (an upload), or a path.
        max_megapixels: larger images are refused from their header, before any pixel is
            decoded (decompression bombs). Defaults to `DataConfig.max_megapixels`.

    Raises:
        BadImageError: empty, not an image, truncated, corrupt or too many pixels; `error.reason`
            says which.
    """
    return load_image(bytes(data) if isinstance(data, (bytearray, memoryview)) else data, max_megapixels)


def recorded_tta(run) -> str:
    """The TTA mode training chose on validation data (`config.json["tta"]`), "none" when none or unreadable.

    It is what `predict` and `evaluate` use for tta="auto".
    """
    try:
        return resolve_mode("auto", _as_run(run).config.get("tta"))
    except USER_ERRORS:  # a hand-edited config.json: predict whole images rather than fail the listing
        return "none"


def predict_arrays(run, images, *, tta: str = "none", top_k: int = 5, batch_size: int = 32, combine: str = "mean",
                   return_views: bool = False, unknown="auto") -> list[ImagePrediction]:
    """Top-k labels of decoded images, with an ensemble's member agreement and, if asked, the views the model saw.

    Each image is resized whole (aspect not kept, PIL bilinear, as in training) to the mode's
    source size, cut into its views, and all views of a batch go through the model in one
    forward pass (an ensemble's members included); the views' probabilities are combined.

    Args:
        run: a `finetune.run.Run` (an export included) or its directory.
        images: decoded images, each [height, width, 3] (or grayscale, or RGBA), uint8 0..255:
            a list of any sizes, or an array [N, height, width, 3].
        tta: "none", a mode of `TTA_MODES`, or "auto" (the mode the run recorded, see
            `recorded_tta`). Defaults to "none".
        top_k: labels per image, most probable first. Defaults to 5.
        batch_size: views per forward pass (batch_size // views images). Defaults to 32.
        combine: "mean" of the views' probabilities or their "geometric" mean. Defaults to "mean".
        return_views: also return the views, uint8 (for display). Defaults to False.
        unknown: "auto" (the threshold training recorded, if any), "off", or a threshold in (0, 1)
            on the top probability: images under it are marked unknown. Defaults to "auto".

    Returns:
        One `ImagePrediction` per image, in order.

    Raises:
        FinetuneError: an image of the wrong shape, or TTA asked of an export that is not Keras.
    """
    run = _as_run(run)
    mode = _tta_mode(run, tta)
    threshold = _threshold(run, unknown)
    sources = _sources(images, source_size(mode, run.image_size))
    if len(sources) == 0:
        return []
    graph = graph_of(run, mode, combine)
    probabilities, *members = forward(graph, sources, per_pass=sources_per_pass(batch_size, mode))
    views = views_of(graph, sources) if return_views else None
    results = []
    for index, predictions in enumerate(top_k_labels(probabilities, run.labels, top_k)):
        result = ImagePrediction(predictions=predictions, probabilities=probabilities[index], threshold=threshold,
                                 unknown=threshold is not None and predictions[0]["probability"] < threshold)
        if members:
            result.member_labels = [run.labels[int(np.argmax(member[index]))] for member in members]
            best = predictions[0]["label"]
            result.agreement = sum(label == best for label in result.member_labels) / len(members)
        if views is not None:
            result.views = views[index]
        results.append(result)
    return results


def explain_image(run, image: np.ndarray, label: str, *, display: np.ndarray | None = None) -> np.ndarray:
    """`display` (default: `image`) with the Grad-CAM heat map of `label` for `image` laid over it (`finetune.explain`).

    The map is computed on the whole image resized to the run's input size, as `predict_arrays` sees it
    without TTA; it shows where the evidence for `label` lies.

    Raises:
        FinetuneError: a label not among the run's, or a model that is not a Keras classifier built
            by finetune (an export in another format).
    """
    from finetune.explain import heat_maps, overlay

    run = _as_run(run)
    if not is_keras_model(run.model):
        raise FinetuneError(f"Heat maps need a Keras model; {run.directory} holds a {type(run.model).__name__} export. "
                            "Explain the training run it came from, or an export with --format keras.")
    if label not in run.labels:
        raise FinetuneError(f"`label` must be one of the run's labels ({', '.join(run.labels)}). Received: label={label!r}")
    heat = heat_maps(run.model, _sources([image], run.image_size), [run.labels.index(label)])[0]
    return overlay(image if display is None else display, heat)


def predict(run_or_path, inputs, *, top_k: int = 5, batch_size: int = 32,
            max_megapixels: float = DataConfig.max_megapixels, tta: str = "auto", tta_combine: str = "mean",
            unknown="auto") -> list[dict]:
    """Top-k labels of each image; `inputs` are image files and folders (searched recursively).

    Args:
        run_or_path: a `Run` or its directory.
        inputs: a file or folder, or a list of them.
        top_k: labels per image. Defaults to 5.
        batch_size: views per forward pass. Defaults to 32.
        max_megapixels: larger images are skipped. Defaults to `DataConfig.max_megapixels`.
        tta: as in `evaluate`. Defaults to "auto".
        tta_combine: as in `evaluate`. Defaults to "mean".
        unknown: as in `predict_arrays`. Defaults to "auto".

    Returns:
        A list of {"path", "predictions": [{"label", "probability"}], "unknown": bool, "answer":
        the label or "unknown (closest: LABEL, p)"}; an image that cannot be read gives
        {"path", "error"} instead, and the others are still predicted.
    """
    inputs = [inputs] if isinstance(inputs, (str, Path)) else list(inputs)
    run = _as_run(run_or_path)
    mode = _tta_mode(run, tta)
    paths = []
    for item in inputs:
        item = Path(item)
        if item.is_dir():
            paths += list_images(item)
        elif item.exists():
            paths.append(item)
        else:
            raise FinetuneError(f"{item} does not exist. Pass image files or folders of images.")
    if not paths:
        raise FinetuneError(f"No images found in {', '.join(map(str, inputs))}.")
    # The inputs, not `paths`: a link to a folder found inside a folder is reported, not walked a second time.
    images, good_paths, skipped = load_images_for_prediction(inputs, source_size(mode, run.image_size), max_megapixels)
    results = {}
    if len(good_paths):
        predicted = predict_arrays(run, images, tta=mode, top_k=top_k, batch_size=batch_size, combine=tta_combine,
                                   unknown=unknown)
        for path, prediction in zip(good_paths, predicted):
            results[str(path)] = {"path": str(path), "predictions": prediction.predictions,
                                  "unknown": prediction.unknown, "answer": prediction.answer}
    for item in skipped:
        results[str(item["path"])] = {"path": str(item["path"]), "error": item["reason"]}
    return [results[str(path)] for path in paths if str(path) in results]


def evaluate(run_or_path, data_dir: str, *, batch_size: int = 32, max_megapixels: float = DataConfig.max_megapixels,
             verbose: int = 0, tta: str = "auto", tta_combine: str = "mean") -> dict:
    """Accuracy, per-class precision/recall and confusion matrix of a run on a labelled folder.

    Uses the folder's `test/` split when it has one, else every image in the folder. The
    folder's class names must be among the run's labels.

    Args:
        run_or_path: a `Run` or its directory.
        data_dir: a folder with one subfolder per class (optionally under test/).
        batch_size: the size of a forward pass: with TTA, batch_size // views images go in
            each. Defaults to 32.
        max_megapixels: larger images are skipped. Defaults to `DataConfig.max_megapixels`.
        verbose: 1 shows decoding and prediction progress. Defaults to 0.
        tta: test-time augmentation, a mode of `TTA_MODES` or "auto": the mode training chose
            on validation data (`config.json["tta"]`), "none" when it chose none. Images are
            resized whole to the mode's source size (`augment.tta_modes.source_size`), then cut
            into its views. Defaults to "auto".
        tta_combine: "mean" of the views' probabilities or their "geometric" mean. Defaults to "mean".
    """
    run = _as_run(run_or_path)
    mode = _tta_mode(run, tta)
    size = source_size(mode, run.image_size)
    source = discover(data_dir, val_fraction=0.0, seed=0)
    unknown = sorted(set(source.class_names) - set(run.labels))
    if unknown:
        raise FinetuneError(
            f"The classes of {data_dir} do not match the run's labels: {', '.join(unknown)} "
            f"{'is' if len(unknown) == 1 else 'are'} not among {', '.join(run.labels)} "
            f"({run.directory / LABELS_FILE}). Evaluate on a folder with the classes the run was trained on."
        )
    split_names = ["test"] if "test" in source.splits else sorted(source.splits)
    images, labels, skipped = [], [], list(source.skipped)
    for split_name in split_names:
        if len(source.splits[split_name].paths) == 0:
            continue
        loaded = load_split(source, split_name, size, max_megapixels, cache=True, verbose=verbose)
        images.append(loaded.images)
        # Map the folder's class indices onto the run's.
        labels.append(np.array([run.labels.index(source.class_names[k]) for k in loaded.labels], dtype=np.int64))
        skipped += loaded.skipped
    if not images or sum(len(batch) for batch in images) == 0:
        raise FinetuneError(f"No readable images to evaluate in {data_dir}.")
    graph = graph_of(run, mode, tta_combine)
    probabilities = forward(graph, np.concatenate(images), per_pass=sources_per_pass(batch_size, mode), verbose=verbose)[0]
    result = classification_metrics(np.concatenate(labels), probabilities, run.labels)
    result.update(split="test" if split_names == ["test"] else "all", skipped=skipped, run=str(run.directory), tta=mode)
    return result


# ---------------------------------------------------------------------------------------------
# The forward pass


def _as_run(run_or_path) -> Run:
    return run_or_path if isinstance(run_or_path, Run) else load_run(run_or_path)


def _threshold(run: Run, unknown) -> float | None:
    """The "unknown" threshold to apply: see `finetune.openset.resolve_threshold`."""
    from finetune.openset import resolve_threshold

    recorded = run.config.get("unknown")
    return resolve_threshold(unknown, recorded if isinstance(recorded, dict) else None)


def _tta_mode(run: Run, tta: str | None) -> str:
    """"auto" (and None) is the mode training chose on validation data (config.json "tta"), else "none"."""
    with as_finetune_error():
        return resolve_mode(tta, run.config.get("tta"))


def _sources(images, size: int) -> np.ndarray:
    """The images resized whole to size x size, uint8 [N, size, size, 3]; images already that size are kept."""
    if isinstance(images, np.ndarray) and images.ndim == 4 and images.shape[1:] == (size, size, 3):
        return images  # `predict` decodes at the source size already: no copy of a large set
    resized = [resize_image(image, size) for image in images]
    return np.stack(resized) if resized else np.zeros((0, size, size, 3), dtype=np.uint8)
