"""finetune.health: the report `finetune check-data` prints."""

import json
import shutil

import numpy as np
import pytest
from PIL import Image

from finetune.errors import FinetuneError
from finetune.health import format_health_report, health_report
from tests.conftest import write_image_folder


@pytest.fixture
def messy_folder(tmp_path):
    """train/ (cat 6, dog 2 + a broken file) and val/ holding a copy of a train image."""
    root = tmp_path / "messy"
    write_image_folder(root / "train", classes=("cat",), per_class=6, size=40)
    write_image_folder(root / "train", classes=("dog",), per_class=2, size=40, seed=1)
    write_image_folder(root / "val", classes=("cat", "dog"), per_class=1, size=24, seed=2)
    shutil.copy(root / "train" / "cat" / "3.png", root / "val" / "cat" / "copy.png")
    shutil.copy(root / "train" / "dog" / "0.png", root / "train" / "dog" / "again.png")  # within a split
    Image.fromarray(np.zeros((10, 30), np.uint8)).save(root / "train" / "dog" / "gray.jpg")
    (root / "train" / "dog" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 and then nothing")
    (root / "train" / "dog" / "empty.png").write_bytes(b"")
    (root / "train" / "dog" / ".DS_Store").write_bytes(b"x")
    return root


def test_health_report_counts_skips_and_duplicates(messy_folder):
    report = health_report(str(messy_folder))
    json.dumps(report)  # the CLI prints it as JSON
    assert report["presplit"] and report["class_names"] == ["cat", "dog"]
    assert report["counts"] == {"train": {"cat": 6, "dog": 4}, "val": {"cat": 2, "dog": 1}}
    assert report["totals"] == {"train": 10, "val": 3}
    assert report["imbalance_ratio"] == 1.5 and not report["class_weights_apply"]

    reasons = {item["path"].split("/")[-1]: item["reason"] for item in report["skipped"]}
    assert set(reasons) == {"broken.jpg", "empty.png"}
    assert "empty" in reasons["empty.png"]
    assert "corrupt" in reasons["broken.jpg"] or "truncated" in reasons["broken.jpg"]

    assert len(report["duplicates"]) == 1
    pair = report["duplicates"][0]
    assert sorted(pair["splits"]) == ["train", "val"]
    assert {path.split("messy/")[1] for path in pair["paths"]} == {"train/cat/3.png", "val/cat/copy.png"}
    assert report["duplicates_within_splits"] == 1

    assert report["image_size"] == {"min_width": 24, "max_width": 40, "min_height": 10, "max_height": 40}
    assert report["modes"] == {"L": 1, "RGB": 12}
    assert report["formats"] == {"JPEG": 1, "PNG": 12}


def test_class_weights_are_reported_when_classes_are_imbalanced(tmp_path):
    root = tmp_path / "images"
    write_image_folder(root, classes=("common",), per_class=10, size=8)
    write_image_folder(root, classes=("rare",), per_class=3, size=8, seed=1)
    report = health_report(str(root), val_fraction=0.2, seed=0)
    assert report["counts"] == {"train": {"common": 8, "rare": 2}, "val": {"common": 2, "rare": 1}}
    assert report["imbalance_ratio"] == 4.0 and report["class_weights_apply"]
    assert report["class_weights"] == {"common": 10 / (2 * 8), "rare": 10 / (2 * 2)}
    assert report["duplicates"] == [] and report["skipped"] == []
    text = format_health_report(report)
    assert "class weights apply" in text and "No identical files across splits" in text


def test_formatted_report_is_a_readable_table(messy_folder):
    text = format_health_report(health_report(str(messy_folder)))
    lines = text.splitlines()
    assert lines[0].startswith("Data set: messy")
    header = next(line for line in lines if line.startswith("class"))
    assert header.split() == ["class", "train", "val", "total"]
    assert next(line for line in lines if line.startswith("cat")).split() == ["cat", "6", "2", "8"]
    assert next(line for line in lines if line.startswith("total")).split() == ["total", "10", "3", "13"]
    assert "train/dog/broken.jpg:" in text and "train/dog/empty.png: empty file (0 bytes)" in text
    assert "train/cat/3.png (train) == val/cat/copy.png (val)" in text
    assert "width 24..40 px, height 10..40 px" in text
    assert "no class weights needed" in text


def test_health_report_of_a_missing_folder_is_a_clear_error(tmp_path):
    with pytest.raises(FinetuneError, match="does not exist"):
        health_report(str(tmp_path / "nowhere"))


def test_check_data_reports_every_problem_at_once(tmp_path):
    """Classes that differ between splits, an empty class folder and one class alone: all in one report."""
    root = tmp_path / "data"
    write_image_folder(root / "train", classes=("cat", "dog"), per_class=2, size=8)
    (root / "train" / "emu").mkdir()
    write_image_folder(root / "val", classes=("cat",), per_class=2, size=8)
    report = health_report(str(root))
    paths = sorted(item["path"] for item in report["problems"])
    assert paths == [str(root / "train" / "emu"), str(root / "val"), str(root / "val")]
    problems = " ".join(item["problem"] for item in report["problems"])
    assert "no images" in problems and "at least two class subfolders" in problems and "different classes" in problems
    assert report["counts"]["val"] == {"cat": 2, "dog": 0, "emu": 0}
    assert "Problems (" in format_health_report(report)
