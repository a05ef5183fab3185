"""Finetuning: `run_stages` unfreezes the top freeze groups and trains them at a lower rate than the head.

fastai's `fine_tune` in Keras terms, after the head was fit on cached features
(`finetune.linear`): unfreeze the top groups of the backbone's spec (`finetune.freezing`, with
BatchNorm kept in inference mode), train with warmup and decay (`finetune.schedules`) and the
backbone at 1/10 of the head's rate (`finetune.optimizers`), watched by the babysitting
callbacks (`finetune.callbacks`), with early stopping that restores the best weights or, for a
snapshot ensemble, one saved model per cosine cycle. The finetuned weights are kept only if
they beat the head alone on validation data.

    result = run_stages(model, backbone, spec, 3, config=config, train_split=train,
                        val_split=val, run_dir=run_dir, head_accuracy=head.val_accuracy)
"""

from __future__ import annotations

import dataclasses
import math
import sys
from pathlib import Path

from finetune.config import TrainConfig
from finetune.files import HISTORY_FILE, SNAPSHOT_DIR, TENSORBOARD_DIR
from finetune.freezing import unfreeze_top_groups
from finetune.progress import keras_verbose
from finetune.recipe import Recipe, finetuning_recipe



def log(config: TrainConfig, message: str) -> None:
    """Progress for the person at the terminal, on stderr, when `config.verbose`."""
    if config.verbose:
        print(message, file=sys.stderr, flush=True)


@dataclasses.dataclass
class _Inputs:
    """What `fit` trains on: the datasets, the loss, and the model that sees augmented images."""

    train: object
    val: object
    loss: object
    metrics: list
    fit_model: object
    options: object  # augment.AugmentOptions


def _inputs(model, train_split, val_split, config: TrainConfig, recipe: Recipe, start_epoch: int = 0) -> _Inputs:
    import keras

    import augment
    from finetune.data import make_dataset

    num_classes = int(model.output_shape[-1])
    options = recipe.options()
    augmenter = augment.build_augmenter(options, seed=config.seed)
    in_model = augmenter is not None and options.placement == "model"
    # Epoch e's order is a function of the seed and e, so that a resumed run sees what the uninterrupted one saw.
    train = make_dataset(train_split.images, train_split.labels, config.batch_size, shuffle=True, seed=config.seed,
                         augment=None if in_model else augmenter, start_epoch=start_epoch)
    val = make_dataset(val_split.images, val_split.labels, config.batch_size, shuffle=False, seed=config.seed)
    mixing = options.mixing()
    # Label smoothing needs one-hot targets, as mixing does.
    soft = mixing or recipe.label_smoothing > 0
    if mixing:
        train = augment.mix_dataset(train, num_classes, options.mixup, options.cutmix, seed=config.seed)
    elif soft:
        train = augment.one_hot_dataset(train, num_classes)
    if soft:
        val = augment.one_hot_dataset(val, num_classes)
    loss, metrics = augment.loss_and_metrics(soft_labels=soft, label_smoothing=recipe.label_smoothing)
    # The plain cross-entropy too (no smoothing): a loss that compares across label smoothings and
    # mixing, for metrics.json and a search's trials.
    metrics = metrics + [keras.metrics.CategoricalCrossentropy(name="log_loss") if soft
                         else keras.metrics.SparseCategoricalCrossentropy(name="log_loss")]
    # Trained through a wrapper when augmentation runs on the accelerator; `model` shares its weights.
    fit_model = augment.with_augmentation(model, augmenter) if in_model else model
    return _Inputs(train, val, loss, metrics, fit_model, options)


@dataclasses.dataclass
class _Schedule:
    epochs: int
    warmup_epochs: int
    name: str
    learning_rate: object  # a keras LearningRateSchedule


def _schedule(config: TrainConfig, num_images: int, epochs: int) -> _Schedule:
    from finetune.schedules import build_schedule

    warmup_epochs = min(config.warmup_epochs, epochs - 1) if config.warmup != "none" else 0
    name, options = config.schedule, dict(config.schedule_options)
    if config.snapshots >= 2:
        # Every cycle must end at an epoch end, where its snapshot is saved.
        cycles = config.snapshots
        epochs = warmup_epochs + cycles * max(1, math.ceil((epochs - warmup_epochs) / cycles))
        name, options = "snapshot", {**options, "cycles": cycles}
    steps_per_epoch = max(1, math.ceil(num_images / config.batch_size))
    learning_rate = build_schedule(name, config.learning_rate, steps_per_epoch, epochs, warmup_epochs=warmup_epochs,
                                   warmup=config.warmup if warmup_epochs else "none", **options)
    return _Schedule(epochs, warmup_epochs, name, learning_rate)


def _callbacks(model, backbone, spec, groups: int, *, schedule: _Schedule, config: TrainConfig, patience: int,
               run_dir: Path):
    """The babysitting callbacks, history.csv, resume, early stopping or snapshot saving, and TensorBoard if asked."""
    import keras

    from finetune import callbacks as finetune_callbacks
    from finetune.checkpoint import ResumeCheckpoint, initial_epoch

    guard = finetune_callbacks.DivergenceGuard(num_classes=int(model.output_shape[-1]))
    ratio_monitor = finetune_callbacks.UpdateRatioMonitor.for_freeze_groups(model, backbone, spec, groups)
    callbacks = [
        guard,
        finetune_callbacks.LearningRateLogger(),
        ratio_monitor,  # before the CSV logger, so that its ratios reach history.csv
        # A resumed fit drops the rows the killed run wrote after its last checkpoint: each epoch once.
        finetune_callbacks.AtomicCSVLogger(str(run_dir / HISTORY_FILE), append=True, from_epoch=initial_epoch(run_dir)),
    ]
    snapshot_saver = None
    if config.snapshots >= 2:
        cycle_epochs = (schedule.epochs - schedule.warmup_epochs) // config.snapshots
        snapshot_saver = finetune_callbacks.SnapshotSaver(run_dir / SNAPSHOT_DIR, cycle_epochs,
                                                          offset_epochs=schedule.warmup_epochs, model=model)
        callbacks.append(snapshot_saver)
    early_stopping = None
    if snapshot_saver is None:
        early_stopping = keras.callbacks.EarlyStopping(monitor="val_loss", patience=patience, restore_best_weights=True)
        callbacks.insert(1, early_stopping)
    # A killed run started again with the same --out resumes from the last finished epoch, early
    # stopping's state included; after every callback whose state it saves.
    callbacks.append(ResumeCheckpoint(run_dir, early_stopping, guard))
    if config.tensorboard:  # last, so that the rate and the update ratios are in the logs it writes
        callbacks.append(keras.callbacks.TensorBoard(log_dir=str(run_dir / TENSORBOARD_DIR)))
    return callbacks, guard, ratio_monitor, snapshot_saver


def run_stages(model, backbone, spec, groups: int, *, config: TrainConfig, train_split, val_split, run_dir,
               head_accuracy: float | None, class_weight: dict | None = None, callbacks=()) -> dict:
    """Finetunes the top `groups` freeze groups of `backbone` inside `model`; returns what metrics.json records.

    Args:
        model: a classifier of `finetune.model.build_classifier` over `backbone`, its head fit.
        backbone: the backbone inside `model`, frozen; left frozen again on return.
        spec: the backbone's `finetune.zoo.BackboneSpec` (its freeze groups).
        groups: how many freeze groups, from the top, to train.
        config: the `TrainConfig` (epochs, rates, schedule, augmentation, snapshots, patience).
        train_split, val_split: `finetune.data.LoadedSplit`s.
        run_dir: where history.csv, the resume backup and snapshots go.
        head_accuracy: the head's validation accuracy: the finetuned weights are kept only if
            they reach it (None: always kept).
        class_weight: weights by class index for imbalanced data (`finetune.data.class_weights`).
            Defaults to None (all classes weigh the same).
        callbacks: more Keras callbacks for `fit` (a search's pruner). Defaults to none.
    """
    import augment
    from finetune import zoo
    from finetune.checkpoint import initial_epoch
    from finetune.optimizers import DiscriminativeAdam

    # From scratch (weights "none") nothing is worth protecting: BatchNorm trains, and the backbone
    # learns at the head's rate.
    pretrained = not zoo.is_random_initialisation(config.model.weights)
    unfrozen = unfreeze_top_groups(backbone, spec, groups, pretrained=pretrained)
    recipe = finetuning_recipe(config, train_split.labels, int(model.output_shape[-1]))
    resumed_from = initial_epoch(run_dir)
    inputs = _inputs(model, train_split, val_split, config, recipe, start_epoch=resumed_from)
    schedule = _schedule(config, len(train_split.labels), recipe.epochs)
    multiplier = config.backbone_learning_rate_multiplier if pretrained else 1.0
    optimizer = DiscriminativeAdam(slow_variables=backbone.trainable_variables, slow_multiplier=multiplier,
                                   learning_rate=schedule.learning_rate, weight_decay=recipe.weight_decay or None)
    optimizer.exclude_from_weight_decay(var_names=["bias", "gamma", "beta"])
    inputs.fit_model.compile(optimizer=optimizer, loss=inputs.loss, metrics=inputs.metrics)
    watchers, guard, ratio_monitor, snapshot_saver = _callbacks(model, backbone, spec, groups, schedule=schedule,
                                                                config=config, patience=recipe.patience,
                                                                run_dir=Path(run_dir))
    head_weights = model.get_weights()
    log(config, f"Finetuning the top {groups} of {len(spec.freeze_groups)} groups ({len(unfrozen)} layers) for up to "
                f"{schedule.epochs} epochs, {schedule.name} schedule; {'; '.join(recipe.reasons)}...")
    history = inputs.fit_model.fit(
        inputs.train, validation_data=inputs.val, epochs=schedule.epochs,
        steps_per_epoch=math.ceil(len(train_split.labels) / config.batch_size),  # the data set repeats, epoch by epoch
        class_weight=class_weight, callbacks=watchers + list(callbacks),
        shuffle=False,  # the dataset shuffles itself, seeded
        verbose=keras_verbose(config.verbose),  # bars on a terminal, a line per epoch into a log
    )
    evaluated = inputs.fit_model.evaluate(inputs.val, verbose=0, return_dict=True)
    finetuned_accuracy = evaluated["accuracy"]
    kept = head_accuracy is None or finetuned_accuracy >= head_accuracy
    if not kept:
        model.set_weights(head_weights)
    if guard.report:
        log(config, guard.report["message"])
    versus = "" if head_accuracy is None else f" vs head alone {head_accuracy:.4f}"
    log(config, f"Finetuned validation accuracy {finetuned_accuracy:.4f}{versus}: "
                + ("kept the finetuned model." if kept else "kept the head alone."))
    # Freeze again so the saved model says what was trained and loads identically.
    backbone.trainable = False
    return {
        "unfrozen_groups": groups,
        "unfrozen_layers": len(unfrozen),
        # With a resumed fit, the epochs the interrupted run trained too.
        "epochs_run": resumed_from + len(history.history.get("loss", [])),
        "resumed_at_epoch": resumed_from or None,
        "schedule": schedule.name,
        "warmup_epochs": schedule.warmup_epochs,
        "augment": augment.describe(recipe.augment, **recipe.augment_options),
        "recipe": recipe.to_dict(),
        "val_accuracy": float(finetuned_accuracy),
        "val_log_loss": float(evaluated["log_loss"]),
        "kept": bool(kept),
        "divergence": guard.report,
        "update_ratios": {name: float(value) for name, value in ratio_monitor.ratios.items()},
        "snapshots": [str(path) for path in snapshot_saver.saved] if snapshot_saver else [],
    }
