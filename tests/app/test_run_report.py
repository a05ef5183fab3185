"""How the chosen run did, in the app: its confusion matrix and per-class precision/recall, in an expander."""

import json

import numpy as np

from app import listing, report
from finetune.confusion import plot_confusion
from finetune.export.writer import export_ensemble
from finetune.metrics import classification_metrics
from tests.app.conftest import write_colour_run
from tests.app.test_streamlit_app import start_app

# Validation: 3 blue (one called red), 2 red. Test: 2 blue, 2 red, all right.
VAL = classification_metrics([0, 0, 0, 1, 1], np.eye(2)[[0, 0, 1, 1, 1]], ["blue", "red"])
TEST = classification_metrics([0, 0, 1, 1], np.eye(2)[[0, 0, 1, 1]], ["blue", "red"])


def measured_run(directory, *, picture: bool, **extra):
    run = write_colour_run(directory)
    (run / "metrics.json").write_text(json.dumps({"val_accuracy": VAL["accuracy"], "val": VAL, "test": TEST, **extra}))
    if picture:
        plot_confusion({"validation": VAL, "test": TEST}, run / "confusion.png")
    return run


def expander(app):
    found = [block for block in app.expander if block.label == report.EXPANDER_LABEL]
    assert len(found) <= 1
    return found[0] if found else None


def test_the_run_shows_its_picture_and_per_class_figures(tmp_path, monkeypatch):
    measured_run(tmp_path / "measured", picture=True)
    shown = expander(start_app(tmp_path, monkeypatch))
    assert shown is not None and len(shown.image) == 1
    titles = " ".join(element.value for element in shown.markdown)
    assert "Validation: accuracy 80.0% on 5 images" in titles and "Test: accuracy 100.0% on 4 images" in titles
    validation, test = (frame.value.to_dict("records") for frame in shown.dataframe)  # the picture: no counts table
    assert validation == [{"class": "blue", "precision": 1.0, "recall": 0.667, "support": 3},
                          {"class": "red", "precision": 0.667, "recall": 1.0, "support": 2}]
    assert [row["support"] for row in test] == [2, 2]


def test_a_run_without_the_picture_shows_the_counts_as_a_table(tmp_path, monkeypatch):
    measured_run(tmp_path / "older", picture=False, confusion_plot_error="no fonts",
                 **{"val": {**VAL, "held_out": False}})
    shown = expander(start_app(tmp_path, monkeypatch))
    assert shown is not None and len(shown.image) == 0
    counts = shown.dataframe[0].value.to_dict("records")
    assert counts == [{"true class": "blue", "blue": 2, "red": 1}, {"true class": "red", "blue": 0, "red": 2}]
    assert len(shown.dataframe) == 4  # counts and per-class figures of both splits
    notes = " ".join(caption.value for caption in shown.caption)
    assert "could not be drawn when training finished: no fonts" in notes and "validation images are not held out" in notes


def test_runs_without_per_class_figures_and_exports_have_no_report(tmp_path, monkeypatch):
    write_colour_run(tmp_path / "runs" / "bare")  # metrics.json: {"val_accuracy": 0.75}, as hand-made or old runs
    partial = write_colour_run(tmp_path / "runs" / "partial")
    (partial / "metrics.json").write_text(json.dumps({"val": {"accuracy": 1.0, "held_out": True}, "test": "broken"}))
    app = start_app(tmp_path / "runs", monkeypatch)
    for index in range(len(app.sidebar.selectbox(key="model").options)):
        app.sidebar.selectbox(key="model").select_index(index).run()
        assert not app.exception and expander(app) is None
    entries, _ = listing.find_models(tmp_path / "runs")
    assert [report.run_report(entry) for entry in entries] == [None, None]
    export_ensemble([measured_run(tmp_path / "member", picture=True)], tmp_path / "exports" / "one", members="best")
    (entry,), _ = listing.find_models(tmp_path / "exports")
    assert entry.kind == "export" and report.run_report(entry) is None
