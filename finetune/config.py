"""The configuration of a run, top to bottom, with commented defaults, and every list of choices.

Every run saves this, resolved, as `config.json`; `TrainConfig.from_dict` reads it back. This is
the one source of the defaults: functions take these objects (or use a field as the default of
a parameter, e.g. `max_megapixels=DataConfig.max_megapixels`), and the command line reads its
defaults and choices from here. A leaf module: it imports nothing of finetune, Keras or
TensorFlow, so reading a default costs nothing. (The test-time augmentation modes are
augment's own: `augment.tta_modes.MODES`.)
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path


def finetune_home() -> Path:
    """Where weights and decoded-image caches live: `$FINETUNE_HOME`, default `~/.cache/finetune`."""
    return Path(os.environ.get("FINETUNE_HOME", Path.home() / ".cache" / "finetune")).expanduser()


# What to freeze and what to train (finetune.policy): auto measures size and similarity, then
# picks one of the other four from the policy table; full trains every layer.
STRATEGIES = ("auto", "linear", "finetune_top", "finetune_most", "multistage_linear", "full")
# Learning-rate schedules and warmups of finetuning (finetune.schedules).
SCHEDULES = ("constant", "step", "exponential", "inverse_time", "cosine", "cyclic", "snapshot")
WARMUPS = ("none", "constant", "linear")
# Export (finetune.export): file formats, TFLite quantisations, and which models of the runs
# become ensemble members (each run's snapshots, or each run's best model.keras).
EXPORT_FORMATS = ("keras", "savedmodel", "tflite", "onnx")
QUANTIZATIONS = ("none", "float16", "dynamic")
MEMBER_KINDS = ("snapshots", "best")


@dataclasses.dataclass
class DataConfig:
    # A folder with one subfolder per class (optionally under train/, val/, test/), or `tfds:NAME`.
    source: str = ""
    # Share of each class held out for validation when the folder has no val/ split.
    val_fraction: float = 0.2
    # Images are resized (whole, not cropped) to image_size x image_size; None: chosen from the data
    # (finetune.input_size): the candidate sizes no larger than the backbone's default, and no more
    # than `max_upscale` times the images' median short side (rounded up to the next candidate), are
    # each scored by the cross-validated stage search on the search's subsample; the smallest size
    # within `size_margin` of the best score wins (cost grows with the square of the size). Measured
    # (issue 11): scikit-learn's 8-px digits upscaled to 224 px reached 0.843, at 128 px 0.967.
    image_size: int | None = None
    candidate_sizes: tuple[int, ...] = (96, 128, 160, 192, 224)
    # Upscaling a small image beyond about 4x adds pixels but no information, only cost.
    max_upscale: float = 4.0
    # Accuracy points (as a share) a smaller size may trail the best by and still be chosen: about
    # the standard error of a cross-validated accuracy over 1,000 images.
    size_margin: float = 0.01
    # Images larger than this many megapixels are skipped as possible decompression bombs.
    max_megapixels: float = 89.0
    # Listing a data folder stops with an error past this many files: a folder that is a whole disk
    # by mistake would otherwise be listed for hours. Ten times the largest folder tried here.
    max_files: int = 1_000_000
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
class PolicyConfig:
    # "Quite a lot" of data: at least this many training images in the smallest class. Below it,
    # finetuning millions of weights overfits or does not pay, and a linear classifier on frozen
    # features wins. Measured on Fashion-MNIST at 96 px (benchmarks/results/finetune_small.md,
    # finetune_auto_rerun.md): at 300 per class finetune_most reached 0.872 against the multi-stage
    # head's 0.871 at 1.9x its time; at 800 per class 0.909 against 0.8865. The crossover lies
    # between: 500.
    lots_per_class: int = 500
    # "Similar to ImageNet": the top stage's cross-validated linear accuracy is within this
    # margin of the best lower stage's. Erring towards "different" is cheap with little data
    # (the multi-stage search still keeps the top stage when it is best).
    similarity_margin: float = 0.01
    # The cross-validated search over stages uses at most this many images per class: enough to
    # compare stages, and it bounds the cost on large data sets.
    search_max_per_class: int = 100
    # Share of the backbone's freeze groups that finetune_top and finetune_most unfreeze.
    top_fraction: float = 0.15
    most_fraction: float = 0.75


@dataclasses.dataclass
class TrainConfig:
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    policy: PolicyConfig = dataclasses.field(default_factory=PolicyConfig)
    # One of STRATEGIES: auto (measure size and similarity, then pick), linear, finetune_top,
    # finetune_most, multistage_linear or full; see finetune.policy.
    strategy: str = "auto"
    # Every random choice (split, shuffling, initialisation) derives from this.
    seed: int = 0
    batch_size: int = 32
    # Epochs of finetuning after the head is fit on cached features (finetuning strategies only),
    # the cosine decay spread over them. Measured (Fashion-MNIST, 1,000 images per class, 96 px,
    # finetune_most with light augmentation): validation accuracy 0.889 after 4 epochs, 0.906 after
    # 6 and 0.910 after 8 (test 0.912); an epoch there cost about 2.5 forward passes over the images.
    epochs: int = 8
    # Freeze groups (top to bottom, from the zoo spec) to unfreeze when finetuning; None: the
    # strategy's share of the backbone's groups.
    unfreeze_groups: int | None = None
    # Learning rate of the head while finetuning (Adam).
    learning_rate: float = 1e-3
    # The backbone learns this much slower than the head: its features are already good, and
    # large updates would destroy them before the head adapts (the course: 1/10 of the rate).
    backbone_learning_rate_multiplier: float = 0.1
    # Early stopping: epochs without improvement of validation loss before stopping.
    patience: int = 3
    # Augmentation while finetuning (heads are fit on features of the images as they are): "auto",
    # or a preset of augment.options (none, light, standard, strong) with overrides of its options,
    # e.g. {"mixup": 0.2}. auto regularises by data size: `auto_augment_preset` where the smallest
    # class has at least `auto_augment_per_class` training images, none below. Measured here: with
    # 30 images per class every preset lost accuracy (benchmarks/results/augment_finetune.md); with
    # 1,000 per class finetuning without augmentation over-fitted (training 0.996, validation 0.898,
    # test 0.8865) and light augmentation lifted the test accuracy to 0.913 (issue 11,
    # benchmarks/results/finetune.md).
    augment: str = "auto"
    augment_options: dict = dataclasses.field(default_factory=dict)
    auto_augment_preset: str = "light"
    auto_augment_per_class: int = 100
    # Label smoothing of the finetuning loss (Szegedy et al.): targets of 1 - e + e/C and e/C keep the
    # logits from growing without bound on images the model already fits, a regulariser that costs
    # nothing. 0.1 is the common value (Inception, timm's recipes); heads on features are unaffected.
    label_smoothing: float = 0.1
    # Decoupled weight decay (AdamW, Loshchilov & Hutter): each step shrinks every kernel by
    # weight_decay x the head's learning rate, apart from the gradient (biases and BatchNorm are
    # exempt). 0: off.
    weight_decay: float = 0.01
    # Learning-rate schedule of finetuning (one of SCHEDULES, see finetune.schedules): constant,
    # step, exponential, inverse_time, cosine, cyclic or snapshot, after `warmup_epochs` of warmup
    # (one of WARMUPS: linear, constant or none); schedule_options go to the schedule
    # (e.g. {"factor": 0.1}).
    schedule: str = "cosine"
    warmup_epochs: int = 1
    warmup: str = "linear"
    schedule_options: dict = dataclasses.field(default_factory=dict)
    # Snapshot ensemble: M >= 2 trains M cosine cycles (no early stopping) and saves a model at
    # the end of each into run/snapshots/; 0: off.
    snapshots: int = 0
    # Test-time augmentation: "auto" measures every crop mode on validation data and records the
    # best (ties to the cheaper); a mode of augment.tta forces it; "none" skips the measurement.
    tta: str = "auto"
    # ... measured on at most this many validation images per class (stratified, seeded): the modes
    # cost up to 10 forward passes per image, and 100 per class tell them apart as well as the
    # stage search tells stages apart.
    tta_max_per_class: int = 100
    # Temperature scaling (finetune.calibration): one scalar fit after training on held-out
    # predictions (validation images the model did not fit, or the stage search's out-of-fold
    # logits for heads fit on every labelled image), stored in model.keras; False keeps the raw
    # softmax. It never changes a label, only how sure the model says it is.
    calibrate: bool = True
    # "None of these": the share of held-out images of known classes whose calibrated top
    # probability must clear the unknown threshold (finetune.openset). 0.95 keeps 95% of them;
    # the rest, and images of no class, are answered "unknown". 0 records no threshold.
    unknown_keep: float = 0.95
    # Inverse regularisation strengths tried for heads on cached features; the best by
    # cross-validation (linear strategies) or on validation data (the head finetuning starts from).
    head_c_grid: tuple[float, ...] = (0.01, 0.1, 1.0)
    # Linear strategies fit their chosen head on the training and validation images together,
    # after choosing it by cross-validation on both: with little data every labelled image
    # counts (+1 to 2 points measured here). The validation metrics of such a run are not held
    # out (metrics.json: val.held_out false); the cross-validated accuracy is the estimate.
    linear_fit_on_val: bool = True
    # ... while the validation split is small. With at least this many validation images in
    # every class it stays held out (heads fit on the training images only): 50 images per class
    # estimate accuracy to about +-1.3 points on 10 classes, worth more than the 1-2 points the
    # refit gains there, and --tta auto then chooses on images the model did not fit. (Issue
    # measured: at 1,000 training images per class, the refit head's validation figure read 0.9465
    # for a test accuracy of 0.894.)
    held_out_val_per_class: int = 50
    # Where the run directory goes; None: models/<data-name>-<backbone>-<timestamp>.
    out: str | None = None
    # An `out` folder that holds a finished run (its metrics.json written) is refused unless this is
    # set; then that run's files are removed first. An unfinished one resumes either way.
    overwrite: bool = False
    # Progress on stderr: 0 nothing; 1 our progress lines, with bars on a terminal and one line per
    # epoch (or per 1,000 images) into a log file or a pipe (finetune.progress).
    verbose: int = 1
    # Also write TensorBoard logs of the finetuning epochs (losses, accuracies, learning rate, update
    # ratios) into run/tensorboard/: `tensorboard --logdir models/` compares runs. Off: history.csv and
    # curves.png already hold the curves, and the event files cost disk and a little time per epoch.
    tensorboard: bool = False

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "TrainConfig":
        values = dict(values)
        data_values = dict(values.pop("data", {}))
        if "candidate_sizes" in data_values:
            data_values["candidate_sizes"] = tuple(data_values["candidate_sizes"])
        data = DataConfig(**data_values)
        model = ModelConfig(**values.pop("model", {}))
        policy = PolicyConfig(**values.pop("policy", {}))
        known = {field.name for field in dataclasses.fields(cls)}
        values = {key: value for key, value in values.items() if key in known}
        if "head_c_grid" in values:
            values["head_c_grid"] = tuple(values["head_c_grid"])
        return cls(data=data, model=model, policy=policy, **values)


@dataclasses.dataclass
class SearchConfig:
    """Hyperparameter search (`finetune search`, finetune.search): random, log-scale, coarse to fine."""

    # The knobs to search (names of finetune.search.space.PARAMETERS); None: the strategy's defaults
    # (finetuning: rates, weight decay, dropout, label smoothing, augmentation; linear heads: C).
    params: tuple[str, ...] | None = None
    # Ranges replacing the built-in ones: {"learning_rate": (1e-5, 1e-3)}; categorical: a list.
    ranges: dict = dataclasses.field(default_factory=dict)
    # Trials in all, coarse and fine together; the coarse stage gets `coarse_share` of them.
    trials: int = 20
    coarse_share: float = 0.7
    # A wall-clock budget for the whole search, or None (only `trials` bounds it). The coarse stage
    # gets `coarse_budget_share` of it; a trial that would end after the budget is not started,
    # except the first fine one (a best configuration measured on the whole data is the point).
    budget_minutes: float | None = None
    coarse_budget_share: float = 0.5
    # Coarse finetuning trials are short (the course: a few epochs first) and train on at most this
    # many images per class; trials stopped early by the pruner (the median of earlier trials at
    # the same epoch) or the divergence guard. Fine trials train on the whole training split for
    # `fine_epochs` (None: TrainConfig.epochs).
    coarse_epochs: int = 2
    coarse_max_per_class: int | None = 200
    fine_epochs: int | None = None
    # The fine stage samples within the range of the best `top_trials` coarse trials, widened by
    # `widen_share` of the coarse range on each side (log scale where sampled log-uniform).
    top_trials: int = 3
    widen_share: float = 0.1
    # A best value in the outer `edge_share` of its range is reported, with a widened range to try.
    edge_share: float = 0.1
    # Where trials.csv, search.png, best.json and the resumable study go; None: models/search-<data>-<time>.
    out: str | None = None


@dataclasses.dataclass
class CheckConfig:
    """The babysitting checks of `finetune check` (finetune.diagnostics), before a long training."""

    # Top freeze groups of a pretrained backbone trained in the checks (from scratch, every layer
    # trains): enough to show that gradients reach the backbone, cheap enough for a quick check.
    unfreeze_groups: int = 2
    # The initial loss is measured on this many images (or a batch, if larger), the classes in turn.
    initial_loss_images: int = 64
    # The initial loss passes within this relative distance of -ln(1/C).
    initial_loss_tolerance: float = 0.25
    # The course: a model must be able to overfit a handful of images (about 20) to ~100%
    # training accuracy, or the data, labels, model or loss are broken.
    subset_size: int = 20
    # At most this many epochs (of one batch: the whole subset) to overfit it, at this rate (Adam).
    overfit_epochs: int = 60
    overfit_learning_rate: float = 1e-3
    # The learning-rate range test (Smith): one batch per rate, growing exponentially from
    # range_start to range_end over range_steps batches; it stops early when the loss explodes.
    range_steps: int = 100
    range_start: float = 1e-7
    range_end: float = 1.0
    # Where the range test's plot goes (lr_range.png); None: no plot.
    out_dir: str | None = "check"


@dataclasses.dataclass
class ExportConfig:
    """One model or an ensemble as a file (finetune.export), with a parity check."""

    # Which models of the runs are the members (one of MEMBER_KINDS); None: the snapshots of a
    # single run that has them, else each run's best model.keras.
    members: str | None = None
    # One of EXPORT_FORMATS.
    format: str = "keras"
    # One of QUANTIZATIONS; TFLite only.
    quantize: str = "none"
    # A test-time augmentation mode (augment.tta_modes.MODES) built into the graph; None: none.
    tta: str | None = None
    # The largest probability difference the parity check accepts; None: the quantisation's own.
    tolerance: float | None = None
