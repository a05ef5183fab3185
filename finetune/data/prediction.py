"""Images to predict on, decoded and resized exactly as training decodes them.

Example:
>>> images, paths, skipped = load_images_for_prediction(["photos/"], image_size=224)
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np

from finetune.config import DataConfig
from finetune.data.decode import BadImageError, SkippedImageWarning, decode_image, decode_many, resize_image
from finetune.data.discover import list_images


def load_images_for_prediction(
    paths, image_size: int, max_megapixels: float = DataConfig.max_megapixels
) -> tuple[np.ndarray, list[str], list[dict]]:
    """Decodes and resizes images exactly as training does; folders are searched recursively.

    Args:
        paths: an image file or a folder, or a list of them.
        image_size: images are resized whole to image_size x image_size.
        max_megapixels: larger images are skipped (decompression bombs). Defaults to
            `DataConfig.max_megapixels` (89).

    Returns:
        (uint8 images [N, image_size, image_size, 3], the N paths that decoded, skipped
        [{"path", "reason"}]); a bad file is skipped with a warning, never raised.
    """
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    files = [str(path) for item in paths for path in (list_images(item) if Path(item).is_dir() else [Path(item)])]

    def decode(source):
        return resize_image(decode_image(source, max_megapixels)[0], image_size)

    images, ok, skipped = [], [], []
    for position, result in decode_many(enumerate(files), decode, total=len(files)):
        if isinstance(result, BadImageError):
            skipped.append({"path": files[position], "reason": result.reason})
            warnings.warn(f"Skipping {files[position]}: {result.reason}", SkippedImageWarning, stacklevel=2)
        else:
            images.append(result)
            ok.append(files[position])
    stacked = np.stack(images) if images else np.zeros((0, image_size, image_size, 3), dtype=np.uint8)
    return stacked, ok, skipped
