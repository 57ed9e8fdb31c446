"""The KerasHub fine-tuning experiment: a causal LM of any family fine-tuned
with an ∞-former memory, held-out perplexity measured three ways.

The paper's GPT-2 experiment (∞-former §4.2; docs/math.md §6–§7,
docs/causal_lms.md), run by ``examples/finetune_causal_lm.py``. Every
document is cut into segments fed in order, the memory carried from
segment to segment and emptied where a document starts. The held-out
documents are then streamed the same way and every target's loss kept
(`experiments.evaluation.token_losses`) for each arm of `ARMS`:

* ``"with memory"``: the model fine-tuned with memory, memory carried;
* ``"memory off"``: the same weights, every memory switched off (each
  segment read alone);
* ``"without memory"``: the starting preset fine-tuned the same way with
  no memory (the baseline).

This module holds what the example measures with, so that the example
shows the library: its settings (`MODE_DEFAULTS`, `QUICK`, `settings`,
`memory_options`; importing it hides TensorFlow's load notices,
`experiments.console`), the documents (`load_documents`,
`held_out_data`), the tiny offline model (`starting_preset`), the
training metric and losses (`cross_entropy`, `StepLosses`), the held-out
evaluation (`evaluate`), the first seed's plots (`plot_first_seed`), the
record (`build_record`, `write_record`) and the ending
(`perplexity_table`, `verdict`).

Example:

>>> from experiments.finetune import verdict
>>> record = {"arms": ["with memory", "without memory"], "summary": {
...     "with memory": {"perplexity": {"values": [199.21]}},
...     "without memory": {"perplexity": {"values": [197.83]}}}}
>>> verdict(record)
'Held-out perplexity with memory 199.21 (one seed: no spread): the memory \
loses to the model fine-tuned without memory by 1.38 (one seed: no spread).'
"""

import os
import re
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
from experiments import console
from experiments.console import fit_verbosity, native_notices_held_back

with native_notices_held_back():
    import keras
    import keras_hub
    import numpy as np

    from experiments import tokenizers as family_tokenizers
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
        window_losses,
    )
    from experiments.plots import plot_language_model, plot_training
    from experiments.records import (
        markdown_table,
        separated,
        spread,
        write_json,
    )
    from keras_infmemory import StickyMemorySampler
    from keras_infmemory.distribution import data_parallel
    from keras_infmemory.documents import DocumentBlocks
    from keras_infmemory.models.hub import attach_memory, family_of
    from keras_infmemory.plotting import plot_memory_attention

ARMS = ("with memory", "memory off", "without memory", "sliding window")
"""The held-out evaluations, in the record's order. With a short-term
memory (``--stm-length S``) "memory off" is the STM alone (same weights)
and "sliding window" is the model fine-tuned without memory read through
windows of ``S + L`` tokens (`experiments.evaluation.window_losses`)."""

# What the verdict calls each arm it holds the memory against.
_RIVALS = {
    "memory off": "the same weights with the memory off",
    "without memory": "the model fine-tuned without memory",
    "sliding window": "the model fine-tuned without memory, read through "
    "a sliding window",
}

# ----------------------------------------------------------------------- #
# Settings
# ----------------------------------------------------------------------- #

MODE_DEFAULTS = {
    "offline": {
        "segment_length": 128,
        "batch_size": 8,
        "steps": 300,
        "learning_rate": 5e-4,
        "memory_learning_rate": 2.5e-3,
        "baseline": True,
        "prompt": "ROMEO:",
    },
    "preset": {
        "segment_length": 512,
        "batch_size": 1,
        "steps": 1000,
        "learning_rate": 5e-5,
        "memory_learning_rate": 2.5e-4,
        "baseline": False,
        "prompt": "The",
    },
}
"""Options whose default depends on the mode: the paper's fine-tuning with
a real preset (docs/math.md §7), a CPU-sized run of the tiny offline
model."""

QUICK = {
    "segment_length": 8,
    "batch_size": 2,
    "steps": 2,
    "num_basis": 16,
    "num_samples": 16,
    "max_eval_steps": 4,
    "generate_length": 20,
    "vocabulary_size": 400,
    "num_layers": 1,
    "hidden_dim": 16,
    "num_heads": 2,
    "pretrain_steps": 2,
}
"""``--quick``: sizes for a smoke run of a minute or two (the numbers
mean nothing); options given on the command line still win."""


MODE_LABELS = {"offline": "offline", "preset": "with --preset"}


def mode_default(name):
    """The help text of an option whose default depends on the mode.

    Example:

    >>> from experiments.finetune import mode_default
    >>> mode_default("segment_length")
    '(default: 128 offline, 512 with --preset)'
    """
    return console.mode_default(MODE_DEFAULTS, name, MODE_LABELS)


def settings(args):
    """Completes and checks the parsed options: the mode's defaults
    (`MODE_DEFAULTS`) where an option is None, ``output`` where not given.

    Args:
        args: the example's parsed options (an `argparse.Namespace`).

    Returns:
        ``args``, completed.

    Raises:
        ValueError: a combination or value the example refuses, named in
            the message.
    """
    if args.offline == (args.preset is not None):
        raise ValueError("give either --preset NAME_OR_PATH or --offline")
    if not args.offline and not args.data:
        raise ValueError("--preset needs --data FILES_OR_FOLDER")
    console.fill_mode_defaults(
        args, MODE_DEFAULTS, "offline" if args.offline else "preset"
    )
    for name in ("segment_length", "batch_size", "steps", "generate_length"):
        if getattr(args, name) < 1:
            flag = "--" + name.replace("_", "-")
            raise ValueError(
                f"{flag} must be >= 1. Received: {flag} {getattr(args, name)}"
            )
    for name in ("pretrain_steps", "stm_length"):
        if getattr(args, name) < 0:
            flag = "--" + name.replace("_", "-")
            raise ValueError(
                f"{flag} must be >= 0. Received: {flag} {getattr(args, name)}"
            )
    if len(set(args.seeds)) != len(args.seeds):
        seeds = " ".join(str(seed) for seed in args.seeds)
        raise ValueError(f"--seeds must differ. Received: --seeds {seeds}")
    if args.output is None:
        args.output = os.path.join("runs", f"finetune_{run_name(args)}")
    return args


def run_name(args):
    """The family offline, else the preset's last path component (a
    file-name-safe version)."""
    if args.offline:
        return args.family
    name = os.path.basename(os.path.normpath(args.preset.split("://")[-1]))
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name) or "preset"


def output_paths(args):
    """``{what: path}`` of every file the run writes in ``args.output``
    (created here)."""
    os.makedirs(args.output, exist_ok=True)
    stem = os.path.join(args.output, f"finetune_{run_name(args)}")
    paths = {
        "record": f"{stem}.json",
        "tables": f"{stem}.md",
        "position_plot": f"{stem}_by_position.png",
        "training_plot": f"{stem}.png",
        "memory_plot": f"{stem}_memory.png",
        "preset": os.path.join(args.output, "preset"),
    }
    if args.offline:
        paths["pretrained_preset"] = os.path.join(args.output, "pretrained")
    return paths


def memory_options(args):
    """`InfMemoryCausalLM.from_preset` keywords of the memory: which
    layers get one, N, M, the short-term memory, and sticky memories if
    asked."""
    options = dict(
        memory_layers=args.memory_layers,
        num_basis=args.num_basis,
        num_samples=args.num_samples,
        stm_length=args.stm_length,
    )
    if args.sticky:
        options["sticky"] = StickyMemorySampler()
    return options


def use_data_parallel(batch_size):
    """Splits each batch over every visible device (JAX,
    `keras_infmemory.distribution.data_parallel`); returns their number.
    Raises `SystemExit` when ``batch_size`` does not divide."""
    devices = int(np.prod(data_parallel().device_mesh.shape))
    if batch_size % devices:
        raise SystemExit(
            f"--data-parallel over {devices} devices needs a batch size "
            f"that is a multiple of {devices}; got {batch_size}"
        )
    print(f"Data parallel over {devices} devices")
    return devices


# ----------------------------------------------------------------------- #
# The console
# ----------------------------------------------------------------------- #


def cross_entropy():
    """The training metric: cross-entropy weighted by the padding mask
    (Keras' ``loss`` divides by every position, padding included)."""
    return keras.metrics.SparseCategoricalCrossentropy(
        from_logits=True, name="cross_entropy"
    )


class StepLosses(keras.callbacks.Callback):
    """The training loss (Keras' running mean) after every step."""

    def __init__(self):
        super().__init__()
        self.losses = []

    def on_train_batch_end(self, batch, logs=None):
        self.losses.append(float(logs["loss"]))


# ----------------------------------------------------------------------- #
# Documents
# ----------------------------------------------------------------------- #


def load_documents(args):
    """``(train, held_out)``: lists of document texts (the Shakespeare
    plays held out as in `experiments.data.corpora`, or the last
    ``args.held_out_fraction`` of ``args.data``)."""
    try:
        train, held_out = load_corpus(args.data, args.held_out_fraction)
    except (ImportError, ValueError) as error:
        raise SystemExit(str(error)) from error
    return [text for _, text in train], [text for _, text in held_out]


def held_out_data(preset, train_texts, test_texts, args):
    """The documents in segments, tokenized with ``preset``'s tokenizer
    (and a line that says how many).

    Returns:
        ``{"train", "test"}`` (`DocumentBlocks` of ``args.batch_size``
        rows of ``args.segment_length`` tokens), ``"test_ids"`` (the
        held-out token ids, one array a document), ``"positions"`` (each
        held-out target's position in its document, as
        ``test.arrays()``), ``"max_steps"`` (the held-out batches to
        score, ``args.max_eval_steps``: None for all) and ``"starts"``
        (the position buckets, `experiments.evaluation.bucket_starts`,
        up to the longest position scored).
    """
    tokenizer = keras_hub.tokenizers.Tokenizer.from_preset(preset)
    test_ids = encode_documents(test_texts, tokenizer)
    blocks = dict(
        segment_length=args.segment_length,
        batch_size=args.batch_size,
        start_token_id=document_start_id(tokenizer),
        pad_id=tokenizer.pad_token_id,
    )
    train = DocumentBlocks(encode_documents(train_texts, tokenizer), **blocks)
    test = DocumentBlocks(test_ids, **blocks)
    x, _, w = test.arrays()
    positions = document_positions(
        x["reset_mask"], test.batch_size, args.segment_length
    )  # (rows, L)
    steps = min(test.num_steps, args.max_eval_steps or test.num_steps)
    rows = test.batch_size * steps
    longest = int(positions[:rows][w[:rows] > 0].max()) + 1
    starts = bucket_starts(args.segment_length, longest)
    print(
        f"Segments of {args.segment_length} tokens, {len(train_texts)} "
        f"training and {len(test_texts)} held-out documents; "
        f"{min(args.steps, train.num_steps)} of {train.num_steps} "
        f"fine-tuning steps; loss buckets from {starts}"
    )
    return {
        "train": train,
        "test": test,
        "test_ids": test_ids,
        "positions": positions,
        "max_steps": args.max_eval_steps,
        "starts": starts,
    }


# ----------------------------------------------------------------------- #
# The tiny offline model
# ----------------------------------------------------------------------- #


def preprocessor(preset):
    """The causal LM preprocessor of ``preset`` (its family's class)."""
    return keras_hub.models.CausalLMPreprocessor.from_preset(preset)


def offline_tokenizer(args, train_texts):
    """``(tokenizer, preprocessor_cls)`` of ``args.family`` trained on the
    training texts (`experiments.tokenizers.train_tokenizer`), once for
    every seed; None with a real preset."""
    if not args.offline:
        return None
    return family_tokenizers.train_tokenizer(
        args.family, train_texts, args.vocabulary_size
    )


def starting_preset(args, seed, texts, paths, tokenizer):
    """The preset fine-tuning starts from: ``args.preset``, or offline a
    tiny model of ``args.family`` pretrained without memory on the
    training texts (``texts[0]``) with ``seed`` and saved in
    ``paths["pretrained_preset"]`` (the first seed) or ``…_seed<seed>``.
    ``tokenizer``: `offline_tokenizer`'s."""
    if not args.offline:
        return args.preset
    folder = paths["pretrained_preset"]
    if seed != args.seeds[0]:
        folder += f"_seed{seed}"
    tiny_preset(args, texts[0], folder, seed, tokenizer)
    print(f"Pretrained preset (no memory, seed {seed}): {folder}")
    return folder


def tiny_backbone_arguments(family, vocabulary_size, args):
    """Arguments of a small backbone of ``family`` (dropout 0): 4× wide
    feed-forward, grouped-query families with half as many key/value
    heads."""
    heads = args.num_heads
    if args.hidden_dim % heads:
        raise SystemExit(
            f"--hidden-dim {args.hidden_dim} must be a multiple of "
            f"--num-heads {heads}"
        )
    arguments = {
        "vocabulary_size": vocabulary_size,
        "num_layers": args.num_layers,
        "hidden_dim": args.hidden_dim,
        "intermediate_dim": 4 * args.hidden_dim,
        "dropout": 0.0,
    }
    if family in ("gpt2", "opt"):
        arguments["num_heads"] = heads
        # The context every arm sees: a segment after its STM.
        arguments["max_sequence_length"] = context_length(args)
        return arguments
    arguments["num_query_heads"] = heads
    arguments["num_key_value_heads"] = max(1, heads // 2)
    if family in ("qwen3", "gemma", "gemma3"):
        arguments["head_dim"] = args.hidden_dim // heads
    if family == "gemma3":
        arguments.update(image_size=16, vision_encoder=None)
    return arguments


def tiny_preset(args, train_texts, folder, seed=None, tokenizer=None):
    """A tiny model of ``args.family`` with a tokenizer trained on
    ``train_texts``, pretrained without memory (``seed``: the first of
    ``args.seeds`` by default) and saved as a preset in ``folder`` with
    the family's preprocessor; returns the folder. ``tokenizer``: the
    result of `experiments.tokenizers.train_tokenizer` on these texts,
    to train it once for several seeds."""
    seed = args.seeds[0] if seed is None else seed
    keras.utils.set_random_seed(seed)
    tokenizer, preprocessor_cls = tokenizer or offline_tokenizer(
        args, train_texts
    )
    causal_lm_cls, _, _ = family_tokenizers.family_classes(args.family)
    backbone = causal_lm_cls.backbone_cls(
        **tiny_backbone_arguments(
            args.family, tokenizer.vocabulary_size(), args
        )
    )
    preprocessor = preprocessor_cls(
        tokenizer, sequence_length=context_length(args)
    )
    model = causal_lm_cls(backbone=backbone, preprocessor=preprocessor)
    print(
        f"A tiny {causal_lm_cls.__name__}: {model.count_params():,} weights, "
        f"vocabulary {tokenizer.vocabulary_size()} (trained here)"
    )
    if args.pretrain_steps:
        pretrain(model, encode_documents(train_texts, tokenizer), args, seed)
    model.save_to_preset(folder)
    return folder


def context_length(args):
    """The tokens a segment's layers see at most: the segment and its
    short-term memory (``--stm-length``). The tiny model is pretrained on
    blocks of that length, so that the sliding-window arm reads windows
    it was trained on."""
    return args.segment_length + args.stm_length


def pretrain(model, train_ids, args, seed):
    """``args.pretrain_steps`` steps without memory on segments drawn in
    random order (``seed``; AdamW, cosine decay)."""
    tokenizer = model.preprocessor.tokenizer
    data = DocumentBlocks(
        train_ids,
        context_length(args),
        1,
        document_start_id(tokenizer),
        pad_id=tokenizer.pad_token_id,
    )
    x, y, w = data.arrays()  # (segments, L) each
    rng = np.random.default_rng(seed)
    need = args.pretrain_steps * args.batch_size
    rows = np.concatenate(
        [rng.permutation(len(y)) for _ in range(-(-need // len(y)))]
    )[:need]
    preprocessor, model.preprocessor = model.preprocessor, None
    model.compile(
        optimizer=keras.optimizers.AdamW(
            keras.optimizers.schedules.CosineDecay(
                args.pretrain_learning_rate, args.pretrain_steps
            ),
            weight_decay=0.01,
            clipnorm=1.0,
        ),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        weighted_metrics=[],
    )
    print(
        f"Pretraining without memory: {args.pretrain_steps} steps of "
        f"{args.batch_size} shuffled segments of {context_length(args)} "
        "tokens"
    )
    model.fit(
        {name: x[name][rows] for name in ("token_ids", "padding_mask")},
        y[rows],
        sample_weight=w[rows],
        batch_size=args.batch_size,
        shuffle=False,  # the rows are in random order already
        epochs=1,
        verbose=fit_verbosity(),
    )
    model.preprocessor = preprocessor


# ----------------------------------------------------------------------- #
# Held-out evaluation
# ----------------------------------------------------------------------- #


def evaluate(lm, arm, seed, data, window=0):
    """Held-out loss of every target, documents in order, the memory
    carried (``arm`` ``"memory off"``: switched off, same weights;
    `experiments.evaluation.token_losses`), over the first
    ``data["max_steps"]`` batches (`held_out_data`). ``arm`` ``"sliding
    window"``: ``lm`` (without memory) reads each segment after the
    ``window`` tokens before it (`experiments.evaluation.window_losses`).

    Returns:
        The run: ``{"arm", "perplexity", "tokens", "loss_by_position",
        "tokens_by_position", "loss_by_segment_position",
        "tokens_by_segment_position", "seed"}`` (the buckets of
        ``data["starts"]`` in the document and of `segment_starts` in the
        segment, the loss in nats/token).
    """
    if arm == "sliding window":
        length = data["test"].segment_length
        reader = attach_memory(
            lm, stateful=False, segment_length=window + length
        )
        losses, weights = window_losses(
            reader, data["test"], window, data["max_steps"]
        )
    else:
        use_memory = arm != "memory off"
        losses, weights = token_losses(
            lm, data["test"], data["max_steps"], use_memory
        )
    total = weights.sum()
    loss, tokens = bucket_losses(
        losses, weights, data["positions"], data["starts"]
    )
    length = losses.shape[1]
    in_segment, in_segment_tokens = bucket_losses(
        losses,
        weights,
        np.broadcast_to(np.arange(length), losses.shape),
        segment_starts(length),
    )
    return {
        "arm": arm,
        "perplexity": float(np.exp(losses.sum() / total)),
        "tokens": int(total),
        "loss_by_position": loss,
        "tokens_by_position": tokens,
        "loss_by_segment_position": in_segment,
        "tokens_by_segment_position": in_segment_tokens,
        "seed": seed,
    }


def segment_starts(segment_length):
    """The buckets of a position inside the segment: 0, 1, 2–3, 4–7, …
    (the first tokens after a segment boundary alone).

    Example:

    >>> from experiments.finetune import segment_starts
    >>> segment_starts(16)
    [0, 1, 2, 4, 8]
    """
    starts, start = [0], 1
    while start < segment_length:
        starts.append(start)
        start *= 2
    return starts


def seed_info(seed, losses, seconds):
    """The training part of a seed's record: its running-mean losses."""
    return {
        "seed": seed,
        "final_train_loss": losses[-1] if losses else None,
        "train_loss_running_mean": [round(v, 4) for v in losses],
        "seconds": round(seconds, 1),
    }


# ----------------------------------------------------------------------- #
# The first seed's plots
# ----------------------------------------------------------------------- #


def plot_first_seed(lm, runs, info, data, args, paths):
    """The training plot (loss per step, held-out perplexities) and where
    each memory layer reads (`plot_reads`); drops ``paths["memory_plot"]``
    when ``lm`` has no memory."""
    start = document_start_id(lm.preprocessor.tokenizer)
    if not plot_reads(lm, data["test_ids"], start, args, paths["memory_plot"]):
        del paths["memory_plot"]  # no memory layer
    labels = {ARMS[2]: "without\nmemory"}
    plot_training(
        info["train_loss_running_mean"],
        {labels.get(r["arm"], r["arm"]): r["perplexity"] for r in runs},
        path=paths["training_plot"],
        title=f"{type(lm).__name__}, {keras.backend.backend()}, "
        f"seed {info['seed']}",
    )


def plot_reads(lm, test_ids, start, args, path):
    """Where each memory layer's reads look in the third segment of the
    longest held-out document (the paper's Fig. 4 idea); returns ``path``,
    or None for a model without memory."""
    length = args.segment_length
    ids = np.concatenate([[start], max(test_ids, key=len)])[: 3 * length]
    x = {"token_ids": ids[None].astype("int32")}  # (1, ≤ 3L)
    x["padding_mask"] = np.ones_like(x["token_ids"])
    densities, state = lm.memory_densities(x)
    if not densities:
        return None
    last = slice((len(ids) - 1) // length * length, len(ids))
    reads = [
        {
            name: keras.ops.convert_to_numpy(d[name])[0, :, last]
            for name in ("mu", "variance")
        }
        for d in densities
    ]  # per layer: (H, ≤ L) each
    histogram = None
    if args.sticky:
        histogram = keras.ops.convert_to_numpy(state[-1]["memory"]["histogram"])
        histogram = histogram[0]
    number = (len(ids) - 1) // length + 1
    plot_memory_attention(
        reads,
        histogram=histogram,
        path=path,
        title=f"Memory reads, segment {number} of a held-out document",
        layers=lm.backbone.memory_layers,
    )
    return path


# ----------------------------------------------------------------------- #
# The record and the ending
# ----------------------------------------------------------------------- #


def build_record(args, texts, data, runs, seed_runs, first, paths):
    """The run's JSON record: the settings, every seed's runs
    (`evaluate`) and training (`seed_info`), the summary over seeds and
    the paired gaps to the memory (`experiments.evaluation`).

    Args:
        args: the completed options (`settings`).
        texts: ``(train, held_out)`` document texts.
        data: `held_out_data`'s dict.
        runs: the runs of every seed and arm.
        seed_runs: `seed_info` of every seed.
        first: ``{"model", "generated"}``: the first seed's fine-tuned
            model with memory and its greedy continuation of the prompt.
        paths: `output_paths`'s dict.
    """
    arms = [arm for arm in ARMS if any(r["arm"] == arm for r in runs)]
    family = family_of(first["model"]).name
    return {
        "backend": keras.backend.backend(),
        "family": family,
        "preset": args.preset or f"offline tiny {family}",
        "model_class": type(first["model"]).__name__,
        "arguments": vars(args),
        "train_documents": len(texts[0]),
        "held_out_documents": len(texts[1]),
        "held_out_tokens": runs[0]["tokens"],
        "fine_tune_steps": fine_tune_steps(data, args),
        "seeds": args.seeds,
        "arms": arms,
        "bucket_starts": data["starts"],
        "runs": runs,
        "seed_runs": seed_runs,
        "summary": summarize_runs(runs, arms, data["starts"]),
        "gaps": {
            f"{arm} − {ARMS[0]}": paired_gaps(runs, arm, ARMS[0])
            for arm in arms[1:]
        },
        "segment_bucket_starts": segment_starts(args.segment_length),
        **in_segment_summary(runs, arms, args.segment_length),
        "prompt": args.prompt,
        "generated": first["generated"],
        "outputs": paths,
    }


def in_segment_summary(runs, arms, segment_length):
    """``{"segment_summary", "segment_gaps"}``: `build_record`'s summary
    and paired gaps by position inside the segment (`segment_starts`)."""
    inside = [
        {
            **run,
            "loss_by_position": run["loss_by_segment_position"],
            "tokens_by_position": run["tokens_by_segment_position"],
        }
        for run in runs
    ]
    return {
        "segment_summary": summarize_runs(
            inside, arms, segment_starts(segment_length)
        ),
        "segment_gaps": {
            f"{arm} − {ARMS[0]}": paired_gaps(inside, arm, ARMS[0])
            for arm in arms[1:]
        },
    }


def fine_tune_steps(data, args):
    """``args.steps``, at most one epoch of the training documents."""
    return min(args.steps, data["train"].num_steps)


def write_record(record, paths, start_time):
    """Writes the JSON record (with its ``"seconds"`` since
    ``start_time``), its tables (`tables`) and the plot by position."""
    record["seconds"] = round(time.time() - start_time, 1)
    write_json(record, paths["record"])
    with open(paths["tables"], "w", encoding="utf-8") as f:
        f.write(tables(record) + "\n")
    plot_language_model(
        record["summary"],
        paths["position_plot"],
        title=f"{record['model_class']}, {record['backend']}, held out",
        by_position="perplexity",
    )


def perplexity_table(record):
    """The held-out perplexity of each arm (mean and range over seeds,
    `experiments.records.spread`) and its gap to the memory, paired by
    seed (positive: the arm is worse than with memory)."""
    rows = []
    for arm in record["arms"]:
        values = record["summary"][arm]["perplexity"]["values"]
        gap = record["gaps"].get(f"{arm} − {ARMS[0]}")
        gap = "" if gap is None else spread(gap["perplexity"]["values"], 2)
        rows.append([arm, spread(values, 2), gap])
    header = [
        f"held out ({record['held_out_tokens']:,} tokens)",
        "perplexity",
        "− with memory, paired (> 0: the memory is better)",
    ]
    return markdown_table(header, rows)


def tables(record):
    """The record's tables: `perplexity_table`, then the perplexity by
    position bucket and the paired loss gaps."""
    by_position = position_table(
        {
            **record,
            "segment_length": record["arguments"]["segment_length"],
            "tokens": record["runs"][0]["tokens_by_position"],
        },
        perplexity=True,
    )
    in_segment = position_table(
        {
            **record,
            "summary": record["segment_summary"],
            "gaps": record["segment_gaps"],
            "bucket_starts": record["segment_bucket_starts"],
            "segment_length": 1,  # columns: the bucket's first position
            "tokens": record["runs"][0]["tokens_by_segment_position"],
        }
    )
    return "\n".join(
        [
            perplexity_table(record),
            "",
            "Perplexity by position in the document (exp of the mean loss "
            "over seeds; ± exp(mean)·std of the loss, to first order); "
            "columns: the first segment of each bucket (buckets double in "
            "length). Gap rows: loss difference in nats/token, paired by "
            "seed (positive: the arm is worse than with memory).",
            "",
            *by_position,
            "",
            "Loss (nats/token, mean ± std over seeds) by position inside "
            "the segment; columns: the first position of each bucket "
            "(1: a segment's first token; buckets double in length). Gap "
            "rows as above.",
            "",
            *in_segment,
        ]
    )


def verdict(record):
    """One line: the held-out perplexity with memory against each other
    arm, and whether each difference is beyond the seed spread (every
    seed of one arm better than every seed of the other), within it (no
    conclusion), or unknown (one seed)."""
    values = {
        arm: record["summary"][arm]["perplexity"]["values"]
        for arm in record["arms"]
    }
    memory = values[ARMS[0]]
    line = f"Held-out perplexity with memory {spread(memory, 2)}"
    comparisons = [
        _comparison(memory, values[arm], _RIVALS[arm])
        for arm in record["arms"][1:]
    ]
    if not comparisons:
        return line + "."
    return f"{line}: the memory " + " and ".join(comparisons) + "."


def _comparison(memory, rival, name):
    """``"beats NAME by 1.81 (within the seed spread: no conclusion)"``:
    the memory's perplexities (one a seed) against a rival's."""
    gap = float(np.mean(rival) - np.mean(memory))
    if len(memory) == 1 or len(rival) == 1:
        how = "one seed: no spread"
    elif separated(memory, rival, higher_is_better=False) or separated(
        rival, memory, higher_is_better=False
    ):
        how = "beyond the seed spread"
    else:
        how = "within the seed spread: no conclusion"
    if gap == 0:
        return f"ties with {name} ({how})"
    verb = "beats" if gap > 0 else "loses to"
    return f"{verb} {name} by {abs(gap):.2f} ({how})"
