"""The state layout of an `InfFormerBlock`: its empty state, per-row reset
and checks (one place for the keys and shapes the block carries).

The state is a dict with only the entries the block's configuration uses:
``"stm"``/``"stm_mask"`` (the short-term memory), ``"pending"``,
``"pending_mask"`` and ``"ltm"`` (the layout of
`keras_infmemory.layers.segment_memory`), and with a compressor the keys of
`keras_infmemory.layers.compressive_memory.STATE_KEYS`.
"""

from keras import ops

from keras_infmemory import validation as check
from keras_infmemory.layers import segment_memory
from keras_infmemory.layers.compressive_memory import (
    STATE_KEYS as COMPRESSED_KEYS,
)
from keras_infmemory.state import where_rows


def initial_state(block, batch_size):
    """An empty state of ``block`` for ``batch_size`` rows (see
    `InfFormerBlock.get_initial_state`)."""
    if block.hidden_dim is None:
        raise ValueError(
            "Build the block (call it once or `block.build(shape)`) "
            "before `get_initial_state`: the hidden size comes from "
            "the input."
        )
    batch_size = check.check_batch_size(batch_size)
    state = {}
    if block.stm_length:
        state["stm"] = ops.zeros(
            (batch_size, block.stm_length, block.hidden_dim),
            block.compute_dtype,
        )
        state["stm_mask"] = ops.zeros((batch_size, block.stm_length), "bool")
    if block.ltm is not None:
        state.update(
            segment_memory.initial_state(
                block.ltm, batch_size, block.segment_length
            )
        )
    if block.compressor is not None:
        state.update(
            block.compressor.get_initial_state(
                batch_size, block.segment_length, block.compute_dtype
            )
        )
    return state


def reset_state(block, state, reset_mask):
    """``state`` with the rows where ``reset_mask`` ``(B,)`` is True
    emptied (see `InfFormerBlock.reset_state`)."""
    batch = check_state(block, state)
    check.check_shape("reset_mask", reset_mask, (batch,), "(batch,)")
    reset = ops.cast(reset_mask, "bool")  # (B,)
    new_state = {}
    if block.stm_length:
        short = {k: state[k] for k in ("stm", "stm_mask")}
        empty = {k: ops.zeros_like(v) for k, v in short.items()}
        new_state.update(where_rows(reset, empty, short))
    if block.ltm is not None:
        memory = {k: state[k] for k in ("pending", "pending_mask", "ltm")}
        new_state.update(segment_memory.reset_state(block.ltm, memory, reset))
    if block.compressor is not None:
        compressed = {k: state[k] for k in COMPRESSED_KEYS}
        new_state.update(block.compressor.reset_state(compressed, reset))
    return new_state


def check_state(block, state):
    """Checks the keys and shapes of ``state`` against ``block``'s
    configuration; returns its batch size."""
    expected = set()
    if block.stm_length:
        expected |= {"stm", "stm_mask"}
    if block.ltm is not None:
        expected |= {"pending", "pending_mask", "ltm"}
    if block.compressor is not None:
        expected |= set(COMPRESSED_KEYS)
    if not isinstance(state, dict) or set(state) != expected:
        got = sorted(state) if isinstance(state, dict) else type(state)
        raise ValueError(
            f"`state` must be a dict with keys {sorted(expected)}, as "
            f"returned by get_initial_state(). Received: state={got}"
        )
    batch = None
    compressor = block.compressor
    for name, length in (
        ("stm", block.stm_length),
        ("pending", block.segment_length),
        ("compressed", compressor and compressor.memory_length),
        ("uncompressed", block.segment_length),
    ):
        if name not in state:
            continue
        batch = check.shape_of(state[name])[0] if batch is None else batch
        check.check_shape(
            f"state['{name}']",
            state[name],
            (batch, length, block.hidden_dim),
            f"(batch, {length}, {block.hidden_dim})",
        )
        check.check_shape(
            f"state['{name}_mask']",
            state[f"{name}_mask"],
            (batch, length),
            f"(batch, {length})",
        )
    if block.ltm is not None:
        block.ltm._check_state(state["ltm"])
        check.check_batch(
            "state['ltm']['coefficients']",
            state["ltm"]["coefficients"],
            batch,
            "state['pending']",
        )
    return batch
