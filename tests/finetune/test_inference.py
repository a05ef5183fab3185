"""`finetune.inference`: predict_arrays against views cut by hand, against `finetune.predict`, and for ensembles.

The model looks at every pixel where it is (Flatten, Dense), so that its answer depends on the
crop, not only on the mean colour: a wrong source size, crop or combine changes the numbers.
"""

import io
import json

import keras
import numpy as np
import pytest
from PIL import Image

import finetune
from finetune import inference
from finetune.data import resize_image
from finetune.ensemble import build_ensemble

SIZE = 16
SOURCE = 18  # round(16 * 256 / 224): what the crop modes resize to
LABELS = ["ash", "birch", "cedar"]


def position_model(seed: int = 0, sign: float = 1.0) -> keras.Model:
    """Image [16, 16, 3] -> Flatten -> Dense softmax: each pixel counts where it is."""
    inputs = keras.Input((SIZE, SIZE, 3), name="image")
    flat = keras.layers.Flatten()(keras.layers.Rescaling(1 / 255.0)(inputs))
    dense = keras.layers.Dense(len(LABELS), activation="softmax", name="classifier",
                               kernel_initializer=keras.initializers.RandomNormal(stddev=0.1, seed=seed))
    model = keras.Model(inputs, dense(flat), name="classifier_model")
    kernel, bias = model.get_layer("classifier").get_weights()
    model.get_layer("classifier").set_weights([kernel * sign, bias])  # sign -1: a member that disagrees
    return model


def write_run(directory, model, **config):
    directory.mkdir(parents=True)
    model.save(directory / "model.keras")
    (directory / "labels.json").write_text(json.dumps(LABELS))
    (directory / "config.json").write_text(json.dumps({"image_size": SIZE, **config}))
    return directory


def photo(seed: int = 0, size=(40, 30)) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)


def png_bytes(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")  # lossless: the file decodes to `image`
    return buffer.getvalue()


def five_crops(source: np.ndarray) -> list[np.ndarray]:
    """Top left, top right, bottom left, bottom right, centre of a SOURCE x SOURCE image, by slicing."""
    far, middle = SOURCE - SIZE, (SOURCE - SIZE) // 2
    return [source[:SIZE, :SIZE], source[:SIZE, far:], source[far:, :SIZE], source[far:, far:],
            source[middle : middle + SIZE, middle : middle + SIZE]]  # fmt: skip


@pytest.fixture(scope="module")
def model():
    return position_model()


@pytest.fixture
def run(tmp_path, model):
    return finetune.load_run(write_run(tmp_path / "run", model))


def test_crop_modes_combine_the_views_cut_by_hand(run, model):
    image = photo()
    crops = five_crops(resize_image(image, SOURCE))
    per_view = model.predict(np.stack(crops).astype(np.float32), verbose=0)
    whole = model.predict(resize_image(image, SIZE)[None].astype(np.float32), verbose=0)[0]
    geometric = np.exp(np.log(per_view).mean(axis=0))
    expected = {"none": whole, "center": per_view[4], "five_crop": per_view.mean(axis=0),
                "geometric": geometric / geometric.sum()}  # fmt: skip
    assert np.abs(expected["center"] - expected["none"]).max() > 0.01  # the crop matters to this model
    for mode in ("none", "center", "five_crop"):
        result = inference.predict_arrays(run, [image], tta=mode, top_k=3)[0]
        np.testing.assert_allclose(result.probabilities, expected[mode], atol=1e-5, err_msg=mode)
        assert [p["label"] for p in result.predictions] == [LABELS[k] for k in np.argsort(-expected[mode], kind="stable")]
    combined = inference.predict_arrays(run, [image], tta="five_crop", combine="geometric")[0].probabilities
    np.testing.assert_allclose(combined, expected["geometric"], atol=1e-5)


def test_views_are_the_crops_the_model_saw(run):
    image = photo(1)
    result = inference.predict_arrays(run, [image], tta="five_crop", return_views=True)[0]
    np.testing.assert_array_equal(result.views, np.stack(five_crops(resize_image(image, SOURCE))))
    flipped = inference.predict_arrays(run, [image], tta="flip", return_views=True)[0].views
    np.testing.assert_array_equal(flipped[1], resize_image(image, SIZE)[:, ::-1])
    assert inference.predict_arrays(run, [image], tta="five_crop")[0].views is None  # only when asked


@pytest.mark.parametrize("mode", ["center", "five_crop"])
def test_arrays_give_the_probabilities_finetune_predict_gives_for_the_file(run, tmp_path, mode):
    images = [photo(seed, size) for seed, size in ((2, (40, 30)), (3, (17, 50)), (4, (18, 18)))]
    paths = []
    for index, image in enumerate(images):
        paths.append(tmp_path / f"photo_{index}.png")
        paths[-1].write_bytes(png_bytes(image))
    from_files = finetune.predict(run, paths, top_k=3, tta=mode, batch_size=5)
    decoded = [inference.decode_image(path.read_bytes()) for path in paths]
    from_arrays = inference.predict_arrays(run, decoded, tta=mode, top_k=3)
    whole = inference.predict_arrays(run, decoded, tta="none", top_k=3)
    for from_file, from_array, from_whole in zip(from_files, from_arrays, whole):
        assert [p["label"] for p in from_array.predictions] == [p["label"] for p in from_file["predictions"]]
        np.testing.assert_allclose([p["probability"] for p in from_array.predictions],
                                   [p["probability"] for p in from_file["predictions"]], atol=1e-6)
        assert np.abs(from_array.probabilities - from_whole.probabilities).max() > 1e-3  # the mode was applied


def test_auto_is_the_mode_the_run_recorded(tmp_path, model):
    recorded = finetune.load_run(write_run(tmp_path / "recorded", model, tta={"mode": "center", "accuracies": {}}))
    assert inference.recorded_tta(recorded) == "center"
    image = photo(5)
    auto = inference.predict_arrays(recorded, [image], tta="auto")[0].probabilities
    np.testing.assert_allclose(auto, inference.predict_arrays(recorded, [image], tta="center")[0].probabilities, atol=1e-6)
    path = tmp_path / "photo.png"
    path.write_bytes(png_bytes(image))
    from_file = finetune.predict(recorded, [path], top_k=1)[0]["predictions"][0]  # tta="auto" by default
    assert from_file["probability"] == pytest.approx(float(auto.max()), abs=1e-6)
    assert inference.recorded_tta(finetune.load_run(write_run(tmp_path / "plain", model))) == "none"
    assert inference.recorded_tta(finetune.load_run(write_run(tmp_path / "edited", model, tta="sideways"))) == "none"


def test_an_ensemble_gives_its_members_top_1_and_their_agreement(tmp_path):
    members = [position_model(7), position_model(7), position_model(7, sign=-1.0)]
    run = finetune.load_run(write_run(tmp_path / "ensemble", build_ensemble(members)))
    images = [photo(seed) for seed in range(4)]
    results = inference.predict_arrays(run, images, tta="five_crop", top_k=1)
    for image, result in zip(images, results):
        crops = np.stack(five_crops(resize_image(image, SOURCE))).astype(np.float32)
        each = [member.predict(crops, verbose=0).mean(axis=0) for member in members]
        np.testing.assert_allclose(result.probabilities, np.mean(each, axis=0), atol=1e-5)
        assert result.member_labels == [LABELS[int(np.argmax(probabilities))] for probabilities in each]
        assert result.member_labels[0] != result.member_labels[2]  # the contrary member disagrees
        best = result.predictions[0]["label"]
        assert result.agreement == pytest.approx(sum(label == best for label in result.member_labels) / 3)
    single = finetune.load_run(write_run(tmp_path / "single", members[0]))
    assert inference.predict_arrays(single, images[:1])[0].member_labels == []
    assert inference.predict_arrays(single, images[:1])[0].agreement is None


def test_one_forward_pass_per_batch_members_included(tmp_path, monkeypatch):
    run = finetune.load_run(write_run(tmp_path / "ensemble", build_ensemble([position_model(1), position_model(2)])))
    passes = []
    original = keras.Model.predict_on_batch

    def counted(model, batch):
        passes.append(np.asarray(batch[0] if isinstance(batch, list) else batch).shape)
        return original(model, batch)

    monkeypatch.setattr(keras.Model, "predict_on_batch", counted)
    results = inference.predict_arrays(run, [photo(seed) for seed in range(5)], tta="five_crop", batch_size=10)
    assert len(results) == 5
    assert passes == [(2, SOURCE, SOURCE, 3), (2, SOURCE, SOURCE, 3), (1, SOURCE, SOURCE, 3)]  # 10 views a pass


def test_images_of_any_size_and_mode_and_bad_shapes(run):
    image = photo(6)
    gray = image.mean(axis=2).astype(np.uint8)
    results = inference.predict_arrays(run, [image, gray, np.dstack([image, np.full(image.shape[:2], 255, np.uint8)])])
    np.testing.assert_allclose(results[2].probabilities, results[0].probabilities, atol=1e-6)  # opaque RGBA is RGB
    as_rgb = inference.predict_arrays(run, [np.repeat(gray[:, :, None], 3, axis=2)])[0]
    np.testing.assert_allclose(results[1].probabilities, as_rgb.probabilities, atol=1e-6)
    assert inference.predict_arrays(run, []) == []
    with pytest.raises(finetune.FinetuneError, match=r"Received: shape=\(4, 4, 5\)"):
        inference.predict_arrays(run, [np.zeros((4, 4, 5), np.uint8)])


def test_decode_image_reads_bytes_by_content_and_refuses_bombs():
    image = photo(7)
    np.testing.assert_array_equal(inference.decode_image(png_bytes(image)), image)
    with pytest.raises(inference.BadImageError, match="empty file"):
        inference.decode_image(b"")
    with pytest.raises(finetune.FinetuneError, match="not an image in a supported format"):
        inference.decode_image(b"plain words")
    with pytest.raises(inference.BadImageError, match="decompression bomb") as refused:
        inference.decode_image(png_bytes(photo(8, size=(200, 100))), max_megapixels=0.01)
    assert refused.value.reason.startswith("200x100 pixels")
    assert "center" in inference.TTA_MODES and inference.TTA_MODES[0] == "none"
