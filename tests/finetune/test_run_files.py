import json

import numpy as np
import pytest

from finetune.errors import FinetuneError
from finetune.metrics import classification_metrics, top_k
from finetune.files import atomic_write_json, default_run_dir
from finetune.run import load_run


def test_atomic_write_leaves_no_temporary_files(tmp_path):
    atomic_write_json(tmp_path / "a.json", {"x": np.arange(3)})
    atomic_write_json(tmp_path / "a.json", {"x": 2})
    assert json.loads((tmp_path / "a.json").read_text()) == {"x": 2}
    assert [path.name for path in tmp_path.iterdir()] == ["a.json"]


def test_failed_write_keeps_the_old_file(tmp_path):
    atomic_write_json(tmp_path / "a.json", {"x": 1})
    with pytest.raises(TypeError):
        atomic_write_json(tmp_path / "a.json", {"x": object()})
    assert json.loads((tmp_path / "a.json").read_text()) == {"x": 1}
    assert len(list(tmp_path.iterdir())) == 1


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
