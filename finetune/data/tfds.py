"""TensorFlow Datasets as a data source: `tfds:NAME` listed, split and read like a folder.

Images stay encoded until `finetune.data.decode` decodes them, with the same code as files, so
that a data set from tfds and one from a folder look alike. A tfds image's path is a pseudo path
"tfds:NAME/SPLIT/INDEX". tensorflow-datasets is imported only when such a source is used.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np

from finetune.data.splits import DataSource, Split, stratified_split
from finetune.errors import FinetuneError

TFDS_PREFIX = "tfds:"


def tfds_name(source: str) -> str:
    """The data set's name in "tfds:NAME"."""
    return source[len(TFDS_PREFIX) :].strip().strip("/")


def tfds_builder(source: str):
    """(builder, image feature key, label feature key) of "tfds:NAME", or a FinetuneError saying what to do."""
    name = tfds_name(source)
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


def discover_tfds(source: str, val_fraction: float, seed: int) -> DataSource:
    """Lists "tfds:NAME" (downloading and preparing it on first use), as `finetune.data.discover` does a folder."""
    builder, image_key, label_key = tfds_builder(source)
    name = tfds_name(source)
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
        splits["train"], splits["val"] = stratified_split(splits["train"], class_names, val_fraction, seed)
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


def tfds_items(root: str, paths: list[str]) -> Iterator[tuple[int, bytes]]:
    """(position in `paths`, encoded image) for pseudo paths "tfds:NAME/SPLIT/INDEX", in order of the data set."""
    builder, image_key, _ = tfds_builder(root)
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
