"""Data parallel on 4 (simulated CPU) devices = one device, state sharded.

The JAX process starts `tests.data_parallel_case` with
``XLA_FLAGS=--xla_force_host_platform_device_count=4``: the flag must be
set before JAX starts, so it runs in its own process. Torch and TensorFlow
check that `data_parallel` refuses them clearly.
"""

import keras
import numpy as np
import pytest

from keras_infmemory.distribution import data_parallel
from tests.testing import run_on_devices


@pytest.mark.slow
@pytest.mark.skipif(
    keras.backend.backend() != "jax", reason="keras.distribution is JAX-only"
)
def test_data_parallel_step_equals_one_device():
    result = run_on_devices("tests.data_parallel_case", 4, timeout=600)
    assert int(result["num_devices"]) == 4
    # Same loss and the same updated weights, up to float32 reduction order.
    np.testing.assert_allclose(
        result["parallel_losses"], result["single_losses"], rtol=1e-5
    )
    assert float(result["max_weight_change"]) > 1e-3  # the steps did train
    assert float(result["max_weight_difference"]) < 1e-4
    # The memory state is split along the batch: 8 rows, 2 per device.
    assert int(result["state_devices"]) == 4
    assert result["state_rows_per_device"].tolist() == [2]
    assert "batch" in str(result["state_spec"])


@pytest.mark.skipif(keras.backend.backend() == "jax", reason="JAX supported")
def test_data_parallel_refuses_other_backends():
    backend = keras.backend.backend()
    with pytest.raises(ValueError, match=f"Received: backend='{backend}'"):
        data_parallel()


@pytest.mark.skipif(keras.backend.backend() != "jax", reason="JAX only")
@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"num_devices": 0}, "num_devices=0"),
        ({"num_devices": 1000}, "num_devices=1000"),
        ({"num_devices": 2.0}, "num_devices=2.0"),
        ({"device_type": "npu"}, "device_type='npu'"),
    ],
)
def test_data_parallel_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        data_parallel(**kwargs)
    assert keras.distribution.distribution() is None
