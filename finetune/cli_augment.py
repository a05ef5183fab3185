"""The command line of augmentation: the `--augment` flags of `finetune train` and `finetune augment-preview`.

`augment` is a library that knows nothing of command lines or image folders; this module is
the CLI's side of it. The flags map one to one onto the fields of `augment.AugmentOptions`:

    finetune train photos/ --augment standard --mixup 0.2 --no-horizontal-flip
    finetune augment-preview photos/ --augment strong --out grid.png

`augment-preview` picks training images of the folder (the classes in turn), loads them as
training does (resized whole) and draws `augment.preview.preview_grid` of them.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from augment.options import PLACEMENTS, PRESETS, resolve
from finetune.errors import FinetuneError

# The flags `add_augment_arguments` adds that are fields of `AugmentOptions` under the same name.
OPTION_NAMES = ("mixup", "cutmix", "horizontal_flip", "vertical_flip", "crop_area", "crop_aspect", "scale_jitter",
                "rotation", "translation", "brightness", "contrast", "saturation", "hue", "noise", "erasing")


def add_augment_arguments(parser: argparse.ArgumentParser, default_preset: str = "none",
                          extra_choices: tuple[str, ...] = (), help_text: str | None = None) -> None:
    """Adds `--augment PRESET` and one flag per option (default: the preset's value).

    Args:
        parser: the parser (or subcommand parser) to add the group to.
        default_preset: the preset when `--augment` is not given. Defaults to "none".
        extra_choices: values besides the presets (training's "auto"). Defaults to none.
        help_text: the help of `--augment`. Defaults to naming the presets' default.
    """
    group = parser.add_argument_group("augmentation (see `augment.options`)")
    group.add_argument("--augment", choices=[*extra_choices, *PRESETS], default=default_preset,
                       help=help_text or f"augmentation preset (default: {default_preset})")
    group.add_argument("--mixup", type=float, default=None, help="mixup Beta parameter, e.g. 0.2 (0: off)")
    group.add_argument("--cutmix", type=float, default=None, help="cutmix Beta parameter in (0, 1] (0: off)")
    group.add_argument("--horizontal-flip", action=argparse.BooleanOptionalAction, default=None)
    group.add_argument("--vertical-flip", action=argparse.BooleanOptionalAction, default=None)
    group.add_argument("--crop-area", type=float, nargs=2, metavar=("LOW", "HIGH"), default=None,
                       help="random resized crop: share of the area kept, e.g. 0.25 1")
    group.add_argument("--crop-aspect", type=float, nargs=2, metavar=("LOW", "HIGH"), default=None)
    group.add_argument("--scale-jitter", type=float, nargs=2, metavar=("LOW", "HIGH"), default=None,
                       help="ResNet scale jitter, shorter side for a 224-px image, e.g. 256 480")
    group.add_argument("--rotation", type=float, default=None, help="largest rotation in degrees")
    group.add_argument("--translation", type=float, default=None, help="largest shift, share of the size")
    for name in ("brightness", "contrast", "saturation"):
        group.add_argument(f"--{name}", type=float, default=None, help=f"{name} factor in [1-x, 1+x]")
    group.add_argument("--hue", type=float, default=None, help="hue shift, share of the colour circle (<= 0.5)")
    group.add_argument("--noise", type=float, default=None, help="largest Gaussian noise std, grey levels")
    group.add_argument("--erasing", type=float, default=None, help="probability of random erasing")
    group.add_argument("--augment-placement", choices=PLACEMENTS, default=None,
                       help="run image augmentation in the tf.data pipeline (default) or in the model")


def augment_overrides(arguments: argparse.Namespace) -> dict:
    """The options given on the command line by `add_augment_arguments`' flags (those left out are not included).

    Pairs come back as lists, as `TrainConfig.augment_options` stores them in `config.json`.
    """
    overrides = {name: getattr(arguments, name) for name in OPTION_NAMES if getattr(arguments, name, None) is not None}
    if getattr(arguments, "augment_placement", None) is not None:
        overrides["placement"] = arguments.augment_placement
    return {key: list(value) if isinstance(value, tuple) else value for key, value in overrides.items()}


def add_augment_preview_command(commands) -> None:
    """Adds `augment-preview DATA_DIR` to the subcommands `commands` (from `add_subparsers`)."""
    preview = commands.add_parser("augment-preview", help="a grid of training images and augmented samples (PNG)")
    preview.add_argument("data_dir", metavar="DATA_DIR")
    preview.add_argument("--out", default="augment-preview.png", help="the PNG to write (default: augment-preview.png)")
    preview.add_argument("--image-size", type=int, default=160, help="images are resized to this, as in training (default: 160)")
    preview.add_argument("--images", type=int, default=6, help="rows: training images, classes in turn (default: 6)")
    preview.add_argument("--samples", type=int, default=5, help="augmented samples of each (default: 5)")
    preview.add_argument("--seed", type=int, default=0)
    add_augment_arguments(preview, default_preset="standard")


def run_augment_preview(arguments: argparse.Namespace) -> Path:
    """`finetune augment-preview`: writes the grid of `arguments.data_dir` to `arguments.out` and says so."""
    from augment.preview import write_preview

    if arguments.images < 1 or arguments.samples < 1:
        raise FinetuneError(
            "`images` and `samples` must be at least 1. "
            f"Received: images={arguments.images}, samples={arguments.samples}"
        )
    overrides = augment_overrides(arguments)
    resolve(arguments.augment, **overrides)  # a bad option fails before the folder is read
    images, labels, class_names = load_preview_images(
        arguments.data_dir, arguments.images, image_size=arguments.image_size, seed=arguments.seed
    )
    path = write_preview(arguments.out, images, labels, class_names, preset=arguments.augment, seed=arguments.seed,
                         samples=arguments.samples, **overrides)
    print(f"Wrote {path}")
    return path


def pick_images(data_dir, count: int, *, seed: int = 0) -> tuple[list[str], list[int], list[str]]:
    """`count` training images of `data_dir`, taking the classes in turn: (paths, labels, class names).

    Args:
        data_dir: an image folder (one subfolder per class, or train/ val/ test/).
        count: how many; fewer when the folder has fewer training images.
        seed: which images of each class, in which order. Defaults to 0.
    """
    import numpy as np

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


def load_preview_images(data_dir, count: int, *, image_size: int, seed: int = 0):
    """The images `pick_images` chooses, decoded and resized whole as training loads them.

    Args:
        data_dir: an image folder.
        count: how many images.
        image_size: the square size they are resized to.
        seed: as for `pick_images`. Defaults to 0.

    Returns:
        (uint8 images [N, image_size, image_size, 3], int64 labels [N], class names); images
        that do not decode are left out.

    Raises:
        FinetuneError: none of the chosen images could be read (or the folder's own errors).
    """
    import numpy as np

    from finetune.data import load_images_for_prediction

    paths, labels, class_names = pick_images(data_dir, count, seed=seed)
    images, decoded, _ = load_images_for_prediction(paths, image_size)
    if len(decoded) == 0:
        raise FinetuneError(f"None of the chosen images of {data_dir} could be read.")
    keep = [paths.index(path) for path in decoded]
    return images, np.array([labels[i] for i in keep], dtype=np.int64), class_names
