"""Images in: find them, split them, decode them robustly, cache them, and feed them to tf.data.

A data source is a folder with one subfolder per class (optionally under `train/`, `val/`,
`test/`) or `tfds:NAME`, a TensorFlow Datasets image data set. `discover` lists it and splits
it (stratified, seeded); `load_split` decodes one split into a uint8 array, once: the result
is cached on disk under `finetune_home() / "images"`; `make_dataset` turns arrays into a
`tf.data.Dataset`.

Decoding never crashes on one bad file: zero-byte, truncated, corrupt, non-image files and
decompression bombs are skipped with a `SkippedImageWarning` naming the path and the reason,
and are listed so that a run can write `skipped.json`.

One concept per module:
- `splits.py`: `Split`, `DataSource` and the stratified, seeded split.
- `discover.py`: listing a folder (class folders, split folders, ignored files) and `list_images`.
- `tfds.py`: TensorFlow Datasets sources (`tfds:NAME`).
- `decode.py`: robust decoding of one image and of many, `resize_image`, the pixel limit.
- `cache.py`: `load_split` and the on-disk cache of decoded images.
- `prediction.py`: images to predict on, decoded as training decodes them.
- `pipeline.py`: class weights and the tf.data pipeline.

Example:
>>> data = discover("flowers/")
>>> train = load_split(data, "train", image_size=224)
>>> dataset = make_dataset(train.images, train.labels, batch_size=32, shuffle=True, seed=0)
"""

from finetune.data.cache import CACHE_VERSION, LoadedSplit, load_split
from finetune.data.decode import (
    DECODE_CHUNK,
    SUPPORTED_FORMATS,
    BadImageError,
    SkippedImageWarning,
    load_image,
    resize_image,
)
from finetune.data.discover import IGNORED_NAMES, SPLIT_FOLDERS, discover, list_images
from finetune.data.pipeline import CLASS_WEIGHT_THRESHOLD, class_weights, make_dataset
from finetune.data.prediction import load_images_for_prediction
from finetune.data.splits import DataSource, Split
from finetune.data.tfds import TFDS_PREFIX

__all__ = [
    "BadImageError",
    "CACHE_VERSION",
    "CLASS_WEIGHT_THRESHOLD",
    "DECODE_CHUNK",
    "DataSource",
    "IGNORED_NAMES",
    "LoadedSplit",
    "SPLIT_FOLDERS",
    "SUPPORTED_FORMATS",
    "SkippedImageWarning",
    "Split",
    "TFDS_PREFIX",
    "class_weights",
    "discover",
    "list_images",
    "load_image",
    "load_images_for_prediction",
    "load_split",
    "make_dataset",
    "resize_image",
]
