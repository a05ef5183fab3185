"""The fitted temperature inside the saved model: a registered layer, so model.keras loads with safe_mode=True.

    calibrated = with_temperature(model, 0.8)     # ... -> classifier -> temperature
    core, temperature = split_temperature(calibrated)  # for TTA and ensembles: average first, then scale

A model whose probabilities are averaged (TTA views, ensemble members) is calibrated as a whole:
`finetune.inference` and `finetune.ensemble` take the temperature off the end, average, and put
it back after the average (`split_temperature`), so one T applies to what is finally predicted.
See `finetune.calibration` for the fit.
"""

from __future__ import annotations

import keras
from keras import ops

LAYER_NAME = "temperature"


@keras.saving.register_keras_serializable(package="finetune")
class Temperature(keras.layers.Layer):
    """Probabilities in, softmax(log(p) / temperature) out (temperature scaling of a softmax's output).

    Args:
        temperature: T > 0; 1.0 keeps the probabilities. Defaults to 1.0.
    """

    def __init__(self, temperature: float = 1.0, **kwargs):
        super().__init__(**kwargs)
        if not float(temperature) > 0:
            raise ValueError(f"`temperature` must be positive. Received: temperature={temperature}")
        self.temperature = float(temperature)

    def call(self, probabilities):
        # In float32 whatever the compute dtype: a softmax of float16 logs loses the small classes.
        probabilities = ops.cast(probabilities, "float32")
        return ops.softmax(ops.log(ops.clip(probabilities, 1e-12, 1.0)) / self.temperature, axis=-1)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "temperature": self.temperature}


def with_temperature(model, temperature: float | None, name: str | None = None):
    """`model` with `Temperature(temperature)` last, replacing one it had (1.0: none; None: `model` unchanged)."""
    if temperature is None:
        return model
    core, _ = split_temperature(model)
    if float(temperature) == 1.0:
        return core
    inputs = core.inputs[0] if len(core.inputs) == 1 else core.inputs
    outputs = Temperature(temperature, name=LAYER_NAME)(core.outputs[0])
    return keras.Model(inputs, outputs, name=name or core.name)


def split_temperature(model):
    """(the model before its final `Temperature` layer, its temperature), or (model, None) without one."""
    layer = model.layers[-1] if model.layers else None
    if not isinstance(layer, Temperature) or len(model.outputs) != 1:
        return model, None
    inputs = model.inputs[0] if len(model.inputs) == 1 else model.inputs
    return keras.Model(inputs, layer.input, name=model.name), layer.temperature


def model_temperature(model) -> float | None:
    """The temperature a model applies last, or None."""
    layer = model.layers[-1] if getattr(model, "layers", None) else None
    return layer.temperature if isinstance(layer, Temperature) else None
