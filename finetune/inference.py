"""Evaluating a run on a labelled folder and predicting labels of images."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from finetune.errors import FinetuneError
from finetune.run import Run, load_run


def _as_run(run_or_path) -> Run:
    return run_or_path if isinstance(run_or_path, Run) else load_run(run_or_path)


def evaluate(run_or_path, data_dir: str, batch_size: int = 32, max_megapixels: float = 89.0, verbose: int = 0) -> dict:
    """Accuracy, per-class precision/recall and confusion matrix of a run on a labelled folder.

    Uses the folder's `test/` split when it has one, else every image in the folder. The
    folder's class names must be among the run's labels.
    """
    from finetune import data as data_module
    from finetune.metrics import classification_metrics

    run = _as_run(run_or_path)
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
        loaded = data_module.load_split(source, split_name, run.image_size, max_megapixels, cache=True, verbose=verbose)
        images.append(loaded.images)
        # Map the folder's class indices onto the run's.
        labels.append(np.array([run.labels.index(source.class_names[k]) for k in loaded.labels], dtype=np.int64))
        paths += loaded.paths
        skipped += loaded.skipped
    if not images or sum(len(batch) for batch in images) == 0:
        raise FinetuneError(f"No readable images to evaluate in {data_dir}.")
    images = np.concatenate(images)
    labels = np.concatenate(labels)
    probabilities = run.model.predict(images.astype(np.float32), batch_size=batch_size, verbose=verbose)
    result = classification_metrics(labels, probabilities, run.labels)
    result.update(split="test" if split_names == ["test"] else "all", skipped=skipped, run=str(run.directory))
    return result


def predict(run_or_path, inputs, top_k: int = 5, batch_size: int = 32, max_megapixels: float = 89.0) -> list[dict]:
    """Top-k labels of each image; `inputs` are image files and folders (searched recursively).

    Returns a list of {"path", "predictions": [{"label", "probability"}]}; an image that
    cannot be read gives {"path", "error"} instead, and the others are still predicted.
    """
    from finetune import data as data_module
    from finetune.metrics import top_k as top_k_labels

    if isinstance(inputs, (str, Path)):
        inputs = [inputs]
    run = _as_run(run_or_path)
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
    images, good_paths, skipped = data_module.load_images_for_prediction(paths, run.image_size, max_megapixels)
    results = {}
    if len(good_paths):
        probabilities = run.model.predict(images.astype(np.float32), batch_size=batch_size, verbose=0)
        for path, predictions in zip(good_paths, top_k_labels(probabilities, run.labels, top_k)):
            results[str(path)] = {"path": str(path), "predictions": predictions}
    for item in skipped:
        results[str(item["path"])] = {"path": str(item["path"]), "error": item["reason"]}
    return [results[str(path)] for path in paths if str(path) in results]
