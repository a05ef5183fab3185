"""One trial of a search: a configuration trained the way `finetune train` trains it, scored without the test split.

Everything a trial does not change is computed once per image size (`prepare`): the decoded
images, every stage's features, the stage search and the plan. So a linear-head trial is a
cross-validated fit on cached features (seconds), and a finetuning trial is the finetuning of
`finetune.pipeline.fit_strategy` itself, from the backbone's original weights:

    shared = prepare(config, source)                    # once: decode, features, strategy
    linear_trial(shared, config)["value"]               # cross-validated accuracy of the kept head
    finetune_trial(shared, config, run_dir=..., callbacks=[TrialReporter(trial)])["value"]

The value is a figure `finetune train` records for the same configuration, so that best.json
reproduces it: the cross-validated accuracy of the kept head (linear strategies; metrics.json
`cv_accuracy`), or the finetuned model's validation accuracy (metrics.json
`stages.finetune.val_accuracy`), scored before training's safety nets may keep the head or the
best linear head instead: what is compared is the configuration, and a head that wins
regardless would tie every trial.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import keras
import numpy as np

from finetune.errors import FinetuneError
from finetune.pipeline import PreparedRun


@dataclasses.dataclass
class SearchData(PreparedRun):
    """What every trial at one image size shares: the prepared run, and the backbone's weights before any trial."""

    initial_weights: list = dataclasses.field(default_factory=list)


def without_test(source):
    """`source` without its test split: trials never see it."""
    return dataclasses.replace(source, splits={name: split for name, split in source.splits.items() if name != "test"})


def prepare(config, source) -> SearchData:
    """Decodes, extracts the stage features and plans the strategy once, as `finetune train` does."""
    from finetune import zoo
    from finetune.pipeline import prepare_run

    prepared = prepare_run(config, zoo.get_spec(config.model.backbone), source)
    shared = {field.name: getattr(prepared, field.name) for field in dataclasses.fields(prepared)}
    return SearchData(**shared, initial_weights=prepared.backbone.get_weights())


class TrialReporter(keras.callbacks.Callback):
    """Reports each epoch's validation accuracy to an Optuna trial; stops a trial the pruner or the budget gives up on.

    Args:
        trial: an `optuna.Trial` (anything with `report(value, step)` and `should_prune()`).
        deadline: a `time.time()` after which the trial stops at its next epoch end, or None.
    """

    def __init__(self, trial, deadline: float | None = None):
        super().__init__()
        self.trial = trial
        self.deadline = deadline
        self.stopped_because = None

    def on_epoch_end(self, epoch, logs=None):
        value = (logs or {}).get("val_accuracy")
        if value is None:
            return
        self.trial.report(float(value), epoch)
        if self.trial.should_prune():
            self.stopped_because = (f"pruned after epoch {epoch + 1}: validation accuracy {float(value):.4f} below "
                                    "the median of earlier trials at that epoch")
        elif self.deadline is not None and time.time() > self.deadline:
            self.stopped_because = f"stopped after epoch {epoch + 1}: the search's time budget ran out"
        if self.stopped_because:
            self.model.stop_training = True


def linear_trial(shared: SearchData, config) -> dict:
    """The cross-validated accuracy of the head a linear strategy keeps with `config.head_c_grid`."""
    from finetune.pipeline import linear_candidate, search_stages

    features, data = shared.features, shared.data
    search = search_stages(features.labelled, data, shared.spec, config)
    candidate = linear_candidate(shared.plan.strategy, search, features, data, config)
    if search.folds == 0 or np.isnan(candidate.cv_accuracy):
        raise FinetuneError(f"{data.source.root} has too few images per class to cross-validate linear heads, so there "
                            "is nothing to compare trials by. Add images (at least 2 per class), or train with defaults.")
    return {"value": float(candidate.cv_accuracy), "loss": float(candidate.cv_loss), "head": candidate.name,
            "train_images": int(search.images), "full_data": True}


def _subset(data, features, max_per_class: int, seed: int):
    """The training split (images and features) cut to at most `max_per_class` images per class."""
    from finetune.data import LoadedSplit
    from finetune.stages import subsample

    chosen = subsample(np.asarray(data.train.labels), max_per_class, seed)
    if len(chosen) == len(data.train.labels):
        return data, features
    train = data.train
    split = LoadedSplit(np.asarray(train.images[chosen]), np.asarray(train.labels)[chosen],
                        [train.paths[index] for index in chosen], [])
    stage_features = [np.asarray(item)[chosen] for item in features.train]
    features = dataclasses.replace(features, train=stage_features, train_labels=split.labels)
    return dataclasses.replace(data, train=split), features


def finetune_trial(shared: SearchData, config, *, run_dir, callbacks=(), max_per_class: int | None = None) -> dict:
    """Finetunes as `finetune train` would with `config` (on at most `max_per_class` training images per class).

    Returns the finetuned model's validation accuracy and plain log loss (as metrics.json records
    them under stages.finetune, before training's safety nets may keep the head or the best
    linear head instead: the configuration is what is scored), the epochs run, and whether it diverged.
    """
    from finetune.checkpoint import remove_backup
    from finetune.pipeline import fit_strategy

    shared.backbone.set_weights(shared.initial_weights)  # every trial starts from the pretrained backbone
    data, features = shared.data, shared.features
    if max_per_class is not None:
        data, features = _subset(data, features, max_per_class, config.seed)
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    data = dataclasses.replace(data, run_dir=run_dir)
    try:
        result = fit_strategy(shared.plan, shared.backbone, shared.spec, data=data, features=features, config=config,
                              callbacks=callbacks)
    finally:
        remove_backup(run_dir)  # a trial is never resumed: a killed one runs again from the start
    finetuned = result.stages["finetune"]
    return {
        "value": float(finetuned["val_accuracy"]),
        "loss": float(finetuned["val_log_loss"]),
        "epochs_run": finetuned.get("epochs_run"),
        "diverged": bool(finetuned.get("divergence")),
        "kept": finetuned.get("replaced_by") or ("finetuned" if finetuned.get("kept") else "head"),
        "linear_rival": (finetuned.get("linear_rival") or {}).get("val_accuracy"),
        "train_images": int(len(data.train.labels)),
        "full_data": len(data.train.labels) == len(shared.data.train.labels),
    }
