"""Shared benchmark plumbing: timing, per-backend workers, tables."""

import json
import os
import statistics
import subprocess
import sys
import time

from experiments.records import markdown_table  # noqa: F401 (re-exported)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(ROOT, "benchmarks", "results")
BACKENDS = ("torch", "jax", "tensorflow")


def output_dir(quick):
    """Where a run writes its JSON/PNG/Markdown: ``benchmarks/results`` (or
    the folder in ``$BENCHMARK_RESULTS``, e.g. ``benchmarks/gpu.sh``'s
    ``benchmarks/results/gpu``), or a scratch folder for ``--quick`` runs
    (which only check the plumbing)."""
    if not quick:
        path = os.environ.get("BENCHMARK_RESULTS") or RESULTS
        os.makedirs(path, exist_ok=True)
        return path
    import tempfile

    path = os.path.join(tempfile.gettempdir(), "keras_infmemory_benchmarks")
    os.makedirs(path, exist_ok=True)
    return path


def figure_path(out_dir, name):
    """Where a run's plot goes: ``(file, Markdown link from out_dir)``.

    The records in ``benchmarks/results`` show the figure that the docs
    serve (``docs/performance/<name>.png``: mkdocs serves only ``docs/``),
    one copy; any other run (``gpu.sh``, ``--quick``) keeps its plot beside
    its files.
    """
    if os.path.abspath(out_dir) == os.path.abspath(RESULTS):
        path = os.path.join(ROOT, "docs", "performance", f"{name}.png")
    else:
        path = os.path.join(out_dir, f"{name}.png")
    return path, os.path.relpath(path, out_dir).replace(os.sep, "/")


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


def measure_interleaved(fns, repeats=10, warmup=2):
    """Median wall times of several ``fns`` (a dict of name -> callable),
    run in turns (A, B, A, B, ...) so that a changing machine load hits
    them alike. Returns {name: seconds}."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    LAST_TIMES.clear()
    LAST_TIMES.update(times)
    return {name: statistics.median(t) for name, t in times.items()}


LAST_TIMES = {}  # every time of the last measure_interleaved, by name


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


def write_record(out_dir, name, command, load, **fields):
    """Writes ``<out_dir>/<name>.json``: ``fields`` plus what every record
    keeps (the machine, the command, the load average at start and end)."""
    payload = {
        "machine": machine(),
        "command": command,
        "load_start": load[0],
        "load_end": load[1],
        **fields,
    }
    with open(os.path.join(out_dir, f"{name}.json"), "w") as f:
        json.dump(payload, f, indent=1)
    return payload


# ---------------------------------------------------------------------------
# Machine state: load and memory
# ---------------------------------------------------------------------------


def loadavg():
    """The 1-, 5- and 15-minute load averages, from /proc/loadavg."""
    with open("/proc/loadavg") as f:
        return [float(v) for v in f.read().split()[:3]]


def _status_kib(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def rss_mib():
    """Resident set size of this process now (VmRSS), MiB."""
    return _status_kib("VmRSS") / 1024.0


def peak_rss_mib():
    """Peak resident set size (VmHWM) since the last `reset_peak_rss`."""
    return _status_kib("VmHWM") / 1024.0


def release_free_memory():
    """Hands the C heap's free memory back to the system (glibc
    ``malloc_trim``), so that the resident set counts live memory only.

    Without it an allocator that keeps what an earlier step freed hides a
    later step's peak (its resident set no longer grows). Returns False
    where there is no glibc to ask.
    """
    import ctypes

    try:
        trim = ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return False
    trim(0)
    return True


def reset_peak_rss():
    """Resets VmHWM to the current RSS (Linux: 5 > /proc/self/clear_refs).

    Returns False where the kernel refuses; VmHWM is then the peak since
    the process started.
    """
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


# ---------------------------------------------------------------------------
# Models and compiled steps, the same code on every backend
# ---------------------------------------------------------------------------


def make_stack(num_layers, hidden, heads, ffn, segment, stm, ltm=None):
    """A `BlockStack` of InfFormerBlocks (``ltm``: dict of ContinuousLTM
    arguments, or None for Transformer-XL / windowed blocks)."""
    import keras_infmemory as ki

    blocks = []
    for _ in range(num_layers):
        memory = None
        if ltm is not None:
            memory = ki.ContinuousLTM(heads, hidden // heads, **ltm)
        blocks.append(
            ki.InfFormerBlock(
                heads,
                ffn,
                stm_length=stm,
                ltm=memory,
                segment_length=segment,
                normalize_first=True,
            )
        )
    stack = _block_stack_class()(blocks)
    stack.build((None, segment, hidden))
    return stack


def _block_stack_class():
    import keras

    class BlockStack(keras.layers.Layer):
        """Blocks applied in turn to one segment; the state is a list."""

        def __init__(self, blocks, **kwargs):
            super().__init__(**kwargs)
            self.blocks = blocks

        def build(self, input_shape):
            for block in self.blocks:
                block.build(input_shape)
            self.built = True

        def get_initial_state(self, batch):
            return [b.get_initial_state(batch) for b in self.blocks]

        def call(self, x, state):
            new_state = []
            for block, block_state in zip(self.blocks, state, strict=True):
                x, block_state = block(x, block_state)
                new_state.append(block_state)
            return x, new_state

    return BlockStack


class Step:
    """Forward and forward+backward of ``layer(*args)`` on this backend.

    ``layer(*args)`` must return ``(output, state)``. ``mode``:

    * ``"eager"``: op by op (torch forward under ``no_grad``);
    * ``"jit"`` (JAX): ``jax.jit`` of ``stateless_call``;
    * ``"graph"`` / ``"xla"`` (TensorFlow): ``tf.function`` without / with
      ``jit_compile=True``;
    * ``"compile"`` (torch): ``torch.compile`` of the same closures.

    ``forward(*args)`` returns ``(output, state)`` computed; ``train(*args)``
    the gradients of ``sum(output) + layer losses`` (the LTM's KL term)
    with respect to the trainable weights. Both block until done.
    """

    def __init__(self, layer, mode):
        import keras

        self.layer, self.mode = layer, mode
        self.backend = keras.backend.backend()
        build = getattr(self, f"_{self.backend}")
        self.forward, self.train = build(layer, mode)

    @staticmethod
    def _jax(layer, mode):
        import jax
        import jax.numpy as jnp

        trainable = [v.value for v in layer.trainable_variables]
        fixed = [v.value for v in layer.non_trainable_variables]

        def forward(trainable, *args):
            out, _ = layer.stateless_call(trainable, fixed, *args)
            return out

        def loss(trainable, *args):
            out, _, losses = layer.stateless_call(
                trainable, fixed, *args, return_losses=True
            )
            total = jnp.sum(out[0].astype("float32"))
            for extra in losses:
                total = total + extra
            return total

        grad = jax.grad(loss)
        if mode == "jit":
            forward, grad = jax.jit(forward), jax.jit(grad)
        elif mode != "eager":
            raise ValueError(f"mode {mode!r} not on jax")
        return (
            lambda *a: block(forward(trainable, *a)),
            lambda *a: block(grad(trainable, *a)),
        )

    @staticmethod
    def _tensorflow(layer, mode):
        import tensorflow as tf

        variables = layer.trainable_variables

        def forward(*args):
            return layer(*args)

        def grad(*args):
            with tf.GradientTape() as tape:
                out, _ = layer(*args)
                total = tf.reduce_sum(tf.cast(out, "float32"))
                for extra in layer.losses:
                    total = total + extra
            return tape.gradient(total, [v.value for v in variables])

        if mode in ("graph", "xla"):
            jit = mode == "xla"
            forward = tf.function(forward, jit_compile=jit)
            grad = tf.function(grad, jit_compile=jit)
        elif mode != "eager":
            raise ValueError(f"mode {mode!r} not on tensorflow")

        def materialize(value):
            return tf.nest.map_structure(lambda t: t.numpy(), value)

        return (
            lambda *a: materialize(forward(*a)),
            lambda *a: materialize(grad(*a)),
        )

    @staticmethod
    def _torch(layer, mode):
        import torch

        def forward(*args):
            with torch.no_grad():
                return layer(*args)

        def grad(*args):
            layer.zero_grad(set_to_none=True)
            out, _ = layer(*args)
            total = out.float().sum()
            for extra in layer.losses:
                total = total + extra
            total.backward()
            return [v.value.grad for v in layer.trainable_variables]

        if mode == "compile":
            forward = torch.compile(forward)
            grad = torch.compile(grad)
        elif mode != "eager":
            raise ValueError(f"mode {mode!r} not on torch")
        return forward, grad


COMPILED_MODES = {"jax": ("jit",), "tensorflow": ("graph", "xla")}
COMPILED_MODES["torch"] = ("compile",)
