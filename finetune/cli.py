"""The `finetune` command line: a thin layer over the Python API.

    finetune demo                      train and evaluate on the bundled sample
    finetune train DATA_DIR            train a classifier on a folder (one subfolder per class)
    finetune evaluate RUN_DIR DATA_DIR accuracy, per-class metrics, confusion matrix
    finetune predict RUN_DIR IMAGE...  top-k labels per image
    finetune check-data DATA_DIR       the data set's health report
    finetune augment-preview DATA_DIR  a grid of training images and augmented samples (PNG)
    finetune check DATA_DIR            babysitting: initial loss, overfit 20 images, learning-rate range test
    finetune export RUN_DIR... --out D one model (or an ensemble) as .keras, SavedModel, TFLite or ONNX
    finetune app                       the web app: pick a model, upload images, see predictions
    finetune zoo                       the backbones, their input sizes, parameters and stages
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from finetune.config import PolicyConfig
from finetune.errors import FinetuneError

SAMPLE_DIR = Path(__file__).parent / "sample_data" / "textures"


STRATEGY_CHOICES = ("auto", "linear", "finetune_top", "finetune_most", "multistage_linear", "full")


def _add_policy_arguments(parser: argparse.ArgumentParser) -> None:
    defaults = PolicyConfig()
    parser.add_argument("--lots-per-class", type=int, default=defaults.lots_per_class,
                        help="policy: a smallest class with at least this many training images is 'quite a lot' "
                             f"(default: {defaults.lots_per_class})")
    parser.add_argument("--similarity-margin", type=float, default=defaults.similarity_margin,
                        help="policy: the top stage within this cross-validated accuracy of the best lower stage means "
                             f"'similar' (default: {defaults.similarity_margin})")


def _policy_config(arguments) -> PolicyConfig:
    return PolicyConfig(lots_per_class=arguments.lots_per_class, similarity_margin=arguments.similarity_margin)


def _add_schedule_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("finetuning schedule (see finetune.schedules)")
    group.add_argument("--schedule", default="cosine",
                       choices=("constant", "step", "exponential", "inverse_time", "cosine", "cyclic", "snapshot"),
                       help="learning-rate decay of finetuning (default: cosine)")
    group.add_argument("--warmup-epochs", type=int, default=1, help="epochs of warmup before the decay (default: 1)")
    group.add_argument("--warmup", choices=("linear", "constant", "none"), default="linear",
                       help="gradual (linear, default) or constant warmup, or none")
    group.add_argument("--decay-factor", type=float, default=None, help="step decay: multiply the rate by this (default: 0.1)")
    group.add_argument("--decay-every", type=int, default=None, help="step decay: every N epochs")
    group.add_argument("--decay-milestones", type=int, nargs="+", default=None, help="step decay: at these epochs instead")
    group.add_argument("--decay-rate", type=float, default=None, help="exponential and inverse_time decay rate per epoch")
    group.add_argument("--snapshots", type=int, default=0,
                       help="snapshot ensemble: M >= 2 cosine cycles, one saved model per cycle (default: 0, off)")
    group.add_argument("--tta", default="auto", choices=TTA_CHOICES,
                       help="test-time augmentation to record: auto measures each mode on validation data (default)")


def _schedule_options(arguments) -> dict:
    names = {"decay_factor": "factor", "decay_every": "every_epochs", "decay_milestones": "milestones", "decay_rate": "decay_rate"}
    return {option: getattr(arguments, name) for name, option in names.items() if getattr(arguments, name) is not None}


def _add_train_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--backbone", default="mobilenet_v2_torchvision", help="a name from `finetune zoo` (default: mobilenet_v2_torchvision)")
    parser.add_argument("--weights", default="imagenet", help="imagenet (default), none (from scratch) or a weights file")
    parser.add_argument("--alpha", type=float, default=None, help="width multiplier of the MobileNets")
    parser.add_argument("--image-size", type=int, default=None, help="input size in pixels (default: the backbone's)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=10, help="finetuning epochs after the head (0: head only)")
    parser.add_argument("--strategy", default="auto", choices=STRATEGY_CHOICES,
                        help="what to freeze and train (default: auto, picked by `finetune policy`)")
    parser.add_argument("--unfreeze-groups", type=int, default=None,
                        help="top freeze groups to finetune (default: the strategy's share of the backbone)")
    parser.add_argument("--learning-rate", type=float, default=1e-3,
                        help="head learning rate while finetuning; the backbone gets 1/10 (default: 1e-3)")
    _add_policy_arguments(parser)
    _add_schedule_arguments(parser)
    from augment.options import add_arguments as add_augment_arguments

    add_augment_arguments(parser, default_preset="none")
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
    _add_tta_arguments(evaluate)
    evaluate.add_argument("--json", action="store_true", help="print one JSON object")

    predict = commands.add_parser("predict", help="top-k labels of images")
    predict.add_argument("run_dir", metavar="RUN_DIR")
    predict.add_argument("inputs", metavar="IMAGE_OR_DIR", nargs="+")
    predict.add_argument("--top-k", type=int, default=3)
    predict.add_argument("--batch-size", type=int, default=32)
    _add_tta_arguments(predict)
    predict.add_argument("--json", action="store_true", help="print a JSON list")

    _add_augment_preview_command(commands)

    check = commands.add_parser("check-data", help="the data set's health report")
    check.add_argument("data_dir", metavar="DATA_DIR")
    check.add_argument("--val-fraction", type=float, default=0.2)
    check.add_argument("--max-megapixels", type=float, default=89.0)
    check.add_argument("--seed", type=int, default=0)
    check.add_argument("--json", action="store_true")

    policy = commands.add_parser("policy", help="measure data size and similarity, and pick a transfer strategy")
    policy.add_argument("data_dir", metavar="DATA_DIR")
    policy.add_argument("--backbone", default="mobilenet_v2_torchvision")
    policy.add_argument("--weights", default="imagenet")
    policy.add_argument("--alpha", type=float, default=None)
    policy.add_argument("--image-size", type=int, default=None)
    policy.add_argument("--batch-size", type=int, default=32)
    policy.add_argument("--val-fraction", type=float, default=0.2)
    policy.add_argument("--seed", type=int, default=0)
    policy.add_argument("--json", action="store_true", help="print strategy, size, similarity, thresholds, reasons as JSON")
    _add_policy_arguments(policy)

    app = commands.add_parser("app", help="the web app: pick a model, upload images, see predictions (Streamlit)")
    app.add_argument("--models-dir", default=None, help="where to look for runs and exports (default: $FINETUNE_MODELS_DIR or models/)")
    app.add_argument("--host", default="127.0.0.1", help="address to serve on (default: 127.0.0.1; 0.0.0.0 for other machines)")
    app.add_argument("--port", type=int, default=8501)

    _add_check_and_export_commands(commands)

    zoo = commands.add_parser("zoo", help="list the backbones")
    zoo.add_argument("--json", action="store_true")
    return parser


TTA_CHOICES = ("auto", "none", "center", "flip", "five_crop", "ten_crop", "multiscale")


def _add_tta_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--tta", choices=TTA_CHOICES, default="auto",
                        help="test-time augmentation (default: auto, the mode training chose on validation data, else none)")
    parser.add_argument("--tta-combine", choices=("mean", "geometric"), default="mean",
                        help="average the views' probabilities (default) or take their geometric mean")


def _add_augment_preview_command(commands) -> None:
    from augment.options import add_arguments

    preview = commands.add_parser("augment-preview", help="a grid of training images and augmented samples (PNG)")
    preview.add_argument("data_dir", metavar="DATA_DIR")
    preview.add_argument("--out", default="augment-preview.png", help="the PNG to write (default: augment-preview.png)")
    preview.add_argument("--image-size", type=int, default=160, help="images are resized to this, as in training (default: 160)")
    preview.add_argument("--images", type=int, default=6, help="rows: training images, classes in turn (default: 6)")
    preview.add_argument("--samples", type=int, default=5, help="augmented samples of each (default: 5)")
    preview.add_argument("--seed", type=int, default=0)
    add_arguments(preview, default_preset="standard")


def _run_augment_preview(arguments) -> None:
    from augment.options import overrides_from_arguments
    from augment.preview import write_preview

    path = write_preview(
        arguments.out, arguments.data_dir, preset=arguments.augment, seed=arguments.seed, images=arguments.images,
        samples=arguments.samples, image_size=arguments.image_size, **overrides_from_arguments(arguments),
    )
    print(f"Wrote {path}")


def _train_config(arguments, source: str):
    from augment.options import overrides_from_arguments
    from finetune.config import DataConfig, ModelConfig, TrainConfig

    return TrainConfig(
        strategy=arguments.strategy,
        policy=_policy_config(arguments),
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
        augment=arguments.augment,
        augment_options=overrides_from_arguments(arguments),
        schedule=arguments.schedule,
        warmup_epochs=arguments.warmup_epochs,
        warmup=arguments.warmup,
        schedule_options=_schedule_options(arguments),
        snapshots=arguments.snapshots,
        tta=arguments.tta,
    )


def _print_train_summary(run) -> None:
    metrics = run.metrics
    print(f"Run saved in {run.directory}")
    if metrics.get("cv_accuracy") is not None:
        print(f"Cross-validated accuracy: {metrics['cv_accuracy']:.4f} (how the chosen head scored on held-out folds)")
    if metrics.get("val_accuracy") is not None:
        held_out = (metrics.get("val") or {}).get("held_out", True)
        print(f"Validation accuracy: {metrics['val_accuracy']:.4f}"
              + ("" if held_out else " (not held out: the final head was fit on these images too)"))
    if metrics.get("test_accuracy") is not None:
        print(f"Test accuracy: {metrics['test_accuracy']:.4f}")
    if metrics.get("num_skipped"):
        print(f"Skipped {metrics['num_skipped']} unreadable files: see {run.directory / 'skipped.json'}")


def _format_evaluation(result: dict) -> str:
    names = result["class_names"]
    width = max(len(name) for name in names + ["class"])
    lines = [
        f"Accuracy: {result['accuracy']:.4f} on {result['num_images']} images ({result['split']} split"
        + (f", TTA {result['tta']})" if result.get("tta", "none") != "none" else ")"),
        f"{'class':<{width}}  precision  recall  support",
    ]
    for name in names:
        row = result["per_class"][name]
        lines.append(f"{name:<{width}}  {row['precision']:9.3f}  {row['recall']:6.3f}  {row['support']:7d}")
    lines.append("Confusion matrix (rows: true, columns: predicted):")
    for name, row in zip(names, result["confusion_matrix"]):
        lines.append(f"{name:<{width}}  " + " ".join(f"{count:5d}" for count in row))
    return "\n".join(lines)


def _add_check_and_export_commands(commands) -> None:
    check = commands.add_parser("check", help="babysitting checks: initial loss, overfit 20 images, learning-rate range test")
    check.add_argument("data_dir", metavar="DATA_DIR")
    check.add_argument("--backbone", default="mobilenet_v2_torchvision")
    check.add_argument("--weights", default="imagenet", help="imagenet (default), none (from scratch) or a weights file")
    check.add_argument("--alpha", type=float, default=None)
    check.add_argument("--image-size", type=int, default=None)
    check.add_argument("--batch-size", type=int, default=32)
    check.add_argument("--unfreeze-groups", type=int, default=2, help="top freeze groups trained in the checks (default: 2)")
    check.add_argument("--subset-size", type=int, default=20, help="images the model must overfit (default: 20)")
    check.add_argument("--overfit-epochs", type=int, default=60, help="at most this many epochs to overfit them (default: 60)")
    check.add_argument("--range-steps", type=int, default=100, help="batches of the learning-rate range test (default: 100)")
    check.add_argument("--val-fraction", type=float, default=0.2)
    check.add_argument("--seed", type=int, default=0)
    check.add_argument("--out", default="check", help="folder for lr_range.png (default: check/)")
    check.add_argument("--json", action="store_true")

    export = commands.add_parser("export", help="export one run or an ensemble of runs/snapshots as one model")
    export.add_argument("run_dirs", metavar="RUN_DIR", nargs="+")
    export.add_argument("--members", choices=("snapshots", "best"), default=None,
                        help="snapshots of the run(s), or the best model.keras of each run (default: snapshots of one run that has them, else best)")
    export.add_argument("--format", choices=("keras", "savedmodel", "tflite", "onnx"), default="keras")
    export.add_argument("--quantize", choices=("none", "float16", "dynamic"), default="none", help="TFLite only")
    export.add_argument("--tta", default=None, help="test-time augmentation mode built into the graph (default: none)")
    export.add_argument("--tolerance", type=float, default=None, help="largest probability difference the parity check accepts")
    export.add_argument("--out", required=True, help="the export directory (model, labels.json, export.json)")
    export.add_argument("--json", action="store_true", help="print export.json")


def _run_check(arguments) -> int:
    from finetune.diagnostics import format_checks, run_checks

    results = run_checks(
        arguments.data_dir, backbone=arguments.backbone, weights=arguments.weights, alpha=arguments.alpha,
        image_size=arguments.image_size, batch_size=arguments.batch_size, val_fraction=arguments.val_fraction,
        seed=arguments.seed, unfreeze_groups=arguments.unfreeze_groups, subset_size=arguments.subset_size,
        overfit_epochs=arguments.overfit_epochs, range_steps=arguments.range_steps, out_dir=arguments.out,
    )
    print(json.dumps([result.to_dict() for result in results], indent=2) if arguments.json else format_checks(results))
    return 0 if all(result.passed for result in results) else 1


def _run_export(arguments) -> None:
    from finetune.export import export_ensemble

    sidecar = export_ensemble(
        arguments.run_dirs, arguments.out, members=arguments.members, format=arguments.format,
        quantize=arguments.quantize, tta=arguments.tta, tolerance=arguments.tolerance,
    )
    if arguments.json:
        print(json.dumps(sidecar, indent=2))
    else:
        check = sidecar["parity"]
        print(f"Exported {len(sidecar['members'])} member(s) as {sidecar['format']} "
              f"(quantize={sidecar['quantize']}) to {arguments.out}/{sidecar['artefact']}")
        print(f"Parity with the in-memory ensemble: max abs difference {check['max_abs_diff']:.2e} "
              f"(tolerance {check['tolerance']:g}), top-1 agreement {check['top1_agreement']:.1%} on {check['images']}")


def run_command(arguments) -> int:
    import finetune

    if arguments.command in ("train", "demo"):
        source = arguments.data_dir if arguments.command == "train" else str(SAMPLE_DIR)
        run = finetune.train(config=_train_config(arguments, source))
        _print_train_summary(run)
    elif arguments.command == "evaluate":
        result = finetune.evaluate(arguments.run_dir, arguments.data_dir, batch_size=arguments.batch_size,
                                   tta=arguments.tta, tta_combine=arguments.tta_combine)
        print(json.dumps(result, indent=2) if arguments.json else _format_evaluation(result))
    elif arguments.command == "predict":
        results = finetune.predict(arguments.run_dir, arguments.inputs, top_k=arguments.top_k, batch_size=arguments.batch_size,
                                   tta=arguments.tta, tta_combine=arguments.tta_combine)
        if arguments.json:
            print(json.dumps(results, indent=2))
        else:
            for item in results:
                if "error" in item:
                    print(f"{item['path']}: skipped ({item['error']})")
                else:
                    labels = ", ".join(f"{p['label']} {p['probability']:.3f}" for p in item["predictions"])
                    print(f"{item['path']}: {labels}")
    elif arguments.command == "policy":
        from finetune.policy import format_policy, measure

        policy = measure(
            arguments.data_dir, backbone=arguments.backbone, weights=arguments.weights, alpha=arguments.alpha,
            image_size=arguments.image_size, batch_size=arguments.batch_size, val_fraction=arguments.val_fraction,
            seed=arguments.seed,
            thresholds=_policy_config(arguments),
        )
        print(json.dumps(policy, indent=2) if arguments.json else format_policy(policy))
    elif arguments.command == "augment-preview":
        _run_augment_preview(arguments)
    elif arguments.command == "check-data":
        from finetune.health import format_health_report, health_report

        report = health_report(arguments.data_dir, arguments.val_fraction, arguments.seed, arguments.max_megapixels)
        print(json.dumps(report, indent=2, default=str) if arguments.json else format_health_report(report))
    elif arguments.command == "app":
        script = Path(__file__).resolve().parent.parent / "app" / "streamlit_app.py"
        if not script.is_file():
            raise FinetuneError(f"The app needs a clone of the repository ({script} is missing): run `finetune app` there.")
        command = [sys.executable, "-m", "streamlit", "run", str(script), "--server.address", arguments.host,
                   "--server.port", str(arguments.port), "--server.headless", "true", "--browser.gatherUsageStats", "false",
                   "--client.toolbarMode", "minimal"]
        command += ["--", "--models-dir", arguments.models_dir] if arguments.models_dir else []
        sys.stdout.flush()
        os.execv(sys.executable, command)  # this process becomes the server: Ctrl+C and signals reach it
    elif arguments.command == "check":
        return _run_check(arguments)
    elif arguments.command == "export":
        _run_export(arguments)
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
