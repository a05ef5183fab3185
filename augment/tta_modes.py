"""The test-time augmentation modes as data: their names, source sizes and view counts.

The modes, cheapest first (ties in `augment.tta.choose_tta` go to the earlier one):

| mode         | input ("source") size for a model of size S | views                                   |
|--------------|---------------------------------------------|-----------------------------------------|
| `none`       | S: the whole image, as trained               | 1                                       |
| `center`     | round(S * 256 / 224)                         | 1: the central S x S crop               |
| `flip`       | S                                            | 2: the whole image and its mirror image |
| `five_crop`  | round(S * 256 / 224)                         | 5: four corners and the centre          |
| `ten_crop`   | round(S * 256 / 224)                         | 10: the five and their mirror images    |
| `multiscale` | round(S * 640 / 224)                         | 50: the source resized so its side is   |
|              |                                              | S * {224, 256, 384, 480, 640} / 224,    |
|              |                                              | ten crops at each scale (ResNet)        |

This module imports neither Keras nor TensorFlow, so that code which only needs to know a
mode's sizes (resizing images for inference, listing modes in the app) starts fast;
`augment.tta` cuts the views and re-exports every name here.

    source_size("ten_crop", 224)     # 256: resize the whole image to this, then cut the views
    view_count("ten_crop")           # 10
    resolve_mode("auto", {"mode": "flip"})  # "flip": the mode a run recorded
"""

from __future__ import annotations

from augment.errors import check_choice

MODES = ("none", "center", "flip", "five_crop", "ten_crop", "multiscale")
# What `choose_tta` tries unless told otherwise: multiscale costs 50 forward passes of every
# validation image at up to 2.9x the training size, and is worth it only for models trained
# with matching scale augmentation; ask for it with modes=MODES.
AUTO_MODES = ("none", "center", "flip", "five_crop", "ten_crop")
COMBINES = ("mean", "geometric")
REFERENCE_SIZE = 224
CROP_SOURCE = 256
MULTISCALE = (224, 256, 384, 480, 640)


def scaled(size: int, image_size: int) -> int:
    """A size given for a 224-px model, for a model of `image_size`."""
    return int(round(image_size * size / REFERENCE_SIZE))


def source_size(mode: str, image_size: int, scales=MULTISCALE) -> int:
    """The size (square) the whole image is resized to before `mode` cuts its views of `image_size`."""
    check_choice("tta", mode, MODES)
    if mode in ("none", "flip"):
        return int(image_size)
    if mode == "multiscale":
        return scaled(max(scales), image_size)
    return scaled(CROP_SOURCE, image_size)


def view_count(mode: str, scales=MULTISCALE) -> int:
    """The number of views `mode` cuts of each image (with `scales` for multiscale)."""
    check_choice("tta", mode, MODES)
    return {"none": 1, "center": 1, "flip": 2, "five_crop": 5, "ten_crop": 10}.get(mode, 10 * len(scales))


def sources_per_pass(batch_size: int, mode: str, scales=MULTISCALE) -> int:
    """Images per forward pass so that a pass holds about `batch_size` views (at least one image)."""
    return max(1, int(batch_size) // view_count(mode, scales))


def resolve_mode(tta: str | None, recorded) -> str:
    """The mode to use: `tta` itself, or for "auto" (and None) the mode a run recorded (`config.json["tta"]`).

    `recorded` may be a mode, {"mode": mode, ...}, or None (then "none").
    """
    tta = "auto" if tta is None else tta
    if tta != "auto":
        check_choice("tta", tta, MODES)
        return tta
    if isinstance(recorded, dict):
        recorded = recorded.get("mode")
    recorded = recorded or "none"
    check_choice("tta", recorded, MODES)
    return recorded
