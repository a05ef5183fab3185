"""What listing a data source produces: its splits, and the stratified split that carves val out of train.

A leaf of `finetune.data`: both the folder listing (`discover.py`) and TensorFlow Datasets
(`tfds.py`) build these, so they live apart from either.
"""

from __future__ import annotations

import dataclasses
import math
import zlib

import numpy as np


@dataclasses.dataclass
class Split:
    """The files of one split and their labels, in the same order."""

    paths: list[str]  # file paths; for tfds, pseudo paths like "tfds:NAME/train/123"
    labels: np.ndarray  # int64, index into class_names


@dataclasses.dataclass
class DataSource:
    """A listed data source: its classes, its splits and the files skipped while listing it."""

    name: str  # short name for run directories (folder name, or tfds name)
    root: str  # the folder or "tfds:NAME"
    class_names: list[str]
    splits: dict[str, Split]  # "train", "val", and "test" when present
    skipped: list[dict]  # {"path", "reason"} found while listing (non-images by content: at decode time)
    presplit: bool  # True when the folder had train/ (and val/test)
    # {"path", "problem"}: what would stop training, kept for the health report instead of raised
    problems: list[dict] = dataclasses.field(default_factory=list)


def stratified_split(split: Split, class_names: list[str], val_fraction: float, seed: int) -> tuple[Split, Split]:
    """Holds out `val_fraction` of each class (at least one image of a class with two or more).

    Args:
        split: the images to split.
        class_names: one name per label; each class's shuffle is seeded by its name.
        val_fraction: share of each class held out, rounded half up.
        seed: the split depends on it and on the file names only (not on listing order).

    Returns:
        (train, val): class by class, each class's images in the order of `split`.
    """
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
