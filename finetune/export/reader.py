"""Reading an export directory back: its artefact in any format, with `predict(images, batch_size)`.

An export directory (written by `finetune.export.writer.export_ensemble`) holds:

    model.keras | saved_model/ | model.tflite | model.onnx    the ensemble, preprocessing inside
    labels.json     the class names, in the order of the outputs
    export.json     format, quantisation, labels, image size, members, and the parity check

The input is float32 RGB with values 0..255, shape [N, image_size, image_size, 3]; the output
is [N, classes] probabilities. `finetune.run.load_run` turns `read_export` into a `Run`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from finetune.config import EXPORT_FORMATS as FORMATS
from finetune.errors import FinetuneError, check_choice
from finetune.files import EXPORT_FILE, LABELS_FILE, read_json

ARTEFACTS = {"keras": "model.keras", "savedmodel": "saved_model", "tflite": "model.tflite", "onnx": "model.onnx"}
_PACKAGES = {"tflite": [("ai_edge_litert", "ai-edge-litert")], "onnx": [("tf2onnx", "tf2onnx"), ("onnxruntime", "onnxruntime")]}


def require(format: str) -> None:
    """Raises a `FinetuneError` naming the package to install when `format` needs one that is missing."""
    for module, package in _PACKAGES.get(format, []):
        try:
            __import__(module)
        except ImportError:
            raise FinetuneError(
                f"Exporting to {format} needs the `{package}` package: pip install 'finetune[export]' "
                f"(or pip install {package}). Received: format={format!r}"
            ) from None


class _Predictor:
    """An exported model with `predict(images, batch_size, verbose)`, like a Keras model."""

    def predict(self, images, batch_size: int = 32, verbose: int = 0):
        images = np.asarray(images, dtype=np.float32)
        return np.concatenate([self.predict_batch(images[start : start + batch_size])
                               for start in range(0, len(images), batch_size)])

    __call__ = predict

    def predict_batch(self, batch: np.ndarray) -> np.ndarray:
        raise NotImplementedError


class _TFLitePredictor(_Predictor):
    def __init__(self, path):
        from ai_edge_litert.interpreter import Interpreter

        self.interpreter = Interpreter(model_path=str(path))
        self._input = self.interpreter.get_input_details()[0]["index"]
        self._output = self.interpreter.get_output_details()[0]["index"]
        self._batch = None

    def predict_batch(self, batch):
        if self._batch != len(batch):
            self.interpreter.resize_tensor_input(self._input, batch.shape)
            self.interpreter.allocate_tensors()
            self._batch = len(batch)
        self.interpreter.set_tensor(self._input, batch)
        self.interpreter.invoke()
        return np.array(self.interpreter.get_tensor(self._output))


class _OnnxPredictor(_Predictor):
    def __init__(self, path):
        import onnxruntime

        self.session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        self._input = self.session.get_inputs()[0].name

    def predict_batch(self, batch):
        return self.session.run(None, {self._input: batch})[0]


class _SavedModelPredictor(_Predictor):
    def __init__(self, path):
        import tensorflow as tf

        self.module = tf.saved_model.load(str(path))

    def predict_batch(self, batch):
        return np.asarray(self.module.serve(batch))


def load_artefact(path, format: str):
    """The exported model: a Keras model for "keras", else an object with `predict(images, batch_size)`."""
    from finetune.ensemble import load_members

    check_choice("format", format, FORMATS)
    require(format)
    if format == "keras":
        return load_members([path])[0]
    return {"savedmodel": _SavedModelPredictor, "tflite": _TFLitePredictor, "onnx": _OnnxPredictor}[format](path)


def read_export(path) -> dict:
    """An export directory (or its artefact file) as the fields of a `finetune.run.Run`.

    Returns:
        {"directory", "labels", "config", "metrics", "_loader"}: `config` holds {"image_size",
        "class_names", "export"}, `metrics` the parity check and members, and `_loader` loads
        the model on first use (a Keras model for "keras" exports, an object with
        `predict(images, batch_size)` for the others).
    """
    directory = Path(path)
    if directory.is_file():
        directory = directory.parent
    sidecar = read_json(directory / EXPORT_FILE)
    format = sidecar.get("format")
    check_choice("format", format, FORMATS)
    labels = read_json(directory / LABELS_FILE) if (directory / LABELS_FILE).is_file() else sidecar["labels"]
    name = str(sidecar.get("artefact", ARTEFACTS[format]))
    if Path(name).name != name or name in ("", ".", ".."):  # "../../elsewhere/model.keras", "/etc/model"
        raise FinetuneError(
            f"{directory / EXPORT_FILE} names its model {name!r}, which is not in {directory}: refused, since an "
            f"export's model lies in its own folder. Export it again. Received: artefact={name!r}"
        )
    artefact = directory / name
    if not artefact.exists():
        raise FinetuneError(f"{directory} is an export without its model ({artefact} is missing). Export it again.")
    return {
        "directory": directory,
        "labels": list(labels),
        "config": {"image_size": int(sidecar["image_size"]), "class_names": list(labels), "export": sidecar,
                   "unknown": sidecar.get("unknown")},
        "metrics": {"parity": sidecar.get("parity"), "members": sidecar.get("members")},
        "_loader": lambda: load_artefact(artefact, format),
    }
