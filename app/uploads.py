"""Uploads: their limits, their decoding from bytes, and their prediction through `finetune.inference`.

Nothing here imports Streamlit, so that it runs (and is tested) without a browser. Uploads are
decoded from bytes in memory (content decides the format, never the file name) and predicted
by `finetune.inference.predict_arrays`, the path `finetune predict` takes for files, so that the
app and the command line give the same probabilities.

Example:
>>> run = finetune.load_run(entries[0].path)
>>> result = predict_upload(run, "cat.jpg", open("cat.jpg", "rb").read(), top_k=3)
>>> result.predictions[0]["label"]
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import numpy as np

import finetune.inference
from finetune.config import DataConfig

MAX_UPLOAD_VARIABLE = "FINETUNE_APP_MAX_UPLOAD_MB"
# Per file. Streamlit's own limit (server.maxUploadSize, 200 MB) is higher: this one gives our message.
DEFAULT_MAX_UPLOAD_MEGABYTES = 20.0
MAX_FILES_VARIABLE = "FINETUNE_APP_MAX_FILES"
# Per submission: each image costs a prediction (about 0.1 s to 2 s here), shared by every session.
DEFAULT_MAX_FILES = 100
SAMPLE_DIR = Path(__file__).resolve().parent.parent / "finetune" / "sample_data" / "textures" / "test"
# Decoded uploads are kept this small for display; the model sees its own size.
DISPLAY_SIZE = 384


def max_upload_bytes_from(environ) -> int:
    """The per-file upload limit: $FINETUNE_APP_MAX_UPLOAD_MB megabytes, else 20 MB."""
    value = environ.get(MAX_UPLOAD_VARIABLE)
    try:
        megabytes = float(value) if value else DEFAULT_MAX_UPLOAD_MEGABYTES
    except ValueError:
        megabytes = DEFAULT_MAX_UPLOAD_MEGABYTES
    return int(max(megabytes, 0.001) * 1e6)


def max_files_from(environ) -> int:
    """The images predicted per submission: $FINETUNE_APP_MAX_FILES, else 100."""
    try:
        return max(1, int(environ.get(MAX_FILES_VARIABLE) or DEFAULT_MAX_FILES))
    except ValueError:
        return DEFAULT_MAX_FILES


def first_files(files: list, max_files: int) -> tuple[list, str | None]:
    """The first `max_files` of `files`, and a message naming the ones left out (None when none is)."""
    if len(files) <= max_files:
        return files, None
    left_out = [name for name, _ in files[max_files:]]
    shown = ", ".join(left_out[:3]) + (f" and {len(left_out) - 3} more" if len(left_out) > 3 else "")
    return files[:max_files], (
        f"{len(files)} images is over the limit of {max_files} per submission: the first {max_files} are predicted, "
        f"not {shown}. Remove some uploads, or start the app with {MAX_FILES_VARIABLE} set higher."
    )


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
    unknown: bool = False  # under the run's "unknown" threshold: like none of the classes
    answer: str = ""  # the top label, or "unknown (closest: LABEL, p)"

    @property
    def ok(self) -> bool:
        return self.error is None


def decode_upload(data: bytes, *, max_bytes: int, max_megapixels: float = DataConfig.max_megapixels) -> np.ndarray:
    """Decodes uploaded bytes into uint8 RGB, checking size and content (not the file name).

    Args:
        data: the file's bytes.
        max_bytes: larger files are refused before decoding.
        max_megapixels: larger images are refused from their header (decompression bombs).
            Defaults to `DataConfig.max_megapixels`.

    Raises:
        finetune.inference.BadImageError: too many bytes, empty, not an image, corrupt, or too
            many pixels; `error.reason` says which and what to do.
    """
    if len(data) > max_bytes:
        raise finetune.inference.BadImageError(
            f"{len(data) / 1e6:.1f} MB is over the upload limit of {max_bytes / 1e6:g} MB per file. "
            f"Upload a smaller or downscaled copy."
        )
    try:
        return finetune.inference.decode_image(bytes(data), max_megapixels=max_megapixels)
    except finetune.inference.BadImageError as error:
        if "decompression bomb" in error.reason:  # the library's advice (raise max_megapixels) is not the user's to take
            pixels = error.reason.split(" is more than")[0]
            raise finetune.inference.BadImageError(
                f"{pixels} is more than the {max_megapixels:g} megapixels this app decodes: "
                f"refused as a possible decompression bomb. Upload a downscaled copy."
            ) from None
        raise


def predict_upload(run, name: str, data: bytes, *, tta: str = "none", top_k: int = 3,
                   max_bytes: int = int(DEFAULT_MAX_UPLOAD_MEGABYTES * 1e6)) -> ImageResult:
    """Top-k labels of one uploaded image, from its bytes; a bad file gives `ImageResult.error`, never raises it.

    Args:
        run: a `finetune.run.Run` (or anything `load_run` returned, an exported ensemble included).
        name: the file name, for messages and the results table only.
        data: the file's bytes; nothing is written to disk.
        tta: "none" or a mode of `finetune.inference.TTA_MODES`; the probabilities of its views
            are averaged. Defaults to "none".
        top_k: labels to return, most probable first. Defaults to 3.
        max_bytes: larger files are refused. Defaults to 20 MB.
    """
    started = time.perf_counter()
    try:
        image = decode_upload(data, max_bytes=max_bytes)
    except finetune.inference.BadImageError as error:
        return ImageResult(name=name, error=error.reason, tta=tta)
    prediction = finetune.inference.predict_arrays(run, [image], tta=tta, top_k=top_k, return_views=tta != "none")[0]
    latency_ms = (time.perf_counter() - started) * 1000.0
    return ImageResult(
        name=name,
        predictions=prediction.predictions,
        latency_ms=latency_ms,
        tta=tta,
        image=_thumbnail(image),
        views=list(prediction.views) if tta != "none" else [],
        member_labels=prediction.member_labels,
        agreement=prediction.agreement,
        unknown=prediction.unknown,
        answer=prediction.answer,
    )


def explain_upload(run, data: bytes, label: str, *, max_bytes: int = int(DEFAULT_MAX_UPLOAD_MEGABYTES * 1e6)):
    """The upload's thumbnail with the Grad-CAM heat map of `label` laid over it (`finetune.inference.explain_image`).

    Returns (overlay uint8 RGB, None), or (None, why not): a bad file, or a model that cannot be explained.
    """
    try:
        image = decode_upload(data, max_bytes=max_bytes)
    except finetune.inference.BadImageError as error:
        return None, error.reason
    try:
        return finetune.inference.explain_image(run, image, label, display=_thumbnail(image)), None
    except finetune.FinetuneError as error:
        return None, str(error)


def warm_up(run) -> None:
    """Predicts a blank image once, so that the first upload's latency is not TensorFlow's start-up.

    With the mode training chose, which the TTA selector starts at: its graph is built now.
    """
    blank = np.zeros((run.image_size, run.image_size, 3), dtype=np.uint8)
    finetune.inference.predict_arrays(run, [blank], tta=finetune.inference.recorded_tta(run))


def _thumbnail(image: np.ndarray) -> np.ndarray:
    from PIL import Image

    height, width = image.shape[:2]
    scale = DISPLAY_SIZE / max(height, width)
    if scale >= 1:
        return image
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return np.asarray(Image.fromarray(image).resize(size, Image.BILINEAR))


def sample_files(folder: Path = SAMPLE_DIR) -> dict[str, Path]:
    """The bundled sample images, by a short name ("brick/brick_000.jpg"); {} when they are not installed."""
    if not folder.is_dir():
        return {}
    return {path.relative_to(folder).as_posix(): path for path in sorted(folder.rglob("*")) if path.is_file()}
