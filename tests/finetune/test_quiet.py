"""The quiet start: TensorFlow's start-up lines off stderr (unless --verbose), everything else kept."""

import os
import subprocess
import sys

import pytest

from finetune.cli import build_parser
from finetune.quiet import filtered_stderr, is_noise

# Lines measured on stderr of `finetune train` before the quiet start (TensorFlow 2.21, CPU).
MEASURED = [
    "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR",
    "I0000 00:00:1796198740.907808    4463 cudart_stub.cc:31] Could not find cuda drivers on your machine, GPU will "
    "not be used.",
    "E0000 00:00:1796198750.842421    4463 cuda_platform.cc:52] failed call to cuInit: INTERNAL: CUDA error: Failed "
    "call to cuInit: UNKNOWN ERROR (303)",
    "I0000 00:00:1796199132.473390    7231 cpu_feature_guard.cc:227] This TensorFlow binary is optimized to use "
    "available CPU instructions in performance-critical operations.",
    "To enable the following instructions: AVX2 FMA, in other operations, rebuild TensorFlow with the appropriate "
    "compiler flags.",
]


def test_the_measured_start_up_lines_are_noise_and_real_problems_are_not():
    assert all(is_noise(line + "\n") for line in MEASURED)
    for line in ("Traceback (most recent call last):", "ImportError: libcudnn.so.9: cannot open shared object file",
                 "E0000 00:00:1796198750.842421    4463 op_kernel.cc:1857] OP_REQUIRES failed at conv_ops.cc:1088",
                 "error: Run directory models/x does not exist."):
        assert not is_noise(line)


def test_what_libraries_write_to_descriptor_2_is_filtered_not_lost(capfd):
    with filtered_stderr():
        os.write(2, ("\n".join(MEASURED) + "\nsomething the user must see\n").encode())
    assert capfd.readouterr().err == "something the user must see\n"


def test_verbose_before_or_after_the_command():
    assert build_parser().parse_args(["runs"]).verbose is False
    assert build_parser().parse_args(["--verbose", "runs"]).verbose is True
    assert build_parser().parse_args(["runs", "--verbose"]).verbose is True
    assert build_parser().parse_args(["predict", "run", "a.png", "--verbose"]).verbose is True


def _start(*flags) -> str:
    """stderr of the command line's `main` when its command imports Keras (so TensorFlow) and does nothing else."""
    script = ("import sys, finetune.cli as cli\n"
              "cli.run_command = lambda arguments: __import__('keras') and 0\n"
              "sys.exit(cli.main(sys.argv[1:]))\n")
    environment = {name: value for name, value in os.environ.items() if name != "TF_CPP_MIN_LOG_LEVEL"}  # as a user has it
    done = subprocess.run([sys.executable, "-c", script, *flags, "runs"], capture_output=True, text=True,
                          env=environment, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stderr


@pytest.mark.slow  # two starts of TensorFlow, about 10 s each
def test_a_command_starts_without_tensorflows_lines_and_verbose_brings_them_back():
    verbose = _start("--verbose")
    assert any(is_noise(line) for line in verbose.splitlines()), verbose  # on this machine TensorFlow does print them
    assert _start() == ""
