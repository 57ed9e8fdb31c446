"""Does the LTM learn on language? Short ablations of the ∞-former arm.

Trains the ∞-former arm of ``examples/language_model.py`` (preset
``"cpu"``, one seed, few steps) once per variant, the data prepared once:
the library defaults, no KL term, no memory gate, a 4× larger initial LTM
output kernel, a 5× LTM learning rate and the read-density options
``initial_variance`` and ``density_scale`` (docs/math.md §3.3), next to
two references without LTM (Transformer-XL, window). For each it records the
held-out perplexity over the first ``--eval-steps`` segments of every
held-out play, with and without the LTM (same weights), and the
diagnostics of `diagnose` over training: gradient norm of each LTM weight
(JAX), spread of the read densities, LTM output RMS next to the attention
output RMS. Writes ``<output>/lm_diagnosis.json`` after every variant;
``--table`` prints a record's Markdown table (the commands of the issue-14
record are in benchmarks/results/lm_diagnosis.md)::

    KERAS_BACKEND=jax nice -n 10 python benchmarks/lm_diagnosis.py \\
        --steps 150 --output runs/lm_diagnosis
"""

import argparse
import importlib.util
import json
import os
import time

os.environ.setdefault("KERAS_BACKEND", "jax")

import numpy as np  # noqa: E402

from experiments.evaluation import (  # noqa: E402
    bucket_starts,
    document_positions,
)
from keras_infmemory.documents import DocumentBlocks  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VARIANTS = {
    "defaults": [],
    "kl_weight=0": ["--ltm", '{"kl_weight": 0}'],
    "memory_gate=None": ["--ltm", '{"memory_gate": null}'],
    "output kernel ×4": ["--output-kernel-scale", "4"],
    "LTM lr ×5": ["--memory-learning-rate", "1.5e-2"],
    # The read-density options of ContinuousLTM (docs/math.md §3.3).
    "initial_variance=0.01": ["--ltm", '{"initial_variance": 0.01}'],
    "density_scale=10": ["--ltm", '{"density_scale": 10}'],
    "initial_variance=0.01, density_scale=10": [
        "--ltm",
        '{"initial_variance": 0.01, "density_scale": 10}',
    ],
    # The references: no LTM, same data, steps and seed; the window arm
    # has no memory at all (what the STM itself is worth).
    "Transformer-XL": [],
    "window": [],
}
ARM = {"Transformer-XL": "transformer_xl", "window": "window"}
"""The arm each variant trains (default ``"inf_former"``)."""


def load_example():
    path = os.path.join(ROOT, "examples", "language_model.py")
    spec = importlib.util.spec_from_file_location("language_model", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _pair(values, digits=3):
    """``a | b`` of per-layer values, in ``digits`` significant digits."""
    return " \\| ".join(f"{v:.{digits}g}" for v in values)


def table(record):
    """The Markdown table of a ``lm_diagnosis.json`` record (layer 0 \\|
    layer 1 in each cell)."""
    lines = [
        f"{record['steps']} steps, seed {record['seed']}, held-out "
        f"perplexity over the first {record['eval_steps']} segments of each "
        "play; layer 0 \\| layer 1, measured after training.",
        "",
        "| variant | perplexity | LTM off | off − on | mean σ² | std μ "
        "| LTM RMS / attention RMS | ‖∇‖ mu_kernel | ‖∇‖ sigma_kernel "
        "| ‖∇‖ value_kernel | train loss | s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in record["results"]:
        on, off = r["perplexity"], r["perplexity_without_ltm"]
        final = r["final"]
        if off is None:
            cells = [f"{on:.2f}"] + ["—"] * 8
        else:
            grads = final.get("gradient_norms", {})
            ratio = [
                a / b
                for a, b in zip(
                    final["ltm_rms"], final["attention_rms"], strict=True
                )
            ]
            cells = [
                f"{on:.2f}",
                f"{off:.2f}",
                f"{off - on:+.2f}",
                _pair(final["variance_mean"]),
                _pair(final["mu_std"], 2),
                _pair(ratio, 2),
            ] + [
                _pair(grads[k], 2) if k in grads else "—"
                for k in ("mu_kernel", "sigma_kernel", "value_kernel")
            ]
        cells += [f"{r['final_train_loss']:.3f}", f"{r['seconds']:.0f}"]
        lines.append(f"| {r['variant']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--eval-steps", type=int, default=64)
    parser.add_argument("--every", type=int, default=100)
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", default="runs/lm_diagnosis")
    parser.add_argument(
        "--table",
        metavar="JSON",
        help="no training: print the Markdown table of this record",
    )
    options = parser.parse_args(argv)
    if options.table:
        with open(options.table) as f:
            print(table(json.load(f)), end="")
        return None
    example = load_example()
    common = ["--arms", "inf_former", "--steps", str(options.steps)]
    common += ["--max-eval-steps", str(options.eval_steps), "--verbose", "0"]
    common += ["--diagnostics", str(options.every)]
    args = example.parse_args(common)
    tokenizer, train_ids, held_ids, _ = example.prepare_data(args)
    vocabulary = tokenizer.vocabulary_size()
    start_id = example.document_start_id(tokenizer)
    length = args.config["model"]["segment_length"]
    train = DocumentBlocks(
        train_ids, length, args.config["train"]["batch_size"], start_id
    )
    held = DocumentBlocks(held_ids, length, len(held_ids), start_id)
    x, y, w = held.arrays()
    rows = held.batch_size
    positions = document_positions(x["reset_mask"], rows, length)
    starts = bucket_starts(length, options.eval_steps * length)
    probe = tuple(
        np.concatenate(list(a[: 4 * rows].reshape(4, rows, length)), axis=1)
        for a in (x["token_ids"], y, w)
    )
    os.makedirs(options.output, exist_ok=True)
    results = []
    for name in options.variants:
        args = example.parse_args(common + VARIANTS[name])
        begin = time.perf_counter()
        arm = ARM.get(name, "inf_former")
        model, info = example.train_arm(
            arm, options.seed, args, train, vocabulary, probe
        )
        final = example.diagnose(model, probe)
        model = example.evaluation_model(model, arm, args, rows)
        result = example.evaluate_arm(model, held, positions, starts, args)
        results.append(
            {
                "variant": name,
                "arm": arm,
                "argv": VARIANTS[name],
                "perplexity": result["perplexity"],
                "perplexity_without_ltm": result["perplexity_without_ltm"],
                "loss_by_position": result["loss_by_position"],
                "final_train_loss": float(np.mean(info["train_loss"][-20:])),
                "diagnostics": info["diagnostics"],
                "final": final,
                "ltm_weight_change": info["ltm_weight_change"],
                "seconds": round(time.perf_counter() - begin, 1),
            }
        )
        line = f"{name}: perplexity {result['perplexity']:.2f}"
        if result["perplexity_without_ltm"] is not None:
            line += (
                f", without LTM {result['perplexity_without_ltm']:.2f}; "
                f"LTM/attention RMS {final['ltm_rms']} / "
                f"{final['attention_rms']}"
            )
        print(line, flush=True)
        with open(os.path.join(options.output, "lm_diagnosis.json"), "w") as f:
            json.dump(
                {
                    "steps": options.steps,
                    "eval_steps": options.eval_steps,
                    "seed": options.seed,
                    "bucket_starts": starts,
                    "results": results,
                },
                f,
                indent=1,
            )
    return results


if __name__ == "__main__":
    main()
