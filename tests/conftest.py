"""Test set-up shared by every test module.

``KERAS_BACKEND`` must be set before Keras is imported, or Keras falls back
to ``~/.keras/keras.json``. ``make test`` sets it per process; this guard
keeps a bare ``pytest`` honest too.
"""

import os

os.environ.setdefault("KERAS_BACKEND", "jax")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

# The golden outputs of the authors' code: a subset ships in tests/golden;
# the full recorded set, where present, is named by KERAS_INFMEMORY_REFERENCE
# or sits in the project's shared folder beside the clone (not part of the
# repository; tests/golden/README.md describes both).
GOLDEN_DIR = os.path.join(os.path.dirname(__file__), "golden")
FULL_GOLDEN_DIR = os.environ.get(
    "KERAS_INFMEMORY_REFERENCE",
    os.path.normpath(
        os.path.join(
            os.path.dirname(__file__), "..", "..", "shared", "reference"
        )
    ),
)


def pytest_report_header(config):
    return f"keras {keras.__version__}, backend: {keras.backend.backend()}"


@pytest.fixture(autouse=True)
def _reset_keras_state():
    """Each test starts from float32 and a fixed seed."""
    keras.config.set_dtype_policy("float32")
    keras.utils.set_random_seed(1234)
    np.random.seed(1234)
    yield
    keras.config.set_dtype_policy("float32")
