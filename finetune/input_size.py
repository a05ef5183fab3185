"""The input size, chosen from the data when no `--image-size` is given.

On small images the input size decides more than the strategy: scikit-learn's 8-px digits
upscaled to the backbone's 224 px reached 0.843, at 128 px 0.967, at a third of the cost
(issue 11). So the size is measured like the strategy is, with the same cheap, cross-validated
stage search (`finetune.stages`):

1. the images' native resolution: the median short side of a sample of the training images,
   read from their headers;
2. the candidates: `DataConfig.candidate_sizes` within the backbone's range (no larger than its
   default size, no smaller than its minimum), and no more than `max_upscale` times the native
   side (the next candidate above that is kept, and at least two are scored): upscaling adds
   pixels but no information, only cost;
3. each candidate is scored by the stage search over the labelled images (training and
   validation), at most `PolicyConfig.search_max_per_class` of each class: the best head's
   cross-validated accuracy;
4. the smallest size within `size_margin` of the best score wins, since the cost of every
   forward pass grows with the square of the size.

    choice = choose_image_size(source, spec, config)
    choice.size, choice.to_dict()   # 128, {"chosen": 128, "candidates": [...], "reason": "..."}
"""

from __future__ import annotations

import dataclasses
import io
import statistics
import time

import numpy as np

from finetune.config import DataConfig, TrainConfig

# Image headers read to measure the native resolution: enough for a stable median.
NATIVE_SAMPLE = 200


@dataclasses.dataclass
class SizeChoice:
    """The chosen input size, the measurements behind it, and the backbone built at that size."""

    size: int
    native_short_side: float | None
    candidates: list[dict]  # {"size", "cv_accuracy", "cv_loss", "head", "seconds"}, smallest first
    reason: str
    images: int  # labelled images each candidate was scored on
    backbone: object = None  # the backbone at `size`, so that training does not build it again
    weights_source: str = ""
    search: object = None  # the stage search at `size` (finetune.stages.StageSearch), for training to reuse
    chosen_by: str = "measured"  # or "requested" (`image_size` given: nothing measured)

    def to_dict(self) -> dict:
        """policy.json's "image_size"."""
        if self.chosen_by == "requested":
            return {"chosen": self.size, "chosen_by": self.chosen_by, "reason": self.reason}
        return {"chosen": self.size, "chosen_by": self.chosen_by, "native_short_side": self.native_short_side,
                "candidates": self.candidates, "images": self.images, "reason": self.reason}


def native_short_side(source, max_images: int = NATIVE_SAMPLE, seed: int = 0) -> float | None:
    """The median shorter side, in pixels, of up to `max_images` training images (None: none readable).

    Folder images are measured from their headers, without decoding the pixels.
    """
    from PIL import Image

    from finetune.data.tfds import TFDS_PREFIX, tfds_items

    paths = list(source.splits["train"].paths)
    if len(paths) > max_images:
        paths = [paths[index] for index in np.sort(np.random.default_rng(seed).choice(len(paths), max_images, False))]
    sides = []
    if source.root.startswith(TFDS_PREFIX):
        encoded = (item for _, item in tfds_items(source.root, paths))
    else:
        encoded = iter(paths)
    for item in encoded:
        try:
            with Image.open(io.BytesIO(item) if isinstance(item, bytes) else item) as image:
                sides.append(min(image.size))
        except (OSError, ValueError, Image.DecompressionBombError):
            continue  # a bad file is skipped (and reported) when the split is decoded
    return float(statistics.median(sides)) if sides else None


def candidate_sizes(native: float | None, spec, config: DataConfig | None = None) -> list[int]:
    """The sizes worth scoring for images of `native` short side on `spec`'s backbone, smallest first."""
    config = config or DataConfig()
    sizes = sorted({int(size) for size in config.candidate_sizes
                    if spec.min_image_size <= size <= spec.default_image_size})
    if not sizes:
        return [spec.default_image_size]
    if native is None:
        return sizes
    cap = native * config.max_upscale
    kept = [size for size in sizes if size <= cap]
    above = [size for size in sizes if size > cap]
    kept += above[:1]  # the first size beyond the cap: the cap is a guess, the score decides
    while len(kept) < min(2, len(sizes)):
        kept.append(sizes[len(kept)])
    return kept


def pick(candidates: list[dict], margin: float) -> tuple[dict, str]:
    """The smallest candidate whose cross-validated accuracy is within `margin` of the best, and why."""
    scored = [item for item in candidates if item.get("cv_accuracy") is not None]
    if not scored:
        chosen = candidates[-1]
        return chosen, f"{chosen['size']} px: too few images per class to cross-validate the candidates"
    best = max(scored, key=lambda item: item["cv_accuracy"])
    chosen = min((item for item in scored if item["cv_accuracy"] >= best["cv_accuracy"] - margin),
                 key=lambda item: item["size"])
    scores = ", ".join(f"{item['size']} px {item['cv_accuracy']:.3f}" for item in scored)
    if len(scored) == 1:
        return chosen, f"{chosen['size']} px, the only candidate for images of this size (scored {scores})"
    if chosen is best:
        why = "the best cross-validated accuracy"
    else:
        why = (f"the smallest size within {margin:g} of the best ({best['size']} px), at "
               f"{(chosen['size'] / best['size']) ** 2:.2f}x its cost per image")
    return chosen, f"{chosen['size']} px, {why} (linear heads on the stages, cross-validated: {scores})"


def _pool_source(source, max_per_class: int, seed: int):
    """`source` restricted to at most `max_per_class` labelled images of each class (train and val together).

    When nothing is left out, the splits are kept whole, so that their decoded images and
    features are cached under the keys that training itself uses.
    """
    from finetune.data import Split
    from finetune.stages import subsample

    splits = {name: source.splits[name] for name in ("train", "val")
              if name in source.splits and len(source.splits[name].paths)}
    labels = np.concatenate([split.labels for split in splits.values()])
    chosen = subsample(labels, max_per_class, seed)
    if len(chosen) == len(labels):
        return dataclasses.replace(source, splits=splits), len(labels)
    kept, offset = {}, 0
    for name, split in splits.items():
        mine = chosen[(chosen >= offset) & (chosen < offset + len(split.labels))] - offset
        offset += len(split.labels)
        if len(mine):
            kept[name] = Split([split.paths[index] for index in mine], split.labels[mine])
    return dataclasses.replace(source, splits=kept), len(chosen)


def score_size(size: int, pool, spec, config: TrainConfig, num_classes: int, class_weight: dict | None = None):
    """The stage search at `size` over the images of `pool`; returns (candidate dict, search, backbone, weights source).

    The search is the one training runs at the same size (same images, folds, grid and class
    weights), so that training can reuse the chosen size's.
    """
    from finetune import zoo
    from finetune.data import load_split
    from finetune.features import stage_features
    from finetune.stages import search_stage_heads

    started = time.time()
    backbone, weights_source = zoo.build_backbone_with_source(spec, image_size=size, weights=config.model.weights,
                                                              alpha=config.model.alpha)
    backbone.trainable = False
    identity = {"backbone": spec.name, "weights": weights_source, "alpha": config.model.alpha}
    features, labels = [], []
    for name in pool.splits:
        split = load_split(pool, name, size, config.data.max_megapixels, config.data.cache, verbose=0)
        features.append(stage_features(backbone, spec, split.images, identity, config.batch_size, 0, config.data.cache))
        labels.append(split.labels)
    stages = [np.concatenate([item[index] for item in features]) for index in range(len(spec.stage_endpoints))]
    search = search_stage_heads(stages, np.concatenate(labels), num_classes, list(spec.stage_endpoints),
                                c_grid=config.head_c_grid, max_per_class=None, class_weight=class_weight,
                                seed=config.seed)
    best = search.best.to_dict()  # unscored (nan) values as None
    row = {"size": size, **{key: None if best[key] is None else round(best[key], 4) for key in ("cv_accuracy", "cv_loss")},
           "head": best["name"], "seconds": round(time.time() - started, 1)}
    return row, search, backbone, weights_source


def choose_image_size(source, spec, config: TrainConfig, log=None) -> SizeChoice:
    """Measures the native resolution, scores the candidate sizes, and picks one (see the module's docstring).

    Args:
        source: a `finetune.data.DataSource` (from `discover`).
        spec: the backbone's `finetune.zoo.BackboneSpec`.
        config: the run's `TrainConfig` (candidates and margin in `config.data`, the subsample
            size in `config.policy.search_max_per_class`).
        log: called with one line per scored candidate. Defaults to None (silent).
    """
    from finetune.data import class_weights

    native = native_short_side(source, seed=config.seed)
    sizes = candidate_sizes(native, spec, config.data)
    pool, images = _pool_source(source, config.policy.search_max_per_class, config.seed)
    class_weight = class_weights(source.splits["train"].labels, len(source.class_names))
    rows, built = [], {}
    for size in sizes:
        row, search, backbone, weights_source = score_size(size, pool, spec, config, len(source.class_names),
                                                           class_weight)
        rows.append(row)
        built[size] = (backbone, weights_source, search)
        if log:
            log(f"  {size} px: cross-validated accuracy {row['cv_accuracy']} ({row['head']}, {row['seconds']} s)")
    chosen, reason = pick(rows, config.data.size_margin)
    if native is not None:
        reason += f"; the images' median short side is {native:g} px"
    backbone, weights_source, search = built[chosen["size"]]
    built.clear()  # free the other backbones
    return SizeChoice(chosen["size"], native, rows, reason, images, backbone, weights_source, search)


def resolve_image_size(source, spec, config: TrainConfig, log=None) -> SizeChoice:
    """`config.data.image_size` when given, with the backbone built at it; else `choose_image_size`.

    What `finetune train` and `finetune policy` both start from.
    """
    if not config.data.image_size:
        return choose_image_size(source, spec, config, log=log)
    from finetune import zoo

    size = config.data.image_size
    backbone, weights_source = zoo.build_backbone_with_source(spec, image_size=size, weights=config.model.weights,
                                                              alpha=config.model.alpha)
    return SizeChoice(size, None, [], f"{size} px: requested (image_size)", 0, backbone, weights_source,
                      chosen_by="requested")
