"""Seeds for random augmentation that give the same result however tf.data schedules the work.

A `keras.random.SeedGenerator` is a variable that every draw advances. In a `tf.data` map run
with `num_parallel_calls`, batches are augmented concurrently, so which batch gets which state
depends on thread timing: the pipeline is not reproducible. Here a batch's seed is instead a
function of the configured seed and of the batch's own pixels (a fingerprint of the shuffled
batch), so it is the same on every run and different for every batch and epoch (the shuffle
order changes each epoch, and with it every batch's fingerprint).

`StatelessSeeds` hands such a seed to the Keras preprocessing layers, which accept a
`SeedGenerator` as `seed=`: every draw it gives is a new seed derived from the batch seed.
"""

from __future__ import annotations

import keras
import tensorflow as tf

# Salts that keep the image operations and the mixing of one batch independent.
IMAGE_SALT = 0
MIXING_SALT = 1


def batch_seed(images, seed: int, salt: int = IMAGE_SALT):
    """An int32 [2] seed from `seed`, `salt` and the bytes of `images` (any shape, first axis the batch)."""
    per_image = tf.fingerprint(tf.reshape(images, [tf.shape(images)[0], -1]))  # [B, 8] uint8
    whole = tf.fingerprint(tf.reshape(per_image, [1, -1]))  # [1, 8]
    words = tf.bitcast(tf.reshape(whole, [2, 4]), tf.int32)  # [2]
    base = tf.constant([int(seed) & 0x7FFFFFFF, int(salt)], dtype=tf.int32)
    base = tf.random.experimental.stateless_fold_in(base, words[0])
    return tf.random.experimental.stateless_fold_in(base, words[1])


def derive(seed, index: int):
    """The `index`-th seed derived from an int [2] seed (stateless, XLA-compatible)."""
    return tf.random.experimental.stateless_fold_in(tf.cast(seed, tf.int32), index)


class StatelessSeeds(keras.random.SeedGenerator):
    """A `SeedGenerator` stand-in whose draws derive from one seed tensor instead of a variable.

    Keras' random functions call `next()` on a `SeedGenerator` they are given; this one returns
    `derive(seed, 1)`, `derive(seed, 2)`, ... so a Keras layer's `get_random_transformation(...,
    seed=StatelessSeeds(seed))` is a pure function of `seed`. It holds no state to save.
    """

    def __init__(self, seed):  # no super().__init__(): there is no variable to create
        self.name = "stateless_seeds"
        self._seed = seed
        self._draws = 0

    def next(self, ordered=True):
        self._draws += 1
        return derive(self._seed, self._draws)

    def get_config(self):
        raise TypeError("StatelessSeeds lives for one batch and is never saved.")
