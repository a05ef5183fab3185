"""What training augmentation does, as data: the options, the named presets, and their description.

A preset is a named set of options; any option can be overridden on top of it:

    options = resolve("standard", mixup=0.2, rotation=0.0)
    describe("standard", mixup=0.2)    # the view distribution, for config.json

The presets (every option not named is off; see `AugmentOptions` for the units):

| preset     | what a training image goes through                                                  |
|------------|--------------------------------------------------------------------------------------|
| `none`     | nothing: the whole image, resized, as at test time                                   |
| `light`    | horizontal flip; a random crop keeping 64-100% of the area (aspect 4:5 to 5:4),      |
|            | which covers the views of the `flip`, `center`, `five_crop` and `ten_crop` TTA modes |
| `standard` | horizontal flip; random resized crop of 25-100% of the area (aspect 3:4 to 4:3);     |
|            | brightness, contrast, saturation +-20%, hue +-2% of the colour circle                |
| `strong`   | horizontal flip; random resized crop of 8-100% (the Inception recipe); rotation      |
|            | +-15 degrees; colour +-40%, hue +-10%; random erasing (2-25% of the area) of a       |
|            | quarter of the images; mixup (alpha 0.2) or cutmix (alpha 1.0), one per batch        |

Which to pick: `light` when the objects fill the frame the same way in every photo and there
are few images; `standard` for most photo collections; `strong` for many epochs of finetuning
on a small set, where overfitting is the problem. Vertical flips, ResNet scale jitter and
translation are off in every preset: turn them on when they preserve the label (textures,
microscopy, aerial images). Gaussian noise is off too: per-pixel Gaussian draws are the
costliest operation on a CPU (about 100 ms per batch of 32 at 224 px here).
"""

from __future__ import annotations

import dataclasses

from augment.errors import AugmentError

PLACEMENTS = ("dataset", "model")


@dataclasses.dataclass(frozen=True)
class AugmentOptions:
    # Mirror left-right with probability 0.5.
    horizontal_flip: bool = False
    # Mirror top-bottom with probability 0.5 (keeps the label of textures, not of most photos).
    vertical_flip: bool = False
    # Random resized crop: the share of the image's area a crop keeps, drawn uniformly from
    # (low, high); the crop is resized back to the training size. None: no crop.
    crop_area: tuple[float, float] | None = None
    # ... and the crop's aspect ratio (width / height), drawn log-uniformly from (low, high).
    crop_aspect: tuple[float, float] = (3 / 4, 4 / 3)
    # ResNet scale jitter: resize the shorter side to L, uniform in (low, high), then take a
    # random crop of the training size. The range is for a 224-px training size and is scaled
    # to the actual one, as ResNet's [256, 480]. None: off. Replaces `crop_area` when both are set.
    scale_jitter: tuple[float, float] | None = None
    # Largest rotation, in degrees either way (reflected borders).
    rotation: float = 0.0
    # Largest shift, as a share of the height and of the width (reflected borders).
    translation: float = 0.0
    # Brightness, contrast and saturation multiply by a factor drawn from [1 - x, 1 + x].
    brightness: float = 0.0
    contrast: float = 0.0
    saturation: float = 0.0
    # Hue turns by up to this share of the colour circle either way (at most 0.5).
    hue: float = 0.0
    # Gaussian noise: each image gets a standard deviation drawn from [0, noise], in grey levels (0..255).
    noise: float = 0.0
    # Random erasing (cutout): the probability that an image gets a rectangle filled with the ImageNet mean.
    erasing: float = 0.0
    # ... and the rectangle's share of the image's area, drawn from (low, high) (aspect 0.3 to 3.3).
    erasing_area: tuple[float, float] = (0.02, 0.25)
    # Mixup: blend pairs of images and their labels with a weight ~ Beta(mixup, mixup). 0: off.
    mixup: float = 0.0
    # CutMix: paste a box of another image, labels mixed by the box's area, Beta(cutmix, cutmix),
    # at most 1. With both mixup and cutmix on, each batch gets one of them, with equal chance.
    cutmix: float = 0.0
    # Where the image operations run: "dataset" (tf.data, in parallel on the CPU) or "model"
    # (a layer in front of the model while training, on the accelerator). Mixing always runs
    # in the dataset, since it needs the labels.
    placement: str = "dataset"

    def image_operations(self) -> bool:
        """Whether any per-image operation is on (mixing aside)."""
        return any(
            (
                self.horizontal_flip,
                self.vertical_flip,
                self.crop_area is not None,
                self.scale_jitter is not None,
                self.rotation,
                self.translation,
                self.brightness,
                self.contrast,
                self.saturation,
                self.hue,
                self.noise,
                self.erasing,
            )
        )

    def mixing(self) -> bool:
        return bool(self.mixup or self.cutmix)

    def to_dict(self) -> dict:
        return {
            key: list(value) if isinstance(value, tuple) else value for key, value in dataclasses.asdict(self).items()
        }


PRESETS: dict[str, dict] = {
    "none": {},
    "light": {"horizontal_flip": True, "crop_area": (0.64, 1.0), "crop_aspect": (0.8, 1.25)},
    "standard": {
        "horizontal_flip": True,
        "crop_area": (0.25, 1.0),
        "brightness": 0.2,
        "contrast": 0.2,
        "saturation": 0.2,
        "hue": 0.02,
    },
    "strong": {
        "horizontal_flip": True,
        "crop_area": (0.08, 1.0),
        "rotation": 15.0,
        "brightness": 0.4,
        "contrast": 0.4,
        "saturation": 0.4,
        "hue": 0.1,
        "erasing": 0.25,
        "mixup": 0.2,
        "cutmix": 1.0,
    },
}

_RANGES = ("crop_area", "crop_aspect", "scale_jitter", "erasing_area")


def resolve(preset: str | AugmentOptions | None = "standard", **overrides) -> AugmentOptions:
    """The options of `preset` with `overrides` applied, checked.

    Args:
        preset: a name from `PRESETS`, an `AugmentOptions`, or None (same as "none").
            Defaults to "standard".
        **overrides: fields of `AugmentOptions`; a value of None leaves the preset's.

    Raises:
        AugmentError: an unknown preset or option, or a value out of its range.

    Example:
    >>> resolve("light", vertical_flip=True).vertical_flip
    True
    """
    if isinstance(preset, AugmentOptions):
        base = dataclasses.asdict(preset)
    else:
        name = "none" if preset is None else str(preset)
        if name not in PRESETS:
            raise AugmentError(
                f"Unknown augmentation preset {name!r}. Allowed: {', '.join(PRESETS)}. Received: preset={name!r}"
            )
        base = dict(PRESETS[name])
    known = {field.name for field in dataclasses.fields(AugmentOptions)}
    for key, value in overrides.items():
        if key not in known:
            raise AugmentError(
                f"Unknown augmentation option `{key}`. Allowed: {', '.join(sorted(known))}. Received: {key}={value!r}"
            )
        if value is not None:
            base[key] = value
    for key in _RANGES:
        if base.get(key) is not None:
            base[key] = tuple(float(value) for value in base[key])
    options = AugmentOptions(**base)
    _check(options)
    return options


def _check(options: AugmentOptions) -> None:
    def fail(name, allowed):
        value = getattr(options, name)
        raise AugmentError(f"`{name}` must be {allowed}. Received: {name}={value!r}")

    def check_range(name, low_bound, high_bound, allowed):
        value = getattr(options, name)
        if value is None:
            return
        if len(value) != 2 or not low_bound <= value[0] <= value[1] <= high_bound:
            fail(name, allowed)

    check_range("crop_area", 1e-3, 1.0, "a (low, high) pair with 0 < low <= high <= 1, e.g. (0.25, 1.0)")
    check_range("crop_aspect", 1e-2, 1e2, "a (low, high) pair of positive ratios, low <= high, e.g. (0.75, 1.33)")
    check_range("scale_jitter", 1.0, 1e5, "a (low, high) pair of sizes for a 224-px image, low <= high, e.g. (256, 480)")
    check_range("erasing_area", 0.0, 1.0, "a (low, high) pair with 0 <= low <= high <= 1, e.g. (0.02, 0.25)")
    if options.scale_jitter is not None and options.scale_jitter[0] < 224:
        fail("scale_jitter", "at least 224 (the reference training size) at both ends, e.g. (256, 480)")
    for name, high in (("rotation", 180.0), ("translation", 1.0), ("brightness", 1.0), ("contrast", 1.0),
                       ("saturation", 1.0), ("hue", 0.5), ("noise", 255.0), ("erasing", 1.0)):
        if not 0.0 <= float(getattr(options, name)) <= high:
            fail(name, f"between 0 and {high:g}")
    check_mixing(options.mixup, options.cutmix)
    if options.placement not in PLACEMENTS:
        fail("placement", f"one of {', '.join(PLACEMENTS)}")


def check_mixing(mixup: float, cutmix: float) -> None:
    """Raises an `AugmentError` unless `mixup` and `cutmix` are Beta parameters mixing can use.

    One check for `resolve` and `augment.mixing.Mixer`, so that both accept the same values.

    Args:
        mixup: 0 (off) or a positive Beta parameter.
        cutmix: 0 (off) or a Beta parameter in (0, 1].
    """
    # Written as "not x >= 0" so that NaN fails too.
    if not mixup >= 0.0:
        raise AugmentError(f"`mixup` must be 0 (off) or a positive Beta parameter, e.g. 0.2. Received: mixup={mixup!r}")
    if not 0.0 <= cutmix <= 1.0:
        raise AugmentError(
            f"`cutmix` must be 0 (off) or a Beta parameter in (0, 1], e.g. 1.0. Received: cutmix={cutmix!r}"
        )


def describe(preset: str | AugmentOptions | None = "standard", **overrides) -> dict:
    """The view distribution training uses, as plain JSON data for `config.json`.

    Returns:
        {"preset": name or None, "options": every option, "views": a summary}, where "views"
        says the share of the image's area a training view covers ("area": [low, high]), its
        aspect range, and which flips it includes.
    """
    options = resolve(preset, **overrides)
    if options.scale_jitter is not None:
        low, high = options.scale_jitter
        area, aspect = [(224.0 / high) ** 2, (224.0 / low) ** 2], [1.0, 1.0]
    elif options.crop_area is not None:
        area, aspect = list(options.crop_area), list(options.crop_aspect)
    else:
        area, aspect = [1.0, 1.0], [1.0, 1.0]
    return {
        "preset": None if isinstance(preset, AugmentOptions) else (preset or "none"),
        "options": options.to_dict(),
        "views": {
            "area": [round(value, 4) for value in area],
            "aspect": [round(value, 4) for value in aspect],
            "horizontal_flip": options.horizontal_flip,
            "vertical_flip": options.vertical_flip,
            "mixing": options.mixing(),
        },
    }
