"""Linear heads on the features of several stages, scored by cross-validation on every labelled image.

With little data, which features to put a linear classifier on is the decision that matters most
(the course: "in trouble: try linear classifiers on features from different stages"), and it
must be made from a few hundred images. So every candidate is scored the same way, by stratified
k-fold cross-validation on the training and validation images together (a 100-image validation
split moves by a point per image; five folds over all of them are steadier), with the
cross-validated log loss as the criterion (a proper score: it tells candidates apart where
accuracy ties, and it rewards calibrated probabilities):

    single          logistic regression on one stage's pooled features (C chosen per stage, also
                    by cross-validated loss); the top stage alone is the `linear` strategy;
    average         the mean of the logits of 2 or 3 single-stage heads: cheap, diverse members
                    (a mid stage sees shape where the top sees ImageNet classes), and since a mean
                    of linear functions is linear, still ONE Dense layer over the concatenated
                    pooled features;
    concatenation   one logistic regression on all stages' features side by side.

Every candidate's out-of-fold logits come from the same per-stage fits, so the averages cost no
extra fitting. On the benchmarks here (30 images per class, 128 px) this lifted scikit-learn
digits from 0.934 (top stage, C chosen on validation) to about 0.96, and Fashion-MNIST from
0.78 to about 0.80.
"""

from __future__ import annotations

import dataclasses
import itertools
import math

import numpy as np

from finetune.head import LinearHead, fit_linear_head

C_GRID = (0.01, 0.1, 1.0)


@dataclasses.dataclass
class Candidate:
    name: str
    stages: tuple[int, ...]  # indices into the stage endpoints, bottom to top
    kind: str  # single, average or concatenation
    c: tuple[float, ...]  # per stage (single, average) or one value (concatenation)
    cv_accuracy: float
    cv_loss: float
    # Out-of-fold logits [images, classes] of the search's (subsampled) images, and their labels:
    # what calibrates a head fit on every labelled image (`finetune.calibration`). Not in JSON.
    oof_logits: np.ndarray | None = dataclasses.field(default=None, repr=False, compare=False)
    oof_labels: np.ndarray | None = dataclasses.field(default=None, repr=False, compare=False)

    def to_dict(self) -> dict:
        """As JSON: unscored values (nan) become None."""
        values = {field.name: getattr(self, field.name) for field in dataclasses.fields(self)
                  if not field.name.startswith("oof_")}
        for key in ("cv_accuracy", "cv_loss"):
            values[key] = None if math.isnan(values[key]) else values[key]
        return values


@dataclasses.dataclass
class StageSearch:
    endpoints: list[str]
    candidates: list[Candidate]  # best first: lowest cross-validated loss, then fewer stages
    folds: int  # 0: too few images per class to cross-validate; candidates then score nan
    images: int  # images the search used (a stratified subsample of large data sets)

    @property
    def best(self) -> Candidate:
        return self.candidates[0]

    def single(self, stage: int) -> Candidate:
        return next(item for item in self.candidates if item.kind == "single" and item.stages == (stage,))

    @property
    def top(self) -> Candidate:
        """The top stage alone: what the `linear` strategy fits."""
        return self.single(len(self.endpoints) - 1)

    def to_dict(self) -> dict:
        return {"endpoints": self.endpoints, "folds": self.folds, "images": self.images, "chosen": self.best.name,
                "candidates": [item.to_dict() for item in self.candidates]}


def _logits(head: LinearHead, features: np.ndarray) -> np.ndarray:
    return np.asarray(features, dtype=np.float64) @ head.kernel + head.bias


def _log_loss(logits: np.ndarray, labels: np.ndarray) -> float:
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_probabilities = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    return float(-log_probabilities[np.arange(len(labels)), labels].mean())


def subsample(labels: np.ndarray, max_per_class: int | None, seed: int) -> np.ndarray:
    """Indices of at most `max_per_class` images of each class (all of them when None)."""
    if max_per_class is None:
        return np.arange(len(labels))
    rng = np.random.default_rng(seed)
    chosen = [rng.permutation(np.flatnonzero(labels == label))[:max_per_class] for label in np.unique(labels)]
    return np.sort(np.concatenate(chosen))


def search_stage_heads(
    stage_features: list[np.ndarray],
    labels,
    num_classes: int,
    endpoints: list[str] | None = None,
    c_grid: tuple[float, ...] = C_GRID,
    folds: int = 5,
    max_average: int = 3,
    concatenation: bool = False,
    max_per_class: int | None = 100,
    class_weight: dict | None = None,
    seed: int = 0,
) -> StageSearch:
    """Scores single-stage heads, averages of 2..`max_average` of them and the concatenation.

    Args:
        stage_features: pooled features of each stage, bottom to top, one row per image.
        labels: the class of each row.
        num_classes: classes of the data set (a class may be missing from `labels`).
        endpoints: stage names for the report. Defaults to "stage 0", "stage 1", ...
        c_grid: inverse regularisation strengths tried for each head.
        folds: cross-validation folds, fewer when the smallest class has fewer images.
        max_average: the most stages averaged in one candidate.
        concatenation: also score one head on all stages concatenated (fits of its own on wide
            features; `add_concatenation` adds it later). Defaults to False.
        max_per_class: the search uses at most this many images per class (stratified, seeded),
            which bounds its cost on large data sets. Defaults to 100; None uses all.
        class_weight: passed to every fit.
        seed: for the folds, the subsample and the solver.
    """
    endpoints = list(endpoints) if endpoints is not None else [f"stage {index}" for index in range(len(stage_features))]
    all_labels = np.asarray(labels)
    labels, features, splits = _prepare(stage_features, all_labels, folds, max_per_class, seed)
    if not splits:
        # Too few images to cross-validate: the top stage with the middle of the grid, unscored.
        middle = sorted(c_grid)[len(c_grid) // 2]
        order = [len(features) - 1] + list(range(len(features) - 1))
        candidates = [Candidate(endpoints[index], (index,), "single", (middle,), math.nan, math.nan) for index in order]
        return StageSearch(endpoints, candidates, 0, len(labels))
    singles, single_logits = [], []
    for index, inputs in enumerate(features):
        c, logits = _best_c(inputs, labels, splits, num_classes, c_grid, class_weight, seed)
        singles.append(_scored(endpoints[index], [index], "single", [c], logits, labels))
        single_logits.append(logits)
    candidates = list(singles)
    for size in range(2, min(max_average, len(features)) + 1):
        for stages in itertools.combinations(range(len(features)), size):
            logits = sum(single_logits[index] for index in stages) / size
            candidates.append(_scored("mean of " + " + ".join(endpoints[index] for index in stages), stages, "average",
                                      [singles[index].c[0] for index in stages], logits, labels))
    search = StageSearch(endpoints, candidates, len(splits), len(labels))
    if concatenation:
        add_concatenation(search, stage_features, all_labels, num_classes, c_grid, max_per_class, class_weight, seed)
    _sort(search)
    return search


def add_concatenation(search: StageSearch, stage_features, labels, num_classes: int, c_grid=C_GRID,
                      max_per_class: int | None = 100, class_weight: dict | None = None, seed: int = 0) -> StageSearch:
    """Adds the head on all stages concatenated to a search (the same folds: same arguments and seed).

    Separate because it is the one candidate that costs fits of its own on wide features, needed
    only when the multi-stage strategy runs.
    """
    if search.folds == 0 or len(stage_features) < 2:
        return search
    labels, features, splits = _prepare(stage_features, labels, search.folds, max_per_class, seed)
    c, logits = _best_c(np.concatenate(features, axis=1), labels, splits, num_classes, c_grid, class_weight, seed)
    search.candidates.append(_scored("all stages concatenated", range(len(features)), "concatenation", [c], logits, labels))
    _sort(search)
    return search


def _prepare(stage_features, labels, folds, max_per_class, seed):
    """The (subsampled) labels and features, and the stratified folds; no folds when a class has under 2 images."""
    from sklearn.model_selection import StratifiedKFold

    keep = subsample(np.asarray(labels), max_per_class, seed)
    labels = np.asarray(labels)[keep]
    features = [np.asarray(item, dtype=np.float64)[keep] for item in stage_features]
    smallest = int(np.bincount(labels)[np.unique(labels)].min()) if len(labels) else 0
    folds = min(folds, smallest)
    if folds < 2:
        return labels, features, []
    return labels, features, list(StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed).split(labels, labels))


def _best_c(inputs, labels, splits, num_classes, c_grid, class_weight, seed):
    """The C with the lowest out-of-fold log loss, and its out-of-fold logits."""
    tried = []
    for c in c_grid:
        logits = np.zeros((len(labels), num_classes))
        for train_index, test_index in splits:
            head = fit_linear_head(inputs[train_index], labels[train_index], num_classes, c_grid=(c,),
                                   class_weight=class_weight, seed=seed, max_iter=300)
            logits[test_index] = _logits(head, inputs[test_index])
        tried.append((c, logits))
    return min(tried, key=lambda item: _log_loss(item[1], labels))


def _scored(name, stages, kind, c, logits, labels) -> Candidate:
    accuracy = float((logits.argmax(axis=1) == labels).mean())
    return Candidate(name, tuple(stages), kind, tuple(c), accuracy, _log_loss(logits, labels), logits, labels)


def _sort(search: StageSearch) -> None:
    kinds = {"single": 0, "average": 1, "concatenation": 2}
    search.candidates.sort(key=lambda item: (item.cv_loss, len(item.stages), kinds[item.kind]))


def fit_candidate(candidate: Candidate, stage_features: list[np.ndarray], labels, num_classes: int,
                  class_weight: dict | None = None, seed: int = 0) -> LinearHead:
    """The candidate's head on all the given images: one kernel over its stages' features side by side.

    An average's kernel is its members' kernels stacked and divided by their number, so the
    Dense layer computes the mean of their logits.
    """
    labels = np.asarray(labels)
    inputs = [np.asarray(stage_features[index], dtype=np.float64) for index in candidate.stages]
    if candidate.kind == "concatenation":
        head = fit_linear_head(np.concatenate(inputs, axis=1), labels, num_classes, c_grid=candidate.c,
                               class_weight=class_weight, seed=seed)
    else:
        members = [fit_linear_head(item, labels, num_classes, c_grid=(c,), class_weight=class_weight, seed=seed)
                   for item, c in zip(inputs, candidate.c)]
        count = len(members)
        head = LinearHead(
            kernel=(np.concatenate([member.kernel for member in members], axis=0) / count).astype(np.float32),
            bias=(sum(member.bias for member in members) / count).astype(np.float32),
            c=candidate.c[0] if count == 1 else list(candidate.c),
            val_accuracy=None,
            search=[],
        )
    head.val_accuracy = None if math.isnan(candidate.cv_accuracy) else candidate.cv_accuracy
    return head
