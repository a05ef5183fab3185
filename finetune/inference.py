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
import sys
import weakref
from pathlib import Path

import numpy as np

from augment.tta_modes import COMBINES, MODES, resolve_mode, source_size, sources_per_pass
from finetune.config import DataConfig
from finetune.data import BadImageError, discover, list_images, load_image, load_images_for_prediction, load_split, resize_image
from finetune.errors import USER_ERRORS, FinetuneError, as_finetune_error, check_choice
from finetune.metrics import classification_metrics
from finetune.metrics import top_k as top_k_labels
from finetune.run import LABELS_FILE, Run, load_run

__all__ = [
    "TTA_COMBINES", "TTA_MODES", "BadImageError", "ImagePrediction", "decode_image", "evaluate", "predict",
    "predict_arrays", "recorded_tta",
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
    """

    predictions: list[dict]
    probabilities: np.ndarray
    member_labels: list[str] = dataclasses.field(default_factory=list)
    agreement: float | None = None
    views: np.ndarray | None = None


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
                   return_views: bool = False) -> list[ImagePrediction]:
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

    Returns:
        One `ImagePrediction` per image, in order.

    Raises:
        FinetuneError: an image of the wrong shape, or TTA asked of an export that is not Keras.
    """
    run = _as_run(run)
    mode = _tta_mode(run, tta)
    sources = _sources(images, source_size(mode, run.image_size))
    if len(sources) == 0:
        return []
    graph = _graph(run, mode, combine)
    probabilities, *members = _forward(graph, sources, per_pass=sources_per_pass(batch_size, mode))
    views = _views(graph, sources) if return_views else None
    results = []
    for index, predictions in enumerate(top_k_labels(probabilities, run.labels, top_k)):
        result = ImagePrediction(predictions=predictions, probabilities=probabilities[index])
        if members:
            result.member_labels = [run.labels[int(np.argmax(member[index]))] for member in members]
            best = predictions[0]["label"]
            result.agreement = sum(label == best for label in result.member_labels) / len(members)
        if views is not None:
            result.views = views[index]
        results.append(result)
    return results


def predict(run_or_path, inputs, *, top_k: int = 5, batch_size: int = 32,
            max_megapixels: float = DataConfig.max_megapixels, tta: str = "auto", tta_combine: str = "mean") -> list[dict]:
    """Top-k labels of each image; `inputs` are image files and folders (searched recursively).

    Args:
        run_or_path: a `Run` or its directory.
        inputs: a file or folder, or a list of them.
        top_k: labels per image. Defaults to 5.
        batch_size: views per forward pass. Defaults to 32.
        max_megapixels: larger images are skipped. Defaults to `DataConfig.max_megapixels`.
        tta: as in `evaluate`. Defaults to "auto".
        tta_combine: as in `evaluate`. Defaults to "mean".

    Returns:
        A list of {"path", "predictions": [{"label", "probability"}]}; an image that cannot be
        read gives {"path", "error"} instead, and the others are still predicted.
    """
    if isinstance(inputs, (str, Path)):
        inputs = [inputs]
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
    images, good_paths, skipped = load_images_for_prediction(paths, source_size(mode, run.image_size), max_megapixels)
    results = {}
    if len(good_paths):
        predicted = predict_arrays(run, images, tta=mode, top_k=top_k, batch_size=batch_size, combine=tta_combine)
        for path, prediction in zip(good_paths, predicted):
            results[str(path)] = {"path": str(path), "predictions": prediction.predictions}
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
    graph = _graph(run, mode, tta_combine)
    probabilities = _forward(graph, np.concatenate(images), per_pass=sources_per_pass(batch_size, mode), verbose=verbose)[0]
    result = classification_metrics(np.concatenate(labels), probabilities, run.labels)
    result.update(split="test" if split_names == ["test"] else "all", skipped=skipped, run=str(run.directory), tta=mode)
    return result


# ---------------------------------------------------------------------------------------------
# The forward pass


def _as_run(run_or_path) -> Run:
    return run_or_path if isinstance(run_or_path, Run) else load_run(run_or_path)


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


# Built graphs of each run by (mode, combine): building one and tracing its predict function
# takes seconds, which the app would pay on every upload. Dropped when the run is.
_GRAPHS: dict[int, dict] = {}


def _graph(run: Run, mode: str, combine: str):
    """The model of one forward pass for `run`: source images -> [probabilities, each member's probabilities]."""
    check_choice("tta_combine", combine, COMBINES)
    key = id(run)
    if key not in _GRAPHS:
        _GRAPHS[key] = {}
        weakref.finalize(run, _GRAPHS.pop, key, None)
    graphs = _GRAPHS[key]
    if (mode, combine) not in graphs:
        graphs[(mode, combine)] = _build_graph(run, mode, combine)
    return graphs[(mode, combine)]


def _is_keras_model(model) -> bool:
    keras = sys.modules.get("keras")  # a Keras model exists only once Keras is imported: no import for the others
    return keras is not None and isinstance(model, keras.Model)


def _build_graph(run: Run, mode: str, combine: str):
    """`run.model`, with an ensemble's member outputs beside its own and the mode's views cut and combined.

    An export in another format (TFLite, ONNX, SavedModel) is its own graph: it takes TTA only
    built in (`finetune export --tta`).
    """
    model = run.model
    if not _is_keras_model(model):
        if mode != "none":
            raise FinetuneError(
                f"Test-time augmentation needs a Keras model; {run.directory} holds a {type(model).__name__}. "
                f"Export with `finetune export --tta {mode}` to build it in, or pass --tta none. Received: tta={mode!r}"
            )
        return model
    import keras

    members = _member_outputs(model)
    core = keras.Model(model.inputs, [model.outputs[0], *members], name=f"{model.name}_members") if members else model
    if mode == "none":
        return core
    from augment.tta import TTAAverage, TTACrops

    crops = TTACrops(mode, run.image_size, name="tta_crops")
    inputs = keras.Input((crops.source_size, crops.source_size, model.input_shape[-1]), name="image")
    per_view = _as_list(core(_structured(core, crops(inputs))))
    # augment.tta.build_tta_model's combine, for each output: the members' views are combined as the ensemble's.
    combined = [TTAAverage(crops.views, combine, name=f"tta_average_{index}")(output)
                for index, output in enumerate(per_view)]
    return keras.Model(inputs, combined, name=f"{model.name}_tta_{mode}")


def _member_outputs(model) -> list:
    """The members' probabilities inside an ensemble's own graph ([] for one model).

    `finetune.ensemble.build_ensemble` wraps member k as layer `member_k` and averages them in
    layer "average"; its inputs are the members' outputs, so one pass gives them all.
    """
    members = [layer for layer in model.layers if layer.name.startswith("member_")]
    if len(members) < 2 or "average" not in {layer.name for layer in model.layers}:
        return []
    outputs = model.get_layer("average").input
    return list(outputs) if isinstance(outputs, (list, tuple)) and len(outputs) == len(members) else []


def _structured(model, batch):
    """`batch` in the structure the model was built with (`[image]` or `image`), which Keras warns about otherwise."""
    return [batch] if isinstance(model.input, (list, tuple)) else batch


def _as_list(outputs) -> list:
    if isinstance(outputs, dict):
        return list(outputs.values())
    return list(outputs) if isinstance(outputs, (list, tuple)) else [outputs]


def _forward(graph, sources: np.ndarray, *, per_pass: int, verbose: int = 0) -> list[np.ndarray]:
    """The graph's outputs for every source image, `per_pass` images per forward pass.

    Keras's `predict` sets up a data pipeline on every call (about 0.2 s, measured), which one
    upload would pay each time; `predict_on_batch` does not. `predict` is used for its progress bar.
    """
    if not _is_keras_model(graph):  # an export's predictor
        return [np.asarray(graph.predict(sources.astype(np.float32), batch_size=per_pass, verbose=verbose))]
    if verbose:
        outputs = graph.predict(_structured(graph, sources.astype(np.float32)), batch_size=per_pass, verbose=verbose)
        return [np.asarray(output) for output in _as_list(outputs)]
    batches = []
    for start in range(0, len(sources), per_pass):
        batch = sources[start : start + per_pass].astype(np.float32)
        batches.append([np.asarray(output) for output in _as_list(graph.predict_on_batch(_structured(graph, batch)))])
    return [np.concatenate(outputs) for outputs in zip(*batches)]


def _views(graph, sources: np.ndarray) -> np.ndarray:
    """The views the graph cut of each source, uint8 [N, views, S, S, 3] (its own crop layer: the same pixels)."""
    if not _is_keras_model(graph) or "tta_crops" not in {layer.name for layer in graph.layers}:
        return sources[:, None]
    import keras

    crops = graph.get_layer("tta_crops")
    views = keras.ops.convert_to_numpy(crops(sources.astype(np.float32)))
    views = views.reshape(len(sources), crops.views, *views.shape[1:])
    return np.clip(np.rint(views), 0, 255).astype(np.uint8)
