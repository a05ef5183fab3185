"""DiscriminativeAdam: the backbone's variables move by the multiplier times the head's update."""

import keras
import numpy as np
import pytest

from finetune.optimizers import DiscriminativeAdam

GRADIENTS = [np.array([0.5, -2.0, 0.01], dtype="float32"), np.array([-1.0, 0.3, 4.0], dtype="float32"),
             np.array([0.2, 0.2, -0.7], dtype="float32")]


def _variables(count):
    # Zeros: a variable's value is then its update exactly, with no rounding against a larger start.
    return [keras.Variable(np.zeros(3, dtype="float32"), name=f"weights_{index}") for index in range(count)]


def _values(variable):
    return keras.ops.convert_to_numpy(variable)


@pytest.mark.parametrize("multiplier", [0.1, 0.5])
def test_slow_variables_move_by_the_multiplier_times_the_others(multiplier):
    fast, slow = _variables(2)
    optimizer = DiscriminativeAdam(slow_variables=[slow], slow_multiplier=multiplier, learning_rate=0.01)
    optimizer.apply_gradients([(GRADIENTS[0], fast), (GRADIENTS[0], slow)])
    fast_update, slow_update = _values(fast), _values(slow)
    # Adam's first step moves each weight by about the rate, against the gradient's sign.
    np.testing.assert_allclose(fast_update, -0.01 * np.sign(GRADIENTS[0]), rtol=1e-3)
    np.testing.assert_allclose(slow_update, multiplier * fast_update, rtol=1e-5)


def test_multiplier_one_is_plain_adam():
    ours, theirs = _variables(1), _variables(1)
    discriminative = DiscriminativeAdam(slow_variables=ours, slow_multiplier=1.0, learning_rate=0.01)
    adam = keras.optimizers.Adam(learning_rate=0.01)
    for gradient in GRADIENTS:
        discriminative.apply_gradients([(gradient, ours[0])])
        adam.apply_gradients([(gradient, theirs[0])])
    np.testing.assert_array_equal(_values(ours[0]), _values(theirs[0]))
    assert np.abs(_values(ours[0])).min() > 0


def test_get_config_round_trips_the_multiplier():
    optimizer = DiscriminativeAdam(slow_multiplier=0.25, learning_rate=0.003, beta_1=0.8)
    config = optimizer.get_config()
    assert config["slow_multiplier"] == 0.25
    restored = DiscriminativeAdam.from_config(config)
    assert restored.slow_multiplier == 0.25 and restored.beta_1 == 0.8
    assert float(keras.ops.convert_to_numpy(restored.learning_rate)) == pytest.approx(0.003)


@pytest.mark.parametrize("multiplier", [0.0, -0.1, 1.5])
def test_a_multiplier_outside_zero_to_one_is_refused(multiplier):
    with pytest.raises(ValueError, match=f"Received: slow_multiplier={multiplier}"):
        DiscriminativeAdam(slow_multiplier=multiplier)
