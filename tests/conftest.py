"""Test set-up shared by every test module.

``KERAS_BACKEND`` must be set before Keras is imported, or Keras falls back
to ``~/.keras/keras.json``. ``make test`` sets it per process; this guard
keeps a bare ``pytest`` honest too.
"""

import os

os.environ.setdefault("KERAS_BACKEND", "jax")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
# The tests compile hundreds of small XLA programs (JAX) and run each a few
# times: XLA's CPU back end compiles them about twice as fast without its
# LLVM optimisations (the same test, 100 s → 51 s of CPU). The processes
# the tests start inherit the flag (`tests.testing.xla_flags`).
if "xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = " ".join(
        os.environ.get("XLA_FLAGS", "").split()
        + ["--xla_backend_optimization_level=0"]
    )

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from hypothesis import HealthCheck, settings  # noqa: E402

# The golden outputs of the authors' code: a subset ships in tests/golden;
# the full recorded set, where present, is named by KERAS_INFMEMORY_REFERENCE
# or sits in the project's shared folder beside the clone (not part of the
# repository; tests/golden/README.md describes both).
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GOLDEN_DIR = os.path.join(os.path.dirname(__file__), "golden")
FULL_GOLDEN_DIR = os.environ.get(
    "KERAS_INFMEMORY_REFERENCE",
    os.path.normpath(
        os.path.join(
            os.path.dirname(__file__), "..", "..", "shared", "reference"
        )
    ),
)


# Hypothesis properties: each example builds a new layer (eager JAX
# compiles its operations anew for each new shape: seconds per example), so
# `make test` and CI (``CI=true``) draw a few examples per run and a plain
# ``pytest`` draws more; ``HYPOTHESIS_PROFILE=ci|dev`` picks one by name.
_EXAMPLES = {"ci": 4, "dev": 15}
for _name, _count in _EXAMPLES.items():
    settings.register_profile(
        _name,
        max_examples=_count,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow],
    )
_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
settings.load_profile(
    os.environ.get("HYPOTHESIS_PROFILE") or ("ci" if _CI else "dev")
)


def pytest_report_header(config):
    return (
        f"keras {keras.__version__}, backend: {keras.backend.backend()}, "
        f"hypothesis profile: {settings.get_current_profile_name()}"
    )


@pytest.fixture(autouse=True)
def _reset_keras_state():
    """Each test starts from float32 and a fixed seed."""
    keras.config.set_dtype_policy("float32")
    keras.utils.set_random_seed(1234)
    np.random.seed(1234)
    yield
    keras.config.set_dtype_policy("float32")


# Tests marked ``one_backend`` check what does not depend on the backend
# (an example's command line, its record and its printed ending, a
# benchmark script's table, a docs page): `make test` runs each of them
# once, in one of its three processes, instead of three times. Their keys
# are dealt out over the backends in turn, in sorted order: the key is the
# test's file (so the module fixtures, one training run shared by a file's
# tests, run once) unless the marker names one (``key="gemma"``: a family's
# tests, wherever they are, run on the same backend). A positional argument
# names the backend instead: ``one_backend("torch")``. What the marked tests
# build on is tested on all three backends. ``INFMEMORY_ALL_BACKENDS=1``
# runs them all on the current backend.
BACKENDS = ("jax", "torch", "tensorflow")


def pytest_collection_modifyitems(config, items):
    if os.environ.get("INFMEMORY_ALL_BACKENDS", "") not in ("", "0"):
        return
    marked = [item for item in items if item.get_closest_marker("one_backend")]
    keys = sorted({_key(item) for item in marked if not _named(item)})
    dealt = {key: BACKENDS[i % len(BACKENDS)] for i, key in enumerate(keys)}
    backend = keras.backend.backend()
    for item in marked:
        chosen = _named(item) or dealt[_key(item)]
        if chosen != backend:
            item.add_marker(
                pytest.mark.skip(
                    reason=f"backend-agnostic: runs once, on {chosen}"
                )
            )


def _key(item):
    marker = item.get_closest_marker("one_backend")
    return marker.kwargs.get("key") or os.path.relpath(item.path, ROOT)


def _named(item):
    args = item.get_closest_marker("one_backend").args
    if args and args[0] not in BACKENDS:
        raise ValueError(
            f"{item.nodeid}: one_backend takes one of {BACKENDS}. "
            f"Received: {args[0]!r}"
        )
    return args[0] if args else None
