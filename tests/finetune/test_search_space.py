"""The search space: log-uniform and uniform sampling, coarse-to-fine narrowing, the edge warning, ranges as arguments."""

import math

import numpy as np
import optuna
import pytest

from finetune.config import TrainConfig
from finetune.errors import FinetuneError
from finetune.search.report import format_summary
from finetune.search.space import (
    PARAMETERS,
    apply_values,
    edge_warnings,
    narrow,
    parse_range,
    resolve_parameters,
)

optuna.logging.set_verbosity(optuna.logging.WARNING)


def _samples(parameter, count=2000, seed=0):
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    values = []
    for _ in range(count):
        trial = study.ask()
        values.append(parameter.suggest(trial))
        study.tell(trial, 0.0)
    return np.array(values)


def test_rates_are_sampled_log_uniformly_within_their_bounds():
    rate = PARAMETERS["learning_rate"]  # 1e-4 .. 1e-2
    values = _samples(rate)
    assert values.min() >= 1e-4 and values.max() <= 1e-2
    # Log-uniform: each decade gets half; uniform sampling would put 9% below 1e-3.
    assert abs((values < 1e-3).mean() - 0.5) < 0.05
    histogram, _ = np.histogram(np.log10(values), bins=4, range=(-4, -2))
    assert histogram.min() > 0.2 * len(values)


def test_shares_are_sampled_uniformly():
    values = _samples(PARAMETERS["dropout"])  # 0 .. 0.5
    assert values.min() >= 0 and values.max() <= 0.5
    assert abs((values < 0.25).mean() - 0.5) < 0.05
    assert abs((values < 0.05).mean() - 0.1) < 0.03  # a log scale would crowd the low end


def test_the_fine_range_spans_the_best_coarse_values_widened_on_the_log_scale():
    rate, dropout, augment, groups = resolve_parameters(
        ["learning_rate", "dropout", "augment", "unfreeze_groups"], kind="finetune", num_groups=10)
    best = [{"learning_rate": 1e-3, "dropout": 0.1, "augment": "light", "unfreeze_groups": 3},
            {"learning_rate": 2e-3, "dropout": 0.3, "augment": "strong", "unfreeze_groups": 5}]
    fine_rate, fine_dropout, fine_augment, fine_groups = narrow([rate, dropout, augment, groups], best, widen_share=0.1)
    # 10% of the coarse range's two decades is 0.2 decades on each side.
    assert fine_rate.low == pytest.approx(1e-3 / 10 ** 0.2) and fine_rate.high == pytest.approx(2e-3 * 10 ** 0.2)
    assert fine_dropout.low == pytest.approx(0.05) and fine_dropout.high == pytest.approx(0.35)
    assert fine_augment.choices == ("light", "strong")
    assert (fine_groups.low, fine_groups.high) == (2, 6) and isinstance(fine_groups.low, int)
    # Never beyond the coarse range.
    edge = narrow([rate], [{"learning_rate": 1e-2}], widen_share=0.1)[0]
    assert edge.high == pytest.approx(1e-2) and edge.low == pytest.approx(1e-2 / 10 ** 0.2)


def test_a_best_value_at_the_edge_of_its_range_is_reported_with_a_wider_range():
    rate, dropout, augment = resolve_parameters(["learning_rate", "dropout", "augment"], kind="finetune")
    warnings = edge_warnings([rate, dropout, augment], {"learning_rate": 0.0095, "dropout": 0.25, "augment": "none"},
                             share=0.1)
    assert [item["parameter"] for item in warnings] == ["learning_rate"]
    warning = warnings[0]
    assert warning["side"] == "high" and warning["wider"] == [pytest.approx(1e-4), pytest.approx(0.1)]
    assert "--range learning_rate=0.0001:0.1" in warning["message"] and "log scale" in warning["message"]
    low = edge_warnings([rate], {"learning_rate": 1.2e-4}, share=0.1)[0]
    assert low["side"] == "low" and low["wider"] == [pytest.approx(1e-5), pytest.approx(1e-2)]
    # 0.0 is the end of dropout's meaningful range: said, and no wider range proposed.
    at_limit = edge_warnings([dropout], {"dropout": 0.01}, share=0.1)[0]
    assert at_limit["wider"] is None and "limit" in at_limit["message"]
    summary = {"best": {"params": {"learning_rate": 0.0095}, "value": 0.9, "trial": "fine-0", "stage": "fine",
                        "epochs": 8, "full_data": True},
               "baseline": None, "metric": "val_accuracy", "trials": {"complete": 3, "pruned": 1, "fail": 0},
               "strategy": "finetune_most", "image_size": 96, "seconds": 60, "edges": warnings,
               "files": {"trials.csv": "o/trials.csv", "search.png": "o/search.png", "best.json": "o/best.json"}}
    assert "Warning: learning_rate: the best value 0.0095" in format_summary(summary)


def test_parameters_and_ranges_are_checked_with_the_allowed_values():
    with pytest.raises(FinetuneError, match="Unknown search parameter 'learnig_rate'. Allowed: learning_rate"):
        resolve_parameters(["learnig_rate"], kind="finetune")
    with pytest.raises(FinetuneError, match="head_c only applies to a linear strategy"):
        resolve_parameters(["head_c"], kind="finetune")
    with pytest.raises(FinetuneError, match="learning_rate only applies to a finetuning strategy"):
        resolve_parameters(["learning_rate"], kind="linear")
    with pytest.raises(FinetuneError, match="not searched. Add it to --params"):
        resolve_parameters(None, kind="linear", ranges={"dropout": (0.0, 0.3)})
    with pytest.raises(FinetuneError, match="LOW < HIGH"):
        resolve_parameters(["learning_rate"], kind="finetune", ranges={"learning_rate": (1e-2, 1e-3)})
    with pytest.raises(FinetuneError, match="above 0"):
        resolve_parameters(["weight_decay"], kind="finetune", ranges={"weight_decay": (0.0, 0.1)})
    with pytest.raises(FinetuneError, match="LOW:HIGH"):
        parse_range("learning_rate", "0.001-0.1")
    assert parse_range("learning_rate", "1e-5:1e-3") == (1e-5, 1e-3)
    assert parse_range("augment", "none, light") == ["none", "light"]
    (rate,) = resolve_parameters(["learning_rate"], kind="finetune", ranges={"learning_rate": (1e-5, 1e-3)})
    assert (rate.low, rate.high) == (1e-5, 1e-3)
    assert [item.name for item in resolve_parameters(None, kind="linear")] == ["head_c"]


def test_sampled_values_land_in_the_fields_training_reads():
    base = TrainConfig()
    config = apply_values(base, {"learning_rate": 3e-4, "dropout": 0.35, "mixup": 0.2, "head_c": 2.5,
                                 "image_size": 128, "unfreeze_groups": 4, "augment": "strong",
                                 "backbone_learning_rate_multiplier": 0.05})
    assert config.learning_rate == 3e-4 and config.model.dropout == 0.35
    assert config.augment_options == {"mixup": 0.2} and config.augment == "strong"
    assert config.head_c_grid == (2.5,) and config.data.image_size == 128 and config.unfreeze_groups == 4
    assert config.backbone_learning_rate_multiplier == 0.05
    assert base.model.dropout == 0.2 and base.augment_options == {}  # the base is left alone
    assert math.isclose(PARAMETERS["head_c"].position(1.0), 0.6)
