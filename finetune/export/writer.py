"""Exporting runs as one artefact: the average of their members, raw images in, probabilities out.

`export_ensemble` writes a directory that `finetune evaluate`, `finetune predict` and
`finetune.load_run` accept like a run (its files: `finetune.export.reader`). Every export is
loaded back and compared with the in-memory ensemble on sample images; when the largest
difference exceeds the tolerance nothing is written.

Example:

```python
sidecar = export_ensemble(["models/run-a"], "exports/run-a", members="snapshots", format="tflite")
sidecar["parity"]["max_abs_diff"]
finetune.predict("exports/run-a", ["cat.jpg"])
```
"""

from __future__ import annotations

import datetime
import os
import shutil
from pathlib import Path

import numpy as np

from augment.tta_modes import MODES as TTA_MODES
from finetune.config import MEMBER_KINDS, QUANTIZATIONS
from finetune.ensemble import build_ensemble, load_members
from finetune.errors import FinetuneError, check_choice
from finetune.export.reader import ARTEFACTS, FORMATS, load_artefact, require
from finetune.files import (
    EXPORT_FILE,
    LABELS_FILE,
    MODEL_FILE,
    SNAPSHOT_DIR,
    atomic_write_json,
    library_versions,
    remove_stale_temporaries,
    save_model_atomic,
    snapshot_paths,
)
from finetune.run import load_run

# Largest allowed difference in any probability between the export and the in-memory ensemble.
# float32 formats agree to rounding (measured: 3e-6). Quantised weights move the probabilities of
# borderline images: on a 3-member MobileNetV2 ensemble (Fashion-MNIST) float16 moved them by up
# to 0.009 and dynamic range by up to 0.12, with test accuracy unchanged (benchmarks/results/
# ensembles.md). A broken conversion (wrong preprocessing, channel order) moves them by ~0.5-1.
TOLERANCES = {"none": 1e-4, "float16": 0.05, "dynamic": 0.25}


def resolve_members(run_dirs, members: str | None = None) -> dict:
    """Which model files make the ensemble, and the labels and image size they share.

    Args:
        run_dirs: one or more run directories written by `finetune train`.
        members: "snapshots" (every run's snapshots/*.keras) or "best" (every run's model.keras);
            None: "snapshots" for one run that has snapshots, else "best".

    Returns:
        {"kind", "paths", "labels", "image_size", "runs", "temperature", "unknown"}: the ensemble's own
        temperature when one run's snapshots are exported (fit on their averaged validation
        probabilities by `finetune train`), and the "unknown" threshold a single run's best model keeps.

    Raises:
        FinetuneError: no runs, a directory that is not a run, runs whose labels or image sizes
            differ, or a run without snapshots when snapshots were asked for.
    """
    run_dirs = [Path(path) for path in ([run_dirs] if isinstance(run_dirs, (str, Path)) else run_dirs)]
    if not run_dirs:
        raise FinetuneError("Pass at least one run directory to export. Received: run_dirs=[]")
    runs = []
    for directory in run_dirs:
        if (directory / EXPORT_FILE).is_file():
            raise FinetuneError(f"{directory} is an export, not a training run. Export from the run directories it came from.")
        runs.append(load_run(directory))
    if members is None:
        members = "snapshots" if len(runs) == 1 and snapshot_paths(runs[0].directory) else "best"
    check_choice("members", members, MEMBER_KINDS)
    first = runs[0]
    for other in runs[1:]:
        if other.labels != first.labels:
            raise FinetuneError(
                f"Runs in one ensemble must share their labels, in order. {first.directory} has {first.labels}; "
                f"{other.directory} has {other.labels}. Export runs trained on the same classes."
            )
        if other.image_size != first.image_size:
            raise FinetuneError(
                f"Runs in one ensemble must share their image size. {first.directory} takes {first.image_size} px, "
                f"{other.directory} takes {other.image_size} px."
            )
    paths = []
    for run in runs:
        if members == "best":
            paths.append(run.directory / MODEL_FILE)
            continue
        found = snapshot_paths(run.directory)
        if not found:
            raise FinetuneError(
                f"{run.directory} has no snapshots ({run.directory / SNAPSHOT_DIR} is empty or missing). Train with "
                "`finetune train --snapshots M`, or export its best model with --members best."
            )
        paths += found
    temperature = runs[0].metrics.get("snapshots", {}).get("temperature") if members == "snapshots" and len(runs) == 1 else None
    unknown = runs[0].config.get("unknown") if members == "best" and len(runs) == 1 else None
    return {"kind": members, "paths": paths, "labels": list(first.labels), "image_size": first.image_size, "runs": runs,
            "temperature": temperature, "unknown": unknown}


def sample_images(run, count: int = 32, image_size: int | None = None, seed: int = 0) -> tuple[np.ndarray, str]:
    """Images for the parity check, at `image_size` (default: the run's): its validation images when still readable, else noise."""
    from finetune import data as data_module

    image_size = int(image_size or run.image_size)
    config = run.config
    source = (config.get("data") or {}).get("source")
    if source:
        try:
            data = data_module.discover(source, config["data"].get("val_fraction", 0.2), config.get("seed", 0))
            split = "val" if "val" in data.splits and len(data.splits["val"].paths) else "train"
            loaded = data_module.load_split(data, split, image_size, cache=True, verbose=0)
            if len(loaded.labels):
                chosen = np.linspace(0, len(loaded.labels) - 1, min(count, len(loaded.labels))).astype(int)
                return np.asarray(loaded.images[chosen], dtype=np.float32), f"{len(chosen)} {split} images of {source}"
        except (FinetuneError, OSError, ValueError, KeyError):
            pass
    rng = np.random.default_rng(seed)
    images = rng.uniform(0, 255, (count, image_size, image_size, 3)).astype(np.float32)
    return images, f"{count} random noise images (the run's data was not readable)"


def _write_artefact(model, path: Path, format: str, quantize: str) -> None:
    if format == "keras":
        save_model_atomic(model, path)
    elif format == "savedmodel":
        model.export(str(path), format="tf_saved_model", verbose=False)
    elif format == "onnx":
        _export_onnx(model, path)
    else:
        import tensorflow as tf

        options = {}
        if quantize != "none":
            options["optimizations"] = [tf.lite.Optimize.DEFAULT]
        if quantize == "float16":
            options["target_spec"] = {"supported_types": [tf.float16]}
        model.export(str(path), format="litert", verbose=False, **options)


def _export_onnx(model, path: Path) -> None:
    """ONNX through a frozen SavedModel.

    Keras' own `model.export(format="onnx")` hands tf2onnx a function whose constant tensors (a
    `Normalization` layer's fixed mean and variance, as in the torchvision MobileNetV2 backbone)
    are captured, not frozen, and the ONNX graph then asks for them as extra inputs.
    """
    import tempfile

    import tensorflow as tf
    import tf2onnx
    from keras.src.export.tf2onnx_lib import patch_tf2onnx  # tf2onnx 1.17 still uses numpy 1 names
    from tf2onnx import tf_loader

    patch_tf2onnx()
    logger = tf.get_logger()
    level = logger.level
    logger.setLevel("ERROR")  # tf_loader's TF1-API deprecation notices
    try:
        with tempfile.TemporaryDirectory(dir=path.parent) as saved_model:
            model.export(saved_model, format="tf_saved_model", verbose=False)
            graph_def, inputs, outputs = tf_loader.from_saved_model(saved_model, None, None, tag="serve", signatures=["serve"])
            tf2onnx.convert.from_graph_def(graph_def, input_names=inputs, output_names=outputs, output_path=str(path))
    finally:
        logger.setLevel(level)


def parity(reference: np.ndarray, exported: np.ndarray, tolerance: float) -> dict:
    """How far the exported model's probabilities are from the in-memory ensemble's."""
    difference = np.abs(np.asarray(exported, dtype=np.float64) - np.asarray(reference, dtype=np.float64))
    return {
        "max_abs_diff": float(difference.max()),
        "mean_abs_diff": float(difference.mean()),
        "top1_agreement": float(np.mean(np.argmax(exported, axis=1) == np.argmax(reference, axis=1))),
        "tolerance": float(tolerance),
        "passed": bool(difference.max() <= tolerance),
    }


def export_ensemble(
    run_dirs,
    out,
    members: str | None = None,
    format: str = "keras",
    quantize: str = "none",
    tta=None,
    tolerance: float | None = None,
    num_parity_images: int = 32,
) -> dict:
    """Writes the ensemble of `run_dirs` to the directory `out` and returns its export.json.

    Args:
        run_dirs: one run directory or several (with the same labels and image size).
        out: the directory to write; an earlier export there is replaced, anything else refused.
        members: "snapshots" or "best"; see `resolve_members`. Defaults to None (automatic).
        format: "keras", "savedmodel", "tflite" or "onnx". Defaults to "keras".
        quantize: "none", "float16" or "dynamic" (TFLite only). Defaults to "none".
        tta: None or a mode of `augment.tta`, built into the graph. Defaults to None.
        tolerance: the largest allowed probability difference in the parity check; defaults to
            1e-4 unquantised, 0.05 for float16, 0.25 for dynamic range.
        num_parity_images: images compared in the parity check. Defaults to 32.

    Raises:
        FinetuneError: bad arguments, runs that cannot form an ensemble, a missing optional
            package, or a parity check that fails (then nothing is written).
    """
    check_choice("format", format, FORMATS)
    check_choice("quantize", quantize, QUANTIZATIONS)
    check_choice("tta", "none" if tta is None else tta, TTA_MODES)
    if quantize != "none" and format != "tflite":
        raise FinetuneError(f"Quantisation is offered for TFLite only. Received: format={format!r}, quantize={quantize!r}")
    out = Path(out)
    if out.suffix in (".keras", ".tflite", ".onnx", ".h5"):
        raise FinetuneError(
            f"`out` is a directory that will hold {ARTEFACTS[format]}, labels.json and export.json. "
            f"Received: out={str(out)!r}; pass e.g. {str(out.with_suffix(''))!r}"
        )
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / EXPORT_FILE).is_file())):
        raise FinetuneError(f"{out} exists and is not an earlier export; refusing to overwrite it. Pass a new --out directory.")
    require(format)
    tolerance = TOLERANCES[quantize] if tolerance is None else float(tolerance)
    resolved = resolve_members(run_dirs, members)
    ensemble = build_ensemble(load_members(resolved["paths"]), name="ensemble", tta=tta, temperature=resolved["temperature"])
    # With TTA the export takes larger source images (see augment.tta.source_size).
    input_size = int(ensemble.input_shape[1])
    images, images_description = sample_images(resolved["runs"][0], num_parity_images, input_size)
    reference = np.asarray(ensemble.predict(images, batch_size=32, verbose=0))

    out.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(out.parent, recursive=False)  # an export killed mid-way left its folder
    temporary = out.with_name(f".tmp-export-{os.getpid()}-{out.name}")
    shutil.rmtree(temporary, ignore_errors=True)
    temporary.mkdir()
    try:
        artefact = temporary / ARTEFACTS[format]
        _write_artefact(ensemble, artefact, format, quantize)
        exported = load_artefact(artefact, format).predict(images, batch_size=32, verbose=0)
        check = parity(reference, exported, tolerance)
        check["images"] = images_description
        if not check["passed"]:
            raise FinetuneError(
                f"The exported {format} model (quantize={quantize}) differs from the in-memory ensemble by up to "
                f"{check['max_abs_diff']:.3g} in probability on {images_description} (tolerance {tolerance:g}; top-1 "
                f"agreement {check['top1_agreement']:.1%}). Nothing was written to {out}. Use a milder quantisation "
                "(float16 keeps more precision than dynamic), or pass --tolerance to accept the difference."
            )
        sidecar = _sidecar(resolved, format, quantize, tta, check, artefact, input_size)
        atomic_write_json(temporary / LABELS_FILE, resolved["labels"])
        atomic_write_json(temporary / EXPORT_FILE, sidecar)
        _replace_directory(temporary, out)
    finally:
        shutil.rmtree(temporary, ignore_errors=True)
    return sidecar


def _size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(item.stat().st_size for item in path.rglob("*") if item.is_file())


def _sidecar(resolved, format, quantize, tta, check, artefact, image_size) -> dict:
    members = []
    for path in resolved["paths"]:
        run = next(run for run in resolved["runs"] if Path(path).parent in (run.directory, run.directory / SNAPSHOT_DIR))
        member = {"path": str(path), "run": str(run.directory)}
        if Path(path).name == MODEL_FILE and run.metrics.get("val_accuracy") is not None:
            member["val_accuracy"] = run.metrics["val_accuracy"]
        members.append(member)
    return {
        "format": format,
        "quantize": quantize,
        "artefact": artefact.name,
        "size_bytes": _size(artefact),
        "labels": resolved["labels"],
        "image_size": image_size,
        "member_image_size": resolved["image_size"],
        "input": {
            "name": "image",
            "shape": [None, image_size, image_size, 3],
            "dtype": "float32",
            "values": "RGB 0..255, each image resized whole to image_size x image_size; the preprocessing (and any TTA) is inside",
        },
        "output": "class probabilities, averaged over the members, in the order of labels",
        "member_kind": resolved["kind"],
        "members": members,
        "tta": tta if tta not in (None, "none") else None,
        # Calibration: the ensemble's own temperature (None: each member keeps its own), and the
        # threshold under which `predict` answers "unknown" (None: none was fit for this ensemble).
        "temperature": resolved.get("temperature"),
        "unknown": resolved.get("unknown"),
        "parity": check,
        "source_runs": [str(run.directory) for run in resolved["runs"]],
        "created": datetime.datetime.now().isoformat(timespec="seconds"),
        "versions": library_versions(),
    }


def _replace_directory(new: Path, out: Path) -> None:
    """Puts `new` at `out`; an earlier export at `out` is swapped out first and then deleted.

    The swapped-out export is named as a temporary (`.tmp-export-<pid>-old-...`): a process killed
    between the two renames leaves no export at `out` (the next export writes it anew) and nothing
    that `remove_stale_temporaries` would not remove.
    """
    old = None
    if out.exists():
        old = out.with_name(f".tmp-export-{os.getpid()}-old-{out.name}")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(out, old)
    os.replace(new, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
