"""Loading the authors' PyTorch parameters."""

import numpy as np
import pytest

import keras_infmemory as ki
from keras_infmemory import interop
from tests.testing import to_numpy


def torch_state_dict(e=8, n=16, gate=True, seed=0):
    rng = np.random.default_rng(seed)
    state = {
        "proj_key.weight": rng.normal(size=(e, e)),
        "proj_value.weight": rng.normal(size=(e, e)),
        "attn_out.weight": rng.normal(size=(e, e)),
        "proj_query.weight": rng.normal(size=(e, e)),  # unused, ignored
        "mu.weight": rng.normal(size=(1, n)),
        "sigma.weight": rng.normal(size=(1, n)),
    }
    if gate:
        state["mask_net.weight"] = rng.normal(size=(e, e, 3))
        state["mask_net.bias"] = rng.normal(size=(e,))
    return state


def test_layouts():
    layer = ki.ContinuousLTM(2, 4, num_basis=16, num_samples=8)
    state = torch_state_dict()
    interop.load_reference_weights(layer, state)
    np.testing.assert_allclose(
        to_numpy(layer.key_kernel), state["proj_key.weight"].T, rtol=1e-6
    )
    np.testing.assert_allclose(
        to_numpy(layer.mu_kernel), state["mu.weight"][0], rtol=1e-6
    )
    # torch Conv1d W[o, i, k] -> Keras Conv1D kernel[k, i, o].
    np.testing.assert_allclose(
        to_numpy(layer.gate_kernel)[2, 5, 1],
        state["mask_net.weight"][1, 5, 2],
        rtol=1e-6,
    )


def test_errors():
    layer = ki.ContinuousLTM(2, 4, num_basis=16, num_samples=8)
    state = torch_state_dict()
    del state["sigma.weight"]
    with pytest.raises(ValueError, match="sigma.weight"):
        interop.load_reference_weights(layer, state)
    with pytest.raises(ValueError, match="Received: shape"):
        interop.load_reference_weights(layer, torch_state_dict(n=32))
    no_gate = ki.ContinuousLTM(
        2, 4, num_basis=16, num_samples=8, memory_gate=None
    )
    with pytest.raises(ValueError, match="memory_gate=None"):
        interop.load_reference_weights(no_gate, torch_state_dict())
    interop.load_reference_weights(no_gate, torch_state_dict(gate=False))
    with pytest.raises(ValueError, match="Received: shape"):
        interop.load_reference_constants(
            layer, {"G_L": np.zeros((4, 16)), "G_inf": 0, "S": 0}, 8
        )
