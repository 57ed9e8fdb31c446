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
the STM costs no sequential step. Per call and row, the tokens are laid out
on one *extended* axis: the ``S`` STM slots of the state, then the call's
``T`` tokens. Segment ``s`` starts at call token ``s·L`` (extended index
``S + s·L``); its STM is the extended slice ``[s·L, s·L + S)``, and the
tokens that left the STM when it entered, which enter the LTM next, are the
slice ``[s·L, s·L + L)`` (every token enters the LTM once, just after it
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

    Args:
        state: the STM state before the call.
        real: ``(B, G·L)`` bool, the call's real tokens (right padding).
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
        self.length = segment_length
        self.size = ops.shape(state["mask"])[1]  # S
        self.state = state
        real = ops.cast(real, "bool")
        self.batch = ops.shape(real)[0]
        self.total = ops.shape(real)[1]  # G·L
        # Right padding: the real tokens are each row's first ``n``.
        self.real_count = ops.sum(ops.cast(real, "int32"), axis=1)  # (B,)
        extended = ops.concatenate([state["mask"], real], axis=1)
        stm_mask = self._rows(self._windows(extended, self.size))  # (B·G,S)
        self.count = ops.sum(ops.cast(stm_mask, "int32"), axis=1)  # (B·G,)
        self.positions = (
            self.count[:, None] + ops.arange(self.length, dtype="int32")[None]
        )
        index = ops.arange(self.total + self.size, dtype="int32")
        leaves = ops.logical_and(
            extended, index[None, :] < self.real_count[:, None]
        )  # (B, S + G·L)
        self.leaving = ops.moveaxis(
            self._windows(leaves, self.length), 1, 0
        )  # (G, B, L)
        self.mask = self._last(extended)

    def _windows(self, extended, width):
        """``(B, S + G·L, ...)`` → ``(B, G, width, ...)``: for each segment
        the ``width`` extended positions from its STM's first slot."""
        starts = ops.arange(0, self.total, self.length, dtype="int32")
        index = starts[:, None] + ops.arange(width, dtype="int32")[None]
        return ops.take(extended, index, axis=1)

    def _rows(self, x):
        """``(B, G, W, ...)`` → ``(B·G, W, ...)``."""
        return ops.reshape(x, (-1,) + tuple(x.shape[2:]))

    def _last(self, extended):
        """The last ``S`` real positions of each row: ``(B, S, ...)``."""
        index = self.real_count[:, None] + ops.arange(self.size, dtype="int32")
        return _take_rows(extended, index)

    def layer(self, stm_inputs, rows):
        """One decoder layer's view of the STM.

        Args:
            stm_inputs: ``(B, S, D)``, the layer's STM in the state.
            rows: ``(B·G, L, D)``, the layer's input, a segment per row.

        Returns:
            ``(stm, leaving, new_stm)``: each row's STM ``(B·G, S, D)``,
            the layer inputs leaving the STM ``(B·G, L, D)`` and the new
            state's ``(B, S, D)``. The STM is stop-gradient, as in
            Transformer-XL and as the LTM's state: one call equals the
            same text fed segment by segment, gradients included.
        """
        flat = ops.reshape(rows, (self.batch, -1, ops.shape(rows)[-1]))
        extended = ops.concatenate(
            [ops.cast(stm_inputs, rows.dtype), flat], axis=1
        )  # (B, S + G·L, D)
        extended = ops.stop_gradient(extended)
        stm = self._rows(self._windows(extended, self.size))
        leaving = self._rows(self._windows(extended, self.length))
        new_stm = ops.cast(self._last(extended), stm_inputs.dtype)
        return stm, leaving, new_stm

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


def _take_rows(x, index):
    """``out[r, i] = x[r, index[r, i]]`` for ``x`` ``(R, N, ...)`` and
    ``index`` ``(R, M)``."""
    trailing = tuple(x.shape[2:])
    index = ops.reshape(index, tuple(ops.shape(index)) + (1,) * len(trailing))
    index = ops.broadcast_to(index, tuple(ops.shape(index)[:2]) + trailing)
    return ops.take_along_axis(x, index, axis=1)
