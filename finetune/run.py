"""A run directory loaded back: `Run` and `load_run`, for training runs and exports alike.

What a run directory holds, and how its files are written, is in `finetune.files`.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from finetune.errors import FinetuneError
from finetune.files import (  # noqa: F401  the run-file names, public here for the app
    CONFIG_FILE,
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
