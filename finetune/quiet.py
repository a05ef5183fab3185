"""A quiet start: TensorFlow's own start-up lines and warnings kept off the terminal, unless asked for.

Measured (TensorFlow 2.21 on a CPU machine, `finetune train` of the sample): 16 lines on stderr
before any of ours could matter, none of them about the user's run:

    WARNING: All log messages before absl::InitializeLog() is called are written to STDERR  (twice)
    I0000 ... cudart_stub.cc:31] Could not find cuda drivers on your machine, GPU will not be used. (twice)
    E0000 ... cuda_platform.cc:52] failed call to cuInit: ... UNKNOWN ERROR (303)
    WARNING:tensorflow:5 out of the last 8 calls to <function ...> triggered tf.function retracing. ...

The cuInit line obeys TF_CPP_MIN_LOG_LEVEL=3 (errors off). The others do not: TensorFlow's
shared libraries write them straight to file descriptor 2 while they load, through absl's C++
logging before anything initialises it (hence its preamble, one per library). So `quiet_start`
also loads TensorFlow, on its first import, with descriptor 2 sent to a temporary file, and
writes back every line of it that is not one of `NOISE`: an error while importing still shows.
The retracing warnings count the traces of every Keras model's predict step together (they share
one code object), so a run that builds a few small models warns without anything to fix; they go
through the "tensorflow" Python logger, set to errors only.

`--verbose` on the command line skips all of this: TensorFlow then logs as it would by itself.
"""

from __future__ import annotations

import contextlib
import importlib.abc
import importlib.util
import logging
import os
import re
import sys
import tempfile

LOG_LEVEL_VARIABLE = "TF_CPP_MIN_LOG_LEVEL"

# Lines TensorFlow writes while loading that say nothing about the run: absl's preamble, and the
# notices of libraries looking for a GPU or describing the CPU build (absl's format: severity,
# date, time, thread, file:line]).
NOISE = (
    re.compile(r"^WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR$"),
    re.compile(r"^[IWE]\d{4} [\d:. ]+\d+ (cudart_stub|cuda_platform|cuda_dnn|cuda_fft|cuda_blas|cuda_executor|"
               r"cpu_feature_guard|port)\.cc:\d+\] "),
    re.compile(r"^To enable the following instructions: .* rebuild TensorFlow with the appropriate compiler flags\.$"),
)


def is_noise(line: str) -> bool:
    """Whether `line` (of TensorFlow's start-up output) is one of `NOISE`."""
    line = line.rstrip("\r\n")
    return any(pattern.search(line) for pattern in NOISE)


def quiet_start(verbose: bool = False, environ=None) -> None:
    """Keeps TensorFlow's start-up lines and Python warnings off stderr; call it before TensorFlow is imported.

    Sets TF_CPP_MIN_LOG_LEVEL=3 unless the environment sets it already, the "tensorflow" and
    "absl" loggers to errors only, and arranges for TensorFlow's first import to drop `NOISE`
    from what its libraries write to stderr. Nothing of this when `verbose`.

    Args:
        verbose: leave TensorFlow's logging as it is. Defaults to False.
        environ: the environment to set. Defaults to `os.environ`.
    """
    if verbose:
        return
    environ = os.environ if environ is None else environ
    environ.setdefault(LOG_LEVEL_VARIABLE, "3")
    _quiet_python_loggers()
    if "tensorflow" not in sys.modules and not any(isinstance(finder, _QuietImport) for finder in sys.meta_path):
        sys.meta_path.insert(0, _QuietImport())


def _quiet_python_loggers() -> None:
    logging.getLogger("tensorflow").setLevel(logging.ERROR)
    logging.getLogger("absl").setLevel(logging.ERROR)
    absl_logging = sys.modules.get("absl.logging")
    if absl_logging is not None:  # absl keeps its own verbosity, applied when it logs
        absl_logging.set_verbosity(absl_logging.ERROR)


@contextlib.contextmanager
def filtered_stderr():
    """Sends file descriptor 2 to a temporary file inside the block, then writes back each line that is not noise."""
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError, AttributeError):  # no descriptor 2 to redirect
        yield
        return
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            yield
        finally:
            with contextlib.suppress(OSError, ValueError, AttributeError):
                sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            kept = [line for line in captured.read().decode(errors="replace").splitlines(keepends=True)
                    if not is_noise(line)]
            if kept:
                sys.stderr.write("".join(kept))
                sys.stderr.flush()


class _QuietImport(importlib.abc.MetaPathFinder):
    """Finds `tensorflow` on its first import and has it loaded inside `filtered_stderr`."""

    def find_spec(self, name, path=None, target=None):
        if name != "tensorflow":
            return None
        sys.meta_path.remove(self)  # once; the other finders find it
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.loader is not None:
            spec.loader = _QuietLoader(spec.loader)
        return spec


class _QuietLoader(importlib.abc.Loader):
    def __init__(self, loader):
        self._loader = loader

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module):
        try:
            with filtered_stderr():
                self._loader.exec_module(module)
        finally:  # the module is the real loader's, as if this one had never been there
            module.__loader__ = self._loader
            if getattr(module, "__spec__", None) is not None:
                module.__spec__.loader = self._loader
        _quiet_python_loggers()

    def __getattr__(self, name):
        return getattr(self._loader, name)
