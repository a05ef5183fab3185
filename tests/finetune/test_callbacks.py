"""Callbacks driven by scripted logs (and short fits of a tiny dense model)."""

import errno
import math
import os

import keras
import numpy as np
import pytest

from finetune.callbacks import (
    AtomicCSVLogger,
    DivergenceGuard,
    LearningRateLogger,
    SnapshotSaver,
    UpdateRatioMonitor,
    current_learning_rate,
    describe_update_ratio,
)
from finetune.ensemble import load_members, snapshot_paths
from finetune.errors import FinetuneError
from finetune.schedules import build_schedule


def tiny_model(seed=0):
    keras.utils.set_random_seed(seed)
    model = keras.Sequential(
        [keras.Input((4,)), keras.layers.Dense(8, activation="relu", name="hidden"), keras.layers.Dense(3, activation="softmax", name="classifier")]
    )
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    return model


def tiny_data(count=32):
    rng = np.random.default_rng(0)
    return rng.normal(size=(count, 4)).astype("float32"), rng.integers(0, 3, count)


def shift_weights(model, amount):
    model.set_weights([weight + amount for weight in model.get_weights()])


# -- AtomicCSVLogger ------------------------------------------------------------------------

EPOCH_LOGS = [{"loss": 1.5, "accuracy": 0.25, "val_loss": 1.75, "val_accuracy": 0.5},
              {"loss": 0.75, "accuracy": 0.5, "val_loss": 1.25, "val_accuracy": 0.75},
              {"loss": 0.5, "accuracy": 0.75, "val_loss": 1.0, "val_accuracy": 1.0}]


def _log_epochs(logger, epochs):
    logger.on_train_begin()
    for epoch in epochs:
        logger.on_epoch_end(epoch, dict(EPOCH_LOGS[epoch]))
    logger.on_train_end()


def test_history_csv_is_what_keras_writes_and_a_resumed_run_appends_to_it(tmp_path):
    ours, keras_own = tmp_path / "ours.csv", tmp_path / "keras.csv"
    _log_epochs(keras.callbacks.CSVLogger(str(keras_own), append=True), [0, 1, 2])
    _log_epochs(AtomicCSVLogger(str(ours), append=True), [0, 1])
    _log_epochs(AtomicCSVLogger(str(ours), append=True), [2])  # resumed after epoch 2
    assert ours.read_bytes() == keras_own.read_bytes()
    assert ours.read_text().count("epoch,") == 1 and len(ours.read_text().splitlines()) == 4
    _log_epochs(AtomicCSVLogger(str(ours), append=False), [0])  # a fresh run starts the file again
    assert len(ours.read_text().splitlines()) == 2


def test_history_csv_is_replaced_whole_so_a_failed_write_keeps_the_epochs_before(tmp_path, monkeypatch):
    path = tmp_path / "history.csv"
    logger = AtomicCSVLogger(str(path), append=True)
    logger.on_train_begin()
    logger.on_epoch_end(0, dict(EPOCH_LOGS[0]))
    after_first = path.read_text()
    assert after_first.splitlines()[1].startswith("0,")  # complete after each epoch, before training ends

    def disk_full(*args):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "replace", disk_full)
    with pytest.raises(FinetuneError, match=f"Cannot write {path}.*disk is full"):
        logger.on_epoch_end(1, dict(EPOCH_LOGS[1]))
    monkeypatch.undo()
    assert path.read_text() == after_first
    assert [item.name for item in tmp_path.iterdir()] == ["history.csv"]


def test_a_fit_resumed_at_its_last_epoch_continues_history_csv(tmp_path):
    from finetune.curves import read_history

    path = tmp_path / "history.csv"
    model = tiny_model()
    x, y = tiny_data()
    model.fit(x, y, epochs=2, verbose=0, validation_data=(x, y), callbacks=[AtomicCSVLogger(str(path), append=True)])
    model.fit(x, y, initial_epoch=2, epochs=3, verbose=0, validation_data=(x, y),
              callbacks=[AtomicCSVLogger(str(path), append=True)])
    assert [line.split(",")[0] for line in path.read_text().splitlines()] == ["epoch", "0", "1", "2"]
    assert len(read_history(path)["val_loss"]) == 3


# -- SnapshotSaver -------------------------------------------------------------------------


def test_snapshot_saver_saves_at_the_end_of_every_cycle(tmp_path):
    saver = SnapshotSaver(tmp_path / "snapshots", cycle_epochs=2, offset_epochs=1)
    saver.set_model(tiny_model())
    for epoch in range(7):  # one warmup epoch, then three cycles of two
        saver.on_epoch_end(epoch, {})
    assert [path.name for path in saver.saved] == ["snapshot_01.keras", "snapshot_02.keras", "snapshot_03.keras"]
    assert snapshot_paths(tmp_path) == saver.saved
    assert not list((tmp_path / "snapshots").glob(".tmp*"))  # written atomically, nothing left behind


def test_snapshot_ensemble_fit_leaves_one_loadable_file_per_cycle(tmp_path):
    model = tiny_model()
    images, labels = tiny_data()
    model.compile(optimizer=keras.optimizers.SGD(build_schedule("snapshot", 0.1, 4, 6, cycles=3)), loss="sparse_categorical_crossentropy")
    saver = SnapshotSaver(tmp_path / "snapshots", cycle_epochs=2)
    model.fit(images, labels, batch_size=8, epochs=6, callbacks=[saver], verbose=0)
    members = load_members(snapshot_paths(tmp_path))
    assert len(members) == 3
    assert getattr(keras.saving.load_model(saver.saved[0]), "optimizer", None) is None  # saved without its state
    # The last snapshot is the final model.
    np.testing.assert_allclose(members[-1].predict(images, verbose=0), model.predict(images, verbose=0), atol=1e-6)


def test_snapshot_saver_can_save_the_model_inside_a_training_wrapper(tmp_path):
    model = tiny_model()
    inputs = keras.Input((4,))
    wrapper = keras.Model(inputs, model(keras.layers.GaussianNoise(0.1, name="augment")(inputs)))
    saver = SnapshotSaver(tmp_path, cycle_epochs=1, model=model)
    saver.set_model(wrapper)
    saver.on_epoch_end(0, {})
    saved = load_members(saver.saved)[0]
    assert "augment" not in [layer.name for layer in saved.layers]
    images, _ = tiny_data(4)
    np.testing.assert_allclose(saved.predict(images, verbose=0), model.predict(images, verbose=0), atol=1e-6)


def test_snapshot_saver_rejects_empty_cycles(tmp_path):
    with pytest.raises(FinetuneError, match="cycle_epochs=0"):
        SnapshotSaver(tmp_path, cycle_epochs=0)


# -- DivergenceGuard -----------------------------------------------------------------------


def started_guard(**options):
    model = tiny_model()
    guard = DivergenceGuard(**options)
    guard.set_model(model)
    guard.on_train_begin()
    guard.on_epoch_begin(0)
    return guard, model


def feed_batches(guard, losses, epoch=0):
    """Feeds per-batch losses as Keras logs them: the running mean of the epoch so far."""
    guard.on_epoch_begin(epoch)
    for batch, loss in enumerate(losses):
        guard.on_train_batch_end(batch, {"loss": float(np.mean(losses[: batch + 1]))})
        if guard.diverged:
            return batch
    return None


@pytest.mark.parametrize("loss, diverged", [(2.9, False), (3.01, True)])
def test_three_times_the_initial_loss_is_divergence(loss, diverged):
    guard, model = started_guard(check_every_batch=False)
    guard.on_epoch_end(0, {"loss": 1.0})
    guard.on_epoch_begin(1)
    guard.on_epoch_end(1, {"loss": loss})
    assert guard.diverged is diverged and bool(model.stop_training) is diverged
    if diverged:
        assert guard.report["reason"] == "exploded" and guard.report["initial_loss"] == 1.0


def test_batch_check_follows_a_moving_average_of_batch_losses():
    # Moving average (0.8) of 1.0, 1.1, 0.9, 9.0, bias-corrected: 3.70 > 3 x 1.0 at the fourth batch.
    guard, model = started_guard()
    assert feed_batches(guard, [1.0, 1.1, 0.9, 9.0, 9.0]) == 3
    assert guard.report["batch"] == 4 and guard.report["loss"] == pytest.approx(2.1872 / 0.5904, rel=1e-4)
    # One noisy batch (4.0 after four 1.0s: average 1.89) is not divergence.
    guard, model = started_guard()
    assert feed_batches(guard, [1.0, 1.0, 1.0, 1.0, 4.0]) is None and not model.stop_training


def test_a_near_zero_initial_loss_counts_as_the_minimum():
    # A head fit on the training data starts at 0.005; 0.03 after a restart is not divergence.
    guard, _ = started_guard()
    assert feed_batches(guard, [0.005, 0.03, 0.03, 0.03]) is None
    assert feed_batches(guard, [0.03, 1.0, 1.0, 1.0], epoch=1) is not None
    assert "initial 0.005 (counted as 0.1)" in guard.report["message"]


@pytest.mark.parametrize("loss", [float("nan"), float("inf")])
def test_nan_or_inf_stops_at_once_and_restores_the_last_good_weights(loss):
    guard, model = started_guard()
    guard.on_train_batch_end(0, {"loss": 1.0})
    shift_weights(model, 1.0)  # training moved the weights during epoch 1 ...
    guard.on_epoch_end(0, {"loss": 0.8})  # ... which ended well: these are the good weights
    good = model.get_weights()
    guard.on_epoch_begin(1)
    shift_weights(model, 5.0)  # then they went bad
    guard.on_train_batch_end(3, {"loss": loss})
    assert guard.report["reason"] == "nan" and model.stop_training
    assert guard.report["epoch"] == 2 and guard.report["batch"] == 4 and guard.report["restored_epoch"] == 1
    for restored, expected in zip(model.get_weights(), good):
        np.testing.assert_array_equal(restored, expected)
    assert "learning rate (0.1) is probably too high" in guard.report["message"]
    assert "end of epoch 1" in guard.report["message"]


def test_divergence_in_the_first_epoch_restores_the_starting_weights():
    guard, model = started_guard()
    start = model.get_weights()
    guard.on_train_batch_end(0, {"loss": 0.5})
    shift_weights(model, 3.0)
    guard.on_train_batch_end(1, {"loss": 10.0})
    assert "weights training started from" in guard.report["message"]
    np.testing.assert_array_equal(model.get_weights()[0], start[0])


def test_silent_collapse_to_chance_is_caught_with_the_number_of_classes():
    # SGD with momentum at too high a rate: the loss climbs from 0.4 to ln(3) = 1.10, under 3x,
    # and accuracy falls to chance, without any NaN.
    guard, model = started_guard(num_classes=3)
    guard.on_train_batch_end(0, {"loss": 0.4})
    guard.on_epoch_end(0, {"loss": 0.45})
    guard.on_epoch_begin(1)
    guard.on_train_batch_end(0, {"loss": 1.05})  # not checked per batch: a noisy batch may do this
    assert not guard.diverged
    guard.on_epoch_end(1, {"loss": 1.08})
    assert guard.report["reason"] == "collapsed"
    assert "collapsed to chance" in guard.report["message"] and "learning rate" in guard.report["message"]
    assert not started_guard()[0].diverged  # without num_classes the same losses pass


def test_guard_stops_a_real_fit_at_a_rate_too_high_and_names_the_rate():
    model = tiny_model()
    model.compile(optimizer=keras.optimizers.SGD(1e4), loss="sparse_categorical_crossentropy")
    start = model.get_weights()
    guard = DivergenceGuard()
    images, labels = tiny_data()
    history = model.fit(images, labels, batch_size=8, epochs=5, callbacks=[guard], verbose=0)
    assert guard.diverged and len(history.history["loss"]) == 1
    assert guard.report["learning_rate"] == pytest.approx(1e4)
    assert all(np.all(np.isfinite(weight)) for weight in model.get_weights())
    np.testing.assert_array_equal(model.get_weights()[0], start[0])


def test_a_healthy_fit_is_left_alone():
    model = tiny_model()
    guard = DivergenceGuard(num_classes=3)
    images, labels = tiny_data()
    model.fit(images, labels, batch_size=8, epochs=3, callbacks=[guard], verbose=0)
    assert not guard.diverged and guard.report is None


# -- UpdateRatioMonitor and LearningRateLogger ---------------------------------------------


def test_update_ratio_is_logged_per_group_into_the_history():
    model = tiny_model()
    model.get_layer("hidden").trainable = False
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="sparse_categorical_crossentropy")
    monitor = UpdateRatioMonitor({"hidden": [model.get_layer("hidden")], "classifier": [model.get_layer("classifier")]})
    images, labels = tiny_data()
    history = model.fit(images, labels, batch_size=8, epochs=2, callbacks=[monitor, LearningRateLogger()], verbose=0)
    ratios = history.history["update_ratio_classifier"]
    assert len(ratios) == 2 and all(0 < ratio < 1 for ratio in ratios)
    assert "update_ratio_hidden" not in history.history  # frozen: no trainable weights to measure
    assert history.history["learning_rate"] == pytest.approx([0.1, 0.1])


def test_update_ratio_grows_with_the_learning_rate():
    images, labels = tiny_data()
    measured = []
    for rate in (1e-3, 1e-1):
        model = tiny_model()
        model.compile(optimizer=keras.optimizers.SGD(rate), loss="sparse_categorical_crossentropy")
        monitor = UpdateRatioMonitor({"all": model.layers})
        model.fit(images, labels, batch_size=8, epochs=1, callbacks=[monitor], verbose=0)
        measured.append(monitor.ratios["all"])
    assert measured[1] == pytest.approx(100 * measured[0], rel=0.05)  # SGD: the step is rate x gradient


def test_update_ratio_groups_from_a_backbone_spec():
    from finetune import zoo
    from finetune.model import build_classifier

    spec = zoo.get_spec("mobilenet_v2")
    backbone = zoo.build_backbone(spec, image_size=32, weights="none", alpha=0.35)
    model = build_classifier(backbone, spec.preprocessing, 2, 32)
    monitor = UpdateRatioMonitor.for_freeze_groups(model, backbone, spec, 2)
    assert list(monitor.groups) == ["Conv_1", "block_16", "classifier"]
    assert all(monitor.groups[name] for name in monitor.groups)


def test_describe_update_ratio():
    assert "about right" in describe_update_ratio(1e-3)
    assert "too high" in describe_update_ratio(0.5) and "too high" in describe_update_ratio(math.inf)
    assert "too low" in describe_update_ratio(1e-6)


def test_current_learning_rate_is_the_rate_of_the_last_step():
    optimizer = keras.optimizers.SGD(build_schedule("snapshot", 1.0, 2, 4, cycles=2))
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    model.compile(optimizer=optimizer, loss="mse")
    model.fit(np.ones((8, 4)), np.ones((8, 3)), batch_size=2, epochs=1, verbose=0)  # 4 steps: the first cycle
    # The last step of the cycle (step 3 of 4) is near 0; the next step would restart at 1.0.
    assert current_learning_rate(optimizer) == pytest.approx(0.5 * (1 + math.cos(math.pi * 3 / 4)))
    assert current_learning_rate(None) is None
