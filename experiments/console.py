"""A console that shows what a user should read, shared by the examples.

* `native_notices_held_back`: TensorFlow's native libraries print notices
  as they load (KerasHub loads TensorFlow Text; the TensorFlow backend loads
  TensorFlow), before any log level applies: ``TF_CPP_MIN_LOG_LEVEL`` does
  not reach them. Imports made inside the block lose those lines only.
* `quiet`: grain's performance notice, repeated at every ``fit`` and
  ``evaluate`` on JAX, is dropped.
* `set_random_seed`: Keras' seeding, without TensorFlow's notices;
* `fit_verbosity`: ``fit``'s ``verbose``, a progress bar that updates in
  place on a terminal, one line per epoch in a log file or a pipe.
* `HelpFormatter`: ``--help`` with every option's default;
  `mode_default` and `fill_mode_defaults` for options whose default
  depends on the example's mode (offline or a KerasHub preset).

Imports nothing heavy: the examples use it before Keras loads.
"""

import argparse
import contextlib
import logging
import os
import re
import sys
import tempfile

# TensorFlow's load notices (native, written to the stderr file descriptor).
LOAD_NOTICES = re.compile(
    r"absl::InitializeLog|cudart_stub\.cc|cpu_feature_guard\.cc"
    r"|cuda_platform\.cc|^To enable the following instructions"
)


@contextlib.contextmanager
def native_notices_held_back(pattern=LOAD_NOTICES):
    """Holds back what native code writes to stderr inside the block and
    passes on every line but those matching ``pattern``."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as held:
        os.dup2(held.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            held.seek(0)
            text = held.read().decode("utf-8", errors="replace")
            for line in text.splitlines(keepends=True):
                if not pattern.search(line):
                    sys.stderr.write(line)


class _GrainNotices(logging.Filter):
    """Drops grain's notices (Keras feeds NumPy arrays through grain on
    JAX; each ``fit`` and ``evaluate`` logs one through absl); grain's
    errors and everyone else's records pass."""

    def filter(self, record):
        from_grain = f"{os.sep}grain{os.sep}" in record.pathname
        return record.levelno >= logging.ERROR or not from_grain


def quiet():
    """Silences the notices repeated at every ``fit`` and ``evaluate``
    (grain's); warnings and errors of anything else still show."""
    absl = logging.getLogger("absl")
    if not any(isinstance(f, _GrainNotices) for f in absl.filters):
        absl.addFilter(_GrainNotices())


def set_random_seed(seed):
    """`keras.utils.set_random_seed`, without the notices TensorFlow prints
    as it loads (Keras seeds TensorFlow too whenever it is installed, and
    so imports it, whatever the backend)."""
    with native_notices_held_back():
        import keras

        keras.utils.set_random_seed(seed)


def fit_verbosity(verbose=None):
    """``fit``'s ``verbose``: as given, or (None) a progress bar updated in
    place on a terminal and one line per epoch otherwise (a log file, a
    pipe)."""
    if verbose is not None:
        return verbose
    return 1 if sys.stdout.isatty() else 2


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """argparse's help with each option's default, added as ``(default:
    …)`` unless the help text already states it (an option whose default
    depends on another, say)."""

    def _get_help_string(self, action):
        if "(default:" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


def mode_default(defaults, name, labels):
    """The help text of an option whose default depends on the mode.

    Args:
        defaults: dict, mode -> {option name: its default in that mode}.
        name: the option's name (a key of every mode's dict).
        labels: dict, mode -> how the help names that mode, in the order
            the help lists them.

    Example:

    >>> defaults = {"offline": {"steps": 300, "baseline": True},
    ...             "preset": {"steps": 1000, "baseline": False}}
    >>> labels = {"offline": "offline", "preset": "with --preset"}
    >>> mode_default(defaults, "steps", labels)
    '(default: 300 offline, 1000 with --preset)'
    >>> mode_default(defaults, "baseline", labels)
    '(default: on offline, off with --preset)'
    """
    parts = []
    for mode, label in labels.items():
        value = defaults[mode][name]
        if isinstance(value, bool):
            value = "on" if value else "off"
        elif isinstance(value, str):
            value = repr(value)
        parts.append(f"{value} {label}")
    return f"(default: {', '.join(parts)})"


def fill_mode_defaults(args, defaults, mode):
    """Sets each option of ``defaults[mode]`` that ``args`` leaves None.

    Example:

    >>> args = argparse.Namespace(steps=None, baseline=False)
    >>> fill_mode_defaults(args, {"preset": {"steps": 9, "baseline": True}},
    ...                    "preset")
    Namespace(steps=9, baseline=False)
    """
    for name, value in defaults[mode].items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    return args
