"""`finetune predict` and `finetune explain`: labels of images, "unknown" for images of no class, and why.

    finetune predict RUN cat.jpg more/ [--unknown off|auto|0.5] [--json]
    finetune explain RUN cat.jpg more/ --out explained/      # image + Grad-CAM heat map, per image
"""

from __future__ import annotations

import argparse
import json

UNKNOWN_HELP = ("answer 'unknown (closest: LABEL, p)' when the calibrated top probability is under a threshold: "
                "auto (default) uses the one training chose to keep 95%% of held-out known images, off never "
                "does, or give a threshold in (0, 1)")


def add_unknown_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--unknown", default="auto", metavar="off|auto|THRESHOLD", help=UNKNOWN_HELP)


def add_explain_command(commands) -> None:
    """`finetune explain`, and --unknown for `finetune predict` (added by `cli_arguments`)."""
    from finetune.cli_arguments import add_tta_arguments

    add_unknown_argument(commands.choices["predict"])

    explain = commands.add_parser("explain", help="why this label: each image with its Grad-CAM heat map (PNG)")
    explain.add_argument("run_dir", metavar="RUN_DIR")
    explain.add_argument("inputs", metavar="IMAGE_OR_DIR", nargs="+")
    explain.add_argument("--out", required=True, metavar="DIR", help="the folder for <image>.explain.png files")
    add_tta_arguments(explain)
    add_unknown_argument(explain)
    explain.add_argument("--json", action="store_true", help="print a JSON list")


def _line(item: dict) -> str:
    if "error" in item:
        return f"{item['path']}: skipped ({item['error']})"
    labels = ", ".join(f"{p['label']} {p['probability']:.3f}" for p in item["predictions"])
    return f"{item['path']}: {item['answer']}" + (f" ({labels})" if item["unknown"] else f": {labels}")


def run_predict(arguments) -> None:
    import finetune

    results = finetune.predict(arguments.run_dir, arguments.inputs, top_k=arguments.top_k, batch_size=arguments.batch_size,
                               tta=arguments.tta, tta_combine=arguments.tta_combine, unknown=arguments.unknown)
    print(json.dumps(results, indent=2) if arguments.json else "\n".join(_line(item) for item in results))


def run_explain(arguments) -> None:
    from finetune.explain_files import explain

    results = explain(arguments.run_dir, arguments.inputs, arguments.out, tta=arguments.tta, unknown=arguments.unknown)
    if arguments.json:
        print(json.dumps(results, indent=2))
        return
    for item in results:
        if "error" in item:
            print(f"{item['path']}: skipped ({item['error']})")
        else:
            print(f"{item['path']}: {item['answer']} ({item['probability']:.3f}) -> {item['out']}")
