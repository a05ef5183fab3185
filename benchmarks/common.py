"""What every benchmark prints and saves: the machine, the library versions and the figures."""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from pathlib import Path

RESULTS_DIR = Path(__file__).parent / "results"


def fresh_home(root: Path) -> Path:
    """An empty FINETUNE_HOME under `root` with the imported weights of the user's home linked in."""
    from finetune.config import finetune_home

    home = root / "home"
    home.mkdir(parents=True)
    weights = finetune_home() / "weights"
    if weights.exists():
        os.symlink(weights, home / "weights")
    return home


def machine() -> dict:
    import keras
    import numpy
    import tensorflow as tf

    return {
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "gpus": [device.name for device in tf.config.list_physical_devices("GPU")],
        "python": sys.version.split()[0],
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "numpy": numpy.__version__,
    }


def markdown_table(rows: list[dict], columns: list[str]) -> str:
    def cell(value):
        return f"{value:.3f}" if isinstance(value, float) else str(value)

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(row.get(column, "")) for column in columns) + " |" for row in rows]
    return "\n".join(lines)


def save_results(name: str, rows: list[dict], columns: list[str], notes: str = "") -> None:
    """Prints and writes benchmarks/results/<name>.json and .md."""
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    info = machine()
    table = markdown_table(rows, columns)
    text = f"# {name}\n\nMachine: {json.dumps(info)}\n\n{table}\n\n{notes}\n"
    print(text)
    (RESULTS_DIR / f"{name}.json").write_text(json.dumps({"machine": info, "rows": rows, "notes": notes}, indent=2))
    (RESULTS_DIR / f"{name}.md").write_text(text)
