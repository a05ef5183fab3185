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

from finetune.config import PolicyConfig

STRATEGIES = ("auto", "linear", "finetune_top", "finetune_most", "multistage_linear", "full")

TABLE = {
    ("little", "similar"): "linear",
    ("little", "different"): "multistage_linear",
    ("lots", "similar"): "finetune_top",
    ("lots", "different"): "finetune_most",
}


# The thresholds live with the rest of the configuration; this is their name here.
PolicyThresholds = PolicyConfig


def groups_to_unfreeze(strategy: str, num_groups: int, thresholds: PolicyThresholds | None = None) -> int:
    """How many freeze groups (from the top) a strategy trains."""
    thresholds = thresholds or PolicyThresholds()
    if strategy == "full":
        return num_groups
    if strategy == "finetune_top":
        return max(1, round(thresholds.top_fraction * num_groups))
    if strategy == "finetune_most":
        return max(2, round(thresholds.most_fraction * num_groups))
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


def decide(size: dict, similarity: dict, thresholds: PolicyThresholds | None = None) -> dict:
    """The strategy and the reasons, from measurements alone (no data or model needed)."""
    thresholds = thresholds or PolicyThresholds()
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
    stage, so no second forward pass is needed. Other backbones report None.
    """
    if spec.name not in ("mobilenet_v2", "mobilenet_v2_torchvision") or "torchvision" not in weights_source:
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


def measure_policy(spec, weights_source, search, top_features, train_labels, num_classes, thresholds=None) -> dict:
    """The decision from a stage search already run (as training runs one) and the training labels."""
    similarity = measure_similarity(
        None, train_labels, list(spec.stage_endpoints), search=search,
        imagenet_confidence=imagenet_confidence(spec, weights_source, top_features),
    )
    return decide(measure_size(train_labels, num_classes), similarity, thresholds)


def labelled_pool(train_features, train_labels, val_features=None, val_labels=None):
    """Every labelled image's stage features and labels: training and validation together."""
    if val_features is None or val_labels is None or len(val_labels) == 0:
        return list(train_features), np.asarray(train_labels)
    features = [np.concatenate([train, val], axis=0) for train, val in zip(train_features, val_features)]
    return features, np.concatenate([np.asarray(train_labels), np.asarray(val_labels)])


def measure(data_dir: str, backbone: str = "mobilenet_v2_torchvision", weights: str = "imagenet", alpha=None,
            image_size=None, batch_size: int = 32, val_fraction: float = 0.2, seed: int = 0,
            thresholds=None, verbose: int = 0) -> dict:
    """`finetune policy DATA_DIR`: measures size (training split) and similarity (all labelled images) and decides.

    Features are cached, so a `finetune train` on the same data afterwards does not compute
    them again.
    """
    from finetune import data as data_module
    from finetune import zoo
    from finetune.features import stage_features
    from finetune.stages import search_stage_heads

    thresholds = thresholds or PolicyThresholds()
    spec = zoo.get_spec(backbone)
    image_size = image_size or spec.default_image_size
    source = data_module.discover(data_dir, val_fraction, seed)
    network, weights_source = zoo.build_backbone_with_source(spec, image_size=image_size, weights=weights, alpha=alpha)
    identity = {"backbone": spec.name, "weights": weights_source, "alpha": alpha}
    splits = {}
    for name in ("train", "val"):
        if name in source.splits and len(source.splits[name].paths):
            split = data_module.load_split(source, name, image_size, verbose=verbose)
            splits[name] = (stage_features(network, spec, split.images, identity, batch_size, verbose), split.labels)
    train_features, train_labels = splits["train"]
    features, labels = labelled_pool(train_features, train_labels, *splits.get("val", (None, None)))
    search = search_stage_heads(features, labels, len(source.class_names), list(spec.stage_endpoints), max_average=1,
                                max_per_class=thresholds.search_max_per_class, seed=seed)
    policy = measure_policy(spec, weights_source, search, train_features[-1], train_labels, len(source.class_names), thresholds)
    policy.update(backbone=spec.name, image_size=image_size, data=str(data_dir))
    return policy
