"""The classifier built around a backbone: raw RGB in, preprocessing, backbone, pooling, softmax out.

    model = build_classifier(backbone, spec.preprocessing, num_classes=10, image_size=128)
    features = feature_extractor(model)               # image -> pooled features
    cut = truncated_backbone(backbone, spec, [2, 4])  # the backbone cut after stages 2 and 4
"""

from __future__ import annotations


def build_classifier(backbone, preprocessing: str, num_classes: int, image_size: int, *, dropout: float = 0.2):
    """Raw RGB image (0..255) -> preprocessing -> backbone -> pooling -> dropout -> softmax.

    A backbone with several outputs (stages) has each pooled and the results concatenated.

    Args:
        backbone: a Keras model from `finetune.zoo.build_backbone` (or `truncated_backbone`).
        preprocessing: the spec's preprocessing mode (`finetune.zoo.Preprocess`), inside the
            graph so that inference cannot use the wrong normalisation.
        num_classes: outputs of the softmax.
        image_size: the square input size in pixels.
        dropout: the rate before the classifier. Defaults to 0.2.
    """
    import keras

    from finetune.zoo import Preprocess

    inputs = keras.Input((image_size, image_size, 3), name="image")
    features = backbone(Preprocess(preprocessing, name="preprocess")(inputs))
    if isinstance(features, (list, tuple)):
        pooled = [keras.layers.GlobalAveragePooling2D(name=f"pool_{index}")(item) for index, item in enumerate(features)]
        features = keras.layers.Concatenate(name="pool")(pooled)
    else:
        features = keras.layers.GlobalAveragePooling2D(name="pool")(features)
    features = keras.layers.Dropout(dropout, name="dropout")(features)
    outputs = keras.layers.Dense(num_classes, activation="softmax", name="classifier")(features)
    return keras.Model(inputs, outputs, name="classifier_model")


def feature_extractor(model):
    """The part of a classifier built by `build_classifier` that computes the pooled features."""
    import keras

    return keras.Model(model.inputs, model.get_layer("pool").output, name="features")


def truncated_backbone(backbone, spec, stage_indices):
    """The backbone cut after the given stage endpoints (one output per stage)."""
    import keras

    from finetune.zoo import stage_outputs

    outputs = stage_outputs(backbone, spec)
    chosen = [outputs[index] for index in stage_indices]
    return keras.Model(backbone.inputs, chosen[0] if len(chosen) == 1 else chosen, name=f"{backbone.name}_cut")


def set_head(model, head) -> None:
    """Puts a fitted linear head (`finetune.head.LinearHead`) into the model's classifier layer."""
    model.get_layer("classifier").set_weights([head.kernel, head.bias])
