"""Calibration and "none of these": ECE before/after temperature scaling, and unknown images caught.

For each known data set a run is trained with `finetune.train` (defaults, but for the strategy
named), then:
- calibration: the run's own metrics.json (temperature fit on held-out predictions; ECE with 15
  bins and log loss on the test split before and after);
- unknowns: images of other data sets (and photos from `skimage.data`, cut into crops) are fed to
  the run as `finetune predict` would. AUROC of telling the run's own test images from them, by
  the calibrated top probability (what the product uses) and by the energy score T*logsumexp(z/T)
  (computed from the classifier's logits), and the share of unknowns caught at the recorded
  threshold (which keeps 95% of held-out known images), with the share of known test images kept.

    python benchmarks/bench_trust.py            # about 10 minutes on 2 cores
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import datasets  # noqa: E402
from benchmarks.common import fresh_home, save_results  # noqa: E402

KNOWN = {
    "fashion_linear": (lambda: datasets.fashion_mnist(200, 60, 100), {"strategy": "linear"}),
    "fashion_finetune": (lambda: datasets.fashion_mnist(200, 60, 100), {"strategy": "finetune_top", "epochs": 4}),
    "digits": (lambda: datasets.digits(30, 10), {}),
    "textures": (lambda: datasets.textures(), {}),
}
# Unknown sets of each known one: test images of the other data sets, and photo crops.
UNKNOWN_SETS = {"fashion": lambda: datasets.fashion_mnist(200, 60, 100), "digits": lambda: datasets.digits(30, 10),
                "textures": lambda: datasets.textures()}


def _test_images(root: Path, limit: int = 300, seed: int = 0) -> tuple[list[np.ndarray], list[str]]:
    from finetune.inference import decode_image

    paths = sorted((root / "test").glob("*/*"))
    chosen = np.random.default_rng(seed).permutation(len(paths))[:limit]
    return [decode_image(paths[index]) for index in sorted(chosen)], [paths[index].parent.name for index in sorted(chosen)]


def photo_crops(count: int = 120, seed: int = 0) -> list[np.ndarray]:
    """Crops of the colour photos in skimage.data (astronaut, coffee, chelsea, rocket, ...): images of no class."""
    import skimage.data

    rng = np.random.default_rng(seed)
    photos = [getattr(skimage.data, name)() for name in ("astronaut", "coffee", "chelsea", "rocket", "hubble_deep_field",
                                                         "immunohistochemistry", "colorwheel", "retina")]
    crops = []
    for index in range(count):
        photo = photos[index % len(photos)]
        side = int(rng.integers(min(photo.shape[:2]) // 3, min(photo.shape[:2])))
        top, left = (int(rng.integers(0, photo.shape[axis] - side + 1)) for axis in (0, 1))
        crops.append(photo[top : top + side, left : left + side, :3])
    return crops


def logits_of(run, images) -> np.ndarray:
    """The classifier's logits (pooled features @ kernel + bias) on whole images, for the energy score."""
    import keras

    from finetune.data import resize_image

    model = run.model
    features = keras.Model(model.inputs, model.get_layer("pool").output)
    batch = np.stack([resize_image(image, run.image_size) for image in images]).astype(np.float32)
    kernel, bias = model.get_layer("classifier").get_weights()
    return features.predict(batch, batch_size=64, verbose=0) @ kernel + bias


def unknown_rows(name: str, run, known_images, unknowns: dict) -> list[dict]:
    from finetune.calibration import apply_temperature
    from finetune.inference import predict_arrays
    from finetune.openset import auroc, energy_score

    temperature = run.metrics["calibration"].get("temperature") or 1.0
    threshold = run.config["unknown"]["threshold"]

    def scores(images):
        logits = logits_of(run, images)
        shifted = logits - logits.max(axis=1, keepdims=True)
        probabilities = np.exp(shifted) / np.exp(shifted).sum(axis=1, keepdims=True)
        product = predict_arrays(run, images, tta="auto", top_k=1)  # what `finetune predict` answers
        return (apply_temperature(probabilities, temperature).max(axis=1), energy_score(logits, temperature),
                np.array([item.unknown for item in product]))

    known_msp, known_energy, known_flagged = scores(known_images)
    rows = []
    for unknown_name, images in unknowns.items():
        msp, energy, flagged = scores(images)
        rows.append({"model": name, "unknowns": f"{unknown_name} ({len(images)})", "auroc_max_probability": auroc(known_msp, msp),
                     "auroc_energy": auroc(known_energy, energy), "threshold": threshold,
                     "unknowns_caught": float(flagged.mean()), "known_test_kept": float(1 - known_flagged.mean())})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--known", nargs="+", default=list(KNOWN), choices=list(KNOWN))
    parser.add_argument("--image-size", type=int, default=96)
    parser.add_argument("--backbone", default="mobilenet_v2_torchvision")
    parser.add_argument("--keep-runs", default=None, help="copy each run folder here")
    arguments = parser.parse_args()
    import os

    import finetune

    work = Path(tempfile.mkdtemp(prefix="bench-trust-"))
    os.environ["FINETUNE_HOME"] = str(fresh_home(work))
    photos = photo_crops()
    calibration, unknown = [], []
    for name in arguments.known:
        make, options = KNOWN[name]
        root = make()
        started = time.perf_counter()
        run = finetune.train(root, out=str(work / name), backbone=arguments.backbone, image_size=arguments.image_size,
                             verbose=0, **options)
        seconds = time.perf_counter() - started
        report = run.metrics["calibration"]
        test = report.get("test", {})
        calibration.append({"data": name, "strategy": run.metrics["strategy"], "tta": run.config.get("tta"),
                            "temperature": report.get("temperature"), "fit_on": report.get("fit_on"),
                            "test_images": test.get("images"), "test_accuracy": run.metrics.get("test_accuracy"),
                            "ece_before": test.get("ece_before"), "ece_after": test.get("ece_after"),
                            "log_loss_before": test.get("log_loss_before"), "log_loss_after": test.get("log_loss_after"),
                            "train_seconds": round(seconds, 1)})
        known_images, _ = _test_images(root)
        family = name.split("_")[0]
        unknowns = {other: _test_images(make_other())[0] for other, make_other in UNKNOWN_SETS.items() if other != family}
        unknowns["photo crops"] = photos
        unknown += unknown_rows(name, run, known_images, unknowns)
        if arguments.keep_runs:
            target = Path(arguments.keep_runs) / name
            shutil.rmtree(target, ignore_errors=True)
            shutil.copytree(run.directory, target, ignore=shutil.ignore_patterns("backup"))
        print(json.dumps(calibration[-1]), flush=True)
    save_results("trust_calibration", calibration, list(calibration[0]),
                 notes="ECE (15 equal-width bins) and log loss on each run's test split, before and after the temperature "
                       "the run fit on its held-out predictions (fit_on). Image size "
                       f"{arguments.image_size}, backbone {arguments.backbone}.")
    save_results("trust_unknown", unknown, list(unknown[0]),
                 notes="AUROC of telling the run's own test images (up to 300) from unknown images, by the calibrated top "
                       "probability (the product's score) and by the energy score; unknowns_caught: the share `finetune "
                       "predict` answers 'unknown' at the recorded threshold (chosen to keep 95% of held-out known "
                       "images); known_test_kept: the share of the run's test images it keeps.")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
