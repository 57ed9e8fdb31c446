"""Key recall through the long-term memory, on tiny models in minutes.

The task (one batch of 32 sequences per step, vocabulary 32): segment 1 is
one key token repeated over its 32 tokens, the next ``depth − 1`` segments
are random filler, and the last token of segment ``depth + 1`` is a query
whose answer is the key, ``depth`` segments back: beyond any short-term
memory, so only the long-term memory can answer (chance: 1/30). Accuracy
on the query after ``--steps`` steps of Adam 3e-3, measured on 4 fresh
batches, and again with the memory switched off (same weights).

Models, 2 layers, hidden size 64, 4 heads, feed-forward 128, segments of
32 tokens, every layer with the same memory (N 64, M 64, τ 0.75, widths
(0.01, 0.05); ``sticky``: a quantile `StickyMemorySampler`):

* ``inf_former``: `InfFormerLM.arm` with a short-term memory of one
  segment (``"inf_former"`` / ``"sticky"``);
* ``llama3``, ``gpt2``: a tiny random KerasHub model of the family (its
  own initialisers; GPT-2's dropout 0.1) given the memory by
  `attach_memory`. ``--hub-memory``: ``normalized`` (the default since
  issue 32: the memory writes the residual stream and is read with the
  queries, each divided by its root mean square), ``raw`` (both as they
  are: ``normalize_memory=False``, the adapter before issue 32) or
  ``input_only`` (an ablation: the written stream normalized, the queries
  raw).

Two options serve the diagnosis of issue 32: ``--diagnose`` also records,
per memory, the RMS of what it writes and of its queries, the gradient
norms of its weights on one batch at initialisation (JAX), and after
training where the query token's read looks (μ, σ of its density, mean
over rows and heads) and, with sticky memories, the share of the histogram
on the oldest tenth of the memory; ``--hub-init inf_former`` re-initialises
a KerasHub model the way `InfFormerLM`'s layers are (kernels
Glorot-uniform, embeddings uniform in ±0.05) before the memory is
attached.

Each run appends its result (and the command) to ``--output`` (JSON, by
default ``benchmarks/results/recall_probe.json``), replacing an earlier
result of the same configuration; ``--table`` prints the Markdown table of
what the file holds (min–max over seeds). One run at a time takes 3–15
minutes of one CPU core (``--quick`` checks the plumbing in seconds)::

    KERAS_BACKEND=jax python benchmarks/recall_probe.py --models llama3 \\
        gpt2 --depths 9 --sampling uniform --seeds 0 1
    python benchmarks/recall_probe.py --table

The decision log is ``benchmarks/results/recall_probe.md``.
"""

import argparse
import contextlib
import datetime
import json
import os
import platform
import subprocess
import sys
import time

os.environ.setdefault("KERAS_BACKEND", "jax")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
DEFAULT_OUTPUT = os.path.join(
    ROOT, "benchmarks", "results", "recall_probe.json"
)
MODELS = ("inf_former", "llama3", "gpt2")
SAMPLINGS = ("uniform", "sticky")
HUB_MEMORY = ("normalized", "raw", "input_only")
VOCAB, LENGTH, BATCH = 32, 32, 32
QUERY = VOCAB - 1  # the query token; keys and filler are 1 .. VOCAB - 2
MEMORY = {
    "num_basis": 64,
    "num_samples": 64,
    "tau": 0.75,
    "basis_widths": (0.01, 0.05),
}
SIZE = {"num_layers": 2, "hidden_dim": 64, "intermediate_dim": 128}


def key_batch(rng, num_segments, batch=BATCH):
    """Token ids, targets and weights ``(batch, num_segments · LENGTH)``:
    the key segment, filler, and the query at the very end (the only
    weighted target, whose answer is the key)."""
    import numpy as np

    x = rng.integers(1, VOCAB - 1, (batch, num_segments * LENGTH))
    x[:, :LENGTH] = rng.integers(1, VOCAB - 1, (batch, 1))
    x[:, -1] = QUERY
    y = np.concatenate([x[:, 1:], x[:, :1]], axis=1)
    y[:, -1] = x[:, 0]
    weights = np.zeros(y.shape, "float32")
    weights[:, -1] = 1.0
    return x.astype("int32"), y.astype("int32"), weights


def reinitialize(backbone):
    """Kernels Glorot-uniform and token embeddings uniform in ±0.05, as
    `InfFormerLM`'s layers start (``--hub-init inf_former``); norms,
    biases and position embeddings keep the family's."""
    import math

    import keras

    for variable in backbone.weights:
        path, shape = variable.path, tuple(variable.shape)
        if "position" in path or len(shape) < 2:
            continue
        if "embedding" in path:
            limit = 0.05
        else:
            # EinsumDense kernels: (in, heads, head) or (heads, head, out).
            if len(shape) == 3 and "output" in path:
                fan_in, fan_out = shape[0] * shape[1], shape[2]
            else:
                fan_in, fan_out = shape[0], math.prod(shape[1:])
            limit = math.sqrt(6 / (fan_in + fan_out))
        initializer = keras.initializers.RandomUniform(-limit, limit)
        variable.assign(initializer(shape, variable.dtype))


def build(model_name, sampling, seed, hub_memory, hub_init="family"):
    """The compiled model with memory; ``(model, hub)``."""
    import keras
    import keras_hub

    from keras_infmemory import StickyMemorySampler
    from keras_infmemory.models import InfFormerLM, attach_memory

    keras.utils.set_random_seed(seed)
    if model_name == "inf_former":
        arm = "sticky" if sampling == "sticky" else "inf_former"
        model = InfFormerLM.arm(
            arm,
            segment_length=LENGTH,
            memory_options=dict(MEMORY),
            vocabulary_size=VOCAB,
            num_heads=4,
            **SIZE,
        )
        hub = False
    else:
        if model_name == "gpt2":
            backbone = keras_hub.models.GPT2Backbone(
                vocabulary_size=VOCAB,
                num_heads=4,
                max_sequence_length=2 * LENGTH,
                **SIZE,
            )
            base = keras_hub.models.GPT2CausalLM(backbone, preprocessor=None)
        else:
            backbone = keras_hub.models.Llama3Backbone(
                vocabulary_size=VOCAB,
                num_query_heads=4,
                num_key_value_heads=2,
                **SIZE,
            )
            base = keras_hub.models.Llama3CausalLM(backbone, preprocessor=None)
        if hub_init == "inf_former":
            reinitialize(backbone)
        options = dict(MEMORY)
        if sampling == "sticky":
            options["sticky"] = StickyMemorySampler(mode="quantile")
        model = attach_memory(
            base,
            segment_length=LENGTH,
            normalize_memory=hub_memory != "raw",
            **options,
        )
        hub = True
    model.compile(
        optimizer=keras.optimizers.Adam(3e-3),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        weighted_metrics=["accuracy"],
    )
    return model, hub


def run_one(
    model_name,
    sampling,
    depth,
    seed,
    steps,
    hub_memory,
    hub_init="family",
    diagnose=False,
):
    """Trains one model on the task and returns its result (a dict)."""
    from keras_infmemory.models.hub import decoder_memory

    query = decoder_memory.memory_query
    if hub_memory == "input_only":  # the queries as the attention has them
        decoder_memory.memory_query = lambda q, normalize=True: q
    try:
        return _run_one(
            model_name,
            sampling,
            depth,
            seed,
            steps,
            hub_memory,
            hub_init,
            diagnose,
        )
    finally:
        decoder_memory.memory_query = query


def _run_one(
    model_name, sampling, depth, seed, steps, hub_memory, hub_init, diagnose
):
    import numpy as np

    rng = np.random.default_rng(seed)
    num_segments = depth + 1
    model, hub = build(model_name, sampling, seed, hub_memory, hub_init)

    def feed(x):
        if hub:
            return {"token_ids": x, "padding_mask": np.ones(x.shape, bool)}
        return x

    diagnosis = {}
    if diagnose:
        # A batch of its own: the training batches stay those of a run
        # without diagnosis.
        probe = key_batch(np.random.default_rng(1000 + seed), num_segments)
        diagnosis["initial"] = initial_diagnosis(model, feed, probe)

    def accuracy():
        scores = []
        for _ in range(4):
            x, y, w = key_batch(rng, num_segments)
            scores.append(
                model.evaluate(
                    feed(x), y, sample_weight=w, verbose=0, return_dict=True
                )["accuracy"]
            )
        return float(np.mean(scores))

    start = time.time()
    losses = []
    for _ in range(steps):
        x, y, w = key_batch(rng, num_segments)
        result = model.train_on_batch(
            feed(x), y, sample_weight=w, return_dict=True
        )
        # The loss averages over every token; only the query is weighted.
        losses.append(float(result["loss"]) * num_segments * LENGTH)
    seconds = time.time() - start
    with_memory = accuracy()
    if diagnose:
        diagnosis["trained"] = read_diagnosis(model, feed(probe[0]))
    model.memory_enabled = False
    without = accuracy()
    result = {
        "model": model_name,
        "sampling": sampling,
        "depth": depth,
        "segments": num_segments,
        "seed": seed,
        "steps": steps,
        "hub_memory": hub_memory if hub else None,
        "hub_init": hub_init if hub else None,
        "accuracy": with_memory,
        "accuracy_memory_off": without,
        "final_query_loss": float(np.mean(losses[-20:])) if steps else None,
        "train_seconds": round(seconds, 1),
    }
    if diagnose:
        result["diagnosis"] = diagnosis
    return result


_RECORDERS = {}  # id(model) -> (jitted call, its memories by name): JAX


def _record_steps(model, inputs):
    """Calls ``model`` on ``inputs`` and returns, per memory (by name), the
    arguments of each `segment_memory.step` in order: ``(ltm, query,
    state, segment)``. On JAX the call is one jitted program, kept per
    model, that returns them (eagerly JAX compiles each operation on its
    own: 14 s against 5 s for the probe's tiny Llama 3)."""
    import keras

    if keras.backend.backend() != "jax":
        layers, calls = {}, {}
        with _recording(layers, calls):
            model(inputs, training=False)
    else:
        import jax

        if id(model) not in _RECORDERS:
            layers = {}

            def run(trainable, others, inputs):
                calls = {}
                with _recording(layers, calls):  # while tracing
                    model.stateless_call(
                        trainable, others, inputs, training=False
                    )
                return calls

            _RECORDERS[id(model)] = (jax.jit(run), layers)
        run, layers = _RECORDERS[id(model)]
        calls = run(
            [v.value for v in model.trainable_variables],
            [v.value for v in model.non_trainable_variables],
            inputs,
        )
    return {
        name: [(layers[name], *call) for call in entries]
        for name, entries in calls.items()
    }


@contextlib.contextmanager
def _recording(layers, calls):
    """Within: each `segment_memory.step` puts its memory in ``layers`` and
    its ``(query, state, segment)`` in ``calls`` (by the memory's name)."""
    from keras_infmemory.layers import segment_memory

    original = segment_memory.step

    def step(ltm, query, state, segment, segment_mask, **kwargs):
        layers[ltm.name] = ltm
        calls.setdefault(ltm.name, []).append((query, state, segment))
        return original(ltm, query, state, segment, segment_mask, **kwargs)

    segment_memory.step = step
    try:
        yield
    finally:
        segment_memory.step = original


def _rms(tensors):
    """The root mean square of the recorded tensors, together."""
    import numpy as np

    x = np.stack([_numpy(t) for t in tensors]).astype("float64")
    return float(np.sqrt(np.mean(x * x)))


def _numpy(x):
    """A recorded tensor as NumPy (torch's record the weights' gradient
    path: cut first)."""
    import keras

    return keras.ops.convert_to_numpy(keras.ops.stop_gradient(x))


def read_diagnosis(model, inputs):
    """Per memory: RMS of what it writes and of its queries, and the read
    density of the last token (the query) of the last segment."""
    import numpy as np

    out = {}
    for name, calls in sorted(_record_steps(model, inputs).items()):
        ltm, query, state, _ = calls[-1]
        mu, variance, histogram = _last_reads(ltm, query, state)
        mu = _numpy(mu)[:, :, -1]
        sigma = np.sqrt(_numpy(variance)[:, :, -1])
        entry = {
            "written_rms": _rms([c[3] for c in calls]),
            "query_rms": _rms([c[1] for c in calls]),
            "query_mu": float(mu.mean()),
            "query_sigma": float(sigma.mean()),
        }
        if histogram is not None:
            histogram = _numpy(histogram)
            tenth = histogram.shape[1] // 10
            total = histogram.sum(1)
            if np.all(total > 0):  # every row's reads found a memory
                share = histogram[:, :tenth].sum(1) / total
                entry["histogram_oldest_tenth"] = float(share.mean())
        out[name] = entry
    return out


def _last_reads(ltm, query, state):
    """The last segment's write, then its queries' read densities (μ, σ²,
    each ``(B, H, Lq)``) and, with a sticky memory, the histogram its reads
    leave for the next write (else None). On JAX one jitted program (op by
    op, JAX compiles each operation on its own)."""
    import keras

    def reads(query, state):
        written = ltm.write(
            state["pending"], state["memory"], mask=state["pending_mask"]
        )
        mu, variance = ltm.density(query, written)
        histogram = None
        if "histogram" in state["memory"]:
            _, read = ltm.read(
                query, written, return_state=True, regularize=False
            )
            histogram = read["histogram"]
        return mu, variance, histogram

    if keras.backend.backend() == "jax":
        import jax

        reads = jax.jit(reads)
    return reads(query, state)


def initial_diagnosis(model, feed, batch):
    """Per memory at initialisation: RMS of what it writes and of its
    queries, and (JAX) the gradient norm of each of its weights for the
    query's loss on ``batch``."""
    import keras
    import numpy as np

    x, y, _ = batch
    inputs = feed(x)
    out = {}
    for name, calls in sorted(_record_steps(model, inputs).items()):
        out[name] = {
            "written_rms": _rms([c[3] for c in calls]),
            "query_rms": _rms([c[1] for c in calls]),
        }
    if keras.backend.backend() != "jax":
        return out
    import jax

    trainable = [v.value for v in model.trainable_variables]
    others = [v.value for v in model.non_trainable_variables]
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)

    def query_loss(values):
        logits, _ = model.stateless_call(values, others, inputs, training=True)
        return loss(y[:, -1], logits[:, -1])

    # Compiled as one program: op by op, the gradient compiles each
    # operation on its own (16 s against 6 s for the probe's tiny Llama 3).
    grads = jax.jit(jax.grad(query_loss))(trainable)
    for variable, grad in zip(model.trainable_variables, grads, strict=True):
        memory, _, weight = variable.path.rpartition("/")
        memory = memory.rpartition("/")[2]
        if memory in out:
            out[memory][f"grad_{weight}"] = float(
                np.linalg.norm(np.asarray(grad))
            )
    return out


def commit():
    """The checkout's commit, with ``+changes`` when the library or this
    script differ from it (the code a result was measured with)."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        changes = subprocess.run(
            ["git", "status", "--porcelain", "keras_infmemory", __file__],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return head + ("+changes" if changes else "")


def _key(result):
    return tuple(
        result.get(k)
        for k in (
            "model",
            "sampling",
            "depth",
            "seed",
            "steps",
            "hub_memory",
            "hub_init",
        )
    )


def load(path):
    if not os.path.exists(path):
        return {"description": __doc__.split("\n\n")[0], "results": []}
    with open(path, encoding="utf-8") as f:
        record = json.load(f)
    return record


def save(result, path):
    from experiments.records import write_json

    record = load(path)
    record["results"] = [
        r for r in record["results"] if _key(r) != _key(result)
    ] + [result]
    record["results"].sort(key=lambda r: tuple(map(str, _key(r))))
    write_json(record, path)


def table(record):
    """Markdown: accuracy min–max over seeds per model, sampling, what is
    written and depth (trained runs; ``--steps 0`` ones are diagnoses)."""
    groups = {}
    results = [r for r in record["results"] if r["steps"]]  # not diagnoses
    for r in results:
        label = r["model"]
        if r.get("hub_memory"):
            label += f" ({r['hub_memory']})"
        if r.get("hub_init") not in (None, "family"):
            label += f", {r['hub_init']} init"
        name = (label, r["sampling"], r["steps"])
        groups.setdefault(name, {}).setdefault(r["depth"], []).append(r)
    depths = sorted({r["depth"] for r in results})
    lines = [
        "| model (hub memory) | sampling | steps | "
        + " | ".join(f"{d} back" for d in depths)
        + " |",
        "|---|---|---|" + "---|" * len(depths),
    ]
    for (label, sampling, steps), by_depth in sorted(groups.items()):
        cells = []
        for d in depths:
            runs = by_depth.get(d, [])
            if not runs:
                cells.append("")
                continue
            acc = sorted(r["accuracy"] for r in runs)
            seeds = len(runs)
            text = f"{acc[0]:.3f}"
            if seeds > 1:
                text += f"–{acc[-1]:.3f}"
            cells.append(f"{text} ({seeds})")
        lines.append(
            f"| {label} | {sampling} | {steps} | " + " | ".join(cells) + " |"
        )
    return "\n".join(lines)


def diagnosis_table(record):
    """Markdown: the ``--steps 0 --diagnose`` runs, per memory: the RMS of
    what it writes and of its queries, and the initial gradient norms of
    ``w_μ`` and ``W_K`` with their ratio to `InfFormerLM`'s same layer."""
    runs = [r for r in record["results"] if not r["steps"] and "diagnosis" in r]
    own = []  # InfFormerLM's memories, by layer
    for r in runs:
        if r["model"] == "inf_former":
            own = [d for _, d in sorted(r["diagnosis"]["initial"].items())]
    lines = [
        "| model (hub memory) | layer | written RMS | query RMS "
        "| ‖∇w_μ‖ | ÷ InfFormerLM's | ‖∇W_K‖ | ÷ InfFormerLM's |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in sorted(runs, key=lambda r: (r["model"], r["hub_memory"] or "")):
        label = r["model"]
        if r.get("hub_memory"):
            label += f" ({r['hub_memory']})"
        for layer, (_, d) in enumerate(
            sorted(r["diagnosis"]["initial"].items())
        ):
            ref = own[layer] if layer < len(own) else {}
            cells = [f"{d['written_rms']:.3f}", f"{d['query_rms']:.3f}"]
            for weight in ("mu_kernel", "key_kernel"):
                grad = d.get(f"grad_{weight}")
                base = ref.get(f"grad_{weight}")
                cells.append("" if grad is None else f"{grad:.2g}")
                cells.append(f"{grad / base:.2g}" if grad and base else "")
            lines.append(f"| {label} | {layer} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="\n\n".join(__doc__.split("\n\n")[1:]),
    )
    parser.add_argument("--models", nargs="+", choices=MODELS, default=MODELS)
    parser.add_argument(
        "--sampling", nargs="+", choices=SAMPLINGS, default=SAMPLINGS
    )
    parser.add_argument(
        "--depths",
        nargs="+",
        type=int,
        default=[3, 5, 9, 17],
        help="segments between the key and the query (the sequence has "
        "depth + 1 segments)",
    )
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument(
        "--hub-memory",
        choices=HUB_MEMORY,
        default="normalized",
        help="what the KerasHub models' memories write and are read with",
    )
    parser.add_argument(
        "--hub-init",
        choices=("family", "inf_former"),
        default="family",
        help="the KerasHub models' initial weights: the family's own, or "
        "re-initialised as InfFormerLM's layers are (an ablation)",
    )
    parser.add_argument(
        "--diagnose",
        action="store_true",
        help="also record write/query scales, initial gradient norms "
        "(JAX) and the trained query's read density",
    )
    parser.add_argument("--output", default=DEFAULT_OUTPUT)
    parser.add_argument(
        "--table",
        action="store_true",
        help="print the tables of --output (recall; the --steps 0 "
        "diagnoses) and exit",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="2 steps, depth 1, seed 0, a scratch output (plumbing only)",
    )
    args = parser.parse_args(argv)
    if args.table:
        record = load(args.output)
        print(table(record))
        print()
        print(diagnosis_table(record))
        return
    if args.quick:
        import tempfile

        args.steps, args.depths, args.seeds = 2, [1], [0]
        args.output = os.path.join(tempfile.mkdtemp(), "recall_probe.json")
    import keras

    command = "KERAS_BACKEND={} python benchmarks/recall_probe.py {}".format(
        keras.backend.backend(), " ".join(argv or sys.argv[1:])
    )
    code = commit()  # what this process runs, whatever changes meanwhile
    for depth in args.depths:
        for model_name in args.models:
            for sampling in args.sampling:
                for seed in args.seeds:
                    result = run_one(
                        model_name,
                        sampling,
                        depth,
                        seed,
                        args.steps,
                        args.hub_memory,
                        args.hub_init,
                        args.diagnose,
                    )
                    result.update(
                        command=command,
                        commit=code,
                        backend=keras.backend.backend(),
                        keras=keras.__version__,
                        machine=platform.machine(),
                        date=datetime.date.today().isoformat(),
                    )
                    save(result, args.output)
                    print(
                        f"{model_name} {sampling} depth {depth} seed {seed}"
                        f" ({result['hub_memory'] or 'own'}): accuracy "
                        f"{result['accuracy']:.3f}, memory off "
                        f"{result['accuracy_memory_off']:.3f} "
                        f"({result['train_seconds']:.0f} s)",
                        flush=True,
                    )
    print(table(load(args.output)))


if __name__ == "__main__":
    main()
