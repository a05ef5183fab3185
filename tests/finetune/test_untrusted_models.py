"""Untrusted models: a .keras file whose Lambda layer would run a command is refused, by the API and the CLI."""

import json

import keras
import numpy as np
import pytest
from PIL import Image

import finetune
from finetune.cli import main


def write_lambda_run(directory, marker):
    """A run directory whose model.keras has a Lambda layer that, once deserialised and called, runs `touch marker`."""
    command = eval(f"lambda images: images + 0.0 * __import__('os').system('touch {marker}')")  # noqa: S307
    inputs = keras.Input((8, 8, 3), name="image")
    features = keras.layers.GlobalAveragePooling2D()(keras.layers.Lambda(command)(inputs))
    model = keras.Model(inputs, keras.layers.Dense(2, activation="softmax")(features))
    directory.mkdir(parents=True)
    model.save(directory / "model.keras")
    (directory / "labels.json").write_text(json.dumps(["a", "b"]))
    (directory / "config.json").write_text(json.dumps({"image_size": 8}))
    marker.unlink()  # building the model ran the command once; loading must not run it again
    return directory


def test_a_model_with_a_lambda_layer_is_refused_and_its_code_never_runs(tmp_path, capsys):
    marker = tmp_path / "pwned"
    run_dir = write_lambda_run(tmp_path / "run", marker)
    run = finetune.load_run(run_dir)
    with pytest.raises(finetune.FinetuneError, match=r"Refusing to load .*model\.keras: it holds Python code .*Lambda"):
        run.model
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "image.png")
    assert main(["predict", str(run_dir), str(tmp_path / "image.png")]) == 2
    assert "Refusing to load" in capsys.readouterr().err
    assert not marker.exists()
    # The file really carries the command: loading it unsafely runs it. What safe_mode=True stops is real.
    keras.saving.load_model(run_dir / "model.keras", safe_mode=False)
    assert marker.exists()
