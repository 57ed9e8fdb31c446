"""Model parallelism for the KerasHub models with memory (JAX): the family's
KerasHub layout map plus the LTM layout, on 4 simulated CPU devices (a
2 × 2 batch × model mesh), gives one device's logits and training step; the
LTM's K/V/O kernels are sharded along the model axis and the memory state
along the batch axis. The flag that makes 4 devices must be set before JAX
starts, so the case runs in its own process (`tests.model_parallel_case`).
"""

import os
import subprocess
import sys

import keras
import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FAMILIES = ("llama3", "gemma")


@pytest.mark.skipif(
    keras.backend.backend() != "jax", reason="keras.distribution is JAX-only"
)
def test_model_parallel_equals_one_device(tmp_path):
    path = os.path.join(tmp_path, "result.npz")
    env = dict(
        os.environ,
        KERAS_BACKEND="jax",
        XLA_FLAGS="--xla_force_host_platform_device_count=4",
    )
    subprocess.run(
        [sys.executable, "-m", "tests.model_parallel_case", path, *FAMILIES],
        cwd=ROOT,
        env=env,
        check=True,
        timeout=900,
    )
    result = np.load(path)
    for family in FAMILIES:
        r = {
            k.split("/", 1)[1]: v
            for k, v in result.items()
            if k.startswith(family)
        }
        np.testing.assert_allclose(
            r["parallel_logits"], r["logits"], atol=1e-5, err_msg=family
        )
        np.testing.assert_allclose(r["parallel_loss"], r["loss"], rtol=1e-5)
        np.testing.assert_allclose(
            r["parallel_after"], r["after"], atol=1e-4, err_msg=family
        )
        assert not np.allclose(r["after"], r["logits"])  # the step trained
        # JAX prints a PartitionSpec as P(...) (PartitionSpec(...) before).
        spec = str(r["key_kernel_spec"]).replace("PartitionSpec", "P")
        assert spec == "P(None, 'model')"
        state_spec = str(r["state_spec"]).replace("PartitionSpec", "P")
        assert state_spec.startswith("P('batch'")
        assert int(r["state_devices"]) == 4
