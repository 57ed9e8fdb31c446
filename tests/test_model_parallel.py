"""Model parallelism for the KerasHub models with memory (JAX): the family's
KerasHub layout map plus the LTM layout, on 4 simulated CPU devices (a
2 × 2 batch × model mesh), gives one device's logits and training step; the
LTM's K/V/O kernels are sharded along the model axis and the memory state
along the batch axis. The flag that makes 4 devices must be set before JAX
starts, so the case runs in its own process (`tests.model_parallel_case`).
"""

import keras
import numpy as np
import pytest

from tests.testing import run_on_devices

# One family: the layout map is the family's KerasHub map plus the LTM's
# (the same code for every family); Llama 3's is the one docs/causal_lms.md
# shows. A second family doubled the test's time (≈ 45 s on 2 cores).
FAMILIES = ("llama3",)


@pytest.mark.slow
@pytest.mark.skipif(
    keras.backend.backend() != "jax", reason="keras.distribution is JAX-only"
)
def test_model_parallel_equals_one_device():
    result = run_on_devices("tests.model_parallel_case", *FAMILIES)
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
