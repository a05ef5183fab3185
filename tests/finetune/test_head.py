import numpy as np
import pytest

from finetune.head import fit_linear_head


def _blobs(num_classes, per_class, dims=8, seed=0, offset=3.0, noise_seed=None):
    centers = np.random.default_rng(seed).normal(0, offset, (num_classes, dims)) + 50.0  # far from zero
    rng = np.random.default_rng(seed if noise_seed is None else noise_seed)
    features = np.concatenate([rng.normal(center, 1.0, (per_class, dims)) for center in centers])
    labels = np.repeat(np.arange(num_classes), per_class)
    return features, labels


@pytest.mark.parametrize("num_classes", [2, 4])
def test_head_on_raw_features_matches_sklearn_on_standardised(num_classes):
    from sklearn.linear_model import LogisticRegression

    features, labels = _blobs(num_classes, 30)
    head = fit_linear_head(features, labels, num_classes, c_grid=(1.0,))
    standardised = (features - features.mean(0)) / features.std(0)
    reference = LogisticRegression(C=1.0, max_iter=1000).fit(standardised, labels).predict_proba(standardised)
    np.testing.assert_allclose(head.probabilities(features), reference, atol=1e-4)
    assert head.kernel.shape == (features.shape[1], num_classes) and head.kernel.dtype == np.float32


def test_regularisation_is_chosen_on_validation_data():
    features, labels = _blobs(3, 40, seed=1, offset=2.0)
    val_features, val_labels = _blobs(3, 20, seed=1, offset=2.0, noise_seed=2)
    head = fit_linear_head(features, labels, 3, val_features, val_labels, c_grid=(1e-4, 1.0))
    assert [row["c"] for row in head.search] == [1e-4, 1.0]
    best = max(head.search, key=lambda row: (row["val_accuracy"], -row["val_loss"]))
    assert head.c == best["c"]
    assert head.val_accuracy == best["val_accuracy"] > 0.9


def test_class_missing_from_training_is_never_predicted():
    features, labels = _blobs(2, 20)
    head = fit_linear_head(features, labels, 3, c_grid=(1.0,))
    assert head.probabilities(features)[:, 2].max() < 1e-6
