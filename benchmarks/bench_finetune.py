"""Does finetuning pay on real-size data, and does `auto` choose the input size well? (issue 11)

Settings:
    fashion_1000   Fashion-MNIST, 800 training + 200 validation images per class (1,000 labelled)
                   and 200 test images per class, at 96 px: auto must reach 0.91, beat the best
                   linear head by 1.5 points, in at most 0.75x the Keras guide recipe's time
    digits         scikit-learn's 8-px digits, 30 + 10 per class, no --image-size: auto must reach 0.95
    fashion_300, fashion_30, textures, faces
                   bench_policy.py's settings, no --image-size: auto within 1 point of the best
                   strategy at no more than 1.25x its time
Arms: `auto` (default settings), the linear strategies, the finetuning ones, and the Keras
transfer-learning guide's recipe (benchmarks/bench_vs_keras_guide.py) on the same folders.

Every arm starts from an empty cache (its own FINETUNE_HOME, the imported ImageNet weights
linked in), so it pays its own decoding and forward passes, as a new user's first run does;
within an arm, later steps reuse what earlier ones computed, as they do for that user.

    python benchmarks/bench_finetune.py [--settings fashion_1000 digits] [--arms auto keras_guide ...]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import datasets  # noqa: E402
from common import fresh_home, save_results  # noqa: E402

SETTINGS = {
    "fashion_1000": {"data": lambda: datasets.fashion_mnist(per_class_train=800, per_class_val=200, test_per_class=200),
                     "image_size": 96},
    "digits": {"data": lambda: datasets.digits(), "image_size": None},
    # The small settings of bench_policy.py, here with the input size left to each arm.
    "fashion_300": {"data": lambda: datasets.fashion_mnist(per_class_train=300, per_class_val=50), "image_size": None},
    "fashion_30": {"data": lambda: datasets.fashion_mnist(per_class_train=30), "image_size": None},
    "textures": {"data": lambda: datasets.textures(), "image_size": None},
    "faces": {"data": lambda: datasets.faces(), "image_size": None},
}
ARMS = ["auto", "linear", "multistage_linear", "finetune_top", "finetune_most", "keras_guide"]


def run_arm(data_dir: Path, arm: str, image_size: int | None, arguments) -> dict:
    import finetune

    with tempfile.TemporaryDirectory() as work:
        previous = os.environ.get("FINETUNE_HOME")
        home = fresh_home(Path(work))
        try:
            started = time.time()
            if arm == "keras_guide":
                from bench_vs_keras_guide import keras_guide

                os.environ["FINETUNE_HOME"] = str(home)
                accuracy, _ = keras_guide(data_dir, image_size or 224, arguments.backbone, arguments.seed)
                return {"test_accuracy": accuracy, "seconds": round(time.time() - started, 1), "used": "keras_guide",
                        "image_size": image_size or 224}
            os.environ["FINETUNE_HOME"] = str(home)
            run = finetune.train(str(data_dir), strategy=arm, backbone=arguments.backbone, image_size=image_size,
                                 seed=arguments.seed, out=str(Path(work) / "run"), verbose=arguments.verbose)
            seconds = round(time.time() - started, 1)
            policy = json.loads((run.directory / "policy.json").read_text())
            finetuned = run.metrics["stages"].get("finetune", {})
            return {
                "test_accuracy": float(run.metrics["test_accuracy"]), "seconds": seconds,
                "used": policy.get("used", run.config["strategy"]), "image_size": run.config["image_size"],
                "size_candidates": " ".join(f"{item['size']}:{item['cv_accuracy']}"
                                            for item in policy["image_size"].get("candidates", [])),
                "val_accuracy": (run.metrics.get("val") or {}).get("accuracy"),
                "epochs_run": finetuned.get("epochs_run"), "kept": finetuned.get("kept"),
                "augment": (finetuned.get("recipe") or {}).get("augment"),
            }
        finally:
            if previous is None:
                os.environ.pop("FINETUNE_HOME", None)
            else:
                os.environ["FINETUNE_HOME"] = previous
            shutil.rmtree(home, ignore_errors=True)


def verdicts(setting: str, results: dict) -> list[dict]:
    rows = []
    auto = results.get("auto")
    if auto is None:
        return rows
    strategies = {name: value for name, value in results.items() if name not in ("auto", "keras_guide")}
    if strategies:
        best = max(strategies, key=lambda name: strategies[name]["test_accuracy"])
        gap = strategies[best]["test_accuracy"] - auto["test_accuracy"]
        rows.append({"setting": setting, "arm": "verdict: best strategy",
                     "test_accuracy": f"auto {'within' if gap <= 0.01 else 'NOT within'} 1 point of {best} ({gap:+.3f})",
                     "seconds": f"auto / {best}: {auto['seconds'] / strategies[best]['seconds']:.2f}x"})
    linear = [results[name]["test_accuracy"] for name in ("linear", "multistage_linear") if name in results]
    if linear:
        rows.append({"setting": setting, "arm": "verdict: over the best linear head",
                     "test_accuracy": f"{auto['test_accuracy'] - max(linear):+.3f}"})
    if "keras_guide" in results:
        guide = results["keras_guide"]
        rows.append({"setting": setting, "arm": "verdict: vs the Keras guide",
                     "test_accuracy": f"{auto['test_accuracy'] - guide['test_accuracy']:+.3f}",
                     "seconds": f"auto / guide: {auto['seconds'] / guide['seconds']:.2f}x"})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    parser.add_argument("--arms", nargs="+", default=ARMS, choices=ARMS)
    parser.add_argument("--backbone", default="mobilenet_v2_torchvision")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--verbose", type=int, default=0)
    parser.add_argument("--name", default="finetune", help="results file name under benchmarks/results/")
    arguments = parser.parse_args()
    columns = ["setting", "arm", "used", "test_accuracy", "seconds", "image_size", "val_accuracy", "epochs_run",
               "augment", "kept", "size_candidates"]
    notes = (f"{arguments.backbone}, ImageNet weights (imported offline), seed {arguments.seed}, default settings of "
             "each strategy (`auto`: everything chosen by finetune; the others: --strategy NAME only), the setting's "
             "image size where it names one (`digits`: none given, each arm chooses). Every arm starts from an empty "
             "cache. `size_candidates`: the sizes auto scored and their cross-validated accuracy. Times are wall "
             "seconds on a shared 2-core machine, comparable within one run only.")
    rows = []
    for setting in arguments.settings:
        entry = SETTINGS[setting]
        data_dir = entry["data"]()
        results = {}
        for arm in arguments.arms:
            results[arm] = run_arm(data_dir, arm, entry["image_size"], arguments)
            print(setting, arm, results[arm], flush=True)
            rows.append({"setting": setting, "arm": arm, **results[arm]})
            # Saved after every arm, so that an interrupted run keeps what it measured.
            save_results(arguments.name, rows, columns, notes)
        rows += verdicts(setting, results)
        save_results(arguments.name, rows, columns, notes)


if __name__ == "__main__":
    main()
