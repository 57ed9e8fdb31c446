"""ContinuousLTM speed: every backend, eager and compiled, vs the literal
PyTorch implementation of the authors' algorithm.

    python benchmarks/ltm_speed.py            # GPT-2 and sorting configs
    python benchmarks/ltm_speed.py --quick    # tiny, for the smoke test

Each backend runs in its own process. One call = write a segment into a
memory that already holds one, then read it with Lq queries (the authors'
module does exactly this per block). Prints a table of median times and of
ratios to the literal torch module measured in the same run, and writes
``benchmarks/results/ltm_speed.{json,md,png}``.
"""

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import common  # noqa: E402

CONFIGS = {
    # name: batch, heads, key_dim, L, Lq, N, widths, ridge, tau, M
    "gpt2": (1, 12, 64, 512, 512, 512, (0.005, 0.01), 0.5, 0.5, 512),
    "sorting": (8, 6, 50, 1024, 1024, 512, (0.01, 0.05), 1.0, 0.75, 512),
    "quick": (2, 2, 8, 32, 32, 32, (0.02, 0.05), 0.5, 0.5, 16),
}


def worker(names, repeats, out, torch_threads=None):
    import keras
    import numpy as np

    import keras_infmemory as ki

    backend = keras.backend.backend()
    if backend == "torch" and torch_threads:
        import torch

        torch.set_num_threads(torch_threads)
    results = {}
    for name in names:
        batch, h, d, length, lq, n, widths, ridge, tau, m = CONFIGS[name]
        e = h * d
        rng = np.random.default_rng(0)
        x = rng.normal(size=(batch, length, e)).astype("float32")
        q = rng.normal(size=(batch, lq, h, d)).astype("float32")
        geometry = dict(
            num_basis=n,
            basis_widths=widths,
            ridge_penalty=ridge,
            tau=tau,
            num_samples=m,
        )
        layer = ki.ContinuousLTM(h, d, **geometry)
        state = layer.write(x, layer.get_initial_state(batch))
        timings = {}
        timings.update(_time_ours(backend, layer, q, x, state, repeats))
        if backend == "torch":
            # The same layer recomputing the read's r in the backward
            # (`remat_read=True`): memory against time.
            remat = ki.ContinuousLTM(h, d, remat_read=True, **geometry)
            remat.set_weights(layer.get_weights())
            remat_timings = _time_ours(backend, remat, q, x, state, repeats)
            timings.update({f"remat {k}": v for k, v in remat_timings.items()})
            timings.update(
                _time_literal(
                    h, d, length, n, widths, ridge, tau, m, q, x, repeats
                )
            )
        results[name] = timings
        print(
            name,
            backend,
            {k: f"{v * 1e3:.1f} ms" for k, v in timings.items()},
            flush=True,
        )
    with open(out, "w") as f:
        json.dump(results, f)


def _time_ours(backend, layer, q, x, state, repeats):
    import keras
    from keras import ops

    q, x = ops.convert_to_tensor(q), ops.convert_to_tensor(x)
    timings = {}
    if backend == "torch":
        import torch

        def forward():
            with torch.no_grad():
                return layer(q, x, state)[0]

        def backward():
            out, _ = layer(q, x, state)
            ops.sum(out).backward()

        timings["eager fwd"] = common.measure(forward, repeats)
        timings["eager fwd+bwd"] = common.measure(backward, repeats)
    elif backend == "jax":
        import jax

        trainable = [v.value for v in layer.trainable_variables]
        fixed = [v.value for v in layer.non_trainable_variables]

        def loss(trainable, q, x, state):
            (out, _), _ = layer.stateless_call(trainable, fixed, q, x, state)
            return out.sum()

        def forward_fn(trainable, q, x, state):
            (out, _), _ = layer.stateless_call(trainable, fixed, q, x, state)
            return out

        jit_forward = jax.jit(forward_fn)
        jit_backward = jax.jit(jax.grad(loss))
        timings["eager fwd"] = common.measure(
            lambda: common.block(layer(q, x, state)[0]), repeats
        )
        timings["jit fwd"] = common.measure(
            lambda: common.block(jit_forward(trainable, q, x, state)), repeats
        )
        timings["jit fwd+bwd"] = common.measure(
            lambda: common.block(jit_backward(trainable, q, x, state)),
            repeats,
        )
    else:
        import tensorflow as tf

        variables = [v.value for v in layer.trainable_variables]

        def backward():
            with tf.GradientTape() as tape:
                out, _ = layer(q, x, state)
                value = tf.reduce_sum(out)
            return tape.gradient(value, variables)

        forward_xla = tf.function(
            lambda: layer(q, x, state)[0], jit_compile=True
        )
        backward_xla = tf.function(backward, jit_compile=True)
        timings["eager fwd"] = common.measure(
            lambda: layer(q, x, state)[0].numpy(), repeats
        )
        timings["xla fwd"] = common.measure(
            lambda: forward_xla().numpy(), repeats
        )
        timings["xla fwd+bwd"] = common.measure(
            lambda: [g.numpy() for g in backward_xla()], repeats
        )
    keras.backend.clear_session()
    return timings


def _time_literal(h, d, length, n, widths, ridge, tau, m, q, x, repeats):
    import torch

    from benchmarks.literal_ltm_torch import LiteralLTM

    module = LiteralLTM(h, d, length, n, widths, ridge, tau, m)
    qt = torch.tensor(q).transpose(1, 2).contiguous()  # (B, H, Lq, d)
    xt = torch.tensor(x)
    with torch.no_grad():
        _, memory = module(qt, xt, None)

    def forward():
        with torch.no_grad():
            return module(qt, xt, memory)[0]

    def backward():
        out, _ = module(qt, xt, memory)
        out.sum().backward()

    return {
        "literal fwd": common.measure(forward, repeats),
        "literal fwd+bwd": common.measure(backward, repeats),
    }


MODES = {"remat eager": "keras-infmemory, eager, remat_read=True"}


def report(results, names, repeats, load, command, quick):
    rows = []
    baseline = results["torch"]
    for name in names:
        base_f = baseline[name]["literal fwd"]
        base_b = baseline[name]["literal fwd+bwd"]
        rows.append(
            [
                name,
                "torch",
                "literal (authors' algorithm)",
                f"{base_f * 1e3:.1f}",
                "1.00",
                f"{base_b * 1e3:.1f}",
                "1.00",
            ]
        )
        for backend, timings in results.items():
            for mode in ("eager", "remat eager", "jit", "xla"):
                fwd = timings[name].get(f"{mode} fwd")
                bwd = timings[name].get(f"{mode} fwd+bwd")
                if fwd is None:
                    continue
                rows.append(
                    [
                        name,
                        backend,
                        MODES.get(mode, f"keras-infmemory, {mode}"),
                        f"{fwd * 1e3:.1f}",
                        f"{fwd / base_f:.2f}",
                        "-" if bwd is None else f"{bwd * 1e3:.1f}",
                        "-" if bwd is None else f"{bwd / base_b:.2f}",
                    ]
                )
    header = [
        "config",
        "backend",
        "implementation",
        "fwd ms",
        "fwd ratio",
        "fwd+bwd ms",
        "fwd+bwd ratio",
    ]
    table = common.markdown_table(header, rows)
    print(table)
    out_dir = common.output_dir(quick)
    common.write_record(
        out_dir,
        "ltm_speed",
        command,
        load,
        repeats=repeats,
        configs={n: CONFIGS[n] for n in names},
        results=results,
    )
    png, link = common.figure_path(out_dir, "ltm_speed")
    with open(os.path.join(out_dir, "ltm_speed.md"), "w") as f:
        f.write("# ContinuousLTM speed\n\n")
        f.write(
            f"Command: `{command}` on {common.machine()}, float32, medians "
            f"of {repeats} repeats. Load average (1/5/15 min) at start "
            f"{load[0]}, at end {load[1]}.\n\n"
        )
        f.write(
            "One call = write a segment into a memory that holds one, then "
            "read it with one query per token (what the authors' module "
            "does per block). Configs (batch, heads, key_dim, L, Lq, N, "
            "widths, λ, τ, M): "
            + "; ".join(f"`{n}` {CONFIGS[n]}" for n in names)
            + ".\n\n"
        )
        f.write(
            "Ratios are to the literal PyTorch implementation of the "
            "authors' algorithm (`benchmarks/literal_ltm_torch.py`), timed "
            "in the torch process of the same run (the other backends run "
            "in their own processes just before or after it). Targets: "
            "torch ≤ 1.0× forward, ≤ 0.8× forward+backward; JAX jit ≤ 0.8× "
            "/ ≤ 0.6×. The row `remat_read=True` is the same layer "
            "recomputing the read's expectation `r` in the backward pass "
            "instead of keeping it (docs/performance.md).\n\n"
        )
        f.write(table + f"\n\n![ltm speed]({link})\n")
    _plot(rows, png)


def _plot(rows, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, column, title in (
        (axes[0], 4, "forward"),
        (axes[1], 6, "forward + backward"),
    ):
        labels = [
            f"{r[0]}\n{r[1]}\n{r[2].split(', ')[-1]}"
            for r in rows
            if r[column] != "-"
        ]
        values = [float(r[column]) for r in rows if r[column] != "-"]
        ax.bar(range(len(values)), values)
        ax.axhline(1.0, color="k", lw=0.8)
        ax.set_xticks(range(len(values)), labels, fontsize=6)
        ax.set_title(f"{title}: time / literal torch")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--configs", default="gpt2,sorting")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument(
        "--torch-threads",
        type=int,
        help="torch intra-op threads (default: torch's own choice). On a "
        "shared, loaded machine torch's OpenMP threads wait on each other "
        "and run several times slower; 1 avoids that",
    )
    parser.add_argument("--worker", action="store_true")
    parser.add_argument("--out")
    args = parser.parse_args()
    names = ["quick"] if args.quick else args.configs.split(",")
    repeats = 2 if args.quick else args.repeats
    if args.worker:
        worker(names, repeats, args.out, args.torch_threads)
        return
    command = "python benchmarks/ltm_speed.py " + " ".join(sys.argv[1:])
    load_start = common.loadavg()
    extra = ["--repeats", str(repeats), "--configs", ",".join(names)]
    if args.torch_threads:
        extra += ["--torch-threads", str(args.torch_threads)]
    results = common.run_workers(os.path.abspath(__file__), extra)
    load = (load_start, common.loadavg())
    report(results, names, repeats, load, command.strip(), args.quick)


if __name__ == "__main__":
    main()
