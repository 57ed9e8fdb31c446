"""Where each absorbed token sits on the memory's time axis (the paper's
Figs. 4 and 5: which parts of a document a read looks at, and which take
the most room in a sticky memory).

A write (docs/math.md §4; ∞-former §3.2–3.3) places the segment it absorbs
and squeezes what was there:

* a first write puts slot ``j`` (0-based) of the segment at the cell
  midpoint ``(j + ½)/L``;
* an update puts it at ``τ + (1 − τ)·(j + 1)/L`` and reads the old signal
  at ``M`` positions ``t̃_m`` (uniform: ``m/M``; sticky memories: where
  past reads looked, docs/sticky_memories.md), placing sample ``m`` at
  ``τ·m/M``. The content that sat at ``t̃_m`` now sits at ``τ·m/M``: a token
  at ``p`` moves to ``τ·g(p)/M``, with ``g`` the piecewise-linear map
  through the points ``(t̃_m, m)`` (tied positions take the mean of their
  ``m``; ``(0, 0)`` and ``(1, M)`` close the ends). Uniform sampling gives
  ``p ↦ τ·p``: ``k`` writes squeeze a token to ``τ^k`` times its place.

Padded slots keep their place on the axis (a partly padded segment is
written as if they held zeros), and a row whose segment holds no real token
is not written (docs/causal_lms.md). `MemoryMap` replays these rules on
NumPy arrays, per row; `MemoryTracker` runs a KerasHub model with memory
(`absorb`, `memory_densities`) and feeds the map, recording the positions
each sticky write used. `read_weights` turns a read's Gaussian densities
into weights over the absorbed tokens, `histogram_weights` a sticky
histogram.

A position is where a token's content is centred, not a sharp place: the
memory is a sum of Gaussian basis functions (widths ``basis_widths``) fitted
by ridge regression, so neighbouring tokens blur together, more so as
writes squeeze them.
"""

import contextlib
import math

import numpy as np

from keras_infmemory import basis


def first_write_positions(length):
    """Slots of a first write: ``(j + ½)/L``, ``(L,)`` float64."""
    positions, keep = basis.segment_design(int(length))
    return positions[keep]


def update_positions(length, tau):
    """Slots of an update: ``τ + (1 − τ)·(j + 1)/L``, ``(L,)`` float64."""
    positions, keep = basis.update_design(int(length), 1, float(tau))
    return positions[keep][1:]


def squeeze(positions, tau, sample_positions=None, num_samples=None):
    """Where old content moves at an update (see the module).

    Args:
        positions: ``(n,)`` positions before the write.
        tau: float, τ.
        sample_positions: ``(M,)`` where the write read the old signal
            (``None``: uniform, ``m/M``).
        num_samples: int, ``M`` (needed only without ``sample_positions``;
            uniform sampling does not depend on it).

    Returns:
        ``(n,)`` float64 positions in ``[0, τ]``.
    """
    positions = np.asarray(positions, np.float64)
    if sample_positions is None:
        return tau * positions
    t = np.sort(np.asarray(sample_positions, np.float64).reshape(-1))
    count = len(t)
    m = np.arange(1, count + 1, dtype=np.float64)
    xs, index = np.unique(t, return_inverse=True)
    ys = np.bincount(index, weights=m) / np.bincount(index)  # mean m per tie
    if xs[0] > 0.0:
        xs, ys = np.concatenate([[0.0], xs]), np.concatenate([[0.0], ys])
    if xs[-1] < 1.0:
        xs, ys = np.concatenate([xs, [1.0]]), np.concatenate([ys, [count]])
    return tau * np.interp(positions, xs, ys) / count


class MemoryMap:
    """Where every absorbed token of each row sits on the time axis.

    Tokens are numbered per row in the order they are given (across
    calls); a token waits (position NaN) until the write that follows its
    segment.

    Example:

    >>> import numpy as np
    >>> from keras_infmemory.memory_map import MemoryMap
    >>> memory_map = MemoryMap(1, segment_length=2, tau=0.5)
    >>> for _ in range(3):  # three segments of two tokens
    ...     memory_map.step(np.ones((1, 2), bool))
    >>> memory_map.positions(0).round(4).tolist()  # the 3rd waits
    [0.125, 0.375, 0.75, 1.0, nan, nan]

    Args:
        batch_size: int, rows.
        segment_length: int, ``L``.
        tau: float, τ.
    """

    def __init__(self, batch_size, segment_length, tau):
        self.batch_size = int(batch_size)
        self.segment_length = int(segment_length)
        self.tau = float(tau)
        self._first = first_write_positions(self.segment_length)
        self._update = update_positions(self.segment_length, self.tau)
        self._positions = [np.zeros(0) for _ in range(self.batch_size)]
        self._pending = [[] for _ in range(self.batch_size)]  # (token, slot)
        self._has_memory = np.zeros(self.batch_size, bool)
        self.writes = np.zeros(self.batch_size, int)

    def step(self, segment_mask, sample_positions=None):
        """One segment: what waits is written, then the segment waits.

        Args:
            segment_mask: ``(B, L)`` bool, the segment's real tokens.
            sample_positions: ``None`` (uniform) or ``(B, M)``, where this
                write read each row's old signal.
        """
        segment_mask = np.asarray(segment_mask, bool)
        if segment_mask.shape != (self.batch_size, self.segment_length):
            raise ValueError(
                "`segment_mask` must have shape (batch_size, "
                f"segment_length)=({self.batch_size}, "
                f"{self.segment_length}). Received: {segment_mask.shape}"
            )
        for row in range(self.batch_size):
            if not segment_mask[row].any():
                continue  # the row keeps its state: nothing written
            pending = self._pending[row]
            if pending:
                positions = self._positions[row]
                if self._has_memory[row]:
                    samples = (
                        None
                        if sample_positions is None
                        else np.asarray(sample_positions)[row]
                    )
                    positions = squeeze(positions, self.tau, samples)
                    slots = self._update
                else:
                    slots = self._first
                    positions = positions.copy()
                for token, slot in pending:
                    positions[token] = slots[slot]
                self._positions[row] = positions
                self._has_memory[row] = True
                self.writes[row] += 1
            start = len(self._positions[row])
            slots = np.flatnonzero(segment_mask[row])
            self._positions[row] = np.concatenate(
                [self._positions[row], np.full(len(slots), np.nan)]
            )
            self._pending[row] = [
                (start + i, int(s)) for i, s in enumerate(slots)
            ]

    def positions(self, row):
        """``(n,)`` float64: the positions of row ``row``'s tokens (NaN for
        those that wait)."""
        return self._positions[row].copy()

    def num_tokens(self, row):
        """How many tokens row ``row`` has absorbed (waiting included)."""
        return len(self._positions[row])


def _cells(positions):
    """Each token's stretch of the time axis: between the midpoints to its
    neighbours (``−∞`` / ``+∞`` at the ends), shared equally by tokens at
    the same place. Returns ``(lower, upper, share)``, NaN positions
    excluded (share 0)."""
    positions = np.asarray(positions, np.float64)
    real = np.isfinite(positions)
    lower = np.full(len(positions), np.nan)
    upper = np.full(len(positions), np.nan)
    share = np.zeros(len(positions))
    if not real.any():
        return lower, upper, share
    places, index, counts = np.unique(
        positions[real], return_inverse=True, return_counts=True
    )
    mid = (places[1:] + places[:-1]) / 2
    low = np.concatenate([[-np.inf], mid])
    high = np.concatenate([mid, [np.inf]])
    lower[real], upper[real] = low[index], high[index]
    share[real] = 1.0 / counts[index]
    return lower, upper, share


def read_weights(mu, variance, positions):
    """Weights over the absorbed tokens of one read.

    Each head's read is the density ``N(t; μ, σ²)`` on the time axis; a
    token's weight is the density's share of its mass on ``[0, 1]`` (where
    the memory holds a signal) that falls in the token's stretch of the
    axis (between the midpoints to its neighbours, clipped to ``[0, 1]``),
    averaged over the heads. Tokens that wait (NaN) weigh 0; the weights
    sum to 1. (Unclipped, a wide read's mass outside ``[0, 1]`` would land
    on the first and the last token.)

    Example:

    >>> import numpy as np
    >>> from keras_infmemory.memory_map import read_weights
    >>> w = read_weights([0.9], [1e-4], [0.1, 0.5, 0.9, np.nan])
    >>> w.round(3).tolist()
    [0.0, 0.0, 1.0, 0.0]

    Args:
        mu: ``(H,)`` means (one token's read, one memory layer).
        variance: ``(H,)`` variances σ².
        positions: ``(n,)`` the tokens' positions (`MemoryMap.positions`).

    Returns:
        ``(n,)`` float64.
    """
    mu = np.asarray(mu, np.float64).reshape(-1, 1)
    sigma = np.sqrt(np.asarray(variance, np.float64).reshape(-1, 1))
    if mu.shape != sigma.shape:
        raise ValueError(
            "`mu` and `variance` must have the same shape (heads,). "
            f"Received: {mu.shape} and {sigma.shape}"
        )
    lower, upper, share = _cells(positions)
    real = share > 0
    weights = np.zeros(len(share))
    if real.any():
        cdf = lambda t: _normal_cdf((t - mu) / sigma)  # noqa: E731
        lo = np.clip(lower[real], 0.0, 1.0)
        hi = np.clip(upper[real], 0.0, 1.0)
        inside = np.maximum(cdf(1.0) - cdf(0.0), 1e-300)  # (H, 1)
        mass = (cdf(hi) - cdf(lo)) / inside
        weights[real] = mass.mean(axis=0) * share[real]
    return weights


def histogram_weights(histogram, positions):
    """A sticky histogram's mass (``D`` equal bins of [0, 1]) spread over
    the absorbed tokens: each bin's mass goes to the tokens whose stretch
    of the axis overlaps it, in proportion to the overlap. Returns ``(n,)``
    float64, summing to the histogram's mass."""
    histogram = np.asarray(histogram, np.float64).reshape(-1)
    edges = np.linspace(0.0, 1.0, len(histogram) + 1)
    lower, upper, share = _cells(positions)
    weights = np.zeros(len(share))
    real = share > 0
    if not real.any():
        return weights
    lo = np.clip(lower[real], 0.0, 1.0)[:, None]
    hi = np.clip(upper[real], 0.0, 1.0)[:, None]
    overlap = np.clip(
        np.minimum(hi, edges[None, 1:]) - np.maximum(lo, edges[None, :-1]),
        0.0,
        None,
    )  # (n, D)
    width = np.diff(edges)[None, :]
    weights[real] = (overlap / width * histogram[None, :]).sum(1) * share[real]
    return weights


def room(positions):
    """Each token's share of the time axis [0, 1] (its stretch, clipped):
    how much of the memory holds it. Waiting tokens have 0."""
    lower, upper, share = _cells(positions)
    real = share > 0
    result = np.zeros(len(share))
    result[real] = (
        np.clip(upper[real], 0.0, 1.0) - np.clip(lower[real], 0.0, 1.0)
    ) * share[real]
    return result


def phrase_weights(weights, phrase_ids):
    """Token weights summed per phrase: ``phrase_ids`` ``(n,)`` gives each
    token's phrase (ints from 0); returns ``(max(phrase_ids) + 1,)``."""
    weights = np.asarray(weights, np.float64).reshape(-1)
    phrase_ids = np.asarray(phrase_ids).reshape(-1)
    if phrase_ids.shape != weights.shape or (
        len(phrase_ids) and phrase_ids.min() < 0
    ):
        raise ValueError(
            "`phrase_ids` must give one phrase (int >= 0) per token, "
            f"{len(weights)} of them. Received: phrase_ids={phrase_ids!r}"
        )
    return np.bincount(phrase_ids.astype(int), weights=weights)


def _normal_cdf(z):
    return 0.5 * (1.0 + _erf(z / math.sqrt(2.0)))


_erf = np.vectorize(math.erf, otypes=[np.float64])


class MemoryTracker:
    """Runs a KerasHub model with memory and keeps its `MemoryMap`.

    `absorb` and `memory_densities` call the model's methods of the same
    name and replay their segments on the map (one segment per
    ``segment_length`` tokens of each call; a row's padding never enters
    the memory). With sticky memories, the positions each write read the
    old signal at are recorded from the memory layer's sampler while the
    model runs (eagerly: both methods run their segments in Python), so
    the map follows the exact writes, random draws included.

    Example:

    >>> import keras_hub
    >>> import numpy as np
    >>> from keras_infmemory.models import attach_memory
    >>> from keras_infmemory.memory_map import MemoryTracker
    >>> gpt2 = keras_hub.models.GPT2CausalLM(
    ...     keras_hub.models.GPT2Backbone(
    ...         vocabulary_size=16, num_layers=1, num_heads=2, hidden_dim=8,
    ...         intermediate_dim=16, max_sequence_length=8,
    ...     ), None,
    ... )
    >>> lm = attach_memory(gpt2, segment_length=4, num_basis=8,
    ...                    num_samples=8, basis_widths=(0.1,))
    >>> tracker = MemoryTracker(lm, batch_size=1)
    >>> ids = np.arange(1, 11, dtype="int32")[None]  # 10 tokens
    >>> memory = tracker.absorb({"token_ids": ids,
    ...                          "padding_mask": np.ones_like(ids)})
    >>> tracker.map.positions(0).round(3).tolist()  # the last 2 wait
    [0.062, 0.188, 0.312, 0.438, 0.625, 0.75, 0.875, 1.0, nan, nan]

    Args:
        model: a KerasHub causal LM with memory
            (`keras_infmemory.models.InfMemoryCausalLM`).
        batch_size: int, rows.
        layer: int, which memory layer (index into
            ``model.backbone.memories``) the map follows. Uniform writes
            place tokens alike in every layer; sticky writes differ.
    """

    def __init__(self, model, batch_size, layer=0):
        memories = model.backbone.memories
        if not isinstance(layer, int) or not 0 <= layer < len(memories):
            raise ValueError(
                f"`layer` must be an int in [0, {len(memories)}). "
                f"Received: layer={layer!r}"
            )
        self.model = model
        self.layer = layer
        self.ltm = memories[layer]
        self.segment_length = model.backbone.segment_length
        self.map = MemoryMap(batch_size, self.segment_length, self.ltm.tau)
        self.read_positions = []

    def absorb(self, inputs, state=None):
        """``model.absorb(inputs, state)``, followed on the map."""
        starts_empty = state is None
        with self._recording() as recorded:
            state = self.model.absorb(inputs, state=state)
        if starts_empty and recorded is not None:
            # From an empty memory the first segment skips its write
            # (nothing waits, `segment_memory.step`'s ``starts_empty``); that
            # write would have sampled uniformly (no reads yet), which is
            # what ``None`` replays.
            recorded = [None] + recorded
        self._replay(inputs, recorded, keep=False)
        return state

    def memory_densities(self, inputs, state=None):
        """``model.memory_densities(inputs, state)``, followed on the map.

        Afterwards ``read_positions[s]`` holds, per row, the positions the
        reads of segment ``s`` of ``inputs`` saw (``(n,)`` arrays, see
        `MemoryMap.positions`).
        """
        with self._recording() as recorded:
            densities, state = self.model.memory_densities(inputs, state)
        self._replay(inputs, recorded, keep=True)
        return densities, state

    def token_weights(self, densities, row, position):
        """Weights over row ``row``'s absorbed tokens of the read at
        ``position`` (an index into the last `memory_densities` call's
        tokens; the paper's Fig. 4 for the word there): `read_weights` of
        that read's density in the followed layer, on the positions that
        read saw."""
        segment = int(position) // self.segment_length
        if not 0 <= segment < len(self.read_positions):
            raise ValueError(
                "`position` must index a token of the last memory_densities "
                f"call. Received: position={position!r}"
            )
        density = densities[self.layer]
        mu = np.asarray(_numpy(density["mu"]))[row, :, position]
        variance = np.asarray(_numpy(density["variance"]))[row, :, position]
        return read_weights(mu, variance, self.read_positions[segment][row])

    def room(self, row):
        """Each absorbed token's share of row ``row``'s memory now (`room`;
        the paper's Fig. 5: sticky writes give more room to what the reads
        attend)."""
        return room(self.map.positions(row))

    @contextlib.contextmanager
    def _recording(self):
        """Records each sticky write's sample positions (the sampler's
        output, and whether the row had reads since the last write)."""
        recorded = []
        sticky = self.ltm.sticky
        if sticky is None or not self.ltm.enabled:
            yield None
            return
        original = sticky.sample_positions

        def sample_positions(histogram, num_samples):
            positions = original(histogram, num_samples)
            seen = np.asarray(_numpy(histogram)).sum(-1) > 0
            uniform = basis.uniform_sample_positions(num_samples)
            used = np.where(seen[:, None], _numpy(positions), uniform[None])
            recorded.append(used)
            return positions

        sticky.sample_positions = sample_positions
        try:
            yield recorded
        finally:
            del sticky.sample_positions

    def _replay(self, inputs, recorded, keep):
        ids = np.asarray(_numpy(inputs["token_ids"]))
        mask = inputs.get("padding_mask")
        mask = np.ones(ids.shape, bool) if mask is None else _numpy(mask)
        mask = np.asarray(mask).astype(bool)
        length = self.segment_length
        count = max(1, -(-ids.shape[1] // length))
        mask = np.pad(mask, ((0, 0), (0, count * length - ids.shape[1])))
        if not self.ltm.enabled:
            recorded = None  # a memory switched off is never written
        elif recorded is not None and len(recorded) != count:
            raise ValueError(
                f"Expected one sticky write per segment ({count}), recorded "
                f"{len(recorded)}: the memory map needs the segments run "
                "eagerly (segment_loop='python'). Received: "
                f"segment_loop={self.model.backbone.segment_loop!r}"
            )
        if keep:
            self.read_positions = []
        for s in range(count):
            segment = mask[:, s * length : (s + 1) * length]
            if not self.ltm.enabled:
                segment = np.zeros_like(segment)
            self.map.step(segment, None if recorded is None else recorded[s])
            if keep:
                self.read_positions.append(
                    [self.map.positions(r) for r in range(self.map.batch_size)]
                )


def _numpy(x):
    from keras import ops

    return ops.convert_to_numpy(x)
