"""Augmentation ops and presets, mixup/cutmix, test-time crop sets, preview grids.

Training:

    import augment
    augmenter = augment.build_augmenter("standard", seed=0)             # None for "none"
    train = make_dataset(images, labels, 32, shuffle=True, seed=0, augment=augmenter)
    train = augment.mix_dataset(train, num_classes, mixup=0.2, seed=0)  # soft labels
    loss, metrics = augment.loss_and_metrics(soft_labels=True)
    augment.describe("standard", mixup=0.2)                             # for config.json

Testing (`augment.tta`; its modes and sizes alone in `augment.tta_modes`):

    tta_model = augment.tta.build_tta_model(model, "ten_crop")
    mode, accuracies = augment.tta.choose_tta(model, images_at, val_labels)

Looking (`augment.preview`): `preview_grid(images, labels, class_names, preset="strong")`.

The presets are documented in `augment.options`. A caller's mistake raises `AugmentError`
(a `ValueError`). This package is a library of its own: it imports nothing of `finetune`.
It needs the TensorFlow backend (it feeds tf.data), but `import augment` does not import
TensorFlow: the options, the presets and the errors are plain Python and load now, the rest
on first use. `augment.register_layers()` registers the Keras layers for loading saved
models (importing `augment.tta` or `augment.augmenter` does it too).
"""

from augment.errors import AugmentError
from augment.options import PRESETS, AugmentOptions, describe, resolve

# Names of the modules that import Keras and TensorFlow (seconds of start-up), loaded by
# `__getattr__` when first used, so that argument parsing and the app start fast.
_AUGMENTER_NAMES = ("Augmenter", "build_augmenter", "with_augmentation")
_LAYER_NAMES = ("ColorJitter", "Cutout", "RandomGaussianNoise", "RandomView")
_MIXING_NAMES = ("Mixer", "loss_and_metrics", "mix_batch", "mix_dataset", "one_hot_dataset", "soft_labels")

__all__ = sorted(
    [
        "AugmentError", "AugmentOptions", "PRESETS", "describe", "resolve", "register_layers", "tta",
        *_AUGMENTER_NAMES, *_LAYER_NAMES, *_MIXING_NAMES,
    ]
)


def __getattr__(name):
    if name == "tta":
        # `import augment.tta` sets the attribute, so this runs once.
        import augment.tta as tta_module

        return tta_module
    if name in _AUGMENTER_NAMES:
        from augment import augmenter as module
    elif name in _LAYER_NAMES:
        from augment import layers as module
    elif name in _MIXING_NAMES:
        from augment import mixing as module
    else:
        raise AttributeError(f"module 'augment' has no attribute {name!r}")
    return getattr(module, name)


def register_layers() -> None:
    """Imports every module with registered Keras layers, so `keras.saving.load_model(..., safe_mode=True)` finds them."""
    from augment import augmenter, layers, tta  # noqa: F401  importing a module registers its layers
