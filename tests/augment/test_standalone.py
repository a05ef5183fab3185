"""`augment` is a library of its own: importing it loads nothing of `finetune`, and its light parts no TensorFlow."""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def loaded_after(statement: str) -> set[str]:
    """The top-level packages in `sys.modules` after running `statement` in a fresh interpreter."""
    script = f"{statement}\nimport sys\nprint(' '.join(sorted({{name.split('.')[0] for name in sys.modules}})))"
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, check=True,
                            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}, timeout=300)
    return set(result.stdout.split())


def test_augment_imports_nothing_of_finetune():
    modules = "augment, augment.tta, augment.tta_modes, augment.preview, augment.augmenter, augment.mixing, "
    modules += "augment.options, augment.layers, augment.seeding, augment.errors"
    loaded = loaded_after(f"import {modules}\naugment.register_layers()")
    assert "tensorflow" in loaded  # the statement did load the heavy modules
    assert "finetune" not in loaded


def test_import_augment_and_the_tta_modes_load_no_tensorflow():
    loaded = loaded_after("import augment, augment.tta_modes, augment.options, augment.errors\naugment.resolve('strong')")
    assert not {"tensorflow", "keras", "finetune"} & loaded
