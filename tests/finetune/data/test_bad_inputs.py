"""Every bad input the README names, through check-data, train, evaluate and predict: converted, or skipped with why.

One data set mixes good images with truncated, empty, mislabelled, odd-mode, animated, bomb,
one-pixel, non-ASCII, hidden, looping, unreadable and vanishing files (see `bad_inputs.py`);
one tiny model is trained on it once for the module.
"""

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import finetune
import finetune.data
from finetune.cli import main
from finetune.data import discover, load_split
from finetune.errors import FinetuneError
from finetune.health import format_health_report, health_report
from tests.conftest import class_image
from tests.finetune.data.bad_inputs import (
    CONVERTED,
    GOOD_PER_CLASS,
    IGNORED,
    SKIPPED,
    unreadable,
    write_bad_input_folder,
)

TINY = dict(backbone="mobilenet_v2", weights="none", alpha=0.35, image_size=32, batch_size=8, verbose=0, tta="none")
READABLE = 2 * GOOD_PER_CLASS + len(CONVERTED)
GONE = "the file is gone"


def reasons_by_name(skipped) -> dict[str, str]:
    return {Path(item["path"]).name: item["reason"] for item in skipped}


def assert_skipped_with_reasons(skipped, expected=SKIPPED):
    reasons = reasons_by_name(skipped)
    assert set(reasons) == set(expected), reasons
    for name, word in expected.items():
        assert word in reasons[name].lower(), (name, reasons[name])
    assert not set(reasons) & set(IGNORED) and not set(reasons) & set(CONVERTED)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """The bad-input folder trained on once; vanishing.png is deleted after listing, before decoding."""
    root = write_bad_input_folder(tmp_path_factory.mktemp("bad_inputs") / "data")
    vanishing = root / "dog" / "vanishing.png"
    Image.fromarray(class_image(1, 55)).save(vanishing)
    listed = finetune.data.discover

    def discover_then_delete(*arguments, **options):
        source = listed(*arguments, **options)
        vanishing.unlink(missing_ok=True)
        return source

    with pytest.MonkeyPatch.context() as patch, unreadable(root / "cat" / "unreadable.png"):
        patch.setattr(finetune.data, "discover", discover_then_delete)
        run = finetune.train(root, out=str(root.parent / "run"), epochs=0, **TINY)
    return root, run


def test_check_data_reports_every_bad_input_and_the_empty_class_at_once(tmp_path, capsys):
    root = write_bad_input_folder(tmp_path / "data", empty_class=True)
    with unreadable(root / "cat" / "unreadable.png"):
        report = health_report(str(root))
        assert main(["check-data", str(root)]) == 1  # training would stop on the empty class
    text = capsys.readouterr().out

    assert_skipped_with_reasons(report["skipped"])
    assert report["class_names"] == ["cat", "dog", "empty"]
    assert sum(report["counts"]["train"].values()) + sum(report["counts"]["val"].values()) == READABLE
    assert {"CMYK", "I;16", "P", "RGBA"} <= set(report["modes"])
    assert set(report["formats"]) == {"BMP", "GIF", "JPEG", "PNG", "TIFF", "WEBP"}
    [problem] = report["problems"]
    assert problem["path"] == str(root / "empty") and "has no files" in problem["problem"]
    assert "Add images to it or remove the folder" in problem["problem"]
    assert text == format_health_report(report) + "\n"
    assert f"Problems (1; `finetune train` stops on these):\n  empty: {problem['problem']}" in text
    assert f"Skipped files ({len(SKIPPED)}; training skips them too)" in text


def test_check_data_names_a_class_none_of_whose_images_can_be_read(tmp_path, capsys):
    root = write_bad_input_folder(tmp_path / "data")
    (root / "bird").mkdir()
    (root / "bird" / "a.jpg").write_text("not an image")
    (root / "bird" / "b.jpg").write_bytes(b"\xff\xd8\xff\xe0 cut")
    assert main(["check-data", str(root), "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    [problem] = report["problems"]
    assert problem["path"] == str(root / "bird") and "'bird' has no readable images" in problem["problem"]
    assert {"a.jpg", "b.jpg"} <= set(reasons_by_name(report["skipped"]))


def test_check_data_of_a_healthy_folder_exits_0(tmp_path, capsys):
    root = tmp_path / "data"
    for label, name in enumerate(("cat", "dog")):
        (root / name).mkdir(parents=True)
        Image.fromarray(class_image(label, 0)).save(root / name / "0.png")
    assert main(["check-data", str(root)]) == 0
    assert "Problems" not in capsys.readouterr().out


def test_train_skips_each_bad_input_with_its_reason_in_skipped_json(trained):
    root, run = trained
    skipped = json.loads((run.directory / "skipped.json").read_text())
    assert_skipped_with_reasons(skipped, {**SKIPPED, "vanishing.png": GONE})
    assert run.metrics["num_skipped"] == len(SKIPPED) + 1
    assert run.metrics["cv_images"] == READABLE  # every converted image trained on, the bad ones not


def test_evaluate_scores_the_readable_images_and_lists_the_rest(trained, capsys):
    root, run = trained
    with unreadable(root / "cat" / "unreadable.png"):
        assert main(["evaluate", str(run.directory), str(root), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["num_images"] == READABLE
    assert_skipped_with_reasons(result["skipped"])


def test_predict_answers_every_readable_image_and_says_why_for_the_others(trained, capsys):
    root, run = trained
    with unreadable(root / "cat" / "unreadable.png"):
        results = finetune.predict(run, [root / "cat"], top_k=1)
        assert main(["predict", str(run.directory), str(root / "cat")]) == 0
    lines = capsys.readouterr().out.splitlines()
    errors = {Path(item["path"]).name: item["error"] for item in results if "error" in item}
    assert_skipped_with_reasons([{"path": name, "reason": error} for name, error in errors.items()])
    answered = {Path(item["path"]).name for item in results if "predictions" in item}
    assert answered == set(CONVERTED) | {f"{index}.png" for index in range(GOOD_PER_CLASS)}
    for name in SKIPPED:
        assert any(line.startswith(str(root / "cat" / name) + ": skipped (") for line in lines), name


def test_a_file_deleted_between_listing_and_decoding_is_skipped_not_fatal(tmp_path):
    root = write_bad_input_folder(tmp_path / "data")
    data = discover(str(root), val_fraction=0.0)
    (root / "dog" / "0.png").unlink()
    for cache in (False, True):
        loaded = load_split(data, "train", 16, cache=cache, verbose=0)
        reasons = reasons_by_name(loaded.skipped)
        assert reasons["0.png"].startswith(GONE) and "run again" in reasons["0.png"]
        assert len(loaded.labels) == READABLE  # one good image gone; unreadable.png reads outside `unreadable`


def test_the_converted_files_decode_to_rgb_as_the_readme_says(tmp_path):
    root = write_bad_input_folder(tmp_path / "data")
    images = {name: finetune.data.load_image(root / "cat" / name) for name in CONVERTED}
    for name, image in images.items():
        assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3, name
    assert images["exif_rotated.jpg"].shape == (40, 20, 3)  # 40x20 stored, turned upright
    assert images["one_pixel.png"].shape == (1, 1, 3)
    np.testing.assert_array_equal(images["rgba.png"][0, 0], (255, 255, 255))  # transparent on white
    np.testing.assert_array_equal(images["palette.png"][0, 0], (255, 255, 255))
    np.testing.assert_array_equal(images["animated.gif"][0, -1], (255, 0, 0))  # the first frame
    np.testing.assert_array_equal(images["sixteen.png"][0, 0], (156, 156, 156))  # 40000 / 257, not clipped
    np.testing.assert_allclose(images["cmyk.jpg"][0, 0], (0, 255, 255), atol=6)


def test_a_split_too_large_for_memory_is_a_clear_error(tmp_path):
    root = tmp_path / "data"
    for label, name in enumerate(("cat", "dog")):
        (root / name).mkdir(parents=True)
        Image.fromarray(class_image(label, 0, size=8)).save(root / name / "0.png")
    data = discover(str(root), val_fraction=0.0)
    # 2 images of 10^7 x 10^7 px: 600 TB, more than any address space, so the allocation fails at once.
    with pytest.raises(FinetuneError, match=r"\(2 images at 10000000x10000000 px\) needs 558,793.5 GiB of memory"):
        load_split(data, "train", 10**7, cache=False, verbose=0)
