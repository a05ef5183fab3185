"""Does `--strategy auto` pick well? Every strategy on real-image settings that span the table.

For each setting, every strategy is trained with the same budget (same backbone, image size,
finetuning epochs and patience), and test accuracy and wall time are reported beside the
strategy `auto` picked. Target: auto within one accuracy point of the best strategy on every
setting, at no more cost than that strategy.

    python benchmarks/bench_policy.py [--settings textures faces ...] [--image-size 128] [--epochs 5]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import datasets  # noqa: E402
from common import save_results  # noqa: E402

SETTINGS = {
    "textures": lambda: datasets.textures(),
    "faces": lambda: datasets.faces(),
    "digits": lambda: datasets.digits(),
    "fashion_mnist_30": lambda: datasets.fashion_mnist(per_class_train=30),
    "fashion_mnist_300": lambda: datasets.fashion_mnist(per_class_train=300, per_class_val=50),
}
STRATEGIES = ["linear", "multistage_linear", "finetune_top", "finetune_most", "full"]


def run_one(data_dir: Path, strategy: str, arguments) -> dict:
    import finetune

    started = time.time()
    # The epoch budget goes to the finetuning strategies; given to auto or a linear one it would
    # ask for finetuning (no flag is silently ignored), so auto keeps its defaults.
    budget = {"epochs": arguments.epochs, "patience": 2} if strategy in ("finetune_top", "finetune_most", "full") else {}
    with tempfile.TemporaryDirectory() as out:
        run = finetune.train(
            str(data_dir), strategy=strategy, backbone=arguments.backbone, image_size=arguments.image_size,
            **budget, seed=arguments.seed, out=str(Path(out) / "run"), verbose=0,
            cache=False,  # every strategy pays its own decoding and features
            tta="none",  # test-time crops are another question (bench_augment); single center view here
        )
        policy = json.loads((run.directory / "policy.json").read_text())
    head = run.metrics["stages"].get("head", {})
    return {"test_accuracy": float(run.metrics["test_accuracy"]), "seconds": round(time.time() - started, 1),
            "used": run.config["strategy"], "head": " + ".join(head.get("stages", [])),
            "score": policy["similarity"]["score"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--settings", nargs="+", default=list(SETTINGS))
    parser.add_argument("--strategies", nargs="+", default=STRATEGIES)
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--backbone", default="mobilenet_v2_torchvision")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--name", default="policy", help="results file name under benchmarks/results/")
    arguments = parser.parse_args()
    rows = []
    notes = (f"{arguments.backbone} at {arguments.image_size} px, ImageNet weights, finetuning strategies get up to "
             f"{arguments.epochs} epochs with patience 2, seed {arguments.seed}. Caches of decoded images and features are "
             "off, so every strategy pays its own decoding and forward passes; auto's time includes its measurements. "
             "Single center view (no test-time augmentation). `head`: the stages the linear strategies' head uses; "
             "`score`: the similarity score auto measured (top stage minus best lower stage, cross-validated accuracy).")
    for setting in arguments.settings:
        data_dir = SETTINGS[setting]()
        results = {}
        for strategy in ["auto"] + arguments.strategies:
            results[strategy] = run_one(data_dir, strategy, arguments)
            print(setting, strategy, results[strategy], flush=True)
        picked = results["auto"]["used"]
        best_strategy = max(arguments.strategies, key=lambda name: results[name]["test_accuracy"])
        for strategy in ["auto"] + arguments.strategies:
            result = results[strategy]
            rows.append({
                "setting": setting,
                "strategy": strategy if strategy != "auto" else f"auto -> {picked}",
                "test_accuracy": result["test_accuracy"],
                "head": result["head"] if strategy in ("auto", "linear", "multistage_linear") else "",
                "seconds": result["seconds"],
                "best": "yes" if strategy == best_strategy else "",
            })
        gap = results[best_strategy]["test_accuracy"] - results["auto"]["test_accuracy"]
        rows.append({"setting": setting, "strategy": "verdict",
                     "test_accuracy": f"auto {'within' if gap <= 0.01 else 'NOT within'} 1 point of best ({best_strategy}, gap {gap:+.3f})",
                     "seconds": f"auto {results['auto']['seconds']} s vs best {results[best_strategy]['seconds']} s",
                     "head": f"score {results['auto']['score']:+.3f}"})
        # Saved after every setting, so that an interrupted run keeps what it measured.
        save_results(arguments.name, rows, ["setting", "strategy", "test_accuracy", "seconds", "best", "head"], notes)


if __name__ == "__main__":
    main()
