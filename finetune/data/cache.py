"""Loading a split: decoded and resized once, then read back from the on-disk cache of decoded images.

The cache lives under `finetune_home() / "images"`: for each split, a `KEY.npy` of uint8
images and a `KEY.json` index (paths, labels, skipped files). The key hashes the files' paths,
sizes and modification times (for tfds: the data set's full name and folder), the labels, the
image size and the pixel limit, so an edited file or another size decodes again. The index
is written last: its appearing marks the cache complete.

Example:
>>> train = load_split(discover("flowers/"), "train", image_size=224)
>>> train.images.shape  # a copy-on-write memory map of the cache file
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import uuid
import warnings
from pathlib import Path

import numpy as np

from finetune.config import DataConfig, finetune_home
from finetune.data.decode import (
    DECODE_CHUNK,
    BadImageError,
    SkippedImageWarning,
    decode_image,
    decode_many,
    resize_image,
)
from finetune.data.splits import DataSource, Split
from finetune.data.tfds import TFDS_PREFIX, tfds_builder, tfds_items
from finetune.errors import FinetuneError

# Bump when decoding changes, so that old caches are not reused (2: the reasons given for unreadable files and links).
CACHE_VERSION = 2


@dataclasses.dataclass
class LoadedSplit:
    """One split decoded: the images that decoded, their labels and paths, and the files skipped."""

    images: np.ndarray  # uint8 [N, S, S, 3]
    labels: np.ndarray  # int64 [N]
    paths: list[str]
    skipped: list[dict]  # {"path", "reason"} found while decoding this split


def load_split(
    data: DataSource,
    split: str,
    image_size: int,
    max_megapixels: float = DataConfig.max_megapixels,
    cache: bool = DataConfig.cache,
    verbose: int = 1,
) -> LoadedSplit:
    """Decodes and resizes one split of `data`, or reads it from the cache of an earlier run.

    Args:
        data: from `discover`.
        split: "train", "val" or "test".
        image_size: images are resized whole to image_size x image_size.
        max_megapixels: larger images are skipped (decompression bombs). Defaults to
            `DataConfig.max_megapixels` (89).
        cache: keep the decoded images under `finetune_home() / "images"`, keyed by the files'
            paths, sizes and modification times, so that a later call does not decode again.
            Defaults to `DataConfig.cache` (True).
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
        loaded = _decode_split(
            data,
            wanted,
            split,
            image_size=image_size,
            max_megapixels=max_megapixels,
            verbose=verbose,
            cache_stem=cache_stem,
        )
    _check_classes_readable(data, wanted, loaded, split)
    return loaded


def _cache_key(data: DataSource, split: Split, image_size: int, max_megapixels: float) -> str:
    if data.root.startswith(TFDS_PREFIX):
        builder, _, _ = tfds_builder(data.root)
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


def _decode_split(
    data: DataSource,
    wanted: Split,
    split: str,
    *,
    image_size: int,
    max_megapixels: float,
    verbose: int,
    cache_stem: Path | None,
) -> LoadedSplit:
    """Decodes `wanted` into the cache file at `cache_stem` (or into memory when it is None)."""
    count = len(wanted.paths)
    shape = (count, image_size, image_size, 3)
    if cache_stem is not None:
        temporary = cache_stem.with_name(f"{cache_stem.name}.{uuid.uuid4().hex}.tmp.npy")
        images = np.lib.format.open_memmap(temporary, mode="w+", dtype=np.uint8, shape=shape)
    else:
        try:
            images = np.empty(shape, dtype=np.uint8)
        except MemoryError:
            raise FinetuneError(
                f"The {split} split of {data.root} ({count} images at {image_size}x{image_size} px) needs "
                f"{np.prod(shape, dtype=np.float64) / 2**30:,.1f} GiB of memory to decode, more than this machine "
                f"gives. Free disk space for the image cache under {finetune_home()} (it keeps them on disk), pass "
                f"a smaller --image-size, or use fewer images. Received: image_size={image_size}"
            ) from None
    if data.root.startswith(TFDS_PREFIX):
        items = tfds_items(data.root, wanted.paths)
    else:
        items = enumerate(wanted.paths)

    def decode(source):
        return resize_image(decode_image(source, max_megapixels)[0], image_size)

    ok, skipped = [], []
    try:
        results = decode_many(items, decode, total=count, verbose=verbose, description=f"Decoding {split} images")
        for position, result in results:
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
