"""Importing and using the library keeps heavy imports out of the process.

On JAX and torch, building and calling the layers and models must not
import TensorFlow (≈1.6 s and log lines at start-up; Keras' serialization
imports it wherever it is installed), and ``import keras_infmemory`` must
not import ``keras_hub`` (its KerasHub models load lazily).
"""

import os
import subprocess
import sys

import keras
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = """
import sys

import keras
import numpy as np

import keras_infmemory as ki
from keras_infmemory.models import InfFormerLM

assert "keras_hub" not in sys.modules, "keras_hub imported"


def call(layer, x):
    # Built, then called: on JAX inside one jitted function (the same
    # Python code runs; eagerly JAX compiles each operation on its own,
    # 11 s against 3 s here).
    layer.build(x.shape)
    if keras.backend.backend() == "jax":
        import jax

        return jax.jit(lambda x: layer(x))(x)
    return layer(x)


block = ki.InfFormerBlock(
    num_heads=2, intermediate_dim=16, stm_length=4,
    ltm=ki.ContinuousLTM(2, 4, num_basis=16, num_samples=8),
)
assert call(block, np.zeros((1, 8, 8), "float32")).shape == (1, 8, 8)
lm = InfFormerLM.arm(
    "inf_former", vocabulary_size=10, num_layers=1, hidden_dim=8,
    num_heads=2, intermediate_dim=16, segment_length=4,
    memory_options={"num_basis": 16, "num_samples": 8},
)
assert call(lm, np.zeros((1, 8), "int32")).shape == (1, 8, 10)
assert "tensorflow" not in sys.modules, "tensorflow imported"
from keras_infmemory.models import attach_memory  # lazy
assert "keras_hub" in sys.modules
"""


@pytest.mark.slow
@pytest.mark.skipif(
    keras.backend.backend() == "tensorflow", reason="TensorFlow is the backend"
)
def test_no_tensorflow_and_no_keras_hub_at_import():
    env = dict(os.environ, KERAS_BACKEND=keras.backend.backend())
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
