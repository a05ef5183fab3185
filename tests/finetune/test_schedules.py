"""Schedules: values at chosen steps against numbers computed by hand, warmup, serialisation."""

import math

import keras
import numpy as np
import pytest

from finetune.errors import FinetuneError
from finetune.schedules import (
    SCHEDULES,
    WARMUPS,
    Constant,
    SnapshotCosine,
    TriangularCyclic,
    Warmup,
    build_schedule,
    plot_schedule,
    scale_learning_rate,
    schedule_values,
)


def values_at(schedule, steps):
    return [float(keras.ops.convert_to_numpy(schedule(step))) for step in steps]


def test_constant():
    assert values_at(build_schedule("constant", 0.1, 10, 5), [0, 7, 49]) == pytest.approx([0.1] * 3)


def test_step_decay_every_n_epochs():
    schedule = build_schedule("step", 0.1, steps_per_epoch=10, epochs=9, every_epochs=3, factor=0.1)
    # Epoch 3 (steps 30..39) is the first at 0.01, epoch 6 the first at 0.001.
    assert values_at(schedule, [0, 29, 30, 59, 60]) == pytest.approx([0.1, 0.1, 0.01, 0.01, 0.001])


def test_step_decay_at_milestones():
    schedule = build_schedule("step", 0.1, steps_per_epoch=10, epochs=8, milestones=[2, 5], factor=0.5)
    assert values_at(schedule, [0, 19, 20, 49, 50, 79]) == pytest.approx([0.1, 0.1, 0.05, 0.05, 0.025, 0.025])


def test_exponential_per_epoch():
    schedule = build_schedule("exponential", 0.1, steps_per_epoch=10, epochs=5, decay_rate=0.5)
    assert values_at(schedule, [0, 10, 15]) == pytest.approx([0.1, 0.05, 0.1 * 0.5**1.5])


def test_inverse_time():
    schedule = build_schedule("inverse_time", 0.1, steps_per_epoch=10, epochs=5, decay_rate=0.5)
    assert values_at(schedule, [0, 20, 30]) == pytest.approx([0.1, 0.1 / 2.0, 0.1 / 2.5])


def test_cosine():
    schedule = build_schedule("cosine", 1.0, steps_per_epoch=10, epochs=10)
    assert values_at(schedule, [0, 25, 50, 100]) == pytest.approx([1.0, 0.5 * (1 + math.cos(math.pi / 4)), 0.5, 0.0], abs=1e-6)
    floor = build_schedule("cosine", 1.0, steps_per_epoch=10, epochs=10, minimum_fraction=0.1)
    assert values_at(floor, [100]) == pytest.approx([0.1])


def test_cyclic_triangle():
    # half a cycle is 2 epochs of 5 steps: 0.1 -> 1.0 over 10 steps and back.
    schedule = build_schedule("cyclic", 1.0, steps_per_epoch=5, epochs=8, minimum_fraction=0.1, half_cycle_epochs=2)
    assert values_at(schedule, [0, 5, 10, 15, 20, 25]) == pytest.approx([0.1, 0.55, 1.0, 0.55, 0.1, 0.55])


def test_snapshot_follows_huang_et_al():
    lr0, total, cycles = 0.2, 60, 3
    schedule = build_schedule("snapshot", lr0, steps_per_epoch=10, epochs=6, cycles=cycles)
    length = math.ceil(total / cycles)

    def huang(t):  # t counts from 1
        return lr0 / 2 * (math.cos(math.pi * ((t - 1) % length) / length) + 1)

    steps = [0, 10, 19, 20, 39, 40, 59]
    assert values_at(schedule, steps) == pytest.approx([huang(step + 1) for step in steps], rel=1e-5)
    assert values_at(schedule, [0, 10, 20]) == pytest.approx([0.2, 0.1, 0.2])
    assert values_at(schedule, [19])[0] == pytest.approx(0.1 * (1 + math.cos(math.pi * 19 / 20)), rel=1e-5)


def test_snapshot_needs_whole_epochs_per_cycle():
    with pytest.raises(FinetuneError, match="multiple of `cycles`.*9 epochs"):
        build_schedule("snapshot", 0.1, steps_per_epoch=10, epochs=10, cycles=3)


def test_linear_warmup_then_decay_counted_from_the_end_of_warmup():
    schedule = build_schedule("cosine", 1.0, steps_per_epoch=10, epochs=12, warmup_epochs=2)
    assert isinstance(schedule, Warmup)
    # 20 warmup steps: (step + 1) / 20; then cosine over the remaining 100 steps.
    assert values_at(schedule, [0, 9, 19, 20, 70, 120]) == pytest.approx([0.05, 0.5, 1.0, 1.0, 0.5, 0.0], abs=1e-6)


def test_constant_warmup():
    schedule = build_schedule("step", 1.0, steps_per_epoch=10, epochs=6, warmup_epochs=1, warmup="constant", every_epochs=2)
    assert values_at(schedule, [0, 9, 10, 29, 30]) == pytest.approx([0.1, 0.1, 1.0, 1.0, 0.1])


def test_warmup_none_ignores_warmup_epochs():
    schedule = build_schedule("cosine", 1.0, steps_per_epoch=10, epochs=10, warmup_epochs=3, warmup="none")
    assert not isinstance(schedule, Warmup)
    assert values_at(schedule, [0])[0] == pytest.approx(1.0)


def test_warmup_never_feeds_a_negative_step_to_the_decay():
    schedule = Warmup(keras.optimizers.schedules.InverseTimeDecay(1.0, 1, 2.0), warmup_steps=10)
    values = schedule_values(schedule, 20)
    assert np.all(np.isfinite(values)) and values.max() == pytest.approx(1.0)


def test_linear_batch_size_scaling():
    assert scale_learning_rate(0.1, 512) == pytest.approx(0.2)
    assert values_at(build_schedule("constant", 0.1, 10, 5, batch_size=64), [0]) == pytest.approx([0.025])


def _snapshot(position, length=10, rate=0.1):  # Huang et al.'s cosine at `position` steps into a cycle
    return rate / 2 * (math.cos(math.pi * position / length) + 1)


# Each schedule with its rate at chosen steps, computed by hand from the closed forms.
CLOSED_FORMS = [
    (Constant(0.3), {0: 0.3, 17: 0.3, 39: 0.3}),
    # Triangle of period 8 steps between 0.01 and 0.1: 0.01 + 0.09 * (1 - |(step mod 8) / 4 - 1|).
    (TriangularCyclic(0.01, 0.1, 4), {0: 0.01, 3: 0.0775, 4: 0.1, 7: 0.0325, 17: 0.0325, 38: 0.055}),
    # Cycles of 40 / 4 = 10 steps.
    (SnapshotCosine(0.1, 40, 4), {0: 0.1, 3: _snapshot(3), 7: _snapshot(7), 17: _snapshot(7), 39: _snapshot(9)}),
    # 5 steps at 0.2 x the target (0.1), then the cosine counted from the end of warmup.
    (Warmup(SnapshotCosine(0.1, 40, 4), 5, "constant", 0.2),
     {0: 0.02, 4: 0.02, 5: 0.1, 7: _snapshot(2), 17: _snapshot(2), 39: _snapshot(4)}),
    # 10 warmup steps of (step + 1) / 10 x 0.1; then 0.1 until epoch 3 after warmup (step 40), 0.01 after.
    (build_schedule("step", 0.1, 10, 8, warmup_epochs=1, milestones=[3]),
     {0: 0.01, 3: 0.04, 9: 0.1, 17: 0.1, 39: 0.1, 40: 0.01, 79: 0.01}),
]


@pytest.mark.parametrize("schedule, expected", CLOSED_FORMS,
                         ids=["constant", "cyclic", "snapshot", "constant_warmup", "linear_warmup_step"])
def test_schedules_serialise_and_are_pure_functions_of_the_step(schedule, expected):
    restored = keras.optimizers.schedules.deserialize(keras.optimizers.schedules.serialize(schedule))
    steps = list(expected)
    for candidate in (schedule, restored):
        assert values_at(candidate, steps) == pytest.approx([expected[step] for step in steps], rel=1e-5)
    # No state: asked in another order, after other steps, every step still gives its own rate.
    backwards = steps[::-1] + steps
    assert values_at(schedule, backwards) == pytest.approx([expected[step] for step in backwards], rel=1e-5)


def test_a_model_saved_with_a_schedule_loads_in_safe_mode(tmp_path):
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    model.compile(optimizer=keras.optimizers.Adam(build_schedule("snapshot", 0.1, 5, 6, warmup_epochs=0, cycles=2)), loss="mse")
    model.fit(np.ones((4, 3)), np.ones((4, 2)), epochs=1, verbose=0)
    model.save(tmp_path / "model.keras")
    loaded = keras.saving.load_model(tmp_path / "model.keras", safe_mode=True)
    assert isinstance(loaded.optimizer._learning_rate, SnapshotCosine)


@pytest.mark.parametrize("warmup", WARMUPS)
@pytest.mark.parametrize("name", SCHEDULES)
def test_every_listed_schedule_and_warmup_builds(name, warmup):
    # The command line offers exactly these lists: each name must give a schedule.
    options = {"cycles": 1} if name == "snapshot" else {}
    values = schedule_values(build_schedule(name, 0.1, steps_per_epoch=2, epochs=4, warmup_epochs=1, warmup=warmup, **options), 8)
    assert len(values) == 8 and (values > 0).all() and values.max() <= 0.1 + 1e-7


def test_unknown_option_and_name_are_clear_errors():
    with pytest.raises(FinetuneError, match="takes minimum_fraction.*Received: cycles=3"):
        build_schedule("cosine", 0.1, 10, 5, cycles=3)
    with pytest.raises(FinetuneError, match="Received: name='linear'"):
        build_schedule("linear", 0.1, 10, 5)
    with pytest.raises(FinetuneError, match="warmup_epochs"):
        build_schedule("cosine", 0.1, 10, 5, warmup_epochs=5)


def test_schedule_values_and_plot(tmp_path):
    schedule = build_schedule("cosine", 1.0, steps_per_epoch=4, epochs=5, warmup_epochs=1)
    values = schedule_values(schedule, 20)
    assert values.shape == (20,) and values[3] == pytest.approx(1.0) and values[-1] < 0.05
    # Keras' own CosineDecay with warmup goes through ops.cond, one step at a time.
    keras_warmup = keras.optimizers.schedules.CosineDecay(0.0, 10, warmup_target=1.0, warmup_steps=5)
    assert schedule_values(keras_warmup, 15)[5] == pytest.approx(1.0)
    path = plot_schedule(schedule, 20, tmp_path / "schedule.png", steps_per_epoch=4)
    assert path.read_bytes()[:4] == b"\x89PNG"
