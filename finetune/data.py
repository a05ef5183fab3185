"""Images in: find them, split them, decode them robustly, cache them, and feed them to tf.data.

A data source is a folder with one subfolder per class (optionally under `train/`, `val/`,
`test/`) or `tfds:NAME`, a TensorFlow Datasets image data set. `discover` lists it and splits
it (stratified, seeded); `load_split` decodes one split into a uint8 array, once: the result
is cached on disk under `finetune_home() / "images"`; `make_dataset` turns arrays into a
`tf.data.Dataset`.

Decoding never crashes on one bad file: zero-byte, truncated, corrupt, non-image files and
decompression bombs are skipped with a `SkippedImageWarning` naming the path and the reason,
and are listed so that a run can write `skipped.json`.

Example:
>>> data = discover("flowers/")
>>> train = load_split(data, "train", image_size=224)
>>> dataset = make_dataset(train.images, train.labels, batch_size=32, shuffle=True, seed=0)
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import json
import math
import os
import shutil
import threading
import uuid
import warnings
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from finetune.config import finetune_home
from finetune.errors import FinetuneError
from finetune.progress import progress

# What Pillow may open; anything else is skipped as "not an image". JPEG includes MPO, as Pillow
# names the JPEGs of many phones and cameras.
SUPPORTED_FORMATS = ("JPEG", "PNG", "BMP", "GIF", "WEBP", "TIFF", "AVIF", "PPM")
# Skipped silently: system files, not the user's images.
IGNORED_NAMES = frozenset({"thumbs.db", "desktop.ini", "__macosx"})
# Folder names that mark a pre-split layout, and the split each stands for.
SPLIT_FOLDERS = {"train": "train", "val": "val", "valid": "val", "validation": "val", "test": "test"}
TFDS_PREFIX = "tfds:"
# Bump when decoding changes, so that old caches are not reused.
CACHE_VERSION = 1
# Images decoded at a time: bounds the memory a thread pool running ahead can hold.
DECODE_CHUNK = 256


class BadImageError(FinetuneError):
    """An image that cannot be used; `reason` says why, in words for `skipped.json`."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class SkippedImageWarning(UserWarning):
    """Warned once per skipped file; silence with `warnings.simplefilter("ignore", SkippedImageWarning)`."""


@dataclasses.dataclass
class Split:
    paths: list[str]  # file paths; for tfds, pseudo paths like "tfds:NAME/train/123"
    labels: np.ndarray  # int64, index into class_names


@dataclasses.dataclass
class DataSource:
    name: str  # short name for run directories (folder name, or tfds name)
    root: str  # the folder or "tfds:NAME"
    class_names: list[str]
    splits: dict[str, Split]  # "train", "val", and "test" when present
    skipped: list[dict]  # {"path", "reason"} found while listing (non-images by content: at decode time)
    presplit: bool  # True when the folder had train/ (and val/test)


@dataclasses.dataclass
class LoadedSplit:
    images: np.ndarray  # uint8 [N, S, S, 3]
    labels: np.ndarray  # int64 [N]
    paths: list[str]
    skipped: list[dict]  # {"path", "reason"} found while decoding this split


# ---------------------------------------------------------------------------------------------
# Finding images and splitting them


def discover(source: str, val_fraction: float = 0.2, seed: int = 0) -> DataSource:
    """Lists a data source and splits it into train/val (and test when the source has one).

    Args:
        source: a folder with one subfolder per class, or with `train/` (and optionally `val/`,
            `test/`) folders that each hold one subfolder per class; or `tfds:NAME`.
        val_fraction: share of each class held out for validation when there is no val split;
            a class with two or more images always gets at least one. 0 makes no val split.
            Defaults to 0.2.
        seed: the split depends on it and on the file names only (not on listing order).
            Defaults to 0.

    Raises:
        FinetuneError: a missing folder, a file, fewer than two classes, an empty class folder,
            or split folders whose classes differ.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise FinetuneError(f"`val_fraction` must be at least 0 and below 1. Received: val_fraction={val_fraction!r}")
    source = str(source)
    if source.startswith(TFDS_PREFIX):
        return _discover_tfds(source, val_fraction, seed)
    return _discover_folder(source, val_fraction, seed)


def _is_ignored(name: str) -> bool:
    return name.startswith(".") or name.lower() in IGNORED_NAMES


def _subfolders(folder: Path) -> list[Path]:
    return sorted(entry for entry in folder.iterdir() if entry.is_dir() and not _is_ignored(entry.name))


def _walk_files(folder: Path) -> list[Path]:
    """Every non-hidden file under `folder`, sorted by path so that the order is the same everywhere."""
    found = []
    for directory, subdirectories, files in os.walk(folder):
        subdirectories[:] = [name for name in subdirectories if not _is_ignored(name)]
        found += [Path(directory) / name for name in files if not _is_ignored(name)]
    return sorted(found, key=lambda path: path.as_posix())


def _discover_folder(source: str, val_fraction: float, seed: int) -> DataSource:
    root = Path(source).expanduser()
    layout_help = f"Expected {root}/<class name>/<images>, e.g. {root}/cat/1.jpg and {root}/dog/1.jpg."
    if not root.exists():
        raise FinetuneError(f"The data folder {root} does not exist. {layout_help} Check the path.")
    if not root.is_dir():
        raise FinetuneError(f"{root} is a file, not a folder. Pass the folder that holds one subfolder per class.")
    folders = _subfolders(root)
    split_folders = {
        SPLIT_FOLDERS[folder.name.lower()]: folder for folder in folders if folder.name.lower() in SPLIT_FOLDERS
    }
    skipped: list[dict] = []
    splits: dict[str, Split] = {}
    if "train" in split_folders:
        class_names = None
        for split_name in ("train", "val", "test"):
            if split_name not in split_folders:
                continue
            names, split, split_skipped = _list_classes(split_folders[split_name])
            skipped += split_skipped
            if class_names is None:
                class_names = names
            elif names != class_names:
                raise FinetuneError(
                    _class_mismatch_message(root, split_folders["train"], class_names, split_folders[split_name], names)
                )
            splits[split_name] = split
        if "val" not in splits and val_fraction > 0:
            splits["train"], splits["val"] = _stratified_split(splits["train"], class_names, val_fraction, seed)
        presplit = True
    else:
        class_names, split, skipped = _list_classes(root)
        splits["train"] = split
        if val_fraction > 0:
            splits["train"], splits["val"] = _stratified_split(split, class_names, val_fraction, seed)
        presplit = False
    return DataSource(
        name=root.resolve().name or "data",
        root=str(root),
        class_names=class_names,
        splits=splits,
        skipped=skipped,
        presplit=presplit,
    )


def _list_classes(folder: Path) -> tuple[list[str], Split, list[dict]]:
    """The class subfolders of `folder` and their files, sorted; zero-byte files are skipped here."""
    class_folders = _subfolders(folder)
    if len(class_folders) < 2:
        loose = [path for path in folder.iterdir() if path.is_file() and not _is_ignored(path.name)]
        found = (
            f"found {len(class_folders)} ({', '.join(f.name for f in class_folders)})"
            if class_folders
            else "found none"
        )
        hint = (
            f" The {len(loose)} files directly in {folder} are not in a class folder; "
            f"move them into one subfolder per class."
            if loose
            else ""
        )
        raise FinetuneError(
            f"{folder} needs at least two class subfolders (one per class, holding that class's images); "
            f"{found}.{hint} Example: {folder}/cat/1.jpg, {folder}/dog/1.jpg."
        )
    paths, labels, skipped = [], [], []
    for label, class_folder in enumerate(class_folders):
        files = _walk_files(class_folder)
        usable = []
        for path in files:
            if _file_size(path) == 0:
                skipped.append({"path": str(path), "reason": "empty file (0 bytes)"})
            else:
                usable.append(str(path))
        if not usable:
            what = f"only {len(files)} empty files" if files else "no files"
            raise FinetuneError(
                f"The class folder {class_folder} has {what}, so the class {class_folder.name!r} has no images. "
                f"Add images to it or remove the folder."
            )
        paths += usable
        labels += [label] * len(usable)
    return [folder.name for folder in class_folders], Split(paths, np.array(labels, dtype=np.int64)), skipped


def _file_size(path) -> int:
    try:
        return os.path.getsize(path)
    except OSError:
        return -1


def _class_mismatch_message(root, train_folder, train_classes, other_folder, other_classes) -> str:
    missing = sorted(set(train_classes) - set(other_classes))
    extra = sorted(set(other_classes) - set(train_classes))
    details = []
    if missing:
        details.append(f"{other_folder.name}/ lacks {', '.join(missing)}")
    if extra:
        details.append(f"{other_folder.name}/ has {', '.join(extra)}, which {train_folder.name}/ lacks")
    return (
        f"The split folders of {root} have different classes: {'; '.join(details)}. Every split folder "
        f"(train/, val/, test/) needs the same class subfolders: add the missing ones or remove the extra ones."
    )


def _stratified_split(split: Split, class_names: list[str], val_fraction: float, seed: int) -> tuple[Split, Split]:
    """Holds out `val_fraction` of each class (at least one image of a class with two or more)."""
    train_indices, val_indices = [], []
    for label, class_name in enumerate(class_names):
        indices = np.flatnonzero(split.labels == label)
        count = len(indices)
        val_count = 0 if count < 2 else min(count - 1, max(1, math.floor(count * val_fraction + 0.5)))
        # One generator per class, seeded by its name: adding images to one class leaves the others' splits alone.
        rng = np.random.default_rng([int(seed) & 0xFFFFFFFF, zlib.crc32(class_name.encode("utf-8"))])
        order = rng.permutation(indices)
        val_indices += sorted(order[:val_count].tolist())
        train_indices += sorted(order[val_count:].tolist())

    def subset(indices):
        return Split([split.paths[i] for i in indices], split.labels[np.array(indices, dtype=np.int64)])

    return subset(train_indices), subset(val_indices)


# ---------------------------------------------------------------------------------------------
# TensorFlow Datasets


def _tfds_name(source: str) -> str:
    return source[len(TFDS_PREFIX) :].strip().strip("/")


def _tfds_builder(source: str):
    name = _tfds_name(source)
    try:
        import tensorflow_datasets as tfds
    except ImportError as error:
        raise FinetuneError(
            f"{source} needs tensorflow-datasets: pip install tensorflow-datasets ({error})."
        ) from error
    try:
        builder = tfds.builder(name)
    except Exception as error:  # DatasetNotFoundError and friends: all mean "no such name"
        raise FinetuneError(
            f"TensorFlow Datasets has no data set {name!r} ({type(error).__name__}: {str(error).splitlines()[0]}). "
            f"Pick one from https://www.tensorflow.org/datasets/catalog, e.g. tfds:tf_flowers."
        ) from error
    image_key, label_key = _tfds_keys(builder, source)
    return builder, image_key, label_key


def _tfds_keys(builder, source: str) -> tuple[str, str]:
    import tensorflow_datasets as tfds

    features = builder.info.features
    supervised = builder.info.supervised_keys
    if isinstance(supervised, tuple) and len(supervised) == 2 and all(isinstance(key, str) for key in supervised):
        image_key, label_key = supervised
        if isinstance(features[image_key], tfds.features.Image) and isinstance(
            features[label_key], tfds.features.ClassLabel
        ):
            return image_key, label_key
    images = [key for key, feature in features.items() if isinstance(feature, tfds.features.Image)]
    labels = [key for key, feature in features.items() if isinstance(feature, tfds.features.ClassLabel)]
    if not images or not labels:
        raise FinetuneError(
            f"{source} is not an image classification data set (it needs an image and a class label feature; "
            f"it has {', '.join(features.keys())}). Pick another one, e.g. tfds:tf_flowers."
        )
    return images[0], labels[0]


def _discover_tfds(source: str, val_fraction: float, seed: int) -> DataSource:
    builder, image_key, label_key = _tfds_builder(source)
    name = _tfds_name(source)
    try:
        builder.download_and_prepare()
    except Exception as error:
        raise FinetuneError(
            f"Could not download or prepare {source} ({type(error).__name__}: {error}). The first use needs internet; "
            f"or point TFDS_DATA_DIR at a folder where it is already prepared."
        ) from error
    class_names = list(builder.info.features[label_key].names)
    # Split names are unknown before a data set is prepared (and in tfds' mocks): then train alone.
    available = list(builder.info.splits.keys()) or ["train"]
    wanted = {"train": ["train"], "val": ["validation", "val", "valid"], "test": ["test"]}
    chosen = {ours: next((theirs for theirs in names if theirs in available), None) for ours, names in wanted.items()}
    if chosen["train"] is None:
        raise FinetuneError(
            f"{source} has no train split (it has {', '.join(available)}); finetune needs one to train on."
        )
    splits = {}
    for ours, theirs in chosen.items():
        if theirs is not None:
            labels = _tfds_labels(builder, theirs, image_key, label_key)
            splits[ours] = Split([f"{TFDS_PREFIX}{name}/{theirs}/{index}" for index in range(len(labels))], labels)
    presplit = "val" in splits
    if not presplit and val_fraction > 0:
        splits["train"], splits["val"] = _stratified_split(splits["train"], class_names, val_fraction, seed)
    return DataSource(
        name=name.replace("/", "_").replace(":", "_"),
        root=source,
        class_names=class_names,
        splits=splits,
        skipped=[],
        presplit=presplit,
    )


def _tfds_dataset(builder, split: str, image_key: str):
    import tensorflow_datasets as tfds

    # Images stay encoded: labels are read without decoding, and images are decoded by the same
    # code as files, so that a data set from tfds and one from a folder look alike.
    return builder.as_dataset(split=split, shuffle_files=False, decoders={image_key: tfds.decode.SkipDecoding()})


def _tfds_labels(builder, split: str, image_key: str, label_key: str) -> np.ndarray:
    dataset = _tfds_dataset(builder, split, image_key).map(lambda example: example[label_key])
    return np.fromiter(dataset.as_numpy_iterator(), dtype=np.int64)


def _tfds_items(root: str, paths: list[str]) -> Iterator[tuple[int, bytes]]:
    """(position in `paths`, encoded image) for pseudo paths "tfds:NAME/SPLIT/INDEX", in order of the data set."""
    builder, image_key, _ = _tfds_builder(root)
    wanted: dict[str, dict[int, int]] = {}
    for position, path in enumerate(paths):
        _, split, index = path.rsplit("/", 2)
        wanted.setdefault(split, {})[int(index)] = position
    for split, positions in wanted.items():
        images = _tfds_dataset(builder, split, image_key).map(lambda example: example[image_key])
        remaining = len(positions)
        for index, encoded in enumerate(images.as_numpy_iterator()):
            if index in positions:
                yield positions[index], encoded
                remaining -= 1
                if remaining == 0:
                    break


# ---------------------------------------------------------------------------------------------
# Decoding one image


_pixel_limit_lock = threading.Lock()
_pixel_limit_users = 0
_pixel_limit_saved = None


@contextlib.contextmanager
def _own_pixel_limit():
    """Turns off Pillow's global decompression-bomb check while ours, with the user's limit, runs.

    Pillow's check would warn or fail at a limit of its own; reference counted, so that threads
    decoding at the same time restore the setting only when the last one is done.
    """
    global _pixel_limit_users, _pixel_limit_saved
    with _pixel_limit_lock:
        if _pixel_limit_users == 0:
            _pixel_limit_saved = Image.MAX_IMAGE_PIXELS
            Image.MAX_IMAGE_PIXELS = None
        _pixel_limit_users += 1
    try:
        yield
    finally:
        with _pixel_limit_lock:
            _pixel_limit_users -= 1
            if _pixel_limit_users == 0:
                Image.MAX_IMAGE_PIXELS = _pixel_limit_saved


def load_image(path, max_megapixels: float = 89.0) -> np.ndarray:
    """Decodes an image file into uint8 RGB, [height, width, 3], the way training sees it.

    EXIF orientation is applied; transparency is composited on white; grayscale, palette, CMYK,
    16-bit and 1-bit images become 8-bit RGB. Formats are detected by content, not extension.

    Args:
        path: an image file (JPEG, PNG, BMP, GIF (first frame), WEBP, TIFF, ...), or its bytes.
        max_megapixels: larger images are refused from their header, before any pixel is
            decoded (decompression bombs). Defaults to 89.0.

    Raises:
        BadImageError: the file is empty, not an image, truncated, corrupt or too large;
            `error.reason` says which.
    """
    with _own_pixel_limit():
        return _decode_image(path, max_megapixels)[0]


def _openable_formats() -> list[str]:
    Image.init()
    return [name for name in SUPPORTED_FORMATS if name in Image.OPEN]  # AVIF needs a Pillow built with it


def _decode_image(source, max_megapixels: float) -> tuple[np.ndarray, dict]:
    """RGB uint8 pixels and facts about the file (format, mode, width, height); raises BadImageError."""
    path_hint = source if isinstance(source, (str, os.PathLike)) else ""
    if isinstance(source, (bytes, bytearray)):
        if len(source) == 0:
            raise BadImageError("empty file (0 bytes)")
        source = io.BytesIO(source)
    else:
        size = _file_size(source)
        if size < 0:
            raise BadImageError("cannot read the file (missing or no permission)")
        if size == 0:
            raise BadImageError("empty file (0 bytes)")
    try:
        image_file = Image.open(source, formats=_openable_formats())
    except UnidentifiedImageError:
        hint = (
            " (HEIC/HEIF photos need converting to JPEG first)"
            if str(path_hint).lower().endswith((".heic", ".heif"))
            else ""
        )
        raise BadImageError(f"not an image in a supported format ({', '.join(SUPPORTED_FORMATS)}){hint}") from None
    except Exception as error:  # a header Pillow chokes on: corrupt, not a crash
        raise BadImageError(f"corrupt image header ({type(error).__name__}: {error})") from None
    with image_file:
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
            raise BadImageError(f"truncated or corrupt image data ({type(error).__name__}: {error})") from None
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


# ---------------------------------------------------------------------------------------------
# Decoding many images, with a cache


def _decode_many(items: Iterable[tuple[int, object]], total: int, decode: Callable, verbose: int, description: str):
    """Yields (position, result or BadImageError) in order, decoding on a few threads (Pillow releases the GIL)."""
    workers = max(1, min(8, os.cpu_count() or 1))

    def attempt(item):
        position, source = item
        try:
            return position, decode(source)
        except BadImageError as error:
            return position, error

    with _own_pixel_limit(), ThreadPoolExecutor(workers) as executor:
        items = iter(items)
        chunks = iter(lambda: [item for _, item in zip(range(DECODE_CHUNK), items)], [])
        results = (result for chunk in chunks for result in executor.map(attempt, chunk))
        yield from progress(results, total=total, description=description, verbose=verbose)


def _cache_key(data: DataSource, split: Split, image_size: int, max_megapixels: float) -> str:
    if data.root.startswith(TFDS_PREFIX):
        builder, _, _ = _tfds_builder(data.root)
        files = [builder.info.full_name, str(builder.data_dir)] + list(split.paths)
    else:
        files = []
        for path in split.paths:
            try:
                stat = os.stat(path)
                files.append([os.path.abspath(path), stat.st_size, stat.st_mtime_ns])
            except OSError:
                files.append([os.path.abspath(path), -1, -1])
    description = json.dumps(
        [CACHE_VERSION, files, split.labels.tolist(), int(image_size), float(max_megapixels)], separators=(",", ":")
    )
    return hashlib.sha1(description.encode("utf-8")).hexdigest()


def load_split(
    data: DataSource,
    split: str,
    image_size: int,
    max_megapixels: float = 89.0,
    cache: bool = True,
    verbose: int = 1,
) -> LoadedSplit:
    """Decodes and resizes one split of `data`, or reads it from the cache of an earlier run.

    Args:
        data: from `discover`.
        split: "train", "val" or "test".
        image_size: images are resized whole to image_size x image_size.
        max_megapixels: larger images are skipped (decompression bombs). Defaults to 89.0.
        cache: keep the decoded images under `finetune_home() / "images"`, keyed by the files'
            paths, sizes and modification times, so that a later call does not decode again.
            Defaults to True.
        verbose: 1 shows a progress bar on stderr while decoding. Defaults to 1.

    Returns:
        A `LoadedSplit`; with `cache`, its images are a copy-on-write memory map of the cache file.

    Raises:
        FinetuneError: an unknown split, or a class of the train split none of whose images can be read.
    """
    if split not in data.splits:
        raise FinetuneError(
            f"{data.root} has no {split!r} split; it has {', '.join(data.splits)}. Received: split={split!r}"
        )
    if image_size < 1:
        raise FinetuneError(f"`image_size` must be a positive number of pixels. Received: image_size={image_size!r}")
    wanted = data.splits[split]
    loaded, cache_stem = None, None
    if cache:
        cache_stem = finetune_home() / "images" / _cache_key(data, wanted, image_size, max_megapixels)
        loaded = _read_cache(cache_stem.parent, cache_stem.name, image_size)
        if loaded is None and not _cache_writable(cache_stem.parent, len(wanted.paths) * image_size * image_size * 3):
            cache_stem = None
    if loaded is None:
        loaded = _decode_split(data, wanted, split, image_size, max_megapixels, verbose, cache_stem)
    _check_classes_readable(data, wanted, loaded, split)
    return loaded


def _decode_split(data, wanted: Split, split: str, image_size, max_megapixels, verbose, cache_stem: Path | None):
    count = len(wanted.paths)
    shape = (count, image_size, image_size, 3)
    if cache_stem is not None:
        temporary = cache_stem.with_name(f"{cache_stem.name}.{uuid.uuid4().hex}.tmp.npy")
        images = np.lib.format.open_memmap(temporary, mode="w+", dtype=np.uint8, shape=shape)
    else:
        images = np.empty(shape, dtype=np.uint8)
    if data.root.startswith(TFDS_PREFIX):
        items = _tfds_items(data.root, wanted.paths)
    else:
        items = enumerate(wanted.paths)

    def decode(source):
        return resize_image(_decode_image(source, max_megapixels)[0], image_size)

    ok, skipped = [], []
    try:
        for position, result in _decode_many(items, count, decode, verbose, f"Decoding {split} images"):
            path = wanted.paths[position]
            if isinstance(result, BadImageError):
                skipped.append({"path": path, "reason": result.reason})
                warnings.warn(f"Skipping {path}: {result.reason}", SkippedImageWarning, stacklevel=3)
            else:
                images[position] = result  # tfds yields in its own order: place each where it belongs
                ok.append(position)
        ok.sort()
        for index, position in enumerate(ok):  # close the gaps of skipped images, keeping the order
            if index != position:
                images[index] = images[position]
        labels = wanted.labels[np.array(ok, dtype=np.int64)]
        paths = [wanted.paths[i] for i in ok]
        if cache_stem is None:
            return LoadedSplit(images[: len(ok)], labels, paths, skipped)
        _write_cache(
            cache_stem, temporary, images, len(ok), {"paths": paths, "labels": labels.tolist(), "skipped": skipped}
        )
        del images
        loaded = _read_cache(cache_stem.parent, cache_stem.name, image_size)
        if loaded is None:  # a cache folder we cannot map back: use what was written, read whole
            loaded = LoadedSplit(np.load(cache_stem.with_suffix(".npy")), labels, paths, skipped)
        return loaded
    finally:
        if cache_stem is not None and temporary.exists():
            temporary.unlink()


def _cache_writable(cache_dir: Path, size: int) -> bool:
    """Whether the cache can take `size` more bytes; if not, warns and the split is decoded into memory.

    A memory-mapped write to a full disk kills the process (SIGBUS), so free space is checked first.
    """
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        free = shutil.disk_usage(cache_dir).free
    except OSError as error:
        warnings.warn(f"Cannot use the image cache {cache_dir} ({error}); decoding without it.", stacklevel=3)
        return False
    if free < 2 * size + 2**26:  # room for the file and its packed copy, and some to spare
        warnings.warn(
            f"Not enough free disk space for the image cache in {cache_dir} ({size / 2**20:.0f} MiB needed, "
            f"{free / 2**20:.0f} MiB free); decoding without it. Set FINETUNE_HOME to a roomier disk.",
            stacklevel=3,
        )
        return False
    return True


def _write_cache(cache_stem: Path, temporary: Path, images: np.memmap, count: int, index: dict) -> None:
    """Moves the decoded images into place, then their index: the index appearing marks the cache complete."""
    if count < len(images):  # some were skipped: copy the packed front into a file of the right size
        packed = temporary.with_name(f"{temporary.name}.packed.npy")
        target = np.lib.format.open_memmap(packed, mode="w+", dtype=np.uint8, shape=(count, *images.shape[1:]))
        for start in range(0, count, DECODE_CHUNK):
            stop = min(start + DECODE_CHUNK, count)
            target[start:stop] = images[start:stop]
        target.flush()
        del target
        os.replace(packed, temporary)
    else:
        images.flush()
    os.replace(temporary, cache_stem.with_suffix(".npy"))
    index_temporary = cache_stem.with_name(f"{cache_stem.name}.{uuid.uuid4().hex}.tmp.json")
    index_temporary.write_text(json.dumps({"version": CACHE_VERSION, **index}))
    os.replace(index_temporary, cache_stem.with_suffix(".json"))


def _read_cache(cache_dir: Path, key: str, image_size: int) -> LoadedSplit | None:
    index_path, images_path = cache_dir / f"{key}.json", cache_dir / f"{key}.npy"
    if not (index_path.exists() and images_path.exists()):
        return None
    try:
        index = json.loads(index_path.read_text())
        images = np.load(images_path, mmap_mode="c")
    except (OSError, ValueError):  # damaged: decode again, and overwrite it
        return None
    if index.get("version") != CACHE_VERSION or images.shape != (len(index["paths"]), image_size, image_size, 3):
        return None
    return LoadedSplit(images, np.array(index["labels"], dtype=np.int64), list(index["paths"]), list(index["skipped"]))


def _check_classes_readable(data: DataSource, wanted: Split, loaded: LoadedSplit, split: str) -> None:
    """A class with images listed for training but none readable cannot be learned: say so now."""
    if split != "train":
        return
    listed = np.bincount(wanted.labels, minlength=len(data.class_names))
    readable = np.bincount(loaded.labels, minlength=len(data.class_names))
    for label in np.flatnonzero((listed > 0) & (readable == 0)):
        name = data.class_names[label]
        class_paths = {path for path, path_label in zip(wanted.paths, wanted.labels) if path_label == label}
        reasons = sorted({item["reason"] for item in loaded.skipped if item["path"] in class_paths})
        raise FinetuneError(
            f"The class {name!r} has no readable images in the train split of {data.root}: all {listed[label]} "
            f"were skipped ({'; '.join(reasons[:3])}). Replace them with images that open, or remove the class folder."
        )


# ---------------------------------------------------------------------------------------------
# Prediction inputs


def list_images(folder) -> list[Path]:
    """Every file under `folder` (recursively, hidden files and folders left out), sorted; a file gives itself.

    Whether a file is an image is found when it is decoded (by content, not extension).
    """
    folder = Path(folder).expanduser()
    if not folder.exists():
        raise FinetuneError(f"{folder} does not exist. Pass an image file or a folder of images.")
    if folder.is_file():
        return [folder]
    return _walk_files(folder)


def load_images_for_prediction(
    paths, image_size: int, max_megapixels: float = 89.0
) -> tuple[np.ndarray, list[str], list[dict]]:
    """Decodes and resizes images exactly as training does; folders are searched recursively.

    Returns:
        (uint8 images [N, image_size, image_size, 3], the N paths that decoded, skipped
        [{"path", "reason"}]); a bad file is skipped with a warning, never raised.
    """
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    files = [str(path) for item in paths for path in (list_images(item) if Path(item).is_dir() else [Path(item)])]

    def decode(source):
        return resize_image(_decode_image(source, max_megapixels)[0], image_size)

    images, ok, skipped = [], [], []
    for position, result in _decode_many(enumerate(files), len(files), decode, verbose=0, description=""):
        if isinstance(result, BadImageError):
            skipped.append({"path": files[position], "reason": result.reason})
            warnings.warn(f"Skipping {files[position]}: {result.reason}", SkippedImageWarning, stacklevel=2)
        else:
            images.append(result)
            ok.append(files[position])
    stacked = np.stack(images) if images else np.zeros((0, image_size, image_size, 3), dtype=np.uint8)
    return stacked, ok, skipped


# ---------------------------------------------------------------------------------------------
# Class weights and the tf.data pipeline


def class_weights(labels, num_classes: int, threshold: float = 1.5) -> dict[int, float] | None:
    """Balanced class weights, n / (num_classes * count), when the classes are imbalanced.

    Args:
        labels: int class indices of the training images.
        num_classes: how many classes there are (some may have no images).
        threshold: weights are returned only when largest / smallest class count is above it.
            Defaults to 1.5.

    Returns:
        {class index: weight} for every class (1.0 for a class without images), or None when the
        classes are balanced enough to train without weights.

    Example:
    >>> class_weights([0, 0, 0, 0, 1], num_classes=2)
    {0: 0.625, 1: 2.5}
    """
    counts = np.bincount(np.asarray(labels, dtype=np.int64), minlength=num_classes)
    present = counts[counts > 0]
    if len(present) == 0 or present.max() / present.min() <= threshold:
        return None
    total = counts.sum()
    return {
        label: float(total / (num_classes * count)) if count else 1.0 for label, count in enumerate(counts.tolist())
    }


def make_dataset(images, labels, batch_size: int, shuffle: bool, seed: int, augment=None, repeat: bool = False):
    """A `tf.data.Dataset` of (float32 images in 0..255 [B, S, S, 3], int64 labels [B]) batches.

    Images are gathered from `images` batch by batch (a memory map works: nothing is copied up
    front), so the data set costs no more memory than a few batches.

    Args:
        images: uint8 [N, S, S, 3], e.g. `LoadedSplit.images`.
        labels: int [N].
        batch_size: images per batch; the last batch may be smaller.
        shuffle: reshuffle every epoch; the order depends on `seed` alone.
        seed: seed of the shuffle.
        augment: None, or a callable from a float32 batch of images to a batch of the same shape,
            run with `num_parallel_calls=AUTOTUNE` and a deterministic order. Defaults to None.
        repeat: repeat forever (then pass `steps_per_epoch` to fit). Defaults to False.
    """
    import tensorflow as tf

    labels = np.asarray(labels, dtype=np.int64)
    if not isinstance(images, np.ndarray):
        images = np.asarray(images)
    if len(images) != len(labels):
        raise FinetuneError(
            f"`images` and `labels` must have the same length. Received: {len(images)} images, {len(labels)} labels"
        )
    if int(batch_size) < 1:
        raise FinetuneError(f"`batch_size` must be at least 1. Received: batch_size={batch_size!r}")
    image_shape = tuple(images.shape[1:])
    image_dtype = tf.as_dtype(images.dtype)

    def gather(indices):
        return np.asarray(images[indices]), labels[indices]

    def load(indices):
        batch_images, batch_labels = tf.numpy_function(gather, [indices], (image_dtype, tf.int64), stateful=False)
        batch_images.set_shape((None, *image_shape))
        batch_labels.set_shape((None,))
        return tf.cast(batch_images, tf.float32), batch_labels

    dataset = tf.data.Dataset.range(len(labels))
    if shuffle:
        dataset = dataset.shuffle(max(1, len(labels)), seed=seed, reshuffle_each_iteration=True)
    if repeat:
        dataset = dataset.repeat()
    dataset = dataset.batch(int(batch_size)).map(load, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    if augment is not None:
        dataset = dataset.map(lambda x, y: (augment(x), y), num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return dataset.prefetch(tf.data.AUTOTUNE)
