"""finetune.data.cache: load_split decodes what it can, reads the cache on a second load, and copes without it."""

import os
import shutil
import warnings

import numpy as np
import pytest
from PIL import Image

from finetune.data import SkippedImageWarning, discover, load_split
from finetune.data import cache as cache_module
from finetune.errors import FinetuneError
from tests.conftest import write_image_folder
from tests.finetune.data.images import noisy, write_bad_files, write_odd_images


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


def refuse_to_decode(*args, **kwargs):
    raise RuntimeError("decoded again")


def test_a_second_load_reads_the_cache_instead_of_decoding(image_folder, monkeypatch):
    (image_folder / "cat" / "broken.png").write_text("not an image")
    data = discover(str(image_folder), val_fraction=0.0)
    with pytest.warns(SkippedImageWarning):
        first = load_split(data, "train", 16, verbose=0)
    monkeypatch.setattr(cache_module, "decode_image", refuse_to_decode)
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


def test_a_full_disk_means_no_cache_not_a_crash(image_folder, monkeypatch):
    monkeypatch.setattr(shutil, "disk_usage", lambda path: type("Usage", (), {"free": 0})())
    data = discover(str(image_folder), val_fraction=0.0)
    with pytest.warns(UserWarning, match="Not enough free disk space"):
        loaded = load_split(data, "train", 20, verbose=0)
    assert loaded.images.shape == (12, 20, 20, 3) and not isinstance(loaded.images, np.memmap)
