"""Files of a run, written whole or not at all: atomic writes, JSON reading, run-file names.

A leaf module: it imports nothing of `finetune` but `finetune.errors`, so every other module
(training, export, callbacks, the app) can use it without an import cycle.

A run directory holds:
    model.keras     the classifier; takes raw RGB images (0..255), preprocessing inside
    labels.json     the class names, in the order of the model's outputs
    config.json     the resolved configuration, with the seed and library versions
    policy.json     the transfer policy's measurements, decision and reasons
    history.csv     one line per finetuning epoch
    curves.png      the training curves (finetune.curves)
    confusion.png   the validation and test confusion matrices, counts and row-normalised
    metrics.json    validation (and test) accuracy, per-class precision/recall, confusion matrix
    skipped.json    files that could not be used, with the reason
    snapshots/      the models of a snapshot ensemble, one per cycle
An export directory (`finetune.export`) holds export.json instead of config.json.
"""

from __future__ import annotations

import datetime
import errno
import json
import os
import re
import shutil
import sys
import tempfile
from pathlib import Path

from finetune.errors import FinetuneError

MODEL_FILE = "model.keras"
LABELS_FILE = "labels.json"
CONFIG_FILE = "config.json"
POLICY_FILE = "policy.json"
METRICS_FILE = "metrics.json"
SKIPPED_FILE = "skipped.json"
HISTORY_FILE = "history.csv"
CALIBRATION_FILE = "calibration.png"  # the reliability diagram (finetune.trust)
CURVES_FILE = "curves.png"
CONFUSION_FILE = "confusion.png"  # the validation and test confusion matrices (finetune.confusion)
BACKUP_DIR = "backup"  # finetune.checkpoint: a killed run resumes from here
SNAPSHOT_DIR = "snapshots"
TENSORBOARD_DIR = "tensorboard"  # run/tensorboard/: TensorBoard's event files, with --tensorboard
EXPORT_FILE = "export.json"  # marks an export directory (finetune.export)


# Every temporary file or folder is named .tmp-<pid>-<name>: one a killed process left is known by
# its pid no longer running (`remove_stale_temporaries`).
TEMPORARY_PREFIX = ".tmp-"
_TEMPORARY_NAME = re.compile(r"^\.tmp-(?:export-)?(\d+)-")


def temporary_path(path: Path) -> Path:
    """Where `path` is written before its rename: `.tmp-<pid>-<name>` beside it (same suffix, as Keras asks)."""
    path = Path(path)
    return path.with_name(f"{TEMPORARY_PREFIX}{os.getpid()}-{path.name}")


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def remove_stale_temporaries(folder, *, recursive: bool = True, own: bool = False) -> list[Path]:
    """Removes the temporary files and folders under `folder` that a killed process left; returns them.

    Only `.tmp-<pid>-...` names whose process is no longer running: a write in progress in another
    process is left alone. `own`: this process's pid counts as stale too, for a caller that has not
    written anything yet (after a restart, a container often gets the pid its killed run had).
    """
    folder, removed = Path(folder), []
    if not folder.is_dir():
        return removed
    for path in sorted(folder.rglob(f"{TEMPORARY_PREFIX}*") if recursive else folder.glob(f"{TEMPORARY_PREFIX}*")):
        match = _TEMPORARY_NAME.match(path.name)
        pid = None if match is None else int(match.group(1))
        if pid is None or (pid == os.getpid() and not own) or (pid != os.getpid() and _running(pid)):
            continue
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
        removed.append(path)
    return removed


def atomic_write_text(path: Path, text: str) -> None:
    """Writes `text` to `path` so that a reader sees the old file or the new one, never half.

    A full disk or a folder without write permission raises a `FinetuneError` naming `path`
    (see `write_error`); the old file, if any, is left as it was, and no temporary file stays.
    """
    path = Path(path)
    temporary = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f"{TEMPORARY_PREFIX}{os.getpid()}-{path.name}.",
                                             suffix=".tmp")
        with os.fdopen(handle, "w", encoding="utf-8") as file:
            file.write(text)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException as error:
        if temporary is not None:
            Path(temporary).unlink(missing_ok=True)
        if isinstance(error, OSError):
            raise write_error(path, error) from None
        raise


def write_error(path: Path, error: OSError) -> FinetuneError:
    """The `FinetuneError` for an `OSError` while writing `path`: one line with the path, the cause and the fix."""
    if error.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)):
        fix = "The disk is full: free some space, or write elsewhere (--out DIR)."
    elif error.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        fix = "This process may not write there: write elsewhere (--out DIR), or make the folder writable."
    else:
        fix = "Check that the folder exists and can be written to, or write elsewhere (--out DIR)."
    reason = " ".join(str(error.strerror or error).split())
    return FinetuneError(f"Cannot write {path} ({reason}); an earlier file of that name is unchanged. {fix} "
                         f"Received: path={path}")


def atomic_write_json(path: Path, value) -> None:
    atomic_write_text(path, json.dumps(value, indent=2, default=_json_default) + "\n")


def _json_default(value):
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot write {type(value).__name__} as JSON")


def save_model_atomic(model, path: Path) -> None:
    """Saves a Keras model to `path` (a .keras file) through a temporary file and a rename.

    As `atomic_write_text`: an `OSError` (a full disk, no permission) raises a `FinetuneError`
    naming `path`, and an earlier file at `path` is left as it was.
    """
    _write_through_temporary(Path(path), model.save)


def save_weights_atomic(model, path: Path) -> None:
    """`model.save_weights` to `path` (a .weights.h5 file) as `save_model_atomic` saves models."""
    _write_through_temporary(Path(path), model.save_weights)


def _write_through_temporary(path: Path, write) -> None:
    """`write(temporary)`, then the rename onto `path`; an `OSError` is a `FinetuneError` naming `path`."""
    temporary = temporary_path(path)  # keeps the suffix (.keras, .weights.h5) Keras decides the format by
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write(temporary)
        os.replace(temporary, path)
    except OSError as error:
        raise write_error(path, error) from None
    finally:
        temporary.unlink(missing_ok=True)


def inference_model(model, name: str | None = None):
    """A fresh functional model over the same layers, without the optimizer: what a run saves.

    Its output is the one probability tensor, not a one-element list (`model.outputs`), so that
    a saved model predicts an array and ensembles can average saved models.
    """
    import keras

    outputs = model.outputs[0] if len(model.outputs) == 1 else model.outputs
    inputs = model.inputs[0] if len(model.inputs) == 1 else model.inputs
    return keras.Model(inputs, outputs, name=name or model.name)


def read_json(path: Path):
    """The JSON value in `path`; a missing or broken file raises a `FinetuneError` naming it."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FinetuneError(f"{path} is missing.") from None
    except json.JSONDecodeError as error:
        raise FinetuneError(f"{path} is not valid JSON ({error}). Was it edited by hand?") from None


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


def snapshot_paths(run_dir) -> list[Path]:
    """The snapshot files of a run, in cycle order; empty when it has none."""
    return sorted((Path(run_dir) / SNAPSHOT_DIR).glob("snapshot_*.keras"))  # not a temporary .tmp-<pid>-snapshot_..


def is_model_directory(directory) -> bool:
    """Whether `directory` holds a finished run (model.keras) or an export (export.json)."""
    directory = Path(directory)
    return (directory / MODEL_FILE).is_file() or (directory / EXPORT_FILE).is_file()


def library_versions() -> dict:
    """Versions of Python and the libraries a run's numbers depend on, for config.json."""
    import keras
    import numpy as np
    import PIL
    import tensorflow as tf

    return {
        "python": sys.version.split()[0],
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "numpy": np.__version__,
        "pillow": PIL.__version__,
    }
