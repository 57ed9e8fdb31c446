"""Does the LTM learn on language? Short ablations of the ∞-former arm.

Trains the ∞-former arm of ``examples/language_model.py`` (scale
``"cpu"``, one seed, few steps; `experiments.language_model`) once per
variant, the data prepared once: the library defaults, no KL term, no
memory gate, a 4× larger initial LTM output kernel, a 5× LTM learning
rate and the read-density options ``initial_variance`` and
``density_scale`` (docs/math.md §3.3), next to two references without LTM
(Transformer-XL, window). For each it records the held-out perplexity
over the first ``--eval-steps`` segments of every held-out play, with and
without the LTM (same weights), and the diagnostics of
`experiments.language_model.diagnose` over training: the gradient norm
of each LTM weight (JAX) and the spread and width of the read densities
(records made before ``InfFormerLM.memory_densities`` also carry the LTM
output RMS next to the attention output RMS). Writes
``<output>/lm_diagnosis.json`` after every variant; ``--table`` prints a
record's Markdown table (the commands of the issue-14
record are in benchmarks/results/lm_diagnosis.md)::

    KERAS_BACKEND=jax nice -n 10 python benchmarks/lm_diagnosis.py \\
        --steps 150 --output runs/lm_diagnosis
"""

import argparse
import json
import os
import time

os.environ.setdefault("KERAS_BACKEND", "jax")

import numpy as np  # noqa: E402

from experiments import language_model as lm  # noqa: E402
from experiments.evaluation import bucket_starts  # noqa: E402

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
            ratio = "—"  # records before the densities' public API only
            if "ltm_rms" in final:
                ratio = _pair(
                    np.divide(final["ltm_rms"], final["attention_rms"]), 2
                )
            cells = [
                f"{on:.2f}",
                f"{off:.2f}",
                f"{off - on:+.2f}",
                _pair(final["variance_mean"]),
                _pair(final["mu_std"], 2),
                ratio,
            ] + [
                _pair(grads[k], 2) if k in grads else "—"
                for k in ("mu_kernel", "sigma_kernel", "value_kernel")
            ]
        cells += [f"{r['final_train_loss']:.3f}", f"{r['seconds']:.0f}"]
        lines.append(f"| {r['variant']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def variant_settings(argv):
    """A variant's settings from its flags (those of
    ``examples/language_model.py``): ``(configure keywords, output kernel
    scale)``."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--ltm", type=lm.json_object, default={})
    parser.add_argument("--memory-learning-rate", type=float)
    parser.add_argument("--output-kernel-scale", type=float, default=1.0)
    flags = parser.parse_args(argv)
    settings = {
        "ltm": flags.ltm,
        "memory_learning_rate": flags.memory_learning_rate,
    }
    return settings, flags.output_kernel_scale


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
    corpus = lm.prepare_corpus(lm.configure("cpu", steps=options.steps))
    held = corpus.held_out
    length = held.segment_length
    positions, _ = lm.held_out_buckets(held)
    starts = bucket_starts(length, options.eval_steps * length)
    probe = lm.probe_segments(held)
    os.makedirs(options.output, exist_ok=True)
    results = []
    for name in options.variants:
        settings, kernel_scale = variant_settings(VARIANTS[name])
        config = lm.configure("cpu", steps=options.steps, **settings)
        begin = time.perf_counter()
        arm = ARM.get(name, "inf_former")
        model, info = lm.train_arm(
            arm,
            options.seed,
            config,
            corpus.train,
            corpus.vocabulary_size,
            probe=probe,
            diagnostics_every=options.every,
            output_kernel_scale=kernel_scale,
            verbose=0,
        )
        final = lm.diagnose(model, probe)
        model = lm.evaluation_model(model, arm, config, held.batch_size)
        result = lm.evaluate_arm(
            model, held, positions, starts, max_eval_steps=options.eval_steps
        )
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
                f"mean σ² {final['variance_mean']}, std μ {final['mu_std']}"
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
