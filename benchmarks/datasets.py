"""Real-image data sets available offline, written as image folders with train/, val/ and test/.

    textures        crops of scikit-image's brick, grass and gravel photographs (CC0), 3 classes;
                    train/val crops from the top 60% of each photograph, test from the bottom 40%
    fashion_mnist   Debian's dataset-fashion-mnist (apt-get install dataset-fashion-mnist), 10 classes,
                    28x28 grayscale; a per-class subset of the training set, test from the test set
    digits          scikit-learn's 8x8 handwritten digits, 10 classes
    faces           scikit-image's lfw_subset: 100 faces and 100 non-faces, 25x25 grayscale

Each folder is written once under benchmarks/data/ (git-ignored) and reused.
"""

from __future__ import annotations

import gzip
import shutil
from pathlib import Path

import numpy as np
from PIL import Image

DATA_DIR = Path(__file__).parent / "data"
FASHION_MNIST_DIRS = [Path("/usr/share/datasets/fashion-mnist")]
FASHION_CLASSES = ["tshirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "boot"]


def _write(root: Path, split: str, class_name: str, index: int, array: np.ndarray) -> None:
    folder = root / split / class_name
    folder.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(folder / f"{index:05d}.png")


def _take_per_class(labels, counts: dict, rng) -> dict:
    """Indices for each split, stratified: counts = {"train": n, "val": m, ...} per class."""
    chosen = {split: [] for split in counts}
    for label in np.unique(labels):
        indices = rng.permutation(np.flatnonzero(labels == label))
        start = 0
        for split, count in counts.items():
            chosen[split] += list(indices[start : start + count])
            start += count
    return chosen


def _finish(root: Path) -> Path:
    (root / ".complete").touch()
    return root


def textures(per_class_train=30, per_class_val=10, per_class_test=30, crop=96, seed=0) -> Path:
    import skimage.data

    root = DATA_DIR / f"textures-{per_class_train}-{crop}"
    if (root / ".complete").exists():
        return root
    shutil.rmtree(root, ignore_errors=True)
    rng = np.random.default_rng(seed)
    for class_name in ("brick", "grass", "gravel"):
        photo = getattr(skimage.data, class_name)()
        boundary = int(photo.shape[0] * 0.6)
        plan = {"train": (per_class_train, 0, boundary - crop), "val": (per_class_val, 0, boundary - crop),
                "test": (per_class_test, boundary, photo.shape[0] - crop)}
        for split, (count, low, high) in plan.items():
            for index in range(count):
                row, column = rng.integers(low, high + 1), rng.integers(0, photo.shape[1] - crop + 1)
                _write(root, split, class_name, index, photo[row : row + crop, column : column + crop])
    return _finish(root)


def _read_idx(path: Path) -> np.ndarray:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as file:
        data = file.read()
    dims = data[3]
    shape = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(dims)]
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * dims).reshape(shape)


def _fashion_file(stem: str) -> Path:
    for folder in FASHION_MNIST_DIRS:
        for candidate in sorted(folder.rglob(f"{stem}*")) if folder.exists() else []:
            return candidate
    raise FileNotFoundError(
        f"Fashion-MNIST file {stem} not found in {FASHION_MNIST_DIRS}: apt-get install dataset-fashion-mnist"
    )


def fashion_mnist(per_class_train=30, per_class_val=10, test_per_class=100, seed=0) -> Path:
    name = f"fashion_mnist-{per_class_train}"
    if (per_class_val, test_per_class) != (10, 100):
        name += f"-val{per_class_val}-test{test_per_class}"
    root = DATA_DIR / name
    if (root / ".complete").exists():
        return root
    shutil.rmtree(root, ignore_errors=True)
    rng = np.random.default_rng(seed)
    train_images, train_labels = _read_idx(_fashion_file("train-images")), _read_idx(_fashion_file("train-labels"))
    test_images, test_labels = _read_idx(_fashion_file("t10k-images")), _read_idx(_fashion_file("t10k-labels"))
    counts = {"train": per_class_train, "val": per_class_val} if per_class_val else {"train": per_class_train}
    chosen = _take_per_class(train_labels, counts, rng)
    chosen_test = _take_per_class(test_labels, {"test": test_per_class}, rng)
    for split, indices in chosen.items():
        for index in indices:
            _write(root, split, FASHION_CLASSES[train_labels[index]], index, train_images[index])
    for index in chosen_test["test"]:
        _write(root, "test", FASHION_CLASSES[test_labels[index]], index, test_images[index])
    return _finish(root)


def _labelled_arrays(name: str, images, labels, class_names, per_class_train, per_class_val, seed) -> Path:
    """Writes in-memory uint8 images as train/val/test folders; test takes what is left of each class."""
    root = DATA_DIR / f"{name}-{per_class_train}"
    if (root / ".complete").exists():
        return root
    shutil.rmtree(root, ignore_errors=True)
    remaining = int(min(np.bincount(labels))) - per_class_train - per_class_val
    counts = {"train": per_class_train, "val": per_class_val, "test": remaining}
    chosen = _take_per_class(labels, counts, np.random.default_rng(seed))
    for split, indices in chosen.items():
        for index in indices:
            _write(root, split, class_names[labels[index]], index, images[index])
    return _finish(root)


def digits(per_class_train=30, per_class_val=10, seed=0) -> Path:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = (bunch.images / 16.0 * 255).astype(np.uint8)
    return _labelled_arrays("digits", images, bunch.target, [str(k) for k in range(10)], per_class_train, per_class_val, seed)


def faces(per_class_train=30, per_class_val=10, seed=0) -> Path:
    import skimage.data

    images = (skimage.data.lfw_subset() * 255).astype(np.uint8)  # 100 faces then 100 non-faces
    labels = np.array([0] * 100 + [1] * 100)
    return _labelled_arrays("faces", images, labels, ["face", "not_face"], per_class_train, per_class_val, seed)


BUILDERS = {"textures": textures, "fashion_mnist": fashion_mnist, "digits": digits, "faces": faces}
