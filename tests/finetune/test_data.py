"""finetune.data: listing, splitting, robust decoding, the decoded-image cache, tf.data, tfds."""

import io
import os
import struct
import warnings
import zlib

import numpy as np
import pytest
from PIL import Image

from finetune import data as data_module
from finetune.data import (
    BadImageError,
    SkippedImageWarning,
    class_weights,
    discover,
    list_images,
    load_image,
    load_images_for_prediction,
    load_split,
    make_dataset,
    resize_image,
)
from finetune.errors import FinetuneError
from tests.conftest import write_image_folder

RED, BLUE, WHITE = (255, 0, 0), (0, 0, 255), (255, 255, 255)


def halves(left, right, width=40, height=20) -> np.ndarray:
    """An RGB image whose left half is `left` and right half is `right`."""
    array = np.zeros((height, width, 3), dtype=np.uint8)
    array[:, : width // 2] = left
    array[:, width // 2 :] = right
    return array


def noisy(size=64, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)


def png_with_claimed_size(path, width, height):
    """A small PNG whose header claims width x height: a decompression bomb as far as the header goes."""
    buffer = io.BytesIO()
    Image.new("L", (16, 16)).save(buffer, "PNG")
    content = bytearray(buffer.getvalue())
    # IHDR data starts after the 8-byte signature, 4-byte length and 4-byte type.
    content[16:24] = struct.pack(">II", width, height)
    content[29:33] = struct.pack(">I", zlib.crc32(bytes(content[12:29])))
    path.write_bytes(bytes(content))
    return path


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


def test_a_class_whose_images_are_all_unreadable_stops_training(image_folder):
    (image_folder / "bird").mkdir()
    (image_folder / "bird" / "a.jpg").write_text("not an image")
    (image_folder / "bird" / "b.jpg").write_text("not one either")
    data = discover(str(image_folder), val_fraction=0.0)
    with pytest.warns(SkippedImageWarning), pytest.raises(FinetuneError, match="'bird' has no readable images"):
        load_split(data, "train", 8, cache=False, verbose=0)


def test_unknown_split(image_folder):
    with pytest.raises(FinetuneError, match="no 'test' split"):
        load_split(discover(str(image_folder)), "test", 8, verbose=0)


# -- decoding odd files -------------------------------------------------------------------------


def test_exif_orientation_is_applied(tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    Image.fromarray(halves(RED, BLUE)).save(tmp_path / "rotated.jpg", exif=exif, quality=95)
    image = load_image(tmp_path / "rotated.jpg")
    assert image.shape == (40, 20, 3) and image.dtype == np.uint8
    # Turned clockwise, the left (red) half is on top.
    np.testing.assert_allclose(image[2, 10], RED, atol=40)
    np.testing.assert_allclose(image[-3, 10], BLUE, atol=40)


def write_odd_images(folder):
    """Valid images in every awkward mode and format, with the RGB pixel each should give at (0, 0) and (0, -1)."""
    folder.mkdir(parents=True, exist_ok=True)
    expected = {}
    Image.fromarray(np.full((6, 8), 77, np.uint8), "L").save(folder / "gray.png")
    expected["gray.png"] = ((77, 77, 77), (77, 77, 77))

    palette = Image.new("P", (8, 6))
    palette.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    palette.paste(1, (4, 0, 8, 6))
    palette.save(folder / "palette.png", transparency=0)  # index 0 (black) is transparent
    expected["palette.png"] = (WHITE, RED)

    rgba = np.zeros((6, 8, 4), np.uint8)
    rgba[:, 4:] = (0, 0, 255, 255)  # left half transparent black, right half opaque blue
    Image.fromarray(rgba, "RGBA").save(folder / "rgba.png")
    expected["rgba.png"] = (WHITE, BLUE)

    gray_alpha = np.zeros((6, 8, 2), np.uint8)
    gray_alpha[:, 4:, 1] = 255  # black, transparent on the left, opaque on the right
    Image.fromarray(gray_alpha, "LA").save(folder / "la.png")
    expected["la.png"] = (WHITE, (0, 0, 0))

    Image.new("CMYK", (8, 6), (255, 0, 0, 0)).save(folder / "cmyk.jpg", quality=95)  # cyan
    expected["cmyk.jpg"] = ((0, 255, 255), (0, 255, 255))

    sixteen = np.zeros((6, 8), np.uint16)
    sixteen[:, :4], sixteen[:, 4:] = 32896, 65535  # 128 * 257: scaled, not clipped to 255
    Image.fromarray(sixteen).save(folder / "sixteen.png")
    expected["sixteen.png"] = ((128, 128, 128), WHITE)

    one_bit = Image.new("1", (8, 6), 0)
    one_bit.paste(1, (4, 0, 8, 6))
    one_bit.save(folder / "onebit.png")
    expected["onebit.png"] = ((0, 0, 0), WHITE)

    red, blue = Image.fromarray(halves(RED, RED, 8, 6)), Image.fromarray(halves(BLUE, BLUE, 8, 6))
    red.save(folder / "two_frames.gif", save_all=True, append_images=[blue], duration=100)
    expected["two_frames.gif"] = (RED, RED)

    picture = Image.fromarray(halves(RED, BLUE, 8, 6))
    picture.save(folder / "lossless.webp", lossless=True)
    picture.save(folder / "picture.tiff")
    picture.save(folder / "picture.bmp")
    picture.save(folder / "png_named.jpg", format="PNG")  # detected by content
    picture.save(folder / "no_extension", format="PNG")
    for name in ("lossless.webp", "picture.tiff", "picture.bmp", "png_named.jpg", "no_extension"):
        expected[name] = (RED, BLUE)
    return expected


def test_every_odd_mode_and_format_becomes_8_bit_rgb(tmp_path):
    expected = write_odd_images(tmp_path)
    for name, (left, right) in expected.items():
        image = load_image(tmp_path / name)
        assert image.dtype == np.uint8 and image.shape == (6, 8, 3), name
        tolerance = 6 if name.endswith(".jpg") and "cmyk" in name else 0
        np.testing.assert_allclose(image[0, 0], left, atol=tolerance, err_msg=name)
        np.testing.assert_allclose(image[0, -1], right, atol=tolerance, err_msg=name)


def write_bad_files(folder):
    """Files that must be skipped, each with a word its reason must contain."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "empty.jpg").write_bytes(b"")
    buffer = io.BytesIO()
    Image.fromarray(noisy()).save(buffer, "JPEG")
    (folder / "truncated.jpg").write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    (folder / "text.jpg").write_text("this is a text file with an image's name\n" * 4)
    png_with_claimed_size(folder / "bomb.png", 20000, 20000)
    return {"empty.jpg": "empty", "truncated.jpg": "truncated", "text.jpg": "not an image", "bomb.png": "megapixels"}


def test_bad_files_raise_bad_image_error_with_a_reason(tmp_path):
    for name, word in write_bad_files(tmp_path).items():
        with pytest.raises(BadImageError, match=word):
            load_image(tmp_path / name)


def test_the_pixel_limit_is_checked_from_the_header_before_decoding(tmp_path):
    # The header claims 400 megapixels but no such pixel data exists: decoding would say "truncated".
    path = png_with_claimed_size(tmp_path / "claims.png", 20000, 20000)
    with pytest.raises(BadImageError, match="400.0 megapixels"):
        load_image(path)
    Image.fromarray(np.zeros((1000, 1100), np.uint8)).save(tmp_path / "big.png")
    assert load_image(tmp_path / "big.png").shape == (1000, 1100, 3)
    with pytest.raises(BadImageError, match="max_megapixels=1"):
        load_image(tmp_path / "big.png", max_megapixels=1)
    assert Image.MAX_IMAGE_PIXELS is not None  # Pillow's own setting is restored


def test_a_folder_of_odd_and_bad_files_loads_what_it_can(tmp_path):
    root = tmp_path / "images"
    expected = write_odd_images(root / "odd")
    bad = write_bad_files(root / "odd")
    write_image_folder(root, classes=("plain",), per_class=2, size=8)
    for name in (".DS_Store", "Thumbs.db", "desktop.ini", "._cat.jpg"):
        (root / "odd" / name).write_bytes(b"\0\1 system file")
    (root / "odd" / ".thumbnails").mkdir()
    Image.fromarray(noisy(8)).save(root / "odd" / ".thumbnails" / "x.png")

    data = discover(str(root), val_fraction=0.0)
    assert data.skipped == [{"path": str(root / "odd" / "empty.jpg"), "reason": "empty file (0 bytes)"}]
    with pytest.warns(SkippedImageWarning) as caught:
        loaded = load_split(data, "train", 12, max_megapixels=50, cache=False, verbose=0)
    assert loaded.images.shape == (len(expected) + 2, 12, 12, 3) and loaded.images.dtype == np.uint8
    assert sorted(os.path.basename(path) for path in loaded.paths) == sorted([*expected, "0.png", "1.png"])
    reasons = {os.path.basename(item["path"]): item["reason"] for item in loaded.skipped}
    assert set(reasons) == {"truncated.jpg", "text.jpg", "bomb.png"}
    for name, reason in reasons.items():
        assert bad[name] in reason
    messages = [str(warning.message) for warning in caught]
    assert any(str(root / "odd" / "text.jpg") in message and "not an image" in message for message in messages)
    ignored = (".DS_Store", "Thumbs.db", "desktop.ini", "._cat", ".thumbnails")
    assert not any(name in path for name in ignored for path in data.splits["train"].paths)


# -- cache ----------------------------------------------------------------------------------------


def refuse_to_decode(*args, **kwargs):
    raise RuntimeError("decoded again")


def test_a_second_load_reads_the_cache_instead_of_decoding(image_folder, monkeypatch):
    (image_folder / "cat" / "broken.png").write_text("not an image")
    data = discover(str(image_folder), val_fraction=0.0)
    with pytest.warns(SkippedImageWarning):
        first = load_split(data, "train", 16, verbose=0)
    monkeypatch.setattr(data_module, "_decode_image", refuse_to_decode)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a cache hit warns no more
        second = load_split(data, "train", 16, verbose=0)
    np.testing.assert_array_equal(first.images, second.images)
    np.testing.assert_array_equal(first.labels, second.labels)
    assert first.paths == second.paths and second.skipped == first.skipped
    assert [os.path.basename(item["path"]) for item in second.skipped] == ["broken.png"]
    assert second.images.shape[1:] == (16, 16, 3)
    for changed in (
        lambda: load_split(data, "train", 24, verbose=0),  # another size
        lambda: load_split(data, "train", 16, cache=False, verbose=0),
    ):
        with pytest.raises(RuntimeError, match="decoded again"):
            changed()
    os.utime(data.splits["train"].paths[0], ns=(1, 1))  # an edited file
    with pytest.raises(RuntimeError, match="decoded again"):
        load_split(data, "train", 16, verbose=0)


# -- resize, prediction inputs -----------------------------------------------------------------


def test_resize_keeps_the_whole_image_and_makes_rgb():
    resized = resize_image(halves(RED, BLUE), 16)
    assert resized.shape == (16, 16, 3) and resized.dtype == np.uint8
    np.testing.assert_array_equal(resized[8, 0], RED)  # no crop: both halves are still there
    np.testing.assert_array_equal(resized[8, -1], BLUE)
    assert resize_image(np.full((20, 30), 9, np.uint8), 8).shape == (8, 8, 3)


def test_prediction_inputs_skip_hidden_and_bad_files(tmp_path):
    folder = tmp_path / "photos"
    (folder / "nested").mkdir(parents=True)
    Image.fromarray(noisy(20)).save(folder / "b.jpg")
    Image.fromarray(noisy(30)).save(folder / "nested" / "a.png")
    (folder / ".DS_Store").write_bytes(b"x")
    (folder / "notes.txt").write_text("hello")
    assert list_images(folder) == [folder / "b.jpg", folder / "nested" / "a.png", folder / "notes.txt"]
    with pytest.warns(SkippedImageWarning, match="notes.txt"):
        images, paths, skipped = load_images_for_prediction([folder], 16)
    assert images.shape == (2, 16, 16, 3) and paths == [str(folder / "b.jpg"), str(folder / "nested" / "a.png")]
    assert skipped[0]["path"] == str(folder / "notes.txt") and "not an image" in skipped[0]["reason"]
    # Prediction and training decode and resize alike.
    data = discover(str(write_image_folder(tmp_path / "train", per_class=2, size=20)), val_fraction=0.0)
    loaded = load_split(data, "train", 16, cache=False, verbose=0)
    again, _, _ = load_images_for_prediction(loaded.paths, 16)
    np.testing.assert_array_equal(loaded.images, again)
    with pytest.raises(FinetuneError, match="does not exist"):
        list_images(tmp_path / "nowhere")


# -- class weights, tf.data --------------------------------------------------------------------


def test_class_weights_only_when_imbalanced():
    assert class_weights([0, 0, 1, 1, 2, 2], 3) is None
    assert class_weights([0, 0, 0, 1, 1], 2) is None  # 1.5 is not above the threshold
    weights = class_weights([0] * 8 + [1] * 2, 2)
    assert weights == {0: 10 / (2 * 8), 1: 10 / (2 * 2)}
    assert class_weights([0] * 8 + [1] * 2, 2, threshold=5) is None
    assert class_weights([0, 0, 0, 1], 3) == {0: 4 / 9, 1: 4 / 3, 2: 1.0}


def labels_of(dataset):
    return np.concatenate([labels.numpy() for _, labels in dataset]).tolist()


def test_make_dataset_batches_float_images_and_int_labels():
    images = np.arange(10 * 4 * 4 * 3, dtype=np.int64).reshape(10, 4, 4, 3).astype(np.uint8)
    labels = np.arange(10)
    batches = list(make_dataset(images, labels, batch_size=4, shuffle=False, seed=0))
    assert [len(batch_labels) for _, batch_labels in batches] == [4, 4, 2]
    batch_images, batch_labels = batches[0]
    assert batch_images.dtype.name == "float32" and batch_labels.dtype.name == "int64"
    np.testing.assert_array_equal(batch_images.numpy(), images[:4].astype(np.float32))
    assert batch_labels.numpy().tolist() == [0, 1, 2, 3]


def test_make_dataset_shuffles_by_seed_each_epoch():
    images = np.zeros((32, 2, 2, 3), np.uint8)
    labels = np.arange(32)
    first = make_dataset(images, labels, 8, shuffle=True, seed=3)
    epochs = [labels_of(first), labels_of(first)]
    again = make_dataset(images, labels, 8, shuffle=True, seed=3)
    assert [labels_of(again), labels_of(again)] == epochs
    assert epochs[0] != epochs[1] and sorted(epochs[0]) == list(range(32))
    assert labels_of(make_dataset(images, labels, 8, shuffle=True, seed=4)) != epochs[0]


def test_make_dataset_augments_and_repeats():
    images = np.full((5, 2, 2, 3), 7, np.uint8)
    dataset = make_dataset(
        images, np.zeros(5), 2, shuffle=False, seed=0, augment=lambda batch: batch + 1.0, repeat=True
    )
    batches = list(dataset.take(6))
    assert len(batches) == 6
    assert all(float(batch_images.numpy().max()) == 8.0 for batch_images, _ in batches)
    assert batches[0][0].shape == (2, 2, 2, 3)
    with pytest.raises(FinetuneError, match="same length"):
        make_dataset(images, np.zeros(4), 2, shuffle=False, seed=0)


# -- TensorFlow Datasets (mocked: nothing can be downloaded here) -----------------------------------------


def test_tfds_without_a_validation_split_is_split_like_a_folder():
    tfds = pytest.importorskip("tensorflow_datasets")
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
    tfds = pytest.importorskip("tensorflow_datasets")
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
    pytest.importorskip("tensorflow_datasets")
    with pytest.raises(FinetuneError, match="no data set 'no_such_data_set'"):
        discover("tfds:no_such_data_set")


def test_a_full_disk_means_no_cache_not_a_crash(image_folder, monkeypatch):
    monkeypatch.setattr(data_module.shutil, "disk_usage", lambda path: type("Usage", (), {"free": 0})())
    data = discover(str(image_folder), val_fraction=0.0)
    with pytest.warns(UserWarning, match="Not enough free disk space"):
        loaded = load_split(data, "train", 20, verbose=0)
    assert loaded.images.shape == (12, 20, 20, 3) and not isinstance(loaded.images, np.memmap)
