"""Adam with a lower learning rate for the backbone than for the head.

Keras 3's optimizers take one rate for all variables. Finetuning wants two: the head adapts
quickly while the pretrained backbone moves slowly (the course: about 1/10 of the rate), or its
good features are destroyed by large early updates. Scaling gradients instead would do nothing
under Adam, which normalises them away; so the rate itself is scaled per variable.
"""

from __future__ import annotations

import keras


class DiscriminativeAdam(keras.optimizers.Adam):
    """`keras.optimizers.Adam` whose rate is multiplied by `slow_multiplier` for `slow_variables`.

    Args:
        slow_variables: the variables to update slowly (the backbone's trainable ones).
        slow_multiplier: factor applied to their learning rate. Defaults to 0.1.
        **kwargs: passed to `keras.optimizers.Adam`.

    The optimizer is for training only: models are saved without it.
    """

    def __init__(self, slow_variables=(), slow_multiplier: float = 0.1, **kwargs):
        super().__init__(**kwargs)
        if not 0 < slow_multiplier <= 1:
            raise ValueError(f"`slow_multiplier` must be in (0, 1]. Received: slow_multiplier={slow_multiplier}")
        self.slow_multiplier = slow_multiplier
        self._slow_keys = {self._var_key(variable) for variable in slow_variables}

    def learning_rate_multiplier(self, variable) -> float:
        """The factor on the learning rate for `variable`: `slow_multiplier` for a slow variable, else 1."""
        return self.slow_multiplier if self._var_key(variable) in self._slow_keys else 1.0

    def update_step(self, gradient, variable, learning_rate):
        multiplier = self.learning_rate_multiplier(variable)
        if multiplier != 1.0:
            learning_rate = learning_rate * multiplier
        super().update_step(gradient, variable, learning_rate)

    def get_config(self):
        config = super().get_config()
        config["slow_multiplier"] = self.slow_multiplier
        return config
