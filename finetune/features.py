"""Frozen-backbone features, computed once per (images, backbone, weights, size) and cached on disk.

What makes the linear strategies fast: a frozen backbone's features never change, so one
forward pass per image replaces one per epoch. Features are globally average-pooled outputs of
every stage endpoint of the zoo spec (bottom to top), all from the same forward pass.
"""

from __future__ import annotations

import hashlib
import json

import numpy as np

from finetune.config import finetune_home


# The last feature model built, with its backbone and key: the next split of the same run reuses
# it, so one traced predict step serves every split (a new model per split traced it again, about
# 1.4 s for MobileNetV2 at 224 px on a CPU, and fed TensorFlow's retracing warning). It shares the
# backbone's weights, so it computes with the weights the backbone has now. One slot, not a cache
# by backbone: the model holds its backbone, so no more than one backbone is kept alive.
_LAST_FEATURE_MODEL: list = []


def stage_feature_model(backbone, spec, image_size: int):
    """Raw RGB images (0..255) -> [pooled features of each stage endpoint], bottom to top.

    The same model for the same backbone and size as the call before.
    """
    key = (spec.name, tuple(spec.stage_endpoints), spec.preprocessing, int(image_size))
    if _LAST_FEATURE_MODEL and _LAST_FEATURE_MODEL[0][0] is backbone and _LAST_FEATURE_MODEL[0][1] == key:
        return _LAST_FEATURE_MODEL[0][2]
    model = _build_stage_feature_model(backbone, spec, image_size)
    _LAST_FEATURE_MODEL[:] = [(backbone, key, model)]
    return model


def _build_stage_feature_model(backbone, spec, image_size: int):
    import keras

    from finetune.zoo import Preprocess, stage_outputs

    pooled = [keras.layers.GlobalAveragePooling2D(name=f"stage_pool_{index}")(tensor)
              for index, tensor in enumerate(stage_outputs(backbone, spec))]
    stages = keras.Model(backbone.inputs, pooled, name="stages")
    inputs = keras.Input((image_size, image_size, 3), name="image")
    return keras.Model(inputs, stages(Preprocess(spec.preprocessing)(inputs)), name="stage_features")


def _cache_path(images: np.ndarray, identity: dict, backbone):
    digest = hashlib.sha1(json.dumps(identity, sort_keys=True).encode())
    digest.update(str(images.shape).encode())
    digest.update(np.ascontiguousarray(images).data)
    # The weights themselves, not only their name: two networks initialised at random (weights
    # "none", another seed) or a backbone a search finetuned must not share features.
    for weight in backbone.weights:
        digest.update(np.ascontiguousarray(np.asarray(weight)).data)
    return finetune_home() / "features" / f"{digest.hexdigest()}.npz"


def stage_features(backbone, spec, images: np.ndarray, identity: dict, batch_size: int = 32, verbose: int = 0,
                   cache: bool = True) -> list[np.ndarray]:
    """Pooled features of every stage endpoint for `images` (uint8 [N, S, S, 3]), bottom to top.

    `identity` names what determines the features besides the pixels (backbone name, weights
    source, alpha); with the pixels it keys the on-disk cache.
    """
    path = _cache_path(images, identity, backbone) if cache else None
    if path is not None and path.exists():
        with np.load(path) as stored:
            return [stored[f"stage_{index}"] for index in range(len(stored.files))]
    model = stage_feature_model(backbone, spec, images.shape[1])
    outputs = model.predict(images.astype(np.float32), batch_size=batch_size, verbose=verbose)
    outputs = [np.asarray(output, dtype=np.float32) for output in (outputs if isinstance(outputs, list) else [outputs])]
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_name(f".{path.stem}.tmp.npz")
        np.savez(temporary, **{f"stage_{index}": output for index, output in enumerate(outputs)})
        temporary.replace(path)
    return outputs

