"""Test-time augmentation: exact crop geometry, one forward pass, averaging, saving, choosing a mode."""

import keras
import numpy as np
import pytest

from augment.errors import AugmentError
from augment.tta import (
    MODES,
    TTAAverage,
    TTACrops,
    build_tta_model,
    choose_tta,
    resolve_mode,
    source_size,
    view_count,
    view_probabilities,
)

SIZE = 28  # source sizes: 32 for the crops (28 * 256 / 224), 80 for multiscale


def coordinate_images(count: int, size: int) -> np.ndarray:
    """Images whose pixel (row, column) holds (row, column, image index): a crop says where it came from."""
    rows, columns = np.meshgrid(np.arange(size), np.arange(size), indexing="ij")
    return np.stack(
        [np.stack([rows, columns, np.full_like(rows, index)], axis=-1) for index in range(count)]
    ).astype(np.float32)


def test_source_sizes_and_view_counts():
    assert [source_size(mode, 224) for mode in MODES] == [224, 256, 224, 256, 256, 640]
    assert source_size("ten_crop", SIZE) == 32 and source_size("multiscale", SIZE) == 80
    assert [view_count(mode) for mode in MODES] == [1, 1, 2, 5, 10, 50]


def test_ten_crop_corners_are_the_corners_and_mirrors_follow():
    source = source_size("ten_crop", SIZE)
    images = coordinate_images(2, source)
    crops = np.asarray(TTACrops("ten_crop", SIZE)(images))
    assert crops.shape == (2 * 10, SIZE, SIZE, 3) and crops.dtype == np.float32
    offset = source - SIZE
    centre = offset // 2
    starts = [(0, 0), (0, offset), (offset, 0), (offset, offset), (centre, centre)]
    for image in range(2):
        views = crops[image * 10 : (image + 1) * 10]
        for view, (top, left) in enumerate(starts):
            expected = images[image, top : top + SIZE, left : left + SIZE]
            np.testing.assert_array_equal(views[view], expected)
            np.testing.assert_array_equal(views[5 + view], expected[:, ::-1])
    # Image-major order: the third channel says which image each view came from.
    np.testing.assert_array_equal(crops[:, 0, 0, 2], np.repeat([0, 1], 10))


def test_center_flip_and_none_views():
    images = coordinate_images(3, SIZE)
    np.testing.assert_array_equal(np.asarray(TTACrops("none", SIZE)(images)), images)
    flipped = np.asarray(TTACrops("flip", SIZE)(images)).reshape(3, 2, SIZE, SIZE, 3)
    np.testing.assert_array_equal(flipped[:, 0], images)
    np.testing.assert_array_equal(flipped[:, 1], images[:, :, ::-1])
    source = coordinate_images(3, source_size("center", SIZE))
    centre = (source.shape[1] - SIZE) // 2
    np.testing.assert_array_equal(
        np.asarray(TTACrops("center", SIZE)(source)), source[:, centre : centre + SIZE, centre : centre + SIZE]
    )


def test_multiscale_has_ten_crops_at_each_scale():
    source = source_size("multiscale", SIZE)
    images = coordinate_images(1, source)
    crops = np.asarray(TTACrops("multiscale", SIZE)(images))
    assert crops.shape == (50, SIZE, SIZE, 3)
    # The largest scale is the source itself: its corners are exact.
    np.testing.assert_array_equal(crops[40], images[0, :SIZE, :SIZE])
    np.testing.assert_array_equal(crops[43], images[0, source - SIZE :, source - SIZE :])
    # The smallest scale is the whole image shrunk to the model's size: its five crops coincide.
    for view in range(1, 5):
        np.testing.assert_allclose(crops[view], crops[0])
    np.testing.assert_allclose(crops[5], crops[0][:, ::-1])


def test_wrong_source_size_is_a_clear_error():
    with pytest.raises(AugmentError, match="takes 32x32"):
        TTACrops("ten_crop", SIZE)(np.zeros((1, SIZE, SIZE, 3), np.float32))


def constant_model(size: int, probabilities) -> keras.Model:
    inputs = keras.Input((size, size, 3))
    zero = keras.layers.Dense(len(probabilities), kernel_initializer="zeros", bias_initializer="zeros")(
        keras.layers.GlobalAveragePooling2D()(inputs)
    )
    logits = keras.layers.Dense(
        len(probabilities), kernel_initializer="zeros", bias_initializer=keras.initializers.Constant(np.log(probabilities))
    )(zero)
    return keras.Model(inputs, keras.layers.Softmax()(logits))


def small_model(size: int, classes: int = 3, seed: int = 0) -> keras.Model:
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((size, size, 3))
    features = keras.layers.Conv2D(4, 3, activation="relu")(keras.layers.Rescaling(1 / 255)(inputs))
    features = keras.layers.GlobalAveragePooling2D()(features)
    return keras.Model(inputs, keras.layers.Dense(classes, activation="softmax")(features))


@pytest.mark.parametrize("combine", ["mean", "geometric"])
def test_a_constant_model_gives_the_same_output_under_every_mode(combine):
    expected = np.array([0.2, 0.5, 0.3], np.float32)
    model = constant_model(SIZE, expected)
    rng = np.random.default_rng(0)
    for mode in MODES:
        images = rng.uniform(0, 255, (4, source_size(mode, SIZE), source_size(mode, SIZE), 3)).astype(np.float32)
        output = build_tta_model(model, mode, combine=combine).predict(images, verbose=0)
        assert output.shape == (4, 3)
        np.testing.assert_allclose(output, np.tile(expected, (4, 1)), atol=1e-5, err_msg=mode)


def test_views_go_through_the_network_in_one_batched_pass():
    model = small_model(SIZE)
    batch_sizes = []
    original_call = model.call

    def counting_call(inputs, *args, **kwargs):
        batch_sizes.append(inputs.shape[0])
        return original_call(inputs, *args, **kwargs)

    model.call = counting_call
    images = np.zeros((3, 32, 32, 3), np.float32)
    build_tta_model(model, "ten_crop")(images)
    assert batch_sizes[-1] == 30


def test_average_and_geometric_mean():
    probabilities = np.array([[0.5, 0.5], [0.9, 0.1], [0.2, 0.8], [0.6, 0.4]], np.float32)  # 2 images x 2 views
    mean = np.asarray(TTAAverage(2, "mean")(probabilities))
    np.testing.assert_allclose(mean, [[0.7, 0.3], [0.4, 0.6]], atol=1e-6)
    geometric = np.asarray(TTAAverage(2, "geometric")(probabilities))
    expected = np.sqrt(probabilities[[0, 2]] * probabilities[[1, 3]])
    np.testing.assert_allclose(geometric, expected / expected.sum(1, keepdims=True), atol=1e-5)


def test_tta_model_saves_and_loads_with_safe_mode(tmp_path):
    model = small_model(SIZE)
    tta_model = build_tta_model(model, "ten_crop", combine="geometric")
    images = np.random.default_rng(1).uniform(0, 255, (2, 32, 32, 3)).astype(np.float32)
    path = tmp_path / "tta.keras"
    tta_model.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    np.testing.assert_allclose(loaded.predict(images, verbose=0), tta_model.predict(images, verbose=0), atol=1e-6)
    assert loaded.get_layer("tta_crops").mode == "ten_crop"


def test_none_returns_the_model_itself():
    model = small_model(SIZE)
    assert build_tta_model(model, "none") is model


def test_choose_tta_ties_go_to_the_cheaper_mode():
    model = constant_model(SIZE, np.array([0.2, 0.5, 0.3], np.float32))
    images = np.zeros((6, SIZE, SIZE, 3), np.uint8)
    mode, accuracies = choose_tta(model, images, [1, 1, 1, 0, 0, 2])
    assert mode == "none"
    assert set(accuracies) == {"none", "center", "flip", "five_crop", "ten_crop"}
    assert all(accuracy == pytest.approx(0.5) for accuracy in accuracies.values())


def left_half_model(size: int) -> keras.Model:
    """Says "stripe" (class 0) when the left half of the image is bright: p = 0.99 with a stripe there, 0.3 without.

    Blind to a stripe on the right, so only views that mirror the image can find it.
    """
    inputs = keras.Input((size, size, 3))
    left = keras.layers.Cropping2D(((0, 0), (0, size - size // 2)))(inputs)
    slope = (np.log(99.0) - np.log(0.3 / 0.7)) / (3 * 127.5)  # mean 127.5 per channel: a stripe over half the half
    dense = keras.layers.Dense(2, activation="softmax")
    outputs = dense(keras.layers.GlobalAveragePooling2D()(left))
    dense.set_weights([np.array([[slope, 0.0]] * 3, np.float32), np.array([np.log(0.3 / 0.7), 0.0], np.float32)])
    return keras.Model(inputs, outputs)


def test_choose_tta_picks_a_dearer_mode_that_is_more_accurate():
    images = np.zeros((6, SIZE, SIZE, 3), np.uint8)
    images[0:2, :, : SIZE // 4] = 255  # a stripe on the left: seen by every mode
    images[2:4, :, -(SIZE // 4):] = 255  # on the right: seen only in the mirror image
    labels = [0, 0, 0, 0, 1, 1]  # stripe, stripe, stripe, stripe, plain, plain
    mode, accuracies = choose_tta(left_half_model(SIZE), images, labels)
    assert accuracies["none"] == pytest.approx(4 / 6) and accuracies["flip"] == 1.0
    # Mirrored views averaged with the originals find every stripe: (0.99 + 0.3) / 2 > 0.5.
    assert mode == "flip"


def test_choose_tta_matches_each_mode_evaluated_alone():
    model = small_model(SIZE, seed=3)
    rng = np.random.default_rng(2)
    originals = rng.integers(0, 255, (8, 40, 40, 3)).astype(np.uint8)
    labels = rng.integers(0, 3, 8)

    def images_at(size):
        return np.stack([np.asarray(keras.ops.image.resize(image[None].astype(np.float32), (size, size)))[0]
                         for image in originals])

    _, accuracies = choose_tta(model, images_at, labels, modes=MODES)
    for mode in MODES:
        predictions = build_tta_model(model, mode).predict(images_at(source_size(mode, SIZE)), verbose=0)
        assert accuracies[mode] == pytest.approx(np.mean(predictions.argmax(1) == labels)), mode


def test_view_probabilities_shape():
    model = small_model(SIZE)
    probabilities = view_probabilities(model, np.zeros((5, 32, 32, 3), np.uint8), "five_crop")
    assert probabilities.shape == (5, 5, 3)
    np.testing.assert_allclose(probabilities.sum(-1), 1.0, atol=1e-5)


def test_resolve_mode_reads_what_training_recorded():
    assert resolve_mode("auto", "ten_crop") == "ten_crop"
    assert resolve_mode("auto", {"mode": "flip", "accuracies": {}}) == "flip"
    assert resolve_mode("auto", None) == "none"
    assert resolve_mode("center", "flip") == "center"
    with pytest.raises(AugmentError, match="Received: tta='eleven_crop'"):
        resolve_mode("eleven_crop", None)


@pytest.mark.parametrize("mode", ["ten_crop", "multiscale"])
def test_tta_converts_to_tflite_without_flex_ops(mode, tmp_path):
    import tensorflow as tf

    tta_model = build_tta_model(small_model(SIZE), mode)
    tta_model.export(str(tmp_path / "saved_model"), format="tf_saved_model", verbose=False)
    converter = tf.lite.TFLiteConverter.from_saved_model(str(tmp_path / "saved_model"))
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]  # no Flex: fails on CropAndResize
    interpreter = tf.lite.Interpreter(model_content=converter.convert())
    size = source_size(mode, SIZE)
    images = np.random.default_rng(0).uniform(0, 255, (2, size, size, 3)).astype(np.float32)
    input_index = interpreter.get_input_details()[0]["index"]
    interpreter.resize_tensor_input(input_index, images.shape)
    interpreter.allocate_tensors()
    interpreter.set_tensor(input_index, images)
    interpreter.invoke()
    output = interpreter.get_tensor(interpreter.get_output_details()[0]["index"])
    np.testing.assert_allclose(output, tta_model.predict(images, verbose=0), atol=1e-5)
