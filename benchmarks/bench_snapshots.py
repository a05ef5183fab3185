"""Snapshot ensembles where the paper found them (Huang et al. 2017): a network trained from scratch.

`bench_ensembles.py` measures snapshot ensembles when finetuning pretrained MobileNetV2 on small
data, where members hardly differ. This script measures the regime of the paper: MobileNetV2
(alpha 0.35, random initialisation, 32 px) trained from scratch by `finetune train --strategy
full --weights none`, the product's own path, on real images with more data. At the same total
epochs, per seed:

    single      --snapshots 0: warmup + cosine annealing, no early stopping (patience = epochs)
    snapshot M  --snapshots M: M cosine cycles restarting at the same rate; the ensemble of the M
                end-of-cycle snapshots (metrics.json: snapshots.test)

    python benchmarks/bench_snapshots.py [--sets fashion_mnist_300 digits_100] [--epochs 16] [--cycles 3] [--seeds 2]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402

import datasets  # noqa: E402
from common import markdown_table, save_results  # noqa: E402

SETS = {
    "fashion_mnist_300": lambda: datasets.fashion_mnist(per_class_train=300, per_class_val=50),
    "digits_100": lambda: datasets.digits(per_class_train=100, per_class_val=20),
}


def train(data_dir, arguments, seed: int, snapshots: int) -> dict:
    import finetune

    started = time.time()
    with tempfile.TemporaryDirectory() as out:
        run = finetune.train(
            str(data_dir), strategy="full", weights="none", alpha=0.35, image_size=arguments.image_size,
            epochs=arguments.epochs, patience=arguments.epochs, snapshots=snapshots, seed=seed,
            learning_rate=arguments.learning_rate, out=str(Path(out) / "run"), verbose=0, tta="none",
        )
    metrics = run.metrics
    row = {"single_or_last": metrics["test_accuracy"], "seconds": round(time.time() - started, 1)}
    if snapshots:
        test = metrics["snapshots"]["test"]
        row.update(ensemble=test["ensemble"]["accuracy"], members=[round(item["accuracy"], 4) for item in test["members"]],
                   disagreement=test.get("disagreement"))
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sets", nargs="+", default=list(SETS), choices=list(SETS))
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=16, help="1 warmup epoch + cycles x epochs per cycle")
    parser.add_argument("--cycles", type=int, default=3)
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--first-seed", type=int, default=0)
    parser.add_argument("--learning-rate", type=float, default=3e-3)
    parser.add_argument("--name", default="snapshots_scratch", help="results file name under benchmarks/results/")
    arguments = parser.parse_args()
    rows, summary = [], []
    for set_name in arguments.sets:
        data_dir = SETS[set_name]()
        singles, ensembles = [], []
        for seed in range(arguments.first_seed, arguments.first_seed + arguments.seeds):
            single = train(data_dir, arguments, seed, 0)
            snapshot = train(data_dir, arguments, seed, arguments.cycles)
            singles.append(single["single_or_last"])
            ensembles.append(snapshot["ensemble"])
            for arm, row in (("single", single), (f"snapshot_M{arguments.cycles}", snapshot)):
                rows.append({"data": set_name, "seed": seed, "arm": arm, "test_accuracy": row.get("ensemble", row["single_or_last"]),
                             "members": row.get("members", ""), "disagreement": row.get("disagreement", ""), "seconds": row["seconds"]})
                print(rows[-1], file=sys.stderr, flush=True)
        summary.append({"data": set_name, "seeds": arguments.seeds, "single": float(np.mean(singles)),
                        f"snapshot_M{arguments.cycles}": float(np.mean(ensembles)),
                        "gain_points": float(100 * (np.mean(ensembles) - np.mean(singles)))})
        notes = (f"MobileNetV2 alpha 0.35 from scratch (weights none), {arguments.image_size} px, strategy full, "
                 f"{arguments.epochs} epochs in total per arm, Adam lr {arguments.learning_rate}, batch 32, no augmentation, "
                 f"BatchNorm training (momentum 0.9). Per seed:\n\n"
                 + markdown_table(rows, ["data", "seed", "arm", "test_accuracy", "members", "disagreement", "seconds"]))
        save_results(arguments.name, summary, ["data", "seeds", "single", f"snapshot_M{arguments.cycles}", "gain_points"], notes)


if __name__ == "__main__":
    main()
