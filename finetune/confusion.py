"""The confusion matrix as a picture: counts and row-normalised percentages, class names on the axes.

Every run writes one for its validation and test splits (confusion.png); `finetune evaluate
--plot FILE.png` writes one for any labelled folder. The numbers come from
`finetune.metrics.classification_metrics` (rows: true classes, columns: predicted ones).

Example:

```python
metrics = json.loads((run_dir / "metrics.json").read_text())
plot_confusion({"validation": metrics["val"], "test": metrics["test"]}, run_dir / "confusion.png")
```
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from finetune.curves import save_figure
from finetune.errors import FinetuneError

ANNOTATE_MAX_CLASSES = 30  # above this, numbers in the cells would not fit: the colours tell
LABEL_MAX_CLASSES = 150  # above this, class names on the axes overlap into a black band
CELL_INCHES = 0.38  # per class, until a panel reaches MAX_PANEL_INCHES
MIN_PANEL_INCHES = 3.6
MAX_PANEL_INCHES = 20.0
MARGIN_INCHES = 1.6  # of a panel, for its class names


def check_plot_path(path, argument: str = "path") -> Path:
    """`path` as a `Path`, when it ends in .png and its folder is (or can be made) a writable folder.

    Checked before the work that the picture shows, so that a typo costs nothing. Nothing is created.

    Args:
        path: where the PNG is to go.
        argument: the name the error gives the argument (e.g. "--plot"). Defaults to "path".
    """
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise FinetuneError(f"The confusion matrix is written as a PNG: give a file name ending in .png. "
                            f"Received: {argument}={path}")
    folder = path.parent.absolute()
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent  # the nearest folder that exists: the rest is made when writing
    if not folder.is_dir():
        raise FinetuneError(f"Cannot write {path}: {folder} is a file, not a folder. Received: {argument}={path}")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise FinetuneError(f"Cannot write {path}: the folder {folder} is not writable. Received: {argument}={path}")
    if path.is_dir():
        raise FinetuneError(f"Cannot write {path}: it is a folder. Give a file name ending in .png. "
                            f"Received: {argument}={path}")
    return path


def row_normalised(confusion) -> np.ndarray:
    """Each row of `confusion` as percentages of its true class; NaN for a class without images."""
    confusion = np.asarray(confusion, dtype=np.float64)
    totals = confusion.sum(axis=1, keepdims=True)
    percent = np.full_like(confusion, np.nan)
    np.divide(100.0 * confusion, totals, out=percent, where=totals > 0)
    return percent


def _matrix(name: str, metrics) -> tuple[np.ndarray, list[str]]:
    if not isinstance(metrics, dict) or "confusion_matrix" not in metrics or "class_names" not in metrics:
        raise FinetuneError(f"Split `{name}` has no confusion matrix: pass the dict of "
                            f"`finetune.metrics.classification_metrics` (or of `finetune.evaluate`). "
                            f"Received: splits[{name!r}]={type(metrics).__name__}")
    confusion = np.asarray(metrics["confusion_matrix"], dtype=np.int64)
    names = [str(class_name) for class_name in metrics["class_names"]]
    if confusion.shape != (len(names), len(names)):
        raise FinetuneError(f"Split `{name}`: the confusion matrix is {confusion.shape}, but there are {len(names)} "
                            f"class names. Received: splits[{name!r}]['confusion_matrix'] of shape {confusion.shape}")
    return confusion, names


def _split_title(name: str, metrics: dict, confusion: np.ndarray) -> str:
    images = int(confusion.sum())
    accuracy = metrics.get("accuracy")
    title = f"{name}: accuracy {accuracy:.1%} on {images} images" if accuracy is not None else f"{name}: {images} images"
    if metrics.get("held_out") is False:
        title += " (not held out: the head was fit on them)"
    if metrics.get("tta", "none") not in ("none", None):
        title += f", TTA {metrics['tta']}"
    return title


def _panel(axis, figure, values: np.ndarray, names: list[str], *, percent: bool, title: str, cell: float) -> None:
    """One heat map with its colour bar, class names on both axes, and numbers in the cells when they fit.

    `cell` is the side of a cell in points: the names and numbers are sized to fit it.
    """
    import matplotlib
    from matplotlib.ticker import MaxNLocator

    count = len(names)
    colours = matplotlib.colormaps["Blues"].with_extremes(bad="#dddddd")  # grey: a class without images
    image = axis.imshow(np.ma.masked_invalid(values), cmap=colours, vmin=0, vmax=100 if percent else max(1, np.nanmax(values)),
                        interpolation="nearest")
    bar = figure.colorbar(image, ax=axis, fraction=0.046, pad=0.04, label="% of the true class" if percent else "images")
    if not percent:
        bar.locator = MaxNLocator(integer=True)  # images come whole
        bar.update_ticks()
    axis.set_title(title, fontsize="medium")
    axis.set_xlabel("predicted class")
    axis.set_ylabel("true class")
    if count <= LABEL_MAX_CLASSES:
        size = max(4.0, min(9.0, 0.7 * cell))
        axis.set_xticks(range(count), names, rotation=45 if count <= 12 else 90, ha="right" if count <= 12 else "center",
                        rotation_mode="anchor" if count <= 12 else "default", fontsize=size)
        axis.set_yticks(range(count), names, fontsize=size)
    else:
        axis.set_xticks([])
        axis.set_yticks([])
        axis.set_xlabel(f"predicted class ({count} classes: names omitted)")
    if count > ANNOTATE_MAX_CLASSES:
        return
    threshold = (100 if percent else max(1, np.nanmax(values))) / 2
    for row in range(count):
        for column in range(count):
            value = values[row, column]
            text = "–" if np.isnan(value) else (f"{value:.0f}%" if percent else f"{int(value)}")
            axis.text(column, row, text, ha="center", va="center", fontsize=max(5.0, min(9.0, 0.3 * cell)),
                      color="white" if not np.isnan(value) and value > threshold else "black")


def plot_confusion(splits: dict[str, dict], path, title: str | None = None) -> Path:
    """Draws each split's confusion matrix, as counts and as row-normalised percentages, into a PNG.

    One row of two panels per split: the counts, and each true class's images as percentages of
    it (a class without images is grey, not a division by zero). Class names label both axes;
    the figure grows with the number of classes, and cells are numbered up to
    `ANNOTATE_MAX_CLASSES` classes. Written through a temporary file and a rename: a failure
    leaves an earlier picture whole.

    Args:
        splits: {split name: metrics}, e.g. {"validation": metrics["val"], "test": metrics["test"]},
            each with "confusion_matrix" and "class_names" (and "accuracy" for the title).
        path: the PNG to write; its folder is made if missing.
        title: a title over the panels. Defaults to "Confusion matrix (rows: true class, columns: predicted)".

    Returns:
        The path written.
    """
    if not isinstance(splits, dict) or not splits:
        raise FinetuneError(f"`splits` must be a non-empty dict of split name to metrics. Received: splits={splits!r}")
    path = check_plot_path(path)
    matrices = {name: _matrix(name, metrics) for name, metrics in splits.items()}
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    count = max(len(names) for _, names in matrices.values())
    panel = min(MAX_PANEL_INCHES, max(MIN_PANEL_INCHES, CELL_INCHES * count + MARGIN_INCHES))
    cell = 72 * (panel - MARGIN_INCHES) / count  # points
    figure, axes = plt.subplots(len(matrices), 2, figsize=(2 * panel + 1.6, len(matrices) * panel + 0.8), squeeze=False)
    for row, (name, (confusion, names)) in enumerate(matrices.items()):
        split_title = _split_title(name, splits[name], confusion)
        _panel(axes[row, 0], figure, confusion.astype(np.float64), names, percent=False, title=f"{split_title}\ncounts",
               cell=cell)
        _panel(axes[row, 1], figure, row_normalised(confusion), names, percent=True,
               title=f"{split_title}\n% of each true class (the diagonal is its recall)", cell=cell)
    figure.suptitle(title if title is not None else "Confusion matrix (rows: true class, columns: predicted)")
    try:
        return save_figure(figure, path)
    except OSError as error:
        raise FinetuneError(f"Cannot write {path} ({error.strerror or error}). Received: path={path}") from None
