"""Decoding images robustly: one file or its bytes into uint8 RGB, and many files on a few threads.

Decoding never crashes on one bad file: zero-byte, truncated, corrupt, non-image files and
decompression bombs raise a `BadImageError` whose `reason` says which, in words for
`skipped.json`. EXIF orientation is applied; transparency is composited on white; grayscale,
palette, CMYK, 16-bit and 1-bit images become 8-bit RGB. Formats are detected by content.

Example:
>>> image = load_image("cat.jpg")  # uint8 [height, width, 3]
>>> resize_image(image, 224).shape
(224, 224, 3)
"""

from __future__ import annotations

import contextlib
import errno
import io
import os
import stat
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Iterable, Iterator

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from finetune.config import DataConfig
from finetune.errors import FinetuneError
from finetune.progress import progress

# What Pillow may open; anything else is skipped as "not an image". JPEG includes MPO, as Pillow
# names the JPEGs of many phones and cameras.
SUPPORTED_FORMATS = ("JPEG", "PNG", "BMP", "GIF", "WEBP", "TIFF", "AVIF", "PPM")
# The end of the reason of a file whose content is damaged: what the user can do about it.
DAMAGED_FIX = "re-save or download it again, or remove it"
# Images decoded at a time: bounds the memory a thread pool running ahead can hold.
DECODE_CHUNK = 256


class BadImageError(FinetuneError):
    """An image that cannot be used; `reason` says why, in words for `skipped.json`."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class SkippedImageWarning(UserWarning):
    """Warned once per skipped file; silence with `warnings.simplefilter("ignore", SkippedImageWarning)`."""


class _PillowLimitLift:
    """Turns off Pillow's own decompression-bomb check while ours, with the caller's limit, runs.

    Pillow's check would warn or fail at a limit of its own. That limit, `Image.MAX_IMAGE_PIXELS`,
    is one setting for the whole process, so the threads that decode at the same time must share
    one count of who needs it off: the first to enter saves the setting, the last to leave puts it
    back. The count lives in this one object, guarded by its lock; decoding passes its own limit
    down as an argument.
    """

    def __init__(self):
        self._lock = threading.Lock()
        self._users = 0
        self._saved = None

    @contextlib.contextmanager
    def lifted(self) -> Iterator[None]:
        with self._lock:
            if self._users == 0:
                self._saved = Image.MAX_IMAGE_PIXELS
                Image.MAX_IMAGE_PIXELS = None
            self._users += 1
        try:
            yield
        finally:
            with self._lock:
                self._users -= 1
                if self._users == 0:
                    Image.MAX_IMAGE_PIXELS = self._saved


# One per process, as Pillow's setting is.
_PILLOW_LIMIT = _PillowLimitLift()


def pillow_limit_lifted() -> contextlib.AbstractContextManager:
    """A context in which Pillow's own pixel limit is off; Pillow's setting is restored when the last one ends.

    Safe to enter from several threads at once and to nest. `decode_image` enters it itself.
    """
    return _PILLOW_LIMIT.lifted()


def file_size(path) -> int:
    """The size of a file in bytes, or -1 when it cannot be read (missing, no permission)."""
    try:
        return os.path.getsize(path)
    except OSError:
        return -1


def unreadable_reason(path, error: OSError) -> str:
    """Why a listed file cannot be read, and what to do, for `skipped.json` (the path is beside it there).

    Args:
        path: the file, to tell a dangling link from a file deleted since it was listed.
        error: what opening or reading it raised.
    """
    link = bool(path) and os.path.islink(path)
    if error.errno == errno.ELOOP:
        return "a symbolic link that loops (it leads back to itself); point it at an image or remove it"
    if error.errno == errno.EISDIR and not link:
        return "a folder, not an image file; pass the images in it, or the folder where a folder is expected"
    if error.errno == errno.EISDIR:
        return (
            "a link to a folder: links to folders are not followed (they can loop); "
            "move or copy its images into the class folder instead"
        )
    if error.errno == errno.ENOENT and link:
        return "a symbolic link to a file that does not exist; point it at an image or remove it"
    if error.errno == errno.ENOENT:
        return "the file is gone (deleted or moved after the folder was listed); run again to list the folder anew"
    if error.errno in (errno.EACCES, errno.EPERM):
        return "no permission to read the file; make it readable (chmod a+r) or remove it"
    return f"cannot read the file ({error.strerror or error})"


def load_image(path, max_megapixels: float = DataConfig.max_megapixels) -> np.ndarray:
    """Decodes an image file into uint8 RGB, [height, width, 3], the way training sees it.

    EXIF orientation is applied; transparency is composited on white; grayscale, palette, CMYK,
    16-bit and 1-bit images become 8-bit RGB. Formats are detected by content, not extension.

    Args:
        path: an image file (JPEG, PNG, BMP, GIF (first frame), WEBP, TIFF, ...), or its bytes.
        max_megapixels: larger images are refused from their header, before any pixel is
            decoded (decompression bombs). Defaults to `DataConfig.max_megapixels` (89).

    Raises:
        BadImageError: the file is empty, not an image, truncated, corrupt or too large;
            `error.reason` says which.
    """
    return decode_image(path, max_megapixels)[0]


def _openable_formats() -> list[str]:
    Image.init()
    return [name for name in SUPPORTED_FORMATS if name in Image.OPEN]  # AVIF needs a Pillow built with it


def _open(source) -> Image.Image:
    """Opens an image file or bytes (reading only the header), or raises BadImageError."""
    path_hint = source if isinstance(source, (str, os.PathLike)) else ""
    if isinstance(source, (bytes, bytearray)):
        if len(source) == 0:
            raise BadImageError("empty file (0 bytes)")
        source = io.BytesIO(source)
    else:
        try:
            status = os.stat(source)
        except OSError as error:
            raise BadImageError(unreadable_reason(source, error)) from None
        if stat.S_ISDIR(status.st_mode):
            raise BadImageError(unreadable_reason(source, IsADirectoryError(errno.EISDIR, "Is a directory")))
        if status.st_size == 0:
            raise BadImageError("empty file (0 bytes)")
    try:
        return Image.open(source, formats=_openable_formats())
    except UnidentifiedImageError:
        hint = (
            " (HEIC/HEIF photos need converting to JPEG first)"
            if str(path_hint).lower().endswith((".heic", ".heif"))
            else ""
        )
        raise BadImageError(
            f"not an image in a supported format ({', '.join(SUPPORTED_FORMATS)}){hint}; "
            f"convert it to JPEG or PNG, or remove it"
        ) from None
    except OSError as error:
        if error.errno is None:  # Pillow's own OSErrors ("Truncated File Read") are about the content
            raise BadImageError(f"corrupt image header ({type(error).__name__}: {error}); {DAMAGED_FIX}") from None
        raise BadImageError(unreadable_reason(path_hint, error)) from None  # gone or locked since the stat
    except Exception as error:  # a header Pillow chokes on: corrupt, not a crash
        raise BadImageError(f"corrupt image header ({type(error).__name__}: {error}); {DAMAGED_FIX}") from None


def decode_image(source, max_megapixels: float) -> tuple[np.ndarray, dict]:
    """RGB uint8 pixels and facts about the file; the one decoder of training, prediction and the health report.

    Args:
        source: an image file, or its bytes.
        max_megapixels: larger images are refused from their header, before any pixel is decoded.

    Returns:
        (uint8 [height, width, 3], {"format", "mode", "width", "height"} of the file as stored).

    Raises:
        BadImageError: the file is empty, not an image, truncated, corrupt or too large.
    """
    with pillow_limit_lifted(), _open(source) as image_file:
        width, height = image_file.size
        facts = {"format": image_file.format, "mode": image_file.mode, "width": width, "height": height}
        if width * height > max_megapixels * 1e6:
            raise BadImageError(
                f"{width}x{height} pixels ({width * height / 1e6:.1f} megapixels) is more than "
                f"max_megapixels={max_megapixels:g}: possibly a decompression bomb; "
                f"raise max_megapixels if it is genuine"
            )
        try:
            image_file.load()
        except MemoryError:
            raise BadImageError(f"too large to decode in memory ({width}x{height} pixels)") from None
        except Exception as error:
            raise BadImageError(
                f"truncated or corrupt image data ({type(error).__name__}: {error}); {DAMAGED_FIX}"
            ) from None
        try:
            image = ImageOps.exif_transpose(image_file)
        except Exception:  # unreadable EXIF: the pixels are fine, use them as stored
            image = image_file
        try:
            return _to_rgb(image), facts
        except Exception as error:
            raise BadImageError(
                f"cannot convert {image.mode} pixels to RGB ({type(error).__name__}: {error})"
            ) from None


def _to_rgb(image: Image.Image) -> np.ndarray:
    mode = image.mode
    if mode.startswith("I") or mode == "F":
        return _gray_to_rgb(_scale_to_uint8(np.asarray(image), mode))
    has_alpha = mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info
    if has_alpha:
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(white, rgba).convert("RGB")
    elif mode != "RGB":
        image = image.convert("RGB")
    return np.array(image, dtype=np.uint8)


def _scale_to_uint8(array: np.ndarray, mode: str) -> np.ndarray:
    """16-bit, 32-bit and float pixels scaled (not clipped) onto 0..255."""
    values = array.astype(np.float64)
    if values.size == 0:
        return values.astype(np.uint8)
    low, high = values.min(), values.max()
    if mode.startswith("I;16") or (mode == "I" and low >= 0 and high <= 65535):
        values = values / 257.0  # 65535 -> 255; Pillow before 10 read 16-bit PNGs as "I"
    elif mode == "F" and low >= 0 and high <= 1:
        values = values * 255.0
    elif high > low:
        values = (values - low) / (high - low) * 255.0
    return np.clip(np.rint(values), 0, 255).astype(np.uint8)


def _gray_to_rgb(array: np.ndarray) -> np.ndarray:
    return np.repeat(array[:, :, None], 3, axis=2)


def _array_to_rgb(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.dtype != np.uint8:
        image = np.clip(np.rint(image.astype(np.float64)), 0, 255).astype(np.uint8)
    if image.ndim == 2:
        return _gray_to_rgb(image)
    if image.ndim == 3 and image.shape[2] == 1:
        return _gray_to_rgb(image[:, :, 0])
    if image.ndim == 3 and image.shape[2] == 4:
        return _to_rgb(Image.fromarray(image, "RGBA"))
    if image.ndim == 3 and image.shape[2] == 3:
        return image
    raise FinetuneError(
        f"An image must be [height, width] or [height, width, 1, 3 or 4]. Received: shape={image.shape}"
    )


def resize_image(image: np.ndarray, image_size: int) -> np.ndarray:
    """Resizes the whole image (aspect ratio not kept) to [image_size, image_size, 3] uint8, PIL bilinear.

    The one resize used for training and for prediction, so that both see the same pixels.
    Grayscale ([H, W] or [H, W, 1]) and RGBA inputs are made RGB first.
    """
    image = _array_to_rgb(image)
    if image.shape[:2] == (image_size, image_size):
        return image
    return np.asarray(Image.fromarray(image).resize((image_size, image_size), Image.BILINEAR))


def decode_many(
    items: Iterable[tuple[int, object]],
    decode: Callable,
    *,
    total: int | None = None,
    verbose: int = 0,
    description: str = "",
) -> Iterator[tuple[int, object]]:
    """Yields (position, result or BadImageError) in order, decoding on a few threads (Pillow releases the GIL).

    Args:
        items: (position, file or bytes) pairs.
        decode: from a file or bytes to a result; a `BadImageError` it raises is yielded, not raised.
        total: how many items there are, for the progress bar. Defaults to None.
        verbose: 1 shows a progress bar on stderr. Defaults to 0.
        description: a few words in front of the progress bar. Defaults to "".
    """
    workers = max(1, min(8, os.cpu_count() or 1))

    def attempt(item):
        position, source = item
        try:
            return position, decode(source)
        except BadImageError as error:
            return position, error

    # Lifted for the whole batch, so that Pillow's setting is not flipped back and forth per image.
    with pillow_limit_lifted(), ThreadPoolExecutor(workers) as executor:
        items = iter(items)
        chunks = iter(lambda: [item for _, item in zip(range(DECODE_CHUNK), items)], [])
        results = (result for chunk in chunks for result in executor.map(attempt, chunk))
        yield from progress(results, total=total, description=description, verbose=verbose)
