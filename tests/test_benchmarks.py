"""The benchmarks: compiled steps agree with eager ones, and every script
runs end to end in --quick mode."""

import mmap
import os
import subprocess
import sys

import keras
import numpy as np
import pytest

from tests.testing import to_numpy

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from benchmarks import common  # noqa: E402


def test_step_modes_agree_with_eager():
    """`common.Step` times the same function in every mode: outputs and
    weight gradients of each compiled mode match eager execution."""
    import keras_infmemory as ki

    ltm = ki.ContinuousLTM(
        2, 4, num_basis=16, basis_widths=(0.05, 0.1), num_samples=8
    )
    rng = np.random.default_rng(0)
    x = keras.ops.convert_to_tensor(rng.normal(size=(2, 8, 8)), "float32")
    q = keras.ops.convert_to_tensor(rng.normal(size=(2, 5, 2, 4)), "float32")
    state = ltm.write(x, ltm.get_initial_state(2))
    args = (q, x, state)
    eager = common.Step(ltm, "eager")
    out = to_numpy(eager.forward(*args)[0])
    grads = [to_numpy(g) for g in eager.train(*args)]
    assert len(grads) == len(ltm.trainable_variables)
    assert all(np.any(g != 0) and np.all(np.isfinite(g)) for g in grads)
    for mode in common.COMPILED_MODES[keras.backend.backend()]:
        if mode == "compile":
            continue  # torch.compile: minutes of compilation on 2 cores
        step = common.Step(ltm, mode)
        np.testing.assert_allclose(
            to_numpy(step.forward(*args)[0]), out, rtol=1e-4, atol=1e-5
        )
        for got, expected in zip(step.train(*args), grads, strict=True):
            np.testing.assert_allclose(
                to_numpy(got), expected, rtol=1e-3, atol=1e-5
            )


def test_peak_rss_is_measured():
    """RSS sees a fresh 64 MiB block and the peak covers it. (Whether the
    kernel lets `reset_peak_rss` lower VmHWM depends on the machine: a
    process that once used more keeps its old peak otherwise.)"""
    common.reset_peak_rss()
    before = common.rss_mib()
    assert before > 0
    size = 64 * 2**20
    block = mmap.mmap(-1, size)  # fresh pages, never a reused heap
    block.write(b"\1" * size)  # touch all 64 MiB
    now = common.rss_mib()
    assert now >= before + 32
    assert common.peak_rss_mib() >= now - 1.0
    block.close()


# Run in a fresh process: a long-lived test process's heap may already
# have freed blocks of its own, where the scenario's blocks would go.
_HEAP_SCENARIO = """
import ctypes, sys
sys.path.insert(0, sys.argv[1])
from benchmarks import common

try:
    libc = ctypes.CDLL("libc.so.6")
    libc.malloc_trim
except (OSError, AttributeError):
    print("no-glibc")
    sys.exit()
libc.malloc.restype = ctypes.c_void_p
libc.malloc.argtypes = [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
libc.memset.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_size_t]
# As after a framework's first step: freeing a large block raises glibc's
# mmap threshold, so the next large blocks live on the heap, which keeps
# them once freed below a block still in use.
libc.free(libc.malloc(20 << 20))
blocks = [libc.malloc(16 << 20) for _ in range(4)]
for block in blocks:
    libc.memset(block, 1, 16 << 20)
before = common.rss_mib()
pin = libc.malloc(1 << 20)
for block in blocks:
    libc.free(block)
kept = common.rss_mib()
handed = common.release_free_memory()
print(before, kept, common.rss_mib(), handed)
"""


def test_free_heap_memory_is_handed_back():
    """What the C heap keeps after a free leaves the resident set, so a
    step's peak above it is seen (the model benchmark's step memory)."""
    out = subprocess.run(
        [sys.executable, "-c", _HEAP_SCENARIO, ROOT],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    if out == ["no-glibc"]:
        pytest.skip("no glibc malloc_trim here")
    before, kept, after = map(float, out[:3])
    assert out[3] == "True"
    assert kept > before - 8  # freed, yet still resident
    assert after < kept - 32  # handed back


def once(script, expected):
    """A script run whose checks do not depend on the backend running
    pytest (it names its own): run once (tests/conftest.py)."""
    return pytest.param(
        script, expected, marks=pytest.mark.one_backend, id=script[0]
    )


@pytest.mark.slow
@pytest.mark.parametrize(
    "command, expected",
    [
        once(["ltm_speed.py"], "ratio"),
        once(["context_scaling.py"], "full ÷ ∞-former"),
        # One backend and mode each keeps the smoke test short; the
        # in-process test above covers every backend's modes.
        once(["backends.py", "--backends", "jax", "--modes", "jit"], "÷ JAX"),
        once(["overheads.py", "--backends", "jax"], "block with LTM ÷"),
        # With a short-term memory: every arm, the STM alone included.
        once(
            ["model_overhead.py", "--backends", "jax", "--families", "none"]
            + ["--stm-length", "8"],
            "generation, the STM alone ÷ without",
        ),
        # The probe runs on the backend it is given, JAX in its records
        # (its --diagnose takes JAX gradients).
        pytest.param(
            ["recall_probe.py", "--models", "llama3", "--sampling", "sticky"]
            + ["--diagnose"],
            "| llama3 (normalized) | sticky |",
            marks=pytest.mark.one_backend("jax"),
            id="recall_probe.py",
        ),
    ],
)
def test_benchmark_quick(command, expected):
    script, *options = command
    result = subprocess.run(
        [sys.executable, os.path.join("benchmarks", script), "--quick"]
        + options,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert expected in result.stdout
    table = [line for line in result.stdout.splitlines() if "|" in line]
    assert len(table) >= 3, result.stdout[-3000:]
    assert "nan" not in " ".join(table).lower()


@pytest.mark.slow
@pytest.mark.one_backend
def test_gpu_script_plans_within_budget():
    """benchmarks/gpu.sh parses, its steps fit 8 minutes, and the model
    benchmark accepts the full (GPU) sizes without building anything."""
    script = os.path.join(ROOT, "benchmarks", "gpu.sh")
    assert subprocess.run(["bash", "-n", script]).returncode == 0
    result = subprocess.run(
        ["bash", script, "--dry-run"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env=dict(os.environ, PYTHON=sys.executable),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "total budget" in result.stdout
    assert "train 2 rows × 4 segments of 512" in result.stdout
    assert "prompt 2048 + 256 new" in result.stdout


def test_model_overhead_refuses_a_prompt_off_the_segments():
    from benchmarks import model_overhead

    sizes = dict(model_overhead.SIZES["quick"], generate=(1, 12, 4))
    model_overhead.SIZES["broken"] = sizes
    try:
        with pytest.raises(ValueError, match="whole segments of 8"):
            model_overhead.check_sizes("broken", [])
    finally:
        del model_overhead.SIZES["broken"]


def test_lm_diagnosis_table():
    """The record's table: one row per variant, layer pairs, a dash for
    what an arm without LTM lacks."""
    from benchmarks import lm_diagnosis

    final = {
        "mu_std": [0.001, 0.04],
        "variance_mean": [0.693, 0.01],
        "ltm_rms": [0.002, 0.5],
        "attention_rms": [1.0, 1.0],
        "gradient_norms": {"mu_kernel": [1e-8, 2e-4]},
    }
    common_ = {"final_train_loss": 5.4, "seconds": 60.0}
    record = {
        "steps": 150,
        "seed": 0,
        "eval_steps": 64,
        "results": [
            {
                "variant": "defaults",
                "perplexity": 150.0,
                "perplexity_without_ltm": 151.5,
                "final": final,
                **common_,
            },
            {
                "variant": "Transformer-XL",
                "perplexity": 152.0,
                "perplexity_without_ltm": None,
                "final": {},
                **common_,
            },
        ],
    }
    lines = lm_diagnosis.table(record).splitlines()
    defaults = next(line for line in lines if line.startswith("| defaults"))
    assert "| 150.00 | 151.50 | +1.50 | 0.693 \\| 0.01 |" in defaults
    assert "| 0.002 \\| 0.5 |" in defaults  # LTM / attention RMS
    assert "| 1e-08 \\| 0.0002 | — | — |" in defaults  # missing gradients
    xl = next(line for line in lines if line.startswith("| Transformer-XL"))
    assert xl.count("—") == 8


@pytest.mark.slow
@pytest.mark.one_backend
def test_sticky_sorting_restores_into_the_other_sampler():
    """`sticky_sorting.restore` moves a trained model's weights and
    optimizer (step counter, Adam moments) into the arm with the other
    sampler, which then continues training; the table has one row per
    training with mean ± std over seeds."""
    from benchmarks import sticky_sorting
    from experiments import sorting

    recipe = sorting.Recipe.from_scale("cpu", quick=True, lengths=[24], steps=4)
    uniform = sorting.build_model("inf_former", recipe)
    data = sorting.make_datasets(24, uniform.segment_length, recipe)
    half = sticky_sorting.Batches(data["train"], 0, 2)
    assert len(half) == 2
    uniform.fit(half, epochs=1, verbose=0)
    saved = sticky_sorting.snapshot(uniform)
    sticky = sorting.build_model("sticky", recipe)
    sticky_sorting.restore(sticky, saved, data["train"][0])
    assert int(to_numpy(sticky.optimizer.iterations)) == 2
    for got, expected in zip(
        sticky.get_weights(), saved["weights"], strict=True
    ):
        np.testing.assert_array_equal(got, expected)
    sticky.fit(sticky_sorting.Batches(data["train"], 2, 4), verbose=0)
    assert int(to_numpy(sticky.optimizer.iterations)) == 4
    row = {"training": "uniform", "accuracy_read_uniform": 0.25}
    record = {
        "results": [
            {**row, "seed": 0, "accuracy_read_sticky": 0.2},
            {**row, "seed": 1, "accuracy_read_sticky": 0.3},
        ]
    }
    lines = sticky_sorting.table(record).splitlines()
    assert lines[2] == (
        "| uniform | 0.250 ± 0.000 | 0.250 ± 0.050 | "
        "0.250 / 0.200, 0.250 / 0.300 |"
    )


@pytest.mark.slow
@pytest.mark.one_backend("jax")
def test_retrieval_focus_records_reads_and_memory_off(tmp_path):
    """`retrieval_focus.py` on a tiny ∞-former: one entry with its command,
    the curve, each LTM layer's reads against the needle (finite, σ²
    above the floor, the needle's share ÷ room positive), the gradient
    norms (JAX) and the evaluation with the LTM off."""
    import json

    output = tmp_path / "focus.json"
    tiny = '{"num_layers": 1, "hidden_dim": 16, "num_heads": 2, '
    tiny += '"intermediate_dim": 32}'
    result = subprocess.run(
        [sys.executable, os.path.join("benchmarks", "retrieval_focus.py")]
        + ["--arm", "inf_former", "--lengths", "128", "--steps", "2"]
        + ["--every", "2", "--batch-size", "2", "--eval-batches", "1"]
        + ["--model", tiny, "--ltm", '{"num_basis": 16, "num_samples": 16}']
        + ["--output", str(output)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        env=dict(os.environ, KERAS_BACKEND="jax", PYTHONPATH=ROOT),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    (entry,) = json.loads(output.read_text())
    assert '--ltm \'{"num_basis": 16' in entry["command"]
    (point,) = entry["curve"]
    assert point["step"] == 2 and 0.0 <= point["exact_mean"] <= 1.0
    (layer,) = point["reads"]["layers"]
    assert layer["variance_mean"] > 1e-6
    assert 0.0 <= layer["mu_saturated"] <= 1.0
    assert np.isfinite(layer["mu_minus_needle_mean"])
    assert layer["needle_focus"] > 0 and layer["needle_focus_best_head"] > 0
    assert set(point["reads"]["gradient_norms"]) >= {
        "mu_kernel",
        "sigma_kernel",
    }
    assert set(entry["memory_off"]["cells"]) == set(point["cells"])
