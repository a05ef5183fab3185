"""Babysitting checks and the reading of training curves."""

import math

import keras
import numpy as np
import pytest

from finetune.cli import main
from finetune.config import DataConfig, ModelConfig
from finetune.curves import diagnose_curves, plot_curves, read_history
from finetune.diagnostics import (
    ModelRecipe,
    _subset,
    check_initial_loss,
    check_overfit_subset,
    format_checks,
    learning_rate_range_test,
    run_checks,
)
from finetune.errors import FinetuneError
from tests.conftest import class_image, write_image_folder

TINY = ["--backbone", "mobilenet_v2", "--weights", "none", "--alpha", "0.35", "--image-size", "32", "--batch-size", "8"]


def constant_model(probabilities):
    """A model that gives the same probabilities for every image."""
    inputs = keras.Input((4, 4, 3))
    zeros = keras.layers.Lambda(lambda x: keras.ops.zeros_like(x[:, 0, 0, :1]))(inputs)
    logits = keras.layers.Dense(len(probabilities), kernel_initializer="zeros", bias_initializer=keras.initializers.Constant(np.log(probabilities)))(zeros)
    return keras.Model(inputs, keras.layers.Softmax()(logits))


def tiny_images(labels):
    return np.stack([class_image(int(label), index, size=32) for index, label in enumerate(labels)]).astype(np.float32)


# -- initial loss --------------------------------------------------------------------------


def test_initial_loss_of_an_even_classifier_is_ln_c():
    labels = np.array([0, 1, 2, 3] * 3)
    result = check_initial_loss(constant_model([0.25] * 4), np.zeros((12, 4, 4, 3)), labels, 4, small_head=False)
    assert result.passed and result.details["loss"] == pytest.approx(math.log(4), rel=1e-5)
    assert "-ln(1/4) = 1.386" in result.summary


def test_initial_loss_of_a_confidently_wrong_classifier_fails_with_the_reason():
    labels = np.array([1, 2, 3] * 4)
    result = check_initial_loss(constant_model([0.97, 0.01, 0.01, 0.01]), np.zeros((12, 4, 4, 3)), labels, 4, small_head=False)
    assert not result.passed and result.details["loss"] == pytest.approx(-math.log(0.01), rel=1e-4)
    assert "initial logits are large" in result.explanation


def test_initial_loss_reinitialises_the_head_small_and_reports_the_default(recipe):
    model = recipe.build()
    classifier = model.get_layer("classifier")
    kernel, bias = classifier.get_weights()
    classifier.set_weights([kernel * 50, bias])  # a head that starts with huge logits
    labels = np.array([0, 1] * 6)
    result = check_initial_loss(model, tiny_images(labels), labels, 2)
    assert result.passed and result.details["loss"] == pytest.approx(math.log(2), rel=0.01)
    assert result.details["default_head_loss"] > 1.25 * math.log(2)
    assert "default head initialisation" in result.summary and "plateau" in result.explanation


def test_subset_takes_the_classes_in_turn():
    labels = np.array([0] * 30 + [1] * 5 + [2] * 30)
    chosen = _subset(labels, 20, seed=0)
    assert len(chosen) == 20 and len(set(chosen)) == 20
    assert np.bincount(labels[chosen]).tolist() == [8, 5, 7]


# -- training checks on a tiny MobileNetV2 -------------------------------------------------


class ToyRecipe:
    """A small trainable conv net: the checks only need `build(seed_offset)`; MobileNetV2 runs in the CLI test."""

    def build(self, seed_offset=0):
        from finetune.model import build_classifier

        keras.utils.set_random_seed(seed_offset)
        inputs = keras.Input((32, 32, 3))
        features = keras.layers.Conv2D(8, 3, strides=2, activation="relu")(inputs)
        features = keras.layers.Conv2D(16, 3, strides=2, activation="relu")(features)
        return build_classifier(keras.Model(inputs, features), "tf", 2, 32, dropout=0.0)


@pytest.fixture(scope="module")
def recipe():
    return ToyRecipe()


def test_overfit_subset_passes_on_learnable_images(recipe):
    labels = np.array([0, 1] * 5)
    result = check_overfit_subset(recipe, tiny_images(labels), labels, count=10, max_epochs=30, learning_rate=3e-3)
    assert result.passed, result.summary
    assert result.details["accuracy"] == 1.0 and result.details["images"] == 10


def test_overfit_subset_fails_on_random_labels_with_advice(recipe):
    rng = np.random.default_rng(0)
    labels = np.array([0, 1] * 5)
    noise = rng.uniform(0, 255, (10, 32, 32, 3)).astype(np.float32)
    result = check_overfit_subset(recipe, noise, labels, count=10, max_epochs=1, learning_rate=1e-6)
    assert not result.passed and "could not be learnt" in result.explanation


def test_learning_rate_range_test_suggests_a_rate_and_plots(recipe, tmp_path):
    labels = np.array([0, 1] * 16)
    result = learning_rate_range_test(recipe, tiny_images(labels), labels, batch_size=8, steps=40, out_png=tmp_path / "range.png")
    rates = result.details["rates"]
    assert rates[0] == pytest.approx(1e-7) and all(b > a for a, b in zip(rates, rates[1:]))
    assert result.details["suggested_learning_rate"] == pytest.approx(result.details["lowest_loss_learning_rate"] / 10)
    assert (tmp_path / "range.png").read_bytes()[:4] == b"\x89PNG"
    assert "suggested learning rate" in format_checks([result])


@pytest.mark.slow
def test_cli_check_prints_each_check(tmp_path, capsys):
    data = write_image_folder(tmp_path / "data", classes=("cat", "dog"), per_class=12, size=32)
    code = main(["check", str(data), *TINY, "--subset-size", "10", "--range-steps", "8", "--overfit-epochs", "10", "--out", str(tmp_path / "check")])
    printed = capsys.readouterr().out
    assert code in (0, 1)
    for name in ("initial_loss", "overfit_subset", "learning_rate_range"):
        assert name in printed
    assert printed.count("[PASS]") + printed.count("[FAIL]") == 3
    assert "10 images: training accuracy" in printed  # --subset-size reached the check
    assert (tmp_path / "check" / "lr_range.png").is_file()


def test_run_checks_without_data_is_a_clear_error():
    with pytest.raises(FinetuneError, match="Received: data.source=''"):
        run_checks(DataConfig(), ModelConfig("mobilenet_v2", weights="none", alpha=0.35))


def test_model_recipe_builds_the_configured_backbone_without_dropout():
    recipe = ModelRecipe(ModelConfig("mobilenet_v2", weights="none", alpha=0.35, dropout=0.5), image_size=32, num_classes=3)
    model = recipe.build()
    assert model.output.shape == (None, 3) and model.input.shape == (None, 32, 32, 3)
    assert model.get_layer("dropout").rate == 0.0
    # From scratch, every layer of the backbone learns (not only the top groups).
    backbone = next(layer for layer in model.layers if hasattr(layer, "layers"))
    assert backbone.trainable and all(layer.trainable for layer in backbone.layers)


def test_cli_check_of_a_missing_folder_is_a_clear_error(tmp_path, capsys):
    assert main(["check", str(tmp_path / "nope"), *TINY]) == 2
    assert "error:" in capsys.readouterr().err


# -- curves --------------------------------------------------------------------------------


def history(loss, val_loss=None, accuracy=None, val_accuracy=None):
    values = {"loss": loss}
    for key, series in (("val_loss", val_loss), ("accuracy", accuracy), ("val_accuracy", val_accuracy)):
        if series is not None:
            values[key] = series
    return values


@pytest.mark.parametrize(
    "values, verdict",
    [
        (history([0.5]), "no_history"),
        (history([0.5, 0.4, float("nan")]), "learning_rate_too_high"),
        (history([0.5, 0.9, 2.0, 3.0]), "learning_rate_too_high"),
        (history([2.3, 2.29, 2.29, 2.28, 1.2, 0.6, 0.4, 0.35, 0.3]), "bad_initialisation"),
        (history([2.3, 2.2, 2.1, 2.0, 1.9, 1.8, 1.7, 1.6], accuracy=[0.3] * 8), "learning_rate_too_low"),
        (
            history([1.0, 0.5, 0.3, 0.2, 0.1, 0.05], [1.0, 0.6, 0.5, 0.55, 0.65, 0.8], [0.6, 0.8, 0.9, 0.95, 0.98, 1.0], [0.6, 0.75, 0.8, 0.8, 0.78, 0.76]),
            "overfitting",
        ),
        (history([1.1, 1.0, 0.98, 0.97, 0.97], [1.1, 1.05, 1.04, 1.04, 1.04], [0.4, 0.45, 0.47, 0.48, 0.48], [0.4, 0.44, 0.45, 0.45, 0.45]), "underfitting"),
        (history([1.0, 0.4, 0.25, 0.2, 0.18, 0.17], [1.0, 0.45, 0.3, 0.26, 0.25, 0.25], [0.6, 0.88, 0.93, 0.95, 0.95, 0.96], [0.6, 0.85, 0.9, 0.92, 0.92, 0.92]), "healthy"),
    ],
)
def test_diagnose_curves(values, verdict):
    result = diagnose_curves(values)
    assert result["verdict"] == verdict, result
    assert result["explanation"]


def test_overfitting_advice_names_augmentation_or_regularisation():
    values = history([1.0, 0.5, 0.3, 0.2, 0.1], [1.0, 0.6, 0.5, 0.7, 0.9])
    assert "augmentation" in diagnose_curves(values)["explanation"]


def test_plot_curves_from_a_csv_and_a_dict(tmp_path):
    csv_path = tmp_path / "history.csv"
    csv_path.write_text(
        "epoch,accuracy,learning_rate,loss,update_ratio_classifier,val_accuracy,val_loss\n"
        "0,0.6,0.001,1.0,0.002,0.55,1.1\n1,0.8,0.0005,0.5,0.001,0.75,0.6\n2,0.9,0.0001,0.3,0.0002,0.85,0.4\n"
    )
    assert read_history(csv_path)["learning_rate"] == [0.001, 0.0005, 0.0001]
    for source, name in ((csv_path, "from_csv.png"), (read_history(csv_path), "from_dict.png")):
        path = plot_curves(source, tmp_path / name)
        assert path.read_bytes()[:4] == b"\x89PNG"
    assert not list(tmp_path.glob(".tmp*"))
