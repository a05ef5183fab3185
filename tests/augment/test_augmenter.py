"""`augment.augmenter`: the per-image training augmentation as one layer, seeded, in the dataset or the model."""

import keras
import numpy as np
import pytest

import augment
from augment.augmenter import Augmenter
from finetune.data import make_dataset


def coordinate_images(count: int, size: int) -> np.ndarray:
    """Pixel (row, column) of image i holds (row, column, i): every pixel says where it came from."""
    rows, columns = np.meshgrid(np.arange(size), np.arange(size), indexing="ij")
    return np.stack([np.stack([rows, columns, np.full_like(rows, i)], -1) for i in range(count)]).astype(np.float32)


def random_images(count: int = 6, size: int = 24, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0, 255, (count, size, size, 3)).astype(np.float32)


def test_the_same_seed_gives_the_same_views_and_another_seed_other_views():
    images = random_images()
    first = np.asarray(augment.build_augmenter("standard", seed=3)(images))
    again = np.asarray(augment.build_augmenter("standard", seed=3)(images))
    other = np.asarray(augment.build_augmenter("standard", seed=4)(images))
    np.testing.assert_array_equal(first, again)
    assert not np.allclose(first, other, atol=1.0)


def test_none_has_no_augmenter_even_with_mixing():
    assert augment.build_augmenter("none") is None
    assert augment.build_augmenter("none", mixup=0.2, cutmix=1.0) is None  # mixing is not a per-image operation
    assert augment.build_augmenter("none", vertical_flip=True) is not None


def test_a_flip_only_augmenter_gives_each_image_or_its_mirror():
    images = coordinate_images(32, 10)
    output = np.asarray(augment.build_augmenter("none", horizontal_flip=True, seed=0)(images))
    mirrored = [not np.array_equal(output[i], images[i]) for i in range(len(images))]
    for image, flipped in enumerate(mirrored):
        np.testing.assert_array_equal(output[image], images[image][:, ::-1] if flipped else images[image])
    assert 0 < sum(mirrored) < len(images)  # a coin per image, not one per batch


@pytest.mark.parametrize("preset", ["light", "standard", "strong"])
def test_presets_keep_shape_dtype_and_range(preset):
    images = random_images(5, 32)
    output = np.asarray(augment.build_augmenter(preset, seed=0)(images))
    assert output.shape == images.shape and output.dtype == np.float32
    assert output.min() >= 0 and output.max() <= 255
    assert not np.array_equal(output, images)


def test_dataset_placement_is_off_only_when_told_not_training():
    images = random_images()
    augmenter = augment.build_augmenter("standard", seed=0)
    np.testing.assert_array_equal(np.asarray(augmenter(images, training=False)), images)
    assert not np.allclose(np.asarray(augmenter(images)), images, atol=1.0)


def test_an_augmenter_rebuilt_from_its_config_augments_the_same():
    images = random_images()
    augmenter = augment.build_augmenter("strong", seed=7)
    rebuilt = Augmenter.from_config(augmenter.get_config())
    assert rebuilt.options == augmenter.options
    np.testing.assert_array_equal(np.asarray(rebuilt(images)), np.asarray(augmenter(images)))


def dataset_batches(seed, images, labels):
    augmenter = augment.build_augmenter("strong", seed=seed)
    dataset = make_dataset(images, labels, batch_size=8, shuffle=True, seed=0, augment=augmenter, repeat=True)
    return [batch.numpy() for batch, _ in dataset.take(8)]


def test_the_parallel_pipeline_is_deterministic_for_a_seed():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, (24, 24, 24, 3)).astype(np.uint8)
    labels = rng.integers(0, 3, 24)
    first, second = dataset_batches(1, images, labels), dataset_batches(1, images, labels)
    for a, b in zip(first, second):
        np.testing.assert_array_equal(a, b)
    other = dataset_batches(2, images, labels)
    assert not np.array_equal(first[0], other[0])
    # Epochs differ: batches 0-2 and 3-5 hold the same images, shuffled and augmented anew.
    assert not np.array_equal(np.sort(first[0].ravel()), np.sort(first[3].ravel()))


def small_classifier(size: int = 16) -> keras.Model:
    keras.utils.set_random_seed(0)
    inputs = keras.Input((size, size, 3))
    features = keras.layers.GlobalAveragePooling2D()(keras.layers.Rescaling(1 / 255)(inputs))
    return keras.Model(inputs, keras.layers.Dense(2, activation="softmax")(features), name="small")


def test_in_model_placement_augments_only_while_training(tmp_path):
    augmenter = augment.build_augmenter("standard", seed=0, placement="model")
    inputs = keras.Input((16, 16, 3))
    model = keras.Model(inputs, keras.layers.GlobalAveragePooling2D()(inputs))
    training_model = augment.with_augmentation(model, augmenter)
    images = random_images(4, 16)
    np.testing.assert_allclose(training_model.predict(images, verbose=0), model.predict(images, verbose=0), atol=1e-4)
    np.testing.assert_allclose(np.asarray(training_model(images)), np.asarray(model(images)), atol=1e-4)
    assert not np.allclose(np.asarray(training_model(images, training=True)), np.asarray(model(images)), atol=1e-2)
    path = tmp_path / "augmented.keras"
    training_model.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    assert loaded.get_layer("augmenter").options == augmenter.options


def test_training_the_in_model_wrapper_trains_the_model_itself():
    model = small_classifier()
    before = [weight.copy() for weight in model.get_weights()]
    training_model = augment.with_augmentation(model, augment.build_augmenter("light", seed=0, placement="model"))
    assert {id(weight) for weight in training_model.trainable_weights} == {id(weight) for weight in model.trainable_weights}
    training_model.compile(keras.optimizers.SGD(0.5), loss="sparse_categorical_crossentropy")
    images, labels = random_images(8, 16), np.array([0, 1] * 4)
    training_model.fit(images, labels, epochs=2, batch_size=4, verbose=0)
    assert any(not np.allclose(old, new) for old, new in zip(before, model.get_weights()))
    # What was trained is in `model`, which is what gets saved and exported.
    np.testing.assert_allclose(model.predict(images, verbose=0), training_model.predict(images, verbose=0), atol=1e-6)
