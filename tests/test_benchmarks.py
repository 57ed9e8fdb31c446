"""Smoke test: the benchmarks run end to end in --quick mode."""

import os
import subprocess
import sys

import keras
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.skipif(
    keras.backend.backend() != "jax",
    reason="starts one process per backend itself; run once",
)
@pytest.mark.parametrize("script", ["ltm_speed.py"])
def test_benchmark_quick(script):
    result = subprocess.run(
        [sys.executable, os.path.join("benchmarks", script), "--quick"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "ratio" in result.stdout
