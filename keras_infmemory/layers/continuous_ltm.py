"""ContinuousLTM: the ∞-former's unbounded long-term memory as a Keras layer."""

import math

import keras
from keras import ops

from keras_infmemory import basis
from keras_infmemory import validation as check
from keras_infmemory.layers import ltm_options
from keras_infmemory.layers.memory_constants import MemoryConstants
from keras_infmemory.layers.sticky_memory_sampler import normalize
from keras_infmemory.state import where_rows


@keras.saving.register_keras_serializable(package="keras_infmemory")
class ContinuousLTM(keras.layers.Layer):
    """Continuous-attention long-term memory (∞-former, Martins et al. 2022).

    The memory stores no vectors: it keeps coefficients ``B ∈ R^{N×e}`` of a
    continuous signal ``x̄(t) = Bᵀ ψ(t)``, ``t ∈ [0, 1]``, over ``N``
    Gaussian basis functions ``ψ``. Its size and read cost stay fixed no
    matter how many tokens it has absorbed (docs/math.md).

    * **Write** (paper §3.2, eq. 12; docs/math.md §4): the old signal is
      sampled at ``M`` positions, squeezed into ``[0, τ]``, the new segment
      is placed in ``[τ, 1]``, and ``B`` is refitted by ridge regression:
      ``B = G_infᵀ [X_old; X_new]``. A first write into an empty row uses
      ``B = G_Lᵀ X_new``. An optional gate ``X ⊙ σ(Conv1D(X))`` filters the
      new segment first (on in the authors' code).
    * **Read** (§3.1; docs/math.md §3): each query of each head yields a
      Gaussian density ``N(t; μ, σ²)`` with ``μ = sigmoid(w_μᵀ s)``,
      ``σ² = softplus(w_σᵀ s)``, ``s = K_h q/√d``, and receives ``V_hᵀ r``
      where ``r`` is the closed-form expectation of ψ under that density;
      heads are concatenated and projected by ``W_O``.

    Padding (``mask`` of `write`, ``input_mask`` of a call): padded
    positions never influence the memory. A partly padded segment is
    written as if its padded positions held zero vectors: the real tokens
    keep their places on the segment's stretch ``[τ, 1]`` of the time axis
    and the rest of that stretch holds silence (the gate's convolution sees
    zeros there too, as at a segment's ends). A row with no real token
    keeps its state unchanged, bit for bit; a full row is written exactly
    as without a mask.

    The defaults are the authors' GPT-2 settings. The memory state is
    explicit and fixed-shape: ``write`` and ``call`` take a state and return
    the new one, so the layer compiles under ``jax.jit``, ``tf.function``
    and torch. All memory math runs in float32, also under mixed precision.

    Shapes: B batch, L segment length, Lq query length, H heads, d key_dim,
    e memory width, N num_basis, M num_samples.

    Example:

    >>> import numpy as np
    >>> import keras_infmemory
    >>> ltm = keras_infmemory.ContinuousLTM(
    ...     num_heads=2, key_dim=8, num_basis=64, num_samples=32
    ... )
    >>> state = ltm.get_initial_state(batch_size=3)
    >>> segment = np.random.rand(3, 32, 16).astype("float32")  # (B, L, e)
    >>> query = np.random.rand(3, 5, 2, 8).astype("float32")  # (B, Lq, H, d)
    >>> output, state = ltm(query, segment, state)  # write, then read
    >>> tuple(output.shape)
    (3, 5, 16)
    >>> output = ltm.read(query, state)  # read the memory alone

    Args:
        num_heads: int, number of attention heads ``H``.
        key_dim: int, size ``d`` of each head.
        num_basis: int, number ``N`` of basis functions; a multiple of
            ``len(basis_widths)``. Defaults to 512.
        basis_widths: sequence of floats > 0, the Gaussian widths; each
            centre carries every width. Defaults to ``(0.005, 0.01)``.
        ridge_penalty: float > 0, ridge ``λ`` (0 would leave the fit
            singular for short segments). Defaults to 0.5.
        tau: float in (0, 1), the share of [0, 1] the old signal is squeezed
            into at each write. Defaults to 0.5.
        num_samples: int, number ``M`` of samples of the old signal per
            write. Defaults to 512.
        min_variance: float > 0, lower clamp on σ². Defaults to 1e-4.
        kl_sigma: float > 0, σ₀ of the KL prior. Defaults to 0.05.
        kl_weight: float ≥ 0, weight of the KL term added with
            ``add_loss``. Defaults to 1e-6; 0 disables it.
        kl_prior_mean: ``None`` or float. ``None`` (default) gives the
            variance-only KL of the paper. The released GPT-2 configs use
            ``μ₀ = −1``, which adds ``½(μ − μ₀)²/σ₀²``; pass ``-1.0`` to
            reproduce them.
        memory_gate: ``"conv"`` (the authors') or ``None``.
        sticky: ``None`` or a `StickyMemorySampler`: where the next write
            samples the old signal.
        memory_dim: int or ``None``, the width ``e`` of what is written
            (and of ``B``). Defaults to ``num_heads * key_dim``, as in the
            authors' code; a host whose hidden size differs from heads ×
            head size (e.g. Gemma) sets its hidden size.
        output_dim: int or ``None``, the width of the read's output.
            Defaults to ``memory_dim``.
        kernel_initializer: initializer of all projection kernels.
        initial_variance: ``None`` (default, the authors') or a float
            above ``min_variance``: the read variance where the variance
            logit is zero, ``σ² = softplus(w_σᵀ s + softplus⁻¹(v))``, so a
            fresh layer (logits near 0) starts with focused reads of
            ``σ² ≈ v`` instead of ``softplus(0) = ln 2`` (docs/math.md §3,
            "Read-density options").
        density_scale: float > 0, multiplies both density logits
            ``w_μᵀ s`` and ``w_σᵀ s``. Defaults to 1 (the authors'); larger
            values make μ and σ² move faster under Adam-type optimizers
            (docs/math.md §3).
        remat_read: bool, whether a read whose gradient may follow forms
            the expectation ``r`` ``(B, H, Lq, N)`` again in the backward
            pass instead of keeping it (the read's largest tensor; same
            numbers and gradients). True saves that memory for one more
            expectation in the backward. Defaults to False
            (docs/performance.md, "Recomputing the read's largest
            tensor").
        **kwargs: base `keras.layers.Layer` arguments.

    Call arguments:
        query: ``(B, Lq, H, d)`` queries, the layout of Keras' attention
            projections.
        memory_input: ``(B, L, e)`` the segment to absorb.
        state: the memory state (see `get_initial_state`).
        input_mask: optional ``(B, L)`` bool, True for real positions of
            ``memory_input`` (see "Padding" above).
        query_mask: optional ``(B, Lq)`` bool, which queries count for the
            KL term and the sticky histogram.
        training: unused, accepted for Keras' call convention.

    Returns:
        ``(output, new_state)``: ``output`` ``(B, Lq, output_dim)`` in the
        layer's compute dtype, and the new (stop-gradient) state.
    """

    # The names of the layer's weights, in the order `build` creates them
    # (the gate's two only with ``memory_gate="conv"``).
    WEIGHT_NAMES = (
        "key_kernel",
        "value_kernel",
        "output_kernel",
        "mu_kernel",
        "sigma_kernel",
        "gate_kernel",
        "gate_bias",
    )

    def __init__(
        self,
        num_heads,
        key_dim,
        num_basis=512,
        basis_widths=(0.005, 0.01),
        ridge_penalty=0.5,
        tau=0.5,
        num_samples=512,
        min_variance=1e-4,
        kl_sigma=0.05,
        kl_weight=1e-6,
        kl_prior_mean=None,
        memory_gate="conv",
        sticky=None,
        memory_dim=None,
        output_dim=None,
        kernel_initializer="glorot_uniform",
        initial_variance=None,
        density_scale=1.0,
        remat_read=False,
        **kwargs,
    ):
        # The memory math runs in float32 whatever the policy: inputs and
        # variables are not autocast; outputs are cast back.
        kwargs.pop("autocast", None)
        super().__init__(autocast=False, **kwargs)
        options = ltm_options.check_arguments(
            num_heads,
            key_dim,
            num_basis,
            basis_widths,
            ridge_penalty,
            tau,
            num_samples,
            min_variance,
            kl_sigma,
            kl_weight,
            kl_prior_mean,
            memory_gate,
            sticky,
            memory_dim,
            output_dim,
            initial_variance,
            density_scale,
            remat_read,
        )
        for name, value in options.items():
            setattr(self, name, value)
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.geometry = MemoryConstants(
            self.num_basis,
            self.basis_widths,
            self.ridge_penalty,
            self.tau,
            self.num_samples,
            self.name,
        )
        # A switch for ablations, not config: a disabled memory is neither
        # written nor read (see `keras_infmemory.layers.segment_memory`).
        self.enabled = True
        # Per segment length, with sticky memories: how much a write may
        # grow old content (StickyMemorySampler.focus_growth or max_gain).
        self.sticky_growth = {}
        self.build()

    # ------------------------------------------------------------------ #
    # Weights and constants
    # ------------------------------------------------------------------ #

    def build(self, query_shape=None, memory_input_shape=None, state=None):
        if self.built:
            return
        e, hd, n = (
            self.memory_dim,
            self.num_heads * self.key_dim,
            self.num_basis,
        )

        def kernel(name, shape, initializer=None):
            if initializer is None:
                initializer = self.kernel_initializer.clone()
            # Never autocast: read/write math stays float32 under mixed
            # precision.
            return self.add_weight(
                name=name, shape=shape, initializer=initializer, autocast=False
            )

        # Dense kernels in Keras layout (in, out): y = x @ kernel.
        self.key_kernel = kernel("key_kernel", (e, hd))
        self.value_kernel = kernel("value_kernel", (e, hd))
        self.output_kernel = kernel("output_kernel", (hd, self.output_dim))
        # w_μ and w_σ, shared by all heads: scores over N basis -> 1 logit.
        bound = 1.0 / math.sqrt(n)
        self.mu_kernel = kernel(
            "mu_kernel", (n,), keras.initializers.RandomUniform(-bound, bound)
        )
        self.sigma_kernel = kernel(
            "sigma_kernel",
            (n,),
            keras.initializers.RandomUniform(-bound, bound),
        )
        if self.memory_gate == "conv":
            self.gate_kernel = kernel("gate_kernel", (3, e, e))
            self.gate_bias = kernel("gate_bias", (e,), "zeros")
        self.built = True

    def constants(self, length):
        """The float64 constant matrices for segments of ``length`` tokens.

        ``G_L`` ``(L, N)``, ``G_old`` ``(M, N)`` and ``G_new`` ``(L, N)``
        (the two row blocks of ``G_inf``), ``S`` ``(M, N)``, and
        ``transition = G_oldᵀ S`` ``(N, N)`` (docs/math.md §2, §4).
        """
        return self.geometry.get(length)

    def _set_constants(self, length, G_L, G_inf, S):
        """Installs constant matrices (float64) for ``length``."""
        self.geometry.install(length, G_L, G_inf, S)

    @property
    def update_growth(self):
        """Per segment length: how much a uniform write scales old content
        (spectral radius of ``G_oldᵀ S``); < 1 keeps endless streams
        bounded."""
        return self.geometry.update_growth

    @property
    def math_dtype(self):
        """float64 under a float64 policy, else float32 (also when mixed)."""
        return "float64" if self.compute_dtype == "float64" else "float32"

    def _constant(self, length, name):
        return self.geometry.matrix(length, name, self.math_dtype)

    def _basis(self):
        return self.geometry.basis(self.math_dtype)

    # ------------------------------------------------------------------ #
    # State
    # ------------------------------------------------------------------ #

    def get_initial_state(self, batch_size):
        """An empty memory for ``batch_size`` rows.

        Returns a dict: ``"coefficients"`` ``(B, N, e)`` float32 zeros,
        ``"has_memory"`` ``(B,)`` bool False, and, with sticky memories,
        ``"histogram"`` ``(B, num_bins)`` float32 zeros (bin masses summed
        over the reads since the last write).
        """
        batch_size = check.check_batch_size(batch_size)
        state = {
            "coefficients": ops.zeros(
                (batch_size, self.num_basis, self.memory_dim), self.math_dtype
            ),
            "has_memory": ops.zeros((batch_size,), "bool"),
        }
        if self.sticky is not None:
            state["histogram"] = ops.zeros(
                (batch_size, self.sticky.num_bins), self.math_dtype
            )
        return state

    def reset_rows(self, state, reset_mask):
        """``state`` with the rows where ``reset_mask`` ``(B,)`` is True
        emptied (a new document starts there); the other rows unchanged.
        A pure function: the layer holds no state."""
        batch = self._check_state(state)
        check.check_shape("reset_mask", reset_mask, (batch,), "(batch,)")
        empty = {name: ops.zeros_like(value) for name, value in state.items()}
        return where_rows(reset_mask, empty, state)  # zeros, has_memory False

    def _check_state(self, state):
        return ltm_options.check_state(self, state)

    # ------------------------------------------------------------------ #
    # Write
    # ------------------------------------------------------------------ #

    def gate(self, memory_input):
        """``X ⊙ sigmoid(Conv1D_k3(X))`` along time (authors' CNN mask)."""
        if self.memory_gate is None:
            return memory_input
        logits = ops.conv(
            memory_input, self.gate_kernel, strides=1, padding="same"
        )  # (B, L, e)
        return memory_input * ops.sigmoid(logits + self.gate_bias)

    def write(self, memory_input, state, mask=None, sample_positions=None):
        """Absorbs ``memory_input`` ``(B, L, e)`` and returns the new state.

        Rows without memory get ``B = G_Lᵀ X``; the others the unbounded
        update ``B = G_oldᵀ X_old + G_newᵀ X`` with ``X_old`` the old signal
        sampled at ``sample_positions`` ``(B, M)`` if given, else at the
        sticky positions, else at ``m/M``. ``mask`` ``(B, L)`` marks real
        positions (see "Padding" in the class docstring). The returned
        coefficients carry gradients to this segment; the incoming ones are
        stop-gradient.
        """
        batch = self._check_state(state)
        check.check_shape(
            "memory_input",
            memory_input,
            (None, None, self.memory_dim),
            f"(batch, length, {self.memory_dim}) (memory_dim)",
        )
        length = check.shape_of(memory_input)[1]
        if length is None or length < 1:
            raise ValueError(
                "`memory_input` needs a static length ≥ 1. "
                f"Received: memory_input.shape={check.shape_of(memory_input)}"
            )
        check.check_batch("memory_input", memory_input, batch, "`state`")
        if mask is not None:
            check.check_shape(
                "mask", mask, (batch, length), f"(batch, {length})"
            )
        check.check_finite("memory_input", memory_input)
        if sample_positions is not None:
            check.check_shape(
                "sample_positions",
                sample_positions,
                (batch, self.num_samples),
                f"(batch, {self.num_samples})",
            )
            check.check_finite("sample_positions", sample_positions)
        x = ops.cast(memory_input, self.math_dtype)
        if mask is not None:
            mask = ops.cast(mask, "bool")
            # Padded positions hold zeros, before the gate (a select, not a
            # product: whatever lies under the padding, NaN included, is
            # gone).
            x = ops.where(mask[:, :, None], x, ops.zeros_like(x))
        x = self.gate(x)  # (B, L, e)
        previous = ops.stop_gradient(state["coefficients"])  # (B, N, e)
        constant = lambda name: self._constant(length, name)  # noqa: E731

        has_memory = state["has_memory"]
        # One fit per row: G_newᵀ X for rows with memory, G_Lᵀ X for a
        # first write (docs/math.md §4), chosen row by row, so a batch never
        # pays both fits.
        design = ops.where(
            has_memory[:, None, None],
            constant("G_new")[None],
            constant("G_L")[None],
        )  # (B, L, N)
        new_part = basis.fit(design, x)  # (B, N, e)
        positions = sample_positions
        if positions is None and self.sticky is not None:
            old_part = self._sticky_old_part(previous, state, length)
        elif positions is None:
            # G_oldᵀ S B_prev with G_oldᵀ S precomputed: one N×N matmul.
            old_part = ops.einsum(
                "nk,bke->bne", constant("transition"), previous
            )
        else:
            positions = ops.cast(positions, self.math_dtype)  # (B, M)
            psi = basis.psi(positions, *self._basis())  # (B, M, N)
            old = basis.evaluate(psi, previous)  # X_old  (B, M, e)
            old_part = basis.fit(constant("G_old"), old)
        # B = G_infᵀ [X_old; X] (eq. 12); a first write keeps G_Lᵀ X alone
        # (an empty row's coefficients are zeros, so its old part is too).
        keep = ops.cast(has_memory, old_part.dtype)[:, None, None]
        coefficients = new_part + old_part * keep  # (B, N, e)
        new_state = {
            "coefficients": coefficients,
            "has_memory": ops.ones_like(has_memory),
        }
        if self.sticky is not None:
            new_state["histogram"] = ops.zeros_like(state["histogram"])
        if mask is not None:
            # A row with no real token keeps its memory, bit for bit.
            new_state = where_rows(ops.any(mask, axis=1), new_state, state)
        return new_state

    def _sticky_positions(self, histogram):
        """Sticky positions; rows with no reads since the last write fall
        back to the uniform ``m/M``."""
        sticky = self.sticky.sample_positions(
            normalize(histogram), self.num_samples
        )  # (B, M)
        uniform = self.geometry.uniform_positions(self.math_dtype)
        seen = ops.sum(histogram, axis=-1, keepdims=True) > 0  # (B, 1)
        return ops.where(seen, sticky, uniform[None, :])

    def _sticky_old_part(self, previous, state, length):
        """``G_oldᵀ X_old`` at the sticky positions, as the sampler's
        ``update`` reads them (docs/sticky_memories.md)."""
        if length not in self.sticky_growth:
            growth = self.sticky.max_gain
            if self.sticky.update == "exact":
                growth = self.sticky.focus_growth(
                    self.constants(length)["G_old"],
                    self.geometry.centers,
                    self.geometry.widths,
                    self.min_variance,
                )
            self.sticky_growth[length] = growth
            self.sticky.check_growth(
                growth,
                f"ContinuousLTM '{self.name}' (num_basis={self.num_basis}, "
                f"basis_widths={self.basis_widths}, num_samples="
                f"{self.num_samples}, tau={self.tau}, segments of {length} "
                "tokens)",
            )
        positions = ops.cast(
            self._sticky_positions(state["histogram"]), self.math_dtype
        )
        constants = {n: self._constant(length, n) for n in ("S", "G_old")}
        return self.sticky.old_part(
            previous, positions, constants, self._basis()
        )

    # ------------------------------------------------------------------ #
    # Read
    # ------------------------------------------------------------------ #

    def density(self, query, state):
        """The read densities: ``(mu, variance)``, each ``(B, H, Lq)``."""
        batch = self._check_state(state)
        query = self._check_query(query, batch)
        return self._density(query, state["coefficients"])

    def _density(self, query, coefficients=None, summary=None):
        """``(mu, variance)`` ``(B, H, Lq)`` from the memory's coefficients
        or, when decoding, from their cached ``summary`` (`read_cache`)."""
        if summary is None:
            summary = self._summary(coefficients)  # (B, 2, H, d)
        logits = ops.einsum("bqhd,bkhd->kbhq", query, summary)
        logits = logits / math.sqrt(self.key_dim)  # (2, B, H, Lq)
        if self.density_scale != 1.0:  # off by default (authors')
            logits = logits * self.density_scale
        mu = ops.sigmoid(logits[0])  # (B, H, Lq)
        variance_logit = logits[1]
        if self.initial_variance is not None:  # off by default (authors')
            variance_logit = variance_logit + self.variance_offset
        variance = basis.floor(ops.softplus(variance_logit), self.min_variance)
        return mu, variance

    def _summary(self, coefficients):
        """``(w_μᵀ B) W_K`` and ``(w_σᵀ B) W_K`` per head ``(B, 2, H, d)``.

        w_μᵀ s = w_μᵀ K_h q/√d = ((w_μᵀ B) W_K)_h · q/√d (docs/math.md §3):
        the keys K and the scores s over N are never formed.
        """
        weights = ops.stack(
            [self.mu_kernel.value, self.sigma_kernel.value], axis=0
        )  # (2, N)
        summary = ops.einsum("kn,bne->bke", weights, coefficients)
        summary = ops.einsum("bke,ef->bkf", summary, self.key_kernel)
        return ops.reshape(summary, (-1, 2, self.num_heads, self.key_dim))

    def _grid_order(self, coefficients):
        """``(B, N, e)`` in the basis order -> the grid order of ``r``.

        `basis.gaussian_expectation` gives ``r`` width-major ``(K, C)``; the
        basis order is centre-major (width fastest). Reordering the
        ``N × e`` coefficients is cheaper than reordering ``r``.
        """
        k = len(self.basis_widths)
        n, e = self.num_basis, self.memory_dim
        grid = ops.reshape(coefficients, (-1, n // k, k, e))
        return ops.reshape(ops.swapaxes(grid, 1, 2), (-1, n, e))

    def _values(self, coefficients):
        """The values ``V = B W_V`` per head, laid out ``(B, H, d, N)``
        with the basis axis in the grid order of ``r`` (`_grid_order`).

        The basis axis is innermost because a read contracts it: decoding
        keeps ``V`` in its state (`read_cache`), and a compiled loop keeps
        a carried tensor's layout, so any other layout is transposed
        (a full copy of ``V``) at every token.
        """
        w_v = ops.reshape(
            self.value_kernel, (self.memory_dim, self.num_heads, self.key_dim)
        )
        return ops.einsum("bne,ehd->bhdn", self._grid_order(coefficients), w_v)

    def read_cache(self, state):
        """What every read of ``state``'s memory shares, computed once.

        A memory changes only when it is written (once per segment), but
        cached decoding reads it once per token. This returns the density
        summary ``(w_μᵀ B) W_K`` ``(B, 2, H, d)`` and the values
        ``V = B W_V`` ``(B, H, d, N)`` (basis axis in the grid order,
        `_values`) of ``state``; `read` with
        ``cache=`` then costs a token ``O(H·d + N·H·d)`` instead of
        ``O(N·e·H)`` (docs/math.md §3). The output is the same up to
        float rounding.
        """
        self._check_state(state)
        coefficients = ops.cast(state["coefficients"], self.math_dtype)
        return {
            "summary": self._summary(coefficients),
            "values": self._values(coefficients),
        }

    def _check_query(self, query, batch):
        check.check_shape(
            "query",
            query,
            (None, None, self.num_heads, self.key_dim),
            f"(batch, query_length, {self.num_heads}, {self.key_dim}) "
            "(num_heads, key_dim)",
        )
        check.check_not_empty("query", query, 1, "query")
        check.check_batch("query", query, batch, "`state`")
        check.check_finite("query", query)
        return ops.cast(query, self.math_dtype)

    def read(
        self,
        query,
        state,
        query_mask=None,
        return_state=False,
        regularize=True,
        cache=None,
    ):
        """Continuous attention over the memory.

        Args:
            query: ``(B, Lq, H, d)``.
            state: the memory state.
            query_mask: optional ``(B, Lq)`` bool; masked queries add
                nothing to the KL term or the sticky histogram.
            return_state: also return the state, with this read's bin
                masses added to the sticky histogram.
            regularize: add the KL term with ``add_loss`` (when
                ``kl_weight > 0``); inference-only calls (decoding) pass
                False.
            cache: optional, `read_cache` of this ``state`` (decoding: the
                memory's summary and values, computed once per write).

        Returns:
            ``output`` ``(B, Lq, output_dim)``, or ``(output, state)``.
        """
        batch = self._check_state(state)
        query = self._check_query(query, batch)
        if query_mask is not None:
            check.check_shape(
                "query_mask",
                query_mask,
                (batch, check.shape_of(query)[1]),
                "(batch, query_length)",
            )
        coefficients = state["coefficients"]
        cache = cache or {}
        mu, variance = self._density(
            query, coefficients, cache.get("summary")
        )  # (B, H, Lq)
        output = self._attend(
            mu, variance, coefficients, cache.get("values")
        )  # (B, Lq, output_dim)
        output = ops.cast(output, self.compute_dtype)

        regularize = regularize and self.kl_weight > 0
        histogram = return_state and self.sticky is not None
        if regularize or histogram:
            # How much each query counts for the KL term and the histogram
            # (not formed otherwise: decoding pays per op in torch eager).
            has_memory = ops.cast(state["has_memory"], self.math_dtype)  # (B,)
            weight = has_memory[:, None, None]  # (B, 1, 1)
            if query_mask is not None:
                mask = ops.cast(query_mask, self.math_dtype)  # (B, Lq)
                weight = weight * mask[:, None, :]
            weight = ops.broadcast_to(weight, ops.shape(mu))  # (B, H, Lq)
        if regularize:
            kl = basis.kl_to_prior(
                mu, variance, self.kl_sigma, self.kl_prior_mean
            )  # (B, H, Lq)
            kl = ops.sum(kl * weight) / basis.floor(ops.sum(weight), 1.0)
            self.add_loss(self.kl_weight * kl)
        if not return_state:
            return output
        state = dict(state)
        if histogram:
            flat = lambda t: ops.reshape(t, (ops.shape(t)[0], -1))  # noqa
            masses = self.sticky.bin_masses(
                flat(mu), flat(variance), flat(weight)
            )  # (B, D)
            state["histogram"] = state["histogram"] + masses
        return output, state

    def _attend(self, mu, variance, coefficients, values=None):
        """``W_O concat_h(V_hᵀ r)`` with ``V = B W_V``, the cheaper way round.

        ``mu``, ``variance`` ``(B, H, Lq)`` the read densities (`_density`),
        ``coefficients`` ``(B, N, e)``; ``values`` optional, ``V`` already
        formed (`read_cache`). ``r`` comes on the basis grid
        (`basis.gaussian_expectation`); the coefficients are put in its
        grid order (`_grid_order`), not ``r`` in theirs.
        """
        h, d, e = self.num_heads, self.key_dim, self.memory_dim
        n, hd = self.num_basis, self.num_heads * self.key_dim
        grid = self.geometry.grid(self.math_dtype)
        lq = mu.shape[2]
        # Multiply-adds of the two orders: (rᵀ B) W_V against r (B W_V).
        if (
            values is None
            and lq is not None
            and h * lq * n * e + lq * e * hd < n * e * hd + lq * n * hd
        ):
            # Few queries (decoding): (rᵀ B) W_V per head, V never formed.
            r = basis.expectation_by_head(mu, variance, *grid)  # (B,H,Lq,N)
            rb = ops.einsum(
                "bhqn,bne->bhqe", r, self._grid_order(coefficients)
            )  # (B, H, Lq, e)
            w_v = ops.reshape(self.value_kernel, (e, h, d))
            z = ops.einsum("bhqe,ehd->bqhd", rb, w_v)  # (B, Lq, H, d)
        else:
            # Cached values (decoding) need no gradient: no remat.
            remat = values is None and self.remat_read
            if values is None:
                values = self._values(coefficients)  # (B, H, d, N)
            z = basis.expected_values(
                mu, variance, *grid, values, remat=remat
            )  # (B, Lq, H, d)
        z = ops.reshape(z, (-1, ops.shape(z)[1], hd))  # (B, Lq, H·d)
        # einsum, not matmul: Keras-torch matmul returns float32 for float64.
        return ops.einsum("bqe,ef->bqf", z, self.output_kernel)

    # ------------------------------------------------------------------ #
    # Keras call
    # ------------------------------------------------------------------ #

    def call(
        self,
        query,
        memory_input,
        state,
        input_mask=None,
        query_mask=None,
        training=None,
    ):
        state = self.write(memory_input, state, mask=input_mask)
        output, state = self.read(
            query, state, query_mask=query_mask, return_state=True
        )
        return output, {k: ops.stop_gradient(v) for k, v in state.items()}

    def compute_output_spec(self, query, memory_input, state, *args, **kwargs):
        output = keras.KerasTensor(
            (query.shape[0], query.shape[1], self.output_dim),
            dtype=self.compute_dtype,
        )
        new_state = {
            name: keras.KerasTensor(value.shape, dtype=value.dtype)
            for name, value in state.items()
        }
        return output, new_state

    def compute_output_shape(self, query_shape, *args, **kwargs):
        return (query_shape[0], query_shape[1], self.output_dim)

    def get_config(self):
        config = super().get_config()
        config.pop("autocast", None)
        config.update(ltm_options.config(self))
        return config
