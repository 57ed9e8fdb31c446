"""What the memory costs a whole model: a training step and generation.

    python benchmarks/model_overhead.py               # CPU size (minutes)
    python benchmarks/model_overhead.py --size full   # GPT-2 small (GPU)
    python benchmarks/model_overhead.py --quick       # tiny, smoke test
    python benchmarks/model_overhead.py --size full --dry-run   # sizes only

For each model, a KerasHub causal LM with an ∞-former memory in every
decoder layer (`keras_infmemory.models.attach_memory`, the authors' memory
settings unless the size says otherwise) against **the same model without
memory**: the same object class, weights and segmenting, with
``memory_enabled = False`` (the family's code on each segment alone,
which is what the memory model computes when its memory is off):

1. a training step, ``train_on_batch`` (forward, backward, AdamW update),
   on rows of several segments: from an empty memory, as a plain call
   starts (its first segment skips the memory), and with a carried
   memory (the model with memory made stateful: every segment writes and
   reads a full memory, the cost in a long stream);
2. cached generation, ``generate`` (greedy): a prompt of several segments,
   then new tokens; tokens/s = new tokens × rows / seconds of the call;
3. the peak memory of a training step: the bytes of the model's variables
   (weights and optimizer slots) plus the transient peak of one step
   (GPU: the allocator's peak; CPU: the process' peak resident set, both
   above what was in use just before the step).

Models: GPT-2 small's shape (12 layers, hidden 768, 12 heads, FFN 3072,
512-token segments, vocabulary 50,257; random weights from the
`GPT2Backbone` constructor, no download) at ``--size full``; the CPU size
keeps the layer shape (hidden 768, 512-token segments, N = M = 512) with
2 layers, a 8,192-token vocabulary and shorter runs (see ``SIZES``); and
the tiny models of `tests/models/hub/tiny.py` for the families named by
``--families``.

Each backend runs in its own process in the mode Keras compiles it to:
JAX ``jit``, TensorFlow XLA (``jit_compile=True``), torch eager. The two
arms are timed in turns in one process (A, B, A, B, …), medians.
Writes ``benchmarks/results/model_overhead.{json,md,png}`` (``--quick``:
a scratch folder; ``$BENCHMARK_RESULTS`` elsewhere, e.g. the GPU records).
"""

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import common  # noqa: E402

MODE = {"jax": "jit", "tensorflow": "xla", "torch": "eager"}

# Per size: the GPT-2 model, the training batch, the generation run and the
# memory options. ``train``: (rows, segments per row); ``generate``: (rows,
# prompt tokens, new tokens).
SIZES = {
    "full": {
        "gpt2": dict(
            num_layers=12,
            hidden_dim=768,
            num_heads=12,
            intermediate_dim=3072,
            vocabulary_size=50257,
        ),
        "segment": 512,
        "train": (2, 4),
        "generate": (1, 2048, 256),
        "memory": {},
        "tiny": {"segment": 16, "train": (4, 4), "generate": (2, 64, 32)},
    },
    "cpu": {
        "gpt2": dict(
            num_layers=2,
            hidden_dim=768,
            num_heads=12,
            intermediate_dim=3072,
            vocabulary_size=8192,
        ),
        "segment": 512,
        "train": (1, 2),
        # The full size's proportion of prompt to new tokens (8 : 1): the
        # prompt's absorption (once) against decoding (per token).
        "generate": (1, 1024, 128),
        "memory": {},
        "tiny": {"segment": 16, "train": (2, 4), "generate": (1, 48, 16)},
    },
    "quick": {
        "gpt2": dict(
            num_layers=1,
            hidden_dim=16,
            num_heads=2,
            intermediate_dim=32,
            vocabulary_size=64,
        ),
        "segment": 8,
        "train": (2, 2),
        "generate": (1, 16, 4),
        "memory": {"num_basis": 16, "num_samples": 16},
        "tiny": {"segment": 8, "train": (2, 2), "generate": (1, 16, 4)},
    },
}
TINY_MEMORY = {"num_basis": 32, "num_samples": 32}


def model_specs(size, families, stm_length=0):
    """[(name, builder, segment, train, generate, memory options)]."""
    s = SIZES[size]
    specs = [
        (
            "gpt2 " + _describe_gpt2(s),
            lambda: _gpt2(s, stm_length),
            s["segment"],
            s["train"],
            s["generate"],
            s["memory"],
        )
    ]
    for family in families:
        t = s["tiny"]
        specs.append(
            (
                f"{family} (tiny)",
                lambda family=family: _tiny(family),
                t["segment"],
                t["train"],
                t["generate"],
                s["memory"] or TINY_MEMORY,
            )
        )
    return specs


def _describe_gpt2(s):
    g = s["gpt2"]
    return (
        f"{g['num_layers']}×{g['hidden_dim']}, {g['num_heads']} heads, "
        f"vocab {g['vocabulary_size']}, segment {s['segment']}"
    )


def _gpt2(s, stm_length=0):
    import keras_hub

    backbone = keras_hub.models.GPT2Backbone(
        max_sequence_length=s["segment"] + stm_length,  # a segment, its STM
        dropout=0.0,
        **s["gpt2"],
    )
    return keras_hub.models.GPT2CausalLM(backbone, None)


def _tiny(family):
    from tests.models.hub.tiny import tiny_causal_lm

    return tiny_causal_lm(family)


def check_sizes(size, families):
    """Builds nothing; checks that every run's lengths fit its segments
    and the tiny families exist. Returns the lines of the plan."""
    from tests.models.hub.tiny import BACKBONES

    lines = []
    for name, _, segment, train, generate, memory in model_specs(
        size, families
    ):
        family = name.split()[0]
        if family not in BACKBONES:
            raise ValueError(
                f"Unknown family {family!r}; choose from {sorted(BACKBONES)}"
            )
        rows, prompt, new = generate
        if prompt % segment or train[1] < 1 or new < 2 or rows < 1:
            raise ValueError(
                f"{name}: the prompt must be whole segments of {segment}, "
                "with at least 2 new tokens (decoding is timed as the "
                "difference to 1 new token). "
                f"Received: generate={generate}, train={train}"
            )
        lines.append(
            f"{name}: train {train[0]} rows × {train[1]} segments of "
            f"{segment}; generate {rows} rows, prompt {prompt} + {new} new; "
            f"memory {memory or 'defaults'}"
        )
    return lines


def _arms(build, segment, memory_options, train_rows, stm_length=0):
    """The model with memory, the same model with its memory off and, for
    the training step, the model with memory made stateful ("carried"):
    each step starts from the memory the last one left, so every segment
    reads a full memory (a plain call starts from an empty one, whose
    first segment the memory skips). With ``stm_length``, the models with
    memory also carry a short-term memory of that length, and one more
    arm, "stm only", is the STM with the LTM off (same weights)."""
    import keras

    from keras_infmemory.models import attach_memory

    keras.utils.set_random_seed(0)
    base = build()
    jit = keras.backend.backend() != "torch"
    arms = {}
    names = ("with", "without", "carried") + ("stm only",) * bool(stm_length)
    for arm in names:
        options = dict(memory_options)
        if arm == "carried":
            options.update(stateful=True, batch_size=train_rows)
        if arm != "without":
            options["stm_length"] = stm_length
        lm = attach_memory(base, segment_length=segment, **options)
        lm.memory_enabled = arm not in ("without", "stm only")
        lm.compile(
            optimizer=keras.optimizers.AdamW(learning_rate=1e-5),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            sampler="greedy",
            jit_compile=jit,
        )
        arms[arm] = lm
    return arms


def _variable_bytes(lm):
    import numpy as np

    total = 0
    for v in list(lm.variables) + list(lm.optimizer.variables):
        total += int(np.prod(v.shape)) * np.dtype(v.dtype).itemsize
    return total


class _PeakMemory:
    """Peak bytes in use during a call, above what was in use before it:
    the allocator's statistics on an accelerator and TensorFlow's on CPU,
    else the process' resident set (VmHWM), after handing the C heap's
    free memory back."""

    def __init__(self):
        import keras

        self.backend = keras.backend.backend()
        self.device = "cpu"
        if self.backend == "torch":
            import torch

            if torch.cuda.is_available():
                self.device = "gpu"
        elif self.backend == "jax":
            import jax

            if jax.devices()[0].platform != "cpu":
                self.device = "gpu"
        else:
            import tensorflow as tf

            self._tf = tf
            if tf.config.list_logical_devices("GPU"):
                self.device = "gpu"
            self._tf_device = "GPU:0" if self.device == "gpu" else "CPU:0"

    def _now_and_reset(self):
        if self.backend == "tensorflow":
            # TensorFlow's allocator keeps statistics on CPU too; its pool
            # keeps what a step freed, so the resident set would miss the
            # next step's peak.
            memory = self._tf.config.experimental
            memory.reset_memory_stats(self._tf_device)
            return memory.get_memory_info(self._tf_device)["current"]
        if self.device == "cpu":
            common.release_free_memory()
            common.reset_peak_rss()
            return common.rss_mib() * 2**20
        if self.backend == "torch":
            import torch

            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            return torch.cuda.memory_allocated()
        if self.backend == "jax":
            import jax

            stats = jax.devices()[0].memory_stats() or {}
            return stats.get("bytes_in_use", 0)

    def _peak(self):
        if self.backend == "tensorflow":
            memory = self._tf.config.experimental
            return memory.get_memory_info(self._tf_device)["peak"]
        if self.device == "cpu":
            return common.peak_rss_mib() * 2**20
        if self.backend == "torch":
            import torch

            torch.cuda.synchronize()
            return torch.cuda.max_memory_allocated()
        if self.backend == "jax":
            import jax

            stats = jax.devices()[0].memory_stats() or {}
            # JAX keeps no resettable peak: the process' peak so far.
            return stats.get("peak_bytes_in_use", 0)

    def transient(self, fn):
        """Runs ``fn()``; returns its peak bytes above those before it."""
        before = self._now_and_reset()
        fn()
        return max(self._peak() - before, 0)


def generation_repeats(repeats):
    """Repeats of the generation calls (each much longer than a step)."""
    return max(3, repeats // 2)


def worker(size, families, repeats, out, stm_length=0):
    import keras
    import numpy as np

    backend = keras.backend.backend()
    rng = np.random.default_rng(0)
    peak = _PeakMemory()
    results = {"backend": backend, "device": peak.device, "models": []}
    for name, build, segment, train, generate, memory in model_specs(
        size, families, stm_length
    ):
        arms = _arms(build, segment, memory, train[0], stm_length)
        vocab = arms["with"].backbone.vocabulary_size
        rows, length = train[0], train[1] * segment
        ids = rng.integers(1, vocab, size=(rows, length)).astype("int32")
        x = {"token_ids": ids, "padding_mask": np.ones_like(ids)}
        y = rng.integers(1, vocab, size=(rows, length)).astype("int32")

        def train_step(lm, x=x, y=y):
            return lambda: lm.train_on_batch(x, y)

        g_rows, prompt, new = generate
        tokens = rng.integers(1, vocab, size=(g_rows, prompt + new))
        mask = np.zeros((g_rows, prompt + new), "bool")
        mask[:, :prompt] = True
        prompt_inputs = {
            "token_ids": tokens.astype("int32"),
            "padding_mask": mask,
        }

        # The same prompt with one new token: the prompt's absorption
        # alone, so (full − this) / (new − 1) is the time per decoded token.
        prompt_only = {k: v[:, : prompt + 1] for k, v in prompt_inputs.items()}

        def generate_call(lm, inputs=prompt_inputs):
            def run():
                out = lm.generate(inputs, stop_token_ids=None)
                return np.asarray(out["token_ids"])

            return run

        row = {"model": name, "segment": segment, "train": train}
        row["generate"] = generate
        steps = {arm: train_step(lm) for arm, lm in arms.items()}
        carried = arms.pop("carried")  # training only
        # Memory first, "without" first: JAX's allocator keeps no
        # resettable peak, so the later arm can only be over-counted
        # (against the memory). Each arm's first step compiles it.
        memory_bytes = {}
        for arm in ("without", "with", "carried", "stm only"):
            if arm not in steps:
                continue
            steps[arm]()
            transient = max(peak.transient(steps[arm]) for _ in range(2))
            variables = _variable_bytes(arms.get(arm, carried))
            memory_bytes[arm] = {
                "variables": variables,
                "transient": transient,
                "total": variables + transient,
            }
        row["memory_bytes"] = memory_bytes
        for key, arm in (
            ("memory_ratio", "with"),
            ("carried_memory_ratio", "carried"),
            ("stm_memory_ratio", "stm only"),
        ):
            if arm in memory_bytes:
                row[key] = (
                    memory_bytes[arm]["total"]
                    / memory_bytes["without"]["total"]
                )
        times = common.measure_interleaved(steps, repeats=repeats, warmup=1)
        row["train_s"] = times
        row["train_ratio"] = times["with"] / times["without"]
        row["carried_train_ratio"] = times["carried"] / times["without"]
        if stm_length:
            row["stm_length"] = stm_length
            row["stm_train_ratio"] = times["stm only"] / times["without"]
        del carried
        # The whole call and the prompt alone, all four timed in turns, so
        # that a change of load hits the difference (decoding) alike.
        calls = {}
        for arm, lm in arms.items():
            calls[arm] = generate_call(lm)
            calls[arm + " prompt"] = generate_call(lm, prompt_only)
        measured = common.measure_interleaved(
            calls, repeats=generation_repeats(repeats), warmup=1
        )
        times = {arm: measured[arm] for arm in arms}
        absorb = {arm: measured[arm + " prompt"] for arm in arms}
        row["generate_s"] = times
        row["tokens_per_s"] = {
            arm: g_rows * new / seconds for arm, seconds in times.items()
        }
        row["generate_ratio"] = (
            row["tokens_per_s"]["with"] / row["tokens_per_s"]["without"]
        )
        if stm_length:
            row["stm_generate_ratio"] = (
                row["tokens_per_s"]["stm only"] / row["tokens_per_s"]["without"]
            )
        row["prompt_s"] = absorb
        decoding = {arm: times[arm] - absorb[arm] for arm in times}
        # Below the timer's noise (tiny sizes) the difference means nothing.
        row["decode_ratio"] = (
            decoding["without"] / decoding["with"]
            if min(decoding.values()) > 0
            else None
        )
        print(
            backend,
            name,
            f"train {row['train_ratio']:.2f}×",
            f"(carried {row['carried_train_ratio']:.2f}×)",
            f"memory {row['memory_ratio']:.2f}×",
            f"(carried {row['carried_memory_ratio']:.2f}×)",
            f"generate {row['generate_ratio']:.2f}×",
            f"decoding alone {_ratio(row['decode_ratio'])}",
            flush=True,
        )
        results["models"].append(row)
        del arms
    with open(out, "w") as f:
        json.dump(results, f)


TARGETS = {"train_ratio": 1.3, "generate_ratio": 0.85, "memory_ratio": 1.2}


def report(results, size, repeats, load, command, out_dir):
    backends = list(results)
    header = ["model", "measure", "target"]
    header += [f"{b} ({MODE[b]}, {results[b]['device']})" for b in backends]
    rows = []
    names = _model_names(results)
    measures = (
        ("train step with ÷ without", "train_ratio", "≤ 1.3×"),
        ("… with a carried memory", "carried_train_ratio", "(≤ 1.3×)"),
        ("peak memory of a step with ÷ without", "memory_ratio", "≤ 1.2×"),
        ("… with a carried memory", "carried_memory_ratio", "(≤ 1.2×)"),
        ("generation tokens/s with ÷ without", "generate_ratio", "≥ 0.85×"),
        ("decoding alone (prompt excluded)", "decode_ratio", "(≥ 0.85×)"),
    )
    stm_length = _stm_length(results)
    if stm_length:
        measures += (
            ("train step, the STM alone ÷ without", "stm_train_ratio", "(-)"),
            ("peak memory, the STM alone ÷ without", "stm_memory_ratio", "(-)"),
            (
                "generation, the STM alone ÷ without",
                "stm_generate_ratio",
                "(-)",
            ),
        )
    for name in names:
        for label, key, target in measures:
            row = [name, label, target]
            for b in backends:
                m = _model(results[b], name)
                row.append("-" if m is None else _ratio(m.get(key), ""))
            rows.append(row)
    table = common.markdown_table(header, rows)
    times_header = ["model", "backend", "step with s", "without s"]
    times_header += ["tokens/s with", "without", "step MiB with", "without"]
    times = []
    for b in backends:
        for m in results[b]["models"]:
            mib = {
                a: m["memory_bytes"][a]["total"] / 2**20
                for a in m["memory_bytes"]
            }
            times.append(
                [
                    m["model"],
                    b,
                    f"{m['train_s']['with']:.3f}",
                    f"{m['train_s']['without']:.3f}",
                    f"{m['tokens_per_s']['with']:.1f}",
                    f"{m['tokens_per_s']['without']:.1f}",
                    f"{mib['with']:.1f}",
                    f"{mib['without']:.1f}",
                ]
            )
    times_table = common.markdown_table(times_header, times)
    print(table)
    print(times_table)
    record = "model_overhead_stm" if stm_length else "model_overhead"
    common.write_record(
        out_dir, record, command, load, size=size, results=results
    )
    png, link = common.figure_path(out_dir, record)
    _plot(results, measures, png)
    first = results[backends[0]]["models"][0]
    stm_text = (
        f" With = an LTM in every decoder layer *and* a short-term memory "
        f"of {stm_length} tokens (`stm_length`; the ∞-former proper); "
        "the STM alone = the same model with every LTM off; without = "
        "neither (no STM, memory off)."
        if stm_length
        else ""
    )
    with open(os.path.join(out_dir, record + ".md"), "w") as f:
        f.write(
            "# Whole-model overhead of the memory"
            + (" with a short-term memory" if stm_length else "")
            + "\n\n"
            f"Command: `{command}` on {common.machine()}, float32, medians "
            f"of {repeats} interleaved repeats (generation: "
            f"{generation_repeats(repeats)}, the whole call and the prompt "
            f"alone in turns). Size `{size}`"
            + (
                " (reduced for a 2-core CPU: GPT-2's layer shape with 2 "
                "layers and a smaller vocabulary; `--size full` is GPT-2 "
                "small, for the GPU)"
                if size == "cpu"
                else ""
            )
            + f". Load average (1/5/15 min) at start {load[0]}, at end "
            f"{load[1]}.\n\n"
            "With = a memory in every decoder layer; without = the same "
            "model (class, weights, segmenting) with `memory_enabled = "
            "False`. Training step: `train_on_batch` of "
            f"{first['train'][0]} rows × {first['train'][1]} segments "
            "(GPT-2 row; tiny rows in the JSON), from an empty memory as "
            "a plain call starts (its first segment finds nothing to "
            "write or read and skips the memory), and *with a carried "
            "memory*: the model with memory made stateful, every segment "
            "writing and reading a full memory; generation: greedy "
            f"`generate`, prompt {first['generate'][1]} tokens + "
            f"{first['generate'][2]} new, {first['generate'][0]} row(s); "
            "decoding alone: the same call minus the call with one new "
            "token (the prompt's absorption), per decoded token. "
            "Step memory = variables (weights and optimizer slots) + the "
            "step's transient peak (CPU: resident set; GPU: allocator)."
            + stm_text
            + "\n\n"
            + table
            + "\n\n"
            + times_table
            + f"\n\n![model overhead]({link})\n"
        )


def _stm_length(results):
    """The short-term memory the results were measured with (0: none)."""
    lengths = {
        m.get("stm_length", 0) for r in results.values() for m in r["models"]
    }
    return max(lengths)


def _ratio(value, unit="×"):
    return "-" if value is None else f"{value:.2f}{unit}"


def _model_names(results):
    names = []
    for r in results.values():
        names += [m["model"] for m in r["models"] if m["model"] not in names]
    return names


def _model(result, name):
    return next((m for m in result["models"] if m["model"] == name), None)


def _plot(results, measures, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    backends = list(results)
    names = _model_names(results)
    fig, axes = plt.subplots(
        1, len(measures), figsize=(2.3 * len(measures), 3.6)
    )
    width = 0.8 / len(backends)
    for ax, (label, key, target) in zip(axes, measures, strict=True):
        for i, b in enumerate(backends):
            values = [
                float("nan") if m is None or m.get(key) is None else m[key]
                for m in (_model(results[b], n) for n in names)
            ]
            ax.bar(
                [
                    k + (i - (len(backends) - 1) / 2) * width
                    for k in range(len(names))
                ],
                values,
                width,
                label=b,
            )
        if target.strip("()") != "-":
            ax.axhline(float(target.strip("()≤≥ ×")), color="k", ls="--", lw=1)
        ax.axhline(1.0, color="k", lw=0.5)
        ax.set_title(label, fontsize=8)
        ax.set_xticks(
            range(len(names)),
            [n.split(" (")[0].split()[0] for n in names],
            fontsize=7,
        )
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def merge(paths, size, repeats):
    """A record from backends measured in separate runs (each still in its
    own process, arms interleaved): worker files ``{"backend": ...}`` or
    records ``{"results": {backend: ...}}``. The record lists the files
    and the load now."""
    results = {}
    for path in paths:
        with open(path) as f:
            payload = json.load(f)
        if "results" in payload:
            results.update(payload["results"])
        else:
            results[payload["backend"]] = payload
    load = common.loadavg()
    command = "python benchmarks/model_overhead.py --merge " + " ".join(
        os.path.basename(p) for p in paths
    )
    report(results, size, repeats, (load, load), command, common.RESULTS)


def main(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--size", choices=("cpu", "full"), default="cpu")
    parser.add_argument("--quick", action="store_true", help="tiny smoke run")
    parser.add_argument(
        "--families",
        default="llama3,gemma",
        help="tiny families besides GPT-2 (comma-separated, or 'none')",
    )
    parser.add_argument("--backends", default="jax,torch,tensorflow")
    parser.add_argument("--repeats", type=int, default=6)
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="check the sizes and print the plan; build nothing",
    )
    parser.add_argument(
        "--merge",
        nargs="+",
        metavar="JSON",
        help="write the record from these finished worker files or "
        "records (one backend or more each) instead of running",
    )
    parser.add_argument(
        "--stm-length",
        type=int,
        default=0,
        help="give the models with memory a short-term memory of this "
        "many tokens, and measure the STM alone too (record: "
        "model_overhead_stm)",
    )
    parser.add_argument("--worker", action="store_true")
    parser.add_argument("--out")
    args = parser.parse_args(argv)
    size = "quick" if args.quick else args.size
    families = [] if args.families == "none" else args.families.split(",")
    if args.quick:
        families = families[:1]
    repeats = 2 if args.quick else args.repeats
    if args.dry_run:
        for line in check_sizes(size, families):
            print(line)
        return
    if args.stm_length < 0:
        parser.error(f"--stm-length must be >= 0. Received: {args.stm_length}")
    if args.worker:
        worker(size, families, repeats, args.out, args.stm_length)
        return
    if args.merge:
        merge(args.merge, size, repeats)
        return
    command = "python benchmarks/model_overhead.py " + " ".join(sys.argv[1:])
    load_start = common.loadavg()
    extra = [
        "--repeats",
        str(repeats),
        "--families",
        ",".join(families) or "none",
    ]
    extra += ["--quick"] if args.quick else ["--size", size]
    extra += ["--stm-length", str(args.stm_length)]
    results = common.run_workers(
        os.path.abspath(__file__),
        extra,
        tuple(args.backends.split(",")),
        timeout=3600,
    )
    out_dir = common.output_dir(args.quick)
    report(
        results,
        size,
        repeats,
        (load_start, common.loadavg()),
        command.strip(),
        out_dir,
    )


if __name__ == "__main__":
    main()
