"""`augment.preview`: a grid of images beside their augmented and mixed samples, drawn from arrays."""

import numpy as np
import pytest
from PIL import Image

import augment
from augment.errors import AugmentError
from augment.preview import CAPTION, PADDING, preview_grid, write_preview

CLASSES = ["cat", "dog"]
# The grid's layout: a title and a header line above the cells, each cell an image and its caption.
TOP = 2 * CAPTION + PADDING


def sample_images(count: int = 4, height: int = 20, width: int = 20) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (count, height, width, 3), dtype=np.uint8)


def cell(grid: Image.Image, row: int, column: int, height: int, width: int) -> np.ndarray:
    x = PADDING + column * (width + PADDING)
    y = TOP + row * (height + CAPTION + PADDING)
    return np.asarray(grid)[y : y + height, x : x + width]


@pytest.mark.parametrize("height, width, samples", [(20, 20, 3), (16, 24, 1)])
def test_grid_size_follows_rows_columns_and_image_size(height, width, samples):
    images = sample_images(3, height, width)
    grid = preview_grid(images, [0, 1, 0], CLASSES, preset="standard", samples=samples)
    columns = 1 + samples  # the original, then the augmented samples; standard does not mix
    assert grid.size == (PADDING + columns * (width + PADDING), TOP + 3 * (height + CAPTION + PADDING) + PADDING)


def test_the_first_column_is_the_original_pixels():
    images = sample_images()
    grid = preview_grid(images, [0, 1, 1, 0], CLASSES, preset="strong", samples=2)
    for row in range(len(images)):
        np.testing.assert_array_equal(cell(grid, row, 0, 20, 20), images[row])


def test_augmented_columns_are_what_the_augmenter_gives_with_seed_plus_sample():
    images = sample_images()
    grid = preview_grid(images, [0, 1, 1, 0], CLASSES, preset="standard", seed=5, samples=2)
    for sample in range(2):
        augmented = np.asarray(augment.build_augmenter("standard", seed=5 + sample)(images.astype(np.float32)))
        expected = np.clip(np.rint(augmented), 0, 255).astype(np.uint8)
        for row in range(len(images)):
            np.testing.assert_array_equal(cell(grid, row, 1 + sample, 20, 20), expected[row])
    assert not np.array_equal(cell(grid, 0, 1, 20, 20), images[0])


def test_mixing_adds_two_mixed_columns():
    images = sample_images()
    plain = preview_grid(images, [0, 1, 1, 0], CLASSES, preset="none", samples=2)
    mixed = preview_grid(images, [0, 1, 1, 0], CLASSES, preset="none", samples=2, mixup=0.4)
    assert mixed.width - plain.width == 2 * (20 + PADDING) and mixed.height == plain.height
    # With no image operation the augmented columns are the originals; the mixed ones blend them.
    np.testing.assert_array_equal(cell(plain, 1, 2, 20, 20), images[1])
    assert any(not np.array_equal(cell(mixed, row, 3, 20, 20), images[row]) for row in range(len(images)))


def test_bad_images_labels_and_samples_name_the_argument():
    with pytest.raises(AugmentError, match=r"`images` must be .*Received: images of shape \(4, 20, 20\)"):
        preview_grid(np.zeros((4, 20, 20)), [0, 1, 0, 1], CLASSES)
    with pytest.raises(AugmentError, match=r"`images`.*Received: images of shape \(0, 20, 20, 3\)"):
        preview_grid(np.zeros((0, 20, 20, 3)), [], CLASSES)
    with pytest.raises(AugmentError, match=r"`samples` must be at least 1\. Received: samples=0"):
        preview_grid(sample_images(), [0, 1, 0, 1], CLASSES, samples=0)
    with pytest.raises(AugmentError, match=r"`labels` must be 4 class indices.*Received: labels=\[0, 1\]"):
        preview_grid(sample_images(), [0, 1], CLASSES)
    with pytest.raises(AugmentError, match=r"in 0\.\.1.*Received: labels=\[0, 1, 2, 0\]"):
        preview_grid(sample_images(), [0, 1, 2, 0], CLASSES)
    with pytest.raises(AugmentError, match="Unknown augmentation preset"):
        preview_grid(sample_images(), [0, 1, 0, 1], CLASSES, preset="medium")


def test_write_preview_writes_the_grid_as_png(tmp_path):
    images = sample_images()
    path = write_preview(tmp_path / "new" / "grid.png", images, [0, 1, 1, 0], CLASSES, preset="light", samples=2)
    with Image.open(path) as written:
        assert written.format == "PNG"
        expected = preview_grid(images, [0, 1, 1, 0], CLASSES, preset="light", samples=2)
        np.testing.assert_array_equal(np.asarray(written.convert("RGB")), np.asarray(expected))
