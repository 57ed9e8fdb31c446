"""Train and evaluate the paper's sorting transformer (∞-former §4.1).

A sequence of symbols drifts from one distribution to another; after the
separator the model must list the 20 symbols by how often they occurred.
Each arm is the same `InfFormerLM` with a different memory (docs/math.md
§7):

* ``window``: each segment alone;
* ``transformer_xl``: plus one segment of short-term memory (STM);
* ``inf_former``: plus the continuous long-term memory (LTM);
* ``sticky``: the LTM with sticky memories;
* ``compressive``: the Compressive Transformer (Rae et al. 2020), the STM
  plus a FIFO of compressed past segments.

For every arm and length the script trains on fresh batches, evaluates the
answer accuracy on held-out batches, prints a table and writes
``sorting.json`` and ``sorting.png`` to ``--output``. Any backend::

    KERAS_BACKEND=jax python examples/sorting.py --scale cpu \\
        --arms inf_former transformer_xl --lengths 1024

``--data-parallel`` splits every batch over the devices with
``keras.distribution.DataParallel`` (JAX; see
``keras_infmemory.distribution``).

``--scale paper`` is the paper's model and recipe (20k steps of batch 8 at
4k/8k/16k tokens: a GPU job). ``--quick`` is a few steps for the tests.
"""

import argparse
import json
import os
import time

os.environ.setdefault("KERAS_BACKEND", "jax")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402

from experiments import sorting as sorting_models  # noqa: E402
from experiments.data import sorting as sorting_data  # noqa: E402
from experiments.records import write_json  # noqa: E402
from keras_infmemory.models.inf_former_lm import ARMS  # noqa: E402

EVAL_SEED_OFFSET = 1_000_003  # held-out batches never seen in training


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--scale", choices=tuple(sorting_models.SCALES), default="cpu"
    )
    parser.add_argument("--arms", nargs="+", choices=ARMS, default=list(ARMS))
    parser.add_argument(
        "--lengths",
        nargs="+",
        type=int,
        help="symbols before the separator (default: the scale's)",
    )
    parser.add_argument("--steps", type=int, help="training steps")
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--learning-rate", type=float)
    parser.add_argument(
        "--eval-batches", type=int, default=16, help="held-out batches"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--segment-loop", choices=("python", "scan"), default="python"
    )
    parser.add_argument(
        "--output", default="results/sorting", help="folder for JSON + PNG"
    )
    parser.add_argument(
        "--data-parallel",
        nargs="?",
        const=0,
        type=int,
        metavar="NUM_DEVICES",
        help="split each batch over NUM_DEVICES devices (default: all) "
        "with keras.distribution.DataParallel; JAX only",
    )
    parser.add_argument(
        "--compressive-options",
        type=json.loads,
        default=None,
        metavar="JSON",
        help="the compressive arm's `CompressiveMemory` options, e.g. "
        '\'{"compression": "mean"}\' or \'{"reconstruction_weight": 1}\' '
        "(default: 4-fold convolution, no reconstruction loss)",
    )
    parser.add_argument(
        "--name", default="sorting", help="file name of the JSON and PNG"
    )
    parser.add_argument(
        "--quick", action="store_true", help="a few tiny steps (tests)"
    )
    parser.add_argument("--verbose", type=int, default=1, choices=(0, 1, 2))
    args = parser.parse_args(argv)
    train = sorting_models.get_scale(args.scale)["train"]
    if args.quick:
        args.lengths = args.lengths or [100]
        args.steps = args.steps or 3
        args.batch_size = args.batch_size or 2
        args.eval_batches = 1
    args.lengths = args.lengths or list(train["lengths"])
    args.steps = args.steps or train["steps"]
    args.batch_size = args.batch_size or train["batch_size"]
    args.learning_rate = args.learning_rate or train["learning_rate"]
    for name in ("steps", "batch_size", "eval_batches"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.compressive_options is not None and not isinstance(
        args.compressive_options, dict
    ):
        parser.error(
            "--compressive-options must be a JSON object. Received: "
            f"{args.compressive_options!r}"
        )
    if min(args.lengths) < 1:
        parser.error(f"--lengths must be >= 1. Received: {args.lengths}")
    return args


def build_model(arm, args):
    overrides = {"segment_loop": args.segment_loop}
    if arm == "compressive" and args.compressive_options:
        overrides["compressive_options"] = args.compressive_options
    if args.quick:
        overrides.update(
            num_layers=1,
            hidden_dim=16,
            num_heads=2,
            intermediate_dim=32,
            segment_length=32,
            memory_options={"num_basis": 16, "num_samples": 16},
        )
    model = sorting_models.sorting_transformer(
        arm, scale=args.scale, **overrides
    )
    model.compile(
        **sorting_models.compile_arguments(
            args.scale,
            steps=args.steps,
            learning_rate=args.learning_rate,
        )
    )
    return model


def make_datasets(length, segment, args):
    """``{"train", "eval"}`` `SortingDataset`s of ``length`` symbols: the
    training batches of ``args.seed`` and the held-out batches (another
    seed), padded to a multiple of ``segment``."""
    return {
        split: sorting_data.SortingDataset(
            args.batch_size,
            length,
            steps=steps,
            seed=args.seed + offset,
            pad_to_multiple=segment,
        )
        for split, steps, offset in (
            ("train", args.steps, 0),
            ("eval", args.eval_batches, EVAL_SEED_OFFSET),
        )
    }


def run_one(arm, length, args):
    """Trains one arm at one length; returns a dict of results."""
    keras.utils.set_random_seed(args.seed)
    model = build_model(arm, args)
    segment = model.segment_length
    datasets = make_datasets(length, segment, args)
    tokens = sorting_data.total_length(length, segment)
    print(
        f"\n== {arm}, {length} symbols ({tokens} tokens, "
        f"{tokens // segment} segments of {segment}, STM "
        f"{model.stm_length}) on {keras.backend.backend()} =="
    )
    start = time.perf_counter()
    history = model.fit(datasets["train"], epochs=1, verbose=args.verbose)
    train_seconds = time.perf_counter() - start
    start = time.perf_counter()
    metrics = model.evaluate(
        datasets["eval"], verbose=args.verbose, return_dict=True
    )
    eval_seconds = time.perf_counter() - start
    without_ltm = None
    if model.memory_options is not None:
        without_ltm = ablate_ltm(model, datasets["eval"])
    growth = [
        max(block.ltm.update_growth.values())
        for block in model.blocks
        if block.ltm is not None and block.ltm.update_growth
    ]
    return {
        "arm": arm,
        "length": length,
        "tokens": tokens,
        "segment_length": segment,
        "stm_length": model.stm_length,
        "steps": args.steps,
        "batch_size": args.batch_size,
        "train_loss": float(history.history["loss"][-1]),
        "eval_loss": float(metrics["loss"]),
        "accuracy": float(metrics["accuracy"]),
        "accuracy_without_ltm_read": without_ltm,
        "train_seconds": round(train_seconds, 1),
        "eval_seconds": round(eval_seconds, 1),
        "update_growth": max(growth) if growth else None,
        "parameters": model.count_params(),
    }


def ablate_ltm(model, dataset):
    """Answer accuracy of the same weights with every LTM switched off
    (``memory_enabled = False``: neither written nor read): how much the
    model relies on the long-term memory."""
    model.memory_enabled = False
    try:
        metrics = model.evaluate(dataset, verbose=0, return_dict=True)
    finally:
        model.memory_enabled = True
    return float(metrics["accuracy"])


def table(results):
    lines = [
        "| arm | length | STM / tokens | answer accuracy | "
        "without LTM read | eval loss | train time (s) |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results:
        ablated = r["accuracy_without_ltm_read"]
        ablated = "–" if ablated is None else f"{ablated:.3f}"
        lines.append(
            f"| {r['arm']} | {r['length']} | {r['stm_length']}/{r['tokens']}"
            f" | {r['accuracy']:.3f} | {ablated} | {r['eval_loss']:.3f} | "
            f"{r['train_seconds']:.0f} |"
        )
    return "\n".join(lines)


def baselines(length, segment_length, stm_length):
    """Yardsticks for one length: the accuracy of an ideal counter that
    sees what each bounded memory holds at the first answer token."""
    in_segment = segment_length - sorting_data.ANSWER_LENGTH
    visible = {
        "elimination only": 0,
        "counter over the last segment": in_segment,
        "counter over segment + STM": in_segment + stm_length,
    }
    return {
        name: sorting_data.counting_baseline(
            length, min(count, length), num_examples=256, seed=7
        )
        for name, count in visible.items()
    }


def main(argv=None):
    args = parse_args(argv)
    if args.data_parallel is not None:
        from keras_infmemory import distribution

        setup = distribution.data_parallel(args.data_parallel or None)
        devices = setup.device_mesh.devices.size
        if args.batch_size % devices:
            raise ValueError(
                f"--batch-size must be a multiple of the {devices} devices. "
                f"Received: batch_size={args.batch_size}"
            )
        print(f"Data parallel over {devices} devices.")
    results = []
    start = time.perf_counter()
    yardsticks = {}
    for length in args.lengths:
        for arm in args.arms:
            results.append(run_one(arm, length, args))
        yardsticks[length] = baselines(
            length,
            results[-1]["segment_length"],
            max(r["stm_length"] for r in results if r["length"] == length),
        )
    os.makedirs(args.output, exist_ok=True)
    record = {
        "backend": keras.backend.backend(),
        "scale": args.scale,
        "config": sorting_models.get_scale(args.scale),
        "args": {k: v for k, v in vars(args).items()},
        "chance_accuracy": 1.0 / sorting_data.NUM_SYMBOLS,
        "counting_baselines": yardsticks,
        "results": results,
        "total_seconds": round(time.perf_counter() - start, 1),
    }
    path = os.path.join(args.output, f"{args.name}.json")
    write_json(record, path, indent=2)
    try:
        from experiments.plots import plot_accuracy_by_length

        plot_accuracy_by_length(
            results,
            os.path.join(args.output, f"{args.name}.png"),
            title=f"Sorting, scale {args.scale!r}",
        )
    except ImportError:  # matplotlib is optional
        print("(matplotlib not installed: no plot)")
    print(f"\n{table(results)}\n")
    for length, values in yardsticks.items():
        print(
            f"{length} symbols, ideal counters: "
            + ", ".join(f"{k} {v:.3f}" for k, v in values.items())
        )
    print(
        f"chance: {1 / sorting_data.NUM_SYMBOLS:.3f}; total "
        f"{record['total_seconds']:.0f} s; wrote {path}"
    )
    return record


if __name__ == "__main__":
    main()
