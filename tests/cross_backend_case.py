"""One fixed ContinuousLTM computation, run under the current backend.

``python -m tests.cross_backend_case OUT.npz`` writes its results; the
cross-backend test runs it once per backend, each in its own process.
"""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402

import keras_infmemory as ki  # noqa: E402


def compute():
    rng = np.random.default_rng(20261125)
    results = {}
    for mode in ("uniform", "quantile"):
        sticky = None
        if mode == "quantile":
            sticky = ki.StickyMemorySampler(num_bins=32, mode="quantile")
        layer = ki.ContinuousLTM(
            num_heads=2,
            key_dim=8,
            num_basis=32,
            num_samples=16,
            basis_widths=(0.02, 0.05),
            sticky=sticky,
        )
        weights = [
            rng.normal(0, 0.3, w.shape).astype("float32")
            for w in layer.get_weights()
        ]
        layer.set_weights(weights)
        state = layer.get_initial_state(2)
        for step in range(3):
            x = rng.normal(size=(2, 16, 16)).astype("float32")
            q = rng.normal(size=(2, 6, 2, 8)).astype("float32")
            out, state = layer(q, x, state)
            results[f"{mode}_out_{step}"] = keras.ops.convert_to_numpy(out)
        results[f"{mode}_coefficients"] = keras.ops.convert_to_numpy(
            state["coefficients"]
        )
    return results


if __name__ == "__main__":
    np.savez(sys.argv[1], backend=keras.backend.backend(), **compute())
