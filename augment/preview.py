"""A picture of what training sees: originals beside augmented samples of them, as one PNG grid.

    grid = preview_grid(images, labels, class_names, preset="strong")   # a PIL image
    write_preview("grid.png", images, labels, class_names, preset="strong")

Rows are the images given (uint8 or float, 0..255, as training loads them: resized whole); the
first column is each image itself, the next ones are augmented samples with different seeds,
and, when mixup or cutmix is on, the last ones are mixed samples captioned with their soft labels.
`finetune augment-preview DATA_DIR` picks and loads the images of a folder and calls this.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from augment.augmenter import build_augmenter
from augment.errors import AugmentError
from augment.mixing import Mixer
from augment.options import describe, resolve

PADDING = 4
CAPTION = 14
BACKGROUND = (255, 255, 255)
INK = (0, 0, 0)
# Mixed columns shown when mixup or cutmix is on: two show that pairs and weights change.
MIXED_SAMPLES = 2


def preview_grid(images, labels, class_names, *, preset="standard", seed: int = 0, samples: int = 5,
                 **overrides) -> Image.Image:
    """The grid as a PIL image: one row per image, the original first, then `samples` augmented views.

    Args:
        images: RGB images [N, height, width, 3] in 0..255 (uint8 or float), N >= 1, at the size
            training uses.
        labels: int class indices [N] into `class_names`.
        class_names: the names the captions show.
        preset: an augmentation preset or an `AugmentOptions`. Defaults to "standard".
        seed: sample k is augmented with seed `seed + k`. Defaults to 0.
        samples: augmented columns. Defaults to 5.
        **overrides: fields of `augment.options.AugmentOptions`.

    Raises:
        AugmentError: `images`, `labels` or `samples` of the wrong shape or range, or a bad option.
    """
    originals, labels, class_names = _checked(images, labels, class_names)
    if not isinstance(samples, (int, np.integer)) or samples < 1:
        raise AugmentError(f"`samples` must be at least 1. Received: samples={samples!r}")
    options = resolve(preset, **overrides)
    batch = originals.astype(np.float32)
    columns = [("original", originals, None)]
    for sample in range(samples):
        augmenter = build_augmenter(options, seed=seed + sample)
        augmented = batch if augmenter is None else np.asarray(augmenter(batch))
        columns.append((f"augmented {sample + 1}", augmented, None))
    if options.mixing():
        for sample in range(MIXED_SAMPLES):
            mixer = Mixer(len(class_names), options.mixup, options.cutmix, seed=seed + sample)
            mixed, soft = mixer(np.asarray(columns[1 + sample % samples][1], np.float32), labels)
            columns.append((f"mixed {sample + 1}", np.asarray(mixed), np.asarray(soft)))
    title = _title(preset, options, describe(options)["views"])
    return _draw(columns, labels, class_names, title)


def _checked(images, labels, class_names) -> tuple[np.ndarray, np.ndarray, list[str]]:
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[-1] != 3 or len(images) == 0:
        raise AugmentError(
            f"`images` must be at least one RGB image, an array [N, height, width, 3]. "
            f"Received: images of shape {images.shape}"
        )
    labels = np.asarray(labels).reshape(-1)
    class_names = [str(name) for name in class_names]
    if (len(labels) != len(images) or not np.issubdtype(labels.dtype, np.integer)
            or labels.min() < 0 or labels.max() >= len(class_names)):
        raise AugmentError(
            f"`labels` must be {len(images)} class indices (one per image) in 0..{len(class_names) - 1} "
            f"(`class_names` has {len(class_names)}). Received: labels={labels.tolist()!r}"
        )
    return images, labels.astype(np.int64), class_names


def _title(preset, options, views) -> str:
    name = preset if isinstance(preset, str) else "custom"
    parts = [f"augment: {name}", f"area {views['area'][0]:.2f}-{views['area'][1]:.2f}"]
    parts += [name for name in ("horizontal_flip", "vertical_flip") if views[name]]
    parts += [f"{field} {getattr(options, field):g}" for field in
              ("rotation", "translation", "brightness", "contrast", "saturation", "hue", "noise", "erasing",
               "mixup", "cutmix") if getattr(options, field)]
    return ", ".join(parts)


def _caption(soft: np.ndarray | None, label: int, class_names: list[str]) -> str:
    if soft is None:
        return class_names[label]
    top = np.argsort(soft)[::-1][:2]
    return " ".join(f"{class_names[i][:8]} {soft[i]:.2f}" for i in top if soft[i] > 0.005)


def _draw(columns, labels, class_names, title) -> Image.Image:
    image_height, image_width = columns[0][1].shape[1:3]
    cell_width, cell_height = image_width + PADDING, image_height + CAPTION + PADDING
    width = PADDING + cell_width * len(columns)
    top = CAPTION * 2 + PADDING
    height = top + cell_height * len(labels) + PADDING
    canvas = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    draw.text((PADDING, PADDING), title, fill=INK)
    for column, (header, pictures, soft) in enumerate(columns):
        x = PADDING + column * cell_width
        draw.text((x, PADDING + CAPTION), header, fill=INK)
        for row, label in enumerate(labels):
            y = top + row * cell_height
            picture = np.clip(np.rint(pictures[row]), 0, 255).astype(np.uint8)
            canvas.paste(Image.fromarray(picture), (x, y))
            caption = _caption(None if soft is None else soft[row], int(label), class_names)
            draw.text((x, y + image_height + 1), caption, fill=INK)
    return canvas


def write_preview(path, images, labels, class_names, **options) -> Path:
    """Writes `preview_grid(images, labels, class_names, **options)` to `path` (PNG) and returns the path.

    Args:
        path: the PNG file; missing folders are created.
        images, labels, class_names: as for `preview_grid`.
        **options: the keyword arguments of `preview_grid` (preset, seed, samples, option overrides).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    preview_grid(images, labels, class_names, **options).save(path, format="PNG")
    return path
