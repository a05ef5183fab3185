"""Shared fixtures: a private FINETUNE_HOME per test session and tiny generated image folders."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from pathlib import Path

import numpy as np
import pytest
from PIL import Image


@pytest.fixture(scope="session", autouse=True)
def finetune_home(tmp_path_factory):
    """Keeps weight and image caches of the tests away from the user's own cache."""
    home = tmp_path_factory.mktemp("finetune_home")
    previous = os.environ.get("FINETUNE_HOME")
    os.environ["FINETUNE_HOME"] = str(home)
    yield home
    if previous is None:
        os.environ.pop("FINETUNE_HOME", None)
    else:
        os.environ["FINETUNE_HOME"] = previous


def class_image(class_index: int, seed: int, size: int = 48) -> np.ndarray:
    """An RGB uint8 image whose class is easy to learn: a colour and a stripe direction per class."""
    rng = np.random.default_rng(seed)
    base = np.array([(class_index * 97) % 256, (class_index * 53 + 80) % 256, (class_index * 151 + 30) % 256])
    image = np.tile(base, (size, size, 1)).astype(np.float32)
    stripes = (np.arange(size) // 4) % 2 * 60.0
    if class_index % 2:
        image += stripes[None, :, None]
    else:
        image += stripes[:, None, None]
    image += rng.normal(0, 12, image.shape)
    return np.clip(image, 0, 255).astype(np.uint8)


def write_image_folder(root: Path, classes=("cat", "dog"), per_class=6, size=48, seed=0, fmt="png") -> Path:
    """Writes root/<class>/<i>.<fmt> images and returns root."""
    root = Path(root)
    for class_index, class_name in enumerate(classes):
        folder = root / class_name
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            array = class_image(class_index, seed * 1000 + class_index * 100 + i, size)
            Image.fromarray(array).save(folder / f"{i}.{fmt}")
    return root


@pytest.fixture
def image_folder(tmp_path):
    """A two-class folder of 6 PNGs per class, 48 px."""
    return write_image_folder(tmp_path / "images")
