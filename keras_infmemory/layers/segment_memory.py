"""A long-term memory fed segment by segment: the one write-then-read step.

Every model here feeds its `ContinuousLTM` the same way (docs/math.md §4,
§6): a segment's memory inputs wait in the state (``"pending"``) until the
next segment starts; then they enter the memory (write), the memory is read
by the new segment's queries (read), and the new segment's inputs wait in
turn. Block ``s`` thus reads a memory of everything up to block ``s − 1``
(``InfFormerBlock`` without STM and the KerasHub models), or up to the
segment that has just left the short-term memory (``InfFormerBlock`` with
STM, which passes the evicted segment).

The padding policy lives here and in `ContinuousLTM.write`, nowhere else:

* padded positions never enter the memory (masked write), nor the state
  (zeros are kept in their place);
* a row whose current segment holds no real token keeps its whole state
  (nothing is written, nothing starts waiting);
* a memory switched off (``ltm.enabled = False``, for ablations) is neither
  written nor read: its output is zero and its state does not change.

A runner that starts from `initial_state` knows that its first segment
finds the memory empty and nothing waiting; it says so (``starts_empty``) and
that segment skips the write and the read, which would absorb nothing and
read zeros (docs/performance.md, "A fresh memory is not run").

The state of one memory is a dict: ``"pending"`` ``(B, L, e)`` float32 and
``"pending_mask"`` ``(B, L)`` bool, what waits to be written, and
``"memory"``, the `ContinuousLTM` state it will be written into.
"""

from keras import ops

from keras_infmemory.segments import apply_if
from keras_infmemory.state import where_rows


def initial_state(ltm, batch_size, segment_length):
    """An empty memory with nothing waiting, for ``batch_size`` rows."""
    return {
        "pending": ops.zeros(
            (batch_size, segment_length, ltm.memory_dim), ltm.math_dtype
        ),
        "pending_mask": ops.zeros((batch_size, segment_length), "bool"),
        "memory": ltm.get_initial_state(batch_size),
    }


def reset_rows(ltm, state, reset_mask):
    """Empties the rows where ``reset_mask`` ``(B,)`` is True."""
    reset_mask = ops.cast(reset_mask, "bool")
    waiting = {k: state[k] for k in ("pending", "pending_mask")}
    empty = {k: ops.zeros_like(v) for k, v in waiting.items()}
    new_state = where_rows(reset_mask, empty, waiting)
    new_state["memory"] = ltm.reset_rows(state["memory"], reset_mask)
    return new_state


def step(
    ltm,
    query,
    state,
    segment,
    segment_mask,
    query_mask=None,
    active=None,
    regularize=True,
    return_density=False,
    starts_empty=False,
):
    """One segment: what waits enters the memory, the memory is read, and
    ``segment`` waits.

    Args:
        ltm: the `ContinuousLTM`.
        query: ``(B, Lq, H, d)`` the queries of this segment.
        state: the state (see `initial_state`).
        segment: ``(B, L, e)`` the memory inputs that wait for the next
            write (this segment's, or the one leaving an STM).
        segment_mask: ``(B, L)`` bool, its real positions.
        query_mask: optional ``(B, Lq)`` bool, the real queries.
        active: optional ``(B,)`` bool, rows whose segment holds a real
            token (default: any of ``segment_mask``); the other rows keep
            their state.
        regularize: add the read's KL term (see `ContinuousLTM.read`).
        return_density: also return where the read looked (inspection).
        starts_empty: Python bool, ``state`` is known to be `initial_state` (an
            empty memory, nothing waiting). The write and the read are then
            skipped: the write would absorb nothing and the read would
            return zeros with a KL term of weight zero, so outputs, state,
            losses and gradients are those of the full step. Ignored with
            ``return_density`` (the record keeps the empty read's density).

    Returns:
        ``(output, state)``: ``output`` ``(B, Lq, output_dim)`` and the new
        state (stop-gradient); with ``return_density``, ``(output, state,
        density)``, ``density`` a dict of the read's ``"mu"`` and
        ``"variance"`` ``(B, H, Lq)`` and ``"has_memory"`` ``(B,)``
        (whether the memory read held anything).
    """
    batch, length = ops.shape(query)[0], query.shape[1]
    if not ltm.enabled:
        output = ops.zeros((batch, length, ltm.output_dim), ltm.compute_dtype)
        if return_density:
            return output, state, _no_density(ltm, query)
        return output, state
    segment_mask = ops.cast(segment_mask, "bool")
    if active is None:
        active = ops.any(segment_mask, axis=1)
    if starts_empty and not return_density:
        output = ops.zeros((batch, length, ltm.output_dim), ltm.compute_dtype)
        return output, _waits(
            state, state["memory"], segment, segment_mask, active
        )
    written = ltm.write(
        state["pending"], state["memory"], mask=state["pending_mask"]
    )
    output, ltm_state = ltm.read(
        query,
        written,
        query_mask=query_mask,
        return_state=True,
        regularize=regularize,
    )  # (B, Lq, output_dim)
    new_state = _waits(state, ltm_state, segment, segment_mask, active)
    if return_density:
        mu, variance = ltm.density(query, written)
        density = {
            "mu": mu,
            "variance": variance,
            "has_memory": written["has_memory"],
        }
        return output, new_state, _stop_gradient(density)
    return output, new_state


def write_step(
    ltm, state, segment, segment_mask, starts_empty=False, active=None
):
    """`step` without its read, where only the state is wanted: what
    waits enters the memory and ``segment`` waits.

    The state is `step`'s wherever the read leaves no trace in it, i.e.
    without sticky memories (whose histogram sums the reads' densities;
    ``ltm.sticky`` must be None). A model that absorbs text (its outputs
    unused) runs its last memory layer this way and stops there
    (`keras_infmemory.models.hub.decoder_memory.MemoryRun`). ``active``:
    as in `step`. Returns the new state (stop-gradient).
    """
    if ltm.sticky is not None:
        raise ValueError(
            "`write_step` skips the read, which a sticky memory's histogram "
            f"needs; use `step`. Received: ltm.sticky={ltm.sticky!r}"
        )
    if not ltm.enabled:
        return state
    segment_mask = ops.cast(segment_mask, "bool")
    if active is None:
        active = ops.any(segment_mask, axis=1)
    ltm_state = state["memory"]
    if not starts_empty:
        ltm_state = ltm.write(
            state["pending"], ltm_state, mask=state["pending_mask"]
        )
    return _waits(state, ltm_state, segment, segment_mask, active)


def _waits(state, ltm_state, segment, segment_mask, active):
    """The state after a segment: ``ltm_state`` and ``segment`` waiting, in
    the ``active`` rows (the others keep ``state``); stop-gradient."""
    new_state = {
        "pending": _real_only(segment, segment_mask, state["pending"].dtype),
        "pending_mask": segment_mask,
        "memory": ltm_state,
    }
    return _stop_gradient(where_rows(active, new_state, state))


def decode_step(
    ltm,
    query,
    state,
    inputs,
    position,
    write,
    inputs_mask=None,
    query_mask=None,
):
    """Cached decoding: ``C`` tokens at ``position`` inside a segment.

    At a segment start (``write`` True) the previous segment, complete in
    ``"pending"``, first enters the memory; then the tokens read it, and
    their inputs are placed in ``"pending"`` at ``position``. Decoding is
    inference: no KL term is added.

    What every read of a memory shares (`ContinuousLTM.read_cache`: the
    density summary and the values ``B W_V``) changes only at a write, so
    the decoding state keeps it under ``"read"``: it is computed at each
    write (and on the first call, from a state without it) and reused by
    every token of the segment.

    Args:
        ltm: the `ContinuousLTM`.
        query: ``(B, C, H, d)``.
        state: the state (see `initial_state`), with or without
            ``"read"``.
        inputs: ``(B, C, e)`` the tokens' memory inputs.
        position: int tensor or Python int, where the tokens sit in their
            segment.
        write: bool tensor or Python bool, whether a segment starts here.
            Python values (`keras_infmemory.state.known_value`, eager
            execution) branch and index in Python.
        inputs_mask: optional ``(B, C)`` bool, the real ``inputs`` (the
            others are not marked as waiting).
        query_mask: optional ``(B, C)`` bool, the real queries (the others
            are not read for the histogram). Defaults to ``inputs_mask``;
            they differ where the inputs are another token's (the one
            leaving a short-term memory as the query's token arrives).

    Returns:
        ``(output, state)`` as `step`; the state holds ``"read"``.
    """
    batch, count = ops.shape(query)[0], query.shape[1]
    if not ltm.enabled:
        output = ops.zeros((batch, count, ltm.output_dim), ltm.compute_dtype)
        return output, state
    pending, pending_mask = state["pending"], state["pending_mask"]
    cached = state.get("read")
    if cached is None:
        cached = ltm.read_cache(state["memory"])

    if inputs_mask is None:
        arriving = ops.cast(inputs, pending.dtype)
        arriving_mask = ops.ones((batch, count), "bool")
    else:
        arriving_mask = ops.cast(inputs_mask, "bool")
        arriving = _real_only(inputs, arriving_mask, pending.dtype)

    def write_and_cache(carry):
        ltm_state, _, waiting, waiting_mask = carry
        written = ltm.write(waiting, ltm_state, mask=waiting_mask)
        # What waited has entered the memory: nothing waits now.
        return (
            written,
            ltm.read_cache(written),
            waiting,
            ops.zeros_like(waiting_mask),
        )

    # Compiled, `apply_if` is a loop of 0 or 1 steps: the state passes
    # through in place when no segment starts (a `cond` copied it).
    ltm_state, cached, pending, pending_mask = apply_if(
        write,
        write_and_cache,
        (state["memory"], cached, pending, pending_mask),
        layer=ltm,
    )
    placed = ops.slice_update(pending, [0, position, 0], arriving)
    placed_mask = ops.slice_update(pending_mask, [0, position], arriving_mask)
    output, ltm_state = ltm.read(
        query,
        ltm_state,
        query_mask=inputs_mask if query_mask is None else query_mask,
        return_state=True,
        regularize=False,
        cache=cached,
    )
    new_state = {
        "pending": placed,
        "pending_mask": placed_mask,
        "read": cached,
        "memory": ltm_state,
    }
    return output, _stop_gradient(new_state)


def _no_density(ltm, query):
    """The density record of a memory switched off: nothing was read."""
    batch, length = ops.shape(query)[0], query.shape[1]
    zeros = ops.zeros((batch, ltm.num_heads, length), ltm.math_dtype)
    return {
        "mu": zeros,
        "variance": zeros,
        "has_memory": ops.zeros((batch,), "bool"),
    }


def _real_only(x, mask, dtype):
    """``x`` ``(B, L, e)`` as ``dtype``, zeros where ``mask`` ``(B, L)`` is
    False: what lies under the padding is not even kept in the state."""
    x = ops.cast(x, dtype)
    return ops.where(ops.cast(mask, "bool")[:, :, None], x, ops.zeros_like(x))


def _stop_gradient(state):
    """``ops.stop_gradient`` on every tensor of a state (nested dicts), by
    hand: torch eager pays each ``keras.tree`` walk once per layer and
    token when decoding (docs/performance.md, "Decoding in eager torch")."""
    if isinstance(state, dict):
        return {name: _stop_gradient(value) for name, value in state.items()}
    return ops.stop_gradient(state)
