"""ContinuousLTM's read-density options (docs/math.md §3.3):
``initial_variance`` and ``density_scale``, both off by default."""

import keras
import numpy as np
import pytest

import keras_infmemory as ki
from keras_infmemory.models import InfFormerLM
from tests.testing import tiny_inf_former_lm, to_numpy

SMALL = dict(
    num_heads=2,
    key_dim=4,
    num_basis=16,
    num_samples=8,
    basis_widths=(0.05, 0.1),
)


def layer(**overrides):
    return ki.ContinuousLTM(**{**SMALL, **overrides})


def written_state(ltm, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(2, 12, 8)).astype("float32")
    return ltm.write(x, ltm.get_initial_state(2))


def query(seed=1):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(2, 5, 2, 4)).astype("float32")


def test_defaults_are_the_authors_form():
    ltm = layer()
    assert ltm.initial_variance is None and ltm.density_scale == 1.0
    # With zero logits (an empty memory) the authors' σ² is softplus(0).
    mu, variance = ltm.density(query(), ltm.get_initial_state(2))
    np.testing.assert_allclose(to_numpy(mu), 0.5, atol=1e-7)
    np.testing.assert_allclose(to_numpy(variance), np.log(2.0), rtol=1e-6)


@pytest.mark.parametrize("value", [0.01, 0.0025, 2.0])
def test_initial_variance_is_the_variance_at_zero_logit(value):
    ltm = layer(initial_variance=value)
    mu, variance = ltm.density(query(), ltm.get_initial_state(2))
    np.testing.assert_allclose(to_numpy(mu), 0.5, atol=1e-7)
    np.testing.assert_allclose(to_numpy(variance), value, atol=1e-6)


def test_options_transform_the_default_logits():
    """Same weights, same memory: the logits of the default layer,
    recovered from its (μ, σ²), become sigmoid(c·a) and
    softplus(c·b + log(eᵛ − 1))."""
    reference = layer(min_variance=1e-8)
    rng = np.random.default_rng(2)
    for weight in reference.weights:  # logits of order 1
        weight.assign(rng.normal(0, 0.5, weight.shape).astype("float32"))
    state = written_state(reference)
    mu, variance = (
        to_numpy(t).astype("float64") for t in reference.density(query(), state)
    )
    a = np.log(mu / (1 - mu))
    b = np.log(np.expm1(variance))
    assert np.std(a) > 0.1 and np.std(b) > 0.1  # not a trivial check
    scale, value = 3.0, 0.01
    ltm = layer(min_variance=1e-8, initial_variance=value, density_scale=scale)
    ltm.set_weights(reference.get_weights())
    mu2, variance2 = (to_numpy(t) for t in ltm.density(query(), state))
    expected_mu = 1 / (1 + np.exp(-scale * a))
    expected_variance = np.log1p(np.exp(scale * b + np.log(np.expm1(value))))
    np.testing.assert_allclose(mu2, expected_mu, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(
        variance2, expected_variance, rtol=1e-3, atol=1e-7
    )


def test_a_fresh_layer_reads_focused():
    """A fresh layer's logits are near zero, so its reads start at about
    the requested variance instead of ln 2."""
    ltm = layer(initial_variance=0.01)
    _, variance = ltm.density(query(), written_state(ltm))
    np.testing.assert_allclose(to_numpy(variance), 0.01, rtol=0.5)
    default = layer()
    _, variance = default.density(query(), written_state(default))
    assert np.min(to_numpy(variance)) > 0.3


def test_config_round_trip():
    ltm = layer(initial_variance=0.02, density_scale=4.0)
    config = ltm.get_config()
    assert config["initial_variance"] == 0.02
    assert config["density_scale"] == 4.0
    clone = ki.ContinuousLTM.from_config(config)
    assert clone.get_config() == config
    clone.set_weights(ltm.get_weights())
    state = written_state(ltm)
    np.testing.assert_array_equal(
        to_numpy(clone.read(query(), state)), to_numpy(ltm.read(query(), state))
    )
    serialized = keras.saving.serialize_keras_object(ltm)
    restored = keras.saving.deserialize_keras_object(serialized)
    assert restored.initial_variance == 0.02 and restored.density_scale == 4.0


def test_passed_through_the_model_memory_options():
    options = {
        "num_basis": 16,
        "num_samples": 16,
        "basis_widths": (0.05, 0.1),
        "initial_variance": 0.01,
        "density_scale": 5.0,
    }
    model = tiny_inf_former_lm(options)
    ltm = model.blocks[0].ltm
    assert ltm.initial_variance == 0.01 and ltm.density_scale == 5.0
    clone = InfFormerLM.from_config(model.get_config())
    assert clone.blocks[0].ltm.get_config() == ltm.get_config()


@pytest.mark.parametrize(
    "kwargs, name",
    [
        (dict(initial_variance=0.0), "initial_variance"),
        (dict(initial_variance=-0.1), "initial_variance"),
        (dict(initial_variance=float("nan")), "initial_variance"),
        (dict(initial_variance=True), "initial_variance"),
        (dict(initial_variance=1e-4), "initial_variance"),  # = min_variance
        (dict(density_scale=0.0), "density_scale"),
        (dict(density_scale=-2.0), "density_scale"),
        (dict(density_scale=float("inf")), "density_scale"),
        (dict(density_scale="big"), "density_scale"),
    ],
)
def test_bad_arguments(kwargs, name):
    with pytest.raises(ValueError, match=f"Received: {name}="):
        layer(**kwargs)
