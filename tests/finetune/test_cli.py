"""The command line end to end on a tiny generated folder: train, evaluate, predict, errors."""

import contextlib
import io
import json

import keras
import numpy as np
import pytest

from augment.tta_modes import MODES
from finetune import cli_arguments
from finetune.cli import _train_config, build_parser, main
from finetune.config import STRATEGIES, CheckConfig, DataConfig, ModelConfig, PolicyConfig, TrainConfig
from tests.conftest import write_image_folder

TINY = ["--backbone", "mobilenet_v2", "--weights", "none", "--alpha", "0.35", "--image-size", "48", "--batch-size", "8", "--quiet", "--tta", "none"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    data = write_image_folder(root / "data" / "train", classes=("cat", "dog"), per_class=8)
    write_image_folder(root / "data" / "test", classes=("cat", "dog"), per_class=3, seed=5)
    run_dir = root / "run"
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):  # capsys is per test; the run is trained once per module
        assert main(["train", str(root / "data"), "--out", str(run_dir), "--epochs", "1", "--strategy", "finetune_top",
                     *TINY]) == 0
    return root, run_dir, printed.getvalue()


def test_train_prints_where_the_run_went(trained):
    root, run_dir, printed = trained
    lines = printed.splitlines()
    assert lines[0] == f"Run saved in {run_dir}"
    assert (run_dir / "model.keras").is_file()
    assert json.loads((run_dir / "labels.json").read_text()) == ["cat", "dog"]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert f"Test accuracy: {metrics['test_accuracy']:.4f}" in lines
    assert any(line.startswith(f"Validation accuracy: {metrics['val_accuracy']:.4f}") for line in lines)


def test_evaluate_json_uses_the_test_split(trained, capsys):
    root, run_dir, _ = trained
    assert main(["evaluate", str(run_dir), str(root / "data"), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert {"accuracy", "num_images", "per_class", "confusion_matrix"} <= set(result)
    assert result["num_images"] == 6 and result["split"] == "test"
    assert sum(map(sum, result["confusion_matrix"])) == 6


def test_evaluate_text_report(trained, capsys):
    root, run_dir, _ = trained
    assert main(["evaluate", str(run_dir), str(root / "data")]) == 0
    out = capsys.readouterr().out
    assert "Accuracy:" in out and "Confusion matrix" in out and "cat" in out


def test_predict_json_on_files_and_folders(trained, capsys):
    root, run_dir, _ = trained
    bad = root / "bad.png"
    bad.write_bytes(b"")
    assert main(["predict", str(run_dir), str(root / "data" / "test" / "cat"), str(bad), "--top-k", "2", "--json"]) == 0
    results = json.loads(capsys.readouterr().out)
    assert len(results) == 4
    good = [item for item in results if "predictions" in item]
    assert len(good) == 3
    for item in good:
        assert [p["label"] for p in item["predictions"]] in (["cat", "dog"], ["dog", "cat"])
        assert sum(p["probability"] for p in item["predictions"]) == pytest.approx(1.0, abs=1e-5)
    assert [item["path"] for item in results if "error" in item] == [str(bad)]


def test_evaluate_with_foreign_classes_is_a_clear_error(trained, tmp_path, capsys):
    root, run_dir, _ = trained
    other = write_image_folder(tmp_path / "other", classes=("cat", "horse"), per_class=2)
    assert main(["evaluate", str(run_dir), str(other)]) == 2
    error = capsys.readouterr().err
    assert "horse" in error and "labels.json" in error


def test_missing_data_folder_is_a_clear_error(tmp_path, capsys):
    assert main(["train", str(tmp_path / "missing"), "--out", str(tmp_path / "run"), *TINY]) == 2
    error = capsys.readouterr().err
    assert "missing" in error and "Traceback" not in error


def test_missing_run_is_a_clear_error(tmp_path, capsys):
    assert main(["predict", str(tmp_path / "norun"), str(tmp_path)]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_train_defaults_are_the_config_defaults():
    arguments = build_parser().parse_args(["train", "photos"])
    assert _train_config(arguments, "photos") == TrainConfig(data=DataConfig(source="photos"))


def test_demo_keeps_its_own_defaults_and_shows_them(capsys):
    config = _train_config(build_parser().parse_args(["demo"]), "sample")
    assert (config.epochs, config.data.image_size) == (0, 128)
    with pytest.raises(SystemExit):
        main(["demo", "--help"])
    assert "head only; default: 0)" in " ".join(capsys.readouterr().out.split())


def test_check_and_policy_defaults_are_the_config_defaults():
    parser = build_parser()
    check = parser.parse_args(["check", "photos"])
    assert cli_arguments.check_config(check) == CheckConfig()
    assert cli_arguments.data_config(check, "photos") == DataConfig(source="photos")
    assert cli_arguments.model_config(check) == ModelConfig()
    assert (check.batch_size, check.seed) == (TrainConfig.batch_size, TrainConfig.seed)
    policy = parser.parse_args(["policy", "photos"])
    assert cli_arguments.policy_config(policy) == PolicyConfig()
    assert cli_arguments.data_config(policy, "photos") == DataConfig(source="photos")
    assert cli_arguments.model_config(policy) == ModelConfig()
    health = parser.parse_args(["check-data", "photos"])
    assert (health.val_fraction, health.max_megapixels, health.seed) == (
        DataConfig.val_fraction, DataConfig.max_megapixels, TrainConfig.seed)


def test_options_reach_the_config_objects():
    arguments = build_parser().parse_args(
        ["check", "photos", "--backbone", "mobilenet_v2", "--weights", "none", "--alpha", "0.35", "--image-size", "48",
         "--val-fraction", "0.3", "--subset-size", "7", "--overfit-epochs", "5", "--range-steps", "9", "--out", "here"])
    assert cli_arguments.model_config(arguments) == ModelConfig("mobilenet_v2", weights="none", alpha=0.35)
    assert cli_arguments.data_config(arguments, "photos") == DataConfig("photos", val_fraction=0.3, image_size=48)
    assert cli_arguments.check_config(arguments) == CheckConfig(subset_size=7, overfit_epochs=5, range_steps=9, out_dir="here")
    train = build_parser().parse_args(["train", "photos", "--max-megapixels", "2", "--no-cache", "--decay-factor", "0.5",
                                       "--held-out-val-per-class", "7"])
    config = _train_config(train, "photos")
    assert (config.data.max_megapixels, config.data.cache, config.schedule_options) == (2.0, False, {"factor": 0.5})
    assert config.held_out_val_per_class == 7


def test_a_finetuning_flag_with_a_linear_strategy_is_refused_with_the_fix(tmp_path, capsys):
    data = write_image_folder(tmp_path / "data", classes=("a", "b"), per_class=4)
    out = tmp_path / "run"
    assert main(["train", str(data), "--strategy", "linear", "--snapshots", "3", "--out", str(out), *TINY]) == 2
    error = " ".join(capsys.readouterr().err.split())
    assert "snapshots=3 only apply to finetuning" in error and "--strategy finetune_top" in error
    assert not out.exists()


def test_choices_are_the_lists_of_the_modules_that_define_them(capsys):
    parser = build_parser()
    for strategy in STRATEGIES:
        assert parser.parse_args(["train", "photos", "--strategy", strategy]).strategy == strategy
    for mode in ("auto", *MODES):
        assert parser.parse_args(["train", "photos", "--tta", mode]).tta == mode
        assert parser.parse_args(["predict", "run", "image.png", "--tta", mode]).tta == mode
    with pytest.raises(SystemExit):
        parser.parse_args(["train", "photos", "--strategy", "finetune_everything"])
    error = capsys.readouterr().err
    assert "finetune_everything" in error and all(strategy in error for strategy in STRATEGIES)


def test_zoo_lists_every_backbone_with_its_size_parameters_and_stages(capsys, monkeypatch):
    from finetune.zoo import build, list_specs

    # Counting parameters builds all 16 backbones (30 s); tests/finetune/zoo/test_build.py checks the counting.
    counts = {spec.name: 1_000_000 + index * 1_111 for index, spec in enumerate(list_specs())}
    monkeypatch.setattr(build, "count_parameters", lambda spec: counts[build.get_spec(spec).name])
    assert main(["zoo"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["name", "input", "parameters", "stages", "preprocessing"]
    rows = {line.split()[0]: line.split()[1:] for line in lines[1:]}
    assert set(rows) == set(counts) and {"mobilenet_v2", "efficientnet_b0", "resnet50"} <= set(rows)
    for spec in list_specs():
        assert rows[spec.name] == [str(spec.default_image_size), f"{counts[spec.name]:,}", str(len(spec.stage_endpoints)),
                                   spec.preprocessing]
    assert main(["zoo", "--json"]) == 0
    table = json.loads(capsys.readouterr().out)
    assert [row["name"] for row in table] == [spec.name for spec in list_specs()]
    assert table[0]["parameters"] == counts[table[0]["name"]] and table[0]["description"]


def test_check_data_reports_counts_and_unreadable_files(tmp_path, capsys):
    data = write_image_folder(tmp_path / "photos", classes=("cat", "dog"), per_class=5)
    (data / "dog" / "broken.png").write_bytes(b"not an image")
    assert main(["check-data", str(data)]) == 0
    out = capsys.readouterr().out
    assert "Images: 10 readable, 1 skipped, 2 classes" in out
    assert "dog/broken.png" in out and "val_fraction=0.2" in out
    assert main(["check-data", str(data), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["class_names"] == ["cat", "dog"] and sum(report["totals"].values()) == 10
    assert [item["path"].endswith("broken.png") for item in report["skipped"]] == [True]


def test_max_files_bounds_the_listing_of_check_data_and_train(tmp_path, capsys):
    data = write_image_folder(tmp_path / "photos", classes=("cat", "dog"), per_class=5)
    assert main(["check-data", str(data), "--max-files", "10"]) == 0
    capsys.readouterr()
    for command in (["check-data", str(data)], ["train", str(data), "--out", str(tmp_path / "run"), *TINY]):
        assert main([*command, "--max-files", "9"]) != 0
        assert f"{data} holds more than 9 files" in capsys.readouterr().err
    assert not (tmp_path / "run" / "model.keras").exists()


def test_demo_trains_and_tests_on_the_bundled_sample(tmp_path, capsys):
    # The demo's own data on a tiny configuration (make demo runs it with the ImageNet MobileNetV2 at 128 px).
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), *TINY]) == 0
    printed = capsys.readouterr().out
    assert printed.splitlines()[0] == f"Run saved in {out}"
    metrics = json.loads((out / "metrics.json").read_text())
    assert json.loads((out / "labels.json").read_text()) == ["brick", "grass", "gravel"]
    assert f"Test accuracy: {metrics['test_accuracy']:.4f}" in printed
    assert metrics["test_accuracy"] >= 0.6  # three textures; chance is 1/3
    assert json.loads((out / "config.json").read_text())["epochs"] == 0  # the demo's default: the head alone


def test_train_with_a_weights_file_starts_from_those_weights(tmp_path, capsys):
    from finetune.zoo import build_backbone

    keras.utils.set_random_seed(7)
    saved = build_backbone("mobilenet_v2", image_size=48, weights="none", alpha=0.35)
    path = tmp_path / "mine.weights.h5"
    saved.save_weights(path)
    data = write_image_folder(tmp_path / "data", classes=("a", "b"), per_class=4)
    out = tmp_path / "run"
    at = TINY.index("--weights")
    tiny = TINY[:at] + TINY[at + 2:]
    assert main(["train", str(data), "--out", str(out), "--weights", str(path), "--strategy", "linear", *tiny]) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["model"]["weights"] == str(path) and config["weights_source"] == f"weights from {path}"
    model = keras.saving.load_model(out / "model.keras", safe_mode=True)
    backbone = next(layer for layer in model.layers if isinstance(layer, keras.Model))
    # The linear strategy trains no backbone weight: the saved model's backbone is the file's, weight for weight.
    assert len(backbone.weights) == len(saved.weights)
    for theirs, ours in zip(saved.weights, backbone.weights):
        np.testing.assert_array_equal(np.asarray(ours), np.asarray(theirs), err_msg=theirs.path)
