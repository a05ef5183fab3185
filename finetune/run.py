"""The run directory: what a training run leaves behind, written atomically, and loading it back.

A run directory holds:
    model.keras     the classifier; takes raw RGB images (0..255), preprocessing inside
    labels.json     the class names, in the order of the model's outputs
    config.json     the resolved configuration, with the seed and library versions
    history.csv     one line per finetuning epoch
    metrics.json    validation (and test) accuracy, per-class precision/recall, confusion matrix
    skipped.json    files that could not be used, with the reason
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
import re
import tempfile
from pathlib import Path

from finetune.errors import FinetuneError

MODEL_FILE = "model.keras"
LABELS_FILE = "labels.json"
CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.json"
SKIPPED_FILE = "skipped.json"
HISTORY_FILE = "history.csv"
EXPORT_FILE = "export.json"  # marks an export directory (finetune.export)


def atomic_write_text(path: Path, text: str) -> None:
    """Writes `text` to `path` so that a reader sees the old file or the new one, never half."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as file:
            file.write(text)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def atomic_write_json(path: Path, value) -> None:
    atomic_write_text(path, json.dumps(value, indent=2, default=_json_default) + "\n")


def _json_default(value):
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot write {type(value).__name__} as JSON")


def save_model_atomic(model, path: Path) -> None:
    """Saves a Keras model to `path` (a .keras file) through a temporary file and a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".tmp-{os.getpid()}-{path.name}")
    try:
        model.save(temporary)
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def default_run_dir(data_name: str, backbone: str, models_dir: Path | str = "models") -> Path:
    """models/<data-name>-<backbone>-<timestamp>, made unique if a run started in the same second."""
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    safe_name = re.sub(r"[^A-Za-z0-9_.-]+", "_", data_name).strip("_") or "data"
    candidate = Path(models_dir) / f"{safe_name}-{backbone}-{stamp}"
    suffix = 1
    while candidate.exists():
        suffix += 1
        candidate = Path(models_dir) / f"{safe_name}-{backbone}-{stamp}-{suffix}"
    return candidate


def read_json(path: Path):
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FinetuneError(f"{path} is missing.") from None
    except json.JSONDecodeError as error:
        raise FinetuneError(f"{path} is not valid JSON ({error}). Was it edited by hand?") from None


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
            import keras

            import finetune.zoo  # noqa: F401  registers the custom layers before loading

            self._model = keras.saving.load_model(self.directory / MODEL_FILE, safe_mode=True, compile=False)
        return self._model


def load_run(path) -> Run:
    """Loads a run directory written by `finetune train`, or an export of `finetune export`.

    Raises a `FinetuneError` naming the directory when it is not a run.
    """
    directory = Path(path)
    export_directory = directory.parent if directory.is_file() else directory
    if (export_directory / EXPORT_FILE).is_file():
        from finetune.export import load_export

        return load_export(export_directory)
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
