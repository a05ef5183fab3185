"""Progress that suits its stream: Keras's verbose by TTY, log lines instead of carriage-return bars in a file."""

import io

from finetune.progress import keras_verbose, log_lines, progress


class Terminal(io.StringIO):
    def isatty(self):
        return True


def test_keras_draws_bars_on_a_terminal_and_one_line_per_epoch_into_a_log():
    assert keras_verbose(1, Terminal()) == 1
    assert keras_verbose(1, io.StringIO()) == 2  # a file, a pipe, CI
    assert keras_verbose(0, Terminal()) == 0 and keras_verbose(0, io.StringIO()) == 0

    class Closed:
        def isatty(self):
            raise ValueError("I/O operation on closed file")

    assert keras_verbose(1, Closed()) == 2 and keras_verbose(1, object()) == 2


def test_into_a_log_a_line_per_thousand_items_and_one_when_done_never_a_carriage_return():
    stream = io.StringIO()
    assert list(progress(range(2500), description="Decoding train images", stream=stream)) == list(range(2500))
    lines = stream.getvalue().splitlines()
    assert lines[:2] == ["Decoding train images: 1000/2500", "Decoding train images: 2000/2500"]
    assert len(lines) == 3 and lines[2].startswith("Decoding train images: 2500/2500 done in ")
    assert "\r" not in stream.getvalue()


def test_into_a_log_slow_items_get_a_line_every_ten_seconds():
    now = [0.0]

    def clock():
        now[0] += 4.0  # each item takes 4 s
        return now[0]

    stream = io.StringIO()
    list(log_lines(range(6), 6, "Features", stream, clock=clock))
    assert stream.getvalue().splitlines()[:2] == ["Features: 3/6", "Features: 6/6"]  # 12 s, then 12 s more


def test_nothing_at_all_when_not_verbose_and_a_bar_on_a_terminal():
    items = [1, 2]
    assert progress(items, verbose=0) is items
    terminal = Terminal()
    assert list(progress(range(3), description="Decoding", stream=terminal)) == [0, 1, 2]
    assert "\r" in terminal.getvalue()  # tqdm (or the plain counter) redraws in place
