"""The app's upload path with every bad input and with fuzzed bytes: top-k labels or a message, never a traceback."""

import time

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import finetune
from app import uploads
from finetune.data import load_image
from tests.finetune.data.bad_inputs import CONVERTED, SKIPPED, damaged_images, write_bad_input_folder

SECONDS_PER_UPLOAD = 2.0
FUZZ = settings(max_examples=40, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def colour_run(colour_models_dir):
    run = finetune.load_run(next(colour_models_dir.iterdir()))
    uploads.warm_up(run)  # the first prediction builds the graph: not what the time bound is about
    return run


def test_each_bad_input_uploaded_is_predicted_or_gets_its_reason(colour_run, tmp_path):
    folder = write_bad_input_folder(tmp_path / "data") / "cat"
    # What has bytes to upload: not links, and not the unreadable file (a browser reads it or cannot pick it).
    uploaded = ["truncated.jpg", "zero.jpg", "text.jpg", "bomb.png", "bomb.jpg", "bomb.tiff"]
    for name in uploaded + list(CONVERTED):
        result = uploads.predict_upload(colour_run, name, (folder / name).read_bytes(), top_k=2)
        if name in CONVERTED:
            assert result.ok and [p["label"] for p in result.predictions] in (["blue", "red"], ["red", "blue"]), name
            np.testing.assert_array_equal(result.image, load_image(folder / name), err_msg=name)  # as training sees it
        else:
            word = "decompression bomb" if name.startswith("bomb") else SKIPPED[name]
            assert not result.ok and word in result.error.lower() and not result.predictions, (name, result.error)
    bomb = uploads.predict_upload(colour_run, "bomb.jpg", (folder / "bomb.jpg").read_bytes())
    assert "Upload a downscaled copy" in bomb.error and "raise max_megapixels" not in bomb.error


def predict_within_the_bound(run, data: bytes):
    started = time.perf_counter()
    result = uploads.predict_upload(run, "fuzzed", data, top_k=2)
    seconds = time.perf_counter() - started
    assert seconds < SECONDS_PER_UPLOAD, f"{seconds:.1f} s for an upload of {len(data)} bytes"
    if result.ok:
        assert sorted(p["label"] for p in result.predictions) == ["blue", "red"]
        assert result.image.dtype == np.uint8 and result.image.ndim == 3 and result.image.shape[2] == 3
    else:
        assert isinstance(result.error, str) and result.error and not result.predictions


@FUZZ
@given(st.binary(max_size=2048))
def test_random_bytes_uploaded_are_refused_with_a_message(colour_run, data):
    predict_within_the_bound(colour_run, data)


@FUZZ
@given(damaged_images())
def test_damaged_images_uploaded_are_predicted_or_refused(colour_run, data):
    predict_within_the_bound(colour_run, data)
