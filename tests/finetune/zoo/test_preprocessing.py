"""Preprocess must give each backbone exactly what keras' own `preprocess_input` gives it."""

import keras
import numpy as np
import pytest

from finetune.errors import FinetuneError
from finetune.zoo import Preprocess, get_spec
from finetune.zoo.preprocessing import MODES, preprocess

applications = keras.applications

# The keras module whose `preprocess_input` each backbone's ImageNet weights were trained with.
KERAS_MODULE_OF = {
    "mobilenet_v2": applications.mobilenet_v2,
    "mobilenet_v2_torchvision": applications.mobilenet_v2,  # same input convention as keras MobileNetV2
    "mobilenet_v3_small": applications.mobilenet_v3,
    "mobilenet_v3_large": applications.mobilenet_v3,
    "efficientnet_b0": applications.efficientnet,
    "efficientnet_b1": applications.efficientnet,
    "efficientnet_b2": applications.efficientnet,
    "efficientnet_b3": applications.efficientnet,
    "efficientnetv2_b0": applications.efficientnet_v2,
    "resnet50": applications.resnet50,
    "resnet50_v2": applications.resnet_v2,
    "densenet121": applications.densenet,
    "xception": applications.xception,
    "inception_v3": applications.inception_v3,
    "convnext_tiny": applications.convnext,
    "vgg16": applications.vgg16,
}


def raw_images(seed=0, shape=(2, 5, 7, 3)):
    return np.random.default_rng(seed).uniform(0, 255, shape).astype("float32")


@pytest.mark.parametrize("name", sorted(KERAS_MODULE_OF))
def test_matches_keras_preprocess_input_of_each_backbone(name):
    images = raw_images()
    expected = KERAS_MODULE_OF[name].preprocess_input(images.copy())
    result = keras.ops.convert_to_numpy(Preprocess(get_spec(name).preprocessing)(images))
    np.testing.assert_allclose(result, expected, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("mode", ["tf", "torch", "caffe"])
def test_matches_imagenet_utils_to_the_last_bit(mode):
    images = raw_images(seed=1, shape=(3, 4, 4, 3))
    expected = applications.imagenet_utils.preprocess_input(images.copy(), mode=mode)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(preprocess(images, mode)), expected)


def test_none_passes_pixels_through_as_floats():
    images = np.arange(2 * 2 * 3, dtype="uint8").reshape(1, 2, 2, 3)
    result = keras.ops.convert_to_numpy(Preprocess("none")(images))
    assert result.dtype == np.float32
    np.testing.assert_array_equal(result, images.astype("float32"))


def test_accepts_uint8_pixels():
    images = np.full((1, 2, 2, 3), 255, dtype="uint8")
    np.testing.assert_allclose(keras.ops.convert_to_numpy(Preprocess("tf")(images)), 1.0)


def test_caffe_reverses_channels_before_subtracting_the_mean():
    pixel = np.array([[[[10.0, 20.0, 30.0]]]], dtype="float32")  # R, G, B
    result = keras.ops.convert_to_numpy(Preprocess("caffe")(pixel))
    np.testing.assert_allclose(result[0, 0, 0], [30 - 103.939, 20 - 116.779, 10 - 123.68], rtol=1e-6)


def test_unknown_mode_names_the_allowed_ones():
    with pytest.raises(FinetuneError, match=r"tf, torch, caffe, none\. Received: mode='bgr'"):
        Preprocess("bgr")


def test_config_round_trip():
    layer = Preprocess("torch", name="preprocess")
    clone = Preprocess.from_config(layer.get_config())
    assert (clone.mode, clone.name) == ("torch", "preprocess")


@pytest.mark.parametrize("mode", MODES)
def test_survives_save_and_load_in_safe_mode(tmp_path, mode):
    inputs = keras.Input((6, 6, 3))
    x = Preprocess(mode)(inputs)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(2, kernel_initializer=keras.initializers.RandomNormal(seed=0))(x)
    model = keras.Model(inputs, outputs)
    path = tmp_path / "tiny.keras"
    model.save(path)

    loaded = keras.saving.load_model(path, safe_mode=True)  # no custom_objects: registered by name

    images = raw_images(seed=2, shape=(2, 6, 6, 3))
    assert isinstance(loaded.layers[1], Preprocess) and loaded.layers[1].mode == mode
    np.testing.assert_allclose(loaded.predict(images, verbose=0), model.predict(images, verbose=0), rtol=1e-6)
