import errno
import json
import os
from pathlib import Path

import keras
import numpy as np
import pytest

from finetune.errors import FinetuneError
from finetune.metrics import classification_metrics, top_k
from finetune.files import atomic_write_json, atomic_write_text, default_run_dir, save_model_atomic
from finetune.run import load_run


def test_atomic_write_leaves_no_temporary_files(tmp_path):
    atomic_write_json(tmp_path / "a.json", {"x": np.arange(3)})
    atomic_write_json(tmp_path / "a.json", {"x": 2})
    assert json.loads((tmp_path / "a.json").read_text()) == {"x": 2}
    assert [path.name for path in tmp_path.iterdir()] == ["a.json"]


def _fail_on(monkeypatch, name, error):
    """Makes `os.<name>` raise `error`: a write that fails after the new bytes were (partly) written."""
    def failing(*args, **kwargs):
        raise error

    monkeypatch.setattr(os, name, failing)


def _disk_full():
    return OSError(errno.ENOSPC, "No space left on device")


@pytest.mark.parametrize("failing", ["fsync", "replace"])
def test_a_write_that_fails_midway_keeps_the_old_file_and_names_the_path(tmp_path, monkeypatch, failing):
    path = tmp_path / "a.json"
    atomic_write_json(path, {"x": 1})
    _fail_on(monkeypatch, failing, _disk_full())
    with pytest.raises(FinetuneError) as raised:
        atomic_write_json(path, {"x": 2, "padding": "y" * 10_000})
    monkeypatch.undo()
    message = str(raised.value)
    assert f"Cannot write {path}" in message and "disk is full" in message and "\n" not in message
    assert json.loads(path.read_text()) == {"x": 1}
    assert [item.name for item in tmp_path.iterdir()] == ["a.json"]  # no temporary file left


def test_a_folder_without_permission_is_a_finetune_error_and_a_new_file_is_not_created(tmp_path, monkeypatch):
    _fail_on(monkeypatch, "replace", PermissionError(errno.EACCES, "Permission denied"))
    with pytest.raises(FinetuneError, match=r"Cannot write .*b\.json \(Permission denied\).*may not write there"):
        atomic_write_text(tmp_path / "b.json", "{}")
    monkeypatch.undo()
    assert list(tmp_path.iterdir()) == []


def _tiny_model(bias):
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1, bias_initializer=keras.initializers.Constant(bias))])
    return model


def test_save_model_atomic_keeps_the_old_model_when_the_rename_fails(tmp_path, monkeypatch):
    path = tmp_path / "model.keras"
    save_model_atomic(_tiny_model(1.0), path)
    before = path.read_bytes()
    _fail_on(monkeypatch, "replace", _disk_full())
    with pytest.raises(FinetuneError, match=f"Cannot write {path}.*disk is full"):
        save_model_atomic(_tiny_model(2.0), path)
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert [item.name for item in tmp_path.iterdir()] == ["model.keras"]
    reloaded = keras.saving.load_model(path)
    assert float(np.asarray(reloaded.layers[-1].bias)[0]) == 1.0


class _DiskFillsWhileSaving:
    """A model whose `save` writes part of the file, then meets a full disk (as Keras' zip writer would)."""

    def save(self, path):
        Path(path).write_bytes(b"PK\x03\x04 half a zip")
        raise _disk_full()


def test_save_model_atomic_leaves_no_half_written_model(tmp_path):
    path = tmp_path / "model.keras"
    save_model_atomic(_tiny_model(1.0), path)
    before = path.read_bytes()
    with pytest.raises(FinetuneError, match=f"Cannot write {path}.*disk is full"):
        save_model_atomic(_DiskFillsWhileSaving(), path)
    assert path.read_bytes() == before
    assert [item.name for item in tmp_path.iterdir()] == ["model.keras"]


def test_the_cli_reports_a_full_disk_in_one_line_without_a_traceback(tmp_path, monkeypatch, capsys):
    from finetune.cli import main
    from tests.conftest import write_image_folder

    data = write_image_folder(tmp_path / "data", classes=("a", "b"), per_class=3)
    replace = os.replace

    def full_at_labels(source, target):
        if Path(target).name == "labels.json":
            raise _disk_full()
        return replace(source, target)

    monkeypatch.setattr(os, "replace", full_at_labels)
    out = tmp_path / "run"
    assert main(["train", str(data), "--out", str(out), "--backbone", "mobilenet_v2", "--weights", "none",
                 "--alpha", "0.35", "--image-size", "32", "--quiet"]) == 2
    error = capsys.readouterr().err
    assert error.startswith(f"error: Cannot write {out / 'labels.json'}") and "disk is full" in error
    assert error.count("\n") == 1 and "Traceback" not in error
    assert (out / "skipped.json").is_file() and not (out / "labels.json").exists()


def test_default_run_dir_is_unique(tmp_path):
    first = default_run_dir("my photos!", "mobilenet_v2", tmp_path)
    first.mkdir()
    second = default_run_dir("my photos!", "mobilenet_v2", tmp_path)
    assert first != second and first.name.startswith("my_photos-mobilenet_v2-")


def test_load_run_errors_name_the_directory(tmp_path):
    with pytest.raises(FinetuneError, match="does not exist"):
        load_run(tmp_path / "nowhere")
    with pytest.raises(FinetuneError, match=r"no model\.keras"):
        load_run(tmp_path)


def test_classification_metrics_by_hand():
    labels = [0, 0, 1, 1, 2]
    probabilities = np.eye(3)[[0, 1, 1, 1, 0]]
    result = classification_metrics(labels, probabilities, ["a", "b", "c"])
    assert result["accuracy"] == pytest.approx(3 / 5)
    assert result["confusion_matrix"] == [[1, 1, 0], [0, 2, 0], [1, 0, 0]]
    assert result["per_class"]["b"] == {"precision": pytest.approx(2 / 3), "recall": 1.0, "support": 2}
    assert result["per_class"]["c"]["recall"] == 0.0


def test_top_k_orders_by_probability():
    rows = top_k(np.array([[0.1, 0.7, 0.2]]), ["a", "b", "c"], 2)
    assert [item["label"] for item in rows[0]] == ["b", "c"]
    assert top_k(np.array([[0.1, 0.7, 0.2]]), ["a", "b", "c"], 10)[0][-1]["label"] == "a"
