"""`finetune runs`: run folders written by hand (config.json, metrics.json), listed newest first, nothing trained."""

import json
import os

from finetune.cli import main
from finetune.run import honest_accuracy, models_dir
from finetune.runs import format_duration, list_runs


def write_run(directory, *, modified: float, metrics: dict, source="photos/cats_and_dogs", backbone="mobilenet_v2",
              strategy="finetune_top", image_size=96):
    """A finished run's files as `finetune train` writes them (model.keras is only touched: nothing loads it)."""
    directory.mkdir(parents=True)
    (directory / "labels.json").write_text(json.dumps(["cat", "dog"]))
    config = {"data": {"source": source}, "model": {"backbone": backbone}, "strategy": strategy, "image_size": image_size}
    (directory / "config.json").write_text(json.dumps(config))
    (directory / "metrics.json").write_text(json.dumps(metrics))
    (directory / "model.keras").write_bytes(b"")
    os.utime(directory / "model.keras", (modified, modified))
    return directory


HELD_OUT = {"strategy": "finetune_top", "val_accuracy": 0.91, "val": {"accuracy": 0.91, "held_out": True},
            "cv_accuracy": 0.88, "test_accuracy": 0.9, "train_seconds": 187.4}
REFIT = {"strategy": "linear", "val_accuracy": 1.0, "val": {"accuracy": 1.0, "held_out": False}, "cv_accuracy": 0.83,
         "test_accuracy": None, "train_seconds": 12.0}


def test_runs_are_listed_newest_first_with_the_honest_estimate_labelled(tmp_path):
    write_run(tmp_path / "old", modified=1_700_000_000, metrics=HELD_OUT)
    write_run(tmp_path / "new", modified=1_700_000_300, metrics=REFIT, source="tfds:beans", strategy="linear")
    write_run(tmp_path / "exports" / "middle", modified=1_700_000_100, metrics=HELD_OUT)  # a folder of runs, searched too
    (tmp_path / "old" / "snapshots" / "x").mkdir(parents=True)  # a run's own snapshots are not runs
    rows, problems = list_runs(tmp_path)
    assert problems == []
    assert [row.name for row in rows] == ["new", "exports/middle", "old"]
    new, _, old = rows
    # Not held out: the head saw the validation images, so the cross-validated figure is the estimate, not 1.0.
    assert (new.estimate, new.estimate_kind, new.data, new.strategy) == (0.83, "cross-validated", "tfds:beans", "linear")
    assert (old.estimate, old.estimate_kind, old.data, old.test_accuracy) == (0.91, "validation", "cats_and_dogs", 0.9)
    table = format_runs_text(tmp_path)
    lines = table.splitlines()
    assert lines[0].split() == ["run", "data", "backbone", "strategy", "size", "estimate", "test", "time", "date"]
    assert lines[1].split()[:8] == ["new", "tfds:beans", "mobilenet_v2", "linear", "96", "0.8300", "cv", "-"]
    assert "0.9100 val" in lines[3] and "3m07s" in lines[3]
    assert any(line.startswith("estimate cv: cross-validated") for line in lines)


def format_runs_text(folder) -> str:
    from finetune.runs import format_runs

    rows, problems = list_runs(folder)
    return format_runs(rows, problems, folder)


def test_a_run_that_cannot_be_read_is_reported_below_the_table_not_a_crash(tmp_path, capsys):
    write_run(tmp_path / "good", modified=1_700_000_000, metrics=HELD_OUT)
    broken = write_run(tmp_path / "broken", modified=1_700_000_100, metrics=HELD_OUT)
    (broken / "config.json").write_text("{not json")
    unfinished = tmp_path / "stopped"
    unfinished.mkdir()
    (unfinished / "labels.json").write_text("[]")  # begun, never finished: no model.keras
    assert main(["runs", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    table, below = out.split("Could not read 2 runs:")
    assert "good" in table and "broken" not in table
    assert f"{broken}: " in below
    assert str(unfinished) in below and "unfinished: no model.keras" in below


def test_runs_json_prints_the_rows_and_the_unreadable(tmp_path, capsys):
    write_run(tmp_path / "a", modified=1_700_000_000, metrics=REFIT)
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "model.keras").write_bytes(b"")  # no labels.json, no config.json
    assert main(["runs", str(tmp_path), "--json"]) == 0
    listing = json.loads(capsys.readouterr().out)
    assert [row["name"] for row in listing["runs"]] == ["a"]
    assert listing["runs"][0]["estimate_kind"] == "cross-validated" and listing["runs"][0]["train_seconds"] == 12.0
    assert [problem["path"] for problem in listing["unreadable"]] == [str(tmp_path / "b")]


def test_an_empty_or_missing_folder_says_how_to_make_a_run(tmp_path, capsys):
    assert main(["runs", str(tmp_path / "nothing")]) == 0
    assert "No training runs" in capsys.readouterr().out


def test_the_default_folder_is_the_apps():
    assert models_dir(None, {}) == models_dir("models", {})
    assert str(models_dir(None, {"FINETUNE_MODELS_DIR": "/srv/runs"})) == "/srv/runs"
    assert str(models_dir("here", {"FINETUNE_MODELS_DIR": "/srv/runs"})) == "here"


def test_the_honest_estimate_of_each_kind_of_run():
    assert honest_accuracy(HELD_OUT) == (0.91, "validation")
    assert honest_accuracy(REFIT) == (0.83, "cross-validated")
    assert honest_accuracy({"val": {"accuracy": 0.7, "held_out": False}}) == (0.7, "validation, not held out")
    assert honest_accuracy({"cv_accuracy": 0.6}) == (0.6, "cross-validated")  # no validation split at all
    assert honest_accuracy({}) == (None, None)


def test_durations_read_at_a_glance():
    assert [format_duration(s) for s in (None, 4.4, 187.4, 7500)] == ["-", "4s", "3m07s", "2h05m"]
