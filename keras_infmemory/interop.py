"""Porting the authors' PyTorch ∞-former memory into keras-infmemory."""

import numpy as np

_PARAMETERS = {
    # torch name: (layer attribute, torch layout -> Keras layout)
    "proj_key.weight": ("key_kernel", lambda w: w.T),
    "proj_value.weight": ("value_kernel", lambda w: w.T),
    "attn_out.weight": ("output_kernel", lambda w: w.T),
    "mu.weight": ("mu_kernel", lambda w: w.reshape(-1)),
    "sigma.weight": ("sigma_kernel", lambda w: w.reshape(-1)),
    "mask_net.weight": ("gate_kernel", lambda w: w.transpose(2, 1, 0)),
    "mask_net.bias": ("gate_bias", lambda w: w),
}


def load_reference_weights(layer, state_dict):
    """Loads the authors' `LongTermAttention` parameters into a layer.

    Args:
        layer: a `keras_infmemory.ContinuousLTM`.
        state_dict: mapping from the authors' parameter names
            (``proj_key.weight``, ``proj_value.weight``, ``attn_out.weight``,
            ``mu.weight``, ``sigma.weight``, ``mask_net.weight``,
            ``mask_net.bias``) to arrays in torch layouts (NumPy arrays or
            anything ``np.asarray`` accepts, e.g. CPU torch tensors). Other
            keys (``proj_query.weight``, never used by the authors' code) are
            ignored. The gate's parameters are required exactly when
            ``layer.memory_gate == "conv"``.

    Example:

    >>> import numpy as np
    >>> import keras_infmemory
    >>> ltm = keras_infmemory.ContinuousLTM(2, 4, num_basis=8, memory_gate=None)
    >>> rng = np.random.default_rng(0)
    >>> weights = {
    ...     "proj_key.weight": rng.normal(size=(8, 8)),
    ...     "proj_value.weight": rng.normal(size=(8, 8)),
    ...     "attn_out.weight": rng.normal(size=(8, 8)),
    ...     "mu.weight": rng.normal(size=(1, 8)),
    ...     "sigma.weight": rng.normal(size=(1, 8)),
    ... }
    >>> keras_infmemory.interop.load_reference_weights(ltm, weights)
    """
    wanted = dict(_PARAMETERS)
    if layer.memory_gate is None:
        wanted.pop("mask_net.weight")
        wanted.pop("mask_net.bias")
    missing = sorted(set(wanted) - set(state_dict))
    if missing:
        raise ValueError(
            f"`state_dict` lacks the parameters {missing}. "
            f"Received: keys={sorted(state_dict)}"
        )
    if layer.memory_gate is None and "mask_net.weight" in state_dict:
        raise ValueError(
            "`state_dict` holds a CNN gate (`mask_net.*`) but the layer has "
            f"memory_gate=None. Received: keys={sorted(state_dict)}"
        )
    for name, (attribute, to_keras) in wanted.items():
        variable = getattr(layer, attribute)
        value = to_keras(_to_numpy(state_dict[name]))
        if tuple(value.shape) != tuple(variable.shape):
            raise ValueError(
                f"`{name}` does not fit `{attribute}` of shape "
                f"{tuple(variable.shape)}. Received: shape "
                f"{tuple(_to_numpy(state_dict[name]).shape)} (torch layout)"
            )
        variable.assign(value.astype(variable.dtype))


def load_reference_constants(layer, constants, length):
    """Installs recorded constant matrices instead of exact ones.

    The authors' code builds some positions in float32, so its ``G_inf``
    differs from the exact one by ~1e-6 relative. Injecting its recorded
    ``G_L``, ``G_inf`` and ``S`` (the ``constants_*.npz`` files of the golden
    reference) reproduces its outputs to float32 round-off.

    Args:
        layer: a `keras_infmemory.ContinuousLTM`.
        constants: mapping with ``G_L`` ``(L, N)``, ``G_inf`` ``(M + L, N)``
            and ``S`` ``(M, N)``.
        length: the segment length ``L`` they belong to.
    """
    n, m = layer.num_basis, layer.num_samples
    shapes = {"G_L": (length, n), "G_inf": (m + length, n), "S": (m, n)}
    for name, shape in shapes.items():
        got = np.shape(constants[name])
        if tuple(got) != shape:
            raise ValueError(
                f"`constants['{name}']` must have shape {shape}. "
                f"Received: shape={tuple(got)}"
            )
    layer._set_constants(
        length,
        *(np.asarray(constants[k], np.float64) for k in ("G_L", "G_inf", "S")),
    )


def _to_numpy(value):
    if hasattr(value, "detach"):
        value = value.detach().cpu().numpy()
    return np.asarray(value)
