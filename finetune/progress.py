"""Progress that suits where it goes: bars on a terminal, a line now and then into a log file.

On a terminal (a TTY) `progress` draws a bar on stderr (tqdm when it is installed, it comes with
tensorflow-datasets; else a counter) and Keras draws its own bars (`keras_verbose` gives 1).
Into a file or a pipe (CI, `2> log`) carriage-return bars are noise: `progress` writes one line
per `LOG_EVERY_ITEMS` items or `LOG_EVERY_SECONDS` seconds, whichever comes first, and one when
done; Keras writes one line per epoch (`keras_verbose` gives 2).
"""

from __future__ import annotations

import sys
import time
from typing import Callable, Iterable, Iterator, TypeVar

Item = TypeVar("Item")

# Into a log: a line per this many items or seconds, whichever comes first.
LOG_EVERY_ITEMS = 1000
LOG_EVERY_SECONDS = 10.0


def is_terminal(stream) -> bool:
    """Whether `stream` is a terminal (a person watching), not a file, a pipe or a test's buffer."""
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


def keras_verbose(verbose: int, stream=None) -> int:
    """The `verbose` of Keras's `fit` and `predict`: 0 silent, 1 bars on a terminal, 2 one line per epoch elsewhere.

    Keras draws carriage-return bars whenever Python runs on a POSIX system, even into a file,
    so a log gets every update of every bar; verbose=2 writes one line per epoch instead.

    Args:
        verbose: our own setting (`TrainConfig.verbose`); 0 shows nothing.
        stream: where Keras writes. Defaults to `sys.stdout`.
    """
    if not verbose:
        return 0
    return 1 if is_terminal(sys.stdout if stream is None else stream) else 2


def progress(
    iterable: Iterable[Item], total: int | None = None, description: str = "", verbose: int = 1, stream=None
) -> Iterable[Item]:
    """Wraps `iterable` in a progress bar written to stderr, or in log lines when stderr is not a terminal.

    Args:
        iterable: what to iterate over.
        total: how many items to expect; defaults to `len(iterable)` where it has one.
        description: a few words in front of the bar.
        verbose: 0 shows nothing and returns `iterable` itself. Defaults to 1.
        stream: where to write. Defaults to `sys.stderr`.

    Example:
    >>> for path in progress(paths, description="Decoding"):
    ...     decode(path)
    """
    if not verbose:
        return iterable
    stream = sys.stderr if stream is None else stream
    if total is None and hasattr(iterable, "__len__"):
        total = len(iterable)
    if not is_terminal(stream):
        return log_lines(iterable, total, description, stream)
    try:
        from tqdm import tqdm
    except ImportError:
        return _counter(iterable, total, description, stream)
    return tqdm(iterable, total=total, desc=description, file=stream, unit="image", leave=False, dynamic_ncols=True)


def log_lines(iterable: Iterable[Item], total: int | None, description: str, stream, *,
              every_items: int = LOG_EVERY_ITEMS, every_seconds: float = LOG_EVERY_SECONDS,
              clock: Callable[[], float] = time.monotonic) -> Iterator[Item]:
    """Yields the items of `iterable`, writing "DESCRIPTION: N/TOTAL" lines to `stream` now and then, and one when done.

    Args:
        iterable, total, description, stream: as in `progress`.
        every_items: a line after this many items since the last one. Defaults to `LOG_EVERY_ITEMS`.
        every_seconds: or after this many seconds. Defaults to `LOG_EVERY_SECONDS`.
        clock: seconds, for tests. Defaults to `time.monotonic`.
    """
    of_total = f"/{total}" if total is not None else ""
    started = last_time = clock()
    count = last_count = 0
    for count, item in enumerate(iterable, start=1):
        yield item
        now = clock()
        if count - last_count >= every_items or now - last_time >= every_seconds:
            stream.write(f"{description}: {count}{of_total}\n")
            stream.flush()
            last_count, last_time = count, now
    if count:
        stream.write(f"{description}: {count}{of_total} done in {clock() - started:.1f} s\n")
        stream.flush()


def _counter(iterable: Iterable[Item], total: int | None, description: str, stream) -> Iterator[Item]:
    """A bar without tqdm, on a terminal: the count, rewritten in place."""
    count = 0
    of_total = f"/{total}" if total is not None else ""
    for count, item in enumerate(iterable, start=1):
        stream.write(f"\r{description} {count}{of_total}")
        stream.flush()
        yield item
    if count:
        stream.write(f"\r{description} {count}{of_total} done\n")
        stream.flush()
