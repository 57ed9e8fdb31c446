"""The arguments, configuration and state layout of a `ContinuousLTM`.

Checked once when the layer is made (bad input gets a clear error naming
the argument), written back by ``get_config``, and the keys and shapes of
the state every call takes (docs/math.md §4 for what the state holds).
"""

import keras
import numpy as np

from keras_infmemory import validation as check
from keras_infmemory.layers.sticky_memory_sampler import StickyMemorySampler

GATES = ("conv", None)


def check_arguments(
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
    initial_variance=None,
    density_scale=1.0,
    remat_read=False,
):
    """Checks a `ContinuousLTM`'s arguments; returns them normalized (a
    dict of attribute values: floats, a tuple of widths, a sampler object,
    the resolved ``memory_dim`` and ``output_dim``)."""
    check.check_int("num_heads", num_heads)
    check.check_int("key_dim", key_dim)
    check.check_int("num_basis", num_basis)
    check.check_int("num_samples", num_samples)
    widths = check.check_basis_widths(basis_widths, num_basis)
    check.check_range("ridge_penalty", ridge_penalty, 0.0, None)
    check.check_range("tau", tau, 0.0, 1.0)
    check.check_range("min_variance", min_variance, 0.0, None)
    check.check_range("kl_sigma", kl_sigma, 0.0, None)
    check.check_range("kl_weight", kl_weight, 0.0, None, low_ok=True)
    if kl_prior_mean is not None and not np.isfinite(kl_prior_mean):
        raise ValueError(
            "`kl_prior_mean` must be None or a finite float. "
            f"Received: kl_prior_mean={kl_prior_mean}"
        )
    if memory_gate not in GATES:
        raise ValueError(
            f"`memory_gate` must be one of {GATES}. "
            f"Received: memory_gate={memory_gate!r}"
        )
    if isinstance(sticky, dict):
        sticky = keras.saving.deserialize_keras_object(sticky)
    if sticky is not None and not isinstance(sticky, StickyMemorySampler):
        raise ValueError(
            "`sticky` must be None or a StickyMemorySampler. "
            f"Received: sticky={sticky!r}"
        )
    if memory_dim is not None:
        check.check_int("memory_dim", memory_dim)
    if output_dim is not None:
        check.check_int("output_dim", output_dim)
    if initial_variance is not None:
        check.check_range("initial_variance", initial_variance, 0.0, None)
        if initial_variance <= min_variance:
            raise ValueError(
                "`initial_variance` must be None or above `min_variance` "
                f"({min_variance}). Received: initial_variance="
                f"{initial_variance}"
            )
    density_scale = check.check_range("density_scale", density_scale, 0.0, None)
    if not isinstance(remat_read, bool):
        raise ValueError(
            "`remat_read` must be True or False. "
            f"Received: remat_read={remat_read!r}"
        )
    memory_dim = int(memory_dim or num_heads * key_dim)
    return {
        "num_heads": num_heads,
        "key_dim": key_dim,
        "memory_dim": memory_dim,
        "output_dim": int(output_dim or memory_dim),
        "num_basis": num_basis,
        "basis_widths": widths,
        "ridge_penalty": float(ridge_penalty),
        "tau": float(tau),
        "num_samples": num_samples,
        "min_variance": float(min_variance),
        "kl_sigma": float(kl_sigma),
        "kl_weight": float(kl_weight),
        "kl_prior_mean": (
            None if kl_prior_mean is None else float(kl_prior_mean)
        ),
        "memory_gate": memory_gate,
        "sticky": sticky,
        "initial_variance": (
            None if initial_variance is None else float(initial_variance)
        ),
        "variance_offset": variance_offset(initial_variance),
        "density_scale": density_scale,
        "remat_read": remat_read,
    }


def variance_offset(initial_variance):
    """The offset ``softplus⁻¹(v) = log(eᵛ − 1)`` added to the variance
    logit so that a zero logit reads ``σ² = v`` (docs/math.md §3); 0 for
    ``None`` (the authors' ``σ² = softplus(logit)``: ``ln 2`` at 0)."""
    if initial_variance is None:
        return 0.0
    return float(np.log(np.expm1(np.float64(initial_variance))))


def config(layer):
    """The constructor arguments of ``layer`` (for ``get_config``)."""
    return {
        "num_heads": layer.num_heads,
        "key_dim": layer.key_dim,
        "num_basis": layer.num_basis,
        "basis_widths": list(layer.basis_widths),
        "ridge_penalty": layer.ridge_penalty,
        "tau": layer.tau,
        "num_samples": layer.num_samples,
        "min_variance": layer.min_variance,
        "kl_sigma": layer.kl_sigma,
        "kl_weight": layer.kl_weight,
        "kl_prior_mean": layer.kl_prior_mean,
        "memory_gate": layer.memory_gate,
        "sticky": (
            None
            if layer.sticky is None
            else keras.saving.serialize_keras_object(layer.sticky)
        ),
        "memory_dim": layer.memory_dim,
        "output_dim": layer.output_dim,
        "initial_variance": layer.initial_variance,
        "density_scale": layer.density_scale,
        "remat_read": layer.remat_read,
        "kernel_initializer": keras.initializers.serialize(
            layer.kernel_initializer
        ),
    }


def check_state(layer, state):
    """Checks the keys and shapes of ``layer``'s ``state``; returns the
    batch size."""
    expected = {"coefficients", "has_memory"}
    if layer.sticky is not None:
        expected.add("histogram")
    if not isinstance(state, dict) or set(state) != expected:
        got = sorted(state) if isinstance(state, dict) else type(state)
        raise ValueError(
            f"`state` must be a dict with keys {sorted(expected)}, as "
            f"returned by get_initial_state(). Received: state={got}"
        )
    shape = check.shape_of(state["coefficients"])
    if len(shape) != 3 or shape[1:] != (layer.num_basis, layer.memory_dim):
        raise ValueError(
            "`state['coefficients']` must have shape "
            f"(batch, {layer.num_basis}, {layer.memory_dim}). "
            f"Received: shape={shape}"
        )
    batch = shape[0]
    check.check_shape(
        "state['has_memory']", state["has_memory"], (batch,), "(batch,)"
    )
    if layer.sticky is not None:
        check.check_shape(
            "state['histogram']",
            state["histogram"],
            (batch, layer.sticky.num_bins),
            f"(batch, {layer.sticky.num_bins})",
        )
    return batch
