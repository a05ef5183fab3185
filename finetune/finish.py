"""The end of a training run: the model saved, measured on validation and test images, and described.

`finish_run` writes model.keras, history.csv (for runs without finetuning epochs), curves.png,
confusion.png, metrics.json (accuracies, per-class figures, snapshots, the TTA choice, the curves' diagnosis)
and config.json (the resolved configuration), then loads the run back as a `finetune.run.Run`.
"""

from __future__ import annotations

import numpy as np

from finetune.files import (
    CONFIG_FILE,
    CONFUSION_FILE,
    CURVES_FILE,
    HISTORY_FILE,
    inference_model,
    METRICS_FILE,
    MODEL_FILE,
    atomic_write_json,
    library_versions,
    save_model_atomic,
)
from finetune.linear import write_head_history
from finetune.temperature import with_temperature
from finetune.run import load_run
from finetune.training import log


def _resolved_config(data, plan, *, config, weights_source: str) -> dict:
    """config.json: the configuration as run, with what was decided or measured on the way."""
    class_weight = data.class_weight
    resolved = config.to_dict()
    resolved.update(
        strategy=plan.strategy,
        strategy_requested=config.strategy,
        image_size=data.image_size,
        class_names=data.class_names,
        weights_source=weights_source,
        class_weights={data.class_names[k]: v for k, v in class_weight.items()} if class_weight else None,
        versions=library_versions(),
        run_dir=str(data.run_dir),
    )
    resolved["data"]["image_size"] = data.image_size
    return resolved


def _split_metrics(model, data, stages: dict, batch_size: int) -> tuple[dict, dict]:
    """metrics.json's "val" and "test" entries, and the probabilities they were measured from."""
    from finetune.metrics import classification_metrics

    metrics, probabilities = {}, {}
    for name, split in (("val", data.val), ("test", data.test)):
        if split is not None:
            probabilities[name] = model.predict(split.images.astype(np.float32), batch_size=batch_size, verbose=0)
            metrics[name] = classification_metrics(split.labels, probabilities[name], data.class_names)
    if "val" in metrics:
        # A linear head fit on training and validation images has seen the validation split.
        metrics["val"]["held_out"] = not stages.get("head", {}).get("fit_on", "train").endswith("val")
    return metrics, probabilities


def _evaluate_snapshots(paths, data, config) -> dict:
    """Each snapshot and their ensemble on the validation (and test) images; the ensemble's own temperature."""
    from finetune.calibration import fit_temperature
    from finetune.ensemble import evaluate_members, load_members

    members = load_members(paths)
    result = {"paths": [str(path) for path in paths]}
    for name, split in (("val", data.val), ("test", data.test)):
        if split is not None:
            images = split.images.astype(np.float32)
            probabilities = [model.predict(images, batch_size=config.batch_size, verbose=0) for model in members]
            result[name] = evaluate_members(None, None, split.labels, probabilities=probabilities)
            if name == "val" and config.calibrate:
                # The ensemble is calibrated as a whole: `finetune export --members snapshots` applies it.
                result["temperature"] = fit_temperature(np.mean(probabilities, axis=0), split.labels)
    return result


def _trust(model, result, data, config, probabilities: dict, tta_held_out, mode: str):
    """metrics.json's "calibration" and "unknown", and the temperature model.keras gets (see `finetune.trust`)."""
    from finetune.trust import HeldOut, describe_trust, fit_trust, held_out_predictions, mode_probabilities

    held_out_val = "val" in probabilities and not result.stages.get("head", {}).get("fit_on", "train").endswith("val")
    if mode != "none" and tta_held_out is None and held_out_val:  # a requested mode: measure it now
        tta_held_out = HeldOut(*mode_probabilities(model, data, config, "val", mode),
                               f"validation images the model did not fit, TTA {mode}")
    test = None
    if data.test is not None:
        test = (probabilities["test"], np.asarray(data.test.labels)) if mode == "none" else \
            mode_probabilities(model, data, config, "test", mode)
    entries, temperature = fit_trust(held_out_predictions(result, data, probabilities, tta_held_out), test, config,
                                     data.run_dir, title=f"{data.run_dir.name}: reliability (TTA {mode})")
    for line in describe_trust(entries):
        log(config, line)
    return entries, temperature


def choose_tta(model, data, config, *, held_out: bool = True):
    """The test-time crop mode with the best validation accuracy (config.tta == "auto"), recorded in the run.

    Returns (the record for metrics.json or None, the chosen mode's validation predictions as a
    `finetune.trust.HeldOut` when it is not "none", else None).

    Measured only on images the model did not fit: when the head was fit on the validation
    split too (`held_out` False), "auto" keeps whole images ("none") rather than choose on seen ones.
    """
    if config.tta == "none" or data.val is None:
        return None, None
    if config.tta != "auto":
        return {"mode": config.tta, "chosen_by": "requested"}, None
    if not held_out:
        return {"mode": "none", "chosen_by": "not measured: the head was fit on the validation images too, and no other "
                                             "images are held out (pass --tta MODE to force one)"}, None
    from augment.tta import choose_tta as measure_tta_modes
    from finetune.data import load_split
    from finetune.stages import subsample
    from finetune.trust import HeldOut

    # Every mode costs up to 10 forward passes per image: a stratified subsample bounds the cost.
    chosen = subsample(np.asarray(data.val.labels), config.tta_max_per_class, config.seed)

    def images_at(size):
        if size == data.image_size:
            return data.val.images[chosen]
        return load_split(data.source, "val", size, config.data.max_megapixels, config.data.cache,
                          verbose=0).images[chosen]

    log(config, f"Measuring test-time augmentation modes on {len(chosen)} validation images...")
    mode, accuracies, probabilities = measure_tta_modes(model, images_at, data.val.labels[chosen],
                                                        image_size=data.image_size, batch_size=config.batch_size,
                                                        return_probabilities=True)
    log(config, f"Test-time augmentation: {mode} (validation accuracy by mode: "
                + ", ".join(f"{name} {value:.3f}" for name, value in accuracies.items()) + ")")
    record = {"mode": mode, "chosen_by": "validation accuracy, ties to the cheaper mode", "val_accuracy": accuracies,
              "images": int(len(chosen))}
    if mode == "none":
        return record, None
    source = f"validation images the model did not fit, TTA {mode} ({len(chosen)} images)"
    return record, HeldOut(probabilities[mode], np.asarray(data.val.labels)[chosen], source)


def curves(run_dir, config) -> dict:
    """curves.png and the diagnosis of the curves' shape, when there are epochs to plot."""
    from finetune.curves import diagnose_curves, plot_curves

    history_path = run_dir / HISTORY_FILE
    if not history_path.exists():
        return {}
    diagnosis = diagnose_curves(history_path)
    try:
        plot_curves(history_path, run_dir / CURVES_FILE, title=run_dir.name)
    except Exception as error:  # a plot must never cost the run
        diagnosis = {**diagnosis, "plot_error": str(error)}
    if diagnosis.get("verdict") not in (None, "no_history"):
        log(config, f"Curves: {diagnosis['verdict']}: {diagnosis.get('explanation', '')}")
    return {"diagnosis": diagnosis}


def confusion_picture(run_dir, metrics: dict, config) -> dict:
    """confusion.png of the validation and test splits measured; {"confusion_plot_error"} if it could not be drawn."""
    from finetune.confusion import plot_confusion

    splits = {title: metrics[key] for key, title in (("val", "validation"), ("test", "test")) if key in metrics}
    if not splits:
        return {}
    try:
        plot_confusion(splits, run_dir / CONFUSION_FILE,
                       title=f"{run_dir.name}: confusion matrix (rows: true class, columns: predicted)")
    except Exception as error:  # a plot must never cost the run
        log(config, f"Could not draw {CONFUSION_FILE}: {error}")
        return {"confusion_plot_error": str(error)}
    return {}


def finish_run(result, data, plan, *, config, weights_source: str, seconds):
    """Writes the run's model, metrics and configuration; returns the run loaded back.

    Args:
        result: the `finetune.linear.LinearResult` of the strategy (model, stages, head).
        data: the `finetune.pipeline.PreparedData`.
        plan: the `finetune.pipeline.Plan` (strategy and policy).
        config: the `TrainConfig`.
        weights_source: where the backbone's weights came from.
        seconds: a function giving the run's time so far, read when metrics.json is written.
    """
    stages, run_dir = result.stages, data.run_dir
    if "finetune" not in stages:
        write_head_history(run_dir / HISTORY_FILE, result.head, result.train_features, data.train.labels,
                           result.val_features, None if data.val is None else data.val.labels)
    resolved = _resolved_config(data, plan, config=config, weights_source=weights_source)
    model = result.model
    metrics = {"strategy": plan.strategy, "stages": stages, "weights_source": weights_source}
    split_metrics, probabilities = _split_metrics(model, data, stages, config.batch_size)
    metrics.update(split_metrics)
    snapshots = stages.get("finetune", {}).get("snapshots")
    if snapshots:
        metrics["snapshots"] = _evaluate_snapshots(snapshots, data, config)
    tta, tta_held_out = choose_tta(model, data, config, held_out=metrics.get("val", {}).get("held_out", True))
    if tta is not None:
        resolved["tta"] = tta["mode"]
        metrics["tta"] = tta
    trust, temperature = _trust(model, result, data, config, probabilities, tta_held_out, (tta or {}).get("mode", "none"))
    metrics.update(trust)
    resolved["unknown"] = trust["unknown"]  # what `predict --unknown auto` applies
    save_model_atomic(with_temperature(inference_model(model, name="classifier_model"), temperature),
                      run_dir / MODEL_FILE)
    metrics["augment"] = stages.get("finetune", {}).get("augment")
    # What the "auto" values became: the finetuning recipe trained with (None: no finetuning).
    resolved["recipe"] = stages.get("finetune", {}).get("recipe")
    metrics.update(curves(run_dir, config))
    metrics.update(confusion_picture(run_dir, metrics, config))
    metrics["val_accuracy"] = metrics["val"]["accuracy"] if "val" in metrics else None
    metrics["cv_accuracy"] = stages.get("head", {}).get("cv_accuracy")
    if metrics["cv_accuracy"] is not None:  # how many images that estimate rests on
        search = stages.get("search", {})
        metrics["cv_images"], metrics["cv_folds"] = search.get("images"), search.get("folds")
    metrics["test_accuracy"] = metrics["test"]["accuracy"] if "test" in metrics else None
    metrics["class_weights"] = resolved["class_weights"]
    metrics["num_skipped"] = len(data.skipped)
    metrics["train_seconds"] = seconds()
    atomic_write_json(run_dir / CONFIG_FILE, resolved)
    atomic_write_json(run_dir / METRICS_FILE, metrics)
    from finetune.checkpoint import remove_backup

    remove_backup(run_dir)  # finished: a kill before this line resumes with no epoch left, and writes the files again
    return load_run(run_dir)
