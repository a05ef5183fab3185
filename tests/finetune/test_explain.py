"""Grad-CAM heat maps: on an image whose class is decided by one region, the map's mass is in that region;
multi-stage heads and ensembles; `finetune explain` writes the pictures."""

import json

import keras
import numpy as np
import pytest
from PIL import Image

import finetune
from finetune.ensemble import build_ensemble
from finetune.explain import heat_maps
from finetune.model import build_classifier
from finetune.temperature import with_temperature

SIZE = 32
LABELS = ["red", "green"]


def colour_classifier(two_stages: bool = False):
    """A backbone whose feature map is the image's own colour channels at 1/4 the size; the head reads redness.

    Class 0 ("red") has kernel +1 on the red channel, -1 on green; class 1 the opposite. Nothing is
    trained: where the evidence for a class lies is known exactly, which is what a heat map must find.
    """
    inputs = keras.Input((SIZE, SIZE, 3))
    pooled = keras.layers.AveragePooling2D(4, name="map")(inputs)  # [8, 8, 3], channels = (tf-preprocessed) RGB
    outputs = [keras.layers.AveragePooling2D(2, name="coarse")(pooled), pooled] if two_stages else pooled
    backbone = keras.Model(inputs, outputs, name="backbone")
    model = build_classifier(backbone, "tf", num_classes=2, image_size=SIZE, dropout=0.0)
    per_stage = np.array([[1.0, -1.0], [-1.0, 1.0], [0.0, 0.0]], dtype=np.float32)
    kernel = np.concatenate([per_stage] * (2 if two_stages else 1))
    model.get_layer("classifier").set_weights([kernel * 4, np.zeros(2, dtype=np.float32)])
    return model


def patch_image(corner: tuple[int, int], colour=(255, 0, 0), seed: int = 0) -> np.ndarray:
    """Grey noise with a 12-px coloured square whose top-left corner is `corner`: the square decides the class."""
    rng = np.random.default_rng(seed)
    image = np.clip(rng.normal(128, 10, (SIZE, SIZE, 3)), 0, 255).astype(np.uint8)
    row, column = corner
    image[row : row + 12, column : column + 12] = colour
    return image


def mass_in(heat: np.ndarray, corner) -> float:
    row, column = corner
    return float(heat[row : row + 12, column : column + 12].sum() / heat.sum())


@pytest.mark.parametrize("two_stages", [False, True])
def test_the_heat_maps_mass_is_in_the_region_that_decides_the_class(two_stages):
    model = colour_classifier(two_stages)
    corners = [(0, 0), (18, 4), (6, 20)]
    images = np.stack([patch_image(corner, seed=index) for index, corner in enumerate(corners)])
    assert (model.predict(images.astype(np.float32), verbose=0).argmax(axis=1) == 0).all()
    maps = heat_maps(model, images, [0, 0, 0])
    assert maps.shape == (3, SIZE, SIZE) and maps.max() == pytest.approx(1.0)
    for heat, corner in zip(maps, corners):
        assert mass_in(heat, corner) > 0.6  # the square is 14% of the image
    # For the other class the square is evidence against: no heat there.
    assert mass_in(heat_maps(model, images[:1], [1])[0], corners[0]) < 0.05


def test_an_ensemble_and_a_calibrated_model_explain_like_their_members():
    model = colour_classifier()
    image = patch_image((10, 10), colour=(0, 255, 0))[None]
    single = heat_maps(model, image, [1])
    np.testing.assert_allclose(heat_maps(with_temperature(model, 2.0), image, [1]), single, atol=1e-6)
    np.testing.assert_allclose(heat_maps(build_ensemble([model, colour_classifier()]), image, [1]), single, atol=1e-6)
    assert mass_in(single[0], (10, 10)) > 0.6


def test_explain_writes_one_picture_per_image_and_reports_bad_files(tmp_path, capsys):
    from finetune.cli import main

    run = tmp_path / "run"
    run.mkdir()
    with_temperature(colour_classifier(), 1.5).save(run / "model.keras")
    (run / "labels.json").write_text(json.dumps(LABELS))
    (run / "config.json").write_text(json.dumps({"image_size": SIZE}))
    images = tmp_path / "images"
    images.mkdir()
    Image.fromarray(patch_image((2, 2))).save(images / "red.png")
    (images / "broken.jpg").write_bytes(b"not an image")
    assert main(["explain", str(run), str(images), "--out", str(tmp_path / "out"), "--json"]) == 0
    results = {item["path"].rsplit("/", 1)[-1]: item for item in json.loads(capsys.readouterr().out)}
    assert results["red.png"]["label"] == "red" and "error" in results["broken.jpg"]
    with Image.open(results["red.png"]["out"]) as picture:
        assert picture.size[0] > picture.size[1] > 100
    assert [path.name for path in (tmp_path / "out").iterdir()] == ["red.explain.png"]
    assert finetune.load_run(run).labels == LABELS
