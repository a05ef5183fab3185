"""The "unknown" threshold: keeps the stated share of known images, parses --unknown, scores separate."""

import numpy as np
import pytest

from finetune.errors import FinetuneError
from finetune.openset import auroc, describe, energy_score, fit_threshold, resolve_threshold, verdict


def test_the_threshold_keeps_the_stated_share_of_held_out_known_images():
    scores = np.random.default_rng(0).uniform(0.2, 1.0, 1000)
    for keep in (0.5, 0.9, 0.95, 1.0):
        threshold = fit_threshold(scores, keep)
        assert np.mean(scores >= threshold) >= keep
        assert np.mean(scores >= threshold) < keep + 0.01  # and no more than needed
    with pytest.raises(FinetuneError, match="keep"):
        fit_threshold(scores, 0.0)


def test_unknown_choices_and_their_errors():
    recorded = {"threshold": 0.7}
    assert resolve_threshold("auto", recorded) == 0.7 and resolve_threshold("auto", None) is None
    assert resolve_threshold("off", recorded) is None and resolve_threshold("0.4", recorded) == 0.4
    for bad in ("sometimes", "1.5", 0):
        with pytest.raises(FinetuneError, match="Received: unknown"):
            resolve_threshold(bad, recorded)


def test_verdict_and_scores():
    result = verdict(np.array([0.2, 0.5, 0.3]), ["a", "b", "c"], threshold=0.6)
    assert result == {"unknown": True, "closest": "b", "probability": 0.5}
    assert describe(result) == "unknown (closest: b, 0.50)"
    assert not verdict(np.array([0.2, 0.5, 0.3]), ["a", "b", "c"], threshold=None)["unknown"]
    assert auroc([0.9, 0.8], [0.1, 0.2]) == 1.0 and auroc([0.1], [0.9]) == 0.0
    logits = np.array([[10.0, 0.0], [1.0, 1.0]])
    np.testing.assert_allclose(energy_score(logits), [10 + np.log1p(np.exp(-10)), 1 + np.log(2)])


def test_train_options_set_calibration_and_the_kept_share_and_a_bad_share_is_refused_before_any_work(tmp_path):
    import finetune
    from finetune.cli import _train_config, build_parser

    config = _train_config(build_parser().parse_args(["train", "photos", "--no-calibrate", "--unknown-keep", "0.9"]), "photos")
    assert config.calibrate is False and config.unknown_keep == 0.9
    default = _train_config(build_parser().parse_args(["train", "photos"]), "photos")
    assert default.calibrate is True and default.unknown_keep == 0.95
    # Refused by the config check, so no folder is even read: the data folder does not exist.
    with pytest.raises(FinetuneError, match=r"unknown_keep.*Received: unknown_keep=1.5"):
        finetune.train(tmp_path / "no-such-folder", unknown_keep=1.5, verbose=0)
