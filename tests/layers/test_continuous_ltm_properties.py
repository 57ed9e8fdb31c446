"""Property-based: valid shapes and configurations never error and always
give finite outputs of the documented shapes."""

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

import keras_infmemory as ki
from tests.testing import to_numpy

CONFIGS = st.fixed_dictionaries(
    {
        "num_heads": st.integers(1, 3),
        "key_dim": st.integers(1, 5),
        "centres": st.integers(2, 12),
        "widths": st.lists(
            st.floats(0.01, 0.3), min_size=1, max_size=3, unique=True
        ),
        "ridge_penalty": st.floats(1e-3, 2.0),
        "tau": st.floats(0.05, 0.95),
        "num_samples": st.integers(1, 12),
        "gate": st.sampled_from(["conv", None]),
        "sticky": st.sampled_from([None, "categorical", "quantile"]),
    }
)
SHAPES = st.fixed_dictionaries(
    {
        "batch": st.integers(1, 3),
        "length": st.integers(1, 9),
        "query_length": st.integers(1, 5),
        "steps": st.integers(1, 3),
        "scale": st.floats(1e-3, 1e3),
    }
)


# The number of examples is the profile's (tests/conftest.py): a few under
# `make test` and CI, more in a plain pytest run.
@given(config=CONFIGS, shapes=SHAPES, seed=st.integers(0, 2**16))
def test_valid_inputs_give_finite_outputs(config, shapes, seed):
    widths = config.pop("widths")
    centres = config.pop("centres")
    sticky = config.pop("sticky")
    gate = config.pop("gate")
    layer = ki.ContinuousLTM(
        num_basis=centres * len(widths),
        basis_widths=widths,
        memory_gate=gate,
        sticky=None if sticky is None else ki.StickyMemorySampler(8, sticky),
        **config,
    )
    rng = np.random.default_rng(seed)
    b, h, d = shapes["batch"], layer.num_heads, layer.key_dim
    state = layer.get_initial_state(b)
    for _ in range(shapes["steps"]):
        x = rng.normal(size=(b, shapes["length"], h * d)) * shapes["scale"]
        q = rng.normal(size=(b, shapes["query_length"], h, d))
        out, state = layer(q.astype("float32"), x.astype("float32"), state)
        out = to_numpy(out)
        assert out.shape == (b, shapes["query_length"], h * d)
        assert np.all(np.isfinite(out))
        assert np.all(np.isfinite(to_numpy(state["coefficients"])))
