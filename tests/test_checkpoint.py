"""Saving a memory state mid-stream and resuming gives identical outputs."""

import os

import numpy as np
import pytest

import keras_infmemory as ki
from keras_infmemory import checkpoint
from tests.testing import to_numpy


def stream(layer, state, segments):
    outputs = []
    for x, q in segments:
        out, state = layer(q, x, state)
        outputs.append(to_numpy(out))
    return outputs, state


def test_resume_is_bit_identical(tmp_path):
    sampler = ki.StickyMemorySampler(num_bins=16, mode="quantile")
    layer = ki.ContinuousLTM(
        2,
        4,
        num_basis=16,
        num_samples=8,
        basis_widths=(0.05, 0.1),
        sticky=sampler,
    )
    rng = np.random.default_rng(0)
    segments = [
        (
            rng.normal(size=(2, 12, 8)).astype("float32"),
            rng.normal(size=(2, 3, 2, 4)).astype("float32"),
        )
        for _ in range(6)
    ]
    straight, _ = stream(layer, layer.get_initial_state(2), segments)
    first, state = stream(layer, layer.get_initial_state(2), segments[:3])
    path = os.path.join(tmp_path, "memory.npz")
    checkpoint.save_state(path, state)
    restored = checkpoint.load_state(path)
    for name in state:
        np.testing.assert_array_equal(
            to_numpy(restored[name]), to_numpy(state[name])
        )
    second, _ = stream(layer, restored, segments[3:])
    for a, b in zip(first + second, straight, strict=True):
        np.testing.assert_array_equal(a, b)


def test_nested_states_round_trip():
    state = {
        "blocks": [
            {
                "stm": np.arange(6.0).reshape(2, 3),
                "ltm": {"flag": np.ones(2, bool)},
            },
            {"stm": np.zeros((2, 3)), "ltm": {"flag": np.zeros(2, bool)}},
        ],
        "position": np.array([3, 4]),
    }
    restored = checkpoint.state_from_numpy(checkpoint.state_to_numpy(state))
    assert isinstance(restored["blocks"], list)
    np.testing.assert_array_equal(
        to_numpy(restored["blocks"][0]["stm"]), state["blocks"][0]["stm"]
    )
    np.testing.assert_array_equal(
        to_numpy(restored["blocks"][1]["ltm"]["flag"]), [False, False]
    )
    np.testing.assert_array_equal(to_numpy(restored["position"]), [3, 4])


def test_bad_state():
    with pytest.raises(ValueError, match="Received: state="):
        checkpoint.state_to_numpy(3)
    with pytest.raises(ValueError, match="Received: key="):
        checkpoint.state_to_numpy({"a/b": np.zeros(1)})
