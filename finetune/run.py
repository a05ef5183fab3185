"""A run directory loaded back: `Run` and `load_run`, for training runs and exports alike.

What a run directory holds, and how its files are written, is in `finetune.files`.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

from finetune.errors import FinetuneError
from finetune.files import (  # noqa: F401  the run-file names, public here for the app
    CONFIG_FILE,
    CONFUSION_FILE,
    EXPORT_FILE,
    LABELS_FILE,
    METRICS_FILE,
    MODEL_FILE,
    SNAPSHOT_DIR,
    is_model_directory,
    read_json,
    snapshot_paths,
)


@dataclasses.dataclass
class Run:
    """A trained run loaded back from its directory."""

    directory: Path
    labels: list[str]
    config: dict
    metrics: dict
    _model: object = None
    # Gives the model instead of model.keras (exports in other formats: see finetune.export).
    _loader: object = None

    @property
    def image_size(self) -> int:
        return int(self.config["image_size"])

    @property
    def model(self):
        """The Keras model, loaded on first use with `safe_mode=True`."""
        if self._model is None and self._loader is not None:
            self._model = self._loader()
        if self._model is None:
            from finetune.ensemble import load_members

            self._model = load_members([self.directory / MODEL_FILE])[0]
        return self._model


def load_run(path) -> Run:
    """Loads a run directory written by `finetune train`, or an export of `finetune export`.

    Raises a `FinetuneError` naming the directory when it is not a run.
    """
    directory = Path(path)
    export_directory = directory.parent if directory.is_file() else directory
    if (export_directory / EXPORT_FILE).is_file():
        from finetune.export.reader import read_export

        return Run(**read_export(export_directory))
    if not directory.is_dir():
        raise FinetuneError(
            f"Run directory {directory} does not exist. Pass a directory written by `finetune train` "
            "(by default under models/)."
        )
    if not (directory / MODEL_FILE).is_file():
        raise FinetuneError(
            f"{directory} holds no {MODEL_FILE}: it is not a finished training run. "
            "Train one with `finetune train DATA_DIR --out DIR`."
        )
    labels = read_json(directory / LABELS_FILE)
    config = read_json(directory / CONFIG_FILE)
    metrics = read_json(directory / METRICS_FILE) if (directory / METRICS_FILE).exists() else {}
    return Run(directory=directory, labels=list(labels), config=config, metrics=metrics)


# Where runs are listed from (`finetune runs`, the app) and where `finetune train` puts them by default.
MODELS_DIR_VARIABLE = "FINETUNE_MODELS_DIR"
DEFAULT_MODELS_DIR = "models"


def models_dir(given=None, environ=None) -> Path:
    """The folder to list runs from: `given`, else $FINETUNE_MODELS_DIR, else models/.

    Args:
        given: a folder the user named (`finetune runs DIR`, `--models-dir DIR`). Defaults to None.
        environ: the environment to read. Defaults to `os.environ`.
    """
    environ = os.environ if environ is None else environ
    return Path(given or environ.get(MODELS_DIR_VARIABLE) or DEFAULT_MODELS_DIR).expanduser()


def find_model_directories(folder, depth: int = 2) -> list[Path]:
    """Run and export directories under `folder`, by path; a folder of them (e.g. models/exports/) is searched too.

    A run's snapshots/ are its own, not separate models. Raises `OSError` when a folder cannot be listed.

    Args:
        folder: where to look.
        depth: how many levels of folders to look into. Defaults to 2.
    """
    folder = Path(folder)
    if depth == 0 or not folder.is_dir():
        return []
    found = []
    for directory in sorted(path for path in folder.iterdir() if path.is_dir() and not path.name.startswith(".")):
        if is_model_directory(directory):
            found.append(directory)
        elif directory.name != SNAPSHOT_DIR:
            found += find_model_directories(directory, depth - 1)
    return found


def honest_accuracy(metrics: dict) -> tuple[float | None, str | None]:
    """A run's estimate of its accuracy on new images (from its metrics.json), and which figure that is.

    Returns:
        (accuracy, kind), kind one of: "validation" (images the final model was not fit on);
        "cross-validated" (the head was also fit on the validation images, or there were none,
        so the stage search's held-out folds give the estimate); "validation, not held out"
        (seen images, and no cross-validated figure to fall back on); (None, None) when the run
        recorded neither.
    """
    validation = metrics.get("val") if isinstance(metrics.get("val"), dict) else {}
    accuracy = metrics.get("val_accuracy")
    if accuracy is None:
        accuracy = validation.get("accuracy")
    cross_validated = metrics.get("cv_accuracy")
    if cross_validated is not None and (accuracy is None or validation.get("held_out") is False):
        return float(cross_validated), "cross-validated"
    if accuracy is None:
        return None, None
    return float(accuracy), "validation, not held out" if validation.get("held_out") is False else "validation"
