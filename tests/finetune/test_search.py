"""`finetune search` end to end on tiny folders: files, the test split unseen, best.json reproducing, pruning, resume."""

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest

import finetune
from finetune.cli import main
from finetune.config import DataConfig, ModelConfig, SearchConfig, TrainConfig
from finetune.search import run_search
from finetune.search.trials import TrialReporter
from tests.conftest import write_image_folder

ROOT = Path(__file__).resolve().parents[2]
TINY = ["--backbone", "mobilenet_v2", "--weights", "none", "--alpha", "0.35", "--image-size", "48", "--batch-size", "8",
        "--tta", "none"]
# ImageNet weights, so that finetuning learns these images and each value of a knob shows in the loss.
PRETRAINED = ["--image-size", "48", "--batch-size", "8", "--tta", "none"]


def _presplit(root: Path, per_class=10) -> Path:
    """train/, val/ and test/ folders of three classes; test/ also holds a file that is not an image."""
    for split, count, seed in (("train", per_class, 0), ("val", 4, 1), ("test", 4, 2)):
        write_image_folder(root / split, classes=("a", "b", "c"), per_class=count, seed=seed)
    (root / "test" / "a" / "broken.png").write_bytes(b"not an image")
    return root


def _rows(path: Path) -> list[dict]:
    with open(path, newline="") as file:
        return list(csv.DictReader(file))


def _tiny_config(data: Path, **options) -> TrainConfig:
    return TrainConfig(data=DataConfig(source=str(data), image_size=48),
                       model=ModelConfig(backbone="mobilenet_v2", weights="none", alpha=0.35),
                       batch_size=8, verbose=0, tta="none", **options)


@pytest.mark.slow
def test_a_two_trial_search_end_to_end_never_reads_the_test_split_and_its_best_json_reproduces(tmp_path, capsys):
    data = _presplit(tmp_path / "data")
    out = tmp_path / "search"
    assert main(["search", str(data), *PRETRAINED, "--strategy", "finetune_top", "--trials", "3", "--coarse-epochs", "1",
                 "--epochs", "2", "--params", "learning_rate,dropout", "--quiet", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "Best: val_accuracy" in printed and f"--config {out / 'best.json'}" in printed
    assert {"trials.csv", "search.png", "best.json", "search.json", "study.journal"} <= {p.name for p in out.iterdir()}
    rows = _rows(out / "trials.csv")
    assert [row["stage"] for row in rows] == ["coarse", "coarse", "fine"]
    assert all(row["state"] == "complete" for row in rows)
    assert {"learning_rate", "dropout", "metric", "value", "loss", "epochs", "seconds"} <= set(rows[0])
    assert [row["epochs"] for row in rows] == ["1", "1", "2"] and rows[0]["metric"] == "val_accuracy"
    # The first coarse trial is the configuration's own values: the baseline.
    assert float(rows[0]["learning_rate"]) == TrainConfig.learning_rate and float(rows[0]["dropout"]) == 0.2
    # A decoded test split would have put its unreadable file in skipped.json.
    assert json.loads((out / "data" / "skipped.json").read_text()) == []
    summary = json.loads((out / "search.json").read_text())
    best_row = next(row for row in rows if row["trial"] == summary["best"]["trial"])
    values = json.loads((out / "best.json").read_text())
    assert values["search"]["reproduces"] is True and values["strategy"] == "finetune_top"
    # best.json alone trains the best trial again: the finetuned model's validation accuracy and loss.
    best = TrainConfig.from_dict(values)
    assert best.learning_rate == pytest.approx(float(best_row["learning_rate"])) and best.data.image_size == 48
    best.out = str(tmp_path / "run")
    finetuned = finetune.train(config=best).metrics["stages"]["finetune"]
    assert finetuned["val_accuracy"] == pytest.approx(float(best_row["value"]), abs=0.005)
    assert finetuned["val_log_loss"] == pytest.approx(float(best_row["loss"]), rel=0.01)
    # The two coarse trials' values differ, and so do their losses: the figure tells configurations apart.
    assert float(rows[0]["loss"]) != pytest.approx(float(rows[1]["loss"]), rel=0.01)


def test_train_config_file_values_under_the_options_given(tmp_path):
    from finetune.cli import _train_config, build_parser

    path = tmp_path / "best.json"
    values = TrainConfig(learning_rate=3e-4, strategy="finetune_most", epochs=5).to_dict()
    values["model"]["dropout"], values["search"] = 0.4, {"trial": "fine-2"}
    path.write_text(json.dumps(values))
    arguments = build_parser().parse_args(["train", "photos", "--config", str(path), "--epochs", "3", "--out", "r"])
    config = _train_config(arguments, "photos")
    assert (config.learning_rate, config.strategy, config.model.dropout) == (3e-4, "finetune_most", 0.4)
    assert config.epochs == 3 and config.out == "r" and config.data.source == "photos"
    (tmp_path / "bad.json").write_text(json.dumps({"data": {"colour": 1}}))
    arguments = build_parser().parse_args(["train", "photos", "--config", str(tmp_path / "bad.json")])
    with pytest.raises(finetune.FinetuneError, match="bad.json is not a finetune configuration"):
        _train_config(arguments, "photos")


def test_the_reporter_stops_a_trial_the_median_pruner_gives_up_on():
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=0),
                                pruner=optuna.pruners.MedianPruner(n_startup_trials=1, n_warmup_steps=0))
    good = study.ask()
    good.report(0.9, 0)
    study.tell(good, 0.9)

    class Model:
        stop_training = False

    for value, pruned in ((0.95, False), (0.2, True)):
        reporter = TrialReporter(study.ask())
        reporter.set_model(Model())
        reporter.on_epoch_end(0, {"val_accuracy": value})
        assert reporter.model.stop_training is pruned
        assert (reporter.stopped_because is not None) is pruned
    assert "below the median" in reporter.stopped_because
    late = TrialReporter(study.ask(), deadline=time.time() - 1)
    late.set_model(Model())
    late.on_epoch_end(0, {"val_accuracy": 0.99})
    assert late.model.stop_training and "budget" in late.stopped_because


@pytest.mark.slow
def test_a_diverging_trial_is_pruned_and_says_why(tmp_path):
    data = _presplit(tmp_path / "data")
    out = tmp_path / "search"
    with pytest.raises(finetune.FinetuneError, match="No trial of the search"):
        run_search(SearchConfig(trials=1, coarse_epochs=2, out=str(out), params=("learning_rate",),
                                ranges={"learning_rate": (0.5, 1.0)}),
                   _tiny_config(data, strategy="finetune_top", epochs=2, weight_decay=0.0))
    (row,) = _rows(out / "trials.csv")
    assert row["state"] == "pruned" and row["reason"].startswith("diverged")


@pytest.mark.slow
def test_a_killed_search_resumes_keeping_its_finished_trials(tmp_path):
    data = _presplit(tmp_path / "data")
    out = tmp_path / "search"
    command = [sys.executable, "-m", "finetune.cli", "search", str(data), *TINY, "--strategy", "finetune_top",
               "--trials", "2", "--coarse-epochs", "1", "--epochs", "1", "--quiet", "--out", str(out)]
    environment = {**os.environ, "PYTHONPATH": str(ROOT)}
    process = subprocess.Popen(command, cwd=ROOT, env=environment, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 240
        while time.time() < deadline and not (out / "trials.csv").exists():
            time.sleep(0.5)
        assert (out / "trials.csv").exists(), "the first trial never finished"
        time.sleep(2)  # into the second trial
        os.kill(process.pid, signal.SIGKILL)
    finally:
        process.kill()
        process.wait()
    first = _rows(out / "trials.csv")[0]
    assert first["state"] == "complete"
    subprocess.run(command, cwd=ROOT, env=environment, check=True, timeout=400, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)
    rows = _rows(out / "trials.csv")
    assert rows[0] == first  # kept, not run again
    finished = [row for row in rows if row["state"] == "complete"]
    assert len(finished) == 2
    interrupted = [row for row in rows if row["state"] == "fail"]
    assert len(interrupted) == 1 and "interrupted" in interrupted[0]["reason"]
    # The interrupted trial ran again with the same values.
    again = [row for row in finished if row["stage"] == interrupted[0]["stage"]
             and row["learning_rate"] == interrupted[0]["learning_rate"] and row["trial"] != first["trial"]]
    assert len(again) == 1


def test_unknown_knobs_and_bad_ranges_stop_the_search_before_any_work(tmp_path, capsys):
    data = write_image_folder(tmp_path / "data")
    out = tmp_path / "search"
    assert main(["search", str(data), "--params", "learnig_rate", "--out", str(out)]) == 2
    assert "Unknown search parameter 'learnig_rate'. Allowed: learning_rate" in capsys.readouterr().err
    assert main(["search", str(data), "--strategy", "linear", "--params", "dropout", "--out", str(out)]) == 2
    assert "dropout only applies to a finetuning strategy" in capsys.readouterr().err
    assert main(["search", str(data), "--range", "learning_rate=5:1", "--out", str(out)]) == 2
    assert "LOW < HIGH" in capsys.readouterr().err
    assert not out.exists()
