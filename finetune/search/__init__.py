"""`finetune search`: hyperparameter search the course's way, random, log-scale and coarse to fine, on Optuna.

    result = run_search(SearchConfig(trials=20, out="search"), TrainConfig(data=DataConfig("photos/")))
    result["best"]["value"], result["best_file"]   # then: finetune train photos/ --config search/best.json

Why Optuna: its samplers take exactly the distributions the course asks for
(`suggest_float(log=True)`, uniform, integers, categories), its `RandomSampler` is plain random
search, its pruners stop a trial from the values it reports per epoch, and its journal storage
(an append-only file) survives `kill -9`, so a search resumes from what it wrote. KerasTuner
would tie trials to `model.fit` (our linear trials fit no Keras model) and keeps its state in
files it rewrites.

How coarse to fine maps onto it: two studies in one storage file. "coarse" samples the full
ranges at random with short trials (`coarse_epochs`, at most `coarse_max_per_class` training
images per class; the first trial is the configuration's own values, a baseline), and a
`MedianPruner` stops trials whose validation accuracy falls below the median of earlier trials
at the same epoch; the divergence guard of training stops exploding ones. "fine" samples at
random within the ranges of the best `top_trials` coarse trials (`space.narrow`), with full
trials on the whole training split, the best coarse trial first. Trials never see the test split.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
from pathlib import Path

from finetune.config import SearchConfig, TrainConfig
from finetune.errors import FinetuneError
from finetune.files import atomic_write_json, read_json
from finetune.search import report
from finetune.search.studies import finished, open_study, recover
from finetune.search.space import apply_values, default_values, edge_warnings, narrow, resolve_parameters
from finetune.training import log



def check_search_config(search: SearchConfig) -> None:
    """Raises a `FinetuneError` naming the first field of `search` out of its range."""
    checks = (
        ("trials", search.trials >= 1, "at least 1"),
        ("coarse_share", 0 < search.coarse_share <= 1, "in (0, 1]"),
        ("budget_minutes", search.budget_minutes is None or search.budget_minutes > 0, "above 0 (or None)"),
        ("coarse_budget_share", 0 < search.coarse_budget_share <= 1, "in (0, 1]"),
        ("coarse_epochs", search.coarse_epochs >= 1, "at least 1"),
        ("coarse_max_per_class", search.coarse_max_per_class is None or search.coarse_max_per_class >= 2,
         "at least 2 (or None: all)"),
        ("fine_epochs", search.fine_epochs is None or search.fine_epochs >= 1, "at least 1 (or None)"),
        ("top_trials", search.top_trials >= 1, "at least 1"),
        ("widen_share", 0 <= search.widen_share < 1, "in [0, 1)"),
        ("edge_share", 0 < search.edge_share < 0.5, "in (0, 0.5)"),
    )
    for name, valid, allowed in checks:
        if not valid:
            raise FinetuneError(f"`{name}` must be {allowed}. Received: {name}={getattr(search, name)}")


def default_search_dir(source_name: str) -> Path:
    return Path("models") / f"search-{source_name}-{time.strftime('%Y%m%d-%H%M%S')}"


@dataclasses.dataclass
class _Search:
    """The state of one search: its settings, shared data, parameters and studies."""

    search: SearchConfig
    base: TrainConfig
    out: Path
    shared: object  # trials.SearchData of the base image size
    kind: str  # "finetune" or "linear"
    parameters: list
    started: float
    deadline: float | None
    studies: dict = dataclasses.field(default_factory=dict)
    by_size: dict = dataclasses.field(default_factory=dict)

    @property
    def metric(self) -> str:
        return "cv_accuracy" if self.kind == "linear" else "val_accuracy"


def _shared_at(state: _Search, size: int | None):
    """The shared data at `size` (the search's image size when None), prepared on first use."""
    from finetune.search.trials import prepare

    if size is None or size == state.shared.data.image_size:
        return state.shared
    if size not in state.by_size:
        config = apply_values(state.base, {"image_size": size})
        config.out = str(state.out / f"data-{size}px")
        state.by_size[size] = prepare(config, state.shared.data.source)
    return state.by_size[size]


def _epochs(state: _Search, stage: str) -> int:
    if stage == "coarse":
        return state.search.coarse_epochs
    return state.search.fine_epochs or state.base.epochs


def _objective(state: _Search, stage: str, parameters: list, deadline: float | None):
    import optuna

    from finetune.search.trials import TrialReporter, finetune_trial, linear_trial

    def objective(trial):
        started = time.time()
        values = {parameter.name: parameter.suggest(trial) for parameter in parameters}
        config = apply_values(state.base, values)
        config.verbose = 0  # the search prints one line per trial, not each trial's epochs
        shared = _shared_at(state, config.data.image_size)
        if state.kind == "linear":
            result = linear_trial(shared, config)
            reporter = None
        else:
            config.epochs = _epochs(state, stage)
            reporter = TrialReporter(trial, deadline)
            run_dir = state.out / "trials" / f"{stage}-{trial.number:04d}"
            shutil.rmtree(run_dir, ignore_errors=True)  # a killed trial's files: this one starts afresh
            limit = state.search.coarse_max_per_class if stage == "coarse" else None
            result = finetune_trial(shared, config, run_dir=run_dir, callbacks=[reporter], max_per_class=limit)
            result["epochs"] = config.epochs
        reason = reporter.stopped_because if reporter else None
        if result.get("diverged"):
            reason = "diverged: the divergence guard stopped it"
        measured = {**result, "metric": state.metric, "seconds": round(time.time() - started, 2), "reason": reason or ""}
        for key, value in measured.items():
            if key != "value":
                trial.set_user_attr(key, value)
        if reason:
            raise optuna.TrialPruned(reason)
        return result["value"]

    return objective


def _estimate(state: _Search, study, stage: str) -> float:
    """Seconds the next trial of `stage` will likely take: the mean of its finished ones, else scaled from coarse."""
    def seconds(trials):
        values = [trial.user_attrs.get("seconds") for trial in trials if trial.user_attrs.get("seconds")]
        return sum(values) / len(values) if values else None

    own = seconds(finished(study))
    if own is not None or stage == "coarse":
        return own or 0.0
    coarse = [trial for trial in finished(state.studies["coarse"]) if trial.user_attrs.get("train_images")]
    if not coarse or state.kind == "linear":
        return seconds(coarse) or 0.0
    scale = (len(state.shared.data.train.labels) / coarse[0].user_attrs["train_images"]) * \
        (_epochs(state, "fine") / max(1, state.search.coarse_epochs))
    return (seconds(coarse) or 0.0) * scale


def _progress(state: _Search, stage: str, done: int, total: int, trial, rows: list[dict]) -> str:
    best = report.best_row(rows)
    shown = f"{trial.value:.4f}" if trial.value is not None else trial.state.name.lower()
    reason = trial.user_attrs.get("reason")
    line = f"[{stage} {done}/{total}] trial {trial.number}: {state.metric} {shown}"
    line += f" ({reason})" if reason else ""
    line += f" in {trial.user_attrs.get('seconds', 0):.0f} s"
    if best is not None:
        line += f" | best {best['value']:.4f} ({best['trial']})"
    if state.deadline is not None:
        line += f" | {max(0.0, state.deadline - time.time()) / 60:.1f} min of the budget left"
    else:
        left = (total - done) * _estimate(state, state.studies[stage], stage)
        line += f" | about {left / 60:.1f} min left in this stage"
    return line


def _run_stage(state: _Search, stage: str, parameters: list, total: int, deadline: float | None) -> None:
    study = state.studies[stage]
    while len(finished(study)) < total:
        first_fine = stage == "fine" and not finished(study)
        if deadline is not None and not first_fine and time.time() + _estimate(state, study, stage) > deadline:
            log(state.base, f"{stage}: stopping after {len(finished(study))} of {total} trials: the next would end "
                            "after the time budget.")
            break
        # The first fine trial runs to its end whatever the budget: a best measured on the whole data.
        objective = _objective(state, stage, parameters, None if first_fine else deadline)
        study.optimize(objective, n_trials=1, catch=(), gc_after_trial=True)
        rows = report.trial_rows(state.studies, state.parameters)
        log(state.base, _progress(state, stage, len(finished(study)), total, study.trials[-1], rows))
        report.write_trials_csv(state.out / report.TRIALS_FILE, rows, state.parameters)


def _fine_parameters(state: _Search) -> list:
    """The fine ranges around the best coarse trials, recorded in the fine study so that a resumed search keeps them."""
    fine = state.studies["fine"]
    if "ranges" in fine.user_attrs:
        stored = {item["name"]: item for item in fine.user_attrs["ranges"]}
        return [dataclasses.replace(parameter, low=stored[parameter.name]["low"], high=stored[parameter.name]["high"],
                                    choices=tuple(stored[parameter.name]["choices"])) if parameter.name in stored
                else parameter for parameter in state.parameters]
    complete = sorted((trial for trial in state.studies["coarse"].get_trials(deepcopy=False)
                       if trial.value is not None and trial.state.name == "COMPLETE"),
                      key=lambda trial: (-trial.value, trial.user_attrs.get("loss", float("inf"))))
    complete = complete[: state.search.top_trials]  # the best first, ties to the lower loss, as best.json
    parameters = narrow(state.parameters, [trial.params for trial in complete], state.search.widen_share)
    fine.set_user_attr("ranges", [parameter.to_dict() for parameter in parameters])
    if complete and not fine.trials and state.kind == "finetune":
        fine.enqueue_trial(complete[0].params)  # the best coarse configuration, trained in full, first
    return parameters


def _check_parameters_early(search: SearchConfig, strategy: str, linear_strategies) -> None:
    """Unknown knobs and bad ranges (and, for a requested strategy, knobs it does not train) before minutes of features."""
    from finetune.search.space import check_parameters

    check_parameters(search.params or (), search.ranges)
    if strategy != "auto":
        kind = "linear" if strategy in linear_strategies else "finetune"
        resolve_parameters(search.params, kind=kind, ranges=search.ranges, num_groups=10**6, sizes=[0])


def _identity(base: TrainConfig, search: SearchConfig) -> dict:
    """What a resumed search must share with the one in its folder."""
    values = base.to_dict()
    for key in ("out", "verbose", "tensorboard"):  # where and how it reports, not what it trains
        values.pop(key, None)
    settings = dataclasses.asdict(search)
    for key in ("out", "trials", "budget_minutes"):  # may change between runs: more trials, a new budget
        settings.pop(key, None)
    return json.loads(json.dumps({"train": values, "search": settings}))  # as read back: lists, not tuples


def _candidate_sizes(shared, source, config: TrainConfig) -> list[int]:
    """The sizes the policy scored for this data, or would score when the size was given."""
    from finetune.input_size import candidate_sizes, native_short_side

    measured = [item["size"] for item in shared.data.size_choice.get("candidates", [])]
    return measured or candidate_sizes(native_short_side(source, seed=config.seed), shared.spec, config.data)


def _start(search: SearchConfig, base: TrainConfig) -> _Search:
    from finetune.data import discover
    from finetune.pipeline import LINEAR_STRATEGIES, check_config
    from finetune.search.trials import prepare, without_test

    check_search_config(search)
    check_config(base)
    _check_parameters_early(search, base.strategy, LINEAR_STRATEGIES)
    source = without_test(discover(base.data.source, base.data.val_fraction, base.seed, max_files=base.data.max_files))
    out = Path(search.out) if search.out else default_search_dir(source.name)
    out.mkdir(parents=True, exist_ok=True)
    identity = _identity(base, search)
    summary_path = out / report.SUMMARY_FILE
    if summary_path.exists() and read_json(summary_path).get("identity") != identity:
        raise FinetuneError(f"{out} holds a search of other data or settings ({summary_path}). Resume it with the same "
                            "options, or pass another --out.")
    atomic_write_json(summary_path, {"identity": identity, "state": "running"})
    started = time.time()
    deadline = started + 60 * search.budget_minutes if search.budget_minutes else None
    prepared = TrainConfig.from_dict(base.to_dict())
    prepared.out = str(out / "data")
    log(base, "Preparing the data once for every trial (decoded images, stage features, the policy)...")
    import keras

    keras.utils.set_random_seed(base.seed)  # as `finetune train` does first: the same backbone from weights "none"
    shared = prepare(prepared, source)
    base = TrainConfig.from_dict(base.to_dict())
    base.strategy, base.data.image_size = shared.plan.strategy, shared.data.image_size
    kind = "linear" if base.strategy in LINEAR_STRATEGIES else "finetune"
    sizes = _candidate_sizes(shared, source, base) if "image_size" in (search.params or ()) else []
    parameters = resolve_parameters(search.params, kind=kind, ranges=search.ranges,
                                    num_groups=len(shared.spec.freeze_groups), sizes=sizes)
    return _Search(search, base, out, shared, kind, parameters, started, deadline)


def _baseline(state: _Search) -> None:
    """The configuration's own values as the first coarse trial: what the search must beat."""
    from finetune.policy import groups_to_unfreeze
    from finetune.recipe import finetuning_recipe

    study = state.studies["coarse"]
    if study.trials:
        return
    data = state.shared.data
    preset = finetuning_recipe(state.base, data.train.labels, data.num_classes).augment  # what "auto" becomes
    groups = state.base.unfreeze_groups or groups_to_unfreeze(state.base.strategy, len(state.shared.spec.freeze_groups),
                                                              state.base.policy)
    values = default_values(state.parameters, state.base, augment_preset=preset, unfreeze_groups=groups)
    if values:
        study.enqueue_trial(values)
        study.set_user_attr("baseline", 0)


def _baseline_row(state: _Search, rows: list[dict]) -> dict | None:
    """The baseline: the enqueued first coarse trial, or for linear heads the configuration's own C grid (seconds)."""
    from finetune.search.trials import linear_trial

    if state.kind == "linear":
        result = linear_trial(state.shared, state.base)
        return {"trial": "defaults", "state": "complete", "value": result["value"],
                "params": {"head_c_grid": list(state.base.head_c_grid)}}
    number = state.studies["coarse"].user_attrs.get("baseline")
    return next((row for row in rows if row["stage"] == "coarse" and row["number"] == number), None)


def _best_config(state: _Search, best: dict) -> dict:
    config = apply_values(state.base, best["params"])
    if state.kind == "finetune":
        config.epochs = best["epochs"] or config.epochs
    config.out = None
    values = config.to_dict()
    values["search"] = {
        "trial": best["trial"], "stage": best["stage"], state.metric: best["value"], "loss": best["loss"],
        "metric": state.metric if state.kind == "linear" else "stages.finetune.val_accuracy of metrics.json",
        "reproduces": bool(best["full_data"]),
        "note": "" if best["full_data"] else "no trial on the whole training split finished: these are the best "
                                             "coarse trial's values, measured on a subset",
        "command": f"finetune train {state.base.data.source} --config {state.out / report.BEST_FILE}",
    }
    return values


def _finish(state: _Search) -> dict:
    rows = report.trial_rows(state.studies, state.parameters)
    report.write_trials_csv(state.out / report.TRIALS_FILE, rows, state.parameters)
    best = report.best_row(rows)
    if best is None:
        raise FinetuneError(f"No trial of the search in {state.out} finished (see {state.out / report.TRIALS_FILE}). "
                            "Give it more --budget-minutes or --trials.")
    try:
        report.plot_search(state.out / report.PLOT_FILE, rows, state.parameters, metric=state.metric)
    except Exception as error:  # a plot must never cost the search
        log(state.base, f"search.png was not drawn: {error}")
    atomic_write_json(state.out / report.BEST_FILE, _best_config(state, best))
    baseline = _baseline_row(state, rows)
    summary = {
        "identity": _identity(state.base, state.search), "state": "finished", "strategy": state.base.strategy,
        "kind": state.kind, "metric": state.metric, "image_size": state.base.data.image_size,
        "parameters": [parameter.to_dict() for parameter in state.parameters],
        "fine_ranges": state.studies["fine"].user_attrs.get("ranges"),
        "best": {key: best[key] for key in ("trial", "stage", "value", "loss", "params", "epochs", "full_data",
                                            "linear_rival")},
        "baseline": None if baseline is None else {key: baseline[key] for key in ("trial", "state", "value", "params")},
        "edges": edge_warnings(state.parameters, best["params"], state.search.edge_share),
        "trials": {state_name: sum(row["state"] == state_name for row in rows)
                   for state_name in ("complete", "pruned", "fail")},
        "seconds": round(time.time() - state.started, 1),
        "files": {name: str(state.out / name) for name in (report.TRIALS_FILE, report.PLOT_FILE, report.BEST_FILE)},
    }
    atomic_write_json(state.out / report.SUMMARY_FILE, summary)
    return summary


def run_search(search: SearchConfig, base: TrainConfig) -> dict:
    """Searches the hyperparameters of `base` as `search` says; returns search.json's summary.

    A search started again with the same `out` resumes: finished trials are kept, trials a kill
    interrupted run again, and `trials` counts the trials of both runs together; the budget
    counts from the new start.
    """
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    state = _start(search, base)
    coarse_total = max(1, round(search.trials * search.coarse_share))
    fine_total = search.trials - coarse_total
    prune = state.kind == "finetune"
    state.studies = {"coarse": open_study(state.out, "coarse", seed=state.base.seed, prune=prune), "fine": None}
    recover(state.studies["coarse"])
    _baseline(state)
    log(state.base, f"Searching {', '.join(parameter.name for parameter in state.parameters)} for {state.base.strategy} "
                    f"at {state.base.data.image_size} px: {coarse_total} coarse and {fine_total} fine trials"
                    + (f", {search.budget_minutes:g} minutes" if search.budget_minutes else "") + ".")
    coarse_deadline = None if state.deadline is None else \
        state.started + (state.deadline - state.started) * (search.coarse_budget_share if fine_total else 1.0)
    _run_stage(state, "coarse", state.parameters, coarse_total, coarse_deadline)
    state.studies["fine"] = open_study(state.out, "fine", seed=state.base.seed, prune=prune)
    if fine_total:
        recover(state.studies["fine"])
        fine_parameters = _fine_parameters(state)
        log(state.base, "Fine ranges: " + ", ".join(f"{parameter.name} {parameter.range_text()}"
                                                     for parameter in fine_parameters))
        _run_stage(state, "fine", fine_parameters, fine_total, state.deadline)
    return _finish(state)
