"""Learning-rate schedules as pure functions of the optimizer step.

Every schedule here is a `keras.optimizers.schedules.LearningRateSchedule` that computes the rate
from the step alone (no state), so a resumed run continues on the same curve and a schedule can
be plotted before training. They are registered, so a model saved with its optimizer loads back.
Keras' own schedules are used where they fit (`ExponentialDecay`, `PiecewiseConstantDecay`,
`InverseTimeDecay`, `CosineDecay`); this module adds warmup around any of them, the triangular
cyclic rate and the snapshot-ensemble cosine with restarts.

Example:

```python
schedule = build_schedule("cosine", 1e-3, steps_per_epoch=50, epochs=20, warmup_epochs=2)
optimizer = keras.optimizers.Adam(schedule)
schedule_values(schedule, 20 * 50)  # the rate at every step, e.g. to plot
```
"""

from __future__ import annotations

import math

import keras
import numpy as np
from keras import ops

from finetune.config import SCHEDULES, WARMUPS
from finetune.errors import FinetuneError, check_choice

# Goyal et al. 2017 scale the rate linearly with the batch size from this reference.
REFERENCE_BATCH_SIZE = 256

_serializable = keras.saving.register_keras_serializable(package="finetune")
_Schedule = keras.optimizers.schedules.LearningRateSchedule


@_serializable
class Constant(_Schedule):
    """The same rate at every step.

    Args:
        learning_rate: the rate.
    """

    def __init__(self, learning_rate: float):
        self.learning_rate = float(learning_rate)

    def __call__(self, step):
        step = ops.cast(step, "float32")
        return ops.zeros_like(step) + self.learning_rate

    def get_config(self):
        return {"learning_rate": self.learning_rate}


@_serializable
class Warmup(_Schedule):
    """Warmup for the first `warmup_steps` steps, then `decay` counted from the end of warmup.

    Args:
        decay: the schedule after warmup (any `LearningRateSchedule`); its rate at its own step 0
            is the target of the warmup.
        warmup_steps: steps of warmup; 0 means none.
        mode: "linear" (Goyal et al.'s gradual warmup: target * (step + 1) / warmup_steps),
            "constant" (target * `constant_factor` throughout warmup) or "none". Defaults to "linear".
        constant_factor: the fraction of the target used by constant warmup. Defaults to 0.1.

    Example:

    ```python
    schedule = Warmup(keras.optimizers.schedules.CosineDecay(1e-3, 900), warmup_steps=100)
    ```
    """

    def __init__(self, decay, warmup_steps: int, mode: str = "linear", constant_factor: float = 0.1):
        check_choice("mode", mode, WARMUPS)
        if int(warmup_steps) < 0:
            raise FinetuneError(f"`warmup_steps` must be 0 or more. Received: warmup_steps={warmup_steps}")
        self.decay = keras.optimizers.schedules.deserialize(decay) if isinstance(decay, dict) else decay
        self.warmup_steps = int(warmup_steps)
        self.mode = mode
        self.constant_factor = float(constant_factor)

    def __call__(self, step):
        step = ops.cast(step, "float32")
        if self.mode == "none" or self.warmup_steps == 0:
            return ops.cast(self.decay(step), "float32")
        warmup_steps = float(self.warmup_steps)
        # Clamped so that the decay never sees a negative step (1/t schedules would blow up).
        decayed = ops.cast(self.decay(ops.maximum(step - warmup_steps, 0.0)), "float32")
        target = ops.cast(self.decay(ops.zeros_like(step)), "float32")
        if self.mode == "linear":
            warming = target * ops.minimum((step + 1.0) / warmup_steps, 1.0)
        else:
            warming = target * self.constant_factor
        return ops.where(step < warmup_steps, warming, decayed)

    def get_config(self):
        return {
            "decay": keras.optimizers.schedules.serialize(self.decay),
            "warmup_steps": self.warmup_steps,
            "mode": self.mode,
            "constant_factor": self.constant_factor,
        }


@_serializable
class TriangularCyclic(_Schedule):
    """Smith's (2017) triangular cyclic rate between a minimum and a maximum.

    The rate rises linearly from `minimum_learning_rate` to `maximum_learning_rate` over
    `half_cycle_steps` steps, falls back over as many, and repeats.

    Args:
        minimum_learning_rate: the rate at the start and end of each cycle.
        maximum_learning_rate: the rate in the middle of each cycle.
        half_cycle_steps: steps from the minimum to the maximum.
    """

    def __init__(self, minimum_learning_rate: float, maximum_learning_rate: float, half_cycle_steps: int):
        if int(half_cycle_steps) < 1:
            raise FinetuneError(f"`half_cycle_steps` must be at least 1. Received: half_cycle_steps={half_cycle_steps}")
        self.minimum_learning_rate = float(minimum_learning_rate)
        self.maximum_learning_rate = float(maximum_learning_rate)
        self.half_cycle_steps = int(half_cycle_steps)

    def __call__(self, step):
        step = ops.cast(step, "float32")
        half = float(self.half_cycle_steps)
        cycle = ops.floor(1.0 + step / (2.0 * half))
        distance = ops.abs(step / half - 2.0 * cycle + 1.0)
        span = self.maximum_learning_rate - self.minimum_learning_rate
        return self.minimum_learning_rate + span * ops.maximum(0.0, 1.0 - distance)

    def get_config(self):
        return {
            "minimum_learning_rate": self.minimum_learning_rate,
            "maximum_learning_rate": self.maximum_learning_rate,
            "half_cycle_steps": self.half_cycle_steps,
        }


@_serializable
class SnapshotCosine(_Schedule):
    """Cosine annealing restarted `cycles` times: the schedule of snapshot ensembles.

    Huang et al. 2017, with t = step + 1 counted from 1:
    lr(t) = lr0 / 2 * (cos(pi * mod(t - 1, ceil(T / M)) / ceil(T / M)) + 1), so each cycle starts
    at `initial_learning_rate` and anneals towards 0, where a snapshot is taken.

    Args:
        initial_learning_rate: lr0, the rate at each restart.
        total_steps: T, the steps of all cycles together.
        cycles: M, the number of cycles (and snapshots).
    """

    def __init__(self, initial_learning_rate: float, total_steps: int, cycles: int):
        if int(cycles) < 1 or int(total_steps) < int(cycles):
            raise FinetuneError(
                "`cycles` must be at least 1 and at most `total_steps`. "
                f"Received: cycles={cycles}, total_steps={total_steps}"
            )
        self.initial_learning_rate = float(initial_learning_rate)
        self.total_steps = int(total_steps)
        self.cycles = int(cycles)

    @property
    def cycle_steps(self) -> int:
        return math.ceil(self.total_steps / self.cycles)

    def __call__(self, step):
        step = ops.cast(step, "float32")
        length = float(self.cycle_steps)
        position = step - ops.floor(step / length) * length  # mod(t - 1, ceil(T / M))
        return self.initial_learning_rate / 2.0 * (ops.cos(math.pi * position / length) + 1.0)

    def get_config(self):
        return {"initial_learning_rate": self.initial_learning_rate, "total_steps": self.total_steps, "cycles": self.cycles}


def scale_learning_rate(base_learning_rate: float, batch_size: int, reference_batch_size: int = REFERENCE_BATCH_SIZE) -> float:
    """The linear scaling rule of Goyal et al. 2017: base * batch_size / 256."""
    if int(batch_size) < 1:
        raise FinetuneError(f"`batch_size` must be at least 1. Received: batch_size={batch_size}")
    return float(base_learning_rate) * int(batch_size) / reference_batch_size


def build_schedule(
    name: str,
    base_learning_rate: float,
    steps_per_epoch: int,
    epochs: int,
    warmup_epochs: int = 0,
    warmup: str = "linear",
    batch_size: int | None = None,
    **decay_options,
):
    """The schedule called `name`, in steps, with optional warmup in front.

    Epoch counts in `decay_options` count from the end of warmup, and the decay spans the
    remaining `epochs - warmup_epochs` epochs.

    Args:
        name: one of "constant", "step", "exponential", "inverse_time", "cosine", "cyclic",
            "snapshot".
        base_learning_rate: the rate after warmup (before decay); with `batch_size`, the rate
            for a batch of 256, scaled linearly.
        steps_per_epoch: optimizer steps (batches) per epoch.
        epochs: epochs of training, warmup included.
        warmup_epochs: epochs of warmup. Defaults to 0.
        warmup: "linear", "constant" or "none". Defaults to "linear".
        batch_size: when given, `base_learning_rate` is scaled by batch_size / 256. Defaults to None.
        **decay_options: per schedule (defaults in brackets):
            step: `factor` [0.1] applied every `every_epochs` [a third of the decay epochs], or
                at `milestones` (epochs, e.g. [10, 20]) instead;
            exponential: `decay_rate` [0.9], the factor per epoch (continuous);
            inverse_time: `decay_rate` [0.5]: base / (1 + decay_rate * epoch);
            cosine: `minimum_fraction` [0.0] of the base rate at the end;
            cyclic: `minimum_fraction` [0.1] (the low end is base * minimum_fraction),
                `half_cycle_epochs` [2];
            snapshot: `cycles` [3]; the decay epochs must be a multiple of `cycles` so that every
                cycle ends at an epoch end, where its snapshot is saved.

    Raises:
        FinetuneError: an unknown name, option or warmup, or inconsistent numbers.
    """
    check_choice("name", name, SCHEDULES)
    check_choice("warmup", warmup, WARMUPS)
    steps_per_epoch, epochs, warmup_epochs = int(steps_per_epoch), int(epochs), int(warmup_epochs)
    if steps_per_epoch < 1 or epochs < 1:
        raise FinetuneError(
            f"`steps_per_epoch` and `epochs` must be at least 1. Received: steps_per_epoch={steps_per_epoch}, epochs={epochs}"
        )
    if warmup == "none":
        warmup_epochs = 0
    if not 0 <= warmup_epochs < epochs:
        raise FinetuneError(
            f"`warmup_epochs` must be 0 or more and fewer than `epochs` ({epochs}). Received: warmup_epochs={warmup_epochs}"
        )
    if not base_learning_rate > 0:
        raise FinetuneError(f"`base_learning_rate` must be positive. Received: base_learning_rate={base_learning_rate}")
    rate = scale_learning_rate(base_learning_rate, batch_size) if batch_size is not None else float(base_learning_rate)
    decay_epochs = epochs - warmup_epochs
    decay = _decay(name, rate, steps_per_epoch, decay_epochs, dict(decay_options))
    if warmup_epochs == 0:
        return decay
    return Warmup(decay, warmup_epochs * steps_per_epoch, mode=warmup)


def _decay(name: str, rate: float, steps_per_epoch: int, epochs: int, options: dict):
    schedules = keras.optimizers.schedules
    allowed = {
        "constant": {},
        "step": {"factor": 0.1, "every_epochs": max(1, epochs // 3), "milestones": None},
        "exponential": {"decay_rate": 0.9},
        "inverse_time": {"decay_rate": 0.5},
        "cosine": {"minimum_fraction": 0.0},
        "cyclic": {"minimum_fraction": 0.1, "half_cycle_epochs": 2},
        "snapshot": {"cycles": 3},
    }[name]
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise FinetuneError(
            f"The {name!r} schedule takes {', '.join(allowed) or 'no options'}. "
            f"Received: {', '.join(f'{key}={options[key]!r}' for key in unknown)}"
        )
    values = {**allowed, **options}
    total_steps = epochs * steps_per_epoch
    if name == "constant":
        return Constant(rate)
    if name == "step":
        if values["milestones"]:
            milestones = sorted(int(epoch) for epoch in values["milestones"])
            if milestones[0] < 1:
                raise FinetuneError(f"`milestones` are epochs from 1 on. Received: milestones={values['milestones']}")
            # PiecewiseConstantDecay switches after a boundary: epoch m starts at step m * steps_per_epoch.
            boundaries = [epoch * steps_per_epoch - 1 for epoch in milestones]
            rates = [rate * values["factor"] ** index for index in range(len(milestones) + 1)]
            return schedules.PiecewiseConstantDecay(boundaries, rates)
        every = int(values["every_epochs"])
        if every < 1:
            raise FinetuneError(f"`every_epochs` must be at least 1. Received: every_epochs={every}")
        return schedules.ExponentialDecay(rate, every * steps_per_epoch, values["factor"], staircase=True)
    if name == "exponential":
        return schedules.ExponentialDecay(rate, steps_per_epoch, values["decay_rate"])
    if name == "inverse_time":
        return schedules.InverseTimeDecay(rate, steps_per_epoch, values["decay_rate"])
    if name == "cosine":
        return schedules.CosineDecay(rate, total_steps, alpha=values["minimum_fraction"])
    if name == "cyclic":
        half_cycle = int(values["half_cycle_epochs"]) * steps_per_epoch
        return TriangularCyclic(rate * values["minimum_fraction"], rate, half_cycle)
    cycles = int(values["cycles"])
    if cycles < 1 or epochs % cycles:
        nearest = max(cycles, round(epochs / max(cycles, 1)) * cycles)
        raise FinetuneError(
            f"The snapshot schedule needs the epochs after warmup to be a multiple of `cycles`, so every cycle "
            f"ends at an epoch end where its snapshot is saved; use e.g. {nearest} epochs. "
            f"Received: epochs after warmup={epochs}, cycles={cycles}"
        )
    return SnapshotCosine(rate, total_steps, cycles)


def schedule_values(schedule, total_steps: int) -> np.ndarray:
    """The rate at steps 0 .. total_steps - 1, as float64 numbers."""
    if not isinstance(schedule, _Schedule):
        return np.full(int(total_steps), float(schedule))
    steps = np.arange(int(total_steps), dtype=np.float32)
    try:
        values = np.asarray(ops.convert_to_numpy(schedule(steps)), dtype=np.float64)
        if values.shape == steps.shape:
            return values
    except Exception:  # noqa: BLE001  schedules with ops.cond take one step at a time
        pass
    return np.array([float(ops.convert_to_numpy(schedule(step))) for step in steps])


def plot_schedule(schedule, total_steps: int, out_png, steps_per_epoch: int | None = None, title: str | None = None):
    """Draws the rate against the step (or the epoch, given `steps_per_epoch`) into `out_png`."""
    from finetune.curves import save_figure

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    values = schedule_values(schedule, total_steps)
    x = np.arange(len(values), dtype=np.float64)
    if steps_per_epoch:
        x = x / steps_per_epoch
    figure, axis = plt.subplots(figsize=(6, 3.5))
    axis.plot(x, values)
    axis.set_xlabel("epoch" if steps_per_epoch else "step")
    axis.set_ylabel("learning rate")
    axis.set_title(title or type(schedule).__name__)
    axis.grid(alpha=0.3)
    return save_figure(figure, out_png)
