"""Argument checks shared by the task generators (Keras-style messages:
``Received: name=value``)."""

import numpy as np


def check_int(name, value, minimum, words):
    """Refuses ``value`` unless it is an int (not a bool) ``>= minimum``;
    ``words`` says what is expected, e.g. "a positive integer"."""
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, np.integer))
        or value < minimum
    ):
        raise ValueError(
            f"`{name}` must be {words}. Received: {name}={value!r}"
        )


def check_positive_int(name, value):
    check_int(name, value, 1, "a positive integer")


def check_seed(seed):
    check_int("seed", seed, 0, "a non-negative integer")
