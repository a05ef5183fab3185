"""Temperature scaling: the fit recovers a known temperature, ECE by hand, the layer saved in the model and
applied after an ensemble's and TTA's average (calibrated as a whole)."""

import json

import keras
import numpy as np
import pytest

import finetune
from finetune.calibration import (
    apply_temperature,
    calibration_report,
    expected_calibration_error,
    fit_temperature,
    plot_reliability,
)
from finetune.ensemble import build_ensemble
from finetune.temperature import Temperature, model_temperature, split_temperature, with_temperature
from tests.finetune.test_inference import LABELS, photo, position_model, write_run


def softmax(logits):
    shifted = logits - logits.max(axis=1, keepdims=True)
    return np.exp(shifted) / np.exp(shifted).sum(axis=1, keepdims=True)


def overconfident(temperature: float, count: int = 4000, seed: int = 0):
    """Probabilities softmax(z) of a model whose true label distribution is softmax(z / temperature)."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 3, (count, 5))
    truth = softmax(logits / temperature)
    labels = np.array([rng.choice(5, p=row) for row in truth])
    return softmax(logits), labels


@pytest.mark.parametrize("true_temperature", [0.5, 2.5])
def test_the_fit_recovers_the_temperature_that_made_the_labels(true_temperature):
    probabilities, labels = overconfident(true_temperature)
    fitted = fit_temperature(probabilities, labels)
    assert fitted == pytest.approx(true_temperature, rel=0.12)
    report = calibration_report(probabilities, labels, fitted)
    assert report["ece_after"] < 0.5 * report["ece_before"]
    assert report["log_loss_after"] < report["log_loss_before"]
    assert np.array_equal(apply_temperature(probabilities, fitted).argmax(axis=1), probabilities.argmax(axis=1))


def test_ece_by_hand_and_no_sharpening_when_every_held_out_image_is_right():
    # Two images at confidence 0.9 (one right), two at 0.6 (both right): |0.5 - 0.9| / 2 + |1 - 0.6| / 2 = 0.4.
    probabilities = np.array([[0.9, 0.1], [0.9, 0.1], [0.6, 0.4], [0.4, 0.6]])
    labels = np.array([0, 1, 0, 1])
    assert expected_calibration_error(probabilities, labels) == pytest.approx(0.4)
    right = np.array([[0.7, 0.3], [0.2, 0.8]])
    assert fit_temperature(right, np.array([0, 1])) == 1.0  # the loss would fall for ever as T shrinks


def test_the_layer_saves_inside_the_model_and_loads_with_safe_mode(tmp_path):
    model = position_model()
    calibrated = with_temperature(model, 1.7)
    calibrated.save(tmp_path / "model.keras")
    loaded = keras.saving.load_model(tmp_path / "model.keras", safe_mode=True)
    images = np.stack([photo(seed, (16, 16)) for seed in range(4)]).astype(np.float32)
    raw = model.predict(images, verbose=0)
    assert model_temperature(loaded) == 1.7
    np.testing.assert_allclose(loaded.predict(images, verbose=0), apply_temperature(raw, 1.7), atol=1e-5)
    core, temperature = split_temperature(loaded)
    assert temperature == 1.7 and model_temperature(core) is None
    np.testing.assert_allclose(core.predict(images, verbose=0), raw, atol=1e-6)
    with pytest.raises(ValueError, match="temperature"):
        Temperature(0.0)


def test_tta_and_ensembles_are_calibrated_as_a_whole(tmp_path):
    """The temperature applies to the views' (and members') average, not to each view before it."""
    model = position_model()
    run = finetune.load_run(write_run(tmp_path / "run", with_temperature(model, 3.0)))
    image = photo(0, (16, 16))
    flipped = image[:, ::-1]
    raw_views = model.predict(np.stack([image, flipped]).astype(np.float32), verbose=0)
    expected = apply_temperature(raw_views.mean(axis=0, keepdims=True), 3.0)[0]
    got = finetune.inference.predict_arrays(run, [image], tta="flip", top_k=3)[0].probabilities
    np.testing.assert_allclose(got, expected, atol=1e-5)
    other = position_model(seed=1)
    ensemble = build_ensemble([model, other], temperature=0.5)
    images = np.stack([image]).astype(np.float32)
    members = (model.predict(images, verbose=0) + other.predict(images, verbose=0)) / 2
    np.testing.assert_allclose(ensemble.predict(images, verbose=0), apply_temperature(members, 0.5), atol=1e-5)


def test_reliability_diagram_is_written(tmp_path):
    probabilities, labels = overconfident(2.0, count=300)
    plot_reliability({"held out": (probabilities, labels), "test": (probabilities, labels)}, 1.8, tmp_path / "c.png")
    from PIL import Image

    with Image.open(tmp_path / "c.png") as picture:
        assert picture.size[0] > picture.size[1] > 200


def test_a_run_records_its_temperature_and_threshold_and_predict_says_unknown(tmp_path, capsys):
    from finetune.cli import main

    run = write_run(tmp_path / "run", position_model(), unknown={"threshold": 0.99, "score": "max_probability"})
    (tmp_path / "img").mkdir()
    from PIL import Image

    Image.fromarray(photo(0, (16, 16))).save(tmp_path / "img" / "a.png")
    assert main(["predict", str(run), str(tmp_path / "img"), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)[0]
    assert result["unknown"] and result["answer"].startswith(f"unknown (closest: {result['predictions'][0]['label']}")
    assert main(["predict", str(run), str(tmp_path / "img"), "--unknown", "off"]) == 0
    assert "unknown" not in capsys.readouterr().out
    assert main(["predict", str(run), str(tmp_path / "img"), "--unknown", "1.5"]) == 2
    assert "off, auto" in capsys.readouterr().err
    assert set(LABELS) >= {result["predictions"][0]["label"]}


def test_a_calibrated_run_exports_with_parity_and_the_temperature_after_tta(tmp_path):
    from finetune.export.writer import export_ensemble

    model = position_model()
    run_dir = write_run(tmp_path / "run", with_temperature(model, 2.5), unknown={"threshold": 0.4})
    sidecar = export_ensemble([run_dir], tmp_path / "export", members="best", tta="flip")
    assert sidecar["parity"]["passed"] and sidecar["unknown"] == {"threshold": 0.4}
    images = np.stack([photo(seed, (16, 16)) for seed in range(3)])
    exported = finetune.load_run(tmp_path / "export")
    got = np.stack([item.probabilities for item in finetune.inference.predict_arrays(exported, images)])
    views = [model.predict(batch.astype(np.float32), verbose=0) for batch in (images, images[:, :, ::-1])]
    np.testing.assert_allclose(got, apply_temperature(np.mean(views, axis=0), 2.5), atol=1e-5)
    assert exported.config["unknown"] == {"threshold": 0.4}
