"""CompressiveMemory in InfFormerBlock: streaming = sequence, causality,
the FIFO's values, resets, padding, the reconstruction loss's gradients."""

import keras
import numpy as np
import pytest

from keras_infmemory import InfFormerBlock
from keras_infmemory.layers import CompressiveMemory
from tests.layers.test_inf_former_block import (
    HIDDEN,
    SEGMENT,
    copy_block_weights,
    random_input,
    stream,
)
from tests.testing import assert_rows_equal, keras_layer_checks, to_numpy

RATE, SLOTS = 4, 6

# name -> (stm_length, compression, reconstruction_weight, normalize_first)
CONFIGS = {
    "conv": (SEGMENT, "conv", 0.0, True),
    "conv_post_ln": (SEGMENT, "conv", 0.0, False),
    "mean": (SEGMENT, "mean", 0.0, True),
    "reconstruction": (SEGMENT, "conv", 1.0, True),
    "no_stm": (0, "conv", 0.0, True),
    "long_stm": (2 * SEGMENT, "mean", 0.0, True),
}


def make_block(name, **kwargs):
    stm_length, compression, weight, normalize_first = CONFIGS[name]
    compressor = CompressiveMemory(
        compression_rate=RATE,
        memory_length=SLOTS,
        compression=compression,
        reconstruction_weight=weight,
    )
    arguments = dict(
        num_heads=2,
        intermediate_dim=32,
        stm_length=stm_length,
        segment_length=SEGMENT,
        normalize_first=normalize_first,
        compressor=compressor,
    )
    block = InfFormerBlock(**{**arguments, **kwargs})
    block.build((None, None, HIDDEN))
    return block


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_sequence_equals_streaming(name):
    block = make_block(name)
    x = random_input(length=6 * SEGMENT)
    whole = to_numpy(block(x))
    block.segment_loop = "scan"
    np.testing.assert_allclose(to_numpy(block(x)), whole, atol=1e-5)
    streamed, state = stream(block, x)
    np.testing.assert_allclose(streamed, whole, atol=1e-5)
    assert to_numpy(
        state["compressed"]["memory_mask"]
    ).all()  # the FIFO is full


@pytest.mark.parametrize("compression", ["mean", "conv"])
def test_fifo_holds_the_last_compressed_windows(compression):
    """After six segments (STM one segment) segments 0–3 have been
    compressed, 2 vectors each; the FIFO keeps the last 6 in order and
    segment 4 waits."""
    block = make_block(compression if compression == "mean" else "conv")
    x = random_input(length=6 * SEGMENT)
    _, state = stream(block, x)
    windows = x[:, : 4 * SEGMENT].reshape(2, -1, RATE, HIDDEN)  # (B, 8, c, D)
    if compression == "mean":
        expected = windows.mean(axis=2)
    else:
        kernel = to_numpy(block.compressor.kernel)  # (c, D, D)
        bias = to_numpy(block.compressor.bias)
        expected = np.einsum("bjcd,cde->bje", windows, kernel) + bias
    np.testing.assert_allclose(
        to_numpy(state["compressed"]["memory"]), expected[:, -SLOTS:], atol=1e-5
    )
    np.testing.assert_allclose(
        to_numpy(state["compressed"]["pending"]),
        x[:, 4 * SEGMENT : 5 * SEGMENT],
    )


def test_empty_compressed_memory_equals_transformer_xl():
    """Until a segment has left the STM and been compressed the block is
    Transformer-XL (same weights); then the compressed memory is read."""
    block = make_block("conv")
    xl = InfFormerBlock(2, 32, stm_length=SEGMENT, normalize_first=True)
    xl.build((None, None, HIDDEN))
    copy_block_weights(block, xl)
    x = random_input(length=3 * SEGMENT)
    y, _ = stream(block, x)
    y_xl, _ = stream(xl, x)
    np.testing.assert_allclose(
        y[:, : 2 * SEGMENT], y_xl[:, : 2 * SEGMENT], atol=1e-6
    )
    assert np.max(np.abs(y[:, 2 * SEGMENT :] - y_xl[:, 2 * SEGMENT :])) > 1e-3


@pytest.mark.parametrize("name", ["conv", "no_stm"])
def test_causal(name):
    block = make_block(name)
    x = random_input(length=6 * SEGMENT)
    base = to_numpy(block(x))
    for t in (3, SEGMENT + 5, 3 * SEGMENT + 1):
        changed = x.copy()
        changed[:, t] += 10.0
        out = to_numpy(block(changed))
        np.testing.assert_allclose(out[:, :t], base[:, :t], atol=1e-6)
        assert np.max(np.abs(out[:, t:] - base[:, t:])) > 1e-3


def test_reset_one_row():
    block = make_block("conv")
    x = random_input(batch=3, length=6 * SEGMENT)
    _, state = stream(block, x)
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


@pytest.mark.parametrize("name", ["conv", "mean", "reconstruction"])
def test_values_under_padding_change_nothing(name):
    """Padded positions inside the stream (a whole window and part of the
    next) never reach a later output, the compressed memory included."""
    block = make_block(name)
    x = random_input(length=6 * SEGMENT)
    mask = np.ones((2, 6 * SEGMENT), bool)
    mask[:, SEGMENT : SEGMENT + 6] = False
    clean = np.where(mask[..., None], x, 0.0).astype("float32")
    dirty = np.where(mask[..., None], x, 100.0).astype("float32")
    y_clean, s_clean = stream(block, clean, padding_mask=mask)
    y_dirty, s_dirty = stream(block, dirty, padding_mask=mask)
    np.testing.assert_allclose(y_clean[mask], y_dirty[mask], atol=1e-5)
    for clean_value, dirty_value in zip(
        keras.tree.flatten(to_numpy(s_clean)),
        keras.tree.flatten(to_numpy(s_dirty)),
        strict=True,
    ):
        np.testing.assert_allclose(clean_value, dirty_value, atol=1e-5)
    # The fully padded window left no vector: segment 1's first window.
    _, s_three = stream(block, clean[:, : 4 * SEGMENT], mask[:, : 4 * SEGMENT])
    assert (
        to_numpy(s_three["compressed"]["memory_mask"])[:, -4:].tolist()
        == [[True, True, False, True]] * 2
    )


def losses_and_gradients(block, x, variables, picks):
    """The largest gradient of each of ``variables`` for each loss of
    ``picks``: 0 the task loss (the mean squared output), 1 the losses the
    block adds (the reconstruction loss)."""
    backend = keras.backend.backend()

    def both(scope_losses):
        y = block(x)
        return keras.ops.mean(keras.ops.square(y)), sum(scope_losses())

    grads = []
    for pick in picks:
        if backend == "jax":
            import jax

            def f(values, pick=pick):
                mapping = list(zip(variables, values, strict=True))
                with keras.StatelessScope(
                    state_mapping=mapping, collect_losses=True
                ) as scope:
                    return both(lambda: scope.losses)[pick]

            found = jax.grad(f)([v.value for v in variables])
        elif backend == "tensorflow":
            import tensorflow as tf

            with tf.GradientTape() as tape:
                loss = both(lambda: block.losses)[pick]
            found = tape.gradient(loss, [v.value for v in variables])
        else:
            import torch

            loss = both(lambda: block.losses)[pick]
            found = torch.autograd.grad(
                loss, [v.value for v in variables], allow_unused=True
            )
        grads.append(
            [
                0.0 if g is None else float(np.abs(to_numpy(g)).max())
                for g in found
            ]
        )
    return grads


@pytest.mark.parametrize("weight", [0.0, 1.0])
def test_who_trains_the_compressor(weight):
    """Without the reconstruction loss the task loss trains the compressor;
    with it (the paper's choice) the compressor is trained by that loss
    alone, and that loss trains nothing else."""
    block = make_block("reconstruction" if weight else "conv")
    x = random_input(length=3 * SEGMENT)
    compressor = list(block.compressor.trainable_variables)
    others = [block.key_dense.kernel, block.value_dense.kernel]
    others += [block.query_dense.kernel, block.attention_norm.gamma]
    variables = compressor + others
    if weight:
        task, reconstruction = losses_and_gradients(block, x, variables, (0, 1))
        assert task[:2] == [0.0, 0.0], task
        assert min(reconstruction[:2]) > 0, reconstruction
        assert reconstruction[2:] == [0.0] * 4, reconstruction
    else:
        (task,) = losses_and_gradients(block, x, variables, (0,))
        assert min(task[:2]) > 0, task
    assert min(task[2:]) > 0, task


def test_weights_and_keras_layer_contract():
    """Keras' own checks of a block with a compressor (sequence mode):
    weights, round trips, symbolic and eager calls, ``fit``, mixed
    precision."""
    block = make_block("reconstruction")
    # The block's 16 and the compressor's kernel (c, D, D) and bias.
    assert len(block.trainable_weights) == 18
    assert tuple(block.compressor.kernel.shape) == (RATE, HIDDEN, HIDDEN)
    assert len(make_block("mean").trainable_weights) == 16
    config = block.get_config()
    keras_layer_checks(
        InfFormerBlock,
        init_kwargs=config,
        input_shape=(2, 3 * SEGMENT, HIDDEN),
        expected_output_shape=(2, 3 * SEGMENT, HIDDEN),
        expected_num_trainable_weights=18,
        expected_num_non_trainable_weights=0,
        supports_masking=True,
    )
    clone = InfFormerBlock.from_config(config)
    assert clone.compressor.reconstruction_weight == 1.0


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"compression_rate": 0}, "compression_rate=0"),
        ({"memory_length": 0}, "memory_length=0"),
        ({"compression": "max"}, "compression='max'"),
        ({"reconstruction_weight": -1.0}, "reconstruction_weight=-1.0"),
        (
            {"compression": "mean", "reconstruction_weight": 1.0},
            "reconstruction_weight=1.0",
        ),
    ],
)
def test_bad_arguments(kwargs, message):
    arguments = dict(compression_rate=RATE, memory_length=SLOTS)
    with pytest.raises(ValueError, match=message):
        CompressiveMemory(**{**arguments, **kwargs})


def test_bad_block_arguments():
    compressor = CompressiveMemory(compression_rate=3, memory_length=SLOTS)
    with pytest.raises(ValueError, match="segment_length=8"):
        InfFormerBlock(2, 32, stm_length=SEGMENT, compressor=compressor)
    with pytest.raises(ValueError, match="compressor='memory'"):
        InfFormerBlock(2, 32, stm_length=SEGMENT, compressor="memory")
    compressor = CompressiveMemory(compression_rate=RATE, memory_length=SLOTS)
    with pytest.raises(ValueError, match="segment_length=None"):
        InfFormerBlock(2, 32, stm_length=0, compressor=compressor)
    block = make_block("conv")
    state = block.get_initial_state(2)
    state["compressed"]["memory"] = state["compressed"]["memory"][:, :2]
    with pytest.raises(ValueError, match="compressed"):
        block(random_input(length=SEGMENT), state)
