"""Headroom and focus on retrieval: exact match against steps, and where
the ∞-former's reads land against the needle (issue 29, item 3).

Trains one arm of `experiments.retrieval` (``--arm``) on one task at the
``"cpu"`` scale with the recipe changed by the flags (lengths, steps,
learning rate, warm-up, batch, model and LTM options), in chunks of
``--every`` steps, and after each chunk evaluates a fixed held-out set
(``--eval-batches`` batches per depth, `experiments.retrieval.EVAL_SEED`):
exact match (every answer token right) and token accuracy (at the end,
for the arms with an LTM, also with the LTM off, same weights). For the arms
with an LTM it also records, on one held-out batch, each memory layer's
reads at the answer tokens (`InfFormerLM.memory_densities`): the mean and
quantiles of σ², how far μ lands from the needle's place on the memory's
time axis (`keras_infmemory.memory_map.MemoryMap`; the heads' mean and the
nearest head), the share of μ within 0.02 of 0 or 1 (saturated), the share
of each head's read on the needle's tokens against the share of the axis
they hold (`read_weights`, `room`: 1 is a read that looks at the needle no
more than anywhere else; mean and best head) and, on JAX, the gradient
norm of each LTM weight (`experiments.language_model.diagnose`). Appends
one entry (with its command and commit) to ``--output``::

    KERAS_BACKEND=jax python benchmarks/retrieval_focus.py \\
        --arm full_attention --lengths 256 --steps 1500 --every 250 \\
        --output benchmarks/results/retrieval_focus.json
"""

import argparse
import json
import os
import shlex
import subprocess
import sys
import time

os.environ.setdefault("KERAS_BACKEND", "jax")

import keras  # noqa: E402
import numpy as np  # noqa: E402

from experiments import retrieval as rt  # noqa: E402
from experiments.data import retrieval as data  # noqa: E402
from keras_infmemory import memory_map  # noqa: E402


class _Chunk(keras.utils.PyDataset):
    """Batches ``[start, start + count)`` of a `RetrievalDataset`."""

    def __init__(self, dataset, start, count):
        super().__init__()
        self.dataset, self.start, self.count = dataset, start, count

    def __len__(self):
        return self.count

    def __getitem__(self, index):
        return self.dataset[self.start + index]


def softmax_location(ltm, query, coefficients=None, summary=None):
    """A PROTOTYPE read density, measured here before any layer option:
    the Gaussian that matches the mean and variance of the mixture
    ``Σ_n p_n ψ_n(t)``, ``p = softmax(K_h q / √d)`` over the basis scores
    (docs/math.md §3.2): a content-chosen basis function pulls μ to its
    centre, as a softmax attention picks a token. ``w_μ`` and ``w_σ`` are
    unused. Training and whole-segment reads only (no decoding cache)."""
    from keras import ops

    if coefficients is None:
        raise NotImplementedError("softmax_location: no decoding cache")
    h, d, e = ltm.num_heads, ltm.key_dim, ltm.memory_dim
    w_k = ops.reshape(ltm.key_kernel, (e, h, d))
    keys = ops.einsum("bne,ehd->bhnd", coefficients, w_k)  # (B, H, N, d)
    scores = ops.einsum("bqhd,bhnd->bhqn", query, keys)  # (B, H, Lq, N)
    scores = scores * (ltm.density_scale / d**0.5)
    p = ops.softmax(scores, axis=-1)
    centers, widths = ltm._basis()  # (N,) each, the basis order
    mu = ops.sum(p * centers, axis=-1)  # (B, H, Lq)
    spread = ops.sum(p * (centers - mu[..., None]) ** 2, axis=-1)
    variance = spread + ops.sum(p * widths**2, axis=-1)
    return mu, ops.maximum(variance, ltm.min_variance)


def _recipe(args):
    changes = {
        "tasks": (args.task,),
        "lengths": tuple(args.lengths),
        "steps": args.steps,
        "batch_size": args.batch_size,
        "learning_rate": args.learning_rate,
        "eval_batches": args.eval_batches,
        "max_full_length": max(args.lengths),
        "depths": tuple(args.depths) if args.depths else None,
    }
    recipe = rt.Recipe.from_scale("cpu", **changes)
    model, ltm = json.loads(args.model), json.loads(args.ltm)
    if model or ltm:
        config = rt.SCALES["cpu"]
        config["model"].update(model)
        config["ltm"].update(ltm)
    return recipe


def _optimizer(args, recipe):
    schedule = keras.optimizers.schedules.CosineDecay(
        0.0 if args.warmup else args.learning_rate,
        decay_steps=args.steps - args.warmup,
        warmup_target=args.learning_rate if args.warmup else None,
        warmup_steps=args.warmup,
    )
    clip = rt.SCALES["cpu"]["train"]["global_clipnorm"]
    if args.memory_learning_rate is None:
        return keras.optimizers.Adam(schedule, global_clipnorm=clip)
    from keras_infmemory.optimizers import MemoryAdamW

    return MemoryAdamW(
        learning_rate=args.learning_rate,
        memory_learning_rate=args.memory_learning_rate,
        weight_decay=0.0,
        global_clipnorm=clip,
    )


def _needle_reads(model, recipe, task, length, depth):
    """Per LTM layer: σ², μ − needle place and the needle's share of the
    reads at the answer tokens of one held-out batch."""
    x, y, w, details = data.make_batch(
        recipe.batch_size,
        task,
        length,
        recipe.segment_length,
        depth_segments=depth,
        seed=(rt.EVAL_SEED, length, depth, 0),
        split="held_out",
        return_details=True,
    )
    densities, _ = model.memory_densities(x)
    S = recipe.segment_length
    num_segments = x.shape[1] // S
    tau = rt.SCALES["cpu"]["ltm"]["tau"]
    # With one segment of STM the LTM at segment s holds segments ..s-2:
    # replay the writes up to the question's segment (the last).
    tracker = memory_map.MemoryMap(x.shape[0], S, tau)
    for _ in range(num_segments - 1):
        tracker.step(np.ones((x.shape[0], S), bool))
    answer = np.flatnonzero(w[0] > 0)  # the same positions in every row
    needle_len = len(data.encode(data.PASSKEY_NEEDLE.format(key="12345")))
    layers = []
    for density in densities:
        mu = keras.ops.convert_to_numpy(density["mu"])  # (B, H, T)
        var = keras.ops.convert_to_numpy(density["variance"])
        offsets, ratios, nearest, best = [], [], [], []
        for row in range(x.shape[0]):
            positions = tracker.positions(row)[: x.shape[1]]
            start = details["needle_start"][row]
            needle = slice(start, start + needle_len)
            place = np.nanmean(positions[needle])
            room = max(memory_map.room(positions)[needle].sum(), 1e-12)
            for q in answer:
                offsets.append(float(np.mean(mu[row, :, q]) - place))
                nearest.append(float(np.min(np.abs(mu[row, :, q] - place))))
                heads = [
                    memory_map.read_weights(
                        mu[row, h : h + 1, q], var[row, h : h + 1, q], positions
                    )[needle].sum()
                    / room
                    for h in range(mu.shape[1])
                ]  # (H,) each head's needle share ÷ the needle's room
                ratios.append(float(np.mean(heads)))
                best.append(float(np.max(heads)))
        v = var[:, :, answer]
        layers.append(
            {
                "variance_mean": float(np.mean(v)),
                "variance_quantiles": [
                    float(f"{q:.4g}")
                    for q in np.quantile(v, [0.05, 0.25, 0.5, 0.75, 0.95])
                ],
                "mu_std": float(np.std(mu[:, :, answer])),
                "mu_minus_needle_mean": float(np.mean(offsets)),
                "mu_minus_needle_abs": float(np.mean(np.abs(offsets))),
                "needle_focus": float(np.mean(ratios)),
                "needle_focus_best_head": float(np.mean(best)),
                "mu_nearest_head_abs": float(np.mean(nearest)),
                "mu_saturated": float(
                    np.mean(
                        (mu[:, :, answer] < 0.02) | (mu[:, :, answer] > 0.98)
                    )
                ),
            }
        )
    return layers


def _evaluate(model, arm, recipe, task, diagnose):
    cells = {}
    for length in recipe.lengths:
        for depth in recipe.depths_at(task, length):
            batches = [
                rt.held_out_batch(task, length, depth, i, recipe)
                for i in range(recipe.eval_batches)
            ]
            exact, tokens = rt._answers(model, batches)
            cells[f"{length}/{depth}"] = [round(exact, 4), round(tokens, 4)]
    out = {"cells": cells}
    out["exact_mean"] = float(np.mean([c[0] for c in cells.values()]))
    out["tokens_mean"] = float(np.mean([c[1] for c in cells.values()]))
    if diagnose and arm in ("inf_former", "sticky"):
        length = max(recipe.lengths)
        depth = max(recipe.depths_at(task, length))
        out["reads"] = {
            "cell": f"{length}/{depth}",
            "layers": _needle_reads(model, recipe, task, length, depth),
        }
        if keras.backend.backend() == "jax":
            from experiments.language_model import diagnose as lm_diagnose

            probe = rt.held_out_batch(task, length, depth, 0, recipe)
            grads = lm_diagnose(model, probe)["gradient_norms"]
            out["reads"]["gradient_norms"] = grads
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arm", default="full_attention", choices=rt.ARMS)
    parser.add_argument("--task", default="passkey", choices=rt.TASKS)
    parser.add_argument("--lengths", type=int, nargs="+", default=[256])
    parser.add_argument("--depths", type=int, nargs="*")
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--every", type=int, default=250)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--learning-rate", type=float, default=3e-3)
    parser.add_argument("--warmup", type=int, default=0)
    parser.add_argument("--memory-learning-rate", type=float)
    parser.add_argument("--eval-batches", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--model", default="{}", help="JSON, model changes")
    parser.add_argument("--ltm", default="{}", help="JSON, LTM changes")
    parser.add_argument(
        "--location",
        default="authors",
        choices=("authors", "softmax"),
        help="the read density: the layer's, or `softmax_location`",
    )
    parser.add_argument("--no-diagnose", action="store_true")
    parser.add_argument("--label", default="")
    parser.add_argument("--output", required=True)
    args = parser.parse_args(argv)

    from experiments.console import set_random_seed

    if args.location == "softmax":
        from keras_infmemory.layers.continuous_ltm import ContinuousLTM

        ContinuousLTM._density = softmax_location

    recipe = _recipe(args)
    set_random_seed(args.seed)
    model = rt.build_model(args.arm, recipe)
    model.compile(
        **{
            **rt.compile_arguments(recipe),
            "optimizer": _optimizer(args, recipe),
        }
    )
    dataset = data.RetrievalDataset(
        recipe.batch_size,
        args.task,
        recipe.segment_length,
        context_tokens=recipe.train_lengths(args.arm),
        steps=args.steps,
        seed=args.seed,
    )
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    entry = {
        "label": args.label or args.arm,
        "command": f"KERAS_BACKEND={keras.backend.backend()} python "
        + shlex.join(
            ["benchmarks/retrieval_focus.py", *(argv or sys.argv[1:])]
        ),
        "commit": commit,
        "arm": args.arm,
        "task": args.task,
        "model": rt.SCALES["cpu"]["model"],
        "ltm": rt.SCALES["cpu"]["ltm"],
        "curve": [],
    }
    start = time.perf_counter()
    for done in range(0, args.steps, args.every):
        count = min(args.every, args.steps - done)
        history = keras.Model.fit(
            model, _Chunk(dataset, done, count), epochs=1, verbose=0
        )
        point = {
            "step": done + count,
            "loss": round(float(history.history["loss"][-1]), 4),
            "seconds": round(time.perf_counter() - start, 1),
        }
        point.update(
            _evaluate(model, args.arm, recipe, args.task, not args.no_diagnose)
        )
        entry["curve"].append(point)
        print(json.dumps(point), flush=True)
    if args.arm in rt.LTM_ARMS:  # the same weights with the LTM off
        model.memory_enabled = False
        off = _evaluate(model, args.arm, recipe, args.task, False)
        model.memory_enabled = True
        entry["memory_off"] = off
        print(json.dumps({"memory_off": off}), flush=True)
    records = []
    if os.path.exists(args.output):
        with open(args.output) as f:
            records = json.load(f)
    records.append(entry)
    with open(args.output, "w") as f:
        json.dump(records, f, indent=1)
        f.write("\n")


if __name__ == "__main__":
    main()
