"""`train(config)`: a folder of images in, a run directory out, in six named steps.

    choice = choose_size(config, spec, source)               # the input size (finetune.input_size)
    data = prepare_data(config, spec, source=source, ...)    # split, decode, skipped.json
    features = compute_features(backbone, spec, data, ...)   # every stage, once, cached
    plan = plan_strategy(spec, features, data, config, ...)  # the transfer policy, policy.json
    result = fit_strategy(plan, backbone, spec, data, ...)   # linear heads, or finetuning
    finish_run(result, data, plan, config, ...)              # model.keras, metrics.json, config.json

Every strategy starts the same way, fastai's `fine_tune` in Keras terms: the backbone is frozen
and heads are fit to convergence on features computed once (`finetune.features`,
`finetune.linear`), scored by cross-validation on every labelled image (`finetune.stages`).
Then, by strategy (`finetune.policy`): the linear strategies keep a head
(`finetune.linear`); finetune_top, finetune_most and full unfreeze top freeze groups and train
them (`finetune.training.run_stages`). A finetuned model is kept only if it beats, on validation
data, both the head it started from and the best linear head of the stage search.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import time
from pathlib import Path

from finetune.config import TrainConfig
from finetune.errors import FinetuneError, as_finetune_error, check_choice
from finetune.files import LABELS_FILE, POLICY_FILE, SKIPPED_FILE, atomic_write_json, default_run_dir
from finetune.linear import LinearResult, StageFeatures, describe_linear, fit_linear_model, fit_start_head, linear_rival
from finetune.model import build_classifier, set_head
from finetune.resume import check_out
from finetune.training import log, run_stages


@dataclasses.dataclass
class PreparedData:
    """The data set, split and decoded at the run's image size, and where the run goes."""

    source: object  # finetune.data.DataSource
    run_dir: Path
    image_size: int
    train: object  # finetune.data.LoadedSplit
    val: object | None
    test: object | None
    skipped: list
    class_weight: dict | None
    # How the image size was decided (policy.json's "image_size"), and the chosen size's stage
    # search when it was measured (finetune.input_size), for compute_features to reuse.
    size_choice: dict = dataclasses.field(default_factory=dict)
    size_search: object = None

    @property
    def class_names(self) -> list[str]:
        return self.source.class_names

    @property
    def num_classes(self) -> int:
        return len(self.source.class_names)


@dataclasses.dataclass
class Plan:
    """The strategy to run, and the policy's measurements and reasons (policy.json)."""

    strategy: str
    policy: dict


# The strategies that train no epochs, and the finetuning strategy of the same row of the table
# (same similarity) that `auto` switches to when finetuning-only options are asked for.
LINEAR_STRATEGIES = {"linear": "finetune_top", "multistage_linear": "finetune_most"}


def finetuning_requests(config: TrainConfig) -> list[str]:
    """The options of `config`, set away from their defaults, that only finetuning uses ("snapshots=3", ...).

    A number of epochs other than the default asks for training them (0, head only, asks for
    nothing); the rest of the budget (`patience`, `learning_rate`, warmup) only bounds finetuning
    when there is some, so it is not among them.
    """
    import augment

    from finetune.recipe import requested_preset

    defaults = TrainConfig()
    asked = []
    # Compared as resolved options: `--mixup 0` or a preset's own value asks for nothing; auto,
    # the default, asks for nothing either (it follows the strategy and the data).
    if augment.resolve(requested_preset(config), **config.augment_options) != augment.resolve("none"):
        given = {"augment": config.augment, **config.augment_options}
        asked.append(", ".join(f"{name}={value!r}" for name, value in given.items()
                               if name != "augment" or value != defaults.augment))
    for name in ("label_smoothing", "weight_decay"):
        if getattr(config, name) != getattr(defaults, name):
            asked.append(f"{name}={getattr(config, name)!r}")
    if config.model.dropout != defaults.model.dropout:
        asked.append(f"dropout={config.model.dropout!r}")
    if config.schedule != defaults.schedule:
        asked.append(f"schedule={config.schedule!r}")
    if config.schedule_options:
        asked.append(f"schedule_options={config.schedule_options!r}")
    if config.epochs and config.epochs != defaults.epochs:
        asked.append(f"epochs={config.epochs}")
    if config.snapshots >= 2:
        asked.append(f"snapshots={config.snapshots}")
    if config.unfreeze_groups:
        asked.append(f"unfreeze_groups={config.unfreeze_groups}")
    return asked


def check_config(config: TrainConfig) -> None:
    """Raises a `FinetuneError` naming the first field of `config` out of its range, or options that conflict."""
    import augment
    from augment.tta_modes import MODES
    from finetune.config import STRATEGIES
    from finetune.recipe import requested_preset

    check_choice("strategy", config.strategy, STRATEGIES)
    check_choice("tta", config.tta, ("auto", *MODES))
    check_choice("auto_augment_preset", config.auto_augment_preset, tuple(augment.PRESETS))
    with as_finetune_error():  # refused now, not after minutes of features
        augment.resolve(requested_preset(config), **config.augment_options)
    if not 0 <= config.label_smoothing < 1:
        raise FinetuneError(f"`label_smoothing` must be in [0, 1). Received: label_smoothing={config.label_smoothing}")
    if config.weight_decay < 0:
        raise FinetuneError(f"`weight_decay` must be 0 (off) or more. Received: weight_decay={config.weight_decay}")
    if config.epochs < 0:
        raise FinetuneError(f"`epochs` must be 0 or more. Received: epochs={config.epochs}")
    if config.batch_size < 1:
        raise FinetuneError(f"`batch_size` must be at least 1. Received: batch_size={config.batch_size}")
    if not 0 < config.unknown_keep <= 1:
        raise FinetuneError(f"`unknown_keep` (--unknown-keep) must be in (0, 1], the share of held-out images of known "
                            f"classes the 'unknown' threshold keeps, e.g. 0.95. Received: unknown_keep={config.unknown_keep}")
    if config.tensorboard and importlib.util.find_spec("tensorboard") is None:
        raise FinetuneError("`tensorboard` needs the tensorboard package, which TensorFlow writes its logs with: "
                            "pip install tensorboard. Received: tensorboard=True")
    if config.snapshots == 1 or config.snapshots < 0:
        raise FinetuneError(f"`snapshots` must be 0 (off) or at least 2 (cycles of the ensemble). "
                            f"Received: snapshots={config.snapshots}")
    asked = finetuning_requests(config)
    if asked and config.strategy in LINEAR_STRATEGIES:
        raise FinetuneError(
            f"{', '.join(asked)} only apply to finetuning, and strategy {config.strategy} trains a linear head on frozen "
            f"features without any epoch. Drop {'them' if len(asked) > 1 else 'it'}, or ask for a finetuning strategy "
            f"(--strategy {LINEAR_STRATEGIES[config.strategy]}, or auto). Received: strategy={config.strategy!r}"
        )
    if asked and config.epochs == 0:
        raise FinetuneError(f"{', '.join(asked)} only apply to finetuning epochs, and epochs is 0. Give --epochs N "
                            f"or drop {'them' if len(asked) > 1 else 'it'}. Received: epochs=0")


def choose_size(config: TrainConfig, spec, source):
    """The run's image size and the backbone built at it: `config.data.image_size`, or measured on the data.

    Returns a `finetune.input_size.SizeChoice`; see `finetune.input_size`.
    """
    from finetune.input_size import resolve_image_size

    if config.data.image_size:
        return resolve_image_size(source, spec, config)
    log(config, "Choosing the input size: scoring candidate sizes with linear heads on the stages...")
    choice = resolve_image_size(source, spec, config, log=lambda line: log(config, line))
    log(config, f"Image size: {choice.reason}. Give --image-size to choose another.")
    return choice


def prepare_data(config: TrainConfig, spec, *, source=None, image_size: int | None = None,
                 size_choice: dict | None = None) -> PreparedData:
    """Finds and splits the images (unless `source` is given), decodes them at the run's size, and writes skipped.json."""
    from finetune import data as data_module

    image_size = image_size or config.data.image_size or spec.default_image_size
    if source is None:
        source = data_module.discover(config.data.source, config.data.val_fraction, config.seed, max_files=config.data.max_files)
    run_dir = Path(config.out) if config.out else default_run_dir(source.name, spec.name)
    run_dir.mkdir(parents=True, exist_ok=True)
    log(config, f"Run directory: {run_dir}")

    def load(split_name):
        if split_name not in source.splits or len(source.splits[split_name].paths) == 0:
            return None
        return data_module.load_split(source, split_name, image_size, config.data.max_megapixels, config.data.cache,
                                      config.verbose)

    train_split, val_split, test_split = load("train"), load("val"), load("test")
    if train_split is None or len(train_split.labels) == 0:
        raise FinetuneError(f"No readable training images in {config.data.source}. See skipped.json in {run_dir}.")
    splits = (train_split, val_split, test_split)
    skipped = list(source.skipped) + [item for split in splits if split for item in split.skipped]
    atomic_write_json(run_dir / SKIPPED_FILE, skipped)
    class_weight = data_module.class_weights(train_split.labels, len(source.class_names))
    record = size_choice or {"chosen": image_size, "chosen_by": "default",
                             "reason": f"{image_size} px: the backbone's default size"}
    return PreparedData(source, run_dir, image_size, train_split, val_split, test_split, skipped, class_weight,
                        record)


def compute_features(backbone, spec, data: PreparedData, *, weights_source: str, config: TrainConfig) -> StageFeatures:
    """Features of every stage, computed once (and cached on disk), and the cross-validated search over their heads.

    One search serves the policy (how the top stage compares with lower ones) and the linear
    strategies (which head to keep).
    """
    from finetune.features import stage_features
    from finetune.policy import labelled_pool
    from finetune.progress import keras_verbose
    from finetune.stages import subsample

    log(config, f"Computing {spec.name} features of {len(data.train.labels)} training images (once)...")
    identity = {"backbone": spec.name, "weights": weights_source, "alpha": config.model.alpha}

    def features_of(split):
        if split is None:
            return None
        return stage_features(backbone, spec, split.images, identity, config.batch_size, keras_verbose(config.verbose),
                              config.data.cache)

    train_features, val_features = features_of(data.train), features_of(data.val)
    val_labels = None if data.val is None else data.val.labels
    labelled = labelled_pool(train_features, data.train.labels, val_features, val_labels)
    search = data.size_search
    if search is None or search.images != len(subsample(labelled[1], config.policy.search_max_per_class, config.seed)):
        search = search_stages(labelled, data, spec, config)
    else:
        log(config, "Stage search: reusing the one the size choice ran at this size (same images and folds).")
    return StageFeatures(train_features, data.train.labels, val_features, val_labels, labelled, search,
                         data.class_weight)


def search_stages(labelled, data: PreparedData, spec, config: TrainConfig):
    """The cross-validated search over stage heads of `labelled` (features per stage, labels), as `config` sets it."""
    from finetune.stages import search_stage_heads

    return search_stage_heads(*labelled, data.num_classes, list(spec.stage_endpoints), c_grid=config.head_c_grid,
                              max_per_class=config.policy.search_max_per_class, class_weight=data.class_weight,
                              seed=config.seed)


def linear_candidate(strategy: str, search, features: StageFeatures, data: PreparedData, config: TrainConfig):
    """The head a linear strategy keeps of `search`: the top stage (linear), or the best candidate once the
    concatenation of all stages is scored too (multistage_linear)."""
    from finetune.stages import add_concatenation

    if strategy == "linear":
        return search.top
    add_concatenation(search, *features.labelled, data.num_classes, config.head_c_grid,
                      config.policy.search_max_per_class, data.class_weight, config.seed)
    return search.best


def plan_strategy(spec, features: StageFeatures, data: PreparedData, *, weights_source: str,
                  config: TrainConfig) -> Plan:
    """The policy's decision from the measured size and similarity (or the requested strategy); writes policy.json."""
    from finetune.policy import measure_policy

    policy = measure_policy(spec, features.search, weights_source=weights_source, top_features=features.train[-1],
                            train_labels=data.train.labels, num_classes=data.num_classes, config=config.policy)
    policy["requested"] = config.strategy
    policy["image_size"] = data.size_choice
    strategy = policy["strategy"] if config.strategy == "auto" else config.strategy
    asked = finetuning_requests(config)
    if strategy in LINEAR_STRATEGIES and asked:  # auto picked a linear strategy (check_config refused the rest)
        strategy = LINEAR_STRATEGIES[strategy]
        if data.val is None:
            raise FinetuneError(
                f"{', '.join(asked)} ask for finetuning ({strategy}), which needs validation images for early stopping, "
                f"and {config.data.source} has none. Add a val/ folder or a --val-fraction above 0, or drop "
                f"{'them' if len(asked) > 1 else 'it'}. Received: val_fraction={config.data.val_fraction}")
        policy["reasons"].append(
            f"{', '.join(asked)} asked for finetuning, so {strategy}, the finetuning strategy of the same similarity, "
            f"is used instead of {policy['strategy']}.")
        policy["switched_for"] = asked
    policy["used"] = strategy
    atomic_write_json(data.run_dir / POLICY_FILE, policy)
    picked = " (picked by the policy: " + policy["reasons"][-1] + ")" if config.strategy == "auto" else " (requested)"
    log(config, f"Strategy: {strategy}{picked}")
    return Plan(strategy, policy)


def _linear(candidate, backbone, spec, *, cut: bool, data: PreparedData, features: StageFeatures,
            config: TrainConfig) -> LinearResult:
    result = fit_linear_model(candidate, backbone, spec, cut=cut, image_size=data.image_size,
                              num_classes=data.num_classes, features=features, config=config)
    for line in describe_linear(result, features.search, candidate):
        log(config, line)
    return result


def _finetune(plan: Plan, backbone, spec, *, data: PreparedData, features: StageFeatures,
              config: TrainConfig, callbacks=()) -> LinearResult:
    """The top stage's head, then finetuning, kept only if it beats the best linear head of the search."""
    import keras

    from finetune.policy import groups_to_unfreeze

    # Seeded here, not only at the start: what ran before (the size choice, a search's earlier
    # trials) must not change the initialisation, dropout or shuffling of finetuning.
    keras.utils.set_random_seed(config.seed)
    model = build_classifier(backbone, spec.preprocessing, data.num_classes, data.image_size,
                             dropout=config.model.dropout)
    head = fit_start_head(features, data.num_classes, config)
    set_head(model, head)
    stages = {"head": {"c": head.c, "val_accuracy": head.val_accuracy, "search": head.search}}
    result = LinearResult(model, stages, head, features.train[-1], None if features.val is None else features.val[-1])
    log(config, f"Head fit on cached features: C={head.c}, validation accuracy {head.val_accuracy}")
    groups = config.unfreeze_groups if config.unfreeze_groups is not None else groups_to_unfreeze(
        plan.strategy, len(spec.freeze_groups), config.policy)
    if config.epochs == 0 or groups == 0:
        return result
    if data.val is None:
        raise FinetuneError(
            f"Strategy {plan.strategy} needs validation images for early stopping, and {config.data.source} has none. "
            "Add a val/ folder or a --val-fraction above 0."
        )
    original = backbone.get_weights()  # what the stage search's features came from
    finetuned = stages["finetune"] = run_stages(
        model, backbone, spec, groups, config=config, train_split=data.train, val_split=data.val,
        run_dir=data.run_dir, head_accuracy=head.val_accuracy, class_weight=data.class_weight, callbacks=callbacks)
    current = finetuned["val_accuracy"] if finetuned["kept"] else head.val_accuracy
    candidate = features.search.best
    finetuned["linear_rival"] = rival = linear_rival(candidate, features, num_classes=data.num_classes,
                                                     seed=config.seed)
    if rival["val_accuracy"] <= current:
        return result
    # Finetuning did not beat the best linear head of the stage search on the same validation
    # images (measured here: Fashion-MNIST at 300 images per class, 5 epochs of finetune_most
    # 0.856 vs the multi-stage head 0.873): keep the very head that won, refit like a linear strategy's.
    log(config, f"The multi-stage linear head ({rival['name']}) beats the finetuned model on validation data "
                f"({rival['val_accuracy']:.4f} vs {current:.4f}): keeping the linear head.")
    # Its heads were fit on the features of the backbone as it was before finetuning, which a kept
    # finetuning changed (and from scratch, BatchNorm's statistics too): back to those weights.
    backbone.set_weights(original)
    linear = _linear(candidate, backbone, spec, cut=True, data=data, features=features, config=config)
    linear.stages = {**stages, **linear.stages}
    finetuned["kept"] = False
    finetuned["replaced_by"] = "multistage_linear"
    return linear


def fit_strategy(plan: Plan, backbone, spec, *, data: PreparedData, features: StageFeatures,
                 config: TrainConfig, callbacks=()) -> LinearResult:
    """The model of the planned strategy, with what metrics.json records of its stages.

    `callbacks` (Keras callbacks) watch the finetuning epochs too, e.g. a search's pruner.
    """
    if plan.strategy in LINEAR_STRATEGIES:
        candidate = linear_candidate(plan.strategy, features.search, features, data, config)
        return _linear(candidate, backbone, spec, cut=plan.strategy == "multistage_linear", data=data,
                       features=features, config=config)
    return _finetune(plan, backbone, spec, data=data, features=features, config=config, callbacks=callbacks)


@dataclasses.dataclass
class PreparedRun:
    """The first four steps done: the backbone at the run's size, the data, its features and the plan."""

    spec: object
    backbone: object
    weights_source: str
    data: PreparedData
    features: StageFeatures
    plan: Plan


def prepare_run(config: TrainConfig, spec, source) -> PreparedRun:
    """Chooses the size, decodes the data, extracts every stage's features and plans the strategy."""
    choice = choose_size(config, spec, source)
    data = prepare_data(config, spec, source=source, image_size=choice.size, size_choice=choice.to_dict())
    backbone, weights_source, data.size_search = choice.backbone, choice.weights_source, choice.search
    backbone.trainable = False
    atomic_write_json(data.run_dir / LABELS_FILE, data.class_names)
    features = compute_features(backbone, spec, data, weights_source=weights_source, config=config)
    plan = plan_strategy(spec, features, data, weights_source=weights_source, config=config)
    return PreparedRun(spec, backbone, weights_source, data, features, plan)


def train(config: TrainConfig):
    """Trains a classifier as configured and returns the loaded `finetune.run.Run`."""
    import keras

    from finetune import zoo
    from finetune.finish import finish_run

    check_config(config)
    state = check_out(config.out, overwrite=config.overwrite)
    if state == "resume":
        log(config, f"{config.out} holds an unfinished run: continuing it (finetuning resumes from its last finished epoch).")
    started = time.time()
    keras.utils.set_random_seed(config.seed)
    from finetune import data as data_module

    spec = zoo.get_spec(config.model.backbone)
    source = data_module.discover(config.data.source, config.data.val_fraction, config.seed, max_files=config.data.max_files)
    prepared = prepare_run(config, spec, source)
    result = fit_strategy(prepared.plan, prepared.backbone, spec, data=prepared.data, features=prepared.features,
                          config=config)
    return finish_run(result, prepared.data, prepared.plan, config=config, weights_source=prepared.weights_source,
                      seconds=lambda: round(time.time() - started, 2))
