"""Endless streams: bounded, finite, and still holding what was written.

Two streams, each in float32 and under ``mixed_bfloat16``:

* `stream_stack`: random tokens through an ∞-former `InfFormerLM`, segment
  by segment with the state carried. Every logit must be finite and every
  LTM's coefficients must stay under the bound of docs/long_streams.md:
  ``‖B_t‖_F ≤ c · max_{s≤t} ‖x_s‖_F`` with ``c = Σ_k ‖T^k C‖₂`` for the
  uniform transition ``T = G_oldᵀ S`` and ``C = G_newᵀ`` (finite because
  the spectral radius ``ltm.update_growth`` of T is < 1), ``x_s`` the
  segments the LTM absorbed (the conv gate only shrinks them).
* `stream_ltm`: a `ContinuousLTM` writes a known smooth signal, then noise
  for the rest of the stream, sampling the old signal so that the signal's
  region keeps its share of [0, 1] (what sticky memories do for an attended
  region). At the end, reads aimed at that region must return the signal
  as well as the same stream computed in float64 NumPy does (the error the
  basis allows), and the coefficients must match that float64 stream.

The quick variants run in the normal suite. The 1M-token runs are opt-in:
``INFMEMORY_LONG_TESTS=1 pytest tests/test_long_streams.py``, or
``python -m tests.test_long_streams`` to print the numbers as JSON.
"""

import json
import math
import os
import sys
import time

import keras
import numpy as np
import pytest
from keras import ops

import keras_infmemory as ki
from keras_infmemory import basis
from keras_infmemory.models import InfFormerLM
from tests.testing import to_numpy

LONG = os.environ.get("INFMEMORY_LONG_TESTS") == "1"
POLICIES = ("float32", "mixed_bfloat16")
VOCAB = 32


# ---------------------------------------------------------------------- #
# The bound
# ---------------------------------------------------------------------- #


def spectral_norm(matrix):
    """``‖A‖₂``, from the eigenvalues of the smaller Gram matrix."""
    gram = matrix.T @ matrix if matrix.shape[0] >= matrix.shape[1] else None
    gram = matrix @ matrix.T if gram is None else gram
    return math.sqrt(max(float(np.linalg.eigvalsh(gram)[-1]), 0.0))


def power_norm_sum(transition, max_terms=1000):
    """An upper bound of ``Σ_{k≥0} ‖T^k‖₂`` (finite iff ρ(T) < 1).

    Sums ``‖T^k‖₂`` until some ``q = ‖T^K‖₂ < 1``; submultiplicativity then
    bounds the whole sum by ``Σ_{k<K} ‖T^k‖₂ / (1 − q)``.
    """
    power, partial = np.eye(transition.shape[0]), 0.0
    for k in range(max_terms):
        term = spectral_norm(power)
        if k > 0 and term < 1.0:
            return partial / (1.0 - term)
        partial += term
        power = transition @ power
    raise AssertionError("Σ‖T^k‖ does not converge: spectral radius ≥ 1?")


def coefficient_bound(ltm, length, tolerance=1e-9):
    """``c`` with ``‖B_t‖_F ≤ c · max_{s≤t} ‖x_s‖_F`` for uniform writes.

    ``B_t = Σ_k T^k C_{t−k} x_{t−k}`` with ``C = G_newᵀ`` (``G_Lᵀ`` for the
    first write into an empty row), so ``c = Σ_k max_C ‖T^k C‖₂``. The sum
    stops at a term ``< tolerance``; the rest is at most that term times
    `power_norm_sum`.
    """
    constants = ltm.constants(length)
    growth = ltm.update_growth[length]
    assert growth < 1.0, f"spectral radius {growth} ≥ 1: no bound"
    transition = constants["transition"]
    writes = [constants["G_new"].T, constants["G_L"].T]  # C: (N, L) each
    total = 0.0
    for _ in range(1000):
        term = max(spectral_norm(c) for c in writes)
        total += term
        if term < tolerance:
            return total + term * power_norm_sum(transition)
        writes = [transition @ c for c in writes]
    raise AssertionError("the bound does not converge")


# ---------------------------------------------------------------------- #
# Stream 1: tokens through an InfFormerLM
# ---------------------------------------------------------------------- #


def compiled_step(model):
    """``(tokens, state) -> (logits, state)``, compiled where the backend
    compiles (tests may use the backends directly; the library does not)."""
    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        trainable = [v.value for v in model.trainable_variables]
        fixed = [v.value for v in model.non_trainable_variables]

        @jax.jit
        def step(trainable, fixed, tokens, state):
            (logits, state), _ = model.stateless_call(
                trainable, fixed, tokens, state
            )
            return logits, state

        return lambda tokens, state: step(trainable, fixed, tokens, state)
    if backend == "tensorflow":
        import tensorflow as tf

        return tf.function(lambda tokens, state: model(tokens, state))
    import torch

    def step(tokens, state):
        with torch.no_grad():
            return model(tokens, state)

    return step


def stream_stack(
    num_tokens,
    policy,
    batch=1,
    segment_length=512,
    hidden_dim=64,
    num_layers=2,
    memory_options=None,
    seed=0,
    compiled=True,
):
    """Streams ``num_tokens`` random tokens per row through an ∞-former LM.

    Returns a dict of measurements; raises AssertionError on a non-finite
    logit or a coefficient norm over the bound.
    """
    keras.config.set_dtype_policy(policy)
    keras.utils.set_random_seed(seed)
    model = InfFormerLM.arm(
        "inf_former",
        vocabulary_size=VOCAB,
        num_layers=num_layers,
        hidden_dim=hidden_dim,
        num_heads=4,
        intermediate_dim=2 * hidden_dim,
        segment_length=segment_length,
        memory_options=dict(memory_options or {}),
    )
    state = model.get_initial_state(batch)
    model.build((batch, segment_length))
    ltm = model.blocks[0].ltm
    constant = coefficient_bound(ltm, segment_length)
    step = compiled_step(model) if compiled else model
    rng = np.random.default_rng(seed)
    max_input = np.zeros((num_layers, batch))  # max ‖x_s‖_F absorbed so far
    max_norm, max_ratio = 0.0, 0.0
    num_segments = -(-num_tokens // segment_length)
    start = time.perf_counter()
    for _ in range(num_segments):
        for i, block_state in enumerate(state):
            pending = to_numpy(block_state["ltm"]["pending"])  # (B, L, D)
            writes = np.all(
                to_numpy(block_state["ltm"]["pending_mask"]), axis=1
            )
            norms = np.sqrt(np.sum(np.square(pending), axis=(1, 2)))
            max_input[i] = np.where(
                writes, np.maximum(max_input[i], norms), max_input[i]
            )
        tokens = rng.integers(0, VOCAB, (batch, segment_length), "int32")
        logits, state = step(tokens, state)
        if not np.all(np.isfinite(to_numpy(logits))):
            raise AssertionError("non-finite logits")
        for i, block_state in enumerate(state):
            coefficients = to_numpy(
                block_state["ltm"]["memory"]["coefficients"]
            )
            if not np.all(np.isfinite(coefficients)):
                raise AssertionError(f"non-finite coefficients in layer {i}")
            norms = np.sqrt(np.sum(np.square(coefficients), axis=(1, 2)))
            bound = constant * max_input[i]  # (B,)
            max_norm = max(max_norm, float(norms.max()))
            ratio = norms / np.maximum(bound, 1e-30)
            max_ratio = max(max_ratio, float(ratio.max()))
            # float32 rounding of the matmuls: a relative slack of 1e-4.
            if np.any(norms > bound * (1.0 + 1e-4) + 1e-6):
                raise AssertionError(
                    f"layer {i}: ‖B‖ {norms} over the bound {bound}"
                )
    seconds = time.perf_counter() - start
    return {
        "stream": "InfFormerLM",
        "backend": keras.backend.backend(),
        "policy": policy,
        "tokens_per_row": num_segments * segment_length,
        "batch": batch,
        "seconds": round(seconds, 1),
        "spectral_radius": round(ltm.update_growth[segment_length], 4),
        "bound_constant": round(constant, 4),
        "max_input_norm": round(float(max_input.max()), 3),
        "max_coefficient_norm": round(max_norm, 3),
        "max_norm_over_bound": round(max_ratio, 5),
    }


# ---------------------------------------------------------------------- #
# Stream 2: one LTM holding a signal while noise streams in
# ---------------------------------------------------------------------- #


def _signal(length):
    # Cell midpoints, as the layer places a segment (docs/math.md §2).
    t = (np.arange(1, length + 1) - 0.5) / length
    return t, _signal_at(t)  # (L,), (L, 4)


def _positions(share, held, num_samples):
    """Sample positions that give ``[0, share]`` the first ``held`` slots."""
    m = np.arange(1, num_samples + 1, dtype=np.float64)
    rest = num_samples - held
    return np.where(
        m <= held,
        share * m / held,
        share + (1.0 - share) * (m - held) / rest,
    )  # (M,)


def _queries(ltm, coefficients, mu, log_variance_logit):
    """Queries whose read densities have means ``mu`` (and a tiny σ²).

    ``w_μᵀ s = q · k_μ / √d`` with ``k_μ = (w_μᵀ B) W_K`` (one head), so a
    query solving ``[k_μ; k_σ] q = √d [logit(μ); c]`` sets μ and σ².
    """
    weights = np.stack(
        [to_numpy(ltm.mu_kernel), to_numpy(ltm.sigma_kernel)]
    )  # (2, N)
    keys = weights @ coefficients[0] @ to_numpy(ltm.key_kernel)  # (2, d)
    target = np.stack(
        [np.log(mu / (1.0 - mu)), np.full_like(mu, log_variance_logit)]
    ) * math.sqrt(ltm.key_dim)  # (2, Q)
    query = np.linalg.pinv(keys) @ target  # (d, Q)
    return query.T[None, :, None, :]  # (1, Q, 1, d)


def stream_ltm(num_tokens, policy, length=512, seed=0):
    """Writes a signal, then noise, holding the signal's region; reads it.

    The LTM has the GPT-2 geometry (N = M = 512, τ = 0.5, λ = 0.5, widths
    0.005 and 0.01), no gate (so the write is linear and a float64 NumPy
    twin can follow it), σ² ≥ 1e-6, and identity value and output kernels,
    so that a read returns the Gaussian-smoothed signal ``x̄`` itself.
    """
    keras.config.set_dtype_policy(policy)
    keras.utils.set_random_seed(seed)
    ltm = ki.ContinuousLTM(
        num_heads=1, key_dim=4, memory_gate=None, min_variance=1e-6
    )
    ltm.value_kernel.assign(np.eye(4, dtype="float32"))
    ltm.output_kernel.assign(np.eye(4, dtype="float32"))
    m, tau = ltm.num_samples, ltm.tau
    held = m // 2
    share = tau * held / m  # the signal's region [0, share] is stationary
    constants = ltm.constants(length)
    centers, widths = ltm.geometry.centers, ltm.geometry.widths
    g_old = constants["G_old"]
    # The positions the LTM receives are float32: the float64 twin uses the
    # same rounded values (ψ is steep, 1e-8 moves it by about 1e-5).
    capture = _positions(tau, held, m).astype("float32")  # [0, τ] -> [0, share]
    hold = _positions(share, held, m).astype("float32")  # [0, share] -> itself
    transitions = {
        name: g_old.T @ basis.psi_numpy(p.astype("float64"), centers, widths)
        for name, p in (("capture", capture), ("hold", hold))
    }
    rng = np.random.default_rng(seed)
    t, signal = _signal(length)
    num_writes = max(3, -(-num_tokens // length))

    def rounded(x):  # what the LTM receives from a block under the policy
        x = ops.cast(x.astype("float32"), ltm.compute_dtype)
        return x, to_numpy(x)[0]

    state = ltm.get_initial_state(1)
    reference = None
    max_norm = 0.0
    start = time.perf_counter()
    for step in range(num_writes):
        values = signal if step == 0 else rng.normal(size=signal.shape)
        x, x64 = rounded(values[None])
        if step == 0:
            state = ltm.write(x, state)
            reference = constants["G_L"].T @ x64
            continue
        if step == 1:
            state = ltm.write(x, state)
            reference = constants["transition"] @ reference
        else:
            mode = "capture" if step == 2 else "hold"
            positions = (capture if step == 2 else hold)[None]
            state = ltm.write(x, state, sample_positions=positions)
            reference = transitions[mode] @ reference
        reference = reference + constants["G_new"].T @ x64
        coefficients = to_numpy(state["coefficients"])
        if not np.all(np.isfinite(coefficients)):
            raise AssertionError(f"non-finite coefficients at write {step}")
        max_norm = max(max_norm, float(np.linalg.norm(coefficients)))
    seconds = time.perf_counter() - start
    coefficients = to_numpy(state["coefficients"])
    drift = np.linalg.norm(coefficients[0] - reference) / np.linalg.norm(
        reference
    )

    # Read the signal's region [0, share] back, away from its two edges.
    grid = np.linspace(0.05, 0.95, 64)
    query = _queries(ltm, coefficients, share * grid, -30.0)
    mu, variance = ltm.density(query.astype("float32"), state)
    mu_error = float(np.max(np.abs(to_numpy(mu)[0, 0] - share * grid)))
    read = to_numpy(ltm.read(query.astype("float32"), state))[0]  # (Q, 4)
    truth = _signal_at(grid)
    r = _expectation(share * grid, to_numpy(variance)[0, 0], centers, widths)
    reference_read = r @ reference  # (Q, 4) the float64 stream's read

    def relative(a, b):
        return float(np.linalg.norm(a - b) / np.linalg.norm(b))

    return {
        "stream": "ContinuousLTM",
        "backend": keras.backend.backend(),
        "policy": policy,
        "tokens": num_writes * length,
        "seconds": round(seconds, 1),
        "max_coefficient_norm": round(max_norm, 3),
        "coefficient_drift_vs_float64": float(f"{drift:.3g}"),
        "density_mean_error": float(f"{mu_error:.3g}"),
        "read_error": round(relative(read, truth), 4),
        "float64_read_error": round(relative(reference_read, truth), 4),
        "read_vs_float64_read": float(f"{relative(read, reference_read):.3g}"),
    }


def _signal_at(u):
    return np.stack(
        [
            np.sin(2 * np.pi * u),
            np.cos(4 * np.pi * u),
            2.0 * u - 1.0,
            np.sin(6 * np.pi * u + 1.0),
        ],
        axis=1,
    )


def _expectation(mu, variance, centers, widths):
    total = variance[:, None] + widths[None, :] ** 2  # (Q, N)
    diff = mu[:, None] - centers[None, :]
    return np.exp(-0.5 * diff**2 / total) / np.sqrt(2 * np.pi * total)


# ---------------------------------------------------------------------- #
# Tests
# ---------------------------------------------------------------------- #


def check_ltm_result(result):
    bf16 = result["policy"] == "mixed_bfloat16"
    # The signal is still there, as well as the basis allows ...
    assert result["float64_read_error"] < 0.3
    assert result["read_error"] < result["float64_read_error"] + 0.02
    # ... and the library follows the exact (float64) stream closely: the
    # LTM math is float32 under both policies; bf16 rounds the read output.
    assert result["coefficient_drift_vs_float64"] < 1e-3
    assert result["read_vs_float64_read"] < (2e-2 if bf16 else 5e-3)
    assert result["density_mean_error"] < 1e-3


@pytest.mark.parametrize("policy", POLICIES)
def test_quick_stack_stream(policy):
    result = stream_stack(
        num_tokens=12 * 64,
        policy=policy,
        batch=2,
        segment_length=64,
        hidden_dim=16,
    )
    assert result["max_norm_over_bound"] <= 1.0 + 1e-4
    assert result["max_coefficient_norm"] > 0.0


@pytest.mark.parametrize("policy", POLICIES)
def test_quick_ltm_stream_keeps_the_signal(policy):
    check_ltm_result(stream_ltm(num_tokens=12 * 512, policy=policy))


@pytest.mark.skipif(not LONG, reason="set INFMEMORY_LONG_TESTS=1")
@pytest.mark.parametrize("policy", POLICIES)
def test_million_tokens(policy):
    stack = stream_stack(num_tokens=1_000_000, policy=policy)
    assert stack["max_norm_over_bound"] <= 1.0 + 1e-4
    check_ltm_result(stream_ltm(num_tokens=1_000_000, policy=policy))


def main(argv):
    """``python -m tests.test_long_streams [num_tokens] [policy ...]``"""
    num_tokens = int(argv[0]) if argv else 1_000_000
    policies = argv[1:] or POLICIES
    for policy in policies:
        for run in (stream_stack, stream_ltm):
            result = run(num_tokens=num_tokens, policy=policy)
            print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
