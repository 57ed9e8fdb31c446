"""Why do sticky memories trail uniform sampling on sorting? A test.

The sorting record (benchmarks/results/sorting_cpu.md) found the sticky
arm below the uniform ∞-former at every length and proposed a cause: early
in training the read densities are near random, so sticky sampling (the
next write samples where the memory was read, docs/math.md §5) spends its
samples on regions no trained query will need, while uniform sampling
keeps the whole past at even resolution. This script tests it with the
sorting experiment's ``"cpu"`` scale (`experiments.sorting`), one length,
per seed:

* ``uniform``: the ∞-former arm trained for ``--steps`` (a snapshot of its
  weights and optimizer is taken half way);
* ``sticky``: the sticky arm trained for ``--steps``, same data and seed;
* ``sticky after warm-up``: the uniform snapshot at half way, trained on
  the second half of the same batches with sticky sampling (same weights,
  Adam moments, step counter and learning-rate schedule).

If the cause is sticky sampling during the early training, the warm-up arm
should match or beat ``uniform``. Every trained model is also evaluated
with both samplers (the weights are the same kind: a sampler has none), on
the same held-out batches: whether sticky sampling costs accuracy at
evaluation, with the weights fixed, separates what the sampler does to a
read from what it does to training. Writes
``<output>/<name>.json`` and prints a Markdown table::

    KERAS_BACKEND=jax python benchmarks/sticky_sorting.py --length 1024 \\
        --seeds 0 1 --output benchmarks/results
"""

import argparse
import dataclasses
import json
import os
import platform
import time

os.environ.setdefault("KERAS_BACKEND", "jax")

import keras  # noqa: E402
import numpy as np  # noqa: E402

from experiments import console, sorting  # noqa: E402
from experiments.records import write_json  # noqa: E402

SAMPLERS = {"uniform": "inf_former", "sticky": "sticky"}
"""Evaluation sampler -> the sorting arm that has it."""


class Batches(keras.utils.PyDataset):
    """Batches ``start .. stop − 1`` of a dataset (a part of one epoch)."""

    def __init__(self, dataset, start, stop):
        super().__init__()
        self.dataset, self.start, self.stop = dataset, start, stop

    def __len__(self):
        return self.stop - self.start

    def __getitem__(self, index):
        return self.dataset[self.start + index]


def snapshot(model):
    """The model's weights and its optimizer's variables, as NumPy."""
    return {
        "weights": [np.array(w) for w in model.get_weights()],
        "optimizer": [
            keras.ops.convert_to_numpy(v) for v in model.optimizer.variables
        ],
    }


def restore(model, saved, batch):
    """Builds ``model`` (one forward pass of ``batch``) and its optimizer,
    then loads ``saved`` (`snapshot` of a model of the same weights)."""
    model(batch[0])
    model.optimizer.build(model.trainable_variables)
    model.set_weights(saved["weights"])
    variables = model.optimizer.variables
    if len(variables) != len(saved["optimizer"]):
        raise ValueError(
            "The optimizers differ: "
            f"{len(variables)} against {len(saved['optimizer'])} variables."
        )
    for variable, value in zip(variables, saved["optimizer"], strict=True):
        if tuple(variable.shape) != value.shape:
            raise ValueError(
                f"Optimizer variable {variable.path} has shape "
                f"{tuple(variable.shape)}; the snapshot's is {value.shape}."
            )
        variable.assign(value)


def evaluate_both(recipe, saved, dataset, batch):
    """Answer accuracy of the weights ``saved`` read with each sampler."""
    accuracy = {}
    for sampler, arm in SAMPLERS.items():
        model = sorting.build_model(arm, recipe)
        restore(model, saved, batch)
        metrics = model.evaluate(dataset, verbose=0, return_dict=True)
        accuracy[sampler] = float(metrics["accuracy"])
    return accuracy


def run_seed(recipe, seed, verbose=0):
    """The three training runs of one seed (of ``recipe``, an
    `experiments.sorting.Recipe` of one length) and their
    cross-evaluation."""
    recipe = dataclasses.replace(recipe, seed=seed)
    (length,) = recipe.lengths
    console.set_random_seed(seed)
    uniform = sorting.build_model("inf_former", recipe)
    data = sorting.make_datasets(length, uniform.segment_length, recipe)
    train, held_out = data["train"], data["eval"]
    half = recipe.steps // 2
    batch = train[0]
    runs = {}

    start = time.perf_counter()
    uniform.fit(Batches(train, 0, half), epochs=1, verbose=verbose)
    halfway = snapshot(uniform)
    history = uniform.fit(
        Batches(train, half, recipe.steps), epochs=1, verbose=verbose
    )
    runs["uniform"] = (uniform, history, time.perf_counter() - start)

    console.set_random_seed(seed)
    sticky = sorting.build_model("sticky", recipe)
    start = time.perf_counter()
    history = sticky.fit(train, epochs=1, verbose=verbose)
    runs["sticky"] = (sticky, history, time.perf_counter() - start)

    warm = sorting.build_model("sticky", recipe)
    restore(warm, halfway, batch)
    start = time.perf_counter()
    history = warm.fit(
        Batches(train, half, recipe.steps), epochs=1, verbose=verbose
    )
    runs["sticky after warm-up"] = (warm, history, time.perf_counter() - start)

    results = []
    for name, (model, history, seconds) in runs.items():
        accuracy = evaluate_both(recipe, snapshot(model), held_out, batch)
        # The restored copy with the model's own sampler must score as the
        # model itself: a check of `restore`.
        own = model.evaluate(held_out, verbose=0, return_dict=True)
        own_sampler = "uniform" if name == "uniform" else "sticky"
        if abs(own["accuracy"] - accuracy[own_sampler]) > 1e-6:
            raise RuntimeError(
                f"{name}: the restored weights score "
                f"{accuracy[own_sampler]}, the trained model "
                f"{own['accuracy']}."
            )
        results.append(
            {
                "seed": seed,
                "training": name,
                "final_train_loss": float(history.history["loss"][-1]),
                "accuracy_read_uniform": accuracy["uniform"],
                "accuracy_read_sticky": accuracy["sticky"],
                "train_seconds": round(seconds, 1),
            }
        )
        print(
            f"seed {seed}, {name}: accuracy read uniform "
            f"{accuracy['uniform']:.3f}, read sticky {accuracy['sticky']:.3f}"
        )
    return results


def table(record):
    """The Markdown table of a record: per training, the mean ± std over
    seeds of the accuracy read with each sampler."""
    lines = [
        "| training | read with uniform sampling | read with sticky "
        "sampling | per seed (uniform / sticky) |",
        "|---|---|---|---|",
    ]
    names = dict.fromkeys(r["training"] for r in record["results"])
    for name in names:
        rows = [r for r in record["results"] if r["training"] == name]
        cells = []
        for key in ("accuracy_read_uniform", "accuracy_read_sticky"):
            values = np.array([r[key] for r in rows])
            cells.append(f"{values.mean():.3f} ± {values.std():.3f}")
        seeds = ", ".join(
            f"{r['accuracy_read_uniform']:.3f} / "
            f"{r['accuracy_read_sticky']:.3f}"
            for r in rows
        )
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {seeds} |")
    return "\n".join(lines) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--length", type=int, default=1024)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--steps", type=int, help="default: the scale's")
    parser.add_argument("--output", default="runs/sticky_sorting")
    parser.add_argument("--name", default="sticky_sorting")
    parser.add_argument("--quick", action="store_true", help="tiny (tests)")
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
    try:
        recipe = sorting.Recipe.from_scale(
            "cpu",
            quick=options.quick,
            lengths=[options.length],
            steps=options.steps,
        )
    except ValueError as error:
        parser.error(str(error))
    if recipe.steps < 2:
        parser.error(f"--steps must be >= 2. Received: {recipe.steps}")
    start = time.perf_counter()
    record = {
        "backend": keras.backend.backend(),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "length": options.length,
        "steps": recipe.steps,
        "seeds": [],
        "quick": options.quick,
        "results": [],
    }
    os.makedirs(options.output, exist_ok=True)
    path = os.path.join(options.output, f"{options.name}.json")
    for seed in options.seeds:
        record["results"] += run_seed(recipe, seed)
        record["seeds"].append(seed)
        record["total_seconds"] = round(time.perf_counter() - start, 1)
        write_json(record, path, indent=2)  # after every seed
    print(f"\n{table(record)}\nwrote {path}")
    return record


if __name__ == "__main__":
    main()
