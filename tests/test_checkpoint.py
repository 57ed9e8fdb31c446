"""Saving a memory state mid-stream and resuming gives identical outputs."""

import os

import keras
import numpy as np
import pytest

import keras_infmemory as ki
from keras_infmemory import checkpoint
from keras_infmemory.models import InfFormerLM
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


def small_lm(**kwargs):
    return InfFormerLM.arm(
        "sticky",
        vocabulary_size=10,
        num_layers=2,
        hidden_dim=16,
        num_heads=2,
        intermediate_dim=32,
        segment_length=8,
        memory_options={
            "num_basis": 16,
            "num_samples": 16,
            "basis_widths": (0.05, 0.1),
        },
        **kwargs,
    )


def token_segments(count=4, batch=2):
    rng = np.random.default_rng(5)
    return [
        rng.integers(0, 10, (batch, 8)).astype("int32") for _ in range(count)
    ]


@pytest.mark.parametrize("policy", ["float32", "mixed_bfloat16"])
def test_model_and_explicit_state_resume_bit_identically(tmp_path, policy):
    """A .keras model saved mid-stream with its state (.npz) continues as if
    it had never stopped."""
    keras.config.set_dtype_policy(policy)
    model = small_lm()
    segments = token_segments()
    state = model.get_initial_state(2)
    straight = []
    for index, tokens in enumerate(segments):
        if index == 2:
            model.save(os.path.join(tmp_path, "model.keras"))
            checkpoint.save_state(os.path.join(tmp_path, "state.npz"), state)
        logits, state = model(tokens, state)
        straight.append(to_numpy(logits))
    loaded = keras.saving.load_model(os.path.join(tmp_path, "model.keras"))
    state = checkpoint.load_state(
        os.path.join(tmp_path, "state.npz"), like=loaded.get_initial_state(2)
    )
    assert (
        keras.backend.standardize_dtype(
            state[0]["ltm"]["memory"]["coefficients"].dtype
        )
        == "float32"
    )
    for tokens, expected in zip(segments[2:], straight[2:], strict=True):
        logits, state = loaded(tokens, state)
        np.testing.assert_array_equal(to_numpy(logits), expected)


def test_stateful_model_resumes_bit_identically(tmp_path):
    """A stateful model keeps its memory in variables: the .keras file alone
    carries it."""
    model = small_lm(stateful=True, batch_size=2)
    segments = token_segments()
    outputs = []
    for index, tokens in enumerate(segments):
        if index == 2:
            model.save(os.path.join(tmp_path, "stateful.keras"))
        outputs.append(to_numpy(model(tokens)))
    loaded = keras.saving.load_model(os.path.join(tmp_path, "stateful.keras"))
    for tokens, expected in zip(segments[2:], outputs[2:], strict=True):
        np.testing.assert_array_equal(to_numpy(loaded(tokens)), expected)


def test_load_state_checks_the_file_against_a_template(tmp_path):
    layer = ki.ContinuousLTM(2, 4, num_basis=16, num_samples=8)
    path = os.path.join(tmp_path, "memory.npz")
    checkpoint.save_state(path, layer.get_initial_state(2))
    with pytest.raises(ValueError, match=r"Received: shape=\(2, 16, 8\)"):
        checkpoint.load_state(path, like=layer.get_initial_state(3))
    other = ki.ContinuousLTM(
        2, 4, num_basis=16, num_samples=8, sticky=ki.StickyMemorySampler(8)
    )
    with pytest.raises(ValueError, match="Received: entries="):
        checkpoint.load_state(path, like=other.get_initial_state(2))
    with pytest.raises(ValueError, match="Received: path="):
        checkpoint.load_state(os.path.join(tmp_path, "missing.npz"))
    with pytest.raises(ValueError, match="Received: path=3"):
        checkpoint.save_state(3, layer.get_initial_state(2))


def test_where_rows_and_reset_clear_non_finite_rows():
    """Resetting a row gives exact zeros even where the old row held
    non-finite values (a select, not a multiplication by 0)."""
    import keras_infmemory as ki
    from keras_infmemory.state import where_rows

    ltm = ki.ContinuousLTM(2, 4, num_basis=16, num_samples=16)
    state = ltm.get_initial_state(2)
    bad = np.full((2, 16, 8), np.nan, "float32")
    state = dict(state, coefficients=keras.ops.convert_to_tensor(bad))
    fresh = ltm.reset_rows(state, np.array([True, False]))
    coefficients = keras.ops.convert_to_numpy(fresh["coefficients"])
    assert np.all(coefficients[0] == 0.0) and np.all(np.isnan(coefficients[1]))
    picked = where_rows(
        np.array([False, True]), [np.ones((2, 3))], [np.zeros((2, 3))]
    )
    np.testing.assert_array_equal(
        keras.ops.convert_to_numpy(picked[0]), [[0, 0, 0], [1, 1, 1]]
    )
