"""The app through Streamlit's AppTest: model listing, empty state, TTA selector, uploads, every message."""

import io
import json
from pathlib import Path

import pytest
from PIL import Image
from streamlit.testing.v1 import AppTest

import finetune
import finetune.inference
from app import listing, results, uploads
from finetune.export.writer import export_ensemble
from tests.app.conftest import bomb_png, image_bytes, write_colour_run

APP = str(Path(__file__).resolve().parents[2] / "app" / "streamlit_app.py")


def start_app(models_dir, monkeypatch, **environment) -> AppTest:
    monkeypatch.setenv(listing.MODELS_DIR_VARIABLE, str(models_dir))
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    app = AppTest.from_file(APP, default_timeout=60)
    app.run()
    assert not app.exception, app.exception
    return app


def upload(app: AppTest, *files) -> AppTest:
    app.file_uploader(key="uploads").set_value(list(files)).run()
    assert not app.exception, app.exception
    return app


def table(app: AppTest) -> dict:
    """The results table as {file: row}."""
    frame = app.dataframe[0].value
    return {row["file"]: row for row in frame.to_dict("records")}


def tta_selector(app: AppTest):
    return next(box for box in app.sidebar.selectbox if box.label == "Test-time augmentation")


def errors(app: AppTest) -> str:
    return "\n".join(element.value for element in app.error)


def test_sidebar_lists_runs_with_their_facts(tmp_path, monkeypatch):
    write_colour_run(tmp_path / "colours-a", val_accuracy=0.75)
    write_colour_run(tmp_path / "colours-b", val_accuracy=0.5)
    (tmp_path / "half-written").mkdir()
    (tmp_path / "half-written" / "model.keras").write_bytes(b"")  # no labels.json: listed as a problem
    app = start_app(tmp_path, monkeypatch)
    picker = app.sidebar.selectbox(key="model")
    assert len(picker.options) == 2 and all("(run)" in option for option in picker.options)
    facts = app.sidebar.markdown[0].value
    assert "blue, red" in facts and "colour_means" in facts and "linear" in facts
    assert "Validation accuracy**: 75.0%" in facts or "Validation accuracy**: 50.0%" in facts
    assert "Trained" in facts
    problem = app.sidebar.expander[0]
    assert "1 could not be read" in problem.label and "half-written" in problem.caption[0].value


def test_models_dir_comes_from_the_argument_then_the_environment(tmp_path):
    assert listing.models_dir_from(["--models-dir", "runs"], {listing.MODELS_DIR_VARIABLE: "other"}) == Path("runs")
    assert listing.models_dir_from(["-q", "x"], {listing.MODELS_DIR_VARIABLE: "other"}) == Path("other")
    assert listing.models_dir_from([], {}) == Path("models")


def test_empty_models_folder_says_how_to_make_a_model(tmp_path, monkeypatch):
    app = start_app(tmp_path, monkeypatch)
    message = app.warning[0].value
    assert f"No trained model found in `{tmp_path}`" in message
    assert "make demo" in message and "finetune train DATA_DIR" in message and listing.MODELS_DIR_VARIABLE in message
    assert not app.file_uploader  # nothing to upload to without a model
    missing = start_app(tmp_path / "nothing-here", monkeypatch)
    assert "nothing-here` does not exist" in missing.warning[0].value


def test_damaged_model_file_is_a_message_not_a_traceback(tmp_path, monkeypatch):
    write_colour_run(tmp_path / "broken")
    (tmp_path / "broken" / "model.keras").write_bytes(b"not a zip file")
    app = start_app(tmp_path, monkeypatch)
    assert "Could not load the model" in errors(app) and "broken" in errors(app)


def test_tta_selector_offers_the_library_modes(colour_models_dir, monkeypatch):
    app = start_app(colour_models_dir, monkeypatch)
    selector = tta_selector(app)
    assert list(selector.options) == list(finetune.inference.TTA_MODES) and not selector.disabled
    assert "center" in selector.options
    selector.set_value("ten_crop").run()
    upload(app, ("tomato.png", image_bytes("red"), "image/png"))
    row = table(app)["tomato.png"]
    assert row["label"] == "red" and row["tta"] == "ten_crop"
    views = app.expander[0]
    assert views.label == "The 10 views TTA averaged" and len(views.children[0].proto.imgs) == 1


def test_tta_selector_is_disabled_for_an_export_that_is_not_keras(tmp_path):
    export_ensemble([write_colour_run(tmp_path / "runs" / "a")], tmp_path / "models" / "saved", members="best",
                    format="savedmodel")
    entries, problems = listing.find_models(tmp_path / "models")
    assert problems == [] and entries[0].format == "savedmodel"
    available, reason = listing.tta_support(entries[0])
    assert not available and "needs a Keras model; this export is savedmodel" in reason
    run = finetune.load_run(entries[0].path)
    result = uploads.predict_upload(run, "tomato.png", image_bytes("red"), tta="none", top_k=1)
    assert result.ok and result.predictions[0]["label"] == "red"  # whole images still work


def test_tta_selector_is_disabled_with_a_note_for_an_export_with_tta_inside(tmp_path, monkeypatch):
    export_ensemble([write_colour_run(tmp_path / "runs" / "a")], tmp_path / "models" / "flipped", members="best", tta="flip")
    app = start_app(tmp_path / "models", monkeypatch)
    selector = tta_selector(app)
    assert selector.disabled and list(selector.options) == list(finetune.inference.TTA_MODES)
    captions = " ".join(caption.value for caption in app.sidebar.caption)
    assert "This export averages flip views inside the model already. Images are predicted whole." in captions
    assert "TTA flip inside" in app.sidebar.markdown[0].value
    upload(app, ("tomato.png", image_bytes("red"), "image/png"))
    row = table(app)["tomato.png"]
    assert row["tta"] == "none" and row["label"] == "red"


def test_predicts_uploaded_images_from_their_bytes(colour_models_dir, monkeypatch):
    app = start_app(colour_models_dir, monkeypatch)
    assert "Upload images or pick samples" in app.info[0].value
    upload(app, ("tomato.png", image_bytes("red"), "image/png"), ("sea.jpg", image_bytes("blue", "JPEG"), "image/jpeg"))
    rows = table(app)
    assert rows["tomato.png"]["label"] == "red" and rows["sea.jpg"]["label"] == "blue"
    assert rows["tomato.png"]["probability"] > 0.9 and rows["tomato.png"]["latency_ms"] > 0
    assert not app.error
    headings = " ".join(element.value for element in app.markdown)
    assert "### red" in headings and "### blue" in headings


def test_format_is_read_from_the_content_not_the_name(colour_models_dir, monkeypatch):
    app = start_app(colour_models_dir, monkeypatch)
    webp = io.BytesIO()
    Image.open(io.BytesIO(image_bytes("red"))).save(webp, format="WEBP")
    upload(app, ("photo.dat", image_bytes("red", "BMP"), "application/octet-stream"), ("x.webp", webp.getvalue(), "image/webp"))
    rows = table(app)
    assert rows["photo.dat"]["label"] == "red" and rows["x.webp"]["label"] == "red"


def test_bad_files_get_messages_and_the_others_are_still_predicted(colour_models_dir, monkeypatch):
    app = start_app(colour_models_dir, monkeypatch, **{uploads.MAX_UPLOAD_VARIABLE: "0.05"})  # 50 kB
    jpeg = image_bytes("blue", "JPEG", size=(200, 200))
    big = image_bytes("red", "BMP", size=(200, 200))  # 120 kB
    upload(
        app,
        ("notes.jpg", b"these are words, not pixels", "image/jpeg"),
        ("cut.jpg", jpeg[: len(jpeg) // 2], "image/jpeg"),
        ("empty.png", b"", "image/png"),
        ("huge.bmp", big, "image/bmp"),
        ("bomb.png", bomb_png(), "image/png"),
        ("fine.png", image_bytes("red"), "image/png"),
    )
    shown = errors(app)
    assert "**notes.jpg** was not used: not an image in a supported format" in shown
    assert "**cut.jpg** was not used: truncated or corrupt image data" in shown
    assert "**empty.png** was not used: empty file" in shown
    assert "**huge.bmp** was not used: 0.1 MB is over the upload limit of 0.05 MB per file" in shown
    assert "**bomb.png** was not used: 30000x30000 pixels" in shown and "decompression bomb" in shown
    assert "Traceback" not in shown
    rows = table(app)
    assert rows["fine.png"]["label"] == "red" and rows["fine.png"]["error"] == ""
    assert all(rows[name]["error"] for name in ("notes.jpg", "cut.jpg", "empty.png", "huge.bmp", "bomb.png"))


def test_a_submission_over_the_file_limit_predicts_the_first_ones_and_names_the_rest(colour_models_dir, monkeypatch):
    app = start_app(colour_models_dir, monkeypatch, **{uploads.MAX_FILES_VARIABLE: "2"})
    upload(app, *[(f"{index}.png", image_bytes("red"), "image/png") for index in range(5)])
    assert sorted(table(app)) == ["0.png", "1.png"]
    warning = app.warning[0].value
    assert "5 images is over the limit of 2" in warning and "2.png, 3.png, 4.png" in warning
    assert uploads.MAX_FILES_VARIABLE in warning


def test_results_download_as_csv(colour_models_dir, monkeypatch):
    app = start_app(colour_models_dir, monkeypatch)
    upload(app, ("tomato.png", image_bytes("red"), "image/png"), ("notes.jpg", b"words", "image/jpeg"))
    assert [button.proto.label for button in app.get("download_button")] == ["Download all results (CSV)"]
    run = finetune.load_run(next(colour_models_dir.iterdir()))
    predicted = [uploads.predict_upload(run, "tomato.png", image_bytes("red")), uploads.predict_upload(run, "notes.jpg", b"words")]
    lines = results.results_csv(predicted).splitlines()
    assert lines[0] == "file,label,probability,top_k,latency_ms,tta,member_agreement,error"
    assert lines[1].startswith("tomato.png,red,0.9") and lines[2].startswith("notes.jpg,,,")


def test_samples_can_be_picked_instead_of_uploaded(colour_models_dir, monkeypatch):
    samples = uploads.sample_files()
    assert samples, f"the bundled sample images are missing from {uploads.SAMPLE_DIR}"  # package data of this repository
    app = start_app(colour_models_dir, monkeypatch)
    first = next(iter(samples))
    app.multiselect(key="samples").set_value([first]).run()
    assert first in table(app) and not app.error


def test_exported_ensemble_is_listed_and_its_members_agreement_shown(tmp_path, monkeypatch):
    runs = [write_colour_run(tmp_path / "runs" / name, contrary=name == "c") for name in ("a", "b", "c")]
    export_ensemble(runs, tmp_path / "models" / "exports" / "colours", members="best")
    write_colour_run(tmp_path / "models" / "single")
    app = start_app(tmp_path / "models", monkeypatch)
    picker = app.sidebar.selectbox(key="model")
    assert sorted(picker.options) == ["colours (ensemble)", "single (run)"]
    picker.select_index(picker.options.index("colours (ensemble)")).run()
    facts = app.sidebar.markdown[0].value
    assert "Members** (3): a (75.0%), b (75.0%), c (75.0%)" in facts and "colour_means" in facts
    upload(app, ("tomato.png", image_bytes("red"), "image/png"))
    row = table(app)["tomato.png"]
    assert row["label"] == "red" and row["member_agreement"] == pytest.approx(2 / 3, abs=1e-3)
    assert "members agree: 67% (red, red, blue)" in " ".join(caption.value for caption in app.caption)


def write_corner_run(directory: Path, image_size: int = 32) -> Path:
    """A run whose model looks only at the top-left quarter of what it is shown: red there says "red", blue "blue".

    Unlike the mean-colour run, its answer depends on where each view was cut and which way it faces.
    """
    import keras
    import numpy as np

    half = image_size // 2
    inputs = keras.Input((image_size, image_size, 3), name="image")
    corner = keras.layers.Cropping2D(((0, half), (0, half)), name="top_left")(keras.layers.Rescaling(1 / 255.0)(inputs))
    classifier = keras.layers.Dense(2, activation="softmax", name="classifier")
    model = keras.Model(inputs, classifier(keras.layers.GlobalAveragePooling2D(name="pool")(corner)))
    classifier.set_weights([np.array([[-4.0, 4.0], [0.0, 0.0], [4.0, -4.0]]), np.zeros(2)])
    directory.mkdir(parents=True, exist_ok=True)
    model.save(directory / "model.keras")
    (directory / "labels.json").write_text(json.dumps(["blue", "red"]))
    (directory / "config.json").write_text(json.dumps({"image_size": image_size, "model": {"backbone": "corner"}}))
    (directory / "metrics.json").write_text(json.dumps({"val_accuracy": 0.75}))
    return directory


def corner_photo(path: Path) -> Path:
    """A 90 x 60 JPEG, red in a top-left block that ends off the middle, blue elsewhere: every crop sees its own mix."""
    import numpy as np

    pixels = np.tile(np.array([20, 40, 230], np.uint8), (60, 90, 1))
    pixels[:20, :35] = (230, 30, 20)
    Image.fromarray(pixels).save(path, format="JPEG", quality=95)
    return path


@pytest.mark.parametrize("tta", ["none", "five_crop"])
def test_app_predicts_what_finetune_predict_predicts(tmp_path, tta):
    run = finetune.load_run(write_corner_run(tmp_path / "corner"))
    photo = corner_photo(tmp_path / "photo.jpg")
    from_library = finetune.predict(run, [photo], top_k=2, tta=tta)[0]["predictions"]
    from_app = uploads.predict_upload(run, "photo.jpg", photo.read_bytes(), tta=tta, top_k=2).predictions
    assert [p["label"] for p in from_app] == [p["label"] for p in from_library]
    assert [p["probability"] for p in from_app] == pytest.approx([p["probability"] for p in from_library], abs=1e-5)
    # The views matter here: other crops, or the mirror image, would give other probabilities.
    red = {mode: next(p["probability"] for p in finetune.predict(run, [photo], top_k=2, tta=mode)[0]["predictions"]
                      if p["label"] == "red") for mode in ("none", "center", "flip", "five_crop")}
    assert min(abs(red[tta] - red[other]) for other in red if other != tta) > 0.01, red


def test_tta_starts_at_the_mode_training_chose(tmp_path, monkeypatch):
    run_dir = write_colour_run(tmp_path / "with-tta")
    config = json.loads((run_dir / "config.json").read_text())
    (run_dir / "config.json").write_text(json.dumps({**config, "tta": {"mode": "flip"}}))
    app = start_app(tmp_path, monkeypatch)
    assert tta_selector(app).value == "flip"
    upload(app, ("tomato.png", image_bytes("red"), "image/png"))
    assert table(app)["tomato.png"]["tta"] == "flip"


def test_a_run_whose_head_saw_the_validation_split_shows_its_cross_validated_accuracy(tmp_path):
    directory = write_colour_run(tmp_path / "linear-run", val_accuracy=1.0)
    (directory / "metrics.json").write_text(json.dumps({"val_accuracy": 1.0, "val": {"accuracy": 1.0, "held_out": False},
                                                        "cv_accuracy": 0.9}))
    entry = listing.describe(finetune.load_run(directory), directory)
    assert (entry.accuracy_kind, entry.accuracy) == ("Cross-validated accuracy", 0.9)
    held_out = listing.describe(finetune.load_run(write_colour_run(tmp_path / "other")), tmp_path / "other")
    assert (held_out.accuracy_kind, held_out.accuracy) == ("Validation accuracy", 0.75)


def test_an_image_of_no_class_is_answered_unknown_and_the_heat_map_shows_on_demand(tmp_path, monkeypatch):
    run = write_colour_run(tmp_path / "colours")
    config = json.loads((run / "config.json").read_text())
    # Strongly red or blue images clear 0.9; a grey one (about 50/50) does not.
    (run / "config.json").write_text(json.dumps({**config, "unknown": {"threshold": 0.9, "keep": 0.95}}))
    app = upload(start_app(tmp_path, monkeypatch), ("red.png", image_bytes("red"), "image/png"),
                 ("grey.png", image_bytes("grey"), "image/png"))
    headings = [element.value for element in app.markdown if element.value.startswith("###")]
    assert any(value.startswith("### red") for value in headings)
    assert any(value.startswith("### unknown") and "closest:" in value for value in headings)
    assert not any("Grad-CAM" in caption for caption in _image_captions(app))
    app.toggle(key="explain").set_value(True).run()
    assert not app.exception, app.exception
    captions = _image_captions(app)
    assert sum("Grad-CAM" in caption for caption in captions) == 2, captions


def _image_captions(app) -> list[str]:
    return [image.caption for element in app.get("image") for image in element.proto.imgs]
