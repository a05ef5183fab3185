"""A picture of what training sees: originals beside augmented samples of them, as one PNG grid.

    finetune augment-preview photos/ --augment strong --out grid.png

Rows are training images (one class after another); the first column is the image as
training loads it (resized whole), the next ones are augmented samples with different seeds,
and, when mixup or cutmix is on, the last ones are mixed samples captioned with their soft labels.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from augment.augmenter import build_augmenter
from augment.mixing import Mixer
from augment.options import describe, resolve
from finetune.errors import FinetuneError

PADDING = 4
CAPTION = 14
BACKGROUND = (255, 255, 255)
INK = (0, 0, 0)


def pick_images(data_dir, count: int, seed: int = 0) -> tuple[list[str], list[int], list[str]]:
    """`count` training images of `data_dir`, taking the classes in turn: (paths, labels, class names)."""
    from finetune.data import discover

    data = discover(data_dir, val_fraction=0.0, seed=seed)
    train = data.splits["train"]
    rng = np.random.default_rng(seed)
    by_class = [list(rng.permutation(np.flatnonzero(train.labels == label))) for label in range(len(data.class_names))]
    chosen = []
    while len(chosen) < count and any(by_class):
        for indices in by_class:
            if indices and len(chosen) < count:
                chosen.append(int(indices.pop(0)))
    return [train.paths[i] for i in chosen], [int(train.labels[i]) for i in chosen], data.class_names


def preview_grid(data_dir, preset: str = "standard", seed: int = 0, images: int = 6, samples: int = 5,
                 image_size: int = 160, **overrides) -> Image.Image:
    """The grid as a PIL image.

    Args:
        data_dir: an image folder (one subfolder per class, or train/ val/ test/).
        preset: an augmentation preset. Defaults to "standard".
        seed: Defaults to 0.
        images: rows. Defaults to 6.
        samples: augmented columns. Defaults to 5.
        image_size: the size images are resized to, as in training. Defaults to 160.
        **overrides: fields of `augment.options.AugmentOptions`.
    """
    from finetune.data import load_images_for_prediction

    if images < 1 or samples < 1:
        raise FinetuneError(f"`images` and `samples` must be at least 1. Received: images={images}, samples={samples}")
    options = resolve(preset, **overrides)
    paths, labels, class_names = pick_images(data_dir, images, seed)
    originals, decoded, _ = load_images_for_prediction(paths, image_size)
    if len(decoded) == 0:
        raise FinetuneError(f"None of the chosen images of {data_dir} could be read.")
    keep = [paths.index(path) for path in decoded]
    labels = np.array([labels[i] for i in keep], dtype=np.int64)
    batch = originals.astype(np.float32)
    columns = [("original", originals, None)]
    for sample in range(samples):
        augmenter = build_augmenter(options, seed=seed + sample)
        augmented = batch if augmenter is None else np.asarray(augmenter(batch))
        columns.append((f"augmented {sample + 1}", augmented, None))
    if options.mixing():
        for sample in range(2):
            mixer = Mixer(len(class_names), options.mixup, options.cutmix, seed=seed + sample)
            mixed, soft = mixer(np.asarray(columns[1 + sample % samples][1], np.float32), labels)
            columns.append((f"mixed {sample + 1}", np.asarray(mixed), np.asarray(soft)))
    title = _title(preset, options, describe(options)["views"])
    return _draw(columns, labels, class_names, image_size, title)


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


def _draw(columns, labels, class_names, image_size, title) -> Image.Image:
    cell_width, cell_height = image_size + PADDING, image_size + CAPTION + PADDING
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
            draw.text((x, y + image_size + 1), caption, fill=INK)
    return canvas


def write_preview(path, data_dir, **options) -> Path:
    """Writes `preview_grid(data_dir, **options)` to `path` (PNG) and returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    preview_grid(data_dir, **options).save(path, format="PNG")
    return path
