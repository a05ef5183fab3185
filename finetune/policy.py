"""The transfer policy: what to freeze and what to finetune, from measured data size and similarity.

The course's table, as data:

    |                      | similar to ImageNet      | different from ImageNet               |
    |----------------------|--------------------------|---------------------------------------|
    | very little data     | linear (frozen features) | multistage_linear (features of stages)|
    | quite a lot of data  | finetune_top             | finetune_most                         |

**Size** is the number of labelled training images of the smallest class (the class the model
can least afford to overfit), with the median and the number of classes reported beside it.

**Similarity** is measured on the data, not guessed. A backbone's stages go from generic
(edges, textures) at the bottom to ImageNet-specific (object parts, classes) at the top. When
the data resembles ImageNet, the top stage's features separate its classes best; when it does
not (digits, X-rays, 28-pixel clothing), the ImageNet-specific top loses information that the
middle stages still carry, and a mid-stage beats the top. So we fit the same cheap classifier
(multinomial logistic regression on standardised, globally pooled features, its strength chosen
by 5-fold cross-validation on all labelled images, training and validation together, at most
`search_max_per_class` per class; `finetune.stages`) on every stage and compare:

    similarity = accuracy(top stage) - max(accuracy(any lower stage))

`similarity >= -margin` means similar (the top is as good as anything below it). We also report
how confident the ImageNet head is on the images (mean top-1 softmax probability), where the
backbone has its ImageNet head offline: a second, independent view of the same question
(photos of objects get confident guesses, digits get a flat distribution). It is reported and
explained; the decision uses the first measure, which needs no head and is about the user's own
classes rather than ImageNet's. Both come from features computed once and cached.
"""

from __future__ import annotations

import dataclasses
import math
import statistics

import numpy as np

# STRATEGIES is defined with the rest of the configuration, and read from here by training.
from finetune.config import STRATEGIES, DataConfig, ModelConfig, PolicyConfig, TrainConfig
from finetune.errors import FinetuneError

TABLE = {
    ("little", "similar"): "linear",
    ("little", "different"): "multistage_linear",
    ("lots", "similar"): "finetune_top",
    ("lots", "different"): "finetune_most",
}


def groups_to_unfreeze(strategy: str, num_groups: int, config: PolicyConfig | None = None) -> int:
    """How many freeze groups (from the top) a strategy trains.

    Args:
        strategy: one of `STRATEGIES`; the linear ones (and auto, undecided) train none.
        num_groups: the backbone's freeze groups (`len(spec.freeze_groups)`).
        config: the shares of finetune_top and finetune_most. Defaults to `PolicyConfig()`.
    """
    config = config or PolicyConfig()
    if strategy == "full":
        return num_groups
    if strategy == "finetune_top":
        return max(1, round(config.top_fraction * num_groups))
    if strategy == "finetune_most":
        return max(2, round(config.most_fraction * num_groups))
    return 0


def measure_size(labels: np.ndarray, num_classes: int) -> dict:
    counts = np.bincount(np.asarray(labels), minlength=num_classes)
    return {
        "num_classes": int(num_classes),
        "num_images": int(counts.sum()),
        "min_per_class": int(counts.min()),
        "median_per_class": float(statistics.median(counts.tolist())),
    }


def measure_similarity(stage_features: list[np.ndarray] | None, labels, endpoints, seed: int = 0,
                       imagenet_confidence: float | None = None, search=None) -> dict:
    """Cross-validated linear accuracy of every stage; the score is the top's minus the best lower one's.

    `search` is a `finetune.stages.StageSearch` already run on these features (training runs
    one anyway); without it the single-stage part of one is run here.
    """
    from finetune.stages import search_stage_heads

    labels = np.asarray(labels)
    if search is None:
        search = search_stage_heads(stage_features, labels, int(labels.max()) + 1, endpoints, max_average=1, seed=seed)
    singles = [search.single(index) for index in range(len(endpoints))]
    accuracies = [item.cv_accuracy for item in singles]
    top, lower = accuracies[-1], accuracies[:-1]
    best_lower = max(lower) if lower and not math.isnan(top) else top
    return {
        "stage_accuracies": dict(zip(endpoints, accuracies)),
        "stage_losses": {item.name: item.cv_loss for item in singles},
        "top_accuracy": top,
        "best_lower_accuracy": best_lower,
        "best_lower_stage": endpoints[int(np.argmax(lower))] if lower else endpoints[-1],
        "score": top - best_lower,
        "folds": search.folds,
        "images": search.images,
        "imagenet_confidence": imagenet_confidence,
        "chance": 1.0 / max(1, int(labels.max()) + 1),
    }


def decide(size: dict, similarity: dict, config: PolicyConfig | None = None) -> dict:
    """The strategy and the reasons, from measurements alone (no data or model needed).

    Args:
        size: from `measure_size`.
        similarity: from `measure_similarity`.
        config: the thresholds (`lots_per_class`, `similarity_margin`). Defaults to `PolicyConfig()`.
    """
    thresholds = config or PolicyConfig()
    amount = "lots" if size["min_per_class"] >= thresholds.lots_per_class else "little"
    score = similarity["score"]
    kind = "similar" if (score != score or score >= -thresholds.similarity_margin) else "different"
    strategy = TABLE[(amount, kind)]
    reasons = [
        f"Size: the smallest class has {size['min_per_class']} training images "
        f"({'at least' if amount == 'lots' else 'fewer than'} {thresholds.lots_per_class}): {'quite a lot of' if amount == 'lots' else 'very little'} data.",
        f"Similarity: a linear classifier on the top stage's features reaches {similarity['top_accuracy']:.3f} "
        f"(cross-validated), the best lower stage ({similarity['best_lower_stage']}) {similarity['best_lower_accuracy']:.3f}; "
        f"the difference {score:+.3f} is {'at least' if kind == 'similar' else 'below'} -{thresholds.similarity_margin}: "
        + ("the ImageNet-specific top serves these classes as well as anything below it, so the data is similar to ImageNet."
           if kind == "similar" else "the top stage loses what lower, more generic stages still carry, so the data is different from ImageNet."),
    ]
    confidence = similarity.get("imagenet_confidence")
    if confidence is not None:
        reasons.append(
            f"The ImageNet head's mean top-1 probability on these images is {confidence:.2f} "
            f"({'confident: they look like ImageNet photos' if confidence >= 0.3 else 'unsure: they look unlike ImageNet photos'}); "
            "this is reported, not used in the decision."
        )
    explanations = {
        "linear": "With little data close to ImageNet, the frozen top features are already good: train only a linear classifier on them (seconds, and nothing to overfit).",
        "multistage_linear": "With little data unlike ImageNet, finetuning would overfit and the top features are too ImageNet-specific: train linear classifiers on features of several stages and keep the best on validation data.",
        "finetune_top": "With plenty of data close to ImageNet, finetune a few top blocks at a low rate on top of the fitted head: the lower, generic features need no change.",
        "finetune_most": "With plenty of data unlike ImageNet, finetune most of the network at a low rate: even mid-level features must adapt.",
    }
    reasons.append(explanations[strategy])
    return {
        "strategy": strategy,
        "size": size,
        "similarity": similarity,
        "thresholds": dataclasses.asdict(thresholds),
        "reasons": reasons,
        "table": {f"{amount_key}+{kind_key}": value for (amount_key, kind_key), value in TABLE.items()},
    }


def format_policy(policy: dict) -> str:
    size, similarity = policy["size"], policy["similarity"]
    lines = [
        f"Strategy: {policy['strategy']}",
        "",
    ]
    size_choice = policy.get("image_size_choice") or policy.get("image_size")
    if isinstance(size_choice, dict):
        lines.append(f"Image size: {size_choice['reason']}")
    lines += [
        f"Size: {size['num_classes']} classes, {size['num_images']} training images, "
        f"smallest class {size['min_per_class']}, median {size['median_per_class']:g}",
        "Similarity (cross-validated linear accuracy per stage, bottom to top):",
    ]
    for stage, accuracy in similarity["stage_accuracies"].items():
        lines.append(f"  {stage:<32} {accuracy:.3f}")
    lines.append(f"  score (top - best lower): {similarity['score']:+.3f}")
    if similarity.get("imagenet_confidence") is not None:
        lines.append(f"  ImageNet head confidence: {similarity['imagenet_confidence']:.3f}")
    thresholds = policy["thresholds"]
    lines.append(f"Thresholds: lots_per_class={thresholds['lots_per_class']}, similarity_margin={thresholds['similarity_margin']}")
    lines.append("")
    lines.append("Why: " + " ".join(policy["reasons"]))
    return "\n".join(lines)


def imagenet_confidence(spec, weights_source: str, top_features: np.ndarray) -> float | None:
    """Mean top-1 probability of the ImageNet head on pooled top features, where the head is offline.

    The torchvision MobileNetV2 import carries its head; its input is exactly the pooled top
    stage, so no second forward pass is needed. Backbones whose weights did not come from that
    import (`spec.weights_sources` without it, or another source this time) report None.
    """
    from finetune.zoo.spec import TORCHVISION_IMPORT

    if TORCHVISION_IMPORT not in spec.weights_sources or "torchvision" not in weights_source:
        return None
    from finetune.zoo.weights import read_layer_weights, torchvision_cache_path

    try:
        layer_weights, _ = read_layer_weights(torchvision_cache_path())
        kernel, bias = layer_weights["predictions"]
    except (OSError, KeyError, ValueError):
        return None
    if kernel.shape[0] != top_features.shape[1]:
        return None
    logits = top_features @ kernel + bias
    logits -= logits.max(axis=1, keepdims=True)
    probabilities = np.exp(logits)
    probabilities /= probabilities.sum(axis=1, keepdims=True)
    return float(probabilities.max(axis=1).mean())


def measure_policy(spec, search, *, weights_source: str, top_features: np.ndarray, train_labels, num_classes: int,
                   config: PolicyConfig | None = None) -> dict:
    """The decision from a stage search already run (as training runs one) and the training labels.

    Args:
        spec: the backbone's `finetune.zoo.BackboneSpec`.
        search: a `finetune.stages.StageSearch` over the spec's stage endpoints.
        weights_source: where the backbone's weights came from (the ImageNet head's confidence
            is reported only for weights that carry it).
        top_features: pooled features of the top stage of the training images.
        train_labels: labels of the training images (the size is measured on them).
        num_classes: the number of classes.
        config: the thresholds. Defaults to `PolicyConfig()`.
    """
    similarity = measure_similarity(
        None, train_labels, list(spec.stage_endpoints), search=search,
        imagenet_confidence=imagenet_confidence(spec, weights_source, top_features),
    )
    return decide(measure_size(train_labels, num_classes), similarity, config)


def labelled_pool(train_features, train_labels, val_features=None, val_labels=None):
    """Every labelled image's stage features and labels: training and validation together."""
    if val_features is None or val_labels is None or len(val_labels) == 0:
        return list(train_features), np.asarray(train_labels)
    features = [np.concatenate([train, val], axis=0) for train, val in zip(train_features, val_features)]
    return features, np.concatenate([np.asarray(train_labels), np.asarray(val_labels)])


def measure(data: DataConfig, model: ModelConfig, policy: PolicyConfig | None = None, *,
            batch_size: int = TrainConfig.batch_size, seed: int = TrainConfig.seed, verbose: int = 0) -> dict:
    """`finetune policy DATA_DIR`: measures size (training split) and similarity (all labelled images) and decides.

    Features are cached, so a `finetune train` on the same data afterwards does not compute
    them again.

    Args:
        data: the images (`source`, `val_fraction`, `image_size`, `max_megapixels`, `cache`).
        model: the backbone whose features are measured (`backbone`, `weights`, `alpha`).
        policy: the thresholds of the decision. Defaults to `PolicyConfig()`.
        batch_size: images per forward pass. Defaults to `TrainConfig.batch_size` (32).
        seed: of the validation split and the cross-validation folds. Defaults to 0.
        verbose: 1 shows progress bars. Defaults to 0.

    Returns:
        `decide`'s dict, with the backbone's name, the image size and the data source added.

    Example:

    ```python
    decision = measure(DataConfig("photos/"), ModelConfig("mobilenet_v2_torchvision"))
    print(format_policy(decision))
    ```
    """
    from finetune import data as data_module
    from finetune import zoo
    from finetune.features import stage_features
    from finetune.input_size import resolve_image_size
    from finetune.stages import search_stage_heads

    if not data.source:
        raise FinetuneError("No data given: set `data.source` to a folder with one subfolder per class, or tfds:NAME. "
                            f"Received: data.source={data.source!r}")
    policy = policy or PolicyConfig()
    spec = zoo.get_spec(model.backbone)
    source = data_module.discover(data.source, data.val_fraction, seed, max_files=data.max_files)
    # The size training would use: the requested one, or the one it would choose (finetune.input_size).
    choice = resolve_image_size(source, spec, TrainConfig(data=data, model=model, policy=policy,
                                                          batch_size=batch_size, seed=seed, verbose=verbose))
    image_size, network, weights_source = choice.size, choice.backbone, choice.weights_source
    identity = {"backbone": spec.name, "weights": weights_source, "alpha": model.alpha}
    splits = {}
    for name in ("train", "val"):
        if name in source.splits and len(source.splits[name].paths):
            split = data_module.load_split(source, name, image_size, data.max_megapixels, cache=data.cache, verbose=verbose)
            splits[name] = (stage_features(network, spec, split.images, identity, batch_size, verbose), split.labels)
    train_features, train_labels = splits["train"]
    features, labels = labelled_pool(train_features, train_labels, *splits.get("val", (None, None)))
    search = search_stage_heads(features, labels, len(source.class_names), list(spec.stage_endpoints), max_average=1,
                                max_per_class=policy.search_max_per_class, seed=seed)
    decision = measure_policy(spec, search, weights_source=weights_source, top_features=train_features[-1],
                              train_labels=train_labels, num_classes=len(source.class_names), config=policy)
    decision.update(backbone=spec.name, image_size=image_size, data=str(data.source))
    decision["image_size_choice"] = choice.to_dict()
    return decision
