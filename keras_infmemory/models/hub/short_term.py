"""The short-term memory (STM) of a KerasHub model with memory.

With ``stm_length = S > 0`` each decoder layer of a segment attends, through
the family's own attention, to the ``S`` tokens before the segment exactly
(Transformer-XL's memory; the ∞-former's STM, docs/math.md §6): the layer
runs on ``[STM; segment]``, ``S + L`` tokens, and only the segment's ``L``
outputs are kept. What the STM keeps of a token is the decoder layer's
input (the residual stream), so its keys and values are the family's own,
recomputed with the layer's weights, norms and positions; rotary and
learned positions need no special handling.

The tokens before a segment come from the state (the text of earlier
calls) and from the earlier segments of the same call, whose layer inputs
are at hand: every segment row of a call goes through a layer at once, so
the STM costs no sequential step. Per call and row, the real tokens are
laid out in order (the state's, then each segment's, `Layout`): a
segment's STM is the ``S`` real tokens before it, and as the segment's
``r`` real tokens enter the STM, its first ``r`` leave it for the LTM,
which writes them next (every token enters the LTM once, just after it
leaves the STM, docs/causal_lms.md "The short-term memory").

The state keeps the last ``S`` real tokens' layer inputs, right-aligned
(``"mask"`` False on the left while fewer than ``S`` tokens were seen).
Padding never enters it. Inside a layer a row is laid out as
``[m real STM tokens; L segment tokens; S − m empty slots]`` so that the
first real token sits at position 0 and the segment at ``m..m+L−1``, as
the base model places them on the concatenated text, and no query finds
every key masked.

Shape letters: B batch, G segments of a call, L segment length, S STM
length, D hidden size.
"""

from keras import ops


def initial_state(batch_size, stm_length, num_layers, hidden_dim, dtype):
    """An empty STM: per decoder layer ``(B, S, D)`` zeros, and the
    ``(B, S)`` mask of the real slots (none)."""
    return {
        "inputs": [
            ops.zeros((batch_size, stm_length, hidden_dim), dtype)
            for _ in range(num_layers)
        ],
        "mask": ops.zeros((batch_size, stm_length), "bool"),
    }


def reset_rows(state, reset_mask):
    """``state`` with the rows where ``reset_mask`` ``(B,)`` is True
    emptied."""
    keep = ops.logical_not(ops.cast(reset_mask, "bool"))
    return {
        "inputs": [
            ops.where(keep[:, None, None], x, ops.zeros_like(x))
            for x in state["inputs"]
        ],
        "mask": ops.logical_and(state["mask"], keep[:, None]),
    }


class Layout:
    """Where the STM of each segment row of one call lies.

    A segment's real tokens come first in it (KerasHub's right padding; a
    segment may end in padding and the next start anew), so the text of a
    row is its real tokens in order: the state's real STM tokens, then the
    real tokens of each segment. On that *compacted* axis, segment ``s``
    finds ``c_s`` tokens before it; its STM is ``[c_s − S, c_s)``, and the
    ``r_s`` tokens leaving the STM as it enters are ``[c_s − S, c_s − S +
    r_s)`` (``r_s``: its real tokens); the new state is the last ``S``.
    Indices below 0 are empty slots.

    Args:
        state: the STM state before the call.
        real: ``(B, G·L)`` bool, the call's real tokens.
        segment_length: ``L``.

    Attributes:
        count: ``(B·G,)`` int32, ``m``: the real STM tokens of each row.
        positions: ``(B·G, L)`` int32, the segment tokens' positions
            ``m..m+L−1`` (for learned position embeddings).
        leaving: ``(G, B, L)`` bool, the real tokens leaving the STM as
            each segment enters it (what the LTM writes next).
        mask: ``(B, S)`` bool, the new state's mask.
    """

    def __init__(self, state, real, segment_length):
        length = segment_length
        size = ops.shape(state["mask"])[1]  # S
        self.length, self.size = length, size
        real = ops.cast(real, "bool")
        self.batch = ops.shape(real)[0]
        extended = ops.concatenate([state["mask"], real], axis=1)  # (B, N)
        width = ops.shape(extended)[1]
        index = ops.arange(width, dtype="int32")[None, :]
        # The real positions first, in order: the compacted axis.
        self.order = ops.argsort(
            ops.where(extended, index, index + width), axis=1
        )  # (B, N)
        seen = ops.cumsum(ops.cast(extended, "int32"), axis=1)  # (B, N)
        starts = size - 1 + ops.arange(0, width - size, length, dtype="int32")
        before = ops.take(seen, starts, axis=1)  # (B, G): c_s
        per_segment = ops.sum(
            ops.cast(ops.reshape(real, (self.batch, -1, length)), "int32"),
            axis=2,
        )  # (B, G): r_s
        stm = before[:, :, None] - size + ops.arange(size, dtype="int32")
        self.stm_index = ops.reshape(stm, (self.batch, -1))  # (B, G·S)
        self.count = ops.reshape(
            ops.sum(ops.cast(stm >= 0, "int32"), axis=2), (-1,)
        )  # (B·G,)
        self.positions = (
            self.count[:, None] + ops.arange(length, dtype="int32")[None]
        )
        leaving = before[:, :, None] - size + ops.arange(length, dtype="int32")
        self.leaving_index = ops.reshape(leaving, (self.batch, -1))
        leaves = ops.logical_and(
            leaving >= 0,
            ops.arange(length, dtype="int32")[None, None]
            < per_segment[:, :, None],
        )  # (B, G, L)
        self.leaving = ops.moveaxis(leaves, 1, 0)  # (G, B, L)
        total = seen[:, -1]  # (B,)
        last = total[:, None] - size + ops.arange(size, dtype="int32")
        self.last_index = last  # (B, S)
        self.mask = self.last_index >= 0  # (B, S)

    def layer(self, stm_inputs, rows):
        """One decoder layer's view of the STM.

        Args:
            stm_inputs: ``(B, S, D)``, the layer's STM in the state.
            rows: ``(B·G, L, D)``, the layer's input, a segment per row.

        Returns:
            ``(stm, leaving, new_stm)``: each row's STM ``(B·G, S, D)``,
            the layer inputs leaving the STM ``(B·G, L, D)`` and the new
            state's ``(B, S, D)``, zeros in empty slots. The STM is
            stop-gradient, as in Transformer-XL and as the LTM's state:
            one call equals the same text fed segment by segment.
        """
        depth = ops.shape(rows)[-1]
        text = self._text(stm_inputs, rows)
        stm = ops.reshape(
            _gather(text, self.stm_index), (-1, self.size, depth)
        )  # (B·G, S, D)
        leaving = ops.reshape(
            _gather(text, self.leaving_index), (-1, self.length, depth)
        )  # (B·G, L, D)
        return stm, leaving, self._last(text, stm_inputs.dtype)

    def shift(self, stm_inputs, rows):
        """`layer`'s third output alone: the new state's ``(B, S, D)``,
        the last ``S`` real tokens of the STM and the segments."""
        return self._last(self._text(stm_inputs, rows), stm_inputs.dtype)

    def _last(self, text, dtype):
        """The new state's tokens: the last ``S`` of the compacted
        ``text``."""
        return ops.cast(_gather(text, self.last_index), dtype)

    def _text(self, stm_inputs, rows):
        """The STM's and the segments' tokens, real ones first in order
        (the compacted axis), ``(B, S + G·L, D)``, stop-gradient."""
        depth = ops.shape(rows)[-1]
        flat = ops.reshape(rows, (self.batch, -1, depth))
        extended = ops.concatenate(
            [ops.cast(stm_inputs, rows.dtype), flat], axis=1
        )  # (B, S + G·L, D)
        return _take_rows(ops.stop_gradient(extended), self.order)

    # In a layer, a row is ``[m STM tokens; L segment; S − m empty]``:
    # the STM slots ``[S − m, S)`` rolled to the front.

    def extend(self, stm, rows):
        """``[STM; segment]`` rows ``(B·G, S + L, ...)`` in the layer's
        layout."""
        extended = ops.concatenate([ops.cast(stm, rows.dtype), rows], axis=1)
        return self._roll(extended, self.count - self.size)

    def extend_mask(self, mask):
        """A ``(B·G, L)`` padding mask → ``(B·G, S + L)``, the real STM
        slots included."""
        stm_mask = ops.arange(self.size, dtype="int32")[None, :] >= (
            self.size - self.count[:, None]
        )  # (B·G, S), right-aligned
        extended = ops.concatenate(
            [ops.cast(stm_mask, mask.dtype), mask], axis=1
        )
        return self._roll(extended, self.count - self.size)

    def segment(self, extended):
        """The segment's ``L`` positions of layer-layout rows
        ``(B·G, S + L, ...)``."""
        return self._roll(extended, -self.count)[:, : self.length]

    def place(self, segment):
        """A segment's ``(B·G, L, ...)`` values in the layer layout
        ``(B·G, S + L, ...)``, zeros elsewhere."""
        widths = [(0, 0), (0, self.size)] + [(0, 0)] * (len(segment.shape) - 2)
        return self._roll(ops.pad(segment, widths), self.count)

    def _roll(self, x, shift):
        """Each row of ``x`` ``(R, N, ...)`` rolled by ``shift`` ``(R,)``
        along axis 1: ``out[r, i] = x[r, (i − shift[r]) mod N]``."""
        width = ops.shape(x)[1]
        index = ops.mod(
            ops.arange(width, dtype="int32")[None, :] - shift[:, None], width
        )  # (R, N)
        return _take_rows(x, index)


# --------------------------------------------------------------------- #
# Cached decoding
# --------------------------------------------------------------------- #
#
# KerasHub's decoding cache holds ``S + L`` slots per layer: ``[0, S)`` the
# STM's keys and values, right-aligned as in the state (its empty slots
# masked), ``[S, S + L)`` the current segment's, written token by token at
# cache index ``S + p``. A token at ``p`` and an STM token in slot ``j``
# are ``S + p − j`` apart, as on the text (``m`` real STM tokens sit in
# slots ``[S − m, S)``): rotary positions and sliding windows, which see
# only distances, match the teacher-forced layout; learned positions are
# given per row (`Decoding.positions`). At a segment boundary the finished
# segment enters the STM (`advance`) and the family's own step rewrites
# slots ``[0, S)`` from the new STM's layer inputs (``refill`` runs,
# `keras_infmemory.models.hub.decoder_memory.Refill`).


def decoding_state(state, segment_length):
    """``state`` (an STM state) plus the current segment's layer inputs,
    as they are decoded: ``"segment"``, per decoder layer ``(B, L, D)``,
    and ``"segment_mask"`` ``(B, L)`` (none yet)."""
    batch = ops.shape(state["mask"])[0]
    return {
        **state,
        "segment": [
            ops.zeros((batch, segment_length, ops.shape(x)[-1]), x.dtype)
            for x in state["inputs"]
        ],
        "segment_mask": ops.zeros((batch, segment_length), "bool"),
    }


def advance(state):
    """A decoding state (`decoding_state`) at a segment boundary: the
    segment's real tokens enter the STM (`Layout` of one segment), and
    the next segment starts empty."""
    segment_mask = state["segment_mask"]
    layout = Layout(state, segment_mask, ops.shape(segment_mask)[1])
    return {
        "inputs": [
            layout.shift(stm, rows)
            for stm, rows in zip(state["inputs"], state["segment"], strict=True)
        ],
        "mask": layout.mask,
        "segment": [ops.zeros_like(x) for x in state["segment"]],
        "segment_mask": ops.zeros_like(segment_mask),
    }


class Decoding:
    """The STM's part of one cached decoding step: ``C`` tokens at
    ``position`` of their segment (see the cache layout above).

    Args:
        state: the decoding state (`decoding_state`).
        position: int tensor or Python int, ``p``.
        count: ``C``.
        inputs_mask: optional ``(B, C)`` bool, the real tokens (a prompt's
            last segment, seeded at once).

    Attributes:
        positions: ``(B, C)`` int32, the tokens' positions ``m + p + i``
            after the ``m`` real STM tokens (learned position embeddings).
        key_mask: ``(B, S + L)`` bool, the cache slots a token may attend
            to (with the causal mask): the real STM slots and the segment.
        leaving_mask: ``(B, C)`` bool, whether a real token leaves the STM
            as each token arrives (`layer`).
    """

    def __init__(self, state, position, count, inputs_mask=None):
        self.state = state
        self.position = position
        self.count = count
        mask = state["mask"]
        batch = ops.shape(mask)[0]
        length = ops.shape(state["segment_mask"])[1]
        if inputs_mask is None:
            real = ops.ones((batch, count), "bool")
        else:
            real = ops.cast(inputs_mask, "bool")
        stm_count = ops.sum(ops.cast(mask, "int32"), axis=1)  # (B,)
        self.positions = (
            stm_count[:, None]
            + position
            + ops.arange(count, dtype="int32")[None, :]
        )
        self.key_mask = ops.concatenate(
            [mask, ops.ones((batch, length), "bool")], axis=1
        )
        self.segment_mask = ops.slice_update(
            state["segment_mask"], [0, position], real
        )
        # As the segment's token ``p`` arrives, slot ``p`` of ``[STM;
        # segment]`` leaves the STM: every token leaves once, ``S`` after
        # it arrived (`Layout.leaving`).
        text_mask = ops.concatenate([mask, self.segment_mask], axis=1)
        self.leaving_mask = ops.logical_and(
            ops.slice(text_mask, [0, position], [batch, count]), real
        )
        self.segment = list(state["segment"])

    def layer(self, index, inputs):
        """Decoder layer ``index``'s input ``(B, C, D)`` is placed in the
        segment; returns the inputs of the tokens leaving the STM as they
        arrive ``(B, C, D)`` (real where ``leaving_mask``)."""
        segment = ops.slice_update(
            self.segment[index],
            [0, self.position, 0],
            ops.cast(ops.stop_gradient(inputs), self.segment[index].dtype),
        )
        self.segment[index] = segment
        text = ops.concatenate([self.state["inputs"][index], segment], axis=1)
        batch, depth = ops.shape(inputs)[0], ops.shape(inputs)[-1]
        return ops.slice(
            text, [0, self.position, 0], [batch, self.count, depth]
        )

    def new_state(self):
        """The decoding state after the step."""
        return {
            **self.state,
            "segment": self.segment,
            "segment_mask": self.segment_mask,
        }


def _gather(x, index):
    """`_take_rows` where ``index`` may be negative (an empty slot): zeros
    there."""
    valid = index >= 0
    taken = _take_rows(x, ops.maximum(index, 0))
    return ops.where(valid[:, :, None], taken, ops.zeros_like(taken))


def _take_rows(x, index):
    """``out[r, i] = x[r, index[r, i]]`` for ``x`` ``(R, N, ...)`` and
    ``index`` ``(R, M)``."""
    trailing = tuple(x.shape[2:])
    index = ops.reshape(index, tuple(ops.shape(index)) + (1,) * len(trailing))
    index = ops.broadcast_to(index, tuple(ops.shape(index)[:2]) + trailing)
    return ops.take_along_axis(x, index, axis=1)
