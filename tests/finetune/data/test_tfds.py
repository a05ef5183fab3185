"""finetune.data.tfds: TensorFlow Datasets sources (mocked: nothing can be downloaded here)."""

import os

import numpy as np
import pytest

from finetune.data import discover, load_split
from finetune.errors import FinetuneError


def test_tfds_without_a_validation_split_is_split_like_a_folder():
    import tensorflow_datasets as tfds
    with tfds.testing.mock_data(num_examples=20):
        data = discover("tfds:tf_flowers", val_fraction=0.2, seed=0)
        assert data.name == "tf_flowers" and data.root == "tfds:tf_flowers" and not data.presplit
        assert data.class_names == ["dandelion", "daisy", "tulips", "sunflowers", "roses"]
        assert set(data.splits) == {"train", "val"}
        assert len(data.splits["train"].paths) + len(data.splits["val"].paths) == 20
        assert data.splits["val"].paths[0].startswith("tfds:tf_flowers/train/")
        assert discover("tfds:tf_flowers", seed=0).splits["val"].paths == data.splits["val"].paths
        loaded = load_split(data, "val", 16, verbose=0)
        assert loaded.images.shape == (len(data.splits["val"].paths), 16, 16, 3)
        np.testing.assert_array_equal(loaded.labels, data.splits["val"].labels)
        assert loaded.paths == data.splits["val"].paths


def test_tfds_train_validation_test_splits_are_used(tmp_path):
    import tensorflow_datasets as tfds
    # The real split names come from the data set's metadata; write it where the mock looks.
    builder = tfds.builder("beans", data_dir=str(tmp_path))
    builder.info.set_splits(
        tfds.core.SplitDict(
            [tfds.core.SplitInfo(name=name, shard_lengths=[4], num_bytes=0) for name in ("train", "validation", "test")]
        )
    )
    os.makedirs(builder.data_dir, exist_ok=True)
    builder.info.write_to_directory(builder.data_dir)
    with tfds.testing.mock_data(num_examples=4, data_dir=str(tmp_path), policy=tfds.testing.MockPolicy.USE_FILES):
        data = discover("tfds:beans")
        assert data.presplit and set(data.splits) == {"train", "val", "test"}
        assert data.class_names == ["angular_leaf_spot", "bean_rust", "healthy"]
        assert data.splits["val"].paths == [f"tfds:beans/validation/{index}" for index in range(4)]
        loaded = load_split(data, "test", 8, cache=False, verbose=0)
        assert loaded.images.shape == (4, 8, 8, 3) and loaded.skipped == []


def test_an_unknown_tfds_name_is_a_clear_error():
    import tensorflow_datasets  # noqa: F401  (a hard dependency: its absence must fail, not skip)
    with pytest.raises(FinetuneError, match="no data set 'no_such_data_set'"):
        discover("tfds:no_such_data_set")
