"""StickyMemorySampler: where the next write samples the old signal."""

import hashlib
import warnings

import keras
import numpy as np
from keras import ops

from keras_infmemory import basis
from keras_infmemory import validation as check

_MODES = ("categorical", "quantile")
_UPDATES = ("exact", "bounded")
# `update="exact"` warns when a steady read focus can grow old content by
# more than this per write (docs/sticky_memories.md).
_GROWTH_TOLERANCE = 1.01
_FOCUS_GROWTH = {}  # geometry -> basis.sticky_focus_growth, per process


@keras.saving.register_keras_serializable(package="keras_infmemory")
class StickyMemorySampler(keras.layers.Layer):
    """Sticky memories: sample the old signal where past queries attended.

    After each read of a `ContinuousLTM`, every query of every head leaves a
    Gaussian density ``N(t; μ, σ²)`` over the memory's time axis. The sampler
    turns those into a histogram over ``num_bins`` equal bins of [0, 1]
    (exact Gaussian mass per bin, via erf):

    ``p(bin_k) ∝ Σ_{h,i} [Φ((b_{k+1} − μ)/σ) − Φ((b_k − μ)/σ)]``

    and, at the next write, places the ``M`` sample positions of the old
    signal according to ``p`` (∞-former §3.3, docs/math.md §5). Heavily
    attended regions get more of the ``M`` slots and keep their resolution.

    Two placements are offered:

    * ``"categorical"`` (the authors'): draw ``M`` bins from Categorical(p),
      take each bin's left edge, sort. Stochastic; duplicates are common.
      Seeded through a `keras.random.SeedGenerator`.
    * ``"quantile"``: position ``m`` at ``CDF⁻¹((m − ½)/M)`` with linear
      interpolation inside the bin: the same expected number of points per
      bin, with no variance and no duplicates.

    How a `ContinuousLTM` write reads the old signal at those positions
    (docs/sticky_memories.md):

    * ``update="exact"`` (the authors' write): ``X_old = x̄(t̃)``, the fitted
      signal at each position. A uniform write moves old content towards 0
      and shrinks it; a sticky write copies what the reads attended again,
      so while the reads keep attending one place every write multiplies
      that content by the refit's overshoot there: 1.07 for the GPT-2
      geometry with 128 bins, 2.9 for ``num_basis=32`` with the default
      widths (whose fit is spiky between the uniform samples ``m/M``). Long
      streams can then diverge. The layer computes this growth
      (``ContinuousLTM.sticky_growth``) and warns, once per segment length,
      when it exceeds 1% per write.
    * ``update="bounded"`` (the default): ``X_old`` is interpolated
      linearly between the uniform samples ``x̄(m/M)`` of the old memory
      (so it is never larger than they are), and the refitted old part is
      scaled down, per
      channel, where its largest uniform sample would exceed ``max_gain``
      times the old memory's. With ``ν(B) = max_m |(S·B)_m|`` every write
      then has ``ν(B_t) ≤ max_gain·ν(B_{t−1}) + ν(G_newᵀ x_t)``: the memory
      stays bounded whatever the reads and the geometry. Where the
      positions lie on the grid and the cap is idle, it is the authors'
      write.

    Example:

    >>> import numpy as np
    >>> import keras_infmemory
    >>> sampler = keras_infmemory.StickyMemorySampler(mode="quantile")
    >>> mu = np.full((2, 6), 0.25, "float32")
    >>> variance = np.full((2, 6), 1e-3, "float32")
    >>> hist = sampler.histogram(mu, variance)  # (2, 128), rows sum to 1
    >>> positions = sampler.sample_positions(hist, num_samples=16)  # (2, 16)

    Args:
        num_bins: int, number ``D`` of equal bins on [0, 1]. Defaults to 128
            (the authors').
        mode: ``"categorical"`` or ``"quantile"``, how sample positions are
            placed. Defaults to ``"categorical"`` (the authors').
        update: ``"bounded"`` or ``"exact"``, how a write reads the old
            signal at the positions. Defaults to ``"bounded"``, safe in
            endless streams; ``"exact"`` is the authors' write (their
            released code wipes its memory every 2,048 tokens, before the
            growth shows; ours is unbounded).
        max_gain: float in (0, 1), with ``update="bounded"``: per write and
            channel, the old part's largest uniform sample is at most
            ``max_gain`` times the old memory's. Defaults to 0.99.
        seed: int or `keras.random.SeedGenerator`, seeds the categorical
            draws.
        **kwargs: base `keras.layers.Layer` arguments.

    Call arguments:
        mu: ``(B, K)`` means of the read densities (K = heads × queries).
        variance: ``(B, K)`` variances σ².
        mask: optional ``(B, K)`` boolean, which densities count.

    Returns:
        The normalised histogram, ``(B, num_bins)``.
    """

    def __init__(
        self,
        num_bins=128,
        mode="categorical",
        seed=None,
        update="bounded",
        max_gain=0.99,
        **kwargs,
    ):
        kwargs.setdefault("autocast", False)
        super().__init__(**kwargs)
        num_bins = check.check_int("num_bins", num_bins)
        if mode not in _MODES:
            raise ValueError(
                f"`mode` must be one of {_MODES}. Received: mode={mode!r}"
            )
        if update not in _UPDATES:
            raise ValueError(
                f"`update` must be one of {_UPDATES}. "
                f"Received: update={update!r}"
            )
        max_gain = check.check_range("max_gain", max_gain, 0.0, 1.0)
        if seed is not None and not isinstance(
            seed, (int, np.integer, keras.random.SeedGenerator)
        ):
            raise ValueError(
                "`seed` must be None, an int or a keras.random.SeedGenerator. "
                f"Received: seed={seed!r}"
            )
        self.num_bins = num_bins
        self.mode = mode
        self.seed = seed
        self.update = update
        self.max_gain = max_gain
        if isinstance(seed, keras.random.SeedGenerator):
            self.seed_generator = seed
        else:
            self.seed_generator = keras.random.SeedGenerator(seed)
        # Positions use the plain edges; the CDF uses edges nudged outwards
        # by 1e-6, as the authors do, so 0 and 1 fall inside the end bins.
        edges = np.linspace(0.0, 1.0, num_bins + 1)
        cdf_edges = edges.copy()
        cdf_edges[0], cdf_edges[-1] = -1e-6, 1.0 + 1e-6
        self._left_edges = edges[:-1]  # float64, cast at use
        self._cdf_edges = cdf_edges
        self.built = True

    def bin_masses(self, mu, variance, mask=None):
        """Unnormalised histogram: summed bin masses ``(B, num_bins)``."""
        check.check_shape("mu", mu, (None, None), "(batch, K)")
        batch, size = check.shape_of(mu)
        like_mu = "(batch, K), the shape of `mu`"
        check.check_shape("variance", variance, (batch, size), like_mu)
        if mask is not None:
            check.check_shape("mask", mask, (batch, size), like_mu)
        check.check_finite("mu", mu)
        check.check_finite("variance", variance)
        dtype = _math_dtype(mu)
        mu = ops.cast(mu, dtype)
        variance = ops.cast(variance, dtype)
        masses = basis.bin_masses(
            mu, variance, ops.convert_to_tensor(self._cdf_edges.astype(dtype))
        )  # (B, K, D)
        if mask is not None:
            masses = masses * ops.cast(mask, dtype)[..., None]
        return ops.sum(masses, axis=1)  # (B, D)

    def histogram(self, mu, variance, mask=None):
        """Normalised histogram ``(B, num_bins)`` from ``(B, K)`` μ and σ²."""
        return normalize(self.bin_masses(mu, variance, mask))

    def call(self, mu, variance, mask=None):
        return self.histogram(mu, variance, mask)

    def sample_positions(self, histogram, num_samples):
        """Sorted sample positions ``(B, num_samples)`` in [0, 1]."""
        check.check_shape(
            "histogram",
            histogram,
            (None, self.num_bins),
            f"(batch, {self.num_bins})",
        )
        check.check_finite("histogram", histogram)
        check.check_int("num_samples", num_samples)
        dtype = _math_dtype(histogram)
        histogram = ops.cast(histogram, dtype)
        if self.mode == "quantile":
            return basis.quantile_positions(histogram, num_samples)
        logits = ops.log(basis.floor(histogram, 1e-30))  # (B, D)
        index = keras.random.categorical(
            logits, num_samples, dtype="int32", seed=self.seed_generator
        )  # (B, M)
        left = ops.take(
            ops.convert_to_tensor(self._left_edges.astype(dtype)), index
        )
        return ops.sort(left, axis=-1)

    def old_part(self, coefficients, positions, constants, basis_values):
        """``G_oldᵀ X_old`` of a sticky write (paper eq. 12, old rows).

        Args:
            coefficients: ``(B, N, e)`` the old memory.
            positions: ``(B, M)`` sample positions, same dtype.
            constants: dict with ``"S"`` ``(M, N)`` and ``"G_old"``
                ``(M, N)`` tensors of that dtype.
            basis_values: ``(centers, widths)`` tensors, for ψ.

        Returns:
            ``(B, N, e)``.
        """
        if self.update == "bounded":
            return basis.bounded_old_part(
                coefficients,
                positions,
                constants["S"],
                constants["G_old"],
                self.max_gain,
            )
        psi = basis.psi(positions, *basis_values)  # (B, M, N)
        old = basis.evaluate(psi, coefficients)  # X_old = x̄(t̃)  (B, M, e)
        return basis.fit(constants["G_old"], old)

    def focus_growth(self, old_design, centers, widths, min_variance):
        """How much one exact write can grow old content under a steady
        read focus: `basis.sticky_focus_growth` for this sampler (NumPy;
        cached per geometry)."""
        old_design = np.asarray(old_design, dtype=np.float64)
        key = (
            hashlib.sha1(old_design.tobytes()).hexdigest(),
            old_design.shape,
            np.asarray(widths, dtype=np.float64).tobytes(),
            self.num_bins,
            self.mode,
            float(min_variance),
        )
        if key not in _FOCUS_GROWTH:
            _FOCUS_GROWTH[key] = basis.sticky_focus_growth(
                old_design,
                centers,
                widths,
                self.num_bins,
                self.mode,
                min_variance,
            )
        return _FOCUS_GROWTH[key]

    def check_growth(self, growth, context):
        """Warns when the exact update can grow old content (``growth``
        from `focus_growth`) by more than 1% per write."""
        if self.update != "exact" or growth <= _GROWTH_TOLERANCE:
            return
        warnings.warn(
            f"StickyMemorySampler '{self.name}': with update='exact' (the "
            f"authors' sticky write), each write of {context} multiplies old "
            f"memory content by {growth:.2f} while the reads keep attending "
            "the worst place, so a long stream can overflow. Pass "
            "update='bounded' to StickyMemorySampler: writes then read the "
            "old signal between its uniform samples and cannot grow it "
            "(docs/sticky_memories.md). Received: update='exact', "
            f"mode={self.mode!r}, num_bins={self.num_bins}",
            stacklevel=4,
        )

    def compute_output_shape(self, mu_shape, variance_shape=None, mask=None):
        return (mu_shape[0], self.num_bins)

    def get_config(self):
        config = super().get_config()
        seed = self.seed
        if isinstance(seed, keras.random.SeedGenerator):
            seed = keras.saving.serialize_keras_object(seed)
        config.update(
            {
                "num_bins": self.num_bins,
                "mode": self.mode,
                "seed": seed,
                "update": self.update,
                "max_gain": self.max_gain,
            }
        )
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        if isinstance(config.get("seed"), dict):
            config["seed"] = keras.saving.deserialize_keras_object(
                config["seed"]
            )
        return cls(**config)


def normalize(masses):
    """Rows of ``masses`` scaled to sum to 1 (all-zero rows stay zero)."""
    total = ops.sum(masses, axis=-1, keepdims=True)
    return masses / basis.floor(total, 1e-30)


def _math_dtype(x):
    """float64 stays float64; anything else is computed in float32."""
    dtype = keras.backend.standardize_dtype(getattr(x, "dtype", "float32"))
    return "float64" if dtype == "float64" else "float32"
