"""ContinuousLTM: reference agreement, gradients, compilation, saving."""

import os

import keras
import numpy as np
import pytest
from keras import ops

import keras_infmemory as ki
from tests.numpy_reference import ReferenceLTM
from tests.testing import (
    float64_available,
    keras_hub_checks,
    max_rel_error,
    to_numpy,
    value_and_grad,
    variable_grads,
)

SMALL = dict(num_heads=2, key_dim=4, num_basis=16, num_samples=8)


def small_layer(**overrides):
    config = dict(SMALL, basis_widths=(0.05, 0.1), ridge_penalty=0.5)
    config.update(overrides)
    return ki.ContinuousLTM(**config)


def layer_weights(layer):
    return {
        name: to_numpy(getattr(layer, name))
        for name in ki.ContinuousLTM.WEIGHT_NAMES
        if hasattr(layer, name)
    }


def randomize(layer, seed=0):
    rng = np.random.default_rng(seed)
    for weight in layer.weights:
        scale = (
            1.0 if len(weight.shape) == 1 else 1.0 / np.sqrt(weight.shape[-2])
        )
        weight.assign(rng.normal(0, scale, weight.shape).astype(weight.dtype))


def inputs(batch=2, length=12, query_length=5, seed=1, heads=2, key_dim=4):
    rng = np.random.default_rng(seed)
    e = heads * key_dim
    t = np.arange(length)[None, :, None] / length
    x = np.sin(2 * np.pi * (t + rng.uniform(size=(batch, 1, e))))
    x = x + 0.1 * rng.normal(size=(batch, length, e))
    q = rng.normal(size=(batch, query_length, heads, key_dim))
    return x.astype("float32"), q.astype("float32")


def test_weights_and_state_shapes():
    layer = small_layer()
    assert len(layer.trainable_weights) == 7  # K, V, O, w_μ, w_σ, gate W, b
    assert len(small_layer(memory_gate=None).trainable_weights) == 5
    state = layer.get_initial_state(3)
    assert tuple(state["coefficients"].shape) == (3, 16, 8)
    assert tuple(state["has_memory"].shape) == (3,)
    sticky = small_layer(sticky=ki.StickyMemorySampler(num_bins=32))
    assert tuple(sticky.get_initial_state(3)["histogram"].shape) == (3, 32)


@pytest.mark.parametrize("gate", ["conv", None])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_matches_numpy_reference(gate, dtype):
    """Three writes and reads against a literal float64 implementation."""
    if dtype == "float64" and not float64_available():
        pytest.skip("float64 needs jax_enable_x64 on JAX")
    layer = small_layer(memory_gate=gate, dtype=dtype)
    randomize(layer)
    reference = ReferenceLTM(
        layer_weights(layer), 2, 4, 16, (0.05, 0.1), 0.5, 0.5, 8, 1e-4, gate
    )
    state = layer.get_initial_state(2)
    previous = [None, None]
    tol = 1e-4 if dtype == "float32" else 1e-10
    for step in range(3):
        x, q = inputs(seed=step)
        out, state = layer(q, x, state)
        for row in range(2):
            previous[row] = reference.write(x[row], previous[row])
            ref_out, ref_mu, ref_var = reference.read(q[row], previous[row])
            got = to_numpy(state["coefficients"])[row]
            assert max_rel_error(got, previous[row]) < tol
            assert max_rel_error(to_numpy(out)[row], ref_out) < tol


def test_decoding_path_matches_prefill_path():
    """The read picks (rᵀB)W_V for few queries and V = BW_V otherwise; both
    are the same math."""
    layer = small_layer(num_basis=64, num_heads=4, key_dim=8)
    randomize(layer)
    x, q = inputs(length=32, query_length=64, heads=4, key_dim=8)
    state = layer.write(x, layer.get_initial_state(2))
    many = to_numpy(layer.read(q, state))
    one = np.concatenate(
        [to_numpy(layer.read(q[:, i : i + 1], state)) for i in range(3)], 1
    )
    np.testing.assert_allclose(one, many[:, :3], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("sticky", [False, True])
def test_read_from_cache_matches_read(sticky):
    """`read_cache` (decoding: summary and values once per write) gives the
    read of the state itself, histogram included."""
    sampler = ki.StickyMemorySampler(num_bins=8) if sticky else None
    layer = small_layer(sticky=sampler)
    randomize(layer)
    x, q = inputs()
    state = layer.write(x, layer.get_initial_state(2))
    cache = layer.read_cache(state)
    assert tuple(cache["summary"].shape) == (2, 2, 2, 4)
    assert tuple(cache["values"].shape) == (2, 2, 4, 16)  # (B, H, d, N)
    plain, plain_state = layer.read(q[:, :1], state, return_state=True)
    cached, cached_state = layer.read(
        q[:, :1], state, return_state=True, cache=cache
    )
    np.testing.assert_allclose(
        to_numpy(cached), to_numpy(plain), rtol=1e-5, atol=1e-6
    )
    for key in plain_state:
        np.testing.assert_allclose(
            to_numpy(cached_state[key]), to_numpy(plain_state[key]), atol=1e-6
        )
    with pytest.raises(ValueError, match="state"):
        layer.read_cache({"coefficients": state["coefficients"]})


def test_sticky_quantile_matches_reference_positions():
    """The authors' sticky write (``update="exact"``) evaluates the old
    signal at the sampler's positions."""
    sampler = ki.StickyMemorySampler(
        num_bins=16, mode="quantile", update="exact"
    )
    layer = small_layer(sticky=sampler)
    randomize(layer)
    reference = ReferenceLTM(
        layer_weights(layer), 2, 4, 16, (0.05, 0.1), 0.5, 0.5, 8, 1e-4, "conv"
    )
    x0, q0 = inputs(seed=0)
    x1, _ = inputs(seed=1)
    _, state = layer(q0, x0, state=layer.get_initial_state(2))
    hist = to_numpy(state["histogram"])
    positions = to_numpy(
        sampler.sample_positions(hist / hist.sum(-1, keepdims=True), 8)
    )
    new = to_numpy(layer.write(x1, state)["coefficients"])
    for row in range(2):
        b0 = reference.write(x0[row], None)
        expected = reference.write(x1[row], b0, positions=positions[row])
        assert max_rel_error(new[row], expected) < 1e-4
    # Without any read since the last write, the uniform positions m/M.
    fresh = layer.write(x0, layer.get_initial_state(2))
    uniform = layer.write(x1, fresh)
    explicit = layer.write(
        x1, fresh, sample_positions=np.tile(np.arange(1, 9) / 8, (2, 1))
    )
    np.testing.assert_allclose(
        to_numpy(uniform["coefficients"]),
        to_numpy(explicit["coefficients"]),
        rtol=1e-5,
        atol=1e-6,
    )


def test_per_row_reset_leaves_other_rows_untouched():
    layer = small_layer()
    randomize(layer)
    x, q = inputs(batch=3)
    state = layer.get_initial_state(3)
    for step in range(2):
        _, state = layer(q, inputs(batch=3, seed=step)[0], state)
    reset = layer.reset_rows(state, np.array([True, False, False]))
    out_reset, state_reset = layer(q, x, reset)
    out_kept, state_kept = layer(q, x, state)
    out_fresh, _ = layer(q[:1], x[:1], layer.get_initial_state(1))
    np.testing.assert_array_equal(
        to_numpy(out_reset)[1:], to_numpy(out_kept)[1:]
    )
    np.testing.assert_array_equal(
        to_numpy(state_reset["coefficients"])[1:],
        to_numpy(state_kept["coefficients"])[1:],
    )
    np.testing.assert_allclose(
        to_numpy(out_reset)[:1], to_numpy(out_fresh), rtol=1e-5, atol=1e-6
    )


def test_gradients_match_finite_differences():
    dtype = "float64" if float64_available() else "float32"
    layer = small_layer(dtype=dtype)
    randomize(layer)
    x, q = inputs()
    x, q = x.astype(dtype), q.astype(dtype)
    state = layer.write(
        inputs(seed=5)[0].astype(dtype), layer.get_initial_state(2)
    )
    weights = np.random.default_rng(3).normal(size=(2, 5, 8)).astype(dtype)
    weights = ops.convert_to_tensor(weights)

    def loss(q, x):
        out, _ = layer(q, x, state)
        return ops.sum(out * weights)

    _, (grad_q, grad_x) = value_and_grad(loss, q, x)
    rng = np.random.default_rng(4)
    eps = 1e-6 if dtype == "float64" else 1e-2
    tol = 1e-6 if dtype == "float64" else 3e-2
    for arg, grad in ((0, grad_q), (1, grad_x)):
        args = [q, x]
        direction = rng.normal(size=args[arg].shape).astype(dtype)
        plus, minus = list(args), list(args)
        plus[arg] = args[arg] + eps * direction
        minus[arg] = args[arg] - eps * direction
        numeric = (to_numpy(loss(*plus)) - to_numpy(loss(*minus))) / (2 * eps)
        analytic = np.sum(to_numpy(grad) * direction)
        assert abs(numeric - analytic) <= tol * max(1.0, abs(numeric))


def test_gradients_reach_parameters_not_the_stored_memory():
    layer = small_layer()
    randomize(layer)
    x, q = inputs()
    _, state = layer(q, x, layer.get_initial_state(2))

    def loss():
        out, _ = layer(q, inputs(seed=2)[0], state)
        return ops.sum(ops.square(out))

    grads = variable_grads(loss, layer.trainable_weights)
    for variable, grad in zip(layer.trainable_weights, grads, strict=True):
        assert grad is not None, variable.name
        assert np.any(to_numpy(grad) != 0), variable.name

    # The incoming state is stop-gradient: d out / d B_prev = 0.
    def through_state(coefficients):
        carried = dict(state, coefficients=coefficients)
        out, _ = layer(q, x, carried)
        return ops.sum(out)

    _, (grad_b,) = value_and_grad(
        through_state, to_numpy(state["coefficients"]).astype("float32")
    )
    assert grad_b is None or not np.any(to_numpy(grad_b))


def test_kl_loss_added_once_per_read():
    layer = small_layer(kl_weight=0.5)
    x, q = inputs()
    state = layer.write(x, layer.get_initial_state(2))
    mu, variance = layer.density(q, state)
    layer.read(q, state)
    ratio = to_numpy(variance) / 0.05**2
    expected = 0.5 * np.mean(0.5 * (ratio - np.log(ratio) - 1))
    assert len(layer.losses) == 1
    np.testing.assert_allclose(to_numpy(layer.losses[0]), expected, rtol=1e-5)
    assert small_layer(kl_weight=0.0).losses == []


class MemoryModel(keras.Model):
    """Splits (B, S·L, e) into S segments and streams them through an LTM."""

    def __init__(self, segments=3, **kwargs):
        super().__init__(**kwargs)
        self.segments = segments
        self.query = keras.layers.Dense(8)
        self.ltm = small_layer(sticky=ki.StickyMemorySampler(32, "quantile"))

    def call(self, x):
        length = x.shape[1] // self.segments
        state = self.ltm.get_initial_state(ops.shape(x)[0])
        outputs = []
        for s in range(self.segments):
            segment = x[:, s * length : (s + 1) * length]
            q = ops.reshape(self.query(segment), (-1, length, 2, 4))
            out, state = self.ltm(q, segment, state)
            outputs.append(out)
        return ops.concatenate(outputs, axis=1)


def test_compiles_in_fit_and_predict():
    """``fit`` and ``predict`` compile the memory: XLA on JAX and
    TensorFlow. On torch, ``jit_compile=True`` is ``torch.compile``, which
    takes three minutes of this one test on two CPU cores (as in
    tests/test_benchmarks.py, it is left to ``benchmarks/backends.py
    --torch-compile``); torch runs Keras's default there."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(8, 36, 8)).astype("float32")
    y = np.roll(x, 1, axis=1)
    model = MemoryModel()
    model.compile(
        optimizer=keras.optimizers.Adam(1e-2),
        loss="mse",
        jit_compile="auto" if keras.backend.backend() == "torch" else True,
    )
    eager = to_numpy(model(x))
    history = model.fit(x, y, batch_size=4, epochs=3, verbose=0)
    assert np.all(np.isfinite(history.history["loss"]))
    assert history.history["loss"][-1] < history.history["loss"][0]
    predicted = model.predict(x, batch_size=4, verbose=0)
    np.testing.assert_allclose(
        predicted, to_numpy(model(x)), rtol=1e-4, atol=1e-5
    )
    assert not np.allclose(predicted, eager)  # the weights were trained


def test_state_shape_fixed_over_100_writes_in_a_compiled_loop():
    layer = small_layer(sticky=ki.StickyMemorySampler(16, "quantile"))
    randomize(layer)
    x, q = (ops.convert_to_tensor(a) for a in inputs())
    state = layer.get_initial_state(2)

    def body(i, state):
        shift = ops.cast(i, "float32") / 100.0
        _, new_state = layer(q, ops.sin(x + shift), state)
        return new_state

    final = ops.fori_loop(0, 100, body, state)
    for name, value in final.items():
        assert tuple(value.shape) == tuple(state[name].shape), name
        assert keras.backend.standardize_dtype(value.dtype) == (
            keras.backend.standardize_dtype(state[name].dtype)
        )
    assert np.all(np.isfinite(to_numpy(final["coefficients"])))
    # Fixed-size memory whose values stay bounded: the fit of bounded
    # inputs by a fixed contraction G_inf keeps ‖B‖ from growing.
    norm = np.abs(to_numpy(final["coefficients"])).max()
    first = np.abs(to_numpy(layer.write(x, state)["coefficients"])).max()
    assert norm < 10 * first


def test_config_round_trip_and_keras_saving(tmp_path):
    sampler = ki.StickyMemorySampler(num_bins=32, mode="quantile", seed=7)
    layer = small_layer(sticky=sampler, kl_prior_mean=-1.0, tau=0.6)
    keras_hub_checks().run_serialization_test(layer)
    clone = ki.ContinuousLTM.from_config(layer.get_config())
    assert isinstance(clone.sticky, ki.StickyMemorySampler)
    assert clone.sticky.mode == "quantile"

    model = MemoryModel()
    x = np.random.default_rng(0).normal(size=(2, 36, 8)).astype("float32")
    expected = to_numpy(model(x))
    path = os.path.join(tmp_path, "model.keras")
    model.save(path)
    restored = keras.saving.load_model(
        path, custom_objects={"MemoryModel": MemoryModel}
    )
    np.testing.assert_allclose(to_numpy(restored(x)), expected, rtol=1e-6)


def test_functional_model_symbolic_call():
    q_in = keras.Input((5, 2, 4))
    x_in = keras.Input((12, 8))
    layer = small_layer()
    state = layer.get_initial_state(1)
    state_in = {
        k: keras.Input(tuple(v.shape[1:]), dtype=v.dtype)
        for k, v in state.items()
    }
    out, new_state = layer(q_in, x_in, state_in)
    assert tuple(out.shape) == (None, 5, 8)
    assert tuple(new_state["coefficients"].shape) == (None, 16, 8)
    model = keras.Model([q_in, x_in, state_in], [out, new_state])
    x, q = inputs()
    q, x = ops.convert_to_tensor(q), ops.convert_to_tensor(x)
    result, _ = model([q, x, layer.get_initial_state(2)])
    assert tuple(result.shape) == (2, 5, 8)
    assert layer.compute_output_shape((2, 5, 2, 4)) == (2, 5, 8)


@pytest.mark.parametrize("policy", ["mixed_bfloat16", "mixed_float16"])
def test_mixed_precision_keeps_memory_math_in_float32(policy):
    x, q = inputs()
    reference = small_layer()
    randomize(reference)
    expected, expected_state = reference(q, x, reference.get_initial_state(2))
    keras.config.set_dtype_policy(policy)
    layer = small_layer()
    layer.set_weights(reference.get_weights())
    assert layer.compute_dtype == policy.split("_")[1]
    out, state = layer(
        ops.cast(q, layer.compute_dtype),
        ops.cast(x, layer.compute_dtype),
        layer.get_initial_state(2),
    )
    assert keras.backend.standardize_dtype(out.dtype) == layer.compute_dtype
    coefficients = state["coefficients"]
    assert keras.backend.standardize_dtype(coefficients.dtype) == "float32"
    # Only the inputs' rounding to 16 bits differs.
    assert max_rel_error(out, to_numpy(expected)) < 3e-2
    assert max_rel_error(coefficients, expected_state["coefficients"]) < 3e-2


@pytest.mark.parametrize(
    "kwargs, name",
    [
        (dict(num_basis=0), "num_basis"),
        (dict(num_basis=15), "num_basis"),
        (dict(num_basis=2), "num_basis"),
        (dict(num_heads=0), "num_heads"),
        (dict(key_dim=2.5), "key_dim"),
        (dict(num_samples=-1), "num_samples"),
        (dict(tau=1.0), "tau"),
        (dict(tau=0.0), "tau"),
        (dict(basis_widths=(0.1, -0.1)), "basis_widths"),
        (dict(basis_widths=()), "basis_widths"),
        (dict(ridge_penalty=-1.0), "ridge_penalty"),
        (dict(ridge_penalty=0.0), "ridge_penalty"),
        (dict(min_variance=0.0), "min_variance"),
        (dict(kl_sigma=0.0), "kl_sigma"),
        (dict(kl_weight=-1.0), "kl_weight"),
        (dict(kl_prior_mean=float("nan")), "kl_prior_mean"),
        (dict(memory_gate="lstm"), "memory_gate"),
        (dict(sticky="yes"), "sticky"),
    ],
)
def test_bad_arguments(kwargs, name):
    with pytest.raises(ValueError, match=f"Received: {name}="):
        small_layer(**kwargs)


def test_bad_call_inputs():
    layer = small_layer()
    state = layer.get_initial_state(2)
    x, q = inputs()
    with pytest.raises(ValueError, match="Received: query.shape"):
        layer.read(q[..., :3], state)  # key_dim mismatch
    with pytest.raises(ValueError, match="Received: query.shape"):
        layer.read(q[:, 0], state)  # wrong rank
    with pytest.raises(ValueError, match="Received: memory_input.shape"):
        layer.write(x[..., :6], state)  # e ≠ num_heads · key_dim
    with pytest.raises(ValueError, match="Received: memory_input.shape"):
        layer.write(x[:, :0], state)  # empty segment
    with pytest.raises(ValueError, match="Received: state="):
        layer.write(x, {"coefficients": state["coefficients"]})
    with pytest.raises(ValueError, match="Received: sample_positions.shape="):
        layer.write(x, state, sample_positions=np.zeros((2, 3), "float32"))


def test_unstable_configuration_warns_and_stable_one_stays_bounded():
    """A configuration whose uniform update amplifies old content overflows
    in a long stream; the layer says so when it builds its constants."""
    unstable = ki.ContinuousLTM(
        2,
        4,
        num_basis=64,
        basis_widths=(0.01, 0.05),
        ridge_penalty=1.0,
        tau=0.75,
        num_samples=32,
    )
    with pytest.warns(UserWarning, match="amplifies old memory content"):
        unstable.constants(64)
    assert unstable.update_growth[64] > 1.0
    stable = ki.ContinuousLTM(
        2,
        4,
        num_basis=64,
        basis_widths=(0.01, 0.05),
        ridge_penalty=1.0,
        tau=0.75,
        num_samples=64,
    )
    stable.constants(64)
    assert stable.update_growth[64] < 1.0
    # The estimate is the NumPy spectral radius of G_oldᵀ S.
    transition = stable.constants(64)["transition"]
    radius = np.abs(np.linalg.eigvals(transition)).max()
    np.testing.assert_allclose(stable.update_growth[64], radius, rtol=1e-3)


@pytest.mark.parametrize("gate", ["conv", None])
def test_weight_names_and_distinct_initial_values(gate):
    layer = small_layer(memory_gate=gate)
    names = [w.path.split("/")[-1] for w in layer.weights]
    expected = ki.ContinuousLTM.WEIGHT_NAMES[: 7 if gate else 5]
    assert tuple(names) == expected
    # One unseeded initializer instance would draw equal values each time.
    square = [to_numpy(getattr(layer, n)) for n in expected[:3]]
    assert not np.array_equal(square[0], square[1])
    assert not np.array_equal(square[1], square[2])
    assert not np.array_equal(
        to_numpy(layer.mu_kernel), to_numpy(layer.sigma_kernel)
    )


@pytest.mark.parametrize("sticky", [False, True])
def test_masked_write(sticky):
    """Padded positions never influence the memory (any values there, NaN
    included); a row with no real token keeps its state bit for bit; a full
    row is the unmasked write exactly."""
    sampler = ki.StickyMemorySampler(mode="quantile") if sticky else None
    layer = small_layer(sticky=sampler)
    randomize(layer)
    x, q = inputs(batch=3, length=12)
    state = layer.get_initial_state(3)
    for seed in (2, 3):  # a memory with content (and reads, for sticky)
        _, state = layer(q, inputs(batch=3, length=12, seed=seed)[0], state)
    mask = np.ones((3, 12), bool)
    mask[0, 7:] = False  # row 0: a partly padded segment
    mask[1, :] = False  # row 1: padding only
    noise = np.random.default_rng(4).normal(size=x.shape) * 100.0
    dirty = np.where(mask[..., None], x, noise).astype("float32")
    nan = np.where(mask[..., None], x, np.nan).astype("float32")
    written = to_numpy(layer.write(x, state, mask=mask))
    for other in (dirty, nan):
        again = to_numpy(layer.write(other, state, mask=mask))
        for name in written:
            np.testing.assert_array_equal(again[name], written[name])
    before = to_numpy(state)
    for name in written:
        np.testing.assert_array_equal(written[name][1], before[name][1])
    unmasked = to_numpy(layer.write(x, state))
    for name in written:
        np.testing.assert_array_equal(written[name][2], unmasked[name][2])
    # The partly padded row is the write of its real tokens with zeros in
    # the padded places.
    zeros = np.where(mask[..., None], x, 0.0).astype("float32")
    np.testing.assert_allclose(
        written["coefficients"][0],
        to_numpy(layer.write(zeros, state))["coefficients"][0],
        atol=1e-6,
    )
    assert written["has_memory"][0] and written["has_memory"][2]
