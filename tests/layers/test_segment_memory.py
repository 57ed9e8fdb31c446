"""segment_memory: Python positions (eager) and tensors agree in
decode_step; write_step is step's state without the read."""

import keras
import numpy as np
import pytest
from keras import ops

import keras_infmemory as ki
from keras_infmemory import segments
from keras_infmemory import state as state_lib
from keras_infmemory.layers import segment_memory
from tests.testing import to_numpy

LENGTH = 8  # segment length


def decoding_setup(sticky=None, seed=0):
    """A small memory holding one segment, with a full segment waiting;
    ``sticky``: ``None`` or the sampler's mode."""
    sampler = None
    if sticky is not None:
        sampler = ki.StickyMemorySampler(num_bins=8, mode=sticky, seed=3)
    ltm = ki.ContinuousLTM(
        num_heads=2, key_dim=4, num_basis=16, num_samples=8, sticky=sampler
    )
    rng = np.random.default_rng(seed)
    for weight in ltm.weights:
        weight.assign(rng.normal(0, 0.5, weight.shape).astype("float32"))
    state = segment_memory.initial_state(ltm, 2, LENGTH)
    first = rng.normal(size=(2, LENGTH, 8)).astype("float32")
    state["memory"] = ltm.write(first, state["memory"])
    state["pending"] = ops.convert_to_tensor(
        rng.normal(size=(2, LENGTH, 8)).astype("float32")
    )
    state["pending_mask"] = ops.convert_to_tensor(
        np.array([[True] * LENGTH, [True] * 5 + [False] * 3])
    )
    query = rng.normal(size=(2, 1, 2, 4)).astype("float32")
    inputs = rng.normal(size=(2, 1, 8)).astype("float32")
    return ltm, state, query, inputs


def assert_same(a, b):
    flat_a, flat_b = keras.tree.flatten(a), keras.tree.flatten(b)
    for x, y in zip(flat_a, flat_b, strict=True):
        np.testing.assert_array_equal(to_numpy(x), to_numpy(y))


@pytest.mark.parametrize("position", [0, 3])
@pytest.mark.parametrize("sticky", [None, "quantile", "categorical"])
def test_python_position_matches_tensor_position(position, sticky):
    """Eager decoding branches and indexes in Python (`known_value`); the
    output and every tensor of the new state are those of the tensor
    path (a loop of 0 or 1 steps, `segments.apply_if`), bit for bit, with
    and without an explicit all-real mask. A categorical sticky write draws
    its positions inside the loop; its seed generator advances alike on
    both paths (a JAX loop cannot change a variable: `apply_if` carries it
    out)."""
    ltm, state, query, inputs = decoding_setup(sticky)
    seeds = [v for v in ltm.variables if not v.trainable]
    seeds_before = [to_numpy(v.value) for v in seeds]
    write = position == 0
    tensor = segment_memory.decode_step(
        ltm,
        query,
        state,
        inputs,
        ops.convert_to_tensor(position, "int32"),
        ops.convert_to_tensor(write),
        inputs_mask=np.ones((2, 1), bool),
    )
    seeds_after = [to_numpy(v.value) for v in seeds]
    for variable, value in zip(seeds, seeds_before, strict=True):
        variable.assign(value)
    python = segment_memory.decode_step(
        ltm, query, state, inputs, position, write
    )
    assert_same(python, tensor)
    for variable, value in zip(seeds, seeds_after, strict=True):
        np.testing.assert_array_equal(to_numpy(variable.value), value)
    if sticky == "categorical" and write:  # the write drew its positions
        assert any(
            not np.array_equal(a, b)
            for a, b in zip(seeds_after, seeds_before, strict=True)
        )
    output, new_state = python
    placed = to_numpy(new_state["pending"])[:, position]
    np.testing.assert_array_equal(placed, inputs[:, 0])
    waiting = to_numpy(new_state["pending_mask"])
    if write:  # what waited entered the memory: only the new token waits
        assert waiting.sum() == 2 and waiting[:, 0].all()
    else:
        np.testing.assert_array_equal(
            waiting, to_numpy(state["pending_mask"]) | (np.arange(8) == 3)
        )


def test_python_values_need_no_loop(monkeypatch):
    """With Python values, no `ops.fori_loop` runs (torch eager pays
    tens of µs per Keras op, per layer and token); with tensors, it
    does."""
    ltm, state, query, inputs = decoding_setup()
    calls = []
    original = ops.fori_loop

    def counted(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(segments.ops, "fori_loop", counted)
    for position in (0, 3):
        segment_memory.decode_step(
            ltm, query, state, inputs, position, position == 0
        )
    assert not calls
    segment_memory.decode_step(
        ltm, query, state, inputs, ops.convert_to_tensor(3), ops.equal(3, 0)
    )
    assert len(calls) == 1


def test_known_value():
    """Values where there are values; the tensor itself while tracing."""
    assert state_lib.known_value(ops.convert_to_tensor(7), int) == 7
    assert state_lib.known_value(7, int) == 7
    flag = state_lib.known_value(ops.convert_to_tensor(False), bool)
    assert flag is False
    assert segments.apply_if(True, lambda x: x + 1, 1) == 2
    assert segments.apply_if(False, lambda x: x + 1, 1) == 1

    seen = []

    def traced(x):
        seen.append(state_lib.known_value(x, int))
        return x + 1

    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        jax.jit(traced)(np.int32(3))
    elif backend == "tensorflow":
        import tensorflow as tf

        tf.function(traced)(tf.constant(3))
    else:
        import torch

        traced(torch.zeros((), dtype=torch.int32, device="meta"))
    assert len(seen) == 1 and not isinstance(seen[0], int)


@pytest.mark.parametrize("starts_empty", [False, True])
def test_write_step_is_the_state_of_step(starts_empty):
    """Without sticky memories a read leaves no trace in the state:
    `write_step` gives `step`'s state (a row without real tokens keeps its
    own); with sticky memories it refuses."""
    ltm, state, _, _ = decoding_setup()
    rng = np.random.default_rng(4)
    segment = rng.normal(size=(2, LENGTH, 8)).astype("float32")
    mask = np.ones((2, LENGTH), bool)
    mask[1] = False  # nothing real: the row keeps its state
    if starts_empty:
        state = segment_memory.initial_state(ltm, 2, LENGTH)
    query = rng.normal(size=(2, LENGTH, 2, 4)).astype("float32")
    _, expected = segment_memory.step(
        ltm,
        query,
        state,
        segment,
        mask,
        regularize=False,
        starts_empty=starts_empty,
    )
    written = segment_memory.write_step(ltm, state, segment, mask, starts_empty)
    assert_same(written, expected)
    sticky, state, _, _ = decoding_setup("quantile")
    with pytest.raises(ValueError, match="ltm.sticky="):
        segment_memory.write_step(sticky, state, segment, mask)
