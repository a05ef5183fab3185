"""What finetuning trains and what it keeps: freeze groups and the BatchNorm rules.

    unfrozen = unfreeze_top_groups(backbone, spec, count=3)   # the top 3 groups of the spec train
    freeze_batch_norm(backbone)                               # BatchNorm in inference mode
"""

from __future__ import annotations


def all_layers(model) -> list:
    """Every layer inside `model`, nested models' layers included (depth first), without `model`."""
    found = []
    for layer in getattr(model, "layers", []):
        found.append(layer)
        found += all_layers(layer)
    return found


def freeze_batch_norm(backbone) -> None:
    """Sets every BatchNormalization layer non-trainable, which in Keras 3 also means inference mode.

    Why: finetuning batches are small and come from a new distribution; updating the moving
    statistics from them replaces ImageNet's with noisy estimates, and the model then behaves
    differently at test time than in training (the course's train-vs-test BatchNorm pitfall).
    The Keras guide's idiom, calling the base model with `training=False`, is not enough in
    Keras 3: `fit()` overrides it once layers are unfrozen (keras-team/keras#20285).
    """
    import keras

    for layer in all_layers(backbone):
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.trainable = False


def track_batch_statistics(backbone, momentum: float = 0.9) -> None:
    """Lowers BatchNorm momentum so the moving statistics follow a network trained from scratch.

    keras.applications' MobileNets use momentum 0.999: the moving averages keep most of their
    initial values (mean 0, variance 1) for thousands of steps, so a network trained from scratch
    for a few epochs is right in training mode and at chance in inference mode (measured here:
    0.81 training accuracy, 0.10 validation), the course's train-vs-test BatchNorm pitfall.
    """
    import keras

    for layer in all_layers(backbone):
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.momentum = min(layer.momentum, momentum)


def unfreeze_top_groups(backbone, spec, count: int, *, pretrained: bool = True) -> list[str]:
    """Makes the top `count` freeze groups trainable and everything else frozen; returns their layers.

    BatchNorm layers stay frozen (inference mode) when the backbone is pretrained. A backbone
    trained from scratch (`weights="none"`) has no statistics worth keeping, and without
    normalisation a deep network barely trains: its BatchNorm layers in unfrozen groups train.
    """
    from finetune.zoo import layers_of_group

    backbone.trainable = True
    for layer in backbone.layers:
        layer.trainable = False
    unfrozen = []
    for group_index in range(min(count, len(spec.freeze_groups))):
        for layer in layers_of_group(backbone, spec, group_index):
            layer.trainable = True
            unfrozen.append(layer.name)
    if pretrained:
        freeze_batch_norm(backbone)
    else:
        track_batch_statistics(backbone)
    return unfrozen
