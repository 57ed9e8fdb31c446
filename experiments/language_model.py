"""Language models trained from scratch with each memory (∞-former §4.2):
the settings, data, training, evaluation, diagnostics and records of
`examples/language_model.py` and `benchmarks/lm_diagnosis.py`.

One model size for every arm (the same `InfFormerLM` with a different
memory, docs/math.md §7), long documents fed in order to a stateful model
(`keras_infmemory.documents.DocumentBlocks`: one segment per row and step,
the memory emptied where a document starts), then every held-out document
streamed whole from an empty memory. docs/language_model.md describes the
study and its results.

* settings: `SCALES` (``"paper"``, ``"cpu"``), `QUICK`, `configure`, and
  for a command line, `positive_int`, `fraction` and `json_object`;
* data: `prepare_corpus` (a `Corpus`: tokenizer and in-order blocks),
  `held_out_buckets`, `probe_segments`;
* training: `build_model`, `compile_model`, `train_arm` (with `Recorder`,
  `ltm_weight_change`), `evaluation_model`;
* evaluation: `evaluate_arm` (perplexity with and without the LTM, loss by
  position in the document and inside the segment), `diagnose` (where the
  LTM's reads look, `InfFormerLM.memory_densities`; gradient norms on JAX);
* records: `study_record`, `write_record` (JSON, Markdown, PNG), `merge`
  (one record from several processes), `summary_table` and `verdict` (the
  example's ending).

Example:

>>> from experiments import language_model as lm
>>> config = lm.configure("cpu", steps=100)
>>> config["model"]["segment_length"], config["train"]["steps"]
(64, 100)
>>> config["train"]["memory_learning_rate"]  # the LTM's rate: the same
0.003
"""

import argparse
import copy
import dataclasses
import json
import os
import time

from experiments.console import native_notices_held_back

with native_notices_held_back():  # the TensorFlow backend loads TF
    import keras
    import numpy as np

    from experiments.data.corpora import (
        document_start_id,
        encode_documents,
        load_corpus,
    )
    from experiments.evaluation import (
        bucket_losses,
        bucket_starts,
        document_positions,
        paired_gaps,
        position_table,
        summarize_runs,
        token_losses,
    )
    from experiments.records import (
        markdown_table,
        separated,
        spread,
        write_json,
    )
    from keras_infmemory.documents import DocumentBlocks
    from keras_infmemory.models import ARMS, InfFormerLM
    from keras_infmemory.optimizers import MemoryAdamW

# ----------------------------------------------------------------------- #
# Settings
# ----------------------------------------------------------------------- #

SCALES = {
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
training recipe of each scale."""

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
"""A tiny model and a few steps over a scale's settings (tests, a first
look)."""

LTM_ARMS = ("inf_former", "sticky")
"""The arms with a continuous LTM, the first the one a verdict judges."""


def configure(scale="cpu", quick=False, model=None, ltm=None, **train):
    """The settings of a run: ``{"model", "ltm", "train"}``.

    Args:
        scale: ``"paper"`` or ``"cpu"`` (`SCALES`).
        quick: bool, `QUICK` over the scale's settings.
        model: dict of `InfFormerLM` arguments over the scale's (the STM
            follows the segment).
        ltm: dict of `ContinuousLTM` arguments over the scale's.
        **train: the recipe's ``steps``, ``batch_size``, ``learning_rate``,
            ``memory_learning_rate`` (the LTM weights' own rate, default:
            ``learning_rate``), ``vocabulary_size``, ``global_clipnorm``;
            None keeps the scale's.

    Raises:
        ValueError: an unknown scale or recipe key, ``model`` or ``ltm``
            not a dict, or ``steps``/``batch_size`` below 1.
    """
    if scale not in SCALES:
        raise ValueError(
            f"`scale` must be one of {tuple(SCALES)}. Received: scale={scale!r}"
        )
    config = copy.deepcopy(SCALES[scale])
    if quick:
        for part, values in QUICK.items():
            config[part].update(values)
    for part, value in (("model", model), ("ltm", ltm)):
        if not isinstance(value or {}, dict):
            raise ValueError(
                f"`{part}` must be a dict. Received: {part}={value!r}"
            )
        config[part].update(value or {})
    known = ("memory_learning_rate", "global_clipnorm", *SCALES["cpu"]["train"])
    for name, value in train.items():
        if name not in known:
            raise ValueError(
                f"Unknown recipe setting. Received: {name}={value!r}"
            )
        if value is not None:
            config["train"][name] = value
    recipe = config["train"]
    for name in ("steps", "batch_size"):
        if recipe[name] < 1:
            raise ValueError(
                f"`{name}` must be >= 1. Received: {name}={recipe[name]}"
            )
    recipe.setdefault("memory_learning_rate", None)
    recipe["memory_learning_rate"] = (
        recipe["memory_learning_rate"] or recipe["learning_rate"]
    )
    return config


def positive_int(text):
    """argparse type: an integer >= 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1. Received: {text!r}")
    return value


def fraction(text):
    """argparse type: a float strictly between 0 and 1."""
    value = float(text)
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(
            f"must be in (0, 1). Received: {text!r}"
        )
    return value


def json_object(text):
    """argparse type: a JSON object (a dict)."""
    value = json.loads(text)
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(
            f"must be a JSON object. Received: {text!r}"
        )
    return value


# ----------------------------------------------------------------------- #
# Data
# ----------------------------------------------------------------------- #


@dataclasses.dataclass
class Corpus:
    """The tokenizer and the documents as in-order blocks.

    Attributes:
        tokenizer: a byte-level BPE trained on the training documents.
        train: `DocumentBlocks` of the training documents, one stream per
            row of the recipe's batch.
        held_out: `DocumentBlocks` of the held-out documents, at most one
            stream per document.
        held_out_names: the held-out documents' names.
        num_training_documents: int.
    """

    tokenizer: object
    train: DocumentBlocks
    held_out: DocumentBlocks
    held_out_names: list
    num_training_documents: int

    @property
    def vocabulary_size(self):
        return int(self.tokenizer.vocabulary_size())

    def describe(self):
        """One line: documents, tokens, steps per epoch, vocabulary."""
        train, held = self.train, self.held_out
        return (
            f"{self.num_training_documents} training documents "
            f"({train.num_tokens} tokens, {train.num_steps} steps of "
            f"{train.batch_size} rows per epoch), "
            f"{len(self.held_out_names)} held out ({held.num_tokens} "
            f"tokens), vocabulary {self.vocabulary_size}, backend "
            f"{keras.backend.backend()}"
        )


def prepare_corpus(config, data=None, held_out_fraction=0.1):
    """Reads the documents (`experiments.data.corpora.load_corpus`: the
    Shakespeare plays, or ``data``'s files with the last
    ``held_out_fraction`` held out), trains the tokenizer on the training
    documents and lays both parts out in segments of the model's length.

    Returns:
        A `Corpus`.
    """
    with native_notices_held_back():  # KerasHub loads TensorFlow
        from experiments.tokenizers import train_tokenizer

    train, held_out = load_corpus(data, held_out_fraction)
    tokenizer, _ = train_tokenizer(
        "gpt2",
        [text for _, text in train],
        config["train"]["vocabulary_size"],
    )
    start_id = document_start_id(tokenizer)
    length = config["model"]["segment_length"]
    batch = config["train"]["batch_size"]
    train_ids = encode_documents([t for _, t in train], tokenizer)
    held_ids = encode_documents([t for _, t in held_out], tokenizer)
    return Corpus(
        tokenizer,
        DocumentBlocks(train_ids, length, batch, start_id),
        DocumentBlocks(held_ids, length, min(len(held_ids), batch), start_id),
        [name for name, _ in held_out],
        len(train),
    )


def held_out_buckets(data, max_eval_steps=None):
    """Where each held-out input sits in its document, and the position
    buckets (`experiments.evaluation.bucket_starts`) up to the longest
    position evaluated (the first ``max_eval_steps`` segments of each row,
    or all): ``(positions (steps·B, L), starts)``."""
    x, _, weights = data.arrays()
    length = data.segment_length
    positions = document_positions(x["reset_mask"], data.batch_size, length)
    evaluated = data.batch_size * (max_eval_steps or data.num_steps)
    real = weights[:evaluated] > 0
    longest = positions[:evaluated][real].max() + 1
    return positions, bucket_starts(length, int(longest))


def probe_segments(data, count=4):
    """The first ``count`` segments of each held-out row, in a row:
    ``(token_ids, targets, weights)``, each ``(B, count·L)``, what
    `diagnose` reads."""
    x, y, w = data.arrays()
    rows, length = data.batch_size, data.segment_length
    n = min(count, data.num_steps)
    by_step = lambda a: a[: n * rows].reshape(n, rows, length)
    return tuple(
        np.concatenate(list(by_step(a)), axis=1) for a in (x["token_ids"], y, w)
    )  # (B, n·L)


# ----------------------------------------------------------------------- #
# Training
# ----------------------------------------------------------------------- #


def build_model(arm, config, vocabulary_size, batch_size, **overrides):
    """`InfFormerLM.arm` of the settings, stateful with ``batch_size``
    rows (one per document stream); ``overrides``: more model arguments."""
    return InfFormerLM.arm(
        arm,
        vocabulary_size=vocabulary_size,
        memory_options=dict(config["ltm"]),
        stateful=True,
        batch_size=batch_size,
        name=f"lm_{arm}",
        **{**config["model"], **overrides},
    )


def compile_model(model, config, steps):
    """Adam (as `MemoryAdamW` without weight decay: the LTM weights may
    take their own rate), cosine decay over ``steps``, global clipping,
    cross-entropy per real token."""
    recipe = config["train"]
    schedule = keras.optimizers.schedules.CosineDecay(
        recipe["learning_rate"], decay_steps=steps
    )
    model.compile(
        optimizer=MemoryAdamW(
            learning_rate=schedule,
            memory_learning_rate=recipe["memory_learning_rate"],
            weight_decay=0.0,
            global_clipnorm=recipe["global_clipnorm"],
        ),
        loss=keras.losses.SparseCategoricalCrossentropy(
            from_logits=True, reduction="mean_with_sample_weight"
        ),
    )


def training_arrays(data, steps):
    """``steps`` batches of ``data`` in order (repeated from the start
    when it has fewer): ``(x, y, sample_weight)``."""
    x, y, w = data.arrays()
    rows = steps * data.batch_size
    repeat = -(-rows // len(y))
    take = lambda a: np.concatenate([a] * repeat)[:rows]
    return {k: take(v) for k, v in x.items()}, take(y), take(w)


class Recorder(keras.callbacks.Callback):
    """Training loss and time per step and, every ``every`` steps (0:
    never), `diagnose` on ``probe`` (models with an LTM only)."""

    def __init__(self, every=0, probe=None):
        super().__init__()
        self.every, self.probe = every, probe
        self.losses, self.diagnostics, self.seconds = [], [], []

    def on_train_batch_begin(self, batch, logs=None):
        self._start = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        self.seconds.append(time.perf_counter() - self._start)
        self.losses.append(float(logs["loss"]))  # the epoch's running mean
        due = self.every and (batch + 1) % self.every == 0
        if due and self.model.memory_options is not None:
            self.diagnostics.append(
                {"step": batch + 1, **diagnose(self.model, self.probe)}
            )


def train_arm(
    arm,
    seed,
    config,
    data,
    vocabulary_size,
    probe=None,
    diagnostics_every=0,
    output_kernel_scale=1.0,
    verbose=2,
):
    """Trains one arm from scratch on ``data`` (`DocumentBlocks`) in order.

    ``output_kernel_scale`` multiplies each LTM's initial output kernel (an
    ablation of the LTM output's initial size); ``diagnostics_every`` and
    ``probe``: see `Recorder`.

    Returns:
        ``(model, info)``: the trained stateful model and a dict of
        ``train_seconds``, ``first_step_seconds`` (it compiles),
        ``median_step_seconds``, ``train_loss`` (per step),
        ``diagnostics``, ``ltm_weight_change`` and ``parameters``.
    """
    keras.utils.set_random_seed(seed)
    batch = data.batch_size
    model = build_model(arm, config, vocabulary_size, batch)
    steps = config["train"]["steps"]
    compile_model(model, config, steps)
    x, y, w = training_arrays(data, steps)
    model({k: v[:batch] for k, v in x.items()})  # builds; reset below
    if output_kernel_scale != 1.0:
        for block in model.blocks:
            if block.ltm is not None:
                kernel = block.ltm.output_kernel
                kernel.assign(kernel * output_kernel_scale)
    initial = {v.path: keras.ops.convert_to_numpy(v) for v in model.weights}
    recorder = Recorder(diagnostics_every, probe)
    model.reset_state()
    start = time.perf_counter()
    model.fit(
        x,
        y,
        sample_weight=w,
        batch_size=batch,
        shuffle=False,  # rows continue their documents from step to step
        epochs=1,
        callbacks=[recorder],
        verbose=verbose,
    )
    seconds = time.perf_counter() - start
    pace = np.median(recorder.seconds[1:]) if steps > 1 else None
    return model, {
        "train_seconds": round(seconds, 1),
        "first_step_seconds": round(recorder.seconds[0], 2),
        "median_step_seconds": None if pace is None else round(pace, 4),
        "train_loss": recorder.losses,
        "diagnostics": recorder.diagnostics,
        "ltm_weight_change": ltm_weight_change(model, initial),
        "parameters": model.count_params(),
    }


def ltm_weight_change(model, initial):
    """``‖W − W₀‖ / ‖W₀‖`` of every LTM weight (name → list per layer);
    ``‖W − W₀‖`` for a weight that starts at zero (the gate's bias).
    ``initial``: the weights' values before training, by path."""
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


def evaluation_model(model, arm, config, batch_size):
    """The trained ``model`` as a stateful model of ``batch_size`` rows
    (the held-out streams): same weights, its own state, one traced
    segment per call (``segment_loop="scan"``: calls of several segments
    compile once)."""
    clone = build_model(
        arm, config, model.vocabulary_size, batch_size, segment_loop="scan"
    )
    clone.build((batch_size, model.segment_length))
    values = {v.path: v for v in model.weights}
    for variable in clone.weights:
        source = values.get(variable.path)
        if source is not None and tuple(source.shape) == tuple(variable.shape):
            variable.assign(source)
        elif variable.trainable:
            raise ValueError(f"No trained value for {variable.path}.")
    return clone


# ----------------------------------------------------------------------- #
# Evaluation
# ----------------------------------------------------------------------- #


def evaluate_arm(
    model, data, positions, starts, max_eval_steps=None, eval_chunk=8
):
    """Held-out scores of a stateful ``model`` of ``data.batch_size`` rows.

    The held-out documents are streamed in order from an empty memory
    (`experiments.evaluation.token_losses`, ``eval_chunk`` segments a
    call; only the first ``max_eval_steps`` of each row, or all).

    Returns:
        A dict of ``perplexity``, ``tokens``, ``loss_by_position`` and
        ``tokens_by_position`` (the buckets of ``starts``, ``positions``
        from `held_out_buckets`), ``loss_by_segment_position`` (mean loss
        at each position inside the segment), ``perplexity_without_ltm``
        (the same weights with the LTM off; None without an LTM) and
        ``eval_seconds``.
    """
    start = time.perf_counter()
    losses, weights = token_losses(
        model, data, max_eval_steps, True, eval_chunk
    )  # (steps·B, L) each
    total = weights.sum()
    result = {
        "perplexity": float(np.exp(losses.sum() / total)),
        "tokens": int(total),
    }
    loss, tokens = bucket_losses(losses, weights, positions, starts)
    result["loss_by_position"], result["tokens_by_position"] = loss, tokens
    # Inside the segment: position i has i tokens of the segment before it
    # (plus the STM and LTM, where the arm has them).
    in_segment = losses.sum(0) / np.maximum(weights.sum(0), 1.0)  # (L,)
    result["loss_by_segment_position"] = [
        round(float(v), 4) for v in in_segment
    ]
    result["perplexity_without_ltm"] = None
    if model.memory_options is not None:
        off, _ = token_losses(model, data, max_eval_steps, False, eval_chunk)
        result["perplexity_without_ltm"] = float(np.exp(off.sum() / total))
    result["eval_seconds"] = round(time.perf_counter() - start, 1)
    return result


def diagnose(model, probe, gradients=True):
    """Does the LTM learn? Its reads on the last segment of ``probe``.

    ``probe``: ``(token_ids, targets, weights)``, each ``(B, n·L)``
    (`probe_segments`), streamed from an empty memory by
    `InfFormerLM.memory_densities` (the model's own state untouched).

    Returns:
        ``{}`` without a probe or an LTM; else, one entry per block with an
        LTM, ``"mu_std"`` (std of the reads' centres μ over rows, heads and
        queries: do the reads look at different places?) and
        ``"variance_mean"`` (mean σ²: how wide they look; ``softplus(0) =
        ln 2`` is the untrained read) and, on JAX with ``gradients``,
        ``"gradient_norms"``: the norm of each LTM weight's gradient
        (name → per layer) of the probe's loss.
    """
    if probe is None or model.memory_options is None:
        return {}
    densities, _ = model.memory_densities(probe[0])
    last = slice(-model.segment_length, None)  # the last segment's reads
    out = {"mu_std": [], "variance_mean": []}
    for density in densities:
        mu = keras.ops.convert_to_numpy(density["mu"])[:, :, last]
        variance = keras.ops.convert_to_numpy(density["variance"])[:, :, last]
        out["mu_std"].append(round(float(np.std(mu)), 5))  # over (B, H, L)
        out["variance_mean"].append(round(float(np.mean(variance)), 6))
    if gradients and keras.backend.backend() == "jax":
        out["gradient_norms"] = _jax_ltm_gradient_norms(model, probe)
    return out


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
            )  # (B, n·L)
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
    by_path = {
        variable.path: grad
        for variable, grad in zip(
            stateless.trainable_variables, grads, strict=True
        )
    }
    norms = {}
    for block in stateless.blocks:
        for weight in block.ltm.trainable_weights if block.ltm else ():
            norm = float(np.linalg.norm(np.asarray(by_path[weight.path])))
            norms.setdefault(weight.name, []).append(float(f"{norm:.3g}"))
    return norms


# ----------------------------------------------------------------------- #
# Records
# ----------------------------------------------------------------------- #


def run_line(run):
    """One console line of a finished arm and seed."""
    line = (
        f"{run['arm']} seed {run['seed']}: {run['train_seconds']:.0f} s "
        f"training ({run['median_step_seconds']} s a step), "
        f"{run['eval_seconds']:.0f} s evaluating; perplexity "
        f"{run['perplexity']:.2f}"
    )
    if run["perplexity_without_ltm"] is not None:
        line += f" (without LTM {run['perplexity_without_ltm']:.2f})"
    return line


def study_record(scale, config, arms, corpus, starts, runs, seconds, args):
    """The record of a run: every setting (``args``: the command line's
    options) and number (``runs``: one dict per arm and seed)."""
    return {
        "backend": keras.backend.backend(),
        "scale": scale,
        "config": config,
        "args": args,
        "arms": list(arms),
        "held_out_documents": corpus.held_out_names,
        "held_out_tokens": int(corpus.held_out.num_tokens),
        "training_tokens_per_epoch": int(corpus.train.num_tokens),
        "vocabulary_size": corpus.vocabulary_size,
        "bucket_starts": starts,
        "runs": runs,
        "total_seconds": round(seconds, 1),
    }


def _scale(record):
    """A record's scale (records before the rename say ``"preset"``)."""
    return record.get("scale", record.get("preset"))


def write_record(record, output, name):
    """Adds the summary over seeds and the gaps to Transformer-XL to
    ``record`` and writes ``<name>.json``, ``.md`` (`markdown`) and
    ``.png`` (without matplotlib: no plot) to ``output``.

    Returns:
        The paths written.
    """
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
    with open(f"{path}.md", "w", encoding="utf-8") as f:
        f.write(markdown(record) + "\n")
    paths = [f"{path}.json", f"{path}.md"]
    try:
        from experiments.plots import plot_language_model

        plot_language_model(
            record["summary"],
            f"{path}.png",
            title=f"Held-out language modelling, scale {_scale(record)!r}",
        )
        paths.append(f"{path}.png")
    except ImportError:  # matplotlib is optional
        print("(matplotlib not installed: no plot)")
    return paths


def merge(paths, output, name):
    """One record from several runs' JSON files (e.g. one process per
    seed or per arm): same scale, settings and held-out data; runs
    concatenated, arms in the order of `ARMS`. Writes it (`write_record`).

    Returns:
        ``(record, paths written)``.

    Raises:
        ValueError: the records differ in scale, settings or held-out data.
    """
    records = []
    for path in paths:
        with open(path, encoding="utf-8") as f:
            records.append(json.load(f))
    first = records[0]
    for other in records[1:]:
        for what in ("scale", "config", "held_out_documents"):
            a, b = (
                _scale(r) if what == "scale" else r[what]
                for r in (first, other)
            )
            if a != b:
                raise ValueError(
                    f"The records differ in {what!r}. Received: {a!r} and {b!r}"
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
    return merged, write_record(merged, output, name)


def markdown(record):
    """The record's tables: perplexity per arm, loss by position in the
    document (`experiments.evaluation.position_table`) and inside the
    segment (`segment_position_table`)."""
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
        )[:, columns]  # (seeds, columns)
        cells = [
            f"{m:.3f} ± {d:.3f}"
            for m, d in zip(values.mean(0), values.std(0), strict=True)
        ]
        lines.append(f"| {arm} | " + " | ".join(cells) + " |")
    return lines


def _pm(stats):
    return f"{stats['mean']:.2f} ± {stats['std']:.2f}"


def _per_arm(record, key):
    """``{arm: [value per seed]}`` of a per-run number (None skipped)."""
    values = {arm: [] for arm in record["arms"]}
    for run in record["runs"]:
        if run.get(key) is not None:
            values[run["arm"]].append(run[key])
    return values


def summary_table(record):
    """The example's table: held-out perplexity per arm over seeds (and
    with the LTM off), mean training time."""
    on = _per_arm(record, "perplexity")
    off = _per_arm(record, "perplexity_without_ltm")
    seconds = _per_arm(record, "train_seconds")
    rows = [
        [
            arm,
            spread(on[arm], 2),
            spread(off[arm], 2) if off[arm] else "–",
            f"{np.mean(seconds[arm]):.0f}",
        ]
        for arm in record["arms"]
    ]
    header = ["arm", "held-out perplexity", "LTM off", "train (s)"]
    return markdown_table(header, rows)


def verdict(record):
    """One line: does the LTM arm (the first of `LTM_ARMS` run) beat
    Transformer-XL (its STM alone)? Without both, the two best arms. The
    difference counts only where every seed of one beats every seed of
    the other (`experiments.records.separated`).

    Example:

    >>> from experiments.language_model import verdict
    >>> runs = [{"arm": a, "seed": s, "perplexity": p}
    ...         for a, s, p in (("transformer_xl", 0, 80.0),
    ...                         ("inf_former", 0, 81.0),
    ...                         ("transformer_xl", 1, 81.5),
    ...                         ("inf_former", 1, 81.9))]
    >>> print(verdict({"arms": ["transformer_xl", "inf_former"],
    ...                "runs": runs}))
    inf_former loses to transformer_xl by 0.70 held-out perplexity
    (81.45 vs 80.75; within the seed spread of 2 seeds: no conclusion)
    """
    perplexities = _per_arm(record, "perplexity")
    ranked = sorted(perplexities, key=lambda arm: np.mean(perplexities[arm]))
    memory = next((arm for arm in LTM_ARMS if arm in perplexities), None)
    if memory is not None and "transformer_xl" in perplexities:
        first, second = memory, "transformer_xl"
    elif len(ranked) > 1:
        first, second = ranked[:2]
    else:
        arm = ranked[0]
        return (
            f"{arm}: held-out perplexity {spread(perplexities[arm], 2)}; "
            "one arm: nothing to compare"
        )
    a, b = perplexities[first], perplexities[second]
    gap = float(np.mean(a) - np.mean(b))
    word = "beats" if gap < 0 else "loses to" if gap > 0 else "ties with"
    line = (
        f"{first} {word} {second} by {abs(gap):.2f} held-out perplexity "
        f"({np.mean(a):.2f} vs {np.mean(b):.2f}; "
    )
    seeds = min(len(a), len(b))
    lower, higher = (a, b) if gap < 0 else (b, a)
    if seeds < 2:
        line += "one seed: no spread)"
    elif separated(lower, higher, higher_is_better=False):
        line += f"beyond the seed spread of {seeds} seeds)"
    else:
        line += f"within the seed spread of {seeds} seeds: no conclusion)"
    if ranked[0] not in (first, second):
        best = ranked[0]
        line += f"; best: {best} ({np.mean(perplexities[best]):.2f})"
    return line
