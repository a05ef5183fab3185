"""The `finetune` command line: a thin layer over the Python API.

    finetune demo                      train and evaluate on the bundled sample
    finetune train DATA_DIR            train a classifier on a folder (one subfolder per class)
    finetune evaluate RUN_DIR DATA_DIR accuracy, per-class metrics, confusion matrix
    finetune predict RUN_DIR IMAGE...  top-k labels per image
    finetune check-data DATA_DIR       the data set's health report
    finetune zoo                       the backbones, their input sizes, parameters and stages
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from finetune.errors import FinetuneError

SAMPLE_DIR = Path(__file__).parent / "sample_data" / "textures"


def _add_train_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--backbone", default="mobilenet_v2_torchvision", help="a name from `finetune zoo` (default: mobilenet_v2_torchvision)")
    parser.add_argument("--weights", default="imagenet", help="imagenet (default), none (from scratch) or a weights file")
    parser.add_argument("--alpha", type=float, default=None, help="width multiplier of the MobileNets")
    parser.add_argument("--image-size", type=int, default=None, help="input size in pixels (default: the backbone's)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=10, help="finetuning epochs after the head (0: head only)")
    parser.add_argument("--unfreeze-groups", type=int, default=2, help="top freeze groups to finetune (default: 2)")
    parser.add_argument("--learning-rate", type=float, default=1e-4, help="finetuning learning rate (default: 1e-4)")
    parser.add_argument("--patience", type=int, default=3, help="early-stopping patience in epochs (default: 3)")
    parser.add_argument("--val-fraction", type=float, default=0.2, help="validation share when there is no val/ folder")
    parser.add_argument("--max-megapixels", type=float, default=89.0, help="skip larger images (decompression bombs)")
    parser.add_argument("--no-cache", action="store_true", help="do not cache decoded images on disk")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None, help="run directory (default: models/<data>-<backbone>-<time>)")
    parser.add_argument("--quiet", action="store_true", help="no progress output")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="finetune", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    train = commands.add_parser("train", help="train a classifier on an image folder or tfds:NAME")
    train.add_argument("data_dir", metavar="DATA_DIR", help="a folder with one subfolder per class, or tfds:NAME")
    _add_train_arguments(train)

    demo = commands.add_parser("demo", help="train and evaluate on the bundled texture sample (no data needed)")
    _add_train_arguments(demo)
    demo.set_defaults(image_size=128, epochs=0)

    evaluate = commands.add_parser("evaluate", help="evaluate a run on a labelled folder (its test/ split if any)")
    evaluate.add_argument("run_dir", metavar="RUN_DIR")
    evaluate.add_argument("data_dir", metavar="DATA_DIR")
    evaluate.add_argument("--batch-size", type=int, default=32)
    evaluate.add_argument("--json", action="store_true", help="print one JSON object")

    predict = commands.add_parser("predict", help="top-k labels of images")
    predict.add_argument("run_dir", metavar="RUN_DIR")
    predict.add_argument("inputs", metavar="IMAGE_OR_DIR", nargs="+")
    predict.add_argument("--top-k", type=int, default=3)
    predict.add_argument("--batch-size", type=int, default=32)
    predict.add_argument("--json", action="store_true", help="print a JSON list")

    check = commands.add_parser("check-data", help="the data set's health report")
    check.add_argument("data_dir", metavar="DATA_DIR")
    check.add_argument("--val-fraction", type=float, default=0.2)
    check.add_argument("--max-megapixels", type=float, default=89.0)
    check.add_argument("--seed", type=int, default=0)
    check.add_argument("--json", action="store_true")

    zoo = commands.add_parser("zoo", help="list the backbones")
    zoo.add_argument("--json", action="store_true")
    return parser


def _train_config(arguments, source: str):
    from finetune.config import DataConfig, ModelConfig, TrainConfig

    return TrainConfig(
        data=DataConfig(
            source=source,
            val_fraction=arguments.val_fraction,
            image_size=arguments.image_size,
            max_megapixels=arguments.max_megapixels,
            cache=not arguments.no_cache,
        ),
        model=ModelConfig(backbone=arguments.backbone, weights=arguments.weights, alpha=arguments.alpha),
        seed=arguments.seed,
        batch_size=arguments.batch_size,
        epochs=arguments.epochs,
        unfreeze_groups=arguments.unfreeze_groups,
        learning_rate=arguments.learning_rate,
        patience=arguments.patience,
        out=arguments.out,
        verbose=0 if arguments.quiet else 1,
    )


def _print_train_summary(run) -> None:
    metrics = run.metrics
    print(f"Run saved in {run.directory}")
    if metrics.get("val_accuracy") is not None:
        print(f"Validation accuracy: {metrics['val_accuracy']:.4f}")
    if metrics.get("test_accuracy") is not None:
        print(f"Test accuracy: {metrics['test_accuracy']:.4f}")
    if metrics.get("num_skipped"):
        print(f"Skipped {metrics['num_skipped']} unreadable files: see {run.directory / 'skipped.json'}")


def _format_evaluation(result: dict) -> str:
    names = result["class_names"]
    width = max(len(name) for name in names + ["class"])
    lines = [
        f"Accuracy: {result['accuracy']:.4f} on {result['num_images']} images ({result['split']} split)",
        f"{'class':<{width}}  precision  recall  support",
    ]
    for name in names:
        row = result["per_class"][name]
        lines.append(f"{name:<{width}}  {row['precision']:9.3f}  {row['recall']:6.3f}  {row['support']:7d}")
    lines.append("Confusion matrix (rows: true, columns: predicted):")
    for name, row in zip(names, result["confusion_matrix"]):
        lines.append(f"{name:<{width}}  " + " ".join(f"{count:5d}" for count in row))
    return "\n".join(lines)


def run_command(arguments) -> int:
    import finetune

    if arguments.command in ("train", "demo"):
        source = arguments.data_dir if arguments.command == "train" else str(SAMPLE_DIR)
        run = finetune.train(config=_train_config(arguments, source))
        _print_train_summary(run)
    elif arguments.command == "evaluate":
        result = finetune.evaluate(arguments.run_dir, arguments.data_dir, batch_size=arguments.batch_size)
        print(json.dumps(result, indent=2) if arguments.json else _format_evaluation(result))
    elif arguments.command == "predict":
        results = finetune.predict(arguments.run_dir, arguments.inputs, top_k=arguments.top_k, batch_size=arguments.batch_size)
        if arguments.json:
            print(json.dumps(results, indent=2))
        else:
            for item in results:
                if "error" in item:
                    print(f"{item['path']}: skipped ({item['error']})")
                else:
                    labels = ", ".join(f"{p['label']} {p['probability']:.3f}" for p in item["predictions"])
                    print(f"{item['path']}: {labels}")
    elif arguments.command == "check-data":
        from finetune.health import format_health_report, health_report

        report = health_report(arguments.data_dir, arguments.val_fraction, arguments.seed, arguments.max_megapixels)
        print(json.dumps(report, indent=2, default=str) if arguments.json else format_health_report(report))
    elif arguments.command == "zoo":
        from finetune.zoo import zoo_table

        table = zoo_table()
        if arguments.json:
            print(json.dumps(table, indent=2))
        else:
            print(f"{'name':<26}{'input':>6}{'parameters':>13}{'stages':>8}  preprocessing")
            for row in table:
                print(f"{row['name']:<26}{row['image_size']:>6}{row['parameters']:>13,}{row['stages']:>8}  {row['preprocessing']}")
    return 0


def main(argv=None) -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    arguments = build_parser().parse_args(argv)
    try:
        return run_command(arguments)
    except FinetuneError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("Interrupted. Files written so far are complete; run the same command again to resume.", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
