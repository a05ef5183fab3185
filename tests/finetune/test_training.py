"""Training on tiny generated folders with tiny backbones (weights=None, alpha=0.35, 48 px)."""

import json
import os
from pathlib import Path

import keras
import numpy as np
import pytest

import finetune
from finetune.errors import FinetuneError
from finetune.freezing import unfreeze_top_groups
from finetune.model import build_classifier
from finetune.temperature import model_temperature
from finetune.zoo import build_backbone, get_spec, layers_of_group
from tests.conftest import write_image_folder

TINY = dict(backbone="mobilenet_v2", weights="none", alpha=0.35, image_size=48, batch_size=8, verbose=0, tta="none")


def _batch_norm_statistics(model):
    return {
        weight.path: np.array(weight)
        for layer in model._flatten_layers()
        if isinstance(layer, keras.layers.BatchNormalization)
        for weight in (layer.moving_mean, layer.moving_variance)
    }


def test_finetuning_keeps_batch_norm_statistics_and_trains_only_the_top_groups():
    spec = get_spec("mobilenet_v2")
    backbone = build_backbone(spec, image_size=48, weights="none", alpha=0.35)
    model = build_classifier(backbone, spec.preprocessing, 3, 48)
    unfrozen = unfreeze_top_groups(backbone, spec, 1)
    assert unfrozen and all(not layer.trainable for layer in layers_of_group(backbone, spec, 1))
    statistics_before = _batch_norm_statistics(model)
    weights_before = {weight.path: np.array(weight) for weight in model.weights}
    model.compile(keras.optimizers.Adam(1e-2), "sparse_categorical_crossentropy")
    rng = np.random.default_rng(0)
    model.fit(rng.uniform(0, 255, (16, 48, 48, 3)), rng.integers(0, 3, 16), epochs=2, batch_size=8, verbose=0)
    statistics_after = _batch_norm_statistics(model)
    for path, value in statistics_before.items():
        np.testing.assert_array_equal(value, statistics_after[path], err_msg=path)
    top_layers = {layer.name for layer in layers_of_group(backbone, spec, 0)}
    changed = {path for path, value in weights_before.items()
               if not np.array_equal(value, np.array(next(w for w in model.weights if w.path == path)))}
    changed_backbone_layers = {path.split("/")[-2] for path in changed if "classifier/" not in path}
    assert changed_backbone_layers and changed_backbone_layers <= top_layers
    assert any(path.startswith("classifier/") for path in changed)


def test_train_writes_a_complete_run_directory(tmp_path, monkeypatch):
    from finetune import finish
    from finetune.data import discover, load_split

    images = np.random.default_rng(0).uniform(0, 255, (4, 48, 48, 3)).astype("float32")
    before_saving = []
    save_model_atomic = finish.save_model_atomic

    def predicting_then_saving(model, path):  # what the model in memory answers, just before it is written
        before_saving.append(model.predict(images, verbose=0))
        save_model_atomic(model, path)

    monkeypatch.setattr(finish, "save_model_atomic", predicting_then_saving)
    data = write_image_folder(tmp_path / "data", classes=("a", "b", "c"), per_class=8)
    (data / "a" / "broken.jpg").write_bytes(b"not an image")
    run = finetune.train(data, out=str(tmp_path / "run"), epochs=1, strategy="finetune_top", **TINY)
    names = {path.name for path in run.directory.iterdir()}
    assert {"model.keras", "labels.json", "config.json", "metrics.json", "skipped.json", "history.csv",
            "confusion.png"} <= names
    assert "confusion_plot_error" not in run.metrics and (run.directory / "confusion.png").stat().st_size > 0
    assert run.labels == ["a", "b", "c"]
    config = json.loads((run.directory / "config.json").read_text())
    assert config["seed"] == 0 and config["versions"]["keras"] == keras.__version__
    assert config["model"]["backbone"] == "mobilenet_v2" and config["image_size"] == 48
    skipped = json.loads((run.directory / "skipped.json").read_text())
    assert [item["path"].endswith("broken.jpg") for item in skipped] == [True]
    metrics = run.metrics
    # Three colours with stripes: easily told apart, so well above chance (1/3) even from a random backbone.
    assert metrics["val_accuracy"] >= 0.8
    assert np.array(metrics["val"]["confusion_matrix"]).shape == (3, 3)
    assert set(metrics["val"]["per_class"]) == {"a", "b", "c"}
    assert metrics["stages"]["finetune"]["epochs_run"] == 1
    assert config["strategy"] == "finetune_top" and (run.directory / "policy.json").is_file()
    assert config["recipe"]["augment"] == "none" and config["recipe"]["label_smoothing"] == config["label_smoothing"]
    reloaded = keras.saving.load_model(run.directory / "model.keras", safe_mode=True)
    assert len(before_saving) == 1
    np.testing.assert_allclose(reloaded.predict(images, verbose=0), before_saving[0], atol=1e-6)
    # The validation figures were measured on the model in memory: the saved one gives them again.
    split = load_split(discover(str(data), 0.2, 0), "val", 48, cache=False, verbose=0)
    predicted = reloaded.predict(split.images.astype("float32"), verbose=0).argmax(1)
    confusion = np.zeros((3, 3), int)
    np.add.at(confusion, (split.labels, predicted), 1)
    assert confusion.tolist() == metrics["val"]["confusion_matrix"]
    # Calibrated on images the kept model did not fit (the validation split, or out-of-fold predictions when a
    # linear head fit on every image was kept); the temperature is inside model.keras.
    calibration = metrics["calibration"]
    held_out = "validation images" if metrics["val"]["held_out"] else "out-of-fold"
    assert calibration["fit_on"].startswith(held_out) and "calibration.png" in names
    assert model_temperature(reloaded) == (None if calibration["temperature"] == 1.0 else calibration["temperature"])
    assert calibration["held_out"]["log_loss_after"] <= calibration["held_out"]["log_loss_before"]
    assert config["unknown"]["threshold"] == metrics["unknown"]["threshold"] and metrics["unknown"]["keep"] == 0.95


@pytest.mark.slow  # two finetuning runs: about 55 s on 2 CPUs
def test_finetuning_with_augmentation_is_deterministic_for_a_seed_without_shared_caches(tmp_path, monkeypatch):
    """Same seed, same data, each run in a fresh FINETUNE_HOME: the same augmented epochs and the same model."""
    data = write_image_folder(tmp_path / "data", classes=("a", "b"), per_class=6)
    options = {**TINY, "image_size": 32, "strategy": "finetune_top", "epochs": 2, "warmup_epochs": 0,
               "augment": "standard", "linear_fit_on_val": False}
    images = np.random.default_rng(1).uniform(0, 255, (4, 32, 32, 3)).astype("float32")
    runs = []
    for name in ("one", "two"):
        monkeypatch.setenv("FINETUNE_HOME", str(tmp_path / f"home-{name}"))  # no image or feature cache shared
        runs.append(finetune.train(data, out=str(tmp_path / name), **options))
    first, second = runs
    assert all(list((tmp_path / f"home-{name}" / "features").iterdir()) for name in ("one", "two"))  # each computed its own
    assert first.metrics["augment"]["preset"] == "standard"
    # The training losses of the augmented epochs, and everything else of the two histories, to the last digit.
    assert (first.directory / "history.csv").read_text() == (second.directory / "history.csv").read_text()
    assert first.metrics["stages"] == second.metrics["stages"]
    np.testing.assert_allclose(first.model.predict(images, verbose=0), second.model.predict(images, verbose=0),
                               atol=1e-6)


def test_imbalanced_classes_get_recorded_class_weights(tmp_path):
    data = write_image_folder(tmp_path / "data", classes=("many",), per_class=12)
    write_image_folder(data, classes=("few",), per_class=4, seed=1)
    run = finetune.train(data, out=str(tmp_path / "run"), epochs=0, **TINY)
    weights = run.config["class_weights"]
    assert weights["few"] > weights["many"]
    assert run.metrics["class_weights"] == weights


def test_unknown_option_and_bad_values_are_clear_errors(tmp_path, image_folder):
    with pytest.raises(FinetuneError, match="Unknown training option `epoch`"):
        finetune.train(image_folder, epoch=3)
    with pytest.raises(FinetuneError, match="epochs=-1"):
        finetune.train(image_folder, epochs=-1, out=str(tmp_path / "run"))


def test_snapshots_tta_and_curves_are_recorded(tmp_path):
    data = write_image_folder(tmp_path / "data", classes=("a", "b"), per_class=8)
    # linear_fit_on_val off: should the linear rival replace the finetuned model on these 8 images,
    # its head stays fit on the training split, and TTA is still measured on unseen images.
    options = {**TINY, "tta": "auto", "linear_fit_on_val": False}
    run = finetune.train(data, out=str(tmp_path / "run"), strategy="finetune_top", epochs=2, snapshots=2,
                         warmup_epochs=0, augment="light", **options)
    snapshots = sorted(path.name for path in (run.directory / "snapshots").iterdir())
    assert snapshots == ["snapshot_01.keras", "snapshot_02.keras"]
    assert len(run.metrics["snapshots"]["val"]["members"]) == 2
    assert "accuracy" in run.metrics["snapshots"]["val"]["ensemble"]
    assert run.metrics["stages"]["finetune"]["schedule"] == "snapshot"
    assert run.config["tta"] == run.metrics["tta"]["mode"] in run.metrics["tta"]["val_accuracy"]
    assert (run.directory / "curves.png").stat().st_size > 0
    assert run.metrics["diagnosis"]["verdict"]
    assert run.metrics["augment"]["preset"] == "light"


@pytest.mark.slow
@pytest.mark.parametrize("rival_accuracy, replaced", [(2.0, True), (-1.0, False)])
def test_finetuning_that_loses_to_the_best_linear_head_keeps_the_linear_head(tmp_path, monkeypatch, rival_accuracy, replaced):
    from finetune import pipeline

    scored = []

    def rival(candidate, features, **options):
        endpoints = features.search.endpoints
        result = {"name": candidate.name, "stages": [endpoints[i] for i in candidate.stages], "val_accuracy": rival_accuracy}
        scored.append(result)
        return result

    monkeypatch.setattr(pipeline, "linear_rival", rival)
    data = write_image_folder(tmp_path / "data", classes=("a", "b"), per_class=8)
    run = finetune.train(data, out=str(tmp_path / "run"), epochs=1, strategy="finetune_top", **TINY)
    finetuned = run.metrics["stages"]["finetune"]
    assert finetuned["linear_rival"] == scored[0]
    assert ("multistage" in run.metrics["stages"]) is replaced and finetuned.get("replaced_by") == ("multistage_linear" if replaced else None)
    if replaced:
        assert finetuned["kept"] is False and run.metrics["val"]["held_out"] is False
        assert run.metrics["stages"]["head"]["stages"] == run.metrics["stages"]["multistage"]["chosen_stages"]
        # The head kept is the one that won the comparison.
        assert run.metrics["stages"]["head"]["stages"] == scored[0]["stages"]
        reloaded = keras.saving.load_model(run.directory / "model.keras", safe_mode=True)
        images = np.random.default_rng(0).uniform(0, 255, (2, 48, 48, 3)).astype("float32")
        np.testing.assert_allclose(reloaded.predict(images, verbose=0), run.model.predict(images, verbose=0), atol=1e-6)


def test_finetuning_options_with_a_linear_strategy_stop_at_once_naming_the_conflict(tmp_path):
    data = write_image_folder(tmp_path / "data", classes=("a", "b"), per_class=4)
    out = tmp_path / "run"
    for options in ({"snapshots": 3}, {"augment": "light"}, {"unfreeze_groups": 2}, {"schedule": "step"},
                    {"epochs": 3}):
        with pytest.raises(FinetuneError, match=r"only apply to finetuning.*--strategy finetune_top.*strategy='linear'"):
            finetune.train(data, out=str(out), strategy="linear", **options, **TINY)
        assert not out.exists()  # refused before any work
    with pytest.raises(FinetuneError, match="--strategy finetune_most"):
        finetune.train(data, out=str(out), strategy="multistage_linear", augment_options={"mixup": 0.2}, **TINY)
    with pytest.raises(FinetuneError, match="epochs is 0"):
        finetune.train(data, out=str(out), strategy="finetune_top", epochs=0, snapshots=2, **TINY)
    with pytest.raises(FinetuneError, match="snapshots=1"):
        finetune.train(data, out=str(out), strategy="finetune_top", snapshots=1, **TINY)


@pytest.mark.slow
def test_auto_asked_for_snapshots_finetunes_them_and_says_why(tmp_path):
    data = write_image_folder(tmp_path / "data", classes=("a", "b"), per_class=8)
    run = finetune.train(data, out=str(tmp_path / "run"), strategy="auto", epochs=2, snapshots=2, warmup_epochs=0, **TINY)
    policy = json.loads((run.directory / "policy.json").read_text())
    assert policy["strategy"] in ("linear", "multistage_linear")  # 8 images per class: the policy's own pick
    assert run.config["strategy"] == policy["used"] == {"linear": "finetune_top", "multistage_linear": "finetune_most"}[policy["strategy"]]
    assert policy["switched_for"] == ["epochs=2", "snapshots=2"]
    assert "epochs=2, snapshots=2 asked for finetuning" in policy["reasons"][-1]
    assert sorted(path.name for path in (run.directory / "snapshots").iterdir()) == ["snapshot_01.keras", "snapshot_02.keras"]


def test_a_large_validation_split_stays_held_out_and_tta_is_chosen_only_on_unseen_images(tmp_path):
    data = write_image_folder(tmp_path / "data", classes=("a", "b"), per_class=10)  # 2 validation images per class
    options = {**TINY, "tta": "auto", "strategy": "linear"}
    small = finetune.train(data, out=str(tmp_path / "small"), **options)
    assert small.metrics["val"]["held_out"] is False and small.metrics["stages"]["head"]["fit_on"] == "train+val"
    assert small.metrics["tta"]["mode"] == "none" and "not measured" in small.metrics["tta"]["chosen_by"]
    assert small.metrics["cv_images"] == 20 and small.metrics["cv_folds"] >= 2
    # A head fit on every labelled image is calibrated on the stage search's out-of-fold predictions.
    assert small.metrics["calibration"]["fit_on"].startswith("out-of-fold")
    assert small.metrics["calibration"]["held_out"]["images"] == 20
    large = finetune.train(data, out=str(tmp_path / "large"), held_out_val_per_class=2, tta_max_per_class=1, **options)
    assert large.metrics["val"]["held_out"] is True and large.metrics["stages"]["head"]["fit_on"] == "train"
    assert large.metrics["tta"]["chosen_by"].startswith("validation accuracy")
    assert large.metrics["tta"]["images"] == 2  # one validation image per class: the measurement's cost is bounded
    assert set(large.metrics["tta"]["val_accuracy"]) >= {"none", "flip", "ten_crop"}
    assert large.metrics["calibration"]["fit_on"].startswith("validation images")
    if large.metrics["tta"]["mode"] != "none":  # calibrated as a whole: on the chosen mode's predictions
        assert f"TTA {large.metrics['tta']['mode']}" in large.metrics["calibration"]["fit_on"]


def test_bad_augmentation_or_tta_values_are_the_apis_own_error_before_any_work(tmp_path):
    data = write_image_folder(tmp_path / "data", classes=("a", "b"), per_class=4)
    out = tmp_path / "run"
    with pytest.raises(FinetuneError, match="preset 'medium'"):
        finetune.train(data, out=str(out), strategy="finetune_top", augment="medium", **TINY)
    with pytest.raises(FinetuneError, match="rotation"):
        finetune.train(data, out=str(out), strategy="finetune_top", augment_options={"rotation": 500.0}, **TINY)
    with pytest.raises(FinetuneError, match="tta='sideways'"):
        finetune.train(data, out=str(out), **{**TINY, "tta": "sideways"})
    assert not out.exists()
    # An option that changes nothing is no request for finetuning: a linear run goes ahead.
    run = finetune.train(data, out=str(out), strategy="linear", augment_options={"mixup": 0.0}, **TINY)
    assert run.config["strategy"] == "linear"


def test_the_recipe_augments_by_the_size_of_the_smallest_class():
    from finetune.config import TrainConfig
    from finetune.recipe import finetuning_recipe

    config = TrainConfig()  # augment auto: light from 100 images in the smallest class
    plenty = finetuning_recipe(config, np.repeat([0, 1, 2], [100, 120, 300]), 3)
    assert plenty.augment == "light" and "smallest class has 100 training images" in plenty.reasons[0]
    little = finetuning_recipe(config, np.repeat([0, 1, 2], [99, 500, 500]), 3)
    assert little.augment == "none" and "fewer than 100" in little.reasons[0]
    config.augment = "strong"
    assert finetuning_recipe(config, np.repeat([0, 1], [5, 5]), 2).augment == "strong"
    assert (little.label_smoothing, little.weight_decay) == (TrainConfig.label_smoothing, TrainConfig.weight_decay)


def test_finetuning_trains_with_label_smoothing_decoupled_weight_decay_and_a_slower_backbone(tmp_path, monkeypatch):
    from finetune.config import TrainConfig
    from finetune.data import discover, load_split
    from finetune.training import run_stages

    data = discover(str(write_image_folder(tmp_path / "data", classes=("a", "b"), per_class=6)), val_fraction=0.34)
    train, val = (load_split(data, name, 48, cache=False, verbose=0) for name in ("train", "val"))
    spec = get_spec("mobilenet_v2")
    backbone = build_backbone(spec, image_size=48, weights="none", alpha=0.35)
    model = build_classifier(backbone, spec.preprocessing, 2, 48)
    config = TrainConfig(epochs=1, warmup_epochs=0, batch_size=4, verbose=0, label_smoothing=0.2, weight_decay=0.05)
    assert config.model.weights == "imagenet" and config.backbone_learning_rate_multiplier == 0.1  # pretrained rules
    (tmp_path / "run").mkdir()
    replaced = []
    replace = os.replace
    monkeypatch.setattr(os, "replace", lambda source, target: (replaced.append(Path(target).name), replace(source, target)))
    result = run_stages(model, backbone, spec, 1, config=config, train_split=train, val_split=val,
                        run_dir=tmp_path / "run", head_accuracy=None)
    monkeypatch.undo()
    assert "history.csv" in replaced  # written whole through a rename, never appended to in place
    # The pretrained backbone learns at 1/10 of the head's rate (finetune.optimizers shows what the factor does).
    optimizer = model.optimizer
    convolutions = [weight for layer in layers_of_group(backbone, spec, 0) if isinstance(layer, keras.layers.Conv2D)
                    for weight in layer.weights]  # BatchNorm stays frozen under pretrained weights
    assert convolutions and [optimizer.learning_rate_multiplier(weight) for weight in convolutions] == [0.1] * len(convolutions)
    classifier = model.get_layer("classifier")
    assert [optimizer.learning_rate_multiplier(weight) for weight in classifier.weights] == [1.0, 1.0]
    assert result["recipe"]["label_smoothing"] == 0.2 and result["recipe"]["weight_decay"] == 0.05
    assert model.loss.get_config()["label_smoothing"] == pytest.approx(0.2)
    assert model.optimizer.weight_decay == pytest.approx(0.05)
    # Biases and BatchNorm are not decayed; kernels are.
    kernel = model.get_layer("classifier").kernel
    bias = model.get_layer("classifier").bias
    assert model.optimizer._use_weight_decay(kernel) and not model.optimizer._use_weight_decay(bias)


def test_regularisation_options_with_a_linear_strategy_are_a_conflict(tmp_path):
    data = write_image_folder(tmp_path / "data", classes=("a", "b"), per_class=4)
    out = tmp_path / "run"
    for options, named in (({"label_smoothing": 0.0}, "label_smoothing=0.0"), ({"weight_decay": 0.1}, "weight_decay=0.1"),
                           ({"dropout": 0.5}, "dropout=0.5")):
        with pytest.raises(FinetuneError, match=f"{named} only apply to finetuning"):
            finetune.train(data, out=str(out), strategy="linear", **options, **TINY)
    with pytest.raises(FinetuneError, match="label_smoothing"):
        finetune.train(data, out=str(out), strategy="finetune_top", label_smoothing=1.0, **TINY)
    assert not out.exists()
