"""The app's computation, apart from its drawing: finding models, decoding uploads, predicting.

Nothing here imports Streamlit, so that it runs (and is tested) without a browser; the app in
`app/streamlit_app.py` only draws what these functions return. Uploads are decoded from bytes
in memory by `finetune.data` (content decides the format, never the file name) and predicted
the way `finetune.inference.predict` predicts files: the whole image resized to the run's size
(or to the source size of an `augment.tta` mode, then cut into its views, whose probabilities
are averaged), top-k labels.

Example:
>>> entries, problems = find_models("models")
>>> run = finetune.load_run(entries[0].path)
>>> result = predict_upload(run, "cat.jpg", open("cat.jpg", "rb").read(), top_k=3)
>>> result.predictions[0]["label"]
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import datetime
import importlib
import io
import time
from pathlib import Path

import numpy as np

from finetune.data import BadImageError, load_image, resize_image
from finetune.errors import FinetuneError
from finetune.metrics import top_k as top_k_labels
from finetune.run import EXPORT_FILE, MODEL_FILE, load_run

SNAPSHOT_DIR = "snapshots"  # a run's snapshots are its own, not separate models

MODELS_DIR_VARIABLE = "FINETUNE_MODELS_DIR"
DEFAULT_MODELS_DIR = "models"
MAX_UPLOAD_VARIABLE = "FINETUNE_APP_MAX_UPLOAD_MB"
# Per file. Streamlit's own limit (server.maxUploadSize, 200 MB) is higher: this one gives our message.
DEFAULT_MAX_UPLOAD_MEGABYTES = 20.0
# Larger images are refused from their header, before decoding (decompression bombs).
MAX_MEGAPIXELS = 89.0
TTA_MODES = ("none", "flip", "five_crop", "ten_crop", "multiscale")
SAMPLE_DIR = Path(__file__).resolve().parent.parent / "finetune" / "sample_data" / "textures" / "test"
# Decoded uploads are kept this small for display; the model sees its own size.
DISPLAY_SIZE = 384
MAKE_A_MODEL = "Make a model with `make demo` (trains on the bundled sample) or `finetune train DATA_DIR`."


# ---------------------------------------------------------------------------------------------
# Settings


def models_dir_from(argv: list[str], environ) -> Path:
    """The folder to list models from: `--models-dir DIR`, else $FINETUNE_MODELS_DIR, else models/.

    `argv` are the arguments after `streamlit run app/streamlit_app.py --`; unknown ones are ignored.
    """
    parser = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    parser.add_argument("--models-dir", default=None)
    known, _ = parser.parse_known_args(argv)
    return Path(known.models_dir or environ.get(MODELS_DIR_VARIABLE) or DEFAULT_MODELS_DIR).expanduser()


def max_upload_bytes_from(environ) -> int:
    """The per-file upload limit: $FINETUNE_APP_MAX_UPLOAD_MB megabytes, else 20 MB."""
    value = environ.get(MAX_UPLOAD_VARIABLE)
    try:
        megabytes = float(value) if value else DEFAULT_MAX_UPLOAD_MEGABYTES
    except ValueError:
        megabytes = DEFAULT_MAX_UPLOAD_MEGABYTES
    return int(max(megabytes, 0.001) * 1e6)


# ---------------------------------------------------------------------------------------------
# Finding models


@dataclasses.dataclass(frozen=True)
class ModelEntry:
    """What the sidebar shows of one model; `path` is what `finetune.load_run` accepts."""

    path: str
    name: str
    kind: str  # "run", "ensemble" (an export of several members) or "export" (of one)
    labels: tuple[str, ...]
    image_size: int
    backbone: str | None
    strategy: str | None
    members: tuple[str, ...]
    accuracy: float | None
    date: str | None
    modified: float  # the model file's modification time: a new model in the same place reloads
    tta: str | None = None  # an export's built-in TTA mode
    recorded_tta: str = "none"  # the mode training chose on validation data: what `finetune predict` uses
    format: str = "keras"
    accuracy_kind: str = "Validation accuracy"  # or "Cross-validated accuracy" (a head fit on the validation split)


def find_models(models_dir) -> tuple[list[ModelEntry], list[dict]]:
    """The runs and exported ensembles under `models_dir` (two levels deep), newest first, and the unusable ones.

    A run is a directory with model.keras (as `finetune train` writes it); an export is a
    directory with export.json (as `finetune.export` writes it). Both are read with
    `finetune.load_run`, which reads only their JSON files here: a model is loaded when chosen.

    Returns:
        (entries, problems): `problems` are {"path", "reason"} for candidates that are not
        usable, so that the app can say why a model it should list is missing.
    """
    entries, problems = [], []
    try:
        candidates = _candidates(Path(models_dir))
    except OSError as error:  # a folder we may not read
        return [], [{"path": str(models_dir), "reason": f"cannot be listed ({error})"}]
    for candidate in candidates:
        try:
            entries.append(describe(load_run(candidate), candidate))
        except FinetuneError as error:
            problems.append({"path": str(candidate), "reason": str(error)})
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:  # hand-edited JSON of the wrong shape
            problems.append({"path": str(candidate), "reason": f"{type(error).__name__}: {error}"})
    entries.sort(key=lambda entry: (-entry.modified, entry.name))
    return entries, problems


def _is_model_directory(directory: Path) -> bool:
    return (directory / MODEL_FILE).is_file() or (directory / EXPORT_FILE).is_file()


def _candidates(models_dir: Path, depth: int = 2) -> list[Path]:
    """Run and export directories under `models_dir`; a folder of them (e.g. models/exports/) is searched too."""
    if depth == 0 or not models_dir.is_dir():
        return []
    found = []
    for directory in sorted(path for path in models_dir.iterdir() if path.is_dir() and not path.name.startswith(".")):
        if _is_model_directory(directory):
            found.append(directory)
        elif directory.name != SNAPSHOT_DIR:
            found += _candidates(directory, depth - 1)
    return found


def describe(run, path) -> ModelEntry:
    """The sidebar's facts about a loaded `Run`: labels, backbone, strategy, members, accuracy, date."""
    config, metrics = dict(run.config or {}), dict(run.metrics or {})
    directory = Path(path)
    export = config.get("export") if isinstance(config.get("export"), dict) else None
    if export is not None:
        return _describe_export(run, directory, export)
    model_file = directory / MODEL_FILE
    modified = model_file.stat().st_mtime if model_file.exists() else 0.0
    model = config.get("model") if isinstance(config.get("model"), dict) else {}
    accuracy = metrics.get("val_accuracy")
    if accuracy is None and isinstance(metrics.get("val"), dict):
        accuracy = metrics["val"].get("accuracy")
    accuracy_kind = "Validation accuracy"
    if isinstance(metrics.get("val"), dict) and metrics["val"].get("held_out") is False and metrics.get("cv_accuracy") is not None:
        # The head was fit on the validation images too: the cross-validated figure is the honest one.
        accuracy, accuracy_kind = metrics["cv_accuracy"], "Cross-validated accuracy"
    return ModelEntry(
        path=str(directory),
        name=directory.name,
        kind="run",
        labels=tuple(run.labels),
        image_size=int(run.image_size),
        backbone=model.get("backbone"),
        strategy=_text(metrics.get("strategy") or config.get("strategy")),
        members=(),
        accuracy=float(accuracy) if accuracy is not None else None,
        accuracy_kind=accuracy_kind,
        date=_date(config.get("created"), modified),
        modified=modified,
        tta=None,
        recorded_tta=_recorded_tta(config.get("tta")),
    )


def _describe_export(run, directory: Path, export: dict) -> ModelEntry:
    artefact = directory / str(export.get("artefact", MODEL_FILE))
    modified = artefact.stat().st_mtime if artefact.exists() else (directory / EXPORT_FILE).stat().st_mtime
    members = [member if isinstance(member, dict) else {"path": str(member)} for member in export.get("members") or []]
    backbone, strategy = None, None
    for source in export.get("source_runs") or []:
        try:  # the runs the export came from say which backbone and strategy; they may be gone
            source_run = load_run(source)
        except FinetuneError:
            continue
        backbone = (source_run.config.get("model") or {}).get("backbone")
        strategy = _text(source_run.metrics.get("strategy") or source_run.config.get("strategy"))
        break
    return ModelEntry(
        path=str(directory),
        name=directory.name,
        kind="ensemble" if len(members) > 1 else "export",
        labels=tuple(run.labels),
        image_size=int(run.image_size),
        backbone=backbone,
        strategy=strategy,
        members=tuple(_member_name(member) for member in members),
        accuracy=None,  # an export records its parity with the ensemble, not an accuracy of its own
        date=_date(export.get("created"), modified),
        modified=modified,
        tta=export.get("tta") or None,
        format=str(export.get("format", "keras")),
    )


def _text(value) -> str | None:
    if isinstance(value, dict):
        value = value.get("used") or value.get("strategy") or value.get("name")
    return str(value) if value else None


def _date(created, modified: float) -> str | None:
    if created:
        return str(created).replace("T", " ")[:16]
    return datetime.datetime.fromtimestamp(modified).strftime("%Y-%m-%d %H:%M") if modified else None


def _member_name(member: dict) -> str:
    """"run-a" for a run's best model, "run-a/snapshot_2.keras" for a snapshot; with its accuracy when known."""
    path = Path(str(member.get("path", "")))
    name = Path(str(member.get("run") or path.parent)).name
    if path.name and path.name != MODEL_FILE:
        name = f"{name}/{path.name}"
    if member.get("val_accuracy") is not None:
        name += f" ({float(member['val_accuracy']):.1%})"
    return name


# ---------------------------------------------------------------------------------------------
# Test-time augmentation: augment.tta's views when it is there


def tta_modes() -> tuple[str, ...]:
    """The modes the selector offers: augment.tta's, or the usual five when it is missing (then disabled)."""
    try:
        return tuple(importlib.import_module("augment.tta").MODES)
    except (ImportError, AttributeError):
        return TTA_MODES


def _recorded_tta(recorded) -> str:
    """config.json's "tta" (a mode, {"mode": ...} or None) as a mode, the way `finetune.inference` reads it."""
    try:
        return importlib.import_module("augment.tta").resolve_mode("auto", recorded)
    except (ImportError, AttributeError, FinetuneError):
        return "none"


def tta_support(entry: ModelEntry | None = None) -> tuple[bool, str]:
    """(available, why not) for the app's TTA selector."""
    if entry is not None and entry.tta:
        return False, f"This export averages {entry.tta} views inside the model already."
    try:
        module = importlib.import_module("augment.tta")
    except ImportError:
        return False, "Test-time augmentation needs augment/tta.py, which this installation lacks."
    if not all(hasattr(module, name) for name in ("TTACrops", "source_size")):
        return False, "augment/tta.py lacks TTACrops and source_size, which cut the views."
    return True, ""


def tta_views(image: np.ndarray, mode: str, image_size: int) -> np.ndarray:
    """The images the model sees for one upload, float32 0..255 [views, S, S, 3].

    "none" is the whole image resized, as in training; other modes are `augment.tta`'s views:
    the image resized whole to the mode's source size, then cut by its `TTACrops` layer (the
    same layer `augment.tta.build_tta_model` puts in front of a model).
    """
    if mode == "none":
        return resize_image(image, image_size)[None].astype(np.float32)
    available, reason = tta_support()
    if not available:
        raise FinetuneError(f"{reason} Choose tta='none'. Received: tta={mode!r}")
    tta = importlib.import_module("augment.tta")
    source = resize_image(image, tta.source_size(mode, image_size))[None].astype(np.float32)
    return np.asarray(tta.TTACrops(mode, image_size)(source), dtype=np.float32)


# ---------------------------------------------------------------------------------------------
# Decoding and predicting uploads


@dataclasses.dataclass
class ImageResult:
    """One uploaded image: its top-k labels, or the reason it could not be used."""

    name: str
    predictions: list[dict] = dataclasses.field(default_factory=list)  # [{"label", "probability"}], best first
    error: str | None = None
    latency_ms: float | None = None
    tta: str = "none"
    image: np.ndarray | None = None  # uint8 RGB, at most DISPLAY_SIZE on a side
    views: list[np.ndarray] = dataclasses.field(default_factory=list)  # the TTA views the model saw, uint8
    member_labels: list[str] = dataclasses.field(default_factory=list)  # an ensemble's members' top-1
    agreement: float | None = None  # share of members whose top-1 is the ensemble's

    @property
    def ok(self) -> bool:
        return self.error is None


def decode_upload(data: bytes, max_bytes: int, max_megapixels: float = MAX_MEGAPIXELS) -> np.ndarray:
    """Decodes uploaded bytes into uint8 RGB, checking size and content (not the file name).

    Raises:
        BadImageError: too many bytes, empty, not an image, corrupt, or too many pixels (a
            decompression bomb); `error.reason` says which and what to do.
    """
    if len(data) > max_bytes:
        raise BadImageError(
            f"{len(data) / 1e6:.1f} MB is over the upload limit of {max_bytes / 1e6:g} MB per file. "
            f"Upload a smaller or downscaled copy."
        )
    try:
        return load_image(bytes(data), max_megapixels)
    except BadImageError as error:
        if "decompression bomb" in error.reason:
            pixels = error.reason.split(" is more than")[0]
            raise BadImageError(
                f"{pixels} is more than the {max_megapixels:g} megapixels this app decodes: "
                f"refused as a possible decompression bomb. Upload a downscaled copy."
            ) from None
        raise


def predict_upload(
    run,
    name: str,
    data: bytes,
    tta: str = "none",
    top_k: int = 3,
    max_bytes: int = int(DEFAULT_MAX_UPLOAD_MEGABYTES * 1e6),
) -> ImageResult:
    """Top-k labels of one uploaded image, from its bytes; a bad file gives `ImageResult.error`, never raises it.

    Args:
        run: a `finetune.run.Run` (or anything `load_run` returned, an exported ensemble included).
        name: the file name, for messages and the results table only.
        data: the file's bytes; nothing is written to disk.
        tta: "none" or a mode of `augment.tta`; the probabilities of its views are averaged.
            Defaults to "none".
        top_k: labels to return, most probable first. Defaults to 3.
        max_bytes: larger files are refused. Defaults to 20 MB.
    """
    started = time.perf_counter()
    try:
        image = decode_upload(data, max_bytes)
    except BadImageError as error:
        return ImageResult(name=name, error=error.reason, tta=tta)
    model = run.model
    batch = tta_views(image, tta, _input_size(model, run.image_size))
    averaged = _call_model(model, batch).mean(axis=0, keepdims=True)  # augment.tta's "mean" combine
    members = [_call_model(member, batch).mean(axis=0) for member in _members(model)]
    latency_ms = (time.perf_counter() - started) * 1000.0
    result = ImageResult(
        name=name,
        predictions=top_k_labels(averaged, list(run.labels), top_k)[0],
        latency_ms=latency_ms,
        tta=tta,
        image=_thumbnail(image),
        views=list(np.clip(np.rint(batch), 0, 255).astype(np.uint8)) if tta != "none" else [],
    )
    if members:
        best = result.predictions[0]["label"]
        result.member_labels = [run.labels[int(np.argmax(probabilities))] for probabilities in members]
        result.agreement = sum(label == best for label in result.member_labels) / len(members)
    return result


def warm_up(run) -> None:
    """Runs the model once on a blank image, so that the first upload's latency is not TensorFlow's start-up."""
    model = run.model
    size = _input_size(model, run.image_size)
    _call_model(model, np.zeros((1, size, size, 3), dtype=np.float32))


def _input_size(model, image_size: int) -> int:
    """The side the model takes: its input shape when it has one (an export with TTA inside takes more)."""
    shape = getattr(model, "input_shape", None)
    if isinstance(shape, tuple) and len(shape) == 4 and shape[1]:
        return int(shape[1])
    return int(image_size)


def _call_model(model, batch: np.ndarray) -> np.ndarray:
    """Probabilities [N, C] of a Keras model, or of an export's predictor (TFLite, ONNX, SavedModel)."""
    import keras

    if isinstance(model, keras.Model):
        # A direct call: no tf.function retraced per batch size. Inputs shaped as the model was
        # built ([image] or image), or Keras warns on every call.
        inputs = [batch] if isinstance(getattr(model, "_inputs_struct", None), list) else batch
        output = model(inputs, training=False)
    else:
        output = model.predict(batch)
    if isinstance(output, dict):
        output = next(iter(output.values()))
    elif isinstance(output, (list, tuple)):
        output = output[0]
    return np.asarray(output)


def _members(model) -> list:
    """The members of an ensemble built by `finetune.ensemble.build_ensemble` (layers member_0, member_1, ...)."""
    layers = getattr(model, "layers", None) or []
    members = [layer for layer in layers if layer.name.startswith("member_") and hasattr(layer, "layers")]
    return members if len(members) > 1 else []


def _thumbnail(image: np.ndarray) -> np.ndarray:
    from PIL import Image

    height, width = image.shape[:2]
    scale = DISPLAY_SIZE / max(height, width)
    if scale >= 1:
        return image
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return np.asarray(Image.fromarray(image).resize(size, Image.BILINEAR))


def views_montage(views, per_row: int = 5, gap: int = 2) -> np.ndarray:
    """The TTA views side by side, `per_row` to a row, on white: one picture instead of many small ones."""
    views = [np.asarray(view, dtype=np.uint8) for view in views]
    size = views[0].shape[0]
    rows = -(-len(views) // per_row)
    columns = min(per_row, len(views))
    montage = np.full((rows * (size + gap) - gap, columns * (size + gap) - gap, 3), 255, dtype=np.uint8)
    for index, view in enumerate(views):
        top, left = (index // per_row) * (size + gap), (index % per_row) * (size + gap)
        montage[top : top + size, left : left + size] = view
    return montage


def sample_files(folder: Path = SAMPLE_DIR) -> dict[str, Path]:
    """The bundled sample images, by a short name ("brick/brick_000.jpg"); {} when they are not installed."""
    if not folder.is_dir():
        return {}
    return {path.relative_to(folder).as_posix(): path for path in sorted(folder.rglob("*")) if path.is_file()}


# ---------------------------------------------------------------------------------------------
# The results table


def results_table(results: list[ImageResult]) -> list[dict]:
    """One row per image: file, top label and probability, the top-k, latency, TTA, agreement, error."""
    rows = []
    for result in results:
        top = result.predictions[0] if result.predictions else {}
        rows.append(
            {
                "file": result.name,
                "label": top.get("label", ""),
                "probability": round(top["probability"], 4) if top else None,
                "top_k": "; ".join(f"{p['label']} {p['probability']:.3f}" for p in result.predictions),
                "latency_ms": round(result.latency_ms, 1) if result.latency_ms is not None else None,
                "tta": result.tta,
                "member_agreement": round(result.agreement, 3) if result.agreement is not None else None,
                "error": result.error or "",
            }
        )
    return rows


def results_csv(results: list[ImageResult]) -> str:
    """The results table as CSV text, with a header row."""
    rows = results_table(results)
    buffer = io.StringIO()
    fields = list(rows[0]) if rows else ["file", "label", "probability", "top_k", "latency_ms", "tta", "member_agreement", "error"]
    writer = csv.DictWriter(buffer, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    writer.writerows({key: "" if value is None else value for key, value in row.items()} for row in rows)
    return buffer.getvalue()

