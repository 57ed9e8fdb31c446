"""Train and evaluate the paper's sorting transformer (∞-former §4.1).

A sequence of symbols drifts from one distribution to another; after the
separator the model must list the 20 symbols by how often they occurred.
Each arm is the same `InfFormerLM` with a different memory (docs/math.md
§7, docs/sorting.md):

* ``window``: each segment alone;
* ``transformer_xl``: plus one segment of short-term memory (STM);
* ``inf_former``: plus the continuous long-term memory (LTM);
* ``sticky``: the LTM with sticky memories;
* ``compressive``: the Compressive Transformer (Rae et al. 2020), the STM
  plus a FIFO of compressed past segments.

Every arm, at every length and seed, trains on fresh batches (``fit``) and
is evaluated on held-out ones (``evaluate``); an arm with an LTM is
evaluated again with its memory switched off (``memory_enabled = False``,
same weights). The README's main job (``make demo``; about 6 minutes on
two CPU cores, any backend)::

    KERAS_BACKEND=jax python examples/sorting.py --scale cpu \\
        --arms inf_former transformer_xl --lengths 1024 --output results/demo

It ends with a table (answer accuracy per arm and length), the accuracy
of ideal counters that see only the last segment and the STM, a one-line
verdict (the ∞-former against Transformer-XL, with the seed spread of
``--num-seeds``) and the paths written: ``<output>/<name>.json`` (every
setting and result) and the figure of accuracy against length
(``<name>.png`` beside it, or ``docs/images/`` for ``benchmarks/results``).
``--quick`` trains a tiny model for a few steps (about a minute);
``--dry-run`` lists the runs and trains nothing; ``--scale paper`` is the
paper's model and recipe (20k steps of batch 8 at 4k/8k/16k tokens: a GPU
job); ``--data-parallel`` splits every batch over the devices (JAX,
`keras_infmemory.distribution`).
"""

import argparse
import dataclasses
import json
import os
import time

os.environ.setdefault("KERAS_BACKEND", "jax")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from experiments import console, sorting  # noqa: E402
from experiments.records import finish  # noqa: E402
from keras_infmemory import distribution  # noqa: E402
from keras_infmemory.models import ARMS  # noqa: E402

by_scale = sorting.scale_defaults  # "paper 20000, cpu 1000; --quick 3"
# fmt: off
OPTIONS = {  # flag: (add_argument's keywords, help; "%(default)s" added)
    "--scale": (dict(choices=tuple(sorting.SCALES), default="cpu"),
                "model and recipe (experiments.sorting.SCALES)"),
    "--arms": (dict(nargs="+", choices=ARMS, default=ARMS, metavar="ARM"),
               f"arms to train, of {', '.join(ARMS)} (default: all)"),
    "--lengths": (dict(nargs="+", type=int), "symbols before the separator "
                  f"(default: {by_scale('lengths')})"),
    "--steps": (dict(type=int),
                f"training steps (default: {by_scale('steps')})"),
    "--batch-size": (dict(type=int), "sequences per batch "
                     f"(default: {by_scale('batch_size')})"),
    "--learning-rate": (dict(type=float), "start of the cosine decay "
                        f"(default: {by_scale('learning_rate')})"),
    "--eval-batches": (dict(type=int),
                       "held-out batches (default: 16; --quick 1)"),
    "--seed": (dict(type=int, default=0), "first seed of weights and data"),
    "--num-seeds": (dict(type=int, default=1), "seeds per arm and length, "
                    "from --seed on; the verdict weighs their spread"),
    "--segment-loop": (dict(choices=sorting.SEGMENT_LOOPS, default="python"),
                       "how the model loops over its segments"),
    "--compressive-options": (
        dict(type=json.loads, metavar="JSON"),
        "CompressiveMemory options of the compressive arm, e.g. "
        "'{\"compression\": \"mean\"}' (default: 4-fold convolution)"),
    "--data-parallel": (
        dict(nargs="?", const=0, type=int, metavar="DEVICES"),
        "split each batch over DEVICES devices (none given: all) with "
        "keras.distribution.DataParallel, JAX only (default: off)"),
    "--output": (dict(default="results/sorting"),
                 "folder of the JSON and the figure"),
    "--name": (dict(default="sorting"), "file name of the JSON and figure"),
    "--quick": (dict(action="store_true"),
                "a tiny model, a few steps (default: off)"),
    "--dry-run": (dict(action="store_true"),
                  "list the runs, train nothing (default: off)"),
    "--verbose": (dict(type=int, choices=(0, 1, 2)),
                  "Keras progress: 0 none, 1 a bar, 2 a line per epoch "
                  "(default: 1 on a terminal, else 2)"),
}
# fmt: on


def make_parser():
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n")[0],
        epilog="A quick look (about a minute): --quick --arms inf_former "
        "transformer_xl. The README's run: --arms inf_former transformer_xl "
        "--lengths 1024 (about 6 minutes on 2 CPU cores).",
    )
    for flag, (options, text) in OPTIONS.items():
        if "(default" not in text:
            text += " (default: %(default)s)"
        parser.add_argument(flag, help=text, **options)
    return parser


def train_and_evaluate(arm, length, recipe, verbose):
    """Trains one arm at one length and seed; returns its row."""
    console.set_random_seed(recipe.seed)  # the initial weights
    model = sorting.build_model(arm, recipe)  # a compiled InfFormerLM
    data = sorting.make_datasets(length, model.segment_length, recipe)
    print(f"\n{sorting.describe(arm, length, model, recipe.seed)}")
    # Each batch runs segment by segment with the memories carried along
    # and reset per batch; gradients reach the last segment only.
    clock = time.perf_counter()
    history = model.fit(data["train"], epochs=1, verbose=verbose)
    train_seconds = time.perf_counter() - clock
    clock = time.perf_counter()
    held_out = model.evaluate(data["eval"], verbose=verbose, return_dict=True)
    measured = {
        "train_loss": history.history["loss"][-1],
        "eval_loss": held_out["loss"],
        "accuracy": held_out["accuracy"],
        "accuracy_without_ltm_read": None,
        "train_seconds": train_seconds,
        "eval_seconds": time.perf_counter() - clock,
    }
    if model.memory_options is not None:
        # The same weights with every LTM neither written nor read: how
        # much the answers rely on the long-term memory.
        model.memory_enabled = False
        ablated = model.evaluate(data["eval"], verbose=0, return_dict=True)
        measured["accuracy_without_ltm_read"] = ablated["accuracy"]
    return sorting.result_row(arm, length, model, recipe, measured)


def main(argv=None):
    parser = make_parser()
    args = parser.parse_args(argv)
    try:
        recipe = sorting.Recipe.from_scale(
            args.scale,
            quick=args.quick,
            lengths=args.lengths,
            steps=args.steps,
            batch_size=args.batch_size,
            learning_rate=args.learning_rate,
            eval_batches=args.eval_batches,
            seed=args.seed,
            segment_loop=args.segment_loop,
            compressive_options=args.compressive_options,
        )
    except ValueError as error:
        parser.error(str(error))
    if args.num_seeds < 1:
        parser.error(f"--num-seeds must be >= 1. Received: {args.num_seeds}")
    if args.dry_run:
        for length in recipe.lengths:
            for arm in args.arms:
                model = sorting.build_model(arm, recipe)
                print(sorting.describe(arm, length, model, recipe.seed))
        return None
    if args.data_parallel is not None:
        setup = distribution.data_parallel(args.data_parallel or None)
        devices = setup.device_mesh.devices.size
        if recipe.batch_size % devices:
            parser.error(
                f"--batch-size must be a multiple of the {devices} devices. "
                f"Received: {recipe.batch_size}"
            )
        print(f"Data parallel over {devices} devices.")

    verbose = console.fit_verbosity(args.verbose)
    started = time.perf_counter()
    results = [
        train_and_evaluate(
            arm, length, dataclasses.replace(recipe, seed=seed), verbose
        )
        for length in recipe.lengths
        for arm in args.arms
        for seed in range(args.seed, args.seed + args.num_seeds)
    ]
    record = sorting.make_record(
        results, recipe, {**vars(args), "verbose": verbose}, started
    )
    paths = sorting.write_record(record, args.output, args.name)
    print()
    finish(sorting.summary(record), record["verdict"], paths)
    return record


if __name__ == "__main__":
    main()
