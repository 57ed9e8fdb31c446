"""Train every memory on long-context retrieval; evaluate it over a grid of
context lengths and depths.

Two tasks (``experiments.data.retrieval``; docs/retrieval.md): passkey
retrieval (a 5-digit key hidden in filler, asked for at the end) and
BABILong-style ``qa1`` (where is a person, after facts spread through a
play); ``qa2`` (two supporting facts) on request. The *depth* of an example
is how many segments separate the needle (the key, or the last supporting
fact) from the question. The arms (``experiments.retrieval.ARMS``):

* ``window``, ``transformer_xl``, ``compressive``, ``inf_former``,
  ``sticky``: `InfFormerLM.arm` (each segment alone; plus one segment of
  short-term memory; plus compressed segments; plus the continuous
  long-term memory (LTM); with sticky memories);
* ``full_attention``: one segment over the whole context, the ceiling, up
  to ``--max-full-length`` tokens;
* ``hub_llama3``: a tiny Llama 3 built from scratch given the memory by
  ``attach_memory``, the KerasHub path.

One model per arm, task and seed trains on batches mixing the lengths and
depths, then answers held-out examples at each cell of the grid; the arms
with an LTM answer again with it off (same weights). A first look (a few
minutes on two cores: each of the 14 models compiles its own functions)::

    KERAS_BACKEND=jax python examples/retrieval.py --quick

The CPU grid, one process per seed, then one record (hours on two cores:
benchmarks/results/retrieval_ceiling.md has the step times measured;
``--resume`` continues a run that stopped)::

    KERAS_BACKEND=jax python examples/retrieval.py --scale cpu --seeds 0 \\
        --output runs/retrieval --name retrieval_seed0
    python examples/retrieval.py --merge runs/retrieval/retrieval_seed*.json \\
        --output benchmarks/results --name retrieval_cpu

It ends with a table (exact-match accuracy per task and arm within
Transformer-XL's reach, one segment of short-term memory per layer, and
beyond it, with the LTM off and in answer tokens there too), a one-line
verdict (the memory arm against its baseline beyond that reach, with the
seed spread) and the files it wrote:
``<name>.json`` (every setting and cell), ``<name>.md`` (grids per task,
min–max over seeds) and ``<name>.png`` (accuracy against length and
depth). ``--scale paper`` is an accelerator's job.
"""

import argparse
import os
import shlex
import sys
import time

os.environ.setdefault("KERAS_BACKEND", "jax")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

# Imported first: it holds back TensorFlow's load notices.
from experiments import console, retrieval  # noqa: E402
from experiments.records import finish  # noqa: E402


def scale_default(key):
    """Help text: ``key``'s default at each scale and with ``--quick``."""

    def text(value):
        return " ".join(map(str, value)) if isinstance(value, tuple) else value

    scales = ", ".join(
        f"{name} {text(scale['train'][key])}"
        for name, scale in retrieval.SCALES.items()
    )
    return f"(default: {scales}; --quick {text(retrieval.QUICK['train'][key])})"


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n")[0],
        epilog="Quick look: --quick (a tiny model, 2 steps; every arm, "
        "passkey and qa1).",
        formatter_class=console.HelpFormatter,  # options with their defaults
    )
    add = parser.add_argument
    # fmt: off
    add("--scale", choices=tuple(retrieval.SCALES), default="cpu",
        help="model and recipe (experiments.retrieval.SCALES)")
    add("--quick", action="store_true",
        help="a tiny model, 2 steps, one held-out batch per cell")
    add("--tasks", nargs="+", choices=retrieval.TASKS, metavar="TASK",
        default=list(retrieval.DEFAULT_TASKS), help="of passkey, qa1, qa2")
    add("--arms", nargs="+", choices=retrieval.ARMS, metavar="ARM",
        default=list(retrieval.ARMS), help=f"of {', '.join(retrieval.ARMS)}")
    add("--seeds", nargs="+", type=int, default=[0],
        help="one model per arm, task and seed")
    add("--lengths", nargs="+", type=int, help="context lengths in tokens, "
        f"trained on (mixed) and evaluated at {scale_default('lengths')}")
    add("--depths", nargs="+", type=int, help="depths evaluated, those that "
        "fit each length (default: 0, 1, 2, 4, 8, ... and the deepest)")
    add("--steps", type=int, help=f"training steps {scale_default('steps')}")
    add("--batch-size", type=int,
        help=f"examples per batch {scale_default('batch_size')}")
    add("--learning-rate", type=float, help="start of the cosine decay "
        f"(default: {retrieval.SCALES['cpu']['train']['learning_rate']} "
        f"at cpu, {retrieval.SCALES['paper']['train']['learning_rate']} "
        "at paper)")
    add("--eval-batches", type=int, help="held-out batches per cell "
        f"{scale_default('eval_batches')}")
    add("--max-full-length", type=int, help="longest context of "
        f"full_attention {scale_default('max_full_length')}")
    add("--merge", nargs="+", metavar="JSON",
        help="no training: merge these records into --output/--name")
    add("--resume", action="store_true", help="keep the runs that "
        "--output/--name already holds and train only the others")
    add("--output", default="results/retrieval", help="folder")
    add("--name", default="retrieval", help="file name of the records")
    add("--verbose", type=int, choices=(0, 1, 2),
        help="fit's verbosity (default: a progress bar on a terminal, one "
        "line per model in a log)")
    # fmt: on
    return parser, parser.parse_args(argv)


def main(argv=None):
    parser, args = parse_args(argv)
    if args.merge:
        record, paths = retrieval.merge(args.merge, args.output, args.name)
        finish(retrieval.summary_table(record), record["verdict"], paths)
        return record
    try:
        recipe = retrieval.Recipe.from_scale(
            args.scale,
            quick=args.quick,
            tasks=args.tasks,
            lengths=args.lengths,
            depths=args.depths,
            steps=args.steps,
            batch_size=args.batch_size,
            learning_rate=args.learning_rate,
            eval_batches=args.eval_batches,
            max_full_length=args.max_full_length,
        )
    except ValueError as error:
        parser.error(str(error))
    console.quiet()  # no grain notices at every fit
    verbose = console.fit_verbosity(args.verbose)
    argv = sys.argv[1:] if argv is None else argv
    command = shlex.join(["python", "examples/retrieval.py", *argv])
    started = time.perf_counter()
    results, runs = [], []
    path = os.path.join(args.output, f"{args.name}.json")
    if args.resume and os.path.exists(path):
        # Only a record of the same settings continues.
        kept = retrieval.load_record(path)
        wanted = {"scale": recipe.scale, "config": recipe.config}
        wanted["segment_length"] = recipe.segment_length
        retrieval.check_compatible(kept, wanted, "record and the settings")
        results, runs = kept["results"], kept["runs"]
        print(f"Resuming {path}: {len(runs)} runs kept.")
    done = retrieval.done_runs({"runs": runs})
    for seed in args.seeds:
        for task in recipe.tasks:
            for arm in args.arms:
                if (task, arm, seed) in done:
                    continue
                print(f"\n== {arm} on {task}, seed {seed} ==", flush=True)
                # Trained on RetrievalDataset batches: one length a batch,
                # a depth a row; the memory is emptied at each batch.
                model, run = retrieval.train_arm(
                    arm, task, seed, recipe, verbose
                )
                # Then the held-out grid, with the LTM off too.
                cells, run["eval_seconds"] = retrieval.evaluate_arm(
                    model, arm, task, seed, recipe
                )
                results, runs = results + cells, runs + [run]
                print(
                    f"{arm} on {task}: {run['train_seconds']:.0f} s training,"
                    f" {run['eval_seconds']:.0f} s evaluating; exact match "
                    f"{sum(c['accuracy'] for c in cells) / len(cells):.3f} "
                    f"over {len(cells)} cells",
                    flush=True,
                )
                # Written after every model: a stopped run can --resume.
                record = retrieval.make_record(
                    recipe, results, runs, vars(args), started, command
                )
                retrieval.write_record(record, args.output, args.name)
    record = retrieval.make_record(
        recipe, results, runs, vars(args), started, command
    )
    paths = retrieval.write_record(record, args.output, args.name)
    print()
    finish(retrieval.summary_table(record), record["verdict"], paths)
    return record


if __name__ == "__main__":
    main()
