"""An independent float64 NumPy ∞-former memory (docs/math.md §2–§5).

It follows the equations literally (keys, scores over N, full V), unlike the
layer, which takes algebraic shortcuts; agreement checks both.
"""

import math

import numpy as np

from keras_infmemory import basis


class ReferenceLTM:
    def __init__(
        self,
        weights,
        num_heads,
        key_dim,
        num_basis,
        basis_widths,
        ridge_penalty,
        tau,
        num_samples,
        min_variance,
        gate,
    ):
        self.w = {k: np.asarray(v, np.float64) for k, v in weights.items()}
        self.h, self.d = num_heads, key_dim
        self.m = num_samples
        self.min_variance = min_variance
        self.gate = gate
        self.centers, self.widths = basis.basis_parameters(
            num_basis, basis_widths
        )
        self.args = (num_basis, basis_widths, ridge_penalty, tau, num_samples)

    def psi(self, t):
        t = np.asarray(t, np.float64)[:, None]
        z = (t - self.centers) / self.widths
        return np.exp(-0.5 * z**2) / (self.widths * math.sqrt(2 * math.pi))

    def gated(self, x):  # x (L, e); Conv1d(e, e, 3, padding=1) cross-corr.
        if not self.gate:
            return x
        kernel, bias = self.w["gate_kernel"], self.w["gate_bias"]  # (3,e,e)
        padded = np.pad(x, ((1, 1), (0, 0)))
        logits = bias + sum(
            padded[k : k + len(x)] @ kernel[k] for k in range(3)
        )
        return x / (1 + np.exp(-logits)) * 1.0

    def write(self, x, previous, positions=None):
        """One row: x (L, e), previous (N, e) or None."""
        c = basis.memory_constants(len(x), *self.args)
        x = self.gated(x)
        if previous is None:
            return c["G_L"].T @ x
        if positions is None:
            positions = np.arange(1, self.m + 1) / self.m
        old = self.psi(positions) @ previous  # X_old (M, e)
        return c["G_inf"].T @ np.concatenate([old, x])

    def read(self, q, coefficients):
        """One row: q (Lq, H, d), coefficients (N, e) -> out, mu, var."""
        keys = coefficients @ self.w["key_kernel"]  # K (N, e)
        values = coefficients @ self.w["value_kernel"]  # V (N, e)
        outs, mus, variances = [], [], []
        for h in range(self.h):
            cols = slice(h * self.d, (h + 1) * self.d)
            scores = q[:, h] @ keys[:, cols].T / math.sqrt(self.d)  # (Lq, N)
            mu = 1 / (1 + np.exp(-(scores @ self.w["mu_kernel"])))
            variance = np.log1p(np.exp(scores @ self.w["sigma_kernel"]))
            variance = np.maximum(variance, self.min_variance)
            total = variance[:, None] + self.widths**2  # (Lq, N)
            r = np.exp(-0.5 * (mu[:, None] - self.centers) ** 2 / total)
            r /= np.sqrt(2 * math.pi * total)
            outs.append(r @ values[:, cols])
            mus.append(mu)
            variances.append(variance)
        out = np.concatenate(outs, axis=-1) @ self.w["output_kernel"]
        return out, np.stack(mus), np.stack(variances)
