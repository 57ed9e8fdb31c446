"""Helpers shared by the tests: conversions, tolerances, float64 support."""

import keras
import numpy as np


def to_numpy(x):
    """Any backend tensor (or nested dict of them) as float64/bool NumPy."""
    if isinstance(x, dict):
        return {k: to_numpy(v) for k, v in x.items()}
    x = keras.ops.convert_to_numpy(x)
    return x.astype(np.float64) if np.issubdtype(x.dtype, np.floating) else x


def _case(module):
    """An instance of a Keras or KerasHub ``TestCase`` class (unittest), to
    call its checks from a pytest function."""

    class Case(module.TestCase):
        def runTest(self):  # unittest needs a test method to instantiate
            pass

    return Case()


def keras_layer_checks(layer_cls, **kwargs):
    """Keras' own checks of a layer (``run_layer_test`` of Keras' test
    helpers): build, weight counts, config and serialization round trips,
    symbolic and eager calls, a ``fit`` step and mixed precision."""
    from keras.src.testing import test_case

    _case(test_case).run_layer_test(layer_cls, **kwargs)


def keras_hub_checks():
    """KerasHub's test helpers (``run_serialization_test``,
    ``run_model_saving_test``, ...) on an instance of its ``TestCase``."""
    from keras_hub.src.tests import test_case

    return _case(test_case)


def assert_rows_equal(state, expected, rows):
    """Every tensor of two states (nested dicts and lists of the same
    layout) is equal in the batch ``rows`` (a slice or index array)."""
    expected = dict(keras.tree.flatten_with_path(to_numpy(expected)))
    for path, value in keras.tree.flatten_with_path(to_numpy(state)):
        np.testing.assert_array_equal(value[rows], expected[path][rows])


def assert_trees_close(actual, expected, atol):
    """Two nested states (dicts, lists of tensors) of the same structure
    hold the same values, leaf by leaf, within ``atol``."""
    import keras

    for a, b in zip(
        keras.tree.flatten(actual), keras.tree.flatten(expected), strict=True
    ):
        np.testing.assert_allclose(to_numpy(a), to_numpy(b), atol=atol)


def max_rel_error(actual, expected):
    """max |a − e| / max |e| (the golden README's 'relative to max-norm')."""
    actual, expected = to_numpy(actual), np.asarray(expected, np.float64)
    return float(np.max(np.abs(actual - expected)) / np.max(np.abs(expected)))


def float64_available():
    """JAX computes float64 only with x64 enabled; the others always."""
    x = keras.ops.convert_to_tensor(np.zeros(1, np.float64), dtype="float64")
    return keras.backend.standardize_dtype(x.dtype) == "float64"


def value_and_grad(fn, *args):
    """``fn(*args)`` (a scalar) and its gradients w.r.t. ``args``.

    Tests may use the backends directly; library code never does.
    """
    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        return jax.value_and_grad(fn, argnums=tuple(range(len(args))))(*args)
    if backend == "tensorflow":
        import tensorflow as tf

        args = [tf.convert_to_tensor(a) for a in args]
        with tf.GradientTape() as tape:
            tape.watch(args)
            value = fn(*args)
        return value, tape.gradient(value, args)
    import torch

    args = [torch.tensor(np.asarray(a), requires_grad=True) for a in args]
    value = fn(*args)
    value.backward()
    return value, [a.grad for a in args]


def variable_grads(fn, variables):
    """Gradients of the scalar ``fn()`` w.r.t. Keras variables."""
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        with tf.GradientTape() as tape:
            value = fn()
        return tape.gradient(value, [v.value for v in variables])
    if backend == "torch":
        for v in variables:
            v.value.grad = None
        fn().backward()
        return [v.value.grad for v in variables]
    import jax

    def stateless(values):
        with keras.StatelessScope(
            state_mapping=list(zip(variables, values, strict=True))
        ):
            return fn()

    return jax.grad(stateless)([v.value for v in variables])


def xla_flags(*flags):
    """``XLA_FLAGS`` for a process the tests start: this one's (with
    tests/conftest.py's faster compilation) plus ``flags``."""
    import os

    return " ".join(os.environ.get("XLA_FLAGS", "").split() + list(flags))


def run_on_devices(module, *args, devices=4, timeout=900):
    """Runs ``python -m module OUT.npz *args`` on JAX with ``devices``
    simulated CPU devices (the flag must be set before JAX starts, so in a
    process of its own) and returns the arrays it saved."""
    import os
    import subprocess
    import sys
    import tempfile

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(
        os.environ,
        KERAS_BACKEND="jax",
        XLA_FLAGS=xla_flags(
            f"--xla_force_host_platform_device_count={devices}"
        ),
    )
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "result.npz")
        subprocess.run(
            [sys.executable, "-m", module, path, *map(str, args)],
            cwd=root,
            env=env,
            check=True,
            timeout=timeout,
        )
        with np.load(path) as saved:
            return dict(saved)


def fresh_road(monkeypatch, road):
    """Sets up one road of a fresh-memory test; returns the list that
    counts `ContinuousLTM.write` calls from now on.

    ``road="skip"``: `segment_memory.step` takes the ``starts_empty`` its
    runners pass (a fresh first segment skips its write and read);
    ``"full"``: it always runs the full step. Call once per road; each call
    replaces the previous patches (the originals are wrapped, never a
    wrapper).
    """
    from keras_infmemory import ContinuousLTM
    from keras_infmemory.layers import segment_memory

    monkeypatch.undo()
    write, step = ContinuousLTM.write, segment_memory.step
    writes = []

    def counted_write(self, *args, **kwargs):
        writes.append(1)
        return write(self, *args, **kwargs)

    def routed_step(*args, starts_empty=False, **kwargs):
        return step(
            *args, starts_empty=starts_empty and road == "skip", **kwargs
        )

    monkeypatch.setattr(ContinuousLTM, "write", counted_write)
    monkeypatch.setattr(segment_memory, "step", routed_step)
    return writes


def tiny_inf_former_lm(memory_options):
    """The smallest `InfFormerLM` with a memory in its block: one layer,
    hidden 8, 2 heads, segments of 4 tokens, a vocabulary of 10."""
    from keras_infmemory.models import InfFormerLM

    return InfFormerLM.arm(
        "inf_former",
        vocabulary_size=10,
        num_layers=1,
        hidden_dim=8,
        num_heads=2,
        intermediate_dim=16,
        segment_length=4,
        memory_options=memory_options,
    )
