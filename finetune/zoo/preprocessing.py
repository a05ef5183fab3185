"""The preprocessing a backbone's ImageNet weights expect, as a layer inside the model.

Keeping it in the model (rather than in the data pipeline) means a saved model takes raw RGB
pixels and can never be fed the wrong mean and standard deviation.
"""

from __future__ import annotations

import keras
from keras import ops

from finetune.errors import check_choice
from finetune.zoo.spec import PREPROCESSING_MODES as MODES

# The constants of `keras.applications.imagenet_utils.preprocess_input`.
TORCH_MEAN = (0.485, 0.456, 0.406)
TORCH_STD = (0.229, 0.224, 0.225)
CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)


def preprocess(images, mode: str, dtype: str = "float32"):
    """Maps RGB images with values 0..255 (channels last) to what a backbone expects.

    Args:
        images: array or tensor of shape (..., 3), any numeric dtype.
        mode: "tf" (to [-1, 1]), "torch" (x/255, then ImageNet mean and standard deviation),
            "caffe" (RGB to BGR, then minus the ImageNet mean) or "none" (unchanged: the
            backbone rescales inside itself).
        dtype: the float dtype to compute in. Defaults to "float32".

    The operations and their order are those of `keras.applications.*.preprocess_input`, so
    the results agree to the last bit on CPU.
    """
    check_choice("mode", mode, MODES)
    images = ops.cast(images, dtype)
    if mode == "tf":
        return images / 127.5 - 1.0
    if mode == "torch":
        mean = ops.convert_to_tensor(TORCH_MEAN, dtype=dtype)
        std = ops.convert_to_tensor(TORCH_STD, dtype=dtype)
        return (images / 255.0 - mean) / std
    if mode == "caffe":
        return ops.flip(images, axis=-1) - ops.convert_to_tensor(CAFFE_MEAN_BGR, dtype=dtype)
    return images


@keras.saving.register_keras_serializable(package="finetune")
class Preprocess(keras.layers.Layer):
    """Maps raw RGB pixels (0..255) to the input a backbone's weights expect.

    Args:
        mode: one of "tf", "torch", "caffe", "none"; a backbone's `BackboneSpec.preprocessing`.
            Defaults to "tf".

    Example:

    ```python
    inputs = keras.Input((224, 224, 3))
    x = Preprocess(get_spec("resnet50").preprocessing)(inputs)  # "caffe"
    features = build_backbone("resnet50", weights="none")(x)
    ```
    """

    def __init__(self, mode: str = "tf", **kwargs):
        super().__init__(**kwargs)
        check_choice("mode", mode, MODES)
        self.mode = mode

    def call(self, inputs):
        return preprocess(inputs, self.mode, dtype=self.compute_dtype)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config["mode"] = self.mode
        return config
