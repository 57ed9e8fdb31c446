"""The same weights and inputs give the same outputs on every backend."""

import os
import subprocess
import sys

import keras
import numpy as np
import pytest

from tests import cross_backend_case

BACKENDS = ("jax", "torch", "tensorflow")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
@pytest.mark.skipif(
    keras.backend.backend() != "jax",
    reason="runs once, from the JAX process, and starts the other backends",
)
def test_outputs_agree_across_backends(tmp_path):
    results = {"jax": cross_backend_case.compute()}
    for backend in BACKENDS[1:]:
        path = os.path.join(tmp_path, f"{backend}.npz")
        env = dict(os.environ, KERAS_BACKEND=backend)
        subprocess.run(
            [sys.executable, "-m", "tests.cross_backend_case", path],
            cwd=ROOT,
            env=env,
            check=True,
            timeout=300,
        )
        loaded = np.load(path)
        assert str(loaded["backend"]) == backend
        results[backend] = {k: loaded[k] for k in results["jax"]}
    for backend in BACKENDS[1:]:
        for key, expected in results["jax"].items():
            np.testing.assert_allclose(
                results[backend][key],
                expected,
                rtol=0,
                atol=1e-5 * max(1.0, np.abs(expected).max()),
                err_msg=f"{backend} vs jax: {key}",
            )
