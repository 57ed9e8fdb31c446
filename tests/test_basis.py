"""The pure math: fit quality (docs/math.md §2), closed forms, bin masses."""

import math

import keras
import numpy as np
import pytest
from scipy import integrate, stats

from keras_infmemory import basis
from tests.testing import to_numpy, value_and_grad


def fit_error(length, num_basis, ridge, widths, signal):
    constants = basis.memory_constants(
        length, num_basis, widths, ridge, 0.5, 16
    )
    t = (np.arange(1, length + 1) - 0.5) / length  # midpoints
    x = signal(t)  # (L, channels)
    psi = basis.psi_numpy(t, constants["centers"], constants["widths"])
    rebuilt = psi @ (constants["G_L"].T @ x)
    return np.linalg.norm(rebuilt - x) / np.linalg.norm(x)


@pytest.mark.parametrize(
    "length, ridge, widths, expected_sine, expected_noise",
    [
        (1024, 1.0, (0.01, 0.05), 0.0015, 0.94),  # sorting configuration
        (512, 0.5, (0.005, 0.01), 0.0005, 0.74),  # GPT-2 configuration
    ],
)
def test_rbf_fit_matches_spec_figures(
    length, ridge, widths, expected_sine, expected_noise
):
    sine = fit_error(
        length, 512, ridge, widths, lambda t: np.sin(2 * np.pi * 3 * t)[:, None]
    )
    assert abs(sine - expected_sine) / expected_sine < 0.10
    rng = np.random.default_rng(0)
    noise = fit_error(
        length, 512, ridge, widths, lambda t: rng.normal(size=(len(t), 64))
    )
    assert abs(noise - expected_noise) / expected_noise < 0.10


def test_basis_order_is_width_fastest():
    centers, widths = basis.basis_parameters(6, (0.1, 0.2))
    np.testing.assert_allclose(centers, [0, 0, 0.5, 0.5, 1, 1])
    np.testing.assert_allclose(widths, [0.1, 0.2] * 3)


def test_design_positions():
    positions, keep = basis.segment_design(4)
    np.testing.assert_allclose(
        positions, [-0.375, -0.125, 0.125, 0.375, 0.625, 0.875, 1.125, 1.375]
    )
    np.testing.assert_array_equal(keep, [2, 3, 4, 5])
    positions, keep = basis.update_design(4, 4, 0.5)
    data = positions[keep]
    np.testing.assert_allclose(
        data, [0.125, 0.25, 0.375, 0.5, 0.625, 0.75, 0.875, 1.0]
    )
    assert np.all(np.delete(positions, keep) < 0) or np.all(
        (np.delete(positions, keep) < 0) | (np.delete(positions, keep) > 1)
    )


def test_gaussian_expectation_matches_quadrature():
    centers, widths = basis.basis_parameters(8, (0.01, 0.05))
    grid = basis.basis_grid(8, (0.01, 0.05))
    mu = np.array([0.1, 0.5, 0.93, 1.2])
    variance = np.array([1e-4, 2e-3, 0.04, 0.3])
    r = to_numpy(
        basis.gaussian_expectation(
            keras.ops.convert_to_tensor(mu, "float32"),
            keras.ops.convert_to_tensor(variance, "float32"),
            grid[0].astype("float32"),
            grid[1].astype("float32"),
        )
    )  # (4, K, C) on the grid
    r = np.swapaxes(r, -1, -2).reshape(4, 8)  # the basis order
    for i in range(len(mu)):
        for j in range(len(centers)):

            def integrand(t, i=i, j=j):
                return stats.norm.pdf(
                    t, centers[j], widths[j]
                ) * stats.norm.pdf(t, mu[i], math.sqrt(variance[i]))

            lo = min(mu[i], centers[j]) - 10
            hi = max(mu[i], centers[j]) + 10
            value, _ = integrate.quad(
                integrand, lo, hi, points=[mu[i], centers[j]], limit=500
            )
            np.testing.assert_allclose(r[i, j], value, rtol=1e-4, atol=1e-6)


def test_expected_values_recomputed_in_the_backward_are_the_same():
    # ``Σ_n r_n V_n`` with ``r`` recomputed in the backward (remat) gives
    # the forward and the gradients of the plain composition.
    rng = np.random.default_rng(0)
    centers, widths = basis.basis_grid(8, (0.01, 0.05))
    centers, widths = centers.astype("float32"), widths.astype("float32")
    mu = rng.uniform(0.05, 0.95, (2, 3, 5)).astype("float32")  # (B, H, Lq)
    variance = rng.uniform(1e-4, 0.05, (2, 3, 5)).astype("float32")
    values = rng.normal(size=(2, 3, 4, 8)).astype("float32")  # (B, H, d, N)
    weights = rng.normal(size=(2, 5, 3, 4)).astype("float32")  # (B,Lq,H,d)
    weights = keras.ops.convert_to_tensor(weights)

    def composed(mu, variance, values):
        r = basis.gaussian_expectation(mu, variance, centers, widths)
        r = keras.ops.reshape(r, (2, 3, 5, 8))
        return keras.ops.einsum("bhqn,bhdn->bqhd", r, values)

    def loss(read):
        return lambda *args: keras.ops.sum(read(*args) * weights)

    def fused(remat):
        return lambda mu, variance, values: basis.expected_values(
            mu, variance, centers, widths, values, remat=remat
        )

    expected, expected_grads = value_and_grad(
        loss(composed), mu, variance, values
    )
    assert all(np.any(to_numpy(g) != 0) for g in expected_grads)
    for remat in (True, False):
        value, grads = value_and_grad(loss(fused(remat)), mu, variance, values)
        np.testing.assert_allclose(
            to_numpy(keras.ops.stop_gradient(value)),
            to_numpy(keras.ops.stop_gradient(expected)),
            rtol=1e-6,
        )
        for grad, want in zip(grads, expected_grads, strict=True):
            np.testing.assert_allclose(
                to_numpy(grad), to_numpy(want), rtol=1e-5, atol=1e-6
            )


def test_bin_masses_match_scipy():
    mu = np.array([[0.3, 0.8]], "float32")
    variance = np.array([[0.01, 0.002]], "float32")
    edges = np.linspace(0, 1, 9)
    masses = to_numpy(basis.bin_masses(mu, variance, edges.astype("float32")))
    for k in range(2):
        cdf = stats.norm.cdf(edges, mu[0, k], math.sqrt(variance[0, k]))
        np.testing.assert_allclose(masses[0, k], np.diff(cdf), atol=2e-7)


def test_kl_to_prior():
    mu = np.array([0.2, 0.7], "float32")
    variance = np.array([0.0025, 0.1], "float32")
    kl = to_numpy(basis.kl_to_prior(mu, variance, 0.05))
    ratio = variance.astype(np.float64) / 0.05**2
    expected = 0.5 * (ratio - np.log(ratio) - 1)
    np.testing.assert_allclose(kl, expected, rtol=1e-5, atol=1e-7)
    assert abs(kl[0]) < 1e-7  # σ = σ₀: no divergence
    kl_mean = to_numpy(basis.kl_to_prior(mu, variance, 0.05, mu_0=-1.0))
    np.testing.assert_allclose(
        kl_mean - kl, 0.5 * (mu + 1.0) ** 2 / 0.05**2, rtol=1e-5
    )


def test_quantile_positions():
    uniform = np.full((1, 4), 0.25, "float32")
    positions = to_numpy(basis.quantile_positions(uniform, 8))
    np.testing.assert_allclose(
        positions[0], (np.arange(8) + 0.5) / 8, atol=1e-6
    )
    peaked = np.array([[0.0, 0.75, 0.25, 0.0]], "float32")
    positions = to_numpy(basis.quantile_positions(peaked, 8))[0]
    assert np.all(np.diff(positions) > 0)
    counts = np.histogram(positions, bins=np.linspace(0, 1, 5))[0]
    np.testing.assert_array_equal(counts, [0, 6, 2, 0])  # M·p per bin
