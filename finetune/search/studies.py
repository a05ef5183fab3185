"""The Optuna side of a search: one journal file holding the coarse and the fine study, and a kill survived.

    study = open_study(out, "coarse", seed=0, prune=True)   # created, or loaded to resume
    recover(study)                                          # trials a kill left running: failed, queued again
    finished(study)                                         # complete and pruned trials
"""

from __future__ import annotations

from pathlib import Path

STUDY_FILE = "study.journal"
STAGES = ("coarse", "fine")


def open_study(out: Path, name: str, *, seed: int, prune: bool):
    """The study `name` of the journal in `out`, with a random sampler and (when `prune`) a median pruner.

    The sampler's seed moves on with the trials already stored, so that a resumed search does not
    sample the trials it already ran.
    """
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # our progress lines, not Optuna's
    storage = JournalStorage(JournalFileBackend(str(Path(out) / STUDY_FILE)))
    probe = optuna.create_study(study_name=name, storage=storage, direction="maximize", load_if_exists=True)
    seed = seed * 1000 + STAGES.index(name) * 100 + len(probe.trials)
    pruner = optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=0) if prune else optuna.pruners.NopPruner()
    return optuna.load_study(study_name=name, storage=storage, sampler=optuna.samplers.RandomSampler(seed=seed),
                             pruner=pruner)


def recover(study) -> int:
    """Trials a killed search left running (or an error interrupted) are marked failed and queued again; returns how many."""
    from optuna.trial import TrialState

    retried = set(study.user_attrs.get("retried", []))
    again = 0
    for trial in study.get_trials(deepcopy=False):
        if trial.state == TrialState.RUNNING:
            study.tell(trial.number, state=TrialState.FAIL)
        if trial.state in (TrialState.RUNNING, TrialState.FAIL) and trial.number not in retried:
            retried.add(trial.number)
            study.enqueue_trial(trial.params, skip_if_exists=False)
            again += 1
    study.set_user_attr("retried", sorted(retried))
    return again


def finished(study) -> list:
    """The trials that ran to their end: complete, or pruned."""
    from optuna.trial import TrialState

    return [trial for trial in study.get_trials(deepcopy=False) if trial.state in (TrialState.COMPLETE, TrialState.PRUNED)]
