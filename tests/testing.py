"""Helpers shared by the tests: conversions, tolerances, float64 support."""

import keras
import numpy as np


def to_numpy(x):
    """Any backend tensor (or nested dict of them) as float64/bool NumPy."""
    if isinstance(x, dict):
        return {k: to_numpy(v) for k, v in x.items()}
    x = keras.ops.convert_to_numpy(x)
    return x.astype(np.float64) if np.issubdtype(x.dtype, np.floating) else x


def max_rel_error(actual, expected):
    """max |a − e| / max |e| (the golden README's 'relative to max-norm')."""
    actual, expected = to_numpy(actual), np.asarray(expected, np.float64)
    return float(np.max(np.abs(actual - expected)) / np.max(np.abs(expected)))


def float64_available():
    """JAX computes float64 only with x64 enabled; the others always."""
    x = keras.ops.convert_to_tensor(np.zeros(1, np.float64), dtype="float64")
    return keras.backend.standardize_dtype(x.dtype) == "float64"
