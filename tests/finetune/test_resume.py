"""A run folder given as --out: a finished run is never trained over without --overwrite; an unfinished one continues."""

import pytest

import finetune
from finetune.errors import FinetuneError
from finetune.resume import check_out
from tests.conftest import write_image_folder

TINY = dict(backbone="mobilenet_v2", weights="none", alpha=0.35, image_size=32, epochs=0, verbose=0)


def test_a_finished_run_is_refused_without_overwrite_and_replaced_with_it(tmp_path):
    data = write_image_folder(tmp_path / "data", classes=("blue", "red"), per_class=6, size=32)
    out = tmp_path / "run"
    finetune.train(data, out=out, **TINY)
    metrics, history = (out / "metrics.json").read_text(), (out / "history.csv").read_text()
    (out / "notes.txt").write_text("the user's own file")
    with pytest.raises(FinetuneError, match=r"finished run.*--overwrite"):
        finetune.train(data, out=out, **TINY)
    assert (out / "metrics.json").read_text() == metrics  # untouched

    (out / "snapshots").mkdir()  # a stale file of the old run, which must not survive into the new one
    (out / "snapshots" / "snapshot_1.keras").write_text("old")
    finetune.train(data, out=out, overwrite=True, **TINY)
    assert (out / "history.csv").read_text() == history  # rewritten, not appended to the old rows
    assert not (out / "snapshots").exists()
    assert (out / "notes.txt").read_text() == "the user's own file"  # only the run's own files are removed


def test_the_state_of_an_out_folder(tmp_path):
    assert check_out(None, overwrite=False) == "new"
    assert check_out(tmp_path / "missing", overwrite=False) == "new"
    (tmp_path / "killed").mkdir()
    (tmp_path / "killed" / "labels.json").write_text("[]")
    (tmp_path / "killed" / "backup").mkdir()
    assert check_out(tmp_path / "killed", overwrite=False) == "resume"
    (tmp_path / "killed" / "metrics.json").write_text("{}")
    with pytest.raises(FinetuneError, match="Received: out="):
        check_out(tmp_path / "killed", overwrite=False)
    assert check_out(tmp_path / "killed", overwrite=True) == "overwrite"
    assert sorted(path.name for path in (tmp_path / "killed").iterdir()) == []


def _run_files(directory):
    return sorted(str(path.relative_to(directory)) for path in directory.rglob("*"))


@pytest.mark.slow
def test_a_run_killed_with_sigkill_mid_finetuning_resumes_and_ends_as_the_uninterrupted_run(tmp_path):
    import json
    import os
    import signal
    import subprocess
    import sys
    import time

    import numpy as np
    from PIL import Image

    data = tmp_path / "data"
    write_image_folder(data / "train", classes=("a", "b", "c"), per_class=30, size=32)
    write_image_folder(data / "test", classes=("a", "b", "c"), per_class=6, size=32, seed=1)
    # The imported ImageNet weights, so that the finetuned model is the one kept (from scratch, at this size, the
    # linear head wins and the comparison would not reach the resumed weights).
    options = ["--backbone", "mobilenet_v2_torchvision", "--image-size", "32", "--strategy", "finetune_top",
               "--epochs", "8", "--augment", "light", "--learning-rate", "0.0003", "--tta", "none", "--no-cache"]
    command = [sys.executable, "-m", "finetune.cli", "train", str(data), *options]

    whole = tmp_path / "whole"
    subprocess.run([*command, "--out", str(whole), "--quiet"], check=True, timeout=300)

    killed = tmp_path / "killed"
    process = subprocess.Popen([*command, "--out", str(killed), "--quiet"])
    state, deadline = killed / "backup" / "state.json", time.monotonic() + 240
    while time.monotonic() < deadline and process.poll() is None:
        if state.exists() and json.loads(state.read_text())["epoch"] >= 2:
            break
        time.sleep(0.02)
    assert process.poll() is None, "the run ended before it could be killed: give it more epochs"
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    epoch_at_kill = json.loads(state.read_text())["epoch"]
    assert not (killed / "metrics.json").exists()

    resumed = subprocess.run([*command, "--out", str(killed)], capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "unfinished run" in resumed.stderr  # it says what it does

    mine, theirs = (json.loads((folder / "metrics.json").read_text()) for folder in (killed, whole))
    assert mine["stages"]["finetune"]["kept"] and theirs["stages"]["finetune"]["kept"]
    assert mine["stages"]["finetune"]["resumed_at_epoch"] == epoch_at_kill  # resumed there, not from the start
    assert mine["stages"]["finetune"]["epochs_run"] == theirs["stages"]["finetune"]["epochs_run"]
    assert mine["test_accuracy"] == theirs["test_accuracy"] and mine["val_accuracy"] == theirs["val_accuracy"]
    history = [line.split(",")[0] for line in (killed / "history.csv").read_text().splitlines()]
    assert history == [line.split(",")[0] for line in (whole / "history.csv").read_text().splitlines()]  # each epoch once
    images = np.stack([np.asarray(Image.open(path).convert("RGB")) for path in sorted((data / "test").glob("*/*.png"))])
    assert np.allclose(finetune.load_run(killed).model.predict(images, verbose=0),
                       finetune.load_run(whole).model.predict(images, verbose=0), atol=1e-5)
    print(f"killed after epoch {epoch_at_kill}; uninterrupted: {theirs['stages']['finetune']['epochs_run']} epochs, "
          f"val {theirs['val_accuracy']:.4f}, test {theirs['test_accuracy']:.4f}; resumed: "
          f"{mine['stages']['finetune']['epochs_run'] - epoch_at_kill} more epochs, val {mine['val_accuracy']:.4f}, "
          f"test {mine['test_accuracy']:.4f}")
    assert not (killed / "backup").exists()  # removed once the run is finished
    assert [name for name in _run_files(killed) if ".tmp" in name] == []  # no half-written file anywhere

    # Killed while writing model.keras: its temporary file is whole, the rename never happens.
    dying = tmp_path / "dying"
    script = ("import os, signal, sys\n"
              "import finetune.finish as finish\n"
              "def save(model, path):\n"
              "    model.save(path.with_name(f'.tmp-{os.getpid()}-{path.name}'))\n"
              "    os.kill(os.getpid(), signal.SIGKILL)\n"
              "finish.save_model_atomic = save\n"
              "from finetune.cli import main\n"
              "sys.exit(main(sys.argv[1:]))\n")
    writing = subprocess.run([sys.executable, "-c", script, "train", str(data), *options, "--out", str(dying), "--quiet"],
                             timeout=300)
    assert writing.returncode == -signal.SIGKILL and not (dying / "model.keras").exists()
    assert [name for name in _run_files(dying) if name.startswith(".tmp-")]  # what it was writing
    again = subprocess.run([*command, "--out", str(dying)], capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-2000:]
    finished = json.loads((dying / "metrics.json").read_text())["stages"]["finetune"]
    assert finished["resumed_at_epoch"] == finished["epochs_run"] == theirs["stages"]["finetune"]["epochs_run"]  # none again
    assert np.allclose(finetune.load_run(dying).model.predict(images, verbose=0),
                       finetune.load_run(whole).model.predict(images, verbose=0), atol=1e-5)
    assert [name for name in _run_files(dying) if ".tmp" in name] == [] and not (dying / "backup").exists()


def test_early_stopping_keeps_its_patience_and_best_weights_across_a_resume(tmp_path):
    import keras
    import numpy as np

    from finetune.callbacks import DivergenceGuard
    from finetune.checkpoint import ResumeCheckpoint, initial_epoch

    x = np.random.default_rng(0).normal(size=(64, 4)).astype("float32")
    y = (x[:, 0] > 0).astype("int64")
    seen, guards = {}, []

    class Look(keras.callbacks.Callback):  # what early stopping holds once training (re)starts
        def __init__(self, stopping):
            super().__init__()
            self.stopping = stopping

        def on_train_begin(self, logs=None):
            seen.update(best=self.stopping.best, wait=self.stopping.wait, weights=self.stopping.best_weights,
                        initial_loss=guards[-1].initial_loss)

    def fit(epochs):
        keras.utils.set_random_seed(0)
        model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2, activation="softmax")])
        model.compile(keras.optimizers.Adam(0.05), "sparse_categorical_crossentropy")
        stopping = keras.callbacks.EarlyStopping(monitor="loss", patience=50, restore_best_weights=True)
        guards.append(DivergenceGuard(num_classes=2))
        model.fit(x, y, epochs=epochs, shuffle=False, verbose=0,
                  callbacks=[guards[-1], stopping, ResumeCheckpoint(tmp_path, stopping, guards[-1]), Look(stopping)])
        return stopping, model

    first, model = fit(3)
    assert initial_epoch(tmp_path) == 3
    fit(5)  # starts again at epoch 3 of 5, as a killed run started again would
    assert seen["best"] == first.best and seen["wait"] == first.wait
    assert seen["initial_loss"] == guards[0].initial_loss is not None  # the divergence guard's reference loss too
    assert all(np.array_equal(a, b) for a, b in zip(seen["weights"], first.best_weights))
    assert sorted(path.name for path in (tmp_path / "backup").iterdir()) == ["best-5.weights.h5", "epoch-5.weights.h5",
                                                                            "state.json"]


@pytest.mark.slow
def test_a_linear_head_that_beats_finetuning_is_put_on_the_backbone_its_features_came_from(tmp_path):
    """From scratch, finetuning changes the backbone (BatchNorm's statistics too); the winning stage head was fit on
    the features of the backbone before it, and must be put on that one (it scored chance on the changed one)."""
    data = write_image_folder(tmp_path / "data", classes=("a", "b", "c"), per_class=10, size=32)
    run = finetune.train(data, out=tmp_path / "run", strategy="full", learning_rate=0.01, tta="none",
                         **{**TINY, "epochs": 2})
    finetuned = run.metrics["stages"]["finetune"]
    assert finetuned["replaced_by"] == "multistage_linear", "the setting no longer has the linear head win"
    assert run.metrics["val_accuracy"] == pytest.approx(finetuned["linear_rival"]["val_accuracy"])


def test_what_a_killed_process_was_writing_is_removed_and_a_live_ones_is_not(tmp_path):
    import os
    import subprocess

    from finetune.files import remove_stale_temporaries

    gone = subprocess.Popen(["true"])
    gone.wait()  # a pid no longer running: what it left is stale
    (tmp_path / "backup").mkdir()
    stale = [tmp_path / f".tmp-{gone.pid}-model.keras", tmp_path / "backup" / f".tmp-{gone.pid}-epoch-3.weights.h5"]
    for path in stale:
        path.write_text("half")
    (tmp_path / f".tmp-export-{gone.pid}-exported").mkdir()
    other = subprocess.Popen(["sleep", "60"])  # a process still writing
    mine = tmp_path / f".tmp-{os.getpid()}-config.json"  # this process's own write in progress
    try:
        live = tmp_path / f".tmp-{other.pid}-metrics.json"
        live.write_text("{}")
        mine.write_text("{}")
        (tmp_path / "labels.json").write_text("[]")
        removed = remove_stale_temporaries(tmp_path)
        assert sorted(removed) == sorted([*stale, tmp_path / f".tmp-export-{gone.pid}-exported"])
        assert sorted(path.name for path in tmp_path.rglob("*")) == sorted(["backup", "labels.json", live.name, mine.name])
        # A killed run's folder, started again: its leftovers go before it resumes, this process's pid included
        # (after a restart a container's process often has the pid the killed one had).
        stale[0].write_text("half")
        assert check_out(tmp_path, overwrite=False) == "resume"
        assert not stale[0].exists() and not mine.exists() and live.exists()
    finally:
        other.kill()
        other.wait()


def test_a_resumed_history_drops_the_rows_written_after_the_last_checkpoint(tmp_path):
    """Killed after history.csv got epoch 2's row but before epoch 2's checkpoint: the resumed fit redoes epoch 2."""
    from finetune.callbacks import AtomicCSVLogger

    path = tmp_path / "history.csv"
    path.write_text("epoch,loss\r\n0,0.9\r\n1,0.7\r\n2,0.6\r\n", newline="")
    logger = AtomicCSVLogger(str(path), append=True, from_epoch=2)
    import keras

    logger.set_model(keras.Sequential())
    logger.on_train_begin()
    logger.on_epoch_end(2, {"loss": 0.55})
    assert [line.split(",")[0] for line in path.read_text().splitlines()] == ["epoch", "0", "1", "2"]
    assert path.read_text().splitlines()[-1].startswith("2,0.55")  # the new epoch 2, once


def test_a_resumed_snapshot_ensemble_keeps_the_members_the_interrupted_run_saved(tmp_path):
    import keras

    from finetune.callbacks import SnapshotSaver

    saver = SnapshotSaver(tmp_path / "snapshots", cycle_epochs=2, offset_epochs=1)
    (tmp_path / "snapshots").mkdir()
    for cycle in (1, 2):  # saved by the killed run, after epochs 3 and 5
        saver.snapshot_path(cycle).write_text("a model")
    (tmp_path / "snapshots" / ".tmp-1-snapshot_03.keras").write_text("half")  # its write in progress: no member
    model = keras.Sequential()
    model._initial_epoch = 5  # where the checkpoint resumes it: 3 cycles of 2 after 1 warmup epoch, 2 done
    saver.set_model(model)
    saver.on_train_begin()
    saver.on_train_end()  # nothing left to train in this process
    assert saver.saved == [saver.snapshot_path(1), saver.snapshot_path(2)]
