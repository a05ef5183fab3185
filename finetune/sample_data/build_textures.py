"""Rebuilds the bundled demo sample `textures/` from scikit-image's CC0 texture photographs.

Crops of 112 x 112 pixels from the brick, grass and gravel textures of `skimage.data`
(CC0Textures, Creative Commons CC0). Training crops come from the top 60% of each photograph
and test crops from the bottom 40%, so no test pixel was seen in training.

    python -m finetune.sample_data.build_textures
"""

from pathlib import Path

import numpy as np
from PIL import Image

CLASSES = ("brick", "grass", "gravel")
CROP = 112
PER_CLASS = {"train": 40, "test": 20}


def build(out: Path, seed: int = 0) -> None:
    import skimage.data

    rng = np.random.default_rng(seed)
    for class_name in CLASSES:
        photo = getattr(skimage.data, class_name)()  # 512 x 512 grayscale
        height = photo.shape[0]
        boundary = int(height * 0.6)
        row_ranges = {"train": (0, boundary - CROP), "test": (boundary, height - CROP)}
        for split, count in PER_CLASS.items():
            folder = out / split / class_name
            folder.mkdir(parents=True, exist_ok=True)
            low, high = row_ranges[split]
            for index in range(count):
                row = rng.integers(low, high + 1)
                column = rng.integers(0, photo.shape[1] - CROP + 1)
                crop = photo[row : row + CROP, column : column + CROP]
                Image.fromarray(crop).convert("RGB").save(folder / f"{class_name}_{index:03d}.jpg", quality=85)


if __name__ == "__main__":
    build(Path(__file__).parent / "textures")
