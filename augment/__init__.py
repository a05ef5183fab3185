"""Augmentation ops and presets, mixup/cutmix, test-time crop sets, preview grids.

Training:

    import augment
    augmenter = augment.build_augmenter("standard", seed=0)             # None for "none"
    train = make_dataset(images, labels, 32, shuffle=True, seed=0, augment=augmenter)
    train = augment.mix_dataset(train, num_classes, mixup=0.2, seed=0)  # soft labels
    loss, metrics = augment.loss_and_metrics(soft_labels=True)
    augment.describe("standard", mixup=0.2)                             # for config.json

Testing (`augment.tta`):

    tta_model = augment.tta.build_tta_model(model, "ten_crop")
    mode, accuracies = augment.tta.choose_tta(model, images_at, val_labels)

The presets are documented in `augment.options`. This package needs the TensorFlow backend
(it feeds tf.data). Names load on first use, so `augment.options` (argument parsing) does
not import TensorFlow; `augment.register_layers()` registers the Keras layers for loading
saved models (importing `augment.tta` or `augment.augmenter` does it too).
"""

import importlib

_EXPORTS = {
    "PRESETS": "augment.options",
    "AugmentOptions": "augment.options",
    "describe": "augment.options",
    "resolve": "augment.options",
    "Augmenter": "augment.augmenter",
    "build_augmenter": "augment.augmenter",
    "with_augmentation": "augment.augmenter",
    "ColorJitter": "augment.layers",
    "Cutout": "augment.layers",
    "RandomGaussianNoise": "augment.layers",
    "RandomView": "augment.layers",
    "Mixer": "augment.mixing",
    "loss_and_metrics": "augment.mixing",
    "mix_batch": "augment.mixing",
    "mix_dataset": "augment.mixing",
    "one_hot_dataset": "augment.mixing",
    "soft_labels": "augment.mixing",
}
__all__ = sorted([*_EXPORTS, "register_layers", "tta"])


def __getattr__(name):
    if name == "tta":
        return importlib.import_module("augment.tta")
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'augment' has no attribute {name!r}")


def register_layers() -> None:
    """Imports every module with registered Keras layers, so `keras.saving.load_model(..., safe_mode=True)` finds them."""
    for module in ("augment.layers", "augment.augmenter", "augment.tta"):
        importlib.import_module(module)
