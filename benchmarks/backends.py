"""Backends: the same layers on torch, JAX and TensorFlow, eager and
compiled, forward and forward+backward, in one table.

    python benchmarks/backends.py            # paper sorting + GPT-2 configs
    python benchmarks/backends.py --quick    # tiny, for the smoke test

Each backend runs in its own process (``KERAS_BACKEND`` set before Keras
is imported) and times, for each configuration, a `ContinuousLTM` call
(write a segment into a memory that already holds one, then read it) and
an `InfFormerBlock` step (one segment with full STM and LTM state):

* torch: eager (forward under ``no_grad``), and ``torch.compile`` with
  ``--torch-compile`` (off by default: see ``benchmarks/NOTES.md``);
* JAX: eager (op by op; the backward is ``jax.grad`` unjitted) and
  ``jax.jit`` of ``stateless_call``;
* TensorFlow: eager, ``tf.function`` (graph) and
  ``tf.function(jit_compile=True)`` (XLA).

Forward+backward = gradients of ``sum(output) + KL loss`` with respect to
all trainable weights. The first call of each compiled mode (tracing and
compilation) is reported separately. Dropout is off (inference-mode
forward; the backward differentiates the same function). Ratios are to
the JAX ``jit`` time of the same row, measured in the same run. Writes
``benchmarks/results/backends.{json,md,png}``.
"""

import argparse
import json
import os
import sys
import time
import traceback

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import common  # noqa: E402

SORTING_LTM = dict(
    num_basis=512,
    basis_widths=(0.01, 0.05),
    ridge_penalty=1.0,
    tau=0.75,
    num_samples=512,
    min_variance=1e-6,
)
GPT2_LTM = dict(
    num_basis=512,
    basis_widths=(0.005, 0.01),
    ridge_penalty=0.5,
    tau=0.5,
    num_samples=512,
    min_variance=1e-4,
)
CONFIGS = {
    # hidden, heads, ffn, segment, stm, post-LN?, LTM config, batch
    "sorting": dict(
        hidden=300,
        heads=6,
        ffn=300,
        segment=1024,
        stm=1024,
        normalize_first=False,
        ltm=SORTING_LTM,
        batch=2,
    ),
    "gpt2": dict(
        hidden=768,
        heads=12,
        ffn=3072,
        segment=512,
        stm=0,
        normalize_first=True,
        ltm=GPT2_LTM,
        batch=1,
    ),
    "quick": dict(
        hidden=32,
        heads=2,
        ffn=64,
        segment=32,
        stm=32,
        normalize_first=False,
        ltm=dict(
            num_basis=32,
            basis_widths=(0.05, 0.1),
            ridge_penalty=1.0,
            tau=0.75,
            num_samples=32,
        ),
        batch=2,
    ),
}
MODES = {
    "torch": ("eager", "compile"),
    "jax": ("eager", "jit"),
    "tensorflow": ("eager", "graph", "xla"),
}


def build(name, cfg):
    """Returns ``{"ltm": (layer, args), "block": (layer, args)}``."""
    import keras
    import numpy as np

    import keras_infmemory as ki

    keras.utils.set_random_seed(0)
    batch, hidden, heads = cfg["batch"], cfg["hidden"], cfg["heads"]
    length, head_dim = cfg["segment"], cfg["hidden"] // cfg["heads"]
    rng = np.random.default_rng(0)

    def tensor(*shape):
        x = rng.normal(size=shape).astype("float32")
        return keras.ops.convert_to_tensor(x)

    ltm = ki.ContinuousLTM(heads, head_dim, **cfg["ltm"])
    x, q = tensor(batch, length, hidden), tensor(batch, length, heads, head_dim)
    ltm_state = ltm.write(x, ltm.get_initial_state(batch))

    block = ki.InfFormerBlock(
        heads,
        cfg["ffn"],
        stm_length=cfg["stm"],
        ltm=ki.ContinuousLTM(heads, head_dim, **cfg["ltm"]),
        segment_length=length,
        normalize_first=cfg["normalize_first"],
    )
    block.build((None, length, hidden))
    state = block.get_initial_state(batch)
    for _ in range(3):  # fill the STM, the pending segment and the LTM
        _, state = block(tensor(batch, length, hidden), state)
    return {
        "ltm": (ltm, (q, x, ltm_state)),
        "block": (block, (tensor(batch, length, hidden), state)),
    }


def worker(names, repeats, modes, out):
    import keras

    backend = keras.backend.backend()
    results = {}
    for name in names:
        layers = build(name, CONFIGS[name])
        for kind, (layer, args) in layers.items():
            for mode in modes:
                key = f"{name}/{kind}/{mode}"
                results[key] = _time(layer, args, mode, repeats)
                print(backend, key, results[key], flush=True)
        keras.backend.clear_session()
    with open(out, "w") as f:
        json.dump(results, f)


def _time(layer, args, mode, repeats):
    row = {}
    try:
        step = common.Step(layer, mode)
        for what, fn in (("fwd", step.forward), ("fwd_bwd", step.train)):
            t0 = time.perf_counter()
            fn(*args)
            row[f"{what}_first_s"] = time.perf_counter() - t0
            row[f"{what}_s"] = common.measure(
                lambda fn=fn: fn(*args), repeats, warmup=1
            )
    except Exception as error:  # recorded: "where it does not work"
        row["error"] = f"{type(error).__name__}: {str(error)[:300]}"
        traceback.print_exc()
    return row


def report(results, names, repeats, load, command, quick):
    header = [
        "config",
        "layer",
        "backend",
        "mode",
        "fwd ms",
        "fwd ÷ JAX jit",
        "fwd+bwd ms",
        "fwd+bwd ÷ JAX jit",
        "first call s (fwd / fwd+bwd)",
    ]
    rows = []
    for name in names:
        for kind in ("ltm", "block"):
            base = results["jax"].get(f"{name}/{kind}/jit", {})
            for backend, modes in MODES.items():
                if backend not in results:
                    continue
                for mode in modes:
                    row = results[backend].get(f"{name}/{kind}/{mode}")
                    if row is None:
                        continue
                    label = "ContinuousLTM" if kind == "ltm" else "block"
                    if "error" in row and "fwd_s" not in row:
                        rows.append(
                            [name, label, backend, mode]
                            + ["failed: " + row["error"][:80]]
                            + ["-"] * 4
                        )
                        continue
                    rows.append(
                        [
                            name,
                            label,
                            backend,
                            mode,
                            _ms(row.get("fwd_s")),
                            _ratio(row.get("fwd_s"), base.get("fwd_s")),
                            _ms(row.get("fwd_bwd_s")),
                            _ratio(row.get("fwd_bwd_s"), base.get("fwd_bwd_s")),
                            f"{row.get('fwd_first_s', 0):.1f} / "
                            f"{row.get('fwd_bwd_first_s', 0):.1f}",
                        ]
                    )
    table = common.markdown_table(header, rows)
    print(table)
    out_dir = common.output_dir(quick)
    common.write_record(
        out_dir,
        "backends",
        command,
        load,
        configs={n: CONFIGS[n] for n in names},
        results=results,
    )
    png, link = common.figure_path(out_dir, "backends")
    _plot(results, names, png)
    errors = [
        f"- {backend} {key}: {row['error']}"
        for backend, rows_ in results.items()
        for key, row in rows_.items()
        if "error" in row
    ]
    with open(os.path.join(out_dir, "backends.md"), "w") as f:
        f.write(
            "# Backends\n\n"
            f"Command: `{command}` on {common.machine()}, float32, medians "
            f"of {repeats} repeats after one warm-up "
            f"call. Load average (1/5/15 min) at start {load[0]}, at end "
            f"{load[1]}.\n\n"
            + "".join(f"- `{n}`: {_describe(CONFIGS[n])}\n" for n in names)
            + "\n`ContinuousLTM` = write one segment into a memory that "
            "holds one, then read it with one query per token. `block` = "
            "one `InfFormerBlock` segment step with full STM and LTM state. "
            "Ratios are to JAX `jit` of the same row, measured in the "
            "same run (each backend in its own process, one after the "
            "other). Dropout off.\n\n"
            + table
            + "\n\n"
            + ("Failures:\n\n" + "\n".join(errors) + "\n\n" if errors else "")
            + f"![backends]({link})\n"
        )


def _describe(cfg):
    ltm = cfg["ltm"]
    return (
        f"hidden {cfg['hidden']}, {cfg['heads']} heads, FFN {cfg['ffn']}, "
        f"segment {cfg['segment']}, STM {cfg['stm']}, "
        f"{'pre' if cfg['normalize_first'] else 'post'}-LN; LTM N "
        f"{ltm['num_basis']}, widths {ltm['basis_widths']}, λ "
        f"{ltm['ridge_penalty']}, τ {ltm['tau']}, M {ltm['num_samples']}, "
        f"conv gate; batch {cfg['batch']}"
    )


def _ms(value):
    return "-" if value is None else f"{value * 1e3:.1f}"


def _ratio(value, base):
    return "-" if value is None or not base else f"{value / base:.2f}"


def _plot(results, names, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [(n, k) for n in names for k in ("ltm", "block")]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.5 * len(panels), 4))
    for ax, (name, kind) in zip(axes, panels, strict=True):
        labels, fwd, bwd = [], [], []
        for backend, modes in MODES.items():
            for mode in modes:
                row = results.get(backend, {}).get(f"{name}/{kind}/{mode}")
                if not row or "fwd_s" not in row:
                    continue
                labels.append(f"{backend}\n{mode}")
                fwd.append(row["fwd_s"] * 1e3)
                bwd.append(row.get("fwd_bwd_s", float("nan")) * 1e3)
        xs = range(len(labels))
        ax.bar([x - 0.2 for x in xs], fwd, 0.4, label="fwd")
        ax.bar([x + 0.2 for x in xs], bwd, 0.4, label="fwd+bwd")
        ax.set_xticks(list(xs), labels, fontsize=7)
        ax.set_yscale("log")
        ax.set_ylabel("ms")
        ax.set_title(f"{name}: {'ContinuousLTM' if kind == 'ltm' else 'block'}")
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--configs", default="sorting,gpt2")
    parser.add_argument("--backends", default="torch,jax,tensorflow")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--torch-compile",
        action="store_true",
        help="also try torch.compile (off by default: Keras layers graph-"
        "break and recompile there; see benchmarks/NOTES.md)",
    )
    parser.add_argument(
        "--modes", help="only these modes (comma-separated), e.g. jit,xla"
    )
    parser.add_argument("--worker", action="store_true")
    parser.add_argument("--out")
    args = parser.parse_args()
    names = ["quick"] if args.quick else args.configs.split(",")
    repeats = 2 if args.quick else args.repeats
    if args.worker:
        worker(names, repeats, args.modes.split(","), args.out)
        return
    command = "python benchmarks/backends.py " + " ".join(sys.argv[1:])
    load_start = common.loadavg()
    results = {}
    script = os.path.abspath(__file__)
    for backend in args.backends.split(","):
        modes = list(MODES[backend])
        if backend == "torch" and not args.torch_compile:
            modes.remove("compile")
        if args.modes:
            modes = [m for m in modes if m in args.modes.split(",")]
        if not modes:
            continue
        extra = ["--repeats", str(repeats), "--configs", ",".join(names)]
        extra += ["--modes", ",".join(modes)]
        extra += ["--quick"] if args.quick else []
        results.update(
            common.run_workers(script, extra, (backend,), timeout=3600)
        )
    load = (load_start, common.loadavg())
    report(results, names, repeats, load, command.strip(), args.quick)


if __name__ == "__main__":
    main()
