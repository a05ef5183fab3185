"""Resuming a killed finetuning run: its weights, optimizer and early stopping's state at each epoch end.

Keras's `BackupAndRestore` writes the weights and then the epoch as two files, in place: a kill
during or between them leaves a backup that cannot be read or is one epoch off, and it knows
nothing of `EarlyStopping`, whose patience and best weights a resumed run would lose (it would then
train past the point where the uninterrupted run stopped, and keep other weights). Here each epoch
end writes `backup/epoch-<n>.weights.h5` (the model's and the optimizer's variables) and, when
early stopping found a new best, `backup/best-<n>.weights.h5`, each through a temporary file and a
rename; then `backup/state.json`, the one file that says which of them count, also renamed into
place. A kill at any moment leaves the last complete state.

The backup outlives `fit`: `finish_run` removes it once metrics.json is written, so a run killed
while its files are written resumes with no epoch left and writes them again. The training data
gives epoch e the same order on a resumed run (`make_dataset(start_epoch=...)`): a resumed run
trains exactly as the uninterrupted one.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import keras
import numpy as np

from finetune.errors import FinetuneError
from finetune.files import BACKUP_DIR, TEMPORARY_PREFIX, atomic_write_json, save_weights_atomic, temporary_path

STATE_FILE = "state.json"


def read_state(run_dir) -> dict | None:
    """The last complete state of a run's backup ({"epoch", "weights", "early_stopping"}), or None."""
    path = Path(run_dir) / BACKUP_DIR / STATE_FILE
    try:
        state = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return state if (path.parent / state.get("weights", "")).is_file() else None


def initial_epoch(run_dir) -> int:
    """The epoch a run started again in `run_dir` resumes at (0: from the start)."""
    state = read_state(run_dir)
    return int(state["epoch"]) if state else 0


def remove_backup(run_dir) -> None:
    shutil.rmtree(Path(run_dir) / BACKUP_DIR, ignore_errors=True)


def _seed_states(model) -> list:
    """The state variables of the model's random seed generators (dropout's): where its next masks come from."""
    return [variable for variable in model.variables if variable.path.endswith("seed_generator_state")]


def _same_file(source: Path, target: Path) -> None:
    """`target` with `source`'s bytes, complete or absent: a hard link, or a copy renamed into place."""
    target.unlink(missing_ok=True)
    try:
        os.link(source, target)
    except OSError:
        temporary = temporary_path(target)
        shutil.copyfile(source, temporary)
        os.replace(temporary, target)


class ResumeCheckpoint(keras.callbacks.Callback):
    """Saves the training state at each epoch end and restores it when `fit` starts on a run folder that has one.

    Put it after the `EarlyStopping` it keeps (callbacks run in list order: its state is restored
    after `EarlyStopping.on_train_begin` resets it).
    """

    GUARD_STATE = ("initial_loss", "_average", "_seen", "_good_epoch", "report")

    def __init__(self, run_dir, early_stopping: keras.callbacks.EarlyStopping | None = None, guard=None):
        super().__init__()
        self.directory = Path(run_dir) / BACKUP_DIR
        self.early_stopping = early_stopping
        self.guard = guard  # a `finetune.callbacks.DivergenceGuard`: its reference loss and report carry over
        self.resumed_from = 0

    def on_train_begin(self, logs=None):
        state = read_state(self.directory.parent)
        if state is None:
            return
        if not self.model.optimizer.built:  # before any load: the file holds the optimizer's variables too
            self.model.optimizer.build(self.model.trainable_variables)
        stopping = self.early_stopping
        if stopping is not None and state.get("early_stopping"):
            saved = state["early_stopping"]
            if saved.get("best_weights"):
                self.model.load_weights(self.directory / saved["best_weights"])
                stopping.best_weights = self.model.get_weights()
            stopping.best, stopping.wait = float(saved["best"]), int(saved["wait"])
            stopping.best_epoch, stopping.stopped_epoch = int(saved["best_epoch"]), int(saved["stopped_epoch"])
        self.model.load_weights(self.directory / state["weights"])
        # Dropout's random state, which weight files leave out; by position, as generators' names
        # depend on how many a process made before.
        seeds, variables = state.get("seeds", []), _seed_states(self.model)
        if len(seeds) != len(variables):
            raise FinetuneError(f"The backup in {self.directory} is of another model ({len(seeds)} random generators, "
                                f"this one has {len(variables)}): train with --overwrite to start afresh, or another --out.")
        for variable, value in zip(variables, seeds):
            variable.assign(np.asarray(value, dtype=variable.dtype))
        if self.guard is not None and state.get("guard"):
            for name, value in state["guard"].items():
                setattr(self.guard, name, value)
            self.guard._good_weights = self.model.get_weights()  # the last checkpoint's: good, or restored by it
        self.resumed_from = int(state["epoch"])
        # An early stop already decided: no epoch is left (fit then runs none, and early stopping restores the best).
        self.model._initial_epoch = state["last_epoch"] if state.get("stopped") else self.resumed_from

    def on_epoch_end(self, epoch, logs=None):
        self.directory.mkdir(parents=True, exist_ok=True)
        previous = read_state(self.directory.parent) or {}
        weights = f"epoch-{epoch + 1}.weights.h5"
        save_weights_atomic(self.model, self.directory / weights)
        state = {"epoch": epoch + 1, "weights": weights, "stopped": bool(self.model.stop_training),
                 "last_epoch": int(self.params.get("epochs", epoch + 1)),
                 "seeds": [np.asarray(variable).tolist() for variable in _seed_states(self.model)]}
        if self.guard is not None:
            state["guard"] = {name: getattr(self.guard, name, None) for name in self.GUARD_STATE}
        stopping = self.early_stopping
        if stopping is not None:
            best_weights = (previous.get("early_stopping") or {}).get("best_weights")
            if stopping.best_weights is not None and stopping.best_epoch == epoch:  # a new best: this epoch's weights
                best_weights = f"best-{epoch + 1}.weights.h5"
                _same_file(self.directory / weights, self.directory / best_weights)
            state["early_stopping"] = {"best": float(stopping.best), "wait": int(stopping.wait),
                                       "best_epoch": int(stopping.best_epoch), "stopped_epoch": int(stopping.stopped_epoch),
                                       "best_weights": best_weights}
        atomic_write_json(self.directory / STATE_FILE, state)
        keep = {STATE_FILE, weights, state.get("early_stopping", {}).get("best_weights")}
        for path in self.directory.iterdir():  # the files no complete state names any more
            if path.name not in keep and not path.name.startswith(TEMPORARY_PREFIX):
                path.unlink(missing_ok=True)
