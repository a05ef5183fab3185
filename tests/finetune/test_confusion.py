"""`finetune.confusion`: the picture of the confusion matrix, from a run's end and from `finetune evaluate --plot`."""

import json
import types
import warnings

import numpy as np
import pytest
from PIL import Image

import finetune.cli
from finetune import confusion
from finetune.errors import FinetuneError
from finetune.finish import confusion_picture
from finetune.metrics import classification_metrics
from tests.conftest import write_image_folder
from tests.finetune.test_inference import LABELS, SIZE, position_model, write_run


def metrics_of(count: int, images_per_class: int = 4, seed: int = 0, empty: tuple[int, ...] = ()) -> dict:
    """Metrics of `count` classes with random predictions; the classes in `empty` have no images."""
    rng = np.random.default_rng(seed)
    labels = np.array([k for k in range(count) if k not in empty for _ in range(images_per_class)])
    probabilities = rng.uniform(size=(len(labels), count))
    return classification_metrics(labels, probabilities, [f"class_{k:02d}" for k in range(count)])


def drawn(monkeypatch, splits: dict):
    """The figure `plot_confusion` would write, caught instead of saved."""
    caught = {}
    monkeypatch.setattr(confusion, "save_figure", lambda figure, path: caught.setdefault("figure", figure) and path)
    confusion.plot_confusion(splits, "unused.png")
    return caught["figure"]


def test_the_picture_is_a_png_that_grows_with_the_classes(tmp_path):
    small = confusion.plot_confusion({"validation": metrics_of(3), "test": metrics_of(3, seed=1)}, tmp_path / "small.png")
    large = confusion.plot_confusion({"validation": metrics_of(14)}, tmp_path / "large.png")
    with Image.open(small) as image_small, Image.open(large) as image_large:
        assert image_small.format == image_large.format == "PNG"
        (small_width, small_height), (large_width, large_height) = image_small.size, image_large.size
    assert small_width > small_height > 0 and 400 < small_width < 2000  # two panels side by side, two rows of them
    assert large_width > small_width and large_height > small_height / 2
    assert large_width < 3000  # 14 classes: readable, not a poster


def test_class_names_label_both_axes_and_cells_are_numbered_until_there_are_too_many(monkeypatch):
    figure = drawn(monkeypatch, {"validation": metrics_of(3)})
    counts, percent = figure.axes[0], figure.axes[1]  # the colour bars come after the panels
    assert [label.get_text() for label in counts.get_xticklabels()] == ["class_00", "class_01", "class_02"]
    assert [label.get_text() for label in percent.get_yticklabels()] == ["class_00", "class_01", "class_02"]
    assert len(counts.texts) == 9 and all(text.get_text().endswith("%") for text in percent.texts)
    assert "validation: accuracy" in counts.get_title()
    many = drawn(monkeypatch, {"validation": metrics_of(confusion.ANNOTATE_MAX_CLASSES + 1, images_per_class=1)})
    assert len(many.axes[0].texts) == 0 and len(many.axes[0].get_xticklabels()) == confusion.ANNOTATE_MAX_CLASSES + 1


def test_a_class_without_images_is_grey_not_a_division_by_zero(tmp_path, monkeypatch):
    metrics = metrics_of(3, empty=(1,))
    percent = confusion.row_normalised(metrics["confusion_matrix"])
    assert np.isnan(percent[1]).all()
    np.testing.assert_allclose(percent[[0, 2]].sum(axis=1), [100.0, 100.0])
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # 0 / 0 would warn "invalid value encountered"
        path = confusion.plot_confusion({"test": metrics}, tmp_path / "empty_class.png")
    assert path.stat().st_size > 0
    figure = drawn(monkeypatch, {"test": metrics})
    assert [text.get_text() for text in figure.axes[1].texts[3:6]] == ["–", "–", "–"]


def test_a_failed_write_leaves_the_earlier_picture_whole(tmp_path, monkeypatch):
    import matplotlib.figure

    path = confusion.plot_confusion({"validation": metrics_of(3)}, tmp_path / "confusion.png")
    before = path.read_bytes()

    def broken_savefig(self, *args, **options):
        open(args[0], "wb").write(b"half a picture")  # a write that dies half way
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", broken_savefig)
    with pytest.raises(FinetuneError, match="Cannot write .*confusion.png.*No space left"):
        confusion.plot_confusion({"validation": metrics_of(5, seed=3)}, path)
    assert path.read_bytes() == before
    assert [item.name for item in tmp_path.iterdir()] == ["confusion.png"]  # no temporary file left behind


def test_bad_arguments_are_named(tmp_path):
    (tmp_path / "a_file").write_text("")
    with pytest.raises(FinetuneError, match=r"ending in .png. Received: path=.*picture.jpg"):
        confusion.plot_confusion({"test": metrics_of(2)}, tmp_path / "picture.jpg")
    with pytest.raises(FinetuneError, match=r"a_file is a file, not a folder. Received: --plot=.*a_file/deeper/out.png"):
        confusion.check_plot_path(tmp_path / "a_file" / "deeper" / "out.png", "--plot")
    with pytest.raises(FinetuneError, match="non-empty dict"):
        confusion.plot_confusion({}, tmp_path / "x.png")
    with pytest.raises(FinetuneError, match=r"Split `test` has no confusion matrix. *.*Received: splits\['test'\]"):
        confusion.plot_confusion({"test": {"accuracy": 0.5}}, tmp_path / "x.png")
    assert confusion.check_plot_path(tmp_path / "new" / "folder" / "x.png") == tmp_path / "new" / "folder" / "x.png"
    assert not (tmp_path / "new").exists()  # checking creates nothing


def test_a_failed_picture_at_the_end_of_a_run_is_recorded_not_raised(tmp_path, monkeypatch):
    quiet = types.SimpleNamespace(verbose=0)
    metrics = {"val": metrics_of(3), "test": metrics_of(3, seed=1), "strategy": "linear"}
    assert confusion_picture(tmp_path, metrics, quiet) == {}
    with Image.open(tmp_path / "confusion.png") as image:
        assert image.size[1] > image.size[0] / 2  # two splits: two rows of panels
    assert confusion_picture(tmp_path / "other", {"strategy": "linear"}, quiet) == {}  # nothing measured, no picture
    assert not (tmp_path / "other").exists()

    def fails(*args, **options):
        raise RuntimeError("no fonts")

    monkeypatch.setattr(confusion, "plot_confusion", fails)
    assert confusion_picture(tmp_path, metrics, quiet) == {"confusion_plot_error": "no fonts"}


@pytest.fixture
def tiny_run_and_folder(tmp_path):
    run = write_run(tmp_path / "run", position_model())
    data = write_image_folder(tmp_path / "data", classes=LABELS, per_class=2, size=SIZE)
    return run, data


def test_evaluate_plot_draws_the_folder_and_says_where(tiny_run_and_folder, tmp_path, capsys):
    run, data = tiny_run_and_folder
    out = tmp_path / "pictures" / "confusion.png"
    assert finetune.cli.main(["evaluate", str(run), str(data), "--plot", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "Accuracy:" in printed and f"Confusion matrix drawn in {out}" in printed
    with Image.open(out) as image:
        assert image.format == "PNG" and image.size[0] > image.size[1] > 100  # one split: one row of two panels
    assert finetune.cli.main(["evaluate", str(run), str(data), "--plot", str(tmp_path / "again.png"), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["plot"] == str(tmp_path / "again.png") and (tmp_path / "again.png").is_file()


def test_evaluate_plot_refuses_a_bad_path_before_any_work(tiny_run_and_folder, tmp_path, capsys, monkeypatch):
    run, data = tiny_run_and_folder

    def evaluate(*args, **options):
        raise AssertionError("evaluated before the path was checked")

    monkeypatch.setattr(finetune, "evaluate", evaluate)
    assert finetune.cli.main(["evaluate", str(run), str(data), "--plot", str(tmp_path / "confusion.jpg")]) == 2
    assert "ending in .png. Received: --plot=" in capsys.readouterr().err
    (tmp_path / "taken").write_text("a file where a folder should be")
    assert finetune.cli.main(["evaluate", str(run), str(data), "--plot", str(tmp_path / "taken" / "c.png")]) == 2
    error = capsys.readouterr().err
    assert "is a file, not a folder" in error and str(tmp_path / "taken" / "c.png") in error
