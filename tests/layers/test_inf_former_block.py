"""InfFormerBlock: streaming = sequence, causality, offsets, resets, padding."""

import keras
import numpy as np
import pytest

from keras_infmemory import ContinuousLTM, InfFormerBlock, StickyMemorySampler
from tests.testing import assert_rows_equal, keras_layer_checks, to_numpy

HIDDEN, HEADS, SEGMENT = 16, 2, 8


def make_ltm(sticky=False):
    return ContinuousLTM(
        num_heads=HEADS,
        key_dim=HIDDEN // HEADS,
        num_basis=16,
        num_samples=16,
        basis_widths=(0.05, 0.1),
        sticky=StickyMemorySampler(num_bins=16, mode="quantile")
        if sticky
        else None,
    )


# name -> (stm_length, with ltm, sticky, normalize_first)
CONFIGS = {
    "window": (0, False, False, True),
    "xl": (SEGMENT, False, False, False),
    "inf": (SEGMENT, True, False, True),
    "inf_post_ln": (SEGMENT, True, False, False),
    "inf_no_stm": (0, True, False, True),
    "inf_long_stm": (2 * SEGMENT, True, False, True),
    "sticky": (SEGMENT, True, True, True),
}


def make_block(name, **kwargs):
    stm_length, with_ltm, sticky, normalize_first = CONFIGS[name]
    arguments = dict(
        num_heads=HEADS,
        intermediate_dim=32,
        stm_length=stm_length,
        ltm=make_ltm(sticky) if with_ltm else None,
        segment_length=SEGMENT,
        normalize_first=normalize_first,
    )
    block = InfFormerBlock(**{**arguments, **kwargs})
    block.build((None, None, HIDDEN))
    return block


def stream(block, x, padding_mask=None, state=None, reset_masks=None):
    """Feeds ``x`` segment by segment; returns outputs and final state."""
    if state is None:
        state = block.get_initial_state(x.shape[0])
    outputs = []
    for s in range(x.shape[1] // SEGMENT):
        window = slice(s * SEGMENT, (s + 1) * SEGMENT)
        mask = None if padding_mask is None else padding_mask[:, window]
        reset = None if reset_masks is None else reset_masks[s]
        y, state = block(
            x[:, window], state, reset_mask=reset, padding_mask=mask
        )
        outputs.append(to_numpy(y))
    return np.concatenate(outputs, axis=1), state


def copy_block_weights(source, target):
    """Gives ``target`` the attention and feed-forward weights of
    ``source`` (blocks that differ only in their memories)."""
    for name in (
        "query_dense",
        "key_dense",
        "value_dense",
        "output_dense",
        "attention_norm",
        "feedforward_norm",
        "intermediate_dense",
        "feedforward_output",
    ):
        getattr(target, name).set_weights(getattr(source, name).get_weights())


def random_input(batch=2, length=5 * SEGMENT, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(batch, length, HIDDEN)).astype("float32")


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_sequence_equals_streaming(name):
    block = make_block(name)
    x = random_input()
    whole = to_numpy(block(x))
    block.segment_loop = "scan"
    np.testing.assert_allclose(to_numpy(block(x)), whole, atol=1e-5)
    streamed, _ = stream(block, x)
    np.testing.assert_allclose(whole, streamed, atol=1e-5)
    assert whole.shape == x.shape


def test_sequence_mode_pads_a_partial_last_segment():
    block = make_block("inf")
    x = random_input(length=3 * SEGMENT + 3)
    whole = to_numpy(block(x))
    padded = np.pad(x, ((0, 0), (0, SEGMENT - 3), (0, 0)))
    mask = np.arange(4 * SEGMENT)[None] < x.shape[1]
    mask = np.repeat(mask, 2, axis=0)
    streamed, _ = stream(block, padded, padding_mask=mask)
    np.testing.assert_allclose(whole, streamed[:, : x.shape[1]], atol=1e-5)


@pytest.mark.parametrize("name", ["xl", "inf", "inf_no_stm"])
def test_causal(name):
    block = make_block(name)
    x = random_input()
    base = to_numpy(block(x))
    for t in (3, SEGMENT + 5, 3 * SEGMENT):
        changed = x.copy()
        changed[:, t] += 10.0
        out = to_numpy(block(changed))
        np.testing.assert_allclose(out[:, :t], base[:, :t], atol=1e-6)
        assert np.max(np.abs(out[:, t] - base[:, t])) > 1e-3


def test_attention_depends_only_on_offsets():
    """The same four tokens at offset 0, 4 and 6 (across a segment
    boundary, via the STM) give the same outputs: positions are relative."""
    block = make_block("xl")
    content = random_input(batch=1, length=4)[0]  # (4, D)
    outputs = []
    for offset in (0, 4, 6):
        x = np.zeros((1, 2 * SEGMENT, HIDDEN), "float32")
        x[0, offset : offset + 4] = content
        mask = np.zeros((1, 2 * SEGMENT), bool)
        mask[0, offset : offset + 4] = True
        y, _ = stream(block, x, padding_mask=mask)
        outputs.append(y[0, offset : offset + 4])
    np.testing.assert_allclose(outputs[1], outputs[0], atol=1e-5)
    np.testing.assert_allclose(outputs[2], outputs[0], atol=1e-5)
    # Absolute positions would not pass: a shifted query sees other angles.
    assert np.max(np.abs(outputs[0])) > 0.1


@pytest.mark.parametrize("name", ["inf", "sticky"])
def test_reset_one_row(name):
    block = make_block(name)
    x = random_input(batch=3)
    _, state = stream(block, x)  # memories full (LTM has absorbed)
    segment = random_input(batch=3, length=SEGMENT, seed=1)
    y_keep, state_keep = block(segment, state)
    reset = np.array([True, False, False])
    y_reset, state_reset = block(segment, state, reset_mask=reset)
    y_keep, y_reset = to_numpy(y_keep), to_numpy(y_reset)
    np.testing.assert_array_equal(y_reset[1:], y_keep[1:])
    assert_rows_equal(state_reset, state_keep, slice(1, None))
    fresh, _ = block(segment[:1], block.get_initial_state(1))
    np.testing.assert_allclose(y_reset[:1], to_numpy(fresh), atol=1e-6)
    assert np.max(np.abs(y_reset[0] - y_keep[0])) > 1e-4


def test_without_absorbed_past_equals_transformer_xl():
    inf = make_block("inf")
    xl = make_block("xl", normalize_first=True)
    copy_block_weights(inf, xl)
    x = random_input(length=3 * SEGMENT)
    y_inf, state = stream(inf, x)
    y_xl, _ = stream(xl, x)
    # Segments 0 and 1: nothing has left the STM yet, the LTM is empty.
    np.testing.assert_allclose(
        y_inf[:, : 2 * SEGMENT], y_xl[:, : 2 * SEGMENT], atol=1e-6
    )
    # Segment 2 reads segment 0 from the LTM.
    assert np.max(np.abs(y_inf[:, 2 * SEGMENT :] - y_xl[:, 2 * SEGMENT :])) > 0
    assert to_numpy(state["ltm"]["memory"]["has_memory"]).all()


def test_padding_never_enters_memory():
    """Garbage in padded positions changes nothing, now or later."""
    block = make_block("inf")
    x = random_input(batch=2, length=4 * SEGMENT)
    mask = np.ones((2, 4 * SEGMENT), bool)
    mask[:, SEGMENT + 5 :] = False  # document ends inside segment 1
    clean = np.where(mask[..., None], x, 0.0).astype("float32")
    dirty = np.where(mask[..., None], x, 100.0).astype("float32")
    y_clean, s_clean = stream(block, clean, padding_mask=mask)
    y_dirty, s_dirty = stream(block, dirty, padding_mask=mask)
    np.testing.assert_allclose(y_clean[mask], y_dirty[mask], atol=1e-5)
    ltm_clean = to_numpy(s_clean["ltm"]["memory"]["coefficients"])
    np.testing.assert_allclose(
        ltm_clean, to_numpy(s_dirty["ltm"]["memory"]["coefficients"]), atol=1e-5
    )
    # A segment without a real token is a no-op: after the two padded
    # segments the state is the state after segment 1.
    _, s_two = stream(block, clean[:, : 2 * SEGMENT], mask[:, : 2 * SEGMENT])
    for got, want in zip(
        keras.tree.flatten(s_clean), keras.tree.flatten(s_two), strict=True
    ):
        np.testing.assert_array_equal(to_numpy(got), to_numpy(want))


def test_keras_mask_from_embedding():
    tokens = np.array([[3, 4, 5, 6, 7, 0, 0, 0] * 2], "int32")
    embed = keras.layers.Embedding(10, HIDDEN, mask_zero=True)
    block = make_block("inf")
    y_masked = to_numpy(block(embed(tokens)))
    mask = tokens != 0
    y_explicit = to_numpy(block(embed(tokens), padding_mask=mask))
    np.testing.assert_allclose(y_masked, y_explicit, atol=1e-6)


def test_weights_and_state_structure():
    block = make_block("inf")
    # q, k, v, o (kernel + bias each), 2 LayerNorms (2 each), FFN (2 Dense)
    # = 16, plus the LTM: K, V, O, w_mu, w_sigma, gate kernel + bias = 7.
    assert len(block.trainable_weights) == 23
    assert len(make_block("xl").trainable_weights) == 16
    state = block.get_initial_state(4)
    assert sorted(state) == ["ltm", "stm"]  # one entry per memory
    assert sorted(state["stm"]) == ["inputs", "mask"]
    assert sorted(state["ltm"]) == ["memory", "pending", "pending_mask"]
    assert sorted(state["ltm"]["memory"]) == ["coefficients", "has_memory"]
    assert sorted(make_block("window").get_initial_state(1)) == []


def test_keras_layer_contract():
    """Keras' own checks (sequence mode): build, weight counts, config and
    serialization round trips, symbolic and eager calls, a ``fit`` step,
    masking and mixed precision."""
    block = make_block("sticky", dropout=0.1)
    config = block.get_config()
    keras_layer_checks(
        InfFormerBlock,
        init_kwargs=config,
        input_shape=(2, 3 * SEGMENT, HIDDEN),
        expected_output_shape=(2, 3 * SEGMENT, HIDDEN),
        expected_num_trainable_weights=23,
        expected_num_non_trainable_weights=0,
        supports_masking=True,
    )
    clone = InfFormerBlock.from_config(config)
    assert isinstance(clone.ltm, ContinuousLTM)
    assert clone.ltm.sticky.mode == "quantile"


def test_mixed_precision_keeps_the_memory_in_float32():
    keras.config.set_dtype_policy("mixed_float16")
    block = make_block("inf")
    x = random_input()
    y = block(x)
    state = block.get_initial_state(2)
    assert (
        keras.backend.standardize_dtype(
            state["ltm"]["memory"]["coefficients"].dtype
        )
        == "float32"
    )
    streamed, _ = stream(block, x)
    assert np.all(np.isfinite(streamed))
    np.testing.assert_allclose(to_numpy(y), streamed, atol=1e-2)


def test_functional_model_streaming():
    block = make_block("inf")
    inputs = keras.Input((SEGMENT, HIDDEN), batch_size=2)
    state = keras.tree.map_structure(
        lambda v: keras.Input(batch_shape=v.shape, dtype=v.dtype),
        block.get_initial_state(2),
    )
    y, new_state = block(inputs, state)
    assert tuple(y.shape) == (2, SEGMENT, HIDDEN)
    assert tuple(new_state["stm"]["inputs"].shape) == (2, SEGMENT, HIDDEN)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"num_heads": 0}, "num_heads=0"),
        ({"intermediate_dim": 2.5}, "intermediate_dim=2.5"),
        ({"stm_length": -1}, "stm_length=-1"),
        ({"stm_length": 12}, "stm_length=12"),
        ({"dropout": 1.0}, "dropout=1.0"),
        ({"segment_loop": "for"}, "segment_loop='for'"),
        ({"ltm": "memory"}, "ltm='memory'"),
        ({"stm_length": 0, "segment_length": None}, "segment_length=None"),
    ],
)
def test_bad_arguments(kwargs, message):
    arguments = dict(
        num_heads=HEADS,
        intermediate_dim=32,
        stm_length=SEGMENT,
        ltm=make_ltm(),
        segment_length=SEGMENT,
    )
    arguments.update(kwargs)
    with pytest.raises(ValueError, match=message):
        InfFormerBlock(**arguments)


def test_bad_call_arguments():
    block = make_block("inf")
    with pytest.raises(ValueError, match="inputs.shape"):
        block(random_input(length=4), block.get_initial_state(2))
    with pytest.raises(ValueError, match="state"):
        block(random_input(length=SEGMENT), {"stm": None})
    wrong = InfFormerBlock(HEADS, 32, SEGMENT, ltm=make_ltm())
    with pytest.raises(ValueError, match="key_dim"):
        wrong.build((None, None, 2 * HIDDEN))
    with pytest.raises(ValueError, match="num_heads"):
        InfFormerBlock(3, 32, SEGMENT).build((None, None, HIDDEN))


def test_sequence_mode_takes_any_length_in_a_compiled_predict():
    """A Sequential with a block (`Input((None, D))`) predicts on one
    length, then another: also in a TensorFlow graph, where the length is
    unknown while tracing."""
    model = keras.Sequential(
        [keras.Input((None, HIDDEN)), make_block("inf"), keras.layers.Dense(3)]
    )
    for length in (96, 64):
        x = random_input(batch=2, length=length)
        y = model.predict(x, verbose=0)
        assert y.shape == (2, length, 3)
        np.testing.assert_allclose(y, to_numpy(model(x)), atol=1e-5)


@pytest.mark.parametrize("name", ["inf", "inf_no_stm", "sticky"])
def test_a_fresh_memory_skips_the_first_write_and_read(name, monkeypatch):
    """Sequence mode starts from an empty memory: its first segment neither
    writes nor reads (`segment_memory.step`'s ``starts_empty``), and outputs, KL
    losses and gradients equal the full road's, every segment run."""
    from tests.testing import fresh_road, variable_grads

    block = make_block(name)
    x = random_input(length=3 * SEGMENT + 3, seed=4)
    weights = np.random.default_rng(5).normal(size=x.shape).astype("float32")
    results = {}
    for road in ("skip", "full"):
        writes = fresh_road(monkeypatch, road)
        output = to_numpy(block(x))
        losses = [
            float(to_numpy(keras.ops.stop_gradient(loss)))
            for loss in block.losses
        ]
        grads = variable_grads(
            lambda: keras.ops.sum(keras.ops.multiply(block(x), weights)),
            block.trainable_variables,
        )
        results[road] = (output, sum(losses), [to_numpy(g) for g in grads])
        assert len(writes) == (3 if road == "skip" else 4) * 2, road
    (out, kl, grads), (out_full, kl_full, grads_full) = results.values()
    np.testing.assert_array_equal(out, out_full)
    np.testing.assert_allclose(kl, kl_full, rtol=1e-6)
    for got, expected in zip(grads, grads_full, strict=True):
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-7)
