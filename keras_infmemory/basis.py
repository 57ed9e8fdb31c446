"""Pure math of the ∞-former long-term memory.

Two kinds of functions live here, and nothing else:

* NumPy float64 builders of the constant matrices (called once per layer, at
  build time): the Gaussian basis, the design positions and the ridge
  matrices ``G_L`` and ``G_inf``, and the uniform sample matrix ``S``.
* Small ``keras.ops`` functions used at run time: ψ(t), the fit, the
  closed-form expectation ``r`` and the values it weighs, the KL
  regulariser and the sticky-memory bin masses and sample positions. They
  run in whatever dtype they are given; the layers call them in float32.

Equation numbers refer to Martins et al., "∞-former: Infinite Memory
Transformer" (ACL 2022); sections (§) to docs/math.md, which states the
math and the conventions this module follows.
"""

import math

import keras
import numpy as np
from keras import ops

_SQRT_2PI = math.sqrt(2.0 * math.pi)


# ---------------------------------------------------------------------------
# Build-time constants (NumPy float64)
# ---------------------------------------------------------------------------


def basis_grid(num_basis, basis_widths):
    """The distinct centres ``(C,)`` and widths ``(K,)`` of the basis.

    ``C = num_basis / len(basis_widths)`` centres spread over [0, 1], both
    ends included; every centre is paired with every width
    (docs/math.md §2). Float64.
    """
    widths = np.asarray(basis_widths, dtype=np.float64)
    centers = np.linspace(0.0, 1.0, num_basis // len(widths))
    return centers, widths


def basis_parameters(num_basis, basis_widths):
    """Centres and widths of the Gaussian basis, in the authors' order.

    The `basis_grid` flattened with the width index varying fastest:
    (c0, w0), (c0, w1), (c1, w0), ... (docs/math.md §2)

    Returns:
        ``(centers, widths)``, two float64 arrays of shape ``(num_basis,)``.
    """
    centers, widths = basis_grid(num_basis, basis_widths)
    return np.repeat(centers, len(widths)), np.tile(widths, len(centers))


def psi_numpy(positions, centers, widths):
    """ψ(t) in float64: ``(P,)`` positions -> ``(P, N)`` basis values."""
    t = np.asarray(positions, dtype=np.float64)[:, None]  # (P, 1)
    z = (t - centers[None, :]) / widths[None, :]  # (P, N)
    return np.exp(-0.5 * z**2) / (widths[None, :] * _SQRT_2PI)


def ridge_matrix(design_positions, keep, centers, widths, ridge_penalty):
    """Rows ``keep`` of ``G = Fᵀ (F Fᵀ + λ I)⁻¹`` (paper eq. 7), in float64.

    ``F = [ψ(t_1) … ψ(t_P)] ∈ R^{N×P}``; the kept rows are the data positions
    (the others are zero-padding pseudo-points).
    """
    F = psi_numpy(design_positions, centers, widths).T  # (N, P)
    gram = F @ F.T + ridge_penalty * np.eye(F.shape[0])  # (N, N)
    # G = Fᵀ gram⁻¹ = (gram⁻¹ F)ᵀ, gram symmetric positive definite.
    G = np.linalg.solve(gram, F).T  # (P, N)
    return G[keep]


def segment_design(length):
    """Design positions of a first write, and which of them hold data.

    The ``L`` inputs sit at cell midpoints ``(i − ½)/L``; ``L // 2`` zero
    pseudo-points continue the same grid on each side, so the regression is
    solved on ``[−½, 1½]`` (the authors' edge padding, docs/math.md §2).
    """
    num_pad = length // 2
    i = np.arange(1 - num_pad, length + num_pad + 1, dtype=np.float64)
    positions = (i - 0.5) / length  # (L + 2·pad,)
    keep = np.arange(num_pad, num_pad + length)
    return positions, keep


def update_design(length, num_samples, tau):
    """Design positions of an unbounded update, and which hold data.

    Old samples at ``τ·m/M`` (m = 1..M), new vectors at ``τ + (1−τ)·i/L``
    (i = 1..L), zero pseudo-points at the points < 0 and > 1 of
    ``linspace(−½ + δ, 1½ − δ, 2(M+L))`` with ``δ = 1/(2L+M)`` (as in the
    authors' code, there in float32; here exact).
    """
    m = np.arange(1, num_samples + 1, dtype=np.float64)
    i = np.arange(1, length + 1, dtype=np.float64)
    data = np.concatenate(
        [tau * m / num_samples, tau + (1.0 - tau) * i / length]
    )  # (M + L,)
    delta = 1.0 / (2 * length + num_samples)
    grid = np.linspace(-0.5 + delta, 1.5 - delta, 2 * (num_samples + length))
    left, right = grid[grid < 0.0], grid[grid > 1.0]
    positions = np.concatenate([left, data, right])
    keep = np.arange(len(left), len(left) + len(data))
    return positions, keep


def uniform_sample_positions(num_samples):
    """Where the old signal is read without sticky memories: ``m/M``."""
    return np.arange(1, num_samples + 1, dtype=np.float64) / num_samples


def memory_constants(
    length, num_basis, basis_widths, ridge_penalty, tau, num_samples
):
    """All constant matrices of one LTM geometry, in float64.

    Returns a dict with ``centers``, ``widths`` ``(N,)``; ``G_L`` ``(L, N)``;
    ``G_inf`` ``(M + L, N)``; ``S`` ``(M, N)``.
    """
    centers, widths = basis_parameters(num_basis, basis_widths)
    pos_l, keep_l = segment_design(length)
    pos_inf, keep_inf = update_design(length, num_samples, tau)
    return {
        "centers": centers,
        "widths": widths,
        "G_L": ridge_matrix(pos_l, keep_l, centers, widths, ridge_penalty),
        "G_inf": ridge_matrix(
            pos_inf, keep_inf, centers, widths, ridge_penalty
        ),
        "S": psi_numpy(uniform_sample_positions(num_samples), centers, widths),
    }


def update_growth(transition, steps=300, seed=0):
    """Spectral radius of the uniform update ``B ← G_oldᵀ S B`` (NumPy).

    A memory fed forever is bounded only if old content shrinks at every
    write: the radius must be < 1. Estimated by power iteration: the mean
    log-growth of a random start over the last half of ``steps``.
    """
    rng = np.random.default_rng(seed)
    v = rng.normal(size=(transition.shape[0], 4))
    logs = []
    for step in range(steps):
        v = transition @ v
        norm = np.linalg.norm(v)
        if norm == 0.0:
            return 0.0
        if step >= steps // 2:
            logs.append(np.log(norm))
        v /= norm
    return float(np.exp(np.mean(logs)))


# ---------------------------------------------------------------------------
# Run-time math (keras.ops)
# ---------------------------------------------------------------------------


def psi(positions, centers, widths):
    """ψ(t): positions ``(..., P)`` -> basis values ``(..., P, N)``."""
    positions, centers, widths = _tensors(positions, centers, widths)
    z = (ops.expand_dims(positions, -1) - centers) / widths  # (..., P, N)
    return ops.exp(-0.5 * ops.square(z)) / (widths * _SQRT_2PI)


def _tensors(*values):
    """Converts NumPy inputs, casting them to the first one's float dtype.

    Tensors already of that dtype pass as they are: a decoding step calls
    this once per layer and token, and torch eager pays each Keras op
    (docs/performance.md, "Decoding in eager torch").
    """
    first = values[0]
    if not ops.is_tensor(first):
        first = ops.convert_to_tensor(first)
    dtype = first.dtype
    return [first] + [
        v
        if ops.is_tensor(v) and v.dtype == dtype
        else ops.cast(ops.convert_to_tensor(v), dtype)
        for v in values[1:]
    ]


def floor(x, value):
    """``max(x, value)``, keeping ``x``'s dtype.

    Keras' dtype promotion sends float64 to float32 in ``ops.maximum`` (and
    ``matmul``); ``where`` keeps float64, so the float64 mode stays exact.
    """
    return ops.where(x < value, ops.full_like(x, value), x)


def fit(design_matrix, values):
    """Ridge fit ``B = Gᵀ X``: G (P, N) or per row (B, P, N), X (B, P, e)
    -> (B, N, e)."""
    if len(design_matrix.shape) == 3:
        return ops.einsum("bpn,bpe->bne", design_matrix, values)
    return ops.einsum("pn,bpe->bne", design_matrix, values)


def evaluate(basis_values, coefficients):
    """The signal ``x̄(t) = Bᵀ ψ(t)`` at P positions.

    ``basis_values`` ``(P, N)`` or ``(B, P, N)``, ``coefficients``
    ``(B, N, e)`` -> ``(B, P, e)``.
    """
    if len(basis_values.shape) == 2:
        return ops.einsum("pn,bne->bpe", basis_values, coefficients)
    return ops.einsum("bpn,bne->bpe", basis_values, coefficients)


def gaussian_expectation(mu, variance, centers, widths):
    """Closed-form ``r_j = E_{N(t; μ, σ²)}[ψ_j(t)] = N(μ; c_j, w_j² + σ²)``.

    (docs/math.md §3.4; integrated over all of R.) The basis is given as
    its grid (`basis_grid`): ``centers`` ``(C,)`` and ``widths`` ``(K,)``.
    ``mu``, ``variance``: ``(...)``; returns ``r`` on the grid,
    ``(..., K, C)``: entry ``[k, c]`` is basis function ``c·K + k`` of the
    authors' order (`basis_parameters`), so ``swapaxes(r, -1, -2)``
    flattened is ``(..., N)`` in that order.

    On the grid, ``T = σ² + w²`` has K values per query and ``μ − c`` has C,
    so only ``exp(−½(μ − c)²/T − ½ log 2πT)`` runs over all ``K·C``
    entries: three full-size operations forward instead of nine, which is
    what an unfused backend (torch eager) pays for. The centres are the
    minor axis, so those operations run over contiguous rows.
    """
    mu, variance, centers, widths = _tensors(mu, variance, centers, widths)

    # New axes by indexing and squares as products: the same numbers as
    # `ops.expand_dims` and `ops.square`, without a Keras op each.
    def expectation(mu, variance, centers, widths):
        total = variance[..., None] + widths * widths  # (..., K)
        inverse = (1.0 / total)[..., None]  # (..., K, 1)
        log_norm = -0.5 * ops.log((2.0 * math.pi) * total)  # (..., K)
        diff = mu[..., None] - centers  # (..., C)
        square = (diff * diff)[..., None, :]  # (..., 1, C)
        exponent = square * (-0.5 * inverse) + log_norm[..., None]
        return ops.exp(exponent), inverse, diff  # (..., K, C)

    # torch: autograd, as fast as the custom backward (docs/performance.md,
    # "The expectation's gradient").
    if keras.backend.backend() == "torch":
        return expectation(mu, variance, centers, widths)[0]

    # Centres and widths are arguments, not closed over: a closure over
    # tensors made inside a traced loop (JAX scan) would leak tracers.
    @ops.custom_gradient
    def expectation_with_gradient(mu, variance, centers, widths):
        r, inverse, diff = expectation(mu, variance, centers, widths)

        def gradient(*args, upstream=None):
            # ∂r/∂μ = −r·d/T and ∂r/∂σ² = ½·r/T·(d²/T − 1), d = μ − c,
            # T = σ² + w². Reusing r: XLA's autodiff recomputed the
            # exponentials and reduced broadcasts (docs/performance.md,
            # "The expectation's gradient").
            # The basis is constant: no gradient to centres and widths.
            if upstream is None:
                (upstream,) = args
            g = upstream * r * inverse  # r·u/T, (..., K, C)
            per_center = ops.sum(g, axis=-2)  # (..., C)
            d_mu = -ops.sum(per_center * diff, axis=-1)
            # ½ Σ_k (Σ_c g_kc d_c²) / T_k − ½ Σ g, one width at a time
            # (K is small): with d² broadcast to (..., K, C), JAX's XLA
            # materialised the broadcast and kept it through the backward
            # pass; as a contraction, TensorFlow's materialised g.
            square = diff * diff  # (..., C)
            spread = ops.stack(
                [
                    ops.sum(g[..., k, :] * square, axis=-1)
                    for k in range(r.shape[-2])
                ],
                axis=-1,
            )  # (..., K)
            d_variance = 0.5 * (
                ops.sum(spread * inverse[..., 0], axis=-1)
                - ops.sum(per_center, axis=-1)
            )
            return (
                d_mu,
                d_variance,
                ops.zeros_like(centers),
                ops.zeros_like(widths),
            )

        return r, gradient

    return expectation_with_gradient(mu, variance, centers, widths)


def expectation_by_head(mu, variance, centers, widths):
    """`gaussian_expectation` of per-head densities, the grid flattened.

    ``mu``, ``variance`` ``(B, H, Lq)`` -> ``r`` ``(B, H, Lq, N)``, the
    basis axis in the grid order (width-major) of `gaussian_expectation`.
    """
    r = gaussian_expectation(mu, variance, centers, widths)  # (B,H,Lq,K,C)
    count = r.shape[-2] * r.shape[-1]
    return ops.reshape(r, (-1, mu.shape[1], ops.shape(mu)[2], count))


def expected_values(mu, variance, centers, widths, values, remat=True):
    """The values under each query's density: ``Σ_n r_n V_n`` per head.

    (Eq. 8 before ``W_O``; docs/math.md §3.4.) ``mu``, ``variance``
    ``(B, H, Lq)``; the basis grid as in `gaussian_expectation`; ``values``
    ``(B, H, d, N)`` with the basis axis in ``r``'s grid order. Returns
    ``(B, Lq, H, d)``.

    ``r`` ``(B, H, Lq, N)`` is the read's largest tensor (12 MiB per layer
    and segment at GPT-2's shape). With ``remat`` it is recomputed in the
    backward pass from ``mu`` and ``variance`` (`keras.remat`) instead of
    kept: the same numbers and gradients, one more expectation's work
    (`ContinuousLTM`'s ``remat_read``; docs/performance.md, "Recomputing
    the read's largest tensor").
    """

    def weighted(mu, variance, centers, widths, values):
        r = expectation_by_head(mu, variance, centers, widths)  # (B,H,Lq,N)
        return ops.einsum("bhqn,bhdn->bqhd", r, values)

    if remat:
        weighted = keras.remat(weighted)
    return weighted(mu, variance, centers, widths, values)


def kl_to_prior(mu, variance, sigma_0, mu_0=None):
    """KL(N(μ, σ²) ‖ N(μ₀, σ₀²)), with or without its mean term.

    Variance only (default; docs/math.md §3.6):
    ``½(σ²/σ₀² − log(σ²/σ₀²) − 1)``. With ``mu_0`` (the released GPT-2
    code's ``μ₀ = −1``) the term ``½(μ − μ₀)²/σ₀²`` is added, as the
    authors do.
    """
    mu, variance = _tensors(mu, variance)
    ratio = variance / (sigma_0**2)
    kl = 0.5 * (ratio - ops.log(ratio) - 1.0)
    if mu_0 is not None:
        kl = kl + 0.5 * ops.square(mu - mu_0) / (sigma_0**2)
    return kl


def bin_masses(mu, variance, edges):
    """Gaussian mass of each bin: ``Φ((b_{k+1} − μ)/σ) − Φ((b_k − μ)/σ)``.

    ``mu``, ``variance``: ``(...)``; ``edges``: ``(D + 1,)``; returns
    ``(..., D)`` (docs/math.md §5).
    """
    mu, variance, edges = _tensors(mu, variance, edges)
    sigma = ops.sqrt(variance)
    z = (edges - ops.expand_dims(mu, -1)) / ops.expand_dims(sigma, -1)
    cdf = 0.5 * (1.0 + ops.erf(z * (1.0 / math.sqrt(2.0))))  # (..., D + 1)
    return cdf[..., 1:] - cdf[..., :-1]


def quantile_positions(histogram, num_samples):
    """Deterministic inverse-CDF sample positions from a bin histogram.

    Position m sits at ``CDF⁻¹((m − ½)/M)``, interpolated linearly inside
    its bin, on ``D`` equal bins over [0, 1]. ``histogram``: ``(B, D)``,
    normalised; returns sorted positions ``(B, M)``.
    """
    (histogram,) = _tensors(histogram)
    num_bins = histogram.shape[-1]
    cdf = ops.cumsum(histogram, axis=-1)  # (B, D): CDF at right edges
    u = (ops.arange(num_samples, dtype=histogram.dtype) + 0.5) / num_samples
    # Index of the bin holding each quantile: how many right edges are ≤ u.
    below = ops.cast(
        ops.expand_dims(cdf, 1) <= u[None, :, None], histogram.dtype
    )  # (B, M, D)
    index = ops.minimum(
        ops.cast(ops.sum(below, axis=-1), "int32"), num_bins - 1
    )  # (B, M)
    mass = ops.take_along_axis(histogram, index, axis=-1)  # (B, M)
    right = ops.take_along_axis(cdf, index, axis=-1)  # (B, M)
    fraction = (u[None, :] - (right - mass)) / floor(mass, 1e-12)
    fraction = ops.clip(fraction, 0.0, 1.0)
    index = ops.cast(index, histogram.dtype)
    return (index + fraction) / num_bins


# ---------------------------------------------------------------------------
# Sticky memories: where the old signal may be read (docs/sticky_memories.md)
# ---------------------------------------------------------------------------


def lebesgue_function(positions, old_design, centers, widths):
    """``Λ(t) = Σ_m |(G_old ψ(t))_m|`` at ``positions`` (NumPy float64).

    A write refits the old samples ``X_old`` (placed at ``τ·m/M``) with
    ``G_old``, the first ``M`` rows of ``G_inf`` (paper eq. 7 and 12); the
    next write reads the refitted signal at some ``t``. ``Λ(t)`` is the
    largest ``|x̄'(t)|`` can be when every old sample is at most 1 in
    magnitude: the per-write amplification of reading at ``t``. The uniform
    update reads only at ``t = m/M``.

    Args:
        positions: ``(P,)`` positions in [0, 1].
        old_design: ``G_old``, ``(M, N)``.
        centers: ``(N,)`` basis centres.
        widths: ``(N,)`` basis widths.

    Returns:
        ``(P,)`` float64.
    """
    rows = psi_numpy(positions, centers, widths) @ np.asarray(old_design).T
    return np.abs(rows).sum(axis=-1)


def grid_weights(positions, num_samples):
    """Weights that read a signal from its samples at ``m/M`` (m = 1..M).

    Linear interpolation between the two nearest grid points; positions
    below ``1/M`` take the first sample (the memory is not fitted to any
    data left of ``τ/M``, so ``x̄`` there is an extrapolation). Each row is
    nonnegative and sums to 1: the tent ``max(0, 1 − |u − m|)`` at
    ``u = clip(t·M, 1, M)``.

    Args:
        positions: ``(..., P)`` positions in [0, 1].
        num_samples: int, ``M``.

    Returns:
        ``(..., P, M)`` weights, in the positions' dtype.
    """
    (positions,) = _tensors(positions)
    u = positions * num_samples
    u = floor(u, 1.0)
    u = ops.where(u > num_samples, ops.full_like(u, num_samples), u)
    nodes = ops.arange(1, num_samples + 1, dtype=positions.dtype)  # (M,)
    return floor(1.0 - ops.abs(ops.expand_dims(u, -1) - nodes), 0.0)


def limit_growth(part, part_samples, samples, max_gain):
    """Scales ``part`` so that its grid samples stay below the old ones.

    Per batch row and channel, ``max_m |part_samples|`` is brought down to
    at most ``max_gain · max_m |samples|`` (and left alone when it already
    is).

    Args:
        part: ``(B, N, e)`` coefficients.
        part_samples: ``(B, M, e)``, ``S · part``.
        samples: ``(B, M, e)``, the grid samples ``S · B`` of the memory
            the part was computed from.
        max_gain: float in (0, 1).

    Returns:
        ``(B, N, e)``.
    """
    top = ops.max(ops.abs(part_samples), axis=1)  # (B, e)
    limit = max_gain * ops.max(ops.abs(samples), axis=1)  # (B, e)
    scale = ops.where(
        top > limit, limit / floor(top, 1e-30), ops.ones_like(top)
    )
    return part * ops.expand_dims(scale, 1)


def bounded_old_part(
    coefficients, positions, sample_matrix, old_design, max_gain
):
    """``G_oldᵀ X_old`` of a sticky write that cannot amplify old content.

    ``X_old`` is read from the uniform samples ``y = S·B`` of the memory by
    `grid_weights` (convex combinations, so ``|X_old| ≤ max_m |y_m|``),
    refitted with ``G_old`` (paper eq. 12), and the result is scaled by
    `limit_growth` so that its own grid samples stay within ``max_gain``
    times ``max_m |y_m|``. Hence, per channel, the new memory's grid maximum
    is at most ``max_gain`` times the old one plus what the new segment
    adds, whatever the positions (docs/sticky_memories.md).

    Args:
        coefficients: ``(B, N, e)`` the old memory ``B``.
        positions: ``(B, M)`` sticky positions in [0, 1].
        sample_matrix: ``S``, ``(M, N)``: ψ at ``m/M``.
        old_design: ``G_old``, ``(M, N)``.
        max_gain: float in (0, 1).

    Returns:
        ``(B, N, e)``.
    """
    num_samples = sample_matrix.shape[0]
    samples = evaluate(sample_matrix, coefficients)  # y = S B  (B, M, e)
    weights = grid_weights(positions, num_samples)  # (B, M, M)
    old = ops.einsum("bpm,bme->bpe", weights, samples)  # X_old (B, M, e)
    part = fit(old_design, old)  # (B, N, e)
    return limit_growth(part, evaluate(sample_matrix, part), samples, max_gain)


def sticky_focus_growth(
    old_design, centers, widths, num_bins, mode, min_variance, focus=None
):
    """Worst per-write growth of the exact sticky update under a steady read
    focus (NumPy float64; docs/sticky_memories.md).

    Every read since each write is the narrowest density the layer allows,
    ``N(t; μ, σ²_min)``, at the same ``μ``; the write evaluates the old
    signal exactly at the positions the sampler places for that histogram
    (the authors' update, ``X_old = x̄(t̃)``) and refits it (paper eq. 12).
    For ``mode="categorical"`` the expected draws stand in for the random
    ones: the left edge of the bin that holds each quantile ``(m − ½)/M``.
    The old content then follows a fixed linear map per ``μ``,
    ``X_old ← Ψ(t̃) G_oldᵀ X_old``, whose spectral radius is the growth per
    write. Scanned over ``focus`` (default: 65 values of ``μ`` in [0, 1],
    and for ``"categorical"`` a flat histogram too).

    ``Ψ(t̃)`` is read from a table of ``ψ(t) G_oldᵀ`` (at the left edges, or
    for ``"quantile"`` on a grid finer than ``max(D, M)/2`` and ``w_min/8``,
    interpolated linearly), and the radius is taken from the smaller of the two
    products ``W·R`` and ``R·W`` (table rows ``R`` that are used, weights
    ``W``), which share their nonzero eigenvalues.

    Args:
        old_design: ``G_old``, ``(M, N)``.
        centers: ``(N,)`` basis centres.
        widths: ``(N,)`` basis widths.
        num_bins: int, ``D``.
        mode: ``"categorical"`` or ``"quantile"``.
        min_variance: float, ``σ²_min`` of the reads.
        focus: optional sequence of the ``μ`` to try.

    Returns:
        float, the largest growth factor found (> 1: old content under that
        focus grows at every write).
    """
    old_design = np.asarray(old_design, dtype=np.float64)
    num_samples = old_design.shape[0]
    edges = np.linspace(0.0, 1.0, num_bins + 1)
    cdf_edges = edges.copy()
    cdf_edges[0], cdf_edges[-1] = -1e-6, 1.0 + 1e-6
    if mode == "categorical":
        table = edges[:-1]  # the left edges k/D
    else:
        # Spacing ≤ w_min/8 (linear interpolation of ψ within ~0.2%).
        size = max(2 * max(num_bins, num_samples), math.ceil(8 / min(widths)))
        table = np.linspace(0.0, 1.0, size + 1)
    # Row r: how x̄'(table_r) responds to each old sample, (R, M).
    response = psi_numpy(table, centers, widths) @ old_design.T
    u = (np.arange(num_samples) + 0.5) / num_samples
    erf = np.vectorize(math.erf)
    scale = math.sqrt(2.0 * min_variance)
    histograms = []
    if focus is None:
        focus = np.linspace(0.0, 1.0, 65)
        if mode == "categorical":  # flat reads draw the left edge 0 too
            histograms.append(np.full(num_bins, 1.0 / num_bins))
    for mu in focus:
        masses = np.diff(0.5 * (1.0 + erf((cdf_edges - mu) / scale)))
        histograms.append(masses / masses.sum())
    rows = np.arange(num_samples)
    worst = 0.0
    for histogram in histograms:
        cdf = np.cumsum(histogram)
        index = np.minimum((cdf[None, :] <= u[:, None]).sum(1), num_bins - 1)
        if mode == "categorical":
            low, weight = index, np.ones(num_samples)
            high = low
        else:
            mass = histogram[index]
            fraction = (u - (cdf[index] - mass)) / np.maximum(mass, 1e-12)
            position = (index + np.clip(fraction, 0.0, 1.0)) / num_bins
            q = position * (len(table) - 1)
            low = np.minimum(np.floor(q).astype(int), len(table) - 2)
            high, weight = low + 1, 1.0 - (q - low)
        used, inverse = np.unique(
            np.concatenate([low, high]), return_inverse=True
        )
        weights = np.zeros((num_samples, len(used)))  # W (M, U)
        np.add.at(weights, (rows, inverse[:num_samples]), weight)
        np.add.at(weights, (rows, inverse[num_samples:]), 1.0 - weight)
        if len(used) < num_samples:
            small = response[used] @ weights  # R·W (U, U)
        else:
            small = weights @ response[used]  # W·R (M, M)
        worst = max(worst, _spectral_radius(small))
    return worst


def _spectral_radius(matrix, largest_dense=160):
    """``max |λ|``: all eigenvalues up to ``largest_dense`` rows, else power
    iteration (`update_growth`, which also handles a complex pair)."""
    if matrix.shape[0] <= largest_dense:
        return float(np.abs(np.linalg.eigvals(matrix)).max())
    return update_growth(matrix, steps=100)
