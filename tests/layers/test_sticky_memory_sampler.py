"""StickyMemorySampler: histogram, both placements, seeding, config."""

import keras
import numpy as np
import pytest

import keras_infmemory as ki
from tests.testing import keras_hub_checks, to_numpy


def peaked_inputs(batch=2, k=12):
    rng = np.random.default_rng(0)
    mu = np.clip(rng.normal(0.3, 0.05, (batch, k)), 0, 1).astype("float32")
    variance = np.full((batch, k), 4e-4, "float32")
    return mu, variance


def test_histogram_is_normalised_and_masked():
    sampler = ki.StickyMemorySampler(num_bins=16)
    mu, variance = peaked_inputs()
    hist = to_numpy(sampler(mu, variance))
    assert hist.shape == (2, 16)
    np.testing.assert_allclose(hist.sum(-1), 1.0, atol=1e-6)
    assert hist[:, 4].min() > hist[:, 12].max()  # mass sits around 0.3
    mask = np.zeros_like(mu, bool)
    mask[:, 0] = True
    masked = to_numpy(sampler.histogram(mu, variance, mask))
    single = to_numpy(sampler.histogram(mu[:, :1], variance[:, :1]))
    np.testing.assert_allclose(masked, single, atol=1e-6)
    assert sampler.compute_output_shape((2, 12)) == (2, 16)


def test_categorical_positions_are_sorted_left_edges_and_seeded():
    mu, variance = peaked_inputs()
    draws = []
    for _ in range(2):
        sampler = ki.StickyMemorySampler(num_bins=16, seed=42)
        hist = sampler.histogram(mu, variance)
        draws.append(to_numpy(sampler.sample_positions(hist, 64)))
    positions = draws[0]
    assert positions.shape == (2, 64)
    np.testing.assert_array_equal(draws[0], draws[1])  # same seed
    assert np.all(np.diff(positions, axis=-1) >= 0)
    np.testing.assert_allclose(positions * 16, np.round(positions * 16))
    assert np.all((positions >= 0) & (positions < 1))
    # Most draws land where the queries looked.
    assert np.mean(np.abs(positions - 0.3) < 0.15) > 0.9
    sampler = ki.StickyMemorySampler(num_bins=16, seed=42)
    first = to_numpy(sampler.sample_positions(hist, 64))
    second = to_numpy(sampler.sample_positions(hist, 64))
    assert not np.array_equal(first, second)  # the generator advances


def test_quantile_positions_follow_the_histogram():
    sampler = ki.StickyMemorySampler(num_bins=8, mode="quantile")
    hist = np.array([[0, 0, 0.5, 0.25, 0.25, 0, 0, 0]], "float32")
    positions = to_numpy(sampler.sample_positions(hist, 16))[0]
    assert np.all(np.diff(positions) > 0)  # no duplicates
    counts = np.histogram(positions, bins=np.linspace(0, 1, 9))[0]
    np.testing.assert_array_equal(counts, [0, 0, 8, 4, 4, 0, 0, 0])


def test_config_round_trip():
    sampler = ki.StickyMemorySampler(num_bins=64, mode="quantile", seed=3)
    keras_hub_checks().run_serialization_test(sampler)
    generator = ki.StickyMemorySampler(seed=keras.random.SeedGenerator(5))
    restored = ki.StickyMemorySampler.from_config(generator.get_config())
    assert isinstance(restored.seed_generator, keras.random.SeedGenerator)


@pytest.mark.parametrize(
    "kwargs, name",
    [
        (dict(num_bins=0), "num_bins"),
        (dict(num_bins=2.5), "num_bins"),
        (dict(mode="random"), "mode"),
    ],
)
def test_bad_arguments(kwargs, name):
    with pytest.raises(ValueError, match=f"Received: {name}="):
        ki.StickyMemorySampler(**kwargs)


def test_bad_inputs():
    sampler = ki.StickyMemorySampler()
    with pytest.raises(ValueError, match="Received: mu.shape"):
        sampler.histogram(np.zeros(3, "float32"), np.ones(3, "float32"))
    with pytest.raises(ValueError, match="Received: histogram.shape"):
        sampler.sample_positions(np.ones(128, "float32"), 4)
