"""The `finetune` command line: a thin layer over the Python API.

    finetune demo                      train and evaluate on the bundled sample
    finetune train DATA_DIR            train a classifier on a folder (one subfolder per class)
    finetune search DATA_DIR           search learning rates and regularisation (random, coarse to fine)
    finetune evaluate RUN_DIR DATA_DIR accuracy, per-class metrics, confusion matrix
    finetune predict RUN_DIR IMAGE...  top-k labels per image, "unknown" for images of no class
    finetune explain RUN_DIR IMAGE...  why: each image with its Grad-CAM heat map
    finetune check-data DATA_DIR       the data set's health report
    finetune augment-preview DATA_DIR  a grid of training images and augmented samples (PNG)
    finetune check DATA_DIR            babysitting: initial loss, overfit 20 images, learning-rate range test
    finetune export RUN_DIR... --out D one model (or an ensemble) as .keras, SavedModel, TFLite or ONNX
    finetune app                       the web app: pick a model, upload images, see predictions
    finetune zoo                       the backbones, their input sizes, parameters and stages
    finetune runs [DIR]                the runs in models/, newest first: data, backbone, accuracy, time

Every command takes --verbose: TensorFlow's own start-up lines and warnings too (see finetune.quiet).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from finetune import cli_arguments
from finetune.errors import USER_ERRORS, FinetuneError

SAMPLE_DIR = Path(__file__).parent / "sample_data" / "textures"


def _add_train_arguments(parser: argparse.ArgumentParser) -> None:
    cli_arguments.add_training_arguments(parser)
    from finetune.cli_augment import add_augment_arguments
    from finetune.config import TrainConfig

    add_augment_arguments(parser, default_preset=TrainConfig.augment, extra_choices=("auto",),
                          help_text=f"augmentation preset while finetuning (default: {TrainConfig.augment}: "
                                    f"{TrainConfig.auto_augment_preset} when the smallest class has at least "
                                    f"{TrainConfig.auto_augment_per_class} training images, else none)")
    cli_arguments.add_run_arguments(parser)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="finetune", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    train = commands.add_parser("train", help="train a classifier on an image folder or tfds:NAME")
    train.add_argument("data_dir", metavar="DATA_DIR", help="a folder with one subfolder per class, or tfds:NAME")
    _add_train_arguments(train)

    cli_arguments.add_config_argument(train)

    search = commands.add_parser("search", help="random, log-scale, coarse-to-fine search of the training knobs")
    search.add_argument("data_dir", metavar="DATA_DIR", help="a folder with one subfolder per class, or tfds:NAME")
    _add_train_arguments(search)
    cli_arguments.add_config_argument(search)
    cli_arguments.add_search_arguments(search)
    for action in search._actions:  # argparse keeps no public handle on an added argument's help
        if action.dest == "out":
            action.help = "the search folder: trials.csv, search.png, best.json, the resumable study (default: " \
                          "models/search-<data>-<time>)"

    demo = commands.add_parser("demo", help="train and evaluate on the bundled texture sample (no data needed)")
    _add_train_arguments(demo)
    demo.set_defaults(image_size=128, epochs=0)

    cli_arguments.add_evaluate_and_predict_commands(commands)
    from finetune.cli_predict import add_explain_command

    add_explain_command(commands)
    _add_augment_preview_command(commands)

    cli_arguments.add_check_data_and_policy_commands(commands)
    cli_arguments.add_app_command(commands)
    cli_arguments.add_check_and_export_commands(commands)
    cli_arguments.add_zoo_command(commands)
    cli_arguments.add_runs_command(commands)
    cli_arguments.add_verbose_argument(parser, commands)  # last: every command takes it
    return parser


def _add_augment_preview_command(commands) -> None:
    from finetune.cli_augment import add_augment_preview_command

    add_augment_preview_command(commands)


def _run_augment_preview(arguments) -> None:
    from finetune.cli_augment import run_augment_preview

    run_augment_preview(arguments)


def _train_config(arguments, source: str):
    """The `TrainConfig` of the arguments: over the defaults, or over `--config FILE` where one is given."""
    config = _config_from_arguments(arguments, source)
    if not getattr(arguments, "config", None):
        return config
    defaults = _config_from_arguments(build_parser().parse_args([arguments.command, source]), source)
    return _over_file(arguments.config, config, defaults)


def _over_file(path: str, given, defaults):
    """The configuration in the JSON file at `path`, with each value of `given` that differs from `defaults` put over it."""
    from finetune.config import TrainConfig
    from finetune.files import read_json

    try:
        config = TrainConfig.from_dict(read_json(Path(path)))
    except (TypeError, ValueError, AttributeError) as error:
        raise FinetuneError(f"{path} is not a finetune configuration ({error}). Pass a search's best.json or a run's "
                            f"config.json. Received: --config {path}") from None
    mine, theirs, merged = given.to_dict(), defaults.to_dict(), config.to_dict()
    for key, value in mine.items():
        if isinstance(value, dict) and key in ("data", "model", "policy"):
            merged[key].update({name: item for name, item in value.items() if item != theirs[key][name]})
        elif value != theirs[key]:
            merged[key] = value
    merged["data"]["source"], merged["out"], merged["verbose"] = given.data.source, given.out, given.verbose
    merged["overwrite"] = given.overwrite  # never from a file: replacing a finished run is asked for each time
    return TrainConfig.from_dict(merged)


def _config_from_arguments(arguments, source: str):
    from finetune.cli_augment import augment_overrides as overrides_from_arguments
    from finetune.config import TrainConfig

    return TrainConfig(
        strategy=arguments.strategy,
        policy=cli_arguments.policy_config(arguments),
        data=cli_arguments.data_config(arguments, source),
        model=cli_arguments.model_config(arguments),
        seed=arguments.seed,
        batch_size=arguments.batch_size,
        epochs=arguments.epochs,
        unfreeze_groups=arguments.unfreeze_groups,
        learning_rate=arguments.learning_rate,
        patience=arguments.patience,
        held_out_val_per_class=arguments.held_out_val_per_class,
        out=arguments.out,
        overwrite=arguments.overwrite,
        verbose=0 if arguments.quiet else 1,
        tensorboard=arguments.tensorboard,
        calibrate=not arguments.no_calibrate,
        unknown_keep=arguments.unknown_keep,
        augment=arguments.augment,
        augment_options=overrides_from_arguments(arguments),
        label_smoothing=arguments.label_smoothing,
        weight_decay=arguments.weight_decay,
        schedule=arguments.schedule,
        warmup_epochs=arguments.warmup_epochs,
        warmup=arguments.warmup,
        schedule_options=cli_arguments.schedule_options(arguments),
        snapshots=arguments.snapshots,
        tta=arguments.tta,
    )


def _print_train_summary(run) -> None:
    metrics = run.metrics
    print(f"Run saved in {run.directory}")
    held_out = (metrics.get("val") or {}).get("held_out", True)
    lines = []
    if metrics.get("cv_accuracy") is not None:
        over = f"{metrics['cv_folds']} folds over {metrics['cv_images']} images" if metrics.get("cv_images") else "folds"
        lines.append(f"Cross-validated accuracy: {metrics['cv_accuracy']:.4f} ({over}: how the chosen head scored on "
                     "held-out folds)")
    if metrics.get("val_accuracy") is not None:
        validation = f"Validation accuracy: {metrics['val_accuracy']:.4f}"
        if held_out:  # images the final model was not fit on: the estimate, first
            lines.insert(0, validation + " (images the final model was not fit on)")
        else:
            lines.append(validation + " (not held out: the final head was fit on these images too)")
    for line in lines:
        print(line)
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


def _run_check(arguments) -> int:
    from finetune.diagnostics import format_checks, run_checks

    results = run_checks(
        cli_arguments.data_config(arguments, arguments.data_dir), cli_arguments.model_config(arguments),
        cli_arguments.check_config(arguments), batch_size=arguments.batch_size, seed=arguments.seed,
    )
    print(json.dumps([result.to_dict() for result in results], indent=2) if arguments.json else format_checks(results))
    return 0 if all(result.passed for result in results) else 1


def _run_evaluate(arguments) -> None:
    """`finetune evaluate`: the figures, and with --plot the confusion matrix drawn (its path under "plot" in --json)."""
    import finetune
    from finetune.confusion import check_plot_path, plot_confusion

    plot = check_plot_path(arguments.plot, "--plot") if arguments.plot else None  # before the work, not after
    result = finetune.evaluate(arguments.run_dir, arguments.data_dir, batch_size=arguments.batch_size,
                               tta=arguments.tta, tta_combine=arguments.tta_combine)
    if plot is not None:
        split = "test split" if result["split"] == "test" else "all images"
        title = f"{Path(result['run']).name} on {arguments.data_dir}: confusion matrix (rows: true, columns: predicted)"
        result["plot"] = str(plot_confusion({split: result}, plot, title=title))
    print(json.dumps(result, indent=2) if arguments.json else _format_evaluation(result))
    if plot is not None and not arguments.json:
        print(f"Confusion matrix drawn in {result['plot']}")


def _run_export(arguments) -> None:
    from finetune.export.writer import export_ensemble

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
    elif arguments.command == "search":
        from finetune.search import run_search
        from finetune.search.report import format_summary

        summary = run_search(cli_arguments.search_config(arguments), _train_config(arguments, arguments.data_dir))
        print(json.dumps(summary, indent=2) if arguments.json else format_summary(summary))
    elif arguments.command == "evaluate":
        _run_evaluate(arguments)
    elif arguments.command in ("predict", "explain"):
        from finetune import cli_predict

        (cli_predict.run_predict if arguments.command == "predict" else cli_predict.run_explain)(arguments)
    elif arguments.command == "policy":
        from finetune.policy import format_policy, measure

        policy = measure(
            cli_arguments.data_config(arguments, arguments.data_dir), cli_arguments.model_config(arguments),
            cli_arguments.policy_config(arguments), batch_size=arguments.batch_size, seed=arguments.seed,
        )
        print(json.dumps(policy, indent=2) if arguments.json else format_policy(policy))
    elif arguments.command == "augment-preview":
        _run_augment_preview(arguments)
    elif arguments.command == "check-data":
        from finetune.health import format_health_report, health_report

        report = health_report(arguments.data_dir, arguments.val_fraction, arguments.seed, arguments.max_megapixels,
                               max_files=arguments.max_files)
        print(json.dumps(report, indent=2, default=str) if arguments.json else format_health_report(report))
        return 1 if report["problems"] else 0  # scripts can stop before training: `check-data DIR && train DIR`
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
    elif arguments.command == "runs":
        _run_runs(arguments)
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


def _run_runs(arguments) -> None:
    from finetune.run import models_dir
    from finetune.runs import format_runs, list_runs

    folder = models_dir(arguments.models_dir)
    rows, problems = list_runs(folder)
    if arguments.json:
        print(json.dumps({"runs": [row.to_dict() for row in rows], "unreadable": problems}, indent=2))
    else:
        print(format_runs(rows, problems, folder))


def main(argv=None) -> int:
    arguments = build_parser().parse_args(argv)
    from finetune.quiet import quiet_start

    quiet_start(verbose=arguments.verbose)  # before anything imports TensorFlow
    try:
        return run_command(arguments)
    except USER_ERRORS as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("Interrupted. Files written so far are complete; run the same command again to resume.", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
