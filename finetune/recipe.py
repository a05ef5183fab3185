"""The finetuning recipe of one data set: what the "auto" values of `TrainConfig` become, and why.

The regularisers that finetuning needs grow with the data: with a few images per class the
frozen features plus a linear head win and augmentation only loses (measured); with a thousand
per class finetuning over-fits without augmentation. Label smoothing and decoupled weight decay
are on at every size (they cost nothing); augmentation follows the size of the smallest class.

    recipe = finetuning_recipe(config, train_labels, num_classes)
    recipe.augment            # "light"
    recipe.reasons            # ["augmentation light: the smallest class has 800 training images ..."]
"""

from __future__ import annotations

import dataclasses

import numpy as np

from finetune.config import TrainConfig

AUTO = "auto"


@dataclasses.dataclass
class Recipe:
    """What finetuning trains with, resolved (config.json records it as `recipe`)."""

    augment: str  # a preset of augment.options
    augment_options: dict
    label_smoothing: float
    weight_decay: float
    dropout: float
    epochs: int
    patience: int
    reasons: list[str]

    def options(self):
        """The resolved `augment.AugmentOptions`."""
        import augment

        return augment.resolve(self.augment, **self.augment_options)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def augment_preset(config: TrainConfig, smallest_class: int | None) -> tuple[str, str]:
    """The augmentation preset of `config` (its "auto" decided by the smallest class's size) and the reason."""
    if config.augment != AUTO:
        return config.augment, f"augmentation {config.augment}: requested"
    threshold = config.auto_augment_per_class
    if smallest_class is not None and smallest_class >= threshold:
        return config.auto_augment_preset, (
            f"augmentation {config.auto_augment_preset}: the smallest class has {smallest_class} training images "
            f"(at least {threshold}), enough that finetuning over-fits without it")
    return "none", (f"augmentation none: the smallest class has {smallest_class} training images (fewer than "
                    f"{threshold}); with so few, augmentation lost accuracy in every measurement here")


def requested_preset(config: TrainConfig) -> str:
    """The preset that `config.augment` names, "none" standing for auto (whose choice depends on the data)."""
    return "none" if config.augment == AUTO else config.augment


def finetuning_recipe(config: TrainConfig, train_labels, num_classes: int) -> Recipe:
    """The recipe of `config` for these training labels."""
    counts = np.bincount(np.asarray(train_labels, dtype=np.int64), minlength=num_classes)
    preset, reason = augment_preset(config, int(counts.min()) if len(counts) else None)
    reasons = [reason]
    if config.label_smoothing:
        reasons.append(f"label smoothing {config.label_smoothing:g}")
    if config.weight_decay:
        reasons.append(f"decoupled weight decay {config.weight_decay:g}")
    return Recipe(preset, dict(config.augment_options), float(config.label_smoothing), float(config.weight_decay),
                  float(config.model.dropout), int(config.epochs), int(config.patience), reasons)
