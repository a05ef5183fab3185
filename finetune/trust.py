"""After training: the temperature and the "unknown" threshold, fit on held-out predictions, and their report.

Which predictions are held out depends on how the final model was fit:
    - a model not fit on the validation split (finetuning, or a linear head on the training
      split only): the validation images, through the test-time augmentation mode the run
      recorded (on the same stratified subset `--tta auto` measured on);
    - a linear head fit on every labelled image: the stage search's out-of-fold predictions,
      made by heads that had not seen the image they predicted;
    - neither (no validation split and too few images to cross-validate): nothing is fit, and
      metrics.json says why.
The test split, never used for fitting, reports ECE and log loss before and after.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from finetune.calibration import ECE_BINS, apply_temperature, calibration_report, fit_temperature, plot_reliability
from finetune.files import CALIBRATION_FILE
from finetune.openset import SCORE, fit_threshold, max_probability


@dataclasses.dataclass
class HeldOut:
    """Predictions of images the final model was not fit on."""

    probabilities: np.ndarray  # [N, classes], as the recorded TTA mode combines them
    labels: np.ndarray
    source: str  # where they come from, for metrics.json and the terminal


def mode_probabilities(model, data, config, split_name: str, mode: str, chosen=None) -> tuple[np.ndarray, np.ndarray]:
    """A split's probabilities through TTA `mode` (mean of the views), on a stratified subset; and its labels."""
    from augment.tta import view_probabilities
    from augment.tta_modes import source_size
    from finetune.data import load_split
    from finetune.stages import subsample

    split = getattr(data, split_name)
    labels = np.asarray(split.labels)
    chosen = subsample(labels, config.tta_max_per_class, config.seed) if chosen is None else chosen
    size = source_size(mode, data.image_size)
    images = split.images if size == data.image_size else load_split(
        data.source, split_name, size, config.data.max_megapixels, config.data.cache, verbose=0).images
    views = view_probabilities(model, images[chosen], mode, data.image_size, config.batch_size)
    return views.mean(axis=1), labels[chosen]


def held_out_predictions(result, data, probabilities: dict, tta_held_out: HeldOut | None) -> HeldOut | None:
    """The predictions to fit on (see the module's docstring), or None when there are none."""
    if result.held_out is not None:
        return HeldOut(*result.held_out)
    if tta_held_out is not None:
        return tta_held_out
    if "val" in probabilities and not result.stages.get("head", {}).get("fit_on", "train").endswith("val"):
        return HeldOut(probabilities["val"], np.asarray(data.val.labels), "validation images the model did not fit")
    return None


def fit_trust(held_out: HeldOut | None, test: tuple | None, config, run_dir, title: str) -> tuple[dict, float | None]:
    """metrics.json's "calibration" and "unknown" entries, and the temperature to save in the model (or None).

    Args:
        held_out: the predictions to fit on, or None.
        test: (probabilities, labels) of the test split through the recorded mode, or None.
        config: the `TrainConfig` (calibrate, unknown_keep).
        run_dir: where calibration.png goes.
        title: of the picture.
    """
    if held_out is None or len(held_out.labels) == 0:
        reason = "no held-out predictions (no validation split, and too few images per class to cross-validate)"
        return {"calibration": {"temperature": None, "reason": reason}, "unknown": {"threshold": None, "reason": reason}}, None
    temperature = fit_temperature(held_out.probabilities, held_out.labels) if config.calibrate else 1.0
    calibration = {"temperature": temperature, "fit_on": held_out.source, "bins": ECE_BINS,
                   "held_out": calibration_report(held_out.probabilities, held_out.labels, temperature)}
    panels = {"held out": (held_out.probabilities, held_out.labels)}
    if test is not None and len(test[1]):
        calibration["test"] = calibration_report(test[0], test[1], temperature)
        panels["test"] = test
    if not config.calibrate:
        calibration["reason"] = "calibrate is off: the reports show the raw softmax"
    try:
        plot_reliability(panels, temperature, run_dir / CALIBRATION_FILE, title=f"{title}\nT fit on {held_out.source}")
    except Exception as error:  # a plot must never cost the run
        calibration["plot_error"] = str(error)
    return {"calibration": calibration, "unknown": _unknown(held_out, test, temperature, config.unknown_keep)}, (
        temperature if config.calibrate else None)


def _unknown(held_out: HeldOut, test, temperature: float, keep: float) -> dict:
    """The threshold on the calibrated top probability that keeps `keep` of the held-out known images."""
    if not keep:
        return {"threshold": None, "reason": "unknown_keep is 0"}
    scores = max_probability(apply_temperature(held_out.probabilities, temperature))
    threshold = fit_threshold(scores, keep)
    unknown = {"score": SCORE, "threshold": threshold, "keep": keep, "fit_on": held_out.source,
               "images": int(len(scores)), "held_out_kept": float(np.mean(scores >= threshold))}
    if test is not None and len(test[1]):
        unknown["test_kept"] = float(np.mean(max_probability(apply_temperature(test[0], temperature)) >= threshold))
    return unknown


def describe_trust(entries: dict) -> list[str]:
    """Lines for the terminal."""
    calibration, unknown = entries["calibration"], entries["unknown"]
    if calibration.get("temperature") is None:
        return [f"Calibration: none ({calibration.get('reason')})"]
    report = calibration.get("test") or calibration["held_out"]
    which = "test" if "test" in calibration else "held-out"
    lines = [f"Calibration: temperature {calibration['temperature']:.3f} fit on {calibration['fit_on']}; {which} ECE "
             f"{report['ece_before']:.3f} -> {report['ece_after']:.3f}, log loss {report['log_loss_before']:.3f} -> "
             f"{report['log_loss_after']:.3f}"]
    if unknown.get("threshold") is not None:
        lines.append(f"Unknown: images whose calibrated top probability is under {unknown['threshold']:.3f} are answered "
                     f"'unknown' (keeps {unknown['keep']:.0%} of held-out known images"
                     + (f", {unknown['test_kept']:.1%} of test images)" if "test_kept" in unknown else ")"))
    return lines
