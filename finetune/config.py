"""The configuration of a run, top to bottom, with commented defaults.

Every run saves this, resolved, as `config.json`; `TrainConfig.from_dict` reads it back.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path


def finetune_home() -> Path:
    """Where weights and decoded-image caches live: `$FINETUNE_HOME`, default `~/.cache/finetune`."""
    return Path(os.environ.get("FINETUNE_HOME", Path.home() / ".cache" / "finetune")).expanduser()


@dataclasses.dataclass
class DataConfig:
    # A folder with one subfolder per class (optionally under train/, val/, test/), or `tfds:NAME`.
    source: str = ""
    # Share of each class held out for validation when the folder has no val/ split.
    val_fraction: float = 0.2
    # Images are resized (whole, not cropped) to image_size x image_size; None: the backbone's default.
    image_size: int | None = None
    # Images larger than this many megapixels are skipped as possible decompression bombs.
    max_megapixels: float = 89.0
    # Keep decoded, resized images on disk so later epochs and later runs do not decode again.
    cache: bool = True


@dataclasses.dataclass
class ModelConfig:
    # A name from `finetune zoo`.
    backbone: str = "mobilenet_v2_torchvision"
    # "imagenet", "none" (from scratch) or a path to a weights file.
    weights: str = "imagenet"
    # Width multiplier for the MobileNets (tests use 0.35); None: the backbone's default.
    alpha: float | None = None
    # Dropout before the classifier.
    dropout: float = 0.2


@dataclasses.dataclass
class TrainConfig:
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    # Every random choice (split, shuffling, initialisation) derives from this.
    seed: int = 0
    batch_size: int = 32
    # Epochs of finetuning the top of the backbone after the head is fit on cached features
    # (0: keep the backbone frozen; the head alone is then the model).
    epochs: int = 10
    # How many freeze groups (top to bottom, from the zoo spec) to unfreeze when finetuning.
    unfreeze_groups: int = 2
    # Learning rate of the finetuning stage (Adam); the course: 10x lower than training from scratch.
    learning_rate: float = 1e-4
    # Early stopping: epochs without improvement of validation loss before stopping.
    patience: int = 3
    # Inverse regularisation strengths tried for the head on cached features; the best on
    # validation data is kept.
    head_c_grid: tuple[float, ...] = (0.01, 0.1, 1.0, 10.0)
    # Where the run directory goes; None: models/<data-name>-<backbone>-<timestamp>.
    out: str | None = None
    # Show progress bars.
    verbose: int = 1

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "TrainConfig":
        values = dict(values)
        data = DataConfig(**values.pop("data", {}))
        model = ModelConfig(**values.pop("model", {}))
        known = {field.name for field in dataclasses.fields(cls)}
        values = {key: value for key, value in values.items() if key in known}
        if "head_c_grid" in values:
            values["head_c_grid"] = tuple(values["head_c_grid"])
        return cls(data=data, model=model, **values)
