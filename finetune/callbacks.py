"""Callbacks Keras lacks: snapshot saving, a divergence guard, the update/weight ratio, atomic history.csv.

Keras already has early stopping, backup-and-restore and CSV logging; these add what the
course asks of a babysat run, and a CSV log that a killed run cannot leave half a line in. Each
is driven by epochs and logs only, so tests feed them scripted logs instead of fitting.

Order matters when logs are added: put `UpdateRatioMonitor` and `LearningRateLogger` before
`AtomicCSVLogger` so their columns reach history.csv.
"""

from __future__ import annotations

import io
import math
from pathlib import Path

import keras
import numpy as np

from finetune.errors import FinetuneError


def current_learning_rate(optimizer) -> float | None:
    """The rate of the optimizer's last step (evaluating a schedule there), or None.

    `optimizer.learning_rate` gives the rate of the *next* step, which at the end of a snapshot
    cycle is already the restart rate; curves and messages want the rate that was used.
    """
    if optimizer is None:
        return None
    schedule = getattr(optimizer, "_learning_rate", None)
    try:
        if isinstance(schedule, keras.optimizers.schedules.LearningRateSchedule):
            step = max(int(keras.ops.convert_to_numpy(optimizer.iterations)) - 1, 0)
            return float(keras.ops.convert_to_numpy(schedule(step)))
        return float(keras.ops.convert_to_numpy(optimizer.learning_rate))
    except (TypeError, ValueError, AttributeError):
        return None


def _as_float(value) -> float | None:
    if value is None:
        return None
    return float(np.asarray(value, dtype=np.float64))


class SnapshotSaver(keras.callbacks.Callback):
    """Saves the model at the end of every learning-rate cycle: the members of a snapshot ensemble.

    Cycle k (from 1) ends after epoch `offset_epochs + k * cycle_epochs`; its model goes to
    `directory/snapshot_{k:02d}.keras`, written atomically. Epoch numbers are the ones Keras
    passes, so a resumed run (`finetune.checkpoint`) keeps numbering its snapshots correctly, and
    `saved` lists the snapshots an interrupted run saved before it too.

    Args:
        directory: where the snapshots go, e.g. run_dir / "snapshots".
        cycle_epochs: epochs per cycle (the snapshot schedule's epochs / cycles).
        offset_epochs: epochs before the first cycle starts (warmup). Defaults to 0.
        model: the model to save, when `fit` trains a wrapper around it (e.g. with augmentation
            layers in front) that should not be part of the snapshots. Defaults to None: the
            model being fit.

    Attributes:
        saved: the paths written, in order.
    """

    def __init__(self, directory, cycle_epochs: int, offset_epochs: int = 0, model=None):
        super().__init__()
        self.model_to_save = model
        if int(cycle_epochs) < 1:
            raise FinetuneError(f"`cycle_epochs` must be at least 1. Received: cycle_epochs={cycle_epochs}")
        self.directory = Path(directory)
        self.cycle_epochs = int(cycle_epochs)
        self.offset_epochs = int(offset_epochs)
        self.saved: list[Path] = []
        self._epochs_done: int | None = None

    def snapshot_path(self, cycle: int) -> Path:
        return self.directory / f"snapshot_{cycle:02d}.keras"

    def on_train_begin(self, logs=None):
        self._epochs_done = None

    def on_train_end(self, logs=None):
        # Every cycle finished by the end, by this process or by an interrupted one before it (a
        # resumed fit starts at `_initial_epoch`): their snapshots are the ensemble's members.
        end = self._epochs_done if self._epochs_done is not None else int(getattr(self.model, "_initial_epoch", 0) or 0)
        done = max(0, end - self.offset_epochs) // self.cycle_epochs
        self.saved = [self.snapshot_path(cycle) for cycle in range(1, done + 1) if self.snapshot_path(cycle).is_file()]

    def on_epoch_end(self, epoch, logs=None):
        self._epochs_done = epoch + 1
        finished = epoch + 1 - self.offset_epochs
        if finished <= 0 or finished % self.cycle_epochs:
            return
        from finetune.files import inference_model, save_model_atomic

        path = self.snapshot_path(finished // self.cycle_epochs)
        # A fresh functional model over the same layers: saved without the optimizer's state,
        # which would double or triple every snapshot file and is never needed for inference.
        model = self.model_to_save if self.model_to_save is not None else self.model
        save_model_atomic(inference_model(model), path)
        self.saved.append(path)


class AtomicCSVLogger(keras.callbacks.CSVLogger):
    """`keras.callbacks.CSVLogger` that rewrites the whole file atomically at every epoch end.

    Keras' logger appends to an open file, so a run killed (or a disk filled) mid-write leaves a
    half line that breaks the curves and the resume. This one keeps the rows in memory, in the
    same format, and replaces the file through `finetune.files.atomic_write_text`: a reader sees
    the file after epoch k or after epoch k+1, never between. With `append=True` the rows of an
    earlier run (a resumed one) are kept and the header is not repeated.

    Args:
        filename: the CSV file, e.g. run_dir / "history.csv".
        separator: the column separator. Defaults to ",".
        append: keep the rows already in the file. Defaults to False.
        from_epoch: with `append`, the epoch a resumed fit starts at: rows of that epoch and later
            (written by the killed run before its checkpoint) are dropped, so that no epoch is
            listed twice. Defaults to None (all kept).
    """

    def __init__(self, filename, separator=",", append=False, from_epoch: int | None = None):
        super().__init__(filename, separator=separator, append=append)
        self.from_epoch = from_epoch

    def _kept(self, line: str) -> bool:
        first = line.split(self.sep, 1)[0].strip()
        return self.from_epoch is None or not first.isdigit() or int(first) < self.from_epoch

    def on_train_begin(self, logs=None):
        path = Path(self.filename)
        earlier = ""
        if self.append and path.is_file():
            with path.open(newline="", encoding="utf-8") as file:  # Keras' rows end in \r\n: kept as they are
                earlier = "".join(line for line in file.read().splitlines(keepends=True) if self._kept(line))
        self.append_header = not earlier.strip()
        self.csv_file = io.StringIO(newline="")
        self.csv_file.write(earlier)
        self.writer, self.keys = None, None

    def on_epoch_end(self, epoch, logs=None):
        from finetune.files import atomic_write_text

        super().on_epoch_end(epoch, logs)
        atomic_write_text(Path(self.filename), self.csv_file.getvalue())


class DivergenceGuard(keras.callbacks.Callback):
    """Stops training when the loss diverges, restores the last good weights and says why.

    Divergence is any of: a NaN or infinite loss; a loss above `factor` times the initial loss
    (the first batch's, counted as at least `minimum_initial_loss`); or, given `num_classes`, an
    epoch loss that started well below chance (-ln(1/C)) and has climbed back to it, the silent
    collapse of a too-high rate that Keras reports as a normal epoch.

    After each batch the guard checks a moving average of the batch losses (recovered from
    Keras' running mean of the epoch), which reacts within a few batches yet ignores a single
    noisy one; after each epoch, the epoch's mean loss. The weights at the end of every epoch
    that passed are kept; on divergence they (or the starting weights) are restored.

    Args:
        factor: how many times the initial loss counts as exploded. Defaults to 3.0.
        num_classes: enables the collapse-to-chance check. Defaults to None.
        minimum_initial_loss: the initial loss used for the `factor` rule is at least this, so
            that a head already fit on the training data (initial loss ~0.005) does not count
            a loss of 0.02 after a snapshot restart as divergence. Defaults to 0.1.
        check_every_batch: check after every batch (a NaN stops at once) as well as every epoch.
            Defaults to True.

    Attributes:
        report: None, or {"diverged", "reason" ("nan", "exploded", "collapsed"), "epoch",
            "batch", "loss", "initial_loss", "learning_rate", "restored_epoch", "message"};
            put it in metrics.json.
    """

    def __init__(
        self,
        factor: float = 3.0,
        num_classes: int | None = None,
        minimum_initial_loss: float = 0.1,
        check_every_batch: bool = True,
    ):
        super().__init__()
        if not factor > 1:
            raise FinetuneError(f"`factor` must be above 1. Received: factor={factor}")
        self.factor = float(factor)
        self.num_classes = num_classes
        self.minimum_initial_loss = float(minimum_initial_loss)
        self.check_every_batch = check_every_batch
        self.initial_loss: float | None = None
        self.report: dict | None = None
        self._good_weights = None
        self._good_epoch: int | None = None  # None: the weights training started from
        self._epoch = 0
        self._previous_mean = None
        self._average = None  # exponential moving average of batch losses, bias-corrected
        self._seen = 0

    @property
    def diverged(self) -> bool:
        return self.report is not None

    @property
    def threshold(self) -> float | None:
        if self.initial_loss is None:
            return None
        return self.factor * max(self.initial_loss, self.minimum_initial_loss)

    def on_train_begin(self, logs=None):
        self._good_weights = self.model.get_weights()
        self._good_epoch = None
        self.initial_loss = None
        self.report = None
        self._average, self._seen = 0.0, 0

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch
        self._previous_mean = None

    def on_train_batch_end(self, batch, logs=None):
        mean = _as_float((logs or {}).get("loss"))
        if not self.check_every_batch or self.report is not None or mean is None:
            return
        if not math.isfinite(mean):
            self._stop("nan", mean, batch)
            return
        # Keras logs the epoch's running mean; this batch's loss is what moved it. (A smaller
        # last batch moves it less, which only pulls the recovered loss towards the mean.)
        loss = mean if self._previous_mean is None else (batch + 1) * mean - batch * self._previous_mean
        self._previous_mean = mean
        self._seen += 1
        self._average = 0.8 * self._average + 0.2 * loss
        smoothed = self._average / (1 - 0.8**self._seen)
        if self.initial_loss is None:
            self.initial_loss = loss
        elif smoothed > self.threshold:
            self._stop("exploded", smoothed, batch)

    def on_epoch_end(self, epoch, logs=None):
        if self.report is None and not self._check_epoch(logs):
            self._good_weights = self.model.get_weights()
            self._good_epoch = epoch

    def _check_epoch(self, logs) -> bool:
        """True when the epoch's mean loss in `logs` diverged (and training is then stopped)."""
        loss = _as_float((logs or {}).get("loss"))
        if loss is None:
            return False
        if not math.isfinite(loss):
            return self._stop("nan", loss, None)
        if self.initial_loss is None:
            self.initial_loss = loss
            return False
        if loss > self.threshold:
            return self._stop("exploded", loss, None)
        if self.num_classes and self.num_classes > 1:
            chance = math.log(self.num_classes)
            if self.initial_loss < 0.5 * chance and loss > 0.9 * chance:
                return self._stop("collapsed", loss, None)
        return False

    def _stop(self, reason: str, loss: float, batch) -> bool:
        rate = current_learning_rate(getattr(self.model, "optimizer", None))
        rate_text = f"{rate:.3g}" if rate is not None else "the configured rate"
        where = f"epoch {self._epoch + 1}" + (f", batch {batch + 1}" if batch is not None else "")
        what = {
            "nan": f"the loss became {loss}",
            "exploded": (
                f"the loss rose to {loss:.4g}, over {self.factor:g}x the initial {self.initial_loss:.4g}"
                + (f" (counted as {self.minimum_initial_loss:g})" if self.initial_loss < self.minimum_initial_loss else "")
            ),
            "collapsed": (
                f"the loss climbed from {self.initial_loss:.4g} back to {loss:.4g}, the loss of guessing among "
                f"{self.num_classes} classes (ln {self.num_classes} = {math.log(self.num_classes or 1):.3g}): the model "
                "collapsed to chance"
            ),
        }[reason]
        restored = "the weights training started from" if self._good_epoch is None else f"the weights of the end of epoch {self._good_epoch + 1}"
        suggestion = rate / 10 if rate else None
        message = (
            f"Training diverged at {where}: {what}. The learning rate ({rate_text}) is probably too high"
            + (f"; try {suggestion:.2g}" if suggestion else "")
            + ", add warmup, or run `finetune check DATA_DIR` for a learning-rate range test. "
            f"Restored {restored}."
        )
        if self._good_weights is not None:
            self.model.set_weights(self._good_weights)
        self.model.stop_training = True
        self.report = {
            "diverged": True,
            "reason": reason,
            "epoch": self._epoch + 1,
            "batch": None if batch is None else batch + 1,
            "loss": loss if math.isfinite(loss) else str(loss),
            "initial_loss": self.initial_loss,
            "learning_rate": rate,
            "restored_epoch": None if self._good_epoch is None else self._good_epoch + 1,
            "message": message,
        }
        return True


class UpdateRatioMonitor(keras.callbacks.Callback):
    """Logs ||update|| / ||weights|| per group of layers, measured on the first batch of each epoch.

    The course's rule of thumb: around 1e-3 is healthy; far above (1e-1) the rate is too high,
    far below (1e-5) too low. Each group adds `update_ratio_<name>` to the epoch logs (and so to
    the History and, placed before `AtomicCSVLogger`, to history.csv).

    Args:
        groups: {name: list of layers}; only their trainable weights count. See `for_freeze_groups`.
    """

    def __init__(self, groups: dict):
        super().__init__()
        self.groups = {name: list(layers) for name, layers in groups.items()}
        self.ratios: dict[str, float] = {}
        self._before = None

    @classmethod
    def for_freeze_groups(cls, model, backbone, spec, count: int, head_layer: str = "classifier"):
        """One group per unfrozen freeze group of `spec` (named by its first pattern) and the head."""
        from finetune.zoo import layers_of_group

        groups = {}
        for index in range(min(count, len(spec.freeze_groups))):
            name = spec.freeze_groups[index][0].rstrip("_$") or f"group_{index}"
            groups[name] = layers_of_group(backbone, spec, index)
        groups[head_layer] = [model.get_layer(head_layer)]
        return cls(groups)

    def _variables(self, name):
        return [variable for layer in self.groups[name] for variable in layer.trainable_weights]

    def on_train_batch_begin(self, batch, logs=None):
        if batch == 0:
            self._before = {name: [np.array(v.numpy()) for v in self._variables(name)] for name in self.groups}

    def on_train_batch_end(self, batch, logs=None):
        if batch != 0 or self._before is None:
            return
        for name in self.groups:
            before = self._before[name]
            after = [np.asarray(v.numpy()) for v in self._variables(name)]
            if not before:
                continue
            update = math.sqrt(sum(float(np.sum((a - b) ** 2)) for a, b in zip(after, before)))
            weight = math.sqrt(sum(float(np.sum(b**2)) for b in before))
            self.ratios[name] = update / weight if weight > 0 else math.inf
        self._before = None

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            for name, ratio in self.ratios.items():
                logs[f"update_ratio_{name}"] = ratio


def describe_update_ratio(ratio: float) -> str:
    """The course's reading of an update/weight ratio."""
    if not math.isfinite(ratio) or ratio > 1e-2:
        return f"{ratio:.1e} is high (healthy is about 1e-3): the learning rate is probably too high"
    if ratio < 1e-4:
        return f"{ratio:.1e} is low (healthy is about 1e-3): the learning rate is probably too low, or the group is frozen"
    return f"{ratio:.1e} is about right (healthy is about 1e-3)"


class LearningRateLogger(keras.callbacks.Callback):
    """Adds `learning_rate`, the rate at the end of each epoch, to the epoch logs (for the curves)."""

    def on_epoch_end(self, epoch, logs=None):
        rate = current_learning_rate(getattr(self.model, "optimizer", None))
        if logs is not None and rate is not None and "learning_rate" not in logs:
            logs["learning_rate"] = rate
