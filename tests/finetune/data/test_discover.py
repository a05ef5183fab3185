"""finetune.data.discover: listing a folder, splitting it (stratified, seeded), and clear errors."""

import os

import numpy as np
import pytest
from PIL import Image

from finetune.data import discover
from finetune.errors import FinetuneError
from tests.conftest import write_image_folder
from tests.finetune.data.images import noisy

# -- splits ---------------------------------------------------------------------------------


def test_discover_sorts_classes_and_splits_each_class(tmp_path):
    root = write_image_folder(tmp_path / "pets", classes=("dog", "cat", "bird"), per_class=10, size=8)
    data = discover(str(root))
    assert data.name == "pets" and data.class_names == ["bird", "cat", "dog"] and not data.presplit
    train, val = data.splits["train"], data.splits["val"]
    assert set(data.splits) == {"train", "val"}
    assert np.bincount(val.labels).tolist() == [2, 2, 2]
    assert np.bincount(train.labels).tolist() == [8, 8, 8]
    assert not set(train.paths) & set(val.paths)
    assert len(set(train.paths) | set(val.paths)) == 30
    for path, label in zip(train.paths + val.paths, np.concatenate([train.labels, val.labels])):
        assert os.path.basename(os.path.dirname(path)) == data.class_names[label]
    assert train.labels.dtype == np.int64


def test_split_depends_on_the_seed_alone(tmp_path):
    root = write_image_folder(tmp_path / "images", classes=("a", "b", "c"), per_class=10, size=8)
    first, again, other = discover(str(root), seed=0), discover(str(root), seed=0), discover(str(root), seed=1)
    assert first.splits["val"].paths == again.splits["val"].paths
    assert first.splits["train"].paths == again.splits["train"].paths
    assert first.splits["val"].paths != other.splits["val"].paths


def test_small_classes_keep_a_training_image_and_give_one_to_validation(tmp_path):
    root = tmp_path / "images"
    write_image_folder(root, classes=("one",), per_class=1, size=8)
    write_image_folder(root, classes=("two",), per_class=2, size=8)
    write_image_folder(root, classes=("three",), per_class=3, size=8)
    data = discover(str(root), val_fraction=0.2)
    assert data.class_names == ["one", "three", "two"]
    assert np.bincount(data.splits["val"].labels, minlength=3).tolist() == [0, 1, 1]
    assert np.bincount(data.splits["train"].labels, minlength=3).tolist() == [1, 2, 1]


def test_val_fraction_zero_makes_no_val_split_and_out_of_range_is_an_error(image_folder):
    assert set(discover(str(image_folder), val_fraction=0.0).splits) == {"train"}
    with pytest.raises(FinetuneError, match="val_fraction=1.5"):
        discover(str(image_folder), val_fraction=1.5)


def test_train_val_test_folders_are_the_splits(tmp_path):
    root = tmp_path / "data"
    write_image_folder(root / "train", per_class=4, size=8)
    write_image_folder(root / "validation", per_class=2, size=8, seed=1)
    write_image_folder(root / "test", per_class=3, size=8, seed=2)
    data = discover(str(root))
    assert data.presplit and data.name == "data" and data.class_names == ["cat", "dog"]
    assert {name: len(split.paths) for name, split in data.splits.items()} == {"train": 8, "val": 4, "test": 6}
    assert all("/validation/" in path for path in data.splits["val"].paths)


def test_a_train_folder_without_val_gets_a_val_split_carved_out(tmp_path):
    root = tmp_path / "data"
    write_image_folder(root / "train", per_class=5, size=8)
    write_image_folder(root / "test", per_class=2, size=8, seed=2)
    data = discover(str(root))
    assert data.presplit and set(data.splits) == {"train", "val", "test"}
    assert np.bincount(data.splits["val"].labels).tolist() == [1, 1]
    assert all("/train/" in path for path in data.splits["val"].paths)


def test_split_folders_with_different_classes_are_an_error(tmp_path):
    root = tmp_path / "data"
    write_image_folder(root / "train", classes=("cat", "dog"), per_class=2, size=8)
    write_image_folder(root / "val", classes=("bird", "cat"), per_class=2, size=8)
    with pytest.raises(FinetuneError, match="different classes") as error:
        discover(str(root))
    assert "dog" in str(error.value) and "bird" in str(error.value) and str(root) in str(error.value)


# -- clear errors ---------------------------------------------------------------------------------


def test_missing_folder(tmp_path):
    with pytest.raises(FinetuneError, match="does not exist") as error:
        discover(str(tmp_path / "nowhere"))
    assert str(tmp_path / "nowhere") in str(error.value)


def test_a_file_is_not_a_folder(tmp_path):
    (tmp_path / "image.png").write_bytes(b"x")
    with pytest.raises(FinetuneError, match="not a folder"):
        discover(str(tmp_path / "image.png"))


def test_one_class_is_not_enough_and_loose_images_get_a_hint(tmp_path):
    root = write_image_folder(tmp_path / "images", classes=("cat",), per_class=2, size=8)
    with pytest.raises(FinetuneError, match="at least two class subfolders") as error:
        discover(str(root))
    assert "found 1 (cat)" in str(error.value)
    Image.fromarray(noisy(8)).save(root / "loose.png")
    with pytest.raises(FinetuneError, match="not in a class folder"):
        discover(str(root))


def test_an_empty_class_folder_is_an_error(image_folder):
    (image_folder / "bird").mkdir()
    (image_folder / "bird" / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    with pytest.raises(FinetuneError, match="no images") as error:
        discover(str(image_folder))
    assert str(image_folder / "bird") in str(error.value)
    (image_folder / "bird" / "empty.jpg").write_bytes(b"")
    with pytest.raises(FinetuneError, match="only 1 empty files"):
        discover(str(image_folder))


def test_listing_stops_with_a_clear_error_past_max_files(tmp_path):
    root = write_image_folder(tmp_path / "disk", classes=("cat", "dog"), per_class=3, size=8)
    data = discover(str(root), max_files=6)
    assert len(data.splits["train"].paths) + len(data.splits["val"].paths) == 6
    with pytest.raises(FinetuneError, match="more than 5 files") as error:
        discover(str(root), max_files=5)
    assert str(root) in str(error.value) and "--max-files" in str(error.value)
    with pytest.raises(FinetuneError, match="max_files"):
        discover(str(root), max_files=0)


def test_keep_problems_reports_too_few_classes_and_class_mismatch_instead_of_raising(tmp_path):
    one = write_image_folder(tmp_path / "one", classes=("cat",), per_class=2, size=8)
    data = discover(str(one), keep_problems=True)
    assert data.class_names == ["cat"] and len(data.problems) == 1
    assert "at least two class subfolders" in data.problems[0]["problem"]

    root = tmp_path / "data"
    write_image_folder(root / "train", classes=("cat", "dog"), per_class=2, size=8)
    write_image_folder(root / "val", classes=("bird", "cat"), per_class=3, size=8)
    data = discover(str(root), keep_problems=True)
    assert data.class_names == ["bird", "cat", "dog"]
    assert [problem["path"] for problem in data.problems] == [str(root / "val")]
    assert "different classes" in data.problems[0]["problem"]
    for split in data.splits.values():  # every image under the union's label of its own folder
        for path, label in zip(split.paths, split.labels):
            assert os.path.basename(os.path.dirname(path)) == data.class_names[label]
    assert np.bincount(data.splits["val"].labels, minlength=3).tolist() == [3, 3, 0]
