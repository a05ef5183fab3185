"""Evaluating a run on a labelled folder and predicting labels of images."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from finetune.errors import FinetuneError
from finetune.run import Run, load_run


def _as_run(run_or_path) -> Run:
    return run_or_path if isinstance(run_or_path, Run) else load_run(run_or_path)


def _tta_mode(run: Run, tta: str | None) -> str:
    """"auto" (the default) is the mode training chose on validation data (config.json "tta"), else "none"."""
    if tta in (None, "auto") and not run.config.get("tta"):
        return "none"  # no TensorFlow import for runs without TTA
    from augment.tta import resolve_mode

    return resolve_mode(tta, run.config.get("tta"))


def _input_size(run: Run, mode: str) -> int:
    """The size images are resized to (whole, as in training) before the model or its TTA views."""
    if mode == "none":
        return run.image_size
    from augment.tta import source_size

    return source_size(mode, run.image_size)


def _probabilities(run: Run, images: np.ndarray, mode: str, combine: str, batch_size: int, verbose: int = 0):
    model = run.model
    if mode != "none":
        import keras

        from augment.tta import build_tta_model, sources_per_pass

        if not isinstance(model, keras.Model):
            raise FinetuneError(
                f"Test-time augmentation needs a Keras model; {run.directory} holds a {type(model).__name__}. "
                f"Export with `finetune export --tta {mode}` to build it in, or pass --tta none. Received: tta={mode!r}"
            )
        model = build_tta_model(model, mode, run.image_size, combine)
        # A forward pass takes all the views of batch_size // views images: as many views as batch_size.
        batch_size = sources_per_pass(batch_size, mode)
    return model.predict(images.astype(np.float32), batch_size=batch_size, verbose=verbose)


def evaluate(run_or_path, data_dir: str, batch_size: int = 32, max_megapixels: float = 89.0, verbose: int = 0,
             tta: str = "auto", tta_combine: str = "mean") -> dict:
    """Accuracy, per-class precision/recall and confusion matrix of a run on a labelled folder.

    Uses the folder's `test/` split when it has one, else every image in the folder. The
    folder's class names must be among the run's labels.

    Args:
        tta: test-time augmentation, a mode of `augment.tta` or "auto": the mode training chose
            on validation data (`config.json["tta"]`), "none" when it chose none. Images are
            resized whole to the mode's source size (`augment.tta.source_size`), then cut into
            its views. Defaults to "auto".
        tta_combine: "mean" of the views' probabilities or their "geometric" mean. Defaults to "mean".

    `batch_size` is the size of a forward pass: with TTA, batch_size // views images go in each.
    """
    from finetune import data as data_module
    from finetune.metrics import classification_metrics

    run = _as_run(run_or_path)
    mode = _tta_mode(run, tta)
    size = _input_size(run, mode)
    source = data_module.discover(data_dir, val_fraction=0.0, seed=0)
    unknown = sorted(set(source.class_names) - set(run.labels))
    if unknown:
        raise FinetuneError(
            f"The classes of {data_dir} do not match the run's labels: {', '.join(unknown)} "
            f"{'is' if len(unknown) == 1 else 'are'} not among {', '.join(run.labels)} "
            f"({run.directory / 'labels.json'}). Evaluate on a folder with the classes the run was trained on."
        )
    split_names = ["test"] if "test" in source.splits else sorted(source.splits)
    images, labels, paths, skipped = [], [], [], list(source.skipped)
    for split_name in split_names:
        if len(source.splits[split_name].paths) == 0:
            continue
        loaded = data_module.load_split(source, split_name, size, max_megapixels, cache=True, verbose=verbose)
        images.append(loaded.images)
        # Map the folder's class indices onto the run's.
        labels.append(np.array([run.labels.index(source.class_names[k]) for k in loaded.labels], dtype=np.int64))
        paths += loaded.paths
        skipped += loaded.skipped
    if not images or sum(len(batch) for batch in images) == 0:
        raise FinetuneError(f"No readable images to evaluate in {data_dir}.")
    images = np.concatenate(images)
    labels = np.concatenate(labels)
    probabilities = _probabilities(run, images, mode, tta_combine, batch_size, verbose)
    result = classification_metrics(labels, probabilities, run.labels)
    result.update(split="test" if split_names == ["test"] else "all", skipped=skipped, run=str(run.directory), tta=mode)
    return result


def predict(run_or_path, inputs, top_k: int = 5, batch_size: int = 32, max_megapixels: float = 89.0,
            tta: str = "auto", tta_combine: str = "mean") -> list[dict]:
    """Top-k labels of each image; `inputs` are image files and folders (searched recursively).

    Returns a list of {"path", "predictions": [{"label", "probability"}]}; an image that
    cannot be read gives {"path", "error"} instead, and the others are still predicted.
    `tta` and `tta_combine` are as in `evaluate`.
    """
    from finetune import data as data_module
    from finetune.metrics import top_k as top_k_labels

    if isinstance(inputs, (str, Path)):
        inputs = [inputs]
    run = _as_run(run_or_path)
    mode = _tta_mode(run, tta)
    paths = []
    for item in inputs:
        item = Path(item)
        if item.is_dir():
            paths += data_module.list_images(item)
        elif item.exists():
            paths.append(item)
        else:
            raise FinetuneError(f"{item} does not exist. Pass image files or folders of images.")
    if not paths:
        raise FinetuneError(f"No images found in {', '.join(map(str, inputs))}.")
    images, good_paths, skipped = data_module.load_images_for_prediction(paths, _input_size(run, mode), max_megapixels)
    results = {}
    if len(good_paths):
        probabilities = _probabilities(run, images, mode, tta_combine, batch_size)
        for path, predictions in zip(good_paths, top_k_labels(probabilities, run.labels, top_k)):
            results[str(path)] = {"path": str(path), "predictions": predictions}
    for item in skipped:
        results[str(item["path"])] = {"path": str(item["path"]), "error": item["reason"]}
    return [results[str(path)] for path in paths if str(path) in results]
