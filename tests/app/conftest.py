"""Fixtures of the app tests: a tiny hand-made run whose predictions are known, and image bytes."""

import io
import json
import socket
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

COLOURS = {"blue": (20, 40, 230), "red": (230, 30, 20), "grey": (128, 128, 128)}


def write_colour_run(directory: Path, image_size: int = 32, val_accuracy: float = 0.75, contrary: bool = False) -> Path:
    """A run directory whose model says "red" for reddish images and "blue" for bluish ones.

    Mean colour -> dense softmax: built in a second, unlike a trained backbone, and its answers
    are known, so that tests can check the labels the app shows. `contrary` swaps the answers
    (an ensemble member that disagrees).
    """
    import keras

    inputs = keras.Input((image_size, image_size, 3), name="image")
    features = keras.layers.GlobalAveragePooling2D(name="pool")(keras.layers.Rescaling(1 / 255.0)(inputs))
    outputs = keras.layers.Dense(2, activation="softmax", name="classifier")(features)
    model = keras.Model(inputs, outputs)
    # Columns: blue, red. Logit difference 8 * (blue - red) channel means.
    kernel = np.array([[-4.0, 4.0], [0.0, 0.0], [4.0, -4.0]]) * (-1 if contrary else 1)
    model.get_layer("classifier").set_weights([kernel, np.zeros(2)])
    directory.mkdir(parents=True, exist_ok=True)
    model.save(directory / "model.keras")
    (directory / "labels.json").write_text(json.dumps(["blue", "red"]))
    config = {"image_size": image_size, "model": {"backbone": "colour_means"}, "strategy": "linear"}
    (directory / "config.json").write_text(json.dumps(config))
    (directory / "metrics.json").write_text(json.dumps({"val_accuracy": val_accuracy}))
    return directory


def free_port() -> int:
    """A TCP port of 127.0.0.1 that nothing listens on (for a server the test starts)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def image_bytes(colour: str, fmt: str = "PNG", size=(40, 30)) -> bytes:
    rng = np.random.default_rng(0)
    pixels = np.clip(np.array(COLOURS[colour]) + rng.normal(0, 10, (size[1], size[0], 3)), 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format=fmt)
    return buffer.getvalue()


def bomb_png(width: int = 30000, height: int = 30000) -> bytes:
    """A PNG of a few bytes whose header claims width x height pixels."""
    data = bytearray(image_bytes("red", size=(1, 1)))
    header = b"IHDR" + struct.pack(">II", width, height) + bytes(data[24:29])
    data[16:24] = header[4:12]
    data[29:33] = struct.pack(">I", zlib.crc32(header) & 0xFFFFFFFF)
    return bytes(data)


@pytest.fixture(scope="session")
def colour_models_dir(tmp_path_factory) -> Path:
    """models/ with one colour run (built once per session; tests only read it)."""
    models_dir = tmp_path_factory.mktemp("app_models")
    write_colour_run(models_dir / "colours-colour_means-20261125-120000")
    return models_dir
