"""The state layout of an `InfFormerBlock`: its empty state, per-row reset
and checks (one place for the keys and shapes the block carries).

The state is a dict with one entry per memory the block's configuration
uses, each the state of that memory:

* ``"stm"``: the short-term memory, ``{"inputs": (B, S, D), "mask": (B,
  S)}`` (the last ``S`` block inputs, oldest first, and which slots hold
  real tokens);
* ``"ltm"``: the long-term memory fed segment by segment (the layout of
  `keras_infmemory.layers.segment_memory`: ``"pending"``,
  ``"pending_mask"`` and the `ContinuousLTM` state ``"memory"``);
* ``"compressed"``: the compressed memory (`CompressiveMemory`'s state).
"""

from keras import ops

from keras_infmemory import validation as check
from keras_infmemory.layers import segment_memory
from keras_infmemory.state import where_rows


def memories(block):
    """The names of the memories ``block`` carries, in state order."""
    names = []
    if block.stm_length:
        names.append("stm")
    if block.ltm is not None:
        names.append("ltm")
    if block.compressor is not None:
        names.append("compressed")
    return names


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
        state["stm"] = {
            "inputs": ops.zeros(
                (batch_size, block.stm_length, block.hidden_dim),
                block.compute_dtype,
            ),
            "mask": ops.zeros((batch_size, block.stm_length), "bool"),
        }
    if block.ltm is not None:
        state["ltm"] = segment_memory.initial_state(
            block.ltm, batch_size, block.segment_length
        )
    if block.compressor is not None:
        state["compressed"] = block.compressor.get_initial_state(
            batch_size, block.segment_length, block.compute_dtype
        )
    return state


def reset_rows(block, state, reset_mask):
    """``state`` with the rows where ``reset_mask`` ``(B,)`` is True
    emptied (see `InfFormerBlock.reset_rows`)."""
    batch = check_state(block, state)
    check.check_shape("reset_mask", reset_mask, (batch,), "(batch,)")
    reset = ops.cast(reset_mask, "bool")  # (B,)
    new_state = {}
    if "stm" in state:
        empty = {k: ops.zeros_like(v) for k, v in state["stm"].items()}
        new_state["stm"] = where_rows(reset, empty, state["stm"])
    if "ltm" in state:
        new_state["ltm"] = segment_memory.reset_rows(
            block.ltm, state["ltm"], reset
        )
    if "compressed" in state:
        new_state["compressed"] = block.compressor.reset_rows(
            state["compressed"], reset
        )
    return new_state


def check_state(block, state):
    """Checks the keys and shapes of ``state`` against ``block``'s
    configuration; returns its batch size."""
    expected = memories(block)
    if not isinstance(state, dict) or sorted(state) != sorted(expected):
        got = sorted(state) if isinstance(state, dict) else type(state)
        raise ValueError(
            f"`state` must be a dict with keys {sorted(expected)}, as "
            f"returned by get_initial_state(). Received: state={got}"
        )
    batch = None
    for memory, keys, length in (
        ("stm", ("inputs", "mask"), block.stm_length),
        ("ltm", ("pending", "pending_mask"), block.segment_length),
        (
            "compressed",
            ("memory", "memory_mask"),
            block.compressor and block.compressor.memory_length,
        ),
        ("compressed", ("pending", "pending_mask"), block.segment_length),
    ):
        if memory not in state:
            continue
        values, mask = keys
        name = f"state['{memory}']['{values}']"
        if not isinstance(state[memory], dict) or not set(keys) <= set(
            state[memory]
        ):
            raise ValueError(
                f"`state['{memory}']` must be a dict with keys {list(keys)}"
                ", as returned by get_initial_state(). Received: "
                f"state['{memory}']={type(state[memory]).__name__}"
            )
        batch = (
            check.shape_of(state[memory][values])[0] if batch is None else batch
        )
        check.check_shape(
            name,
            state[memory][values],
            (batch, length, block.hidden_dim),
            f"(batch, {length}, {block.hidden_dim})",
        )
        check.check_shape(
            f"state['{memory}']['{mask}']",
            state[memory][mask],
            (batch, length),
            f"(batch, {length})",
        )
    if "ltm" in state:
        if "memory" not in state["ltm"]:
            raise ValueError(
                "`state['ltm']` must hold the ContinuousLTM state under "
                "'memory', as returned by get_initial_state(). Received: "
                f"state['ltm'] with keys {sorted(state['ltm'])}"
            )
        block.ltm._check_state(state["ltm"]["memory"])
        check.check_batch(
            "state['ltm']['memory']['coefficients']",
            state["ltm"]["memory"]["coefficients"],
            batch,
            "state['ltm']['pending']",
        )
    return batch
