"""Shared benchmark plumbing: timing, per-backend workers, tables."""

import json
import os
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(ROOT, "benchmarks", "results")
BACKENDS = ("torch", "jax", "tensorflow")


def measure(fn, repeats=10, warmup=2, min_time=0.0):
    """Median wall time of ``fn()`` in seconds (``fn`` must block)."""
    for _ in range(warmup):
        fn()
    times = []
    start = time.perf_counter()
    while len(times) < repeats or time.perf_counter() - start < min_time:
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def block(value):
    """Waits for asynchronous backends (JAX) to finish computing."""
    import keras

    def wait(x):
        if hasattr(x, "block_until_ready"):
            x.block_until_ready()
        return x

    return keras.tree.map_structure(wait, value)


def run_workers(script, args, backends=BACKENDS, timeout=1800):
    """Runs ``script --worker`` once per backend, each in its own process,
    and returns {backend: parsed JSON}."""
    results = {}
    for backend in backends:
        out = os.path.join(RESULTS, f".{os.path.basename(script)}.{backend}")
        env = dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="3")
        command = [sys.executable, script, "--worker", "--out", out, *args]
        subprocess.run(command, env=env, check=True, timeout=timeout, cwd=ROOT)
        with open(out) as f:
            results[backend] = json.load(f)
        os.remove(out)
    return results


def machine():
    """A one-line description of where the numbers were measured."""
    import platform

    cpu = platform.processor() or platform.machine()
    return f"{platform.node()} {cpu}, {os.cpu_count()} cores"


def markdown_table(header, rows):
    lines = ["| " + " | ".join(header) + " |"]
    lines.append("|" + "---|" * len(header))
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)
