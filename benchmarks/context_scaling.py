"""Context scaling: the ∞-former's per-segment cost does not grow.

    python benchmarks/context_scaling.py            # 4k ... 1M tokens
    python benchmarks/context_scaling.py --quick    # tiny, for the smoke test

One process streams a real token stream (random inputs, batch 1) segment
by segment through a stack of `InfFormerBlock`s, forward only and compiled,
and, in the same loop, through the same stack without LTM
(Transformer-XL with the same STM). When the stream reaches each checkpoint
(4k, 16k, 64k, 256k, 1M tokens) it times one more segment, forward and
forward+backward (gradients of the weights through that segment only, the
memory stop-gradient), with the state the stream has reached, and records
the process' peak RSS (``VmHWM`` of ``/proc/self/status``, reset through
``/proc/self/clear_refs`` before each checkpoint) and the bytes of the
carried state.

A second process times full causal attention over the whole past: the same
blocks (same weights shapes, same rotary attention and FFN) with a KV cache
of all T past tokens per layer (random contents; the cost does not depend
on them), so a segment's 512 queries attend over T + 512 keys. Streaming
1M tokens through it would be quadratic, so it is timed at each T directly
and stopped once the next T is predicted to exceed the time or memory cap.

Backend: JAX with ``jax.jit`` by default (``--backend`` to change; the
compiled mode of each backend is used: jit / tf.function(jit_compile) /
torch eager). Writes ``benchmarks/results/context_scaling.{json,md,png}``.
"""

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import common  # noqa: E402

CONFIGS = {
    # Small enough to stream 1M tokens in minutes on 2 CPU cores.
    "scaling": dict(
        num_layers=2,
        hidden=128,
        heads=4,
        ffn=512,
        segment=512,
        stm=512,
        ltm=dict(
            num_basis=256,
            basis_widths=(0.01, 0.05),
            ridge_penalty=1.0,
            tau=0.75,
            num_samples=256,
            min_variance=1e-6,
        ),
        checkpoints=(4096, 16384, 65536, 262144, 1048576),
    ),
    "quick": dict(
        num_layers=1,
        hidden=32,
        heads=2,
        ffn=64,
        segment=32,
        stm=32,
        ltm=dict(
            num_basis=32,
            basis_widths=(0.05, 0.1),
            ridge_penalty=1.0,
            tau=0.75,
            num_samples=32,
        ),
        checkpoints=(128, 1024),
    ),
}
MODE = {"jax": "jit", "tensorflow": "xla", "torch": "eager"}


def _total_gib():
    with open("/proc/meminfo") as f:
        return int(f.readline().split()[1]) / 2**20


def _state_bytes(state):
    import keras
    import numpy as np

    leaves = keras.tree.flatten(state)
    return int(
        sum(
            np.prod(v.shape)
            * np.dtype(keras.backend.standardize_dtype(v.dtype)).itemsize
            for v in leaves
        )
    )


def worker_stream(cfg, repeats, stream_xl):
    """Streams the ∞-former and Transformer-XL stacks to every checkpoint."""
    import keras
    import numpy as np

    backend = keras.backend.backend()
    keras.utils.set_random_seed(0)
    shape = (cfg["num_layers"], cfg["hidden"], cfg["heads"], cfg["ffn"])
    inf = common.make_stack(*shape, cfg["segment"], cfg["stm"], cfg["ltm"])
    xl = common.make_stack(*shape, cfg["segment"], cfg["stm"], None)
    models = {"inf_former": inf, "transformer_xl": xl}
    if not stream_xl:
        models.pop("transformer_xl")
    steps = {k: common.Step(m, MODE[backend]) for k, m in models.items()}
    states = {k: m.get_initial_state(1) for k, m in models.items()}
    rng = np.random.default_rng(0)
    pool = [
        keras.ops.convert_to_tensor(
            rng.normal(size=(1, cfg["segment"], cfg["hidden"])).astype(
                "float32"
            )
        )
        for _ in range(8)
    ]
    # Compile (and warm) every step before streaming, so that no
    # checkpoint's time or peak RSS includes compilation.
    for name, step in steps.items():
        step.forward(pool[0], states[name])
        step.train(pool[0], states[name])
    results = {k: [] for k in models}
    first_states = {}
    tokens = 0
    segment_count = 0
    stream_time = {k: 0.0 for k in models}
    for checkpoint in cfg["checkpoints"]:
        while tokens < checkpoint:
            x = pool[segment_count % len(pool)]
            for name, step in steps.items():
                t0 = time.perf_counter()
                _, states[name] = step.forward(x, states[name])
                stream_time[name] += time.perf_counter() - t0
            tokens += cfg["segment"]
            segment_count += 1
        x = pool[segment_count % len(pool)]
        for name, step in steps.items():
            first = first_states.setdefault(name, states[name])
            common.reset_peak_rss()
            # This state and the first checkpoint's, timed in turns: the
            # ratio is immune to slow drifts of the machine's load.
            timed = {}
            for key, fn in (("fwd", step.forward), ("fwd_bwd", step.train)):
                runs = {
                    "now": lambda fn=fn, x=x, s=states[name]: fn(x, s),
                    "first": lambda fn=fn, x=x, s=first: fn(x, s),
                }
                times = common.measure_interleaved(runs, repeats, warmup=1)
                timed[key] = times["now"]
                timed[key + "_vs_first"] = times["now"] / times["first"]
                timed[key + "_min"] = min(common.LAST_TIMES["now"])
            row = {
                "tokens": tokens,
                "fwd_s": timed["fwd"],
                "fwd_bwd_s": timed["fwd_bwd"],
                "fwd_min_s": timed["fwd_min"],
                "fwd_bwd_min_s": timed["fwd_bwd_min"],
                "fwd_vs_first": timed["fwd_vs_first"],
                "fwd_bwd_vs_first": timed["fwd_bwd_vs_first"],
                "peak_rss_mib": common.peak_rss_mib(),
                "state_bytes": _state_bytes(states[name]),
                "finite": bool(
                    all(
                        np.isfinite(keras.ops.convert_to_numpy(v)).all()
                        for v in keras.tree.flatten(states[name])
                        if "float" in str(v.dtype)
                    )
                ),
            }
            results[name].append(row)
            print(name, row, flush=True)
    return {
        "models": results,
        "stream_seconds": stream_time,
        "segments_streamed": segment_count,
    }


def _full_attention_class():
    import keras
    from keras import ops

    class FullAttentionStack(keras.layers.Layer):
        """The stack's blocks attending over a KV cache of the whole past.

        ``state``: per layer ``{"key", "value"}`` ``(B, T, H, d)``. Returns
        the output and the new segment's keys and values (what a cache
        would append).
        """

        def __init__(self, stack, **kwargs):
            super().__init__(**kwargs)
            self.stack = stack
            self.built = True

        def call(self, x, state):
            new = []
            for block, cache in zip(self.stack.blocks, state, strict=True):
                h = block.attention_norm(x)
                query = block.query_dense(h)
                key = block.key_dense(h)
                value = block.value_dense(h)
                new.append({"key": key, "value": value})
                key = ops.concatenate([cache["key"], key], axis=1)
                value = ops.concatenate([cache["value"], value], axis=1)
                valid = ops.ones(ops.shape(key)[:2], "bool")
                attended = block._attend(query, key, value, valid, False)
                residual = x + block.output_dense(attended)
                hidden = block.feedforward_norm(residual)
                hidden = block.feedforward_output(
                    block.intermediate_dense(hidden)
                )
                x = residual + hidden
            return x, new

    return FullAttentionStack


def worker_full(cfg, repeats, time_cap, memory_cap_gib):
    """Full causal attention over T past tokens, per checkpoint T."""
    import keras
    import numpy as np

    backend = keras.backend.backend()
    keras.utils.set_random_seed(0)
    shape = (cfg["num_layers"], cfg["hidden"], cfg["heads"], cfg["ffn"])
    stack = common.make_stack(*shape, cfg["segment"], 0, None)
    model = _full_attention_class()(stack)
    step = common.Step(model, MODE[backend])
    rng = np.random.default_rng(0)
    x = keras.ops.convert_to_tensor(
        rng.normal(size=(1, cfg["segment"], cfg["hidden"])).astype("float32")
    )
    head_dim = cfg["hidden"] // cfg["heads"]
    rows, stopped = [], None
    previous = None
    repeats = min(repeats, 3)
    baseline_mib = common.rss_mib()
    for tokens in cfg["checkpoints"]:
        if previous is not None:
            # Both grow linearly in T: extrapolate from the last point.
            growth = tokens / previous["tokens"]
            predicted = previous["fwd_bwd_s"] * growth
            extra_gib = (previous["peak_rss_mib"] - baseline_mib) / 1024
            predicted_gib = extra_gib * growth
            if predicted_gib > memory_cap_gib:
                stopped = (
                    f"stopped before T={tokens}: its peak memory is "
                    f"predicted at ~{predicted_gib:.1f} GiB above the "
                    f"process baseline ({extra_gib:.1f} GiB at "
                    f"T={previous['tokens']}, linear in T), over the "
                    f"{memory_cap_gib} GiB cap (the machine has "
                    f"{_total_gib():.0f} GiB, shared)"
                )
                break
            if predicted * (repeats + 1) * 1.3 > time_cap:
                stopped = (
                    f"stopped before T={tokens}: one forward+backward is "
                    f"predicted to take ~{predicted:.1f} s, over the time "
                    f"cap of {time_cap} s for its measurement"
                )
                break
        cache = [
            {
                name: keras.ops.convert_to_tensor(
                    rng.normal(size=(1, tokens, cfg["heads"], head_dim)).astype(
                        "float32"
                    )
                )
                for name in ("key", "value")
            }
            for _ in range(cfg["num_layers"])
        ]
        common.reset_peak_rss()
        args = (x, cache)
        fwd = common.measure(lambda a=args: step.forward(*a), repeats, 1)
        bwd = common.measure(lambda a=args: step.train(*a), repeats, 1)
        row = {
            "tokens": tokens,
            "fwd_s": fwd,
            "fwd_bwd_s": bwd,
            "peak_rss_mib": common.peak_rss_mib(),
            "state_bytes": _state_bytes(cache),
        }
        rows.append(row)
        print("full_attention", row, flush=True)
        previous = row
        del cache, args
    return {"models": {"full_attention": rows}, "stopped": stopped}


def report(config, cfg, stream, full, load, command, quick):
    models = dict(stream["models"])
    models.update(full["models"])
    inf = models["inf_former"]
    base = inf[0]
    by_tokens = {
        name: {row["tokens"]: row for row in rows}
        for name, rows in models.items()
    }
    header = [
        "tokens",
        "∞-former fwd ms",
        "fwd+bwd ms",
        "peak RSS MiB",
        "time with this state ÷ with the 4k state (fwd / fwd+bwd)",
        "RSS ÷ at 4k",
        "XL fwd ms",
        "XL fwd+bwd ms",
        "full-attn fwd ms",
        "full-attn fwd+bwd ms",
        "full-attn peak RSS MiB",
        "full ÷ ∞-former (fwd / fwd+bwd)",
    ]
    rows = []
    for row in inf:
        t = row["tokens"]
        xl = by_tokens.get("transformer_xl", {}).get(t)
        fa = by_tokens["full_attention"].get(t)
        ms = lambda v: f"{v * 1e3:.1f}"  # noqa: E731
        rows.append(
            [
                _k(t),
                ms(row["fwd_s"]),
                ms(row["fwd_bwd_s"]),
                f"{row['peak_rss_mib']:.0f}",
                f"{row['fwd_vs_first']:.3f} / {row['fwd_bwd_vs_first']:.3f}",
                f"{row['peak_rss_mib'] / base['peak_rss_mib']:.3f}",
                ms(xl["fwd_s"]) if xl else "-",
                ms(xl["fwd_bwd_s"]) if xl else "-",
                ms(fa["fwd_s"]) if fa else "not run",
                ms(fa["fwd_bwd_s"]) if fa else "not run",
                f"{fa['peak_rss_mib']:.0f}" if fa else "-",
                f"{fa['fwd_s'] / row['fwd_s']:.1f} / "
                f"{fa['fwd_bwd_s'] / row['fwd_bwd_s']:.1f}"
                if fa
                else "-",
            ]
        )
    table = common.markdown_table(header, rows)
    print(table)
    if full["stopped"]:
        print("Full attention:", full["stopped"])
    out_dir = common.output_dir(quick)
    name = "context_scaling"
    common.write_record(
        out_dir,
        name,
        command,
        load,
        config=dict(cfg),
        config_name=config,
        stream=stream,
        full_attention=full,
        state_bytes={n: r[0]["state_bytes"] for n, r in models.items()},
    )
    png, link = common.figure_path(out_dir, name)
    _plot(models, png)
    with open(os.path.join(out_dir, f"{name}.md"), "w") as f:
        f.write(
            _markdown(cfg, stream, full, load, command, table, models, link)
        )


def _k(tokens):
    if tokens < 1024:
        return str(tokens)
    return f"{tokens / 1024:g}k" if tokens < 2**20 else f"{tokens / 2**20:g}M"


def _markdown(cfg, stream, full, load, command, table, models, link):
    inf = models["inf_former"]
    first, last = inf[0], inf[-1]
    ltm = cfg["ltm"]
    lines = [
        "# Context scaling",
        "",
        f"Command: `{command}` on {common.machine()}, float32, batch 1. "
        f"Load average (1/5/15 min) at start {load[0]}, at end {load[1]}.",
        "",
        f"Config: {cfg['num_layers']} pre-LN InfFormerBlocks, hidden "
        f"{cfg['hidden']}, {cfg['heads']} heads, FFN {cfg['ffn']}, segment "
        f"{cfg['segment']}, STM {cfg['stm']}; LTM N {ltm['num_basis']}, "
        f"widths {ltm['basis_widths']}, λ {ltm['ridge_penalty']}, τ "
        f"{ltm['tau']}, M {ltm['num_samples']}, conv gate. Compiled step "
        "(JAX `jax.jit` of `stateless_call`).",
        "",
        f"The ∞-former and Transformer-XL (same blocks, no LTM) stacks "
        f"really streamed {stream['segments_streamed']} segments "
        f"({_k(inf[-1]['tokens'])} tokens) forward, in "
        f"{stream['stream_seconds']['inf_former']:.0f} s and "
        f"{stream['stream_seconds'].get('transformer_xl', 0):.0f} s. "
        "At each checkpoint one more segment is timed (median) with the "
        "reached state: forward, and forward+backward (weight gradients "
        "through that segment, memory stop-gradient). Full attention "
        "attends over a KV cache of all T past tokens (same blocks), "
        "timed at each T in its own process.",
        "",
        "Peak memory = the process' peak resident set (`VmHWM`, reset "
        "through `/proc/self/clear_refs` before each checkpoint): it "
        "includes Python, the backend runtime and compiled code, so it "
        "shows growth, not the model's own bytes. The carried state is "
        f"{first['state_bytes'] / 2**20:.2f} MiB for the ∞-former at every "
        f"checkpoint (Transformer-XL "
        f"{models['transformer_xl'][0]['state_bytes'] / 2**20:.2f} MiB)"
        if "transformer_xl" in models
        else "",
        "; the full-attention KV cache grows from "
        + ", ".join(
            f"{r['state_bytes'] / 2**20:.0f} MiB at {_k(r['tokens'])}"
            for r in models["full_attention"][:1]
            + models["full_attention"][-1:]
        )
        + ".",
        "",
        table,
        "",
        f"∞-former step with the state after {_k(last['tokens'])} tokens "
        f"÷ with the state after {_k(first['tokens'])} (timed in turns in "
        f"the same process): forward {last['fwd_vs_first']:.3f}×, "
        f"forward+backward {last['fwd_bwd_vs_first']:.3f}×; peak RSS "
        f"{last['peak_rss_mib'] / first['peak_rss_mib']:.3f}× (target "
        "≤ 1.05×). Medians of separate checkpoints drift with the load "
        f"({last['fwd_s'] / first['fwd_s']:.2f}× forward, "
        f"{last['fwd_bwd_s'] / first['fwd_bwd_s']:.2f}× forward+backward "
        f"at {_k(last['tokens'])} vs {_k(first['tokens'])}; minima "
        f"{last['fwd_min_s'] / first['fwd_min_s']:.2f}× and "
        f"{last['fwd_bwd_min_s'] / first['fwd_bwd_min_s']:.2f}×). "
        "State finite at every checkpoint: "
        f"{all(r['finite'] for r in inf)}.",
        "",
        f"Full attention: {full['stopped'] or 'ran at every checkpoint'}.",
        "",
        f"![context scaling]({link})",
        "",
    ]
    return "\n".join(line for line in lines if line is not None)


def _plot(models, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = {
        "inf_former": "∞-former",
        "transformer_xl": "Transformer-XL (same STM)",
        "full_attention": "full attention (KV cache)",
    }
    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    for ax, key, title in (
        (axes[0], "fwd_s", "forward ms / segment"),
        (axes[1], "fwd_bwd_s", "forward+backward ms / segment"),
        (axes[2], "peak_rss_mib", "peak RSS MiB"),
    ):
        for name, rows in models.items():
            scale = 1e3 if key.endswith("_s") else 1.0
            ax.plot(
                [r["tokens"] for r in rows],
                [r[key] * scale for r in rows],
                "o-",
                label=labels[name],
            )
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("tokens absorbed")
        ax.set_title(title)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--backend", default="jax")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--time-cap", type=float, default=300.0)
    parser.add_argument("--memory-cap-gib", type=float, default=10.0)
    parser.add_argument("--no-xl", action="store_true")
    parser.add_argument("--worker", action="store_true")
    parser.add_argument("--part", choices=("stream", "full", "both"))
    parser.add_argument("--out")
    args = parser.parse_args()
    config = "quick" if args.quick else "scaling"
    cfg = CONFIGS[config]
    repeats = 2 if args.quick else args.repeats
    if args.worker:
        result = {}
        if args.part in ("stream", "both"):
            result["stream"] = worker_stream(cfg, repeats, not args.no_xl)
        if args.part in ("full", "both"):
            result["full"] = worker_full(
                cfg, repeats, args.time_cap, args.memory_cap_gib
            )
        with open(args.out, "w") as f:
            json.dump(result, f)
        return
    command = "python benchmarks/context_scaling.py " + " ".join(sys.argv[1:])
    load_start = common.loadavg()
    extra = ["--repeats", str(repeats), "--time-cap", str(args.time_cap)]
    extra += ["--memory-cap-gib", str(args.memory_cap_gib)]
    extra += ["--no-xl"] if args.no_xl else []
    extra += ["--quick"] if args.quick else []
    script = os.path.abspath(__file__)
    backends = (args.backend,)
    # Full attention runs in its own process, so that its large buffers
    # do not raise the ∞-former's peak RSS (--quick: one process).
    parts = ["both"] if args.quick else ["stream", "full"]
    result = {}
    for part in parts:
        result.update(
            common.run_workers(
                script, extra + ["--part", part], backends, timeout=3600
            )[args.backend]
        )
    stream, full = result["stream"], result["full"]
    load = (load_start, common.loadavg())
    report(config, cfg, stream, full, load, command.strip(), args.quick)


if __name__ == "__main__":
    main()
