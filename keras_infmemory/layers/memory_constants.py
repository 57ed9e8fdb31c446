"""The constant matrices of one `ContinuousLTM`, built once per length.

The ridge matrices ``G_L``, ``G_inf`` and the uniform sample matrix ``S``
depend only on the geometry (``N``, widths, ``λ``, ``τ``, ``M``) and the
segment length ``L``. They are built in float64 NumPy (docs/math.md §2)
the first time a length is seen and cast to the layer's math dtype at use.
"""

import warnings

import keras
import numpy as np
from keras import ops

from keras_infmemory import basis


class MemoryConstants:
    """Float64 constants per segment length, and their backend tensors.

    Args:
        num_basis: int, ``N``.
        basis_widths: tuple of floats, the Gaussian widths.
        ridge_penalty: float, ``λ``.
        tau: float, ``τ``.
        samples: int, ``M``, samples of the old signal per write.
        name: the layer's name, for warnings.
    """

    def __init__(
        self, num_basis, basis_widths, ridge_penalty, tau, samples, name
    ):
        self.geometry = (num_basis, basis_widths, ridge_penalty, tau, samples)
        self.name = name  # the layer's, for warnings
        self.centers, self.widths = basis.basis_parameters(
            num_basis, basis_widths
        )  # float64 (N,)
        self.grid_arrays = basis.basis_grid(num_basis, basis_widths)
        self.by_length = {}  # length -> dict of float64 arrays
        self.update_growth = {}  # length -> spectral radius of G_oldᵀ S
        self._tensors = {}  # (length, name, dtype) -> tensor (torch only)

    def get(self, length):
        """The float64 arrays for ``length``: ``G_L`` ``(L, N)``, ``G_old``
        ``(M, N)`` and ``G_new`` ``(L, N)`` (the two row blocks of
        ``G_inf``), ``S`` ``(M, N)`` and ``transition = G_oldᵀ S``
        ``(N, N)``, which turns a uniform-sample update into one matmul."""
        if length not in self.by_length:
            c = basis.memory_constants(length, *self.geometry)
            self.install(length, c["G_L"], c["G_inf"], c["S"])
        return self.by_length[length]

    def install(self, length, G_L, G_inf, S):
        """Installs constant matrices (float64) for ``length``."""
        m = self.geometry[4]
        G_old, G_new = G_inf[:m], G_inf[m:]
        self.by_length[length] = {
            name: np.asarray(value, dtype="float64")
            for name, value in {
                "G_L": G_L,
                "G_old": G_old,
                "G_new": G_new,
                "S": S,
                "transition": G_old.T @ S,
            }.items()
        }
        self._tensors = {
            k: v for k, v in self._tensors.items() if k[0] != length
        }
        growth = basis.update_growth(self.by_length[length]["transition"])
        self.update_growth[length] = growth
        if growth > 1.0:
            num_basis, widths, _, tau, num_samples = self.geometry
            warnings.warn(
                f"ContinuousLTM '{self.name}': with num_basis={num_basis}, "
                f"basis_widths={widths}, num_samples={num_samples}, "
                f"tau={tau} and segments of {length} tokens, each write "
                f"amplifies old memory content by about {growth:.2f}x "
                "(spectral radius of the update), so a long stream "
                "overflows. Use more num_samples, wider basis_widths or a "
                "smaller tau.",
                stacklevel=4,
            )

    def tensor(self, array, dtype, key=None):
        """``array`` as a backend tensor of ``dtype``.

        Converted per call except on torch, where eager calls would repeat
        the host-to-device copy: there it is cached by ``key``. Under jit /
        tf.function a per-call conversion is a folded constant; caching it
        would leak a tracer or a graph tensor.
        """
        if key is None or keras.backend.backend() != "torch":
            return ops.convert_to_tensor(array.astype(dtype))
        key = key + (dtype,)
        if key not in self._tensors:
            tensor = ops.convert_to_tensor(array.astype(dtype))
            if getattr(tensor, "is_meta", False):
                return tensor  # symbolic build: a shape, not the values
            self._tensors[key] = tensor
        return self._tensors[key]

    def matrix(self, length, name, dtype):
        """One constant matrix of ``length`` as a tensor of ``dtype``."""
        return self.tensor(self.get(length)[name], dtype, (length, name))

    def basis(self, dtype):
        """The basis centres and widths ``(N,)`` as tensors of ``dtype``."""
        return (
            self.tensor(self.centers, dtype, ("basis", "centers")),
            self.tensor(self.widths, dtype, ("basis", "widths")),
        )

    def grid(self, dtype):
        """The basis grid, distinct centres ``(C,)`` and widths ``(K,)``."""
        centers, widths = self.grid_arrays
        return (
            self.tensor(centers, dtype, ("grid", "centers")),
            self.tensor(widths, dtype, ("grid", "widths")),
        )

    def uniform_positions(self, dtype):
        """``m/M``, m = 1..M: where the old signal is read by default."""
        positions = basis.uniform_sample_positions(self.geometry[4])
        return self.tensor(positions, dtype, ("basis", "uniform"))
