"""Fuzzing the decoder: random bytes and damaged images give 8-bit RGB or a `BadImageError`, quickly, never a crash.

Examples are derandomised (the same every run, so CI is not flaky) and few; set
FINETUNE_FUZZ_EXAMPLES to explore more. The app's upload path is fuzzed in tests/app/test_upload_bad_inputs.py.
"""

import os
import time

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from finetune.data import BadImageError, load_image, resize_image
from tests.finetune.data.bad_inputs import VALID, damaged_images

EXAMPLES = int(os.environ.get("FINETUNE_FUZZ_EXAMPLES", "150"))
SECONDS_PER_EXAMPLE = 2.0
# No example database (nothing written into the repository); the same examples every run.
FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow])


def decode_or_refuse(data: bytes):
    """The decoder's outcome: ("image", array) or ("refused", reason); anything else raises out of the test."""
    started = time.perf_counter()
    try:
        outcome = "image", resize_image(load_image(data), 16)
    except BadImageError as error:
        outcome = "refused", error.reason
    seconds = time.perf_counter() - started
    assert seconds < SECONDS_PER_EXAMPLE, f"{seconds:.1f} s to decode {len(data)} bytes"
    return outcome


def assert_rgb_or_reason(outcome):
    kind, value = outcome
    if kind == "image":
        assert value.dtype == np.uint8 and value.shape == (16, 16, 3)
    else:
        assert isinstance(value, str) and value


@FUZZ
@given(st.binary(max_size=2048))
def test_random_bytes_decode_or_are_refused(data):
    assert_rgb_or_reason(decode_or_refuse(data))


@FUZZ
@given(damaged_images())
def test_damaged_images_decode_or_are_refused(data):
    assert_rgb_or_reason(decode_or_refuse(data))


def test_the_valid_seeds_decode():
    """The fuzzed images start from images that decode: damage, not an unreadable seed, is what is tested."""
    for fmt, data in VALID.items():
        assert decode_or_refuse(data)[0] == "image", fmt
