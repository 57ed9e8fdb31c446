"""Overheads: what the long-term memory and sticky memories cost.

    python benchmarks/overheads.py            # paper sorting config
    python benchmarks/overheads.py --quick    # tiny, for the smoke test

At the paper's sorting configuration (`backends.CONFIGS["sorting"]`),
on every backend in its compiled mode (JAX ``jax.jit``, TensorFlow
``tf.function(jit_compile=True)``, torch eager), each in its own process:

1. an `InfFormerBlock` segment step with the LTM vs the same block without
   it (Transformer-XL with the same STM), forward and forward+backward
   (target ≤ 1.25×);
2. a `ContinuousLTM` write with sticky memories (quantile and the
   authors' categorical placement) vs the uniform write (target ≤ 1.3×);
   and the whole call (write + read; with sticky memories the read also
   accumulates the bin histogram).

Ratios are measured side by side in one process. Writes
``benchmarks/results/overheads.{json,md,png}``.
"""

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import backends as bench_backends  # noqa: E402
from benchmarks import common  # noqa: E402

MODE = {"jax": "jit", "tensorflow": "xla", "torch": "eager"}


class _Write:
    """Wraps ``ltm.write`` as a layer call returning ``(state, state)``."""

    def __new__(cls, ltm):
        import keras

        class Write(keras.layers.Layer):
            def __init__(self, ltm, **kwargs):
                super().__init__(**kwargs)
                self.ltm = ltm
                self.built = True

            def call(self, x, state):
                new_state = self.ltm.write(x, state)
                return new_state["coefficients"], new_state

        return Write(ltm)


def worker(name, repeats, out):
    import keras
    import numpy as np

    import keras_infmemory as ki

    backend = keras.backend.backend()
    mode = MODE[backend]
    cfg = bench_backends.CONFIGS[name]
    batch, hidden, heads = cfg["batch"], cfg["hidden"], cfg["heads"]
    length, head_dim = cfg["segment"], hidden // heads
    rng = np.random.default_rng(0)

    def tensor(*shape):
        x = rng.normal(size=shape).astype("float32")
        return keras.ops.convert_to_tensor(x)

    def timed(cases, train=True):
        """{label: (layer, args)} -> {label: row}, timed in turns."""
        steps = {k: common.Step(layer, mode) for k, (layer, _) in cases.items()}
        rows = {k: {} for k in cases}
        whats = [("fwd_s", "forward")] + ([("fwd_bwd_s", "train")] * train)
        for key, method in whats:
            fns = {
                k: (lambda s=s, a=cases[k][1], m=method: getattr(s, m)(*a))
                for k, s in steps.items()
            }
            for k, value in common.measure_interleaved(fns, repeats).items():
                rows[k][key] = value
        for k, row in rows.items():
            print(backend, k, row, flush=True)
        return rows

    results = {}
    keras.utils.set_random_seed(0)
    # 1. Block with and without LTM (plus with sticky memories).
    blocks = {}
    block_cases = [("block_xl", None), ("block_inf", cfg["ltm"])]
    write_cases = [("uniform", None), ("sticky_quantile", "quantile")]
    if name != "quick":  # the smoke test skips what adds no new code path
        block_cases.append(("block_sticky", "sticky"))
        write_cases.append(("sticky_categorical", "categorical"))
    for label, memory_options in block_cases:
        ltm = None
        if memory_options is not None:
            sticky = None
            if memory_options == "sticky":
                sticky = ki.StickyMemorySampler(mode="quantile")
            ltm = ki.ContinuousLTM(heads, head_dim, sticky=sticky, **cfg["ltm"])
        block = ki.InfFormerBlock(
            heads,
            cfg["ffn"],
            stm_length=cfg["stm"],
            ltm=ltm,
            segment_length=length,
            normalize_first=cfg["normalize_first"],
        )
        block.build((None, length, hidden))
        state = block.get_initial_state(batch)
        for _ in range(3):
            _, state = block(tensor(batch, length, hidden), state)
        blocks[label] = (block, (tensor(batch, length, hidden), state))
    results.update(timed(blocks))

    # 2. Writes and whole calls: uniform vs sticky.
    x = tensor(batch, length, hidden)
    q = tensor(batch, length, heads, head_dim)
    writes, calls = {}, {}
    for label, sticky_mode in write_cases:
        sticky = None
        if sticky_mode:
            sticky = ki.StickyMemorySampler(mode=sticky_mode, seed=0)
        ltm = ki.ContinuousLTM(heads, head_dim, sticky=sticky, **cfg["ltm"])
        state = ltm.get_initial_state(batch)
        for _ in range(2):  # a memory, and a histogram from one read
            _, state = ltm(q, x, state)
        writes[f"write_{label}"] = (_Write(ltm), (x, state))
        calls[f"call_{label}"] = (ltm, (q, x, state))
    results.update(timed(writes, train=False))
    results.update(timed(calls))
    with open(out, "w") as f:
        json.dump(results, f)


ROWS = (
    # label, numerator, denominator, target
    ("block with LTM ÷ without (XL)", "block_inf", "block_xl", 1.25),
    ("block with sticky LTM ÷ without", "block_sticky", "block_xl", None),
    (
        "sticky write (quantile) ÷ uniform write",
        "write_sticky_quantile",
        "write_uniform",
        1.3,
    ),
    (
        "sticky write (categorical) ÷ uniform write",
        "write_sticky_categorical",
        "write_uniform",
        1.3,
    ),
    (
        "sticky call (quantile) ÷ uniform call",
        "call_sticky_quantile",
        "call_uniform",
        None,
    ),
    (
        "sticky call (categorical) ÷ uniform call",
        "call_sticky_categorical",
        "call_uniform",
        None,
    ),
)


def report(results, name, repeats, load, command, quick):
    header = ["overhead", "target"]
    for backend in results:
        header += [f"{backend} ({MODE[backend]}) fwd", "fwd+bwd"]
    rows = []
    for label, num, den, target in ROWS:
        row = [label, f"≤ {target}×" if target else "-"]
        if any(num not in r for r in results.values()):
            continue
        for r in results.values():
            for key in ("fwd_s", "fwd_bwd_s"):
                a, b = r[num].get(key), r[den].get(key)
                row.append("-" if a is None else f"{a / b:.2f}")
        rows.append(row)
    table = common.markdown_table(header, rows)
    times_header = ["measurement"]
    for backend in results:
        times_header += [f"{backend} fwd ms", "fwd+bwd ms"]
    times = []
    for key in next(iter(results.values())):
        row = [key]
        for r in results.values():
            for what in ("fwd_s", "fwd_bwd_s"):
                value = r[key].get(what)
                row.append("-" if value is None else f"{value * 1e3:.1f}")
        times.append(row)
    times_table = common.markdown_table(times_header, times)
    print(table)
    print(times_table)
    out_dir = common.output_dir(quick)
    common.write_record(
        out_dir,
        "overheads",
        command,
        load,
        config=bench_backends.CONFIGS[name],
        results=results,
    )
    png, link = common.figure_path(out_dir, "overheads")
    _plot(results, png)
    with open(os.path.join(out_dir, "overheads.md"), "w") as f:
        f.write(
            "# Overheads\n\n"
            f"Command: `{command}` on {common.machine()}, float32, medians "
            f"of {repeats} repeats. Load average (1/5/15 min) at start "
            f"{load[0]}, at end {load[1]}.\n\n"
            f"Config `{name}`: "
            f"{bench_backends._describe(bench_backends.CONFIGS[name])}. "
            "Block step = one segment with full STM and LTM state; write = "
            "`ContinuousLTM.write` into a memory that holds one segment "
            "(sticky: with the histogram of one read); call = write, then "
            "read with one query per token (sticky: the read also adds its "
            "bin masses to the histogram).\n\n"
            "Ratios (same process, side by side):\n\n"
            + table
            + "\n\nTimes:\n\n"
            + times_table
            + f"\n\n![overheads]({link})\n"
        )


def _plot(results, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(10, 4))
    width = 0.8 / (2 * len(results))
    for i, (backend, r) in enumerate(results.items()):
        for j, key in enumerate(("fwd_s", "fwd_bwd_s")):
            values = [
                r[num][key] / r[den][key]
                if key in r.get(num, {})
                else float("nan")
                for _, num, den, _ in ROWS
            ]
            offset = (2 * i + j) * width - 0.4 + width / 2
            ax.bar(
                [k + offset for k in range(len(ROWS))],
                values,
                width,
                label=f"{backend} {'fwd' if j == 0 else 'fwd+bwd'}",
            )
    for k, (_, _, _, target) in enumerate(ROWS):
        if target:
            ax.plot([k - 0.45, k + 0.45], [target] * 2, "k--", lw=1)
    ax.axhline(1.0, color="k", lw=0.6)
    ax.set_xticks(
        range(len(ROWS)),
        [label.replace(" ÷ ", "\n÷ ") for label, *_ in ROWS],
        fontsize=6,
    )
    ax.set_ylabel("time ratio")
    ax.legend(fontsize=7, ncol=3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--backends", default="jax,torch,tensorflow")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--worker", action="store_true")
    parser.add_argument("--out")
    args = parser.parse_args()
    name = "quick" if args.quick else "sorting"
    repeats = 2 if args.quick else args.repeats
    if args.worker:
        worker(name, repeats, args.out)
        return
    command = "python benchmarks/overheads.py " + " ".join(sys.argv[1:])
    load_start = common.loadavg()
    extra = ["--repeats", str(repeats)] + (["--quick"] if args.quick else [])
    results = common.run_workers(
        os.path.abspath(__file__),
        extra,
        tuple(args.backends.split(",")),
        timeout=3600,
    )
    load = (load_start, common.loadavg())
    report(results, name, repeats, load, command.strip(), args.quick)


if __name__ == "__main__":
    main()
