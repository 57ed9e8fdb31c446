"""Test set-up shared by every test module.

``KERAS_BACKEND`` must be set before Keras is imported, or Keras falls back
to ``~/.keras/keras.json``. ``make test`` sets it per process; this guard
keeps a bare ``pytest`` honest too.
"""

import os

os.environ.setdefault("KERAS_BACKEND", "jax")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
# The tests compile hundreds of small XLA programs (JAX; eager JAX compiles
# each operation anew for each new shape) and run each a few times: XLA's
# CPU back end compiles them faster without its LLVM optimisations (the
# same test, 100 s → 51 s of CPU) and with its older, simpler fusion
# emitters (a tiny Llama 3's first eager call: 13.3 s → 8.2 s; a small
# op's compilation: 64 → 36 ms of CPU). The processes the tests start
# inherit the flags (`tests.testing.xla_flags`).
_FAST_COMPILE = {
    "xla_backend_optimization_level": "0",
    "xla_cpu_use_fusion_emitters": "false",
}
_flags = os.environ.get("XLA_FLAGS", "").split()
for _name, _value in _FAST_COMPILE.items():
    if not any(flag.startswith(f"--{_name}=") for flag in _flags):
        _flags.append(f"--{_name}={_value}")
os.environ["XLA_FLAGS"] = " ".join(_flags)

# NumPy's BLAS on one thread: on two cores shared by two pytest workers
# (and the compiler's threads), OpenBLAS's threads wait on each other; one
# test's NumPy bound (512 × 512 eigenvalues, tests/test_long_streams.py)
# took 32.8 s on two threads and 0.5 s on one. Set before NumPy loads; the
# Makefile sets it too.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

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
# once, in one of its three processes, instead of three times. A bare
# marker runs the test on `ONCE_ON`, the backend that runs these small
# end-to-end jobs fastest (most of their time is compilation: the sorting
# example's quick runs take 66 s on torch and 130 s on JAX here, the
# `InfFormerLM` tests 70 s on torch, 198 s on JAX and 315 s on TensorFlow).
# A positional argument names the backend instead:
# ``one_backend("jax")``. A ``key`` deals the keyed tests out over the
# backends in turn, in sorted order (``key="gemma"``: a KerasHub family's
# tests run on one backend, and the families are spread over the three).
# What the marked tests build on is tested on all three backends.
# ``INFMEMORY_ALL_BACKENDS=1`` runs them all on the current backend.
BACKENDS = ("jax", "torch", "tensorflow")
ONCE_ON = "torch"
# The keyed tests are dealt starting from TensorFlow, the shortest of the
# three processes, and ending with JAX, the longest: eager JAX compiles
# every operation anew for each shape (a tiny Gemma's tests: 156 s on JAX,
# about 40 s on torch or TensorFlow), so the fourth key, not the first,
# lands on JAX.
DEAL_ORDER = ("tensorflow", "torch", "jax")


def pytest_collection_modifyitems(config, items):
    if os.environ.get("INFMEMORY_ALL_BACKENDS", "") in ("", "0"):
        _run_once(items)
    _longest_files_first(items)


def _run_once(items):
    marked = [item for item in items if item.get_closest_marker("one_backend")]
    keys = sorted({_key(item) for item in marked if _key(item)})
    dealt = {key: DEAL_ORDER[i % len(DEAL_ORDER)] for i, key in enumerate(keys)}
    backend = keras.backend.backend()
    for item in marked:
        chosen = _named(item) or dealt.get(_key(item), ONCE_ON)
        if chosen != backend:
            item.add_marker(
                pytest.mark.skip(
                    reason=f"backend-agnostic: runs once, on {chosen}"
                )
            )


def _key(item):
    return item.get_closest_marker("one_backend").kwargs.get("key")


def _named(item):
    args = item.get_closest_marker("one_backend").args
    if args and args[0] not in BACKENDS:
        raise ValueError(
            f"{item.nodeid}: one_backend takes one of {BACKENDS}. "
            f"Received: {args[0]!r}"
        )
    return args[0] if args else None


def _longest_files_first(items):
    """Files with more tests marked ``slow`` first (stable otherwise):
    pytest-xdist hands out whole files (``--dist loadfile``) in this
    order, so the long ones start early and the two workers finish
    together instead of one waiting on a long file dealt last."""
    slow = {}
    for item in items:
        count = slow.setdefault(item.path, 0)
        runs = not any(m.name == "skip" for m in item.iter_markers())
        if runs and item.get_closest_marker("slow"):
            slow[item.path] = count + 1
    items.sort(key=lambda item: -slow[item.path])
