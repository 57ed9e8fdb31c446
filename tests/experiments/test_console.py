"""experiments.console: a console with what a user should read."""

import argparse
import logging
import os
import sys

from experiments import console


def test_fit_verbosity_follows_the_terminal(monkeypatch):
    assert console.fit_verbosity(0) == 0  # as given
    monkeypatch.setattr(sys.stdout, "isatty", lambda: False, raising=False)
    assert console.fit_verbosity() == 2  # one line per epoch in a log
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True, raising=False)
    assert console.fit_verbosity() == 1  # a bar that updates in place


def test_native_notices_are_held_back_and_the_rest_passes(capfd):
    with console.native_notices_held_back():
        os.write(2, b"I0000 cpu_feature_guard.cc:227] optimized\n")
        os.write(2, b"a real error\n")
    assert capfd.readouterr().err == "a real error\n"


def test_quiet_drops_grain_notices_only():
    console.quiet()
    console.quiet()  # once is enough
    absl = logging.getLogger("absl")
    filters = [f for f in absl.filters if type(f).__name__ == "_GrainNotices"]
    assert len(filters) == 1
    grain = f"{os.sep}grain{os.sep}_src{os.sep}x.py"
    notice = logging.LogRecord("absl", logging.INFO, grain, 1, "n", (), None)
    error = logging.LogRecord("absl", logging.ERROR, grain, 1, "e", (), None)
    other = logging.LogRecord("absl", logging.INFO, "/x.py", 1, "o", (), None)
    assert [filters[0].filter(r) for r in (notice, error, other)] == [
        False,
        True,
        True,
    ]


def test_help_shows_every_default():
    parser = argparse.ArgumentParser(formatter_class=console.HelpFormatter)
    parser.add_argument("--steps", type=int, default=300, help="steps")
    parser.add_argument("--length", help="tokens (default: 128 offline)")
    text = parser.format_help()
    assert "steps (default: 300)" in text
    assert "tokens (default: 128 offline)" in text
    assert "(default: None)" not in text
