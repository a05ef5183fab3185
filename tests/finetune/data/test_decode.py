"""finetune.data.decode: odd modes and formats, bad files, the pixel limit, resizing."""

import threading

import numpy as np
import pytest
from PIL import Image

from finetune.data import BadImageError, load_image, resize_image
from finetune.data.decode import pillow_limit_lifted
from tests.finetune.data.images import (
    BLUE,
    RED,
    halves,
    png_with_claimed_size,
    write_bad_files,
    write_odd_images,
)


def test_exif_orientation_is_applied(tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    Image.fromarray(halves(RED, BLUE)).save(tmp_path / "rotated.jpg", exif=exif, quality=95)
    image = load_image(tmp_path / "rotated.jpg")
    assert image.shape == (40, 20, 3) and image.dtype == np.uint8
    # Turned clockwise, the left (red) half is on top.
    np.testing.assert_allclose(image[2, 10], RED, atol=40)
    np.testing.assert_allclose(image[-3, 10], BLUE, atol=40)


def test_every_odd_mode_and_format_becomes_8_bit_rgb(tmp_path):
    expected = write_odd_images(tmp_path)
    for name, (left, right) in expected.items():
        image = load_image(tmp_path / name)
        assert image.dtype == np.uint8 and image.shape == (6, 8, 3), name
        tolerance = 6 if name.endswith(".jpg") and "cmyk" in name else 0
        np.testing.assert_allclose(image[0, 0], left, atol=tolerance, err_msg=name)
        np.testing.assert_allclose(image[0, -1], right, atol=tolerance, err_msg=name)


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


def test_our_limit_replaces_pillows_while_decoding_and_pillows_own_comes_back(tmp_path, monkeypatch):
    # 1.1 megapixels is over twice a Pillow limit of 1000 pixels: Pillow alone would refuse it.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    Image.fromarray(np.zeros((1000, 1100), np.uint8)).save(tmp_path / "big.png")
    assert load_image(tmp_path / "big.png").shape == (1000, 1100, 3)
    assert Image.MAX_IMAGE_PIXELS == 1000


def test_overlapping_lifts_restore_pillows_limit_only_when_the_last_ends(monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1234)
    first, second = pillow_limit_lifted(), pillow_limit_lifted()
    first.__enter__()
    second.__enter__()
    assert Image.MAX_IMAGE_PIXELS is None
    first.__exit__(None, None, None)  # the first one ends while the second still decodes
    assert Image.MAX_IMAGE_PIXELS is None
    second.__exit__(None, None, None)
    assert Image.MAX_IMAGE_PIXELS == 1234


def test_threads_decoding_at_once_never_see_pillows_limit(tmp_path, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    Image.fromarray(np.zeros((1000, 1100), np.uint8)).save(tmp_path / "big.png")
    failures, start = [], threading.Barrier(6)

    def decode_several():
        start.wait()
        for _ in range(8):
            try:
                load_image(tmp_path / "big.png")
            except BadImageError as error:
                failures.append(error.reason)

    threads = [threading.Thread(target=decode_several) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == []
    assert Image.MAX_IMAGE_PIXELS == 1000


def test_resize_keeps_the_whole_image_and_makes_rgb():
    resized = resize_image(halves(RED, BLUE), 16)
    assert resized.shape == (16, 16, 3) and resized.dtype == np.uint8
    np.testing.assert_array_equal(resized[8, 0], RED)  # no crop: both halves are still there
    np.testing.assert_array_equal(resized[8, -1], BLUE)
    assert resize_image(np.full((20, 30), 9, np.uint8), 8).shape == (8, 8, 3)
