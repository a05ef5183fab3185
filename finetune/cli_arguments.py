"""The arguments of the `finetune` command line, and the config objects built from them.

Every default and every list of choices comes from `finetune.config` (the test-time augmentation
modes from `augment.tta_modes`), so the command line cannot drift from the Python API. Help texts
show the default with argparse's `%(default)s`, which also shows a command's own default (`demo`
trains for 0 epochs). Defaults of None mean "decided later" (the backbone's image size, the
strategy's share of freeze groups) and stay None here. Nothing here imports Keras or TensorFlow:
`finetune --help` starts fast.
"""

from __future__ import annotations

import argparse

from augment.tta_modes import COMBINES, MODES
from finetune.config import (
    EXPORT_FORMATS,
    MEMBER_KINDS,
    QUANTIZATIONS,
    SCHEDULES,
    STRATEGIES,
    WARMUPS,
    CheckConfig,
    DataConfig,
    ExportConfig,
    ModelConfig,
    PolicyConfig,
    SearchConfig,
    TrainConfig,
)

# "auto": training measures the modes on validation data; evaluate and predict use the one it chose.
TTA_CHOICES = ("auto", *MODES)


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """The backbone (`ModelConfig`), its input size and the batch size: shared by train, policy and check."""
    parser.add_argument("--backbone", default=ModelConfig.backbone, help="a name from `finetune zoo` (default: %(default)s)")
    parser.add_argument("--weights", default=ModelConfig.weights,
                        help="imagenet, none (from scratch) or a weights file (default: %(default)s)")
    parser.add_argument("--alpha", type=float, default=ModelConfig.alpha, help="width multiplier of the MobileNets")
    parser.add_argument("--image-size", type=int, default=DataConfig.image_size,
                        help="input size in pixels (default: train and policy choose it from the data, scoring "
                             "candidate sizes; check uses the backbone's)")
    parser.add_argument("--batch-size", type=int, default=TrainConfig.batch_size, help="images per batch (default: %(default)s)")


def _add_val_fraction(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--val-fraction", type=float, default=DataConfig.val_fraction,
                        help="validation share when there is no val/ folder (default: %(default)s)")


def _add_input_bounds(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--max-megapixels", type=float, default=DataConfig.max_megapixels,
                        help="skip larger images (decompression bombs) (default: %(default)s)")
    parser.add_argument("--max-files", type=int, default=DataConfig.max_files,
                        help="stop listing a data folder past this many files (default: %(default)s)")


def _add_seed(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--seed", type=int, default=TrainConfig.seed,
                        help="of the split, shuffling and initialisation (default: %(default)s)")


def add_policy_arguments(parser: argparse.ArgumentParser) -> None:
    """The thresholds of the transfer policy (`PolicyConfig`)."""
    parser.add_argument("--lots-per-class", type=int, default=PolicyConfig.lots_per_class,
                        help="policy: a smallest class with at least this many training images is 'quite a lot' "
                             "(default: %(default)s)")
    parser.add_argument("--similarity-margin", type=float, default=PolicyConfig.similarity_margin,
                        help="policy: the top stage within this cross-validated accuracy of the best lower stage means "
                             "'similar' (default: %(default)s)")


def add_schedule_arguments(parser: argparse.ArgumentParser) -> None:
    """The learning-rate schedule of finetuning, snapshots and the TTA mode to record (`TrainConfig`)."""
    group = parser.add_argument_group("finetuning schedule (see finetune.schedules)")
    group.add_argument("--schedule", default=TrainConfig.schedule, choices=SCHEDULES,
                       help="learning-rate decay of finetuning (default: %(default)s)")
    group.add_argument("--warmup-epochs", type=int, default=TrainConfig.warmup_epochs,
                       help="epochs of warmup before the decay (default: %(default)s)")
    group.add_argument("--warmup", choices=WARMUPS, default=TrainConfig.warmup,
                       help="gradual (linear) or constant warmup, or none (default: %(default)s)")
    group.add_argument("--decay-factor", type=float, default=None, help="step decay: multiply the rate by this (default: 0.1)")
    group.add_argument("--decay-every", type=int, default=None, help="step decay: every N epochs")
    group.add_argument("--decay-milestones", type=int, nargs="+", default=None, help="step decay: at these epochs instead")
    group.add_argument("--decay-rate", type=float, default=None, help="exponential and inverse_time decay rate per epoch")
    group.add_argument("--snapshots", type=int, default=TrainConfig.snapshots,
                       help="snapshot ensemble: M >= 2 cosine cycles, one saved model per cycle (default: %(default)s, off)")
    group.add_argument("--tta", default=TrainConfig.tta, choices=TTA_CHOICES,
                       help="test-time augmentation to record: auto measures each mode on validation data "
                            "(default: %(default)s)")


def add_training_arguments(parser: argparse.ArgumentParser) -> None:
    """What `train` and `demo` take before the augmentation options: model, strategy, rates, policy, schedule."""
    add_model_arguments(parser)
    parser.add_argument("--epochs", type=int, default=TrainConfig.epochs,
                        help="finetuning epochs after the head (0: head only; default: %(default)s)")
    parser.add_argument("--strategy", default=TrainConfig.strategy, choices=STRATEGIES,
                        help="what to freeze and train (default: %(default)s, picked by `finetune policy`)")
    parser.add_argument("--unfreeze-groups", type=int, default=TrainConfig.unfreeze_groups,
                        help="top freeze groups to finetune (default: the strategy's share of the backbone)")
    parser.add_argument("--learning-rate", type=float, default=TrainConfig.learning_rate,
                        help=f"head learning rate while finetuning; the backbone's is "
                             f"{TrainConfig.backbone_learning_rate_multiplier:g} times that (default: %(default)s)")
    parser.add_argument("--label-smoothing", type=float, default=TrainConfig.label_smoothing,
                        help="label smoothing of the finetuning loss (default: %(default)s)")
    parser.add_argument("--weight-decay", type=float, default=TrainConfig.weight_decay,
                        help="decoupled weight decay while finetuning, 0: off (default: %(default)s)")
    parser.add_argument("--dropout", type=float, default=ModelConfig.dropout,
                        help="dropout before the classifier while finetuning (default: %(default)s)")
    add_policy_arguments(parser)
    add_schedule_arguments(parser)


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    """What `train` and `demo` take after the augmentation options: stopping, data, seed, output."""
    parser.add_argument("--patience", type=int, default=TrainConfig.patience,
                        help="early-stopping patience in epochs (default: %(default)s)")
    _add_val_fraction(parser)
    parser.add_argument("--held-out-val-per-class", type=int, default=TrainConfig.held_out_val_per_class,
                        help="with this many validation images in every class, linear heads are not refit on them, so "
                             "the validation figures stay an honest estimate (default: %(default)s)")
    _add_input_bounds(parser)
    parser.add_argument("--no-cache", action="store_true", help="do not cache decoded images on disk")
    _add_seed(parser)
    parser.add_argument("--out", default=TrainConfig.out, help="run directory (default: models/<data>-<backbone>-<time>)")
    parser.add_argument("--overwrite", action="store_true",
                        help="train again into an --out that holds a finished run, replacing its files (an unfinished "
                             "one, killed mid-way, resumes without it)")
    parser.add_argument("--quiet", action="store_true", help="no progress output")
    parser.add_argument("--tensorboard", action="store_true",
                        help="also write TensorBoard logs of the finetuning epochs into RUN_DIR/tensorboard")
    parser.add_argument("--no-calibrate", action="store_true",
                        help="do not fit a temperature on held-out predictions (probabilities stay as trained)")
    parser.add_argument("--unknown-keep", type=float, default=TrainConfig.unknown_keep, metavar="SHARE",
                        help="the 'unknown' threshold keeps this share of held-out images of known classes, in (0, 1] "
                             "(default: %(default)s)")


def add_config_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default=None, metavar="FILE",
                        help="a configuration as JSON (a search's best.json, or a run's config.json): its values "
                             "replace the defaults; options given here replace its values; DATA_DIR is the data")


def add_search_arguments(parser: argparse.ArgumentParser) -> None:
    """What `search` takes besides the training options its trials start from."""
    group = parser.add_argument_group("search")
    group.add_argument("--trials", type=int, default=SearchConfig.trials,
                       help="trials in all, coarse and fine (default: %(default)s)")
    group.add_argument("--budget-minutes", type=float, default=SearchConfig.budget_minutes,
                       help="wall-clock budget; no trial starts that would end after it (default: none)")
    group.add_argument("--params", default=None,
                       help="comma-separated knobs to search (default: learning_rate, backbone_learning_rate_multiplier, "
                            "weight_decay, dropout, label_smoothing, augment when finetuning; head_c for linear "
                            "heads; also mixup, cutmix, unfreeze_groups, image_size)")
    group.add_argument("--range", action="append", default=[], metavar="NAME=LOW:HIGH",
                       help="replace a knob's range (NAME=A,B,C for choices); repeatable")
    group.add_argument("--coarse-epochs", type=int, default=SearchConfig.coarse_epochs,
                       help="epochs of a coarse trial (default: %(default)s)")
    group.add_argument("--coarse-max-per-class", type=int, default=SearchConfig.coarse_max_per_class,
                       help="training images per class of a coarse trial (default: %(default)s)")
    group.add_argument("--fine-epochs", type=int, default=SearchConfig.fine_epochs,
                       help="epochs of a fine trial (default: --epochs)")
    group.add_argument("--json", action="store_true", help="print search.json")


def search_config(arguments) -> SearchConfig:
    from finetune.errors import FinetuneError
    from finetune.search.space import parse_range

    ranges = {}
    for item in arguments.range:
        name, separator, text = item.partition("=")
        if not separator:
            raise FinetuneError(f"--range takes NAME=LOW:HIGH (or NAME=A,B for choices). Received: --range {item}")
        ranges[name.strip()] = parse_range(name.strip(), text.strip())
    params = None if arguments.params is None else tuple(name.strip() for name in arguments.params.split(",") if name.strip())
    return SearchConfig(params=params, ranges=ranges, trials=arguments.trials, budget_minutes=arguments.budget_minutes,
                        coarse_epochs=arguments.coarse_epochs, coarse_max_per_class=arguments.coarse_max_per_class,
                        fine_epochs=arguments.fine_epochs, out=arguments.out)


def add_tta_arguments(parser: argparse.ArgumentParser) -> None:
    """The test-time augmentation of `evaluate` and `predict`."""
    parser.add_argument("--tta", choices=TTA_CHOICES, default="auto",
                        help="test-time augmentation (default: auto, the mode training chose on validation data, else none)")
    parser.add_argument("--tta-combine", choices=COMBINES, default="mean",
                        help="average the views' probabilities (default) or take their geometric mean")


def add_evaluate_and_predict_commands(commands) -> None:
    evaluate = commands.add_parser("evaluate", help="evaluate a run on a labelled folder (its test/ split if any)")
    evaluate.add_argument("run_dir", metavar="RUN_DIR")
    evaluate.add_argument("data_dir", metavar="DATA_DIR")
    evaluate.add_argument("--batch-size", type=int, default=TrainConfig.batch_size, help="images per batch (default: %(default)s)")
    add_tta_arguments(evaluate)
    evaluate.add_argument("--json", action="store_true", help="print one JSON object")
    evaluate.add_argument("--plot", metavar="FILE.png", default=None,
                          help="also draw the confusion matrix (counts and row-normalised) into this PNG")

    predict = commands.add_parser("predict", help="top-k labels of images")
    predict.add_argument("run_dir", metavar="RUN_DIR")
    predict.add_argument("inputs", metavar="IMAGE_OR_DIR", nargs="+")
    predict.add_argument("--top-k", type=int, default=3, help="labels per image (default: %(default)s)")
    predict.add_argument("--batch-size", type=int, default=TrainConfig.batch_size, help="images per batch (default: %(default)s)")
    add_tta_arguments(predict)
    predict.add_argument("--json", action="store_true", help="print a JSON list")


def add_check_data_and_policy_commands(commands) -> None:
    check = commands.add_parser(
        "check-data", help="the data set's health report (exit status 1 when training would stop on a problem)"
    )
    check.add_argument("data_dir", metavar="DATA_DIR")
    _add_val_fraction(check)
    _add_input_bounds(check)
    _add_seed(check)
    check.add_argument("--json", action="store_true")

    policy = commands.add_parser("policy", help="measure data size and similarity, and pick a transfer strategy")
    policy.add_argument("data_dir", metavar="DATA_DIR")
    add_model_arguments(policy)
    _add_val_fraction(policy)
    _add_seed(policy)
    policy.add_argument("--json", action="store_true", help="print strategy, size, similarity, thresholds, reasons as JSON")
    add_policy_arguments(policy)


def add_app_command(commands) -> None:
    app = commands.add_parser("app", help="the web app: pick a model, upload images, see predictions (Streamlit)")
    app.add_argument("--models-dir", default=None, help="where to look for runs and exports (default: $FINETUNE_MODELS_DIR or models/)")
    app.add_argument("--host", default="127.0.0.1", help="address to serve on (default: 127.0.0.1; 0.0.0.0 for other machines)")
    app.add_argument("--port", type=int, default=8501)


def add_check_and_export_commands(commands) -> None:
    check = commands.add_parser("check", help="babysitting checks: initial loss, overfit 20 images, learning-rate range test")
    check.add_argument("data_dir", metavar="DATA_DIR")
    add_model_arguments(check)
    check.add_argument("--unfreeze-groups", type=int, default=CheckConfig.unfreeze_groups,
                       help="top freeze groups trained in the checks (default: %(default)s)")
    check.add_argument("--subset-size", type=int, default=CheckConfig.subset_size,
                       help="images the model must overfit (default: %(default)s)")
    check.add_argument("--overfit-epochs", type=int, default=CheckConfig.overfit_epochs,
                       help="at most this many epochs to overfit them (default: %(default)s)")
    check.add_argument("--range-steps", type=int, default=CheckConfig.range_steps,
                       help="batches of the learning-rate range test (default: %(default)s)")
    _add_val_fraction(check)
    _add_seed(check)
    check.add_argument("--out", default=CheckConfig.out_dir, help="folder for lr_range.png (default: %(default)s/)")
    check.add_argument("--json", action="store_true")

    export = commands.add_parser("export", help="export one run or an ensemble of runs/snapshots as one model")
    export.add_argument("run_dirs", metavar="RUN_DIR", nargs="+")
    export.add_argument("--members", choices=MEMBER_KINDS, default=ExportConfig.members,
                        help="snapshots of the run(s), or the best model.keras of each run (default: snapshots of one run that has them, else best)")
    export.add_argument("--format", choices=EXPORT_FORMATS, default=ExportConfig.format, help="(default: %(default)s)")
    export.add_argument("--quantize", choices=QUANTIZATIONS, default=ExportConfig.quantize,
                        help="TFLite only (default: %(default)s)")
    export.add_argument("--tta", default=ExportConfig.tta, help="test-time augmentation mode built into the graph (default: none)")
    export.add_argument("--tolerance", type=float, default=ExportConfig.tolerance,
                        help="largest probability difference the parity check accepts (default: the quantisation's own)")
    export.add_argument("--out", required=True, help="the export directory (model, labels.json, export.json)")
    export.add_argument("--json", action="store_true", help="print export.json")


def add_zoo_command(commands) -> None:
    zoo = commands.add_parser("zoo", help="list the backbones")
    zoo.add_argument("--json", action="store_true")


def add_runs_command(commands) -> None:
    runs = commands.add_parser("runs", help="the training runs in a folder, newest first, with their accuracy and time")
    runs.add_argument("models_dir", metavar="DIR", nargs="?", default=None,
                      help="where the runs are (default: $FINETUNE_MODELS_DIR or models/)")
    runs.add_argument("--json", action="store_true", help='print {"runs": [...], "unreadable": [...]}')


VERBOSE_HELP = "also show TensorFlow's own start-up lines and warnings (hidden by default)"


def add_verbose_argument(parser: argparse.ArgumentParser, commands) -> None:
    """`--verbose` before the command (`finetune --verbose train ...`) and after it (`finetune train ... --verbose`)."""
    parser.add_argument("--verbose", action="store_true", help=VERBOSE_HELP)
    for command in commands.choices.values():
        # SUPPRESS: a command that was not given --verbose leaves the value before the command alone.
        command.add_argument("--verbose", action="store_true", default=argparse.SUPPRESS, help=VERBOSE_HELP)


def model_config(arguments) -> ModelConfig:
    return ModelConfig(backbone=arguments.backbone, weights=arguments.weights, alpha=arguments.alpha,
                       dropout=getattr(arguments, "dropout", ModelConfig.dropout))


def data_config(arguments, source: str) -> DataConfig:
    """The `DataConfig` of a command's arguments; what the command has no option for keeps its default."""
    return DataConfig(
        source=source,
        val_fraction=arguments.val_fraction,
        image_size=getattr(arguments, "image_size", DataConfig.image_size),
        max_megapixels=getattr(arguments, "max_megapixels", DataConfig.max_megapixels),
        max_files=getattr(arguments, "max_files", DataConfig.max_files),
        cache=not getattr(arguments, "no_cache", not DataConfig.cache),
    )


def policy_config(arguments) -> PolicyConfig:
    return PolicyConfig(lots_per_class=arguments.lots_per_class, similarity_margin=arguments.similarity_margin)


def check_config(arguments) -> CheckConfig:
    return CheckConfig(
        unfreeze_groups=arguments.unfreeze_groups,
        subset_size=arguments.subset_size,
        overfit_epochs=arguments.overfit_epochs,
        range_steps=arguments.range_steps,
        out_dir=arguments.out,
    )


def schedule_options(arguments) -> dict:
    """`TrainConfig.schedule_options` from the --decay-* arguments that were given."""
    names = {"decay_factor": "factor", "decay_every": "every_epochs", "decay_milestones": "milestones", "decay_rate": "decay_rate"}
    return {option: getattr(arguments, name) for name, option in names.items() if getattr(arguments, name) is not None}
