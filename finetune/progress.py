"""A progress bar on stderr: tqdm when it is installed (it comes with tensorflow-datasets), else a plain counter."""

from __future__ import annotations

import sys
from typing import Iterable, Iterator, TypeVar

Item = TypeVar("Item")


def progress(
    iterable: Iterable[Item], total: int | None = None, description: str = "", verbose: int = 1
) -> Iterable[Item]:
    """Wraps `iterable` in a progress bar written to stderr.

    Args:
        iterable: what to iterate over.
        total: how many items to expect; defaults to `len(iterable)` where it has one.
        description: a few words in front of the bar.
        verbose: 0 shows nothing and returns `iterable` itself. Defaults to 1.

    Example:
    >>> for path in progress(paths, description="Decoding"):
    ...     decode(path)
    """
    if not verbose:
        return iterable
    if total is None and hasattr(iterable, "__len__"):
        total = len(iterable)
    try:
        from tqdm import tqdm
    except ImportError:
        return _counter(iterable, total, description)
    return tqdm(iterable, total=total, desc=description, file=sys.stderr, unit="image", leave=False, dynamic_ncols=True)


def _counter(iterable: Iterable[Item], total: int | None, description: str) -> Iterator[Item]:
    count = 0
    of_total = f"/{total}" if total is not None else ""
    for count, item in enumerate(iterable, start=1):
        # Every item on a terminal; every 500th into a log file, so logs stay readable.
        if sys.stderr.isatty() or count % 500 == 0:
            sys.stderr.write(f"\r{description} {count}{of_total}")
            sys.stderr.flush()
        yield item
    if count:
        sys.stderr.write(f"\r{description} {count}{of_total} done\n")
        sys.stderr.flush()
