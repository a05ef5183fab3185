"""Ensembles as one graph, and exports that match them: each format, parity, load_run, the CLI.

Runs are written by hand with a tiny conv backbone (16 px) so every export takes a second or two;
the export code does not depend on the backbone.
"""

import json

import keras
import numpy as np
import pytest

from finetune.calibration import apply_temperature
from finetune.cli import main
from finetune.ensemble import build_ensemble, evaluate_members, load_members, snapshot_paths
from finetune.errors import USER_ERRORS, FinetuneError
from finetune.export import reader as export_reader
from finetune.export import writer as export_module
from finetune.export.writer import export_ensemble, resolve_members
from finetune.files import atomic_write_json, save_model_atomic
from finetune.inference import evaluate, predict
from finetune.model import build_classifier
from finetune.run import load_run
from tests.conftest import write_image_folder

SIZE = 16
LABELS = ["cat", "dog"]


def toy_classifier(seed, num_classes=2, size=SIZE):
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((size, size, 3))
    # Fixed constants like the torchvision MobileNetV2's padding shift: Keras' own ONNX export loses them.
    shifted = keras.layers.Normalization(mean=[0.1, -0.2, 0.3], variance=[1.0, 1.0, 1.0], name="shift")(inputs)
    features = keras.layers.Conv2D(4, 3, strides=2, name="conv")(shifted)
    features = keras.layers.BatchNormalization(name="bn")(features)
    backbone = keras.Model(inputs, keras.layers.ReLU(name="relu")(features), name="toy_backbone")
    model = build_classifier(backbone, "tf", num_classes, size)
    # Sharper outputs than at initialisation, so parity compares probabilities that are not all 1/C.
    classifier = model.get_layer("classifier")
    kernel, bias = classifier.get_weights()
    classifier.set_weights([kernel * 20, bias])
    return model


def write_run(directory, seeds, data_dir, labels=LABELS, size=SIZE, snapshots=True):
    directory.mkdir(parents=True)
    models = [toy_classifier(seed, len(labels), size) for seed in seeds]
    if snapshots:
        for index, model in enumerate(models, start=1):
            save_model_atomic(model, directory / "snapshots" / f"snapshot_{index:02d}.keras")
    save_model_atomic(models[-1], directory / "model.keras")
    atomic_write_json(directory / "labels.json", labels)
    atomic_write_json(
        directory / "config.json",
        {"image_size": size, "seed": 0, "data": {"source": str(data_dir), "val_fraction": 0.2}},
    )
    atomic_write_json(directory / "metrics.json", {"val_accuracy": 0.5})
    return directory


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("ensemble")
    data = write_image_folder(root / "data", classes=LABELS, per_class=6)
    test = write_image_folder(root / "test", classes=LABELS, per_class=3, seed=7)
    first = write_run(root / "run_a", [1, 2, 3], data)
    second = write_run(root / "run_b", [4], data, snapshots=False)
    return {"root": root, "data": data, "test": test, "a": first, "b": second}


def images(count=5, seed=0):
    return np.random.default_rng(seed).uniform(0, 255, (count, SIZE, SIZE, 3)).astype("float32")


# -- build_ensemble and evaluate_members ---------------------------------------------------


def test_ensemble_averages_member_probabilities_and_members_may_share_a_name():
    members = [toy_classifier(seed) for seed in (1, 2, 3)]
    assert {member.name for member in members} == {"classifier_model"}
    ensemble = build_ensemble(members)
    x = images()
    expected = np.mean([member.predict(x, verbose=0) for member in members], axis=0)
    np.testing.assert_allclose(ensemble.predict(x, verbose=0), expected, atol=1e-6)
    assert [layer.name for layer in ensemble.layers if layer.name.startswith("member_")] == ["member_0", "member_1", "member_2"]


def test_ensemble_round_trip_in_safe_mode(tmp_path):
    ensemble = build_ensemble([toy_classifier(seed) for seed in (1, 2)])
    save_model_atomic(ensemble, tmp_path / "ensemble.keras")
    loaded = load_members([tmp_path / "ensemble.keras"])[0]  # safe_mode=True
    np.testing.assert_array_equal(loaded.predict(images(), verbose=0), ensemble.predict(images(), verbose=0))


def test_ensemble_of_one_is_that_model():
    member = toy_classifier(1)
    np.testing.assert_allclose(build_ensemble([member]).predict(images(), verbose=0), member.predict(images(), verbose=0))


def test_ensemble_members_must_agree():
    with pytest.raises(FinetuneError, match="same number of classes"):
        build_ensemble([toy_classifier(1, num_classes=2), toy_classifier(2, num_classes=3)])
    with pytest.raises(FinetuneError, match="at least one model"):
        build_ensemble([])


def test_tta_none_is_a_no_op_and_an_unknown_mode_is_a_clear_error():
    member = toy_classifier(1)
    assert build_ensemble([member], tta="none").count_params() == member.count_params()
    with pytest.raises(USER_ERRORS, match="tta='no-such-mode'"):
        build_ensemble([member], tta="no-such-mode")


def test_tta_wraps_the_whole_ensemble():
    from augment.tta import build_tta_model

    members = [toy_classifier(seed) for seed in (1, 2)]
    ensemble = build_ensemble(members, tta="flip")
    x = images()
    expected = build_tta_model(build_ensemble(members), "flip").predict(x, verbose=0)
    np.testing.assert_allclose(ensemble.predict(x, verbose=0), expected, atol=1e-6)


def test_evaluate_members_by_hand():
    labels = np.array([0, 1, 1, 0])
    probabilities = np.array(
        [
            [[0.9, 0.1], [0.4, 0.6], [0.6, 0.4], [0.6, 0.4]],  # right, right, wrong, right
            [[0.6, 0.4], [0.7, 0.3], [0.2, 0.8], [0.3, 0.7]],  # right, wrong, right, wrong
        ]
    )
    result = evaluate_members(None, None, labels, probabilities=probabilities)
    assert [member["accuracy"] for member in result["members"]] == [0.75, 0.5]
    # Average: [0.75, 0.25] right, [0.55, 0.45] wrong, [0.4, 0.6] right, [0.45, 0.55] wrong.
    assert result["ensemble"]["accuracy"] == 0.5
    assert result["cumulative_accuracy"] == [0.75, 0.5]
    assert result["gain_over_mean"] == pytest.approx(-0.125) and result["gain_over_best"] == pytest.approx(-0.25)
    assert result["disagreement"] == pytest.approx(0.75)
    assert result["ensemble"]["loss"] == pytest.approx(-np.mean(np.log([0.75, 0.45, 0.6, 0.45])))


# -- resolving members ---------------------------------------------------------------------


def test_members_default_to_the_snapshots_of_one_run_else_the_best_models(runs):
    assert resolve_members([runs["a"]])["paths"] == snapshot_paths(runs["a"])
    resolved = resolve_members([runs["a"], runs["b"]])
    assert resolved["kind"] == "best" and [path.parent for path in resolved["paths"]] == [runs["a"], runs["b"]]


def test_runs_with_other_labels_or_no_snapshots_are_refused(runs, tmp_path):
    other = write_run(tmp_path / "other", [5], runs["data"], labels=["dog", "cat"], snapshots=False)
    with pytest.raises(FinetuneError, match="share their labels"):
        resolve_members([runs["a"], other])
    with pytest.raises(FinetuneError, match="has no snapshots.*--members best"):
        resolve_members([runs["b"]], members="snapshots")
    with pytest.raises(FinetuneError, match="not a finished training run"):
        resolve_members([tmp_path])


# -- export: every format matches the in-memory ensemble -----------------------------------


def reference_probabilities(runs, x):
    members = load_members(snapshot_paths(runs["a"]))
    return build_ensemble(members).predict(x, verbose=0)


# The largest difference in probability from the in-memory ensemble each export of this toy may have:
# float32 graphs agree to rounding (measured 0), float16 weights to a hundredth (measured 2e-4), and
# dynamic-range int8 leaves its few small layers in float (measured 0).
@pytest.mark.parametrize(
    "format, quantize, bound",
    [("keras", "none", 1e-5), ("savedmodel", "none", 1e-5), ("tflite", "none", 1e-5), ("tflite", "float16", 0.01),
     ("tflite", "dynamic", 0.05), ("onnx", "none", 1e-5)],
)
def test_export_passes_parity_and_loads_like_a_run(runs, tmp_path, format, quantize, bound):
    out = tmp_path / f"export-{format}-{quantize}"
    sidecar = export_ensemble([runs["a"]], out, format=format, quantize=quantize)
    assert sidecar["parity"]["passed"] and sidecar["parity"]["max_abs_diff"] <= bound
    assert "val images" in sidecar["parity"]["images"]  # the run's own data, not noise
    assert sidecar["labels"] == LABELS and sidecar["image_size"] == SIZE and len(sidecar["members"]) == 3
    assert json.loads((out / "export.json").read_text())["format"] == format
    assert json.loads((out / "labels.json").read_text()) == LABELS
    run = load_run(out)
    assert run.labels == LABELS and run.image_size == SIZE and run.metrics["parity"]["passed"]
    x = images()
    np.testing.assert_allclose(run.model.predict(x, batch_size=2), reference_probabilities(runs, x), atol=bound)


def test_keras_export_loads_in_safe_mode_and_from_its_file(runs, tmp_path):
    out = tmp_path / "export"
    export_ensemble([runs["a"]], out)
    direct = keras.saving.load_model(out / "model.keras", safe_mode=True, compile=False)
    x = images()
    np.testing.assert_allclose(direct.predict(x, verbose=0), reference_probabilities(runs, x), atol=1e-6)
    assert load_run(out / "model.keras").directory == out


@pytest.mark.parametrize("format", ["keras", "tflite"])
def test_export_with_tta_takes_the_source_size_and_matches(runs, tmp_path, format):
    from augment.tta import build_tta_model, source_size

    out = tmp_path / "export"
    sidecar = export_ensemble([runs["a"]], out, format=format, tta="center")
    assert sidecar["tta"] == "center" and sidecar["member_image_size"] == SIZE
    assert sidecar["image_size"] == source_size("center", SIZE) > SIZE
    run = load_run(out)
    assert run.image_size == sidecar["image_size"]
    x = np.random.default_rng(1).uniform(0, 255, (3, run.image_size, run.image_size, 3)).astype("float32")
    reference = build_tta_model(build_ensemble(load_members(snapshot_paths(runs["a"]))), "center").predict(x, verbose=0)
    np.testing.assert_allclose(run.model.predict(x, batch_size=2), reference, atol=1e-4)
    assert len(evaluate(out, str(runs["test"]))["confusion_matrix"]) == 2


def test_evaluate_and_predict_accept_an_export(runs, tmp_path):
    out = tmp_path / "export"
    export_ensemble([runs["a"], runs["b"]], out, format="tflite")
    result = evaluate(out, str(runs["test"]))
    assert result["num_images"] == 6 and set(result["class_names"]) == set(LABELS)
    predictions = predict(out, [runs["test"] / "cat"], top_k=1)
    assert len(predictions) == 3 and predictions[0]["predictions"][0]["label"] in LABELS


def test_failed_parity_reports_the_difference_and_writes_nothing(runs, tmp_path, exports_off_by_a_hundredth):
    out = tmp_path / "export"
    with pytest.raises(FinetuneError, match=r"differs from the in-memory ensemble by up to 0\.0[0-9]+.*Nothing was written"):
        export_ensemble([runs["a"]], out)
    assert not out.exists() and not list(tmp_path.glob(".tmp-export*"))


@pytest.fixture
def exports_off_by_a_hundredth(monkeypatch):
    """Makes every exported model off by 0.01, as a broken converter would be."""
    load = export_reader.load_artefact

    class Shifted:
        def __init__(self, model):
            self.model = model

        def predict(self, x, batch_size=32, verbose=0):
            return np.asarray(self.model.predict(x, batch_size=batch_size, verbose=0)) + 0.01

    monkeypatch.setattr(export_module, "load_artefact", lambda path, format: Shifted(load(path, format)))


def test_export_replaces_an_earlier_export_but_never_a_run(runs, tmp_path):
    out = tmp_path / "export"
    export_ensemble([runs["a"]], out, format="keras")
    export_ensemble([runs["a"]], out, format="onnx")
    assert sorted(path.name for path in out.iterdir()) == ["export.json", "labels.json", "model.onnx"]
    with pytest.raises(FinetuneError, match="not an earlier export"):
        export_ensemble([runs["a"]], runs["b"])
    with pytest.raises(FinetuneError, match="is an export, not a training run"):
        export_ensemble([out], tmp_path / "again")


def test_export_argument_errors(runs, tmp_path):
    with pytest.raises(FinetuneError, match="TFLite only"):
        export_ensemble([runs["a"]], tmp_path / "x", format="keras", quantize="float16")
    with pytest.raises(FinetuneError, match="is a directory.*Received: out="):
        export_ensemble([runs["a"]], tmp_path / "model.tflite", format="tflite")
    with pytest.raises(FinetuneError, match="Received: format='pt'"):
        export_ensemble([runs["a"]], tmp_path / "x", format="pt")


def test_cli_export_then_predict(runs, tmp_path, capsys):
    out = tmp_path / "export"
    assert main(["export", str(runs["a"]), "--format", "onnx", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "Exported 3 member(s) as onnx" in printed and "max abs difference" in printed
    assert main(["predict", str(out), str(runs["test"] / "dog" / "0.png"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["predictions"][0]["label"] in LABELS
    assert main(["export", str(runs["b"]), "--members", "snapshots", "--out", str(tmp_path / "none")]) == 2
    assert "has no snapshots" in capsys.readouterr().err
    # --json prints export.json and nothing else (no progress bars).
    assert main(["export", str(runs["a"]), str(runs["b"]), "--out", str(tmp_path / "best"), "--json"]) == 0
    sidecar = json.loads(capsys.readouterr().out)
    assert sidecar["member_kind"] == "best" and len(sidecar["members"]) == 2


def test_members_saved_with_a_one_element_output_list_still_average(tmp_path):
    # Runs saved before the fix wrapped their output in a list (keras.Model(inputs, model.outputs));
    # averaging two of them crashed inside keras.layers.Average.
    members = []
    for seed in (1, 2):
        model = toy_classifier(seed)
        path = tmp_path / f"member_{seed}.keras"
        save_model_atomic(keras.Model(model.inputs, model.outputs), path)
        members.append(model)
    loaded = load_members(sorted(tmp_path.glob("*.keras")))
    assert isinstance(loaded[0].output, list)
    images = np.random.default_rng(0).uniform(0, 255, (3, SIZE, SIZE, 3)).astype("float32")
    expected = np.mean([member.predict(images, verbose=0) for member in members], axis=0)
    np.testing.assert_allclose(build_ensemble(loaded).predict(images, verbose=0), expected, atol=1e-6)


@pytest.mark.slow
def test_snapshots_of_a_real_training_run_export_in_every_format(tmp_path):
    import finetune

    data = write_image_folder(tmp_path / "data", classes=("a", "b"), per_class=8)
    run = finetune.train(data, out=str(tmp_path / "run"), strategy="finetune_top", epochs=2, snapshots=2,
                         warmup_epochs=0, backbone="mobilenet_v2", weights="none", alpha=0.35, image_size=32,
                         batch_size=8, verbose=0, tta="none")
    assert len(snapshot_paths(run.directory)) == 2
    images = np.random.default_rng(0).uniform(0, 255, (4, 32, 32, 3)).astype("float32")
    averaged = np.mean([member.predict(images, verbose=0) for member in load_members(snapshot_paths(run.directory))], axis=0)
    # The ensemble is calibrated as a whole, by the temperature training fit on its averaged validation probabilities.
    temperature = run.metrics["snapshots"]["temperature"]
    expected = apply_temperature(averaged, temperature)
    for format in ("keras", "savedmodel", "tflite", "onnx"):
        sidecar = export_ensemble([run.directory], tmp_path / format, members="snapshots", format=format)
        assert sidecar["parity"]["passed"] and len(sidecar["members"]) == 2, format
        assert sidecar["temperature"] == temperature
        exported = load_run(tmp_path / format).model.predict(images, batch_size=4, verbose=0)
        np.testing.assert_allclose(np.asarray(exported), expected, atol=1e-4, err_msg=format)
