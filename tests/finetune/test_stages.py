"""The cross-validated search over stage heads: what it scores, what it keeps, what the kept head computes."""

import math

import numpy as np
import pytest

from finetune.head import fit_linear_head
from finetune.stages import add_concatenation, fit_candidate, search_stage_heads


def _stages(per_class=20, seed=0):
    """Three stages of 3-class data: noise at the bottom, the classes in the middle, a weak top."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(3), per_class)
    centers = rng.normal(0, 1, (3, 6))
    middle = centers[labels] * 3.0 + rng.normal(0, 1, (len(labels), 6)) + 20.0
    top = centers[labels] * 0.5 + rng.normal(0, 1, (len(labels), 6))
    bottom = rng.normal(0, 1, (len(labels), 4))
    return [bottom, middle, top], labels


def test_search_scores_singles_means_and_keeps_the_informative_stage():
    features, labels = _stages()
    search = search_stage_heads(features, labels, 3, ["low", "mid", "top"])
    kinds = [item.kind for item in search.candidates]
    assert kinds.count("single") == 3 and kinds.count("average") == math.comb(3, 2) + math.comb(3, 3)
    assert "concatenation" not in kinds and search.folds == 5 and search.images == 60
    assert 1 in search.best.stages and search.best.cv_accuracy > 0.9
    assert search.single(0).cv_accuracy < 0.6 < 0.9 < search.single(1).cv_accuracy
    assert search.top.stages == (2,)
    losses = [item.cv_loss for item in search.candidates]
    assert losses == sorted(losses)


def test_concatenation_is_added_with_the_same_folds():
    features, labels = _stages()
    search = search_stage_heads(features, labels, 3)
    before = len(search.candidates)
    add_concatenation(search, features, labels, 3)
    assert len(search.candidates) == before + 1
    joined = next(item for item in search.candidates if item.kind == "concatenation")
    assert joined.stages == (0, 1, 2) and joined.cv_accuracy > 0.9


def test_an_average_head_is_one_kernel_computing_the_mean_of_its_members_logits():
    features, labels = _stages()
    search = search_stage_heads(features, labels, 3)
    candidate = next(item for item in search.candidates if item.kind == "average" and item.stages == (1, 2))
    head = fit_candidate(candidate, features, labels, 3)
    assert head.kernel.shape == (12, 3)
    members = [fit_linear_head(features[index], labels, 3, c_grid=(c,)) for index, c in zip((1, 2), candidate.c)]
    expected = sum(features[index] @ member.kernel + member.bias for index, member in zip((1, 2), members)) / 2
    joined = np.concatenate([features[1], features[2]], axis=1)
    np.testing.assert_allclose(joined @ head.kernel + head.bias, expected, rtol=1e-4, atol=1e-3)
    assert head.val_accuracy == pytest.approx(candidate.cv_accuracy)


def test_large_classes_are_subsampled_and_tiny_ones_are_not_cross_validated():
    features, labels = _stages(per_class=30)
    assert search_stage_heads(features, labels, 3, max_per_class=10).images == 30
    tiny = search_stage_heads([item[[0, 30, 60]] for item in features], labels[[0, 30, 60]], 3)
    assert tiny.folds == 0 and tiny.best.stages == (2,) and math.isnan(tiny.best.cv_accuracy)
    head = fit_candidate(tiny.best, [item[[0, 30, 60]] for item in features], labels[[0, 30, 60]], 3)
    assert head.val_accuracy is None
