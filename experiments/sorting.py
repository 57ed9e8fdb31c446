"""The ∞-former paper's sorting experiment (its §4.1; docs/sorting.md):
the sorting transformer at two scales, and the runs, tables and verdict of
``examples/sorting.py``.

A scale fixes the model (an `InfFormerLM`), its LTM and its training
recipe. ``"paper"`` is the paper's configuration; ``"cpu"`` is a scaled-down
one that trains in minutes on two CPU cores, with the same ratios where they
matter: one segment of STM, ``N = M``, ``τ = 0.75``, widths {0.01, 0.05},
``λ = 1`` and gradients through the last segment only.

A run trains one arm at one length and seed on fresh batches and evaluates
it on held-out ones: a `Recipe` says how (`build_model`, `make_datasets`),
`result_row` keeps what it measured. The rows of an experiment become a
record (`make_record`: JSON and a figure through `write_record`), a
Markdown `table` and a one-line `verdict` that weighs the difference
between a memory arm and its baseline against the seed spread (the
console is `experiments.console`'s).

Example:

>>> model = sorting_transformer("inf_former", scale="cpu")
>>> model.segment_length, model.stm_length, model.memory_options["num_basis"]
(64, 64, 64)
>>> model.compile(**compile_arguments("cpu", steps=100))
>>> recipe = Recipe.from_scale("cpu", lengths=[1024])
>>> recipe.lengths, recipe.steps, recipe.batch_size
((1024,), 1000, 16)
"""

import copy
import dataclasses
import os
import time

from experiments.console import native_notices_held_back

with native_notices_held_back():  # the TensorFlow backend loads it here
    import keras
    import numpy as np

    from experiments.data import sorting as sorting_data
    from experiments.data.checks import check_positive_int
    from experiments.records import separated, spread, write_json
    from keras_infmemory.models.inf_former_lm import ARMS, InfFormerLM

SCALES = {
    "paper": {
        "model": {
            "num_layers": 3,
            "hidden_dim": 300,
            "num_heads": 6,
            "intermediate_dim": 300,
            "dropout": 0.1,
            "segment_length": 1024,  # STM = one segment (1024)
            "bptt_segments": 1,  # gradients through the last segment only
        },
        "ltm": {
            "num_basis": 512,
            "basis_widths": (0.01, 0.05),
            "ridge_penalty": 1.0,
            "tau": 0.75,
            "num_samples": 512,
            "min_variance": 1e-6,
        },
        "train": {
            "learning_rate": 2e-4,
            "global_clipnorm": 0.25,
            "batch_size": 8,
            "steps": 20000,
            "lengths": (4096, 8192, 16384),
        },
    },
    "cpu": {
        "model": {
            "num_layers": 2,
            "hidden_dim": 64,
            "num_heads": 4,
            "intermediate_dim": 128,
            "dropout": 0.0,
            "segment_length": 64,
            "bptt_segments": 1,
        },
        "ltm": {
            "num_basis": 64,
            "basis_widths": (0.01, 0.05),
            "ridge_penalty": 1.0,
            "tau": 0.75,
            "num_samples": 64,
            "min_variance": 1e-6,
        },
        "train": {
            # Measured at 512 symbols, 800 steps: answer accuracy 0.29
            # with 3e-3 against 0.21 with 1e-3 (∞-former arm).
            "learning_rate": 3e-3,
            "global_clipnorm": 0.25,
            "batch_size": 16,
            "steps": 1000,
            "lengths": (512, 1024, 2048),
        },
    },
}
"""The scales: ``model`` (`InfFormerLM` arguments), ``ltm``
(`ContinuousLTM` arguments) and ``train`` (the recipe of
`compile_arguments` and `examples/sorting.py`)."""


def get_scale(scale):
    """A deep copy of ``SCALES[scale]``, checked."""
    if scale not in SCALES:
        raise ValueError(
            f"`scale` must be one of {tuple(SCALES)}. Received: scale={scale!r}"
        )
    return copy.deepcopy(SCALES[scale])


def sorting_transformer(arm="inf_former", scale="paper", **overrides):
    """The sorting transformer of one of the paper's arms.

    Args:
        arm: one of `ARMS`: ``"window"``, ``"transformer_xl"``,
            ``"inf_former"``, ``"sticky"``, ``"compressive"`` (the
            Compressive Transformer: 4-fold compression into as many
            vectors as the STM holds; ``"cpu"``: 64, the LTM's ``N``).
        scale: ``"paper"`` or ``"cpu"`` (see `SCALES`).
        **overrides: `InfFormerLM` arguments replacing the scale's; an
            ``memory_options`` dict is merged into the scale's LTM settings.

    Returns:
        An unbuilt `InfFormerLM` over the task's `VOCABULARY_SIZE` tokens.
    """
    if arm not in ARMS:
        raise ValueError(f"`arm` must be one of {ARMS}. Received: arm={arm!r}")
    config = get_scale(scale)
    memory_options = {
        **config["ltm"],
        **dict(overrides.pop("memory_options", {})),
    }
    model_config = {**config["model"], **overrides}
    model_config.setdefault("vocabulary_size", sorting_data.VOCABULARY_SIZE)
    model_config.setdefault("name", f"sorting_{arm}")
    return InfFormerLM.arm(arm, memory_options=memory_options, **model_config)


def compile_arguments(scale="paper", steps=None, **overrides):
    """``model.compile`` arguments of a scale's training recipe.

    Adam with a cosine decay over ``steps`` (default: the scale's), global
    gradient-norm clipping, cross-entropy and accuracy over the answer
    tokens only (the weights of `experiments.data.sorting`: the loss is
    divided by the number of answer tokens, not by the sequence length).

    Returns:
        A dict with ``optimizer``, ``loss`` and ``weighted_metrics``.
    """
    train = get_scale(scale)["train"]
    train.update(overrides)
    steps = train["steps"] if steps is None else steps
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(
            f"`steps` must be a positive integer. Received: steps={steps!r}"
        )
    schedule = keras.optimizers.schedules.CosineDecay(
        train["learning_rate"], decay_steps=steps
    )
    return {
        "optimizer": keras.optimizers.Adam(
            learning_rate=schedule, global_clipnorm=train["global_clipnorm"]
        ),
        "loss": keras.losses.SparseCategoricalCrossentropy(
            from_logits=True, reduction="mean_with_sample_weight"
        ),
        "weighted_metrics": [
            keras.metrics.SparseCategoricalAccuracy(name="accuracy")
        ],
    }


# -------------------------------------------------------------------------
# One run: an arm at a length and a seed
# -------------------------------------------------------------------------

QUICK = {
    "model": {
        "num_layers": 1,
        "hidden_dim": 16,
        "num_heads": 2,
        "intermediate_dim": 32,
        "segment_length": 32,
        "memory_options": {"num_basis": 16, "num_samples": 16},
    },
    "train": {"lengths": (40,), "steps": 3, "batch_size": 2, "eval_batches": 1},
}
"""What ``quick=True`` changes (for the tests): a tiny model, a few steps
of a short sequence, one held-out batch."""

EVAL_SEED_OFFSET = 1_000_003
"""Held-out batches use ``seed + EVAL_SEED_OFFSET``: never seen in
training."""

SEGMENT_LOOPS = ("python", "scan")


@dataclasses.dataclass(frozen=True)
class Recipe:
    """How every arm of a sorting experiment is trained and evaluated.

    `Recipe.from_scale` fills what is not given from the scale.

    Attributes:
        scale: ``"cpu"`` or ``"paper"`` (`SCALES`): the model and recipe.
        lengths: tuple of ints, symbols before the separator; one run each.
        steps: int, training steps, one fresh batch each (one epoch).
        batch_size: int.
        learning_rate: float, the start of the cosine decay.
        eval_batches: int, held-out batches of ``batch_size``.
        seed: int, seed of the initial weights and the training batches.
        segment_loop: ``"python"`` or ``"scan"``, how `InfFormerLM` loops
            over the segments.
        compressive_options: ``None`` or a dict of `CompressiveMemory`
            arguments for the ``"compressive"`` arm.
        quick: bool, the tiny model of `QUICK`.
    """

    scale: str
    lengths: tuple
    steps: int
    batch_size: int
    learning_rate: float
    eval_batches: int = 16
    seed: int = 0
    segment_loop: str = "python"
    compressive_options: dict | None = None
    quick: bool = False

    @classmethod
    def from_scale(cls, scale="cpu", quick=False, **changes):
        """The scale's recipe (`QUICK`'s, if ``quick``) with ``changes``;
        a change of ``None`` keeps the default."""
        train = get_scale(scale)["train"]
        names = ("lengths", "steps", "batch_size", "learning_rate")
        defaults = {name: train[name] for name in names}
        if quick:
            defaults.update(QUICK["train"])
        changes = {k: v for k, v in changes.items() if v is not None}
        settings = {**defaults, **changes}
        settings["lengths"] = tuple(settings["lengths"])
        return cls(scale=scale, quick=quick, **settings)

    def __post_init__(self):
        get_scale(self.scale)  # checks the name
        for name in ("steps", "batch_size", "eval_batches"):
            check_positive_int(name, getattr(self, name))
        if not self.lengths:
            raise ValueError("`lengths` must hold at least one length.")
        for length in self.lengths:
            check_positive_int("lengths", length)
        if not self.learning_rate > 0:
            raise ValueError(
                "`learning_rate` must be positive. Received: "
                f"learning_rate={self.learning_rate!r}"
            )
        if self.segment_loop not in SEGMENT_LOOPS:
            raise ValueError(
                f"`segment_loop` must be one of {SEGMENT_LOOPS}. Received: "
                f"segment_loop={self.segment_loop!r}"
            )
        if self.compressive_options is not None and not isinstance(
            self.compressive_options, dict
        ):
            raise ValueError(
                "`compressive_options` must be a dict (a JSON object). "
                f"Received: compressive_options={self.compressive_options!r}"
            )


def scale_defaults(key):
    """Help text: ``key``'s default at each scale and with ``--quick``,
    e.g. ``"paper 20000, cpu 1000; --quick 3"``."""

    def text(value):
        return " ".join(map(str, value)) if isinstance(value, tuple) else value

    scales = ", ".join(
        f"{scale} {text(SCALES[scale]['train'][key])}" for scale in SCALES
    )
    quick = QUICK["train"].get(key)
    return scales + ("" if quick is None else f"; --quick {text(quick)}")


def build_model(arm, recipe):
    """The sorting transformer of ``arm``, compiled with ``recipe``'s
    training recipe (`sorting_transformer`, `compile_arguments`)."""
    overrides = {"segment_loop": recipe.segment_loop}
    if arm == "compressive" and recipe.compressive_options:
        overrides["compressive_options"] = recipe.compressive_options
    if recipe.quick:
        overrides.update(copy.deepcopy(QUICK["model"]))
    model = sorting_transformer(arm, scale=recipe.scale, **overrides)
    model.compile(
        **compile_arguments(
            recipe.scale,
            steps=recipe.steps,
            learning_rate=recipe.learning_rate,
        )
    )
    return model


def make_datasets(length, segment_length, recipe):
    """``{"train", "eval"}`` `SortingDataset`s of ``length`` symbols: the
    ``recipe.steps`` training batches of ``recipe.seed`` and the held-out
    batches (seed + `EVAL_SEED_OFFSET`), padded on the left to a multiple
    of ``segment_length``."""
    return {
        split: sorting_data.SortingDataset(
            recipe.batch_size,
            length,
            steps=steps,
            seed=recipe.seed + offset,
            pad_to_multiple=segment_length,
        )
        for split, steps, offset in (
            ("train", recipe.steps, 0),
            ("eval", recipe.eval_batches, EVAL_SEED_OFFSET),
        )
    }


def describe(arm, length, model, seed):
    """One line on a run: its sequence in tokens and segments, its STM."""
    segment = model.segment_length
    tokens = sorting_data.total_length(length, segment)
    return (
        f"== {arm}, {length} symbols ({tokens} tokens, {tokens // segment} "
        f"segments of {segment}, STM {model.stm_length}), seed {seed} on "
        f"{keras.backend.backend()} =="
    )


def result_row(arm, length, model, recipe, measured):
    """A run's row of the record.

    Args:
        arm, length: the run's arm and symbols before the separator.
        model: the trained `InfFormerLM`.
        recipe: its `Recipe`.
        measured: dict of ``train_loss``, ``eval_loss``, ``accuracy``,
            ``accuracy_without_ltm_read`` (``None`` without an LTM),
            ``train_seconds`` and ``eval_seconds``.

    Returns:
        A dict of plain numbers: ``measured`` and the run's description.
    """
    growth = [
        max(block.ltm.update_growth.values())
        for block in model.blocks
        if block.ltm is not None and block.ltm.update_growth
    ]
    ablated = measured["accuracy_without_ltm_read"]
    if ablated is not None:
        ablated = float(ablated)
    return {
        "arm": arm,
        "length": length,
        "tokens": sorting_data.total_length(length, model.segment_length),
        "segment_length": model.segment_length,
        "stm_length": model.stm_length,
        "steps": recipe.steps,
        "batch_size": recipe.batch_size,
        "seed": recipe.seed,
        "train_loss": float(measured["train_loss"]),
        "eval_loss": float(measured["eval_loss"]),
        "accuracy": float(measured["accuracy"]),
        "accuracy_without_ltm_read": ablated,
        "train_seconds": round(float(measured["train_seconds"]), 1),
        "eval_seconds": round(float(measured["eval_seconds"]), 1),
        "update_growth": max(growth) if growth else None,
        "parameters": model.count_params(),
    }


# -------------------------------------------------------------------------
# The experiment: yardsticks, record, table, verdict
# -------------------------------------------------------------------------

ARM_NAMES = {
    "window": "the window",
    "transformer_xl": "Transformer-XL",
    "inf_former": "the ∞-former",
    "sticky": "the ∞-former with sticky memories",
    "compressive": "the Compressive Transformer",
}
MEMORY_ARMS = ("inf_former", "sticky", "compressive")
"""The arm a verdict speaks for: the first of these that ran."""
BASELINE_ARMS = ("transformer_xl", "window")
"""The arm it is weighed against: the first of these that ran."""


def counting_baselines(length, segment_length, stm_length):
    """Yardsticks for one length: the accuracy of an ideal counter that
    sees what each bounded memory holds at the first answer token
    (`experiments.data.sorting.counting_baseline`, 256 sequences)."""
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


def group(results):
    """``{(arm, length): [row per seed]}``, in the order the runs came."""
    groups = {}
    for row in results:
        groups.setdefault((row["arm"], row["length"]), []).append(row)
    return groups


def make_record(results, recipe, args, started):
    """The JSON record of an experiment.

    Args:
        results: the `result_row`s.
        recipe: the `Recipe` they share (but for the seed).
        args: dict of the command line's options; ``recipe``'s settings
            replace those it resolved (the lengths, steps, ...).
        started: `time.perf_counter()` at the start, for ``total_seconds``.

    Returns:
        A dict: ``backend``, ``scale``, ``config`` (the scale), ``args``,
        ``chance_accuracy``, ``counting_baselines`` (per length, the ideal
        counters over the widest STM that ran), ``results``, ``verdict``
        and ``total_seconds``.
    """
    baselines = {}
    for length in dict.fromkeys(row["length"] for row in results):
        rows = [row for row in results if row["length"] == length]
        baselines[length] = counting_baselines(
            length,
            rows[-1]["segment_length"],
            max(row["stm_length"] for row in rows),
        )
    return {
        "backend": keras.backend.backend(),
        "scale": recipe.scale,
        "config": get_scale(recipe.scale),
        "args": {**args, **dataclasses.asdict(recipe)},
        "chance_accuracy": 1.0 / sorting_data.NUM_SYMBOLS,
        "counting_baselines": baselines,
        "results": results,
        "verdict": verdict(results),
        "total_seconds": round(time.perf_counter() - started, 1),
    }


def _cell(values, digits=3):
    """One value as is; several (one per seed) as ``mean (min–max)``."""
    mean = f"{np.mean(values):.{digits}f}"
    if len(values) == 1:
        return mean
    return f"{mean} ({min(values):.{digits}f}–{max(values):.{digits}f})"


def table(results):
    """The Markdown table of the runs, a row per arm and length (cells over
    several seeds: ``mean (min–max)``)."""
    lines = [
        "| arm | length | STM / tokens | answer accuracy | "
        "without LTM read | eval loss | train time (s) |",
        "|---|---|---|---|---|---|---|",
    ]
    for (arm, length), rows in group(results).items():
        ablated = [r["accuracy_without_ltm_read"] for r in rows]
        ablated = "–" if None in ablated else _cell(ablated)
        lines.append(
            f"| {arm} | {length} | {rows[0]['stm_length']}/"
            f"{rows[0]['tokens']} | {_cell([r['accuracy'] for r in rows])} "
            f"| {ablated} | {_cell([r['eval_loss'] for r in rows])} | "
            f"{_cell([r['train_seconds'] for r in rows], digits=0)} |"
        )
    return "\n".join(lines)


def summary(record):
    """The table, the ideal counters per length, chance and the time: what
    an example prints before its verdict."""
    lines = [table(record["results"]), ""]
    for length, values in record["counting_baselines"].items():
        lines.append(
            f"{length} symbols, ideal counters: "
            + ", ".join(f"{k} {v:.3f}" for k, v in values.items())
        )
    lines.append(
        f"chance: {record['chance_accuracy']:.3f}; total "
        f"{record['total_seconds']:.0f} s"
    )
    return "\n".join(lines)


def verdict(results):
    """One line: does the memory arm beat its baseline, and is the
    difference beyond the seed spread (`experiments.records.separated`)?

    The memory arm is the first of `MEMORY_ARMS` that ran, the baseline
    the first of `BASELINE_ARMS`; with one seed the line says so.

    Example:

    >>> rows = [
    ...     {"arm": "inf_former", "length": 1024, "accuracy": 0.339},
    ...     {"arm": "transformer_xl", "length": 1024, "accuracy": 0.220},
    ... ]
    >>> verdict(rows)
    'The ∞-former beats Transformer-XL at 1024 symbols: answer accuracy \
0.339 against 0.220, +0.119 (one seed: no spread)'
    """
    accuracy = {
        key: [row["accuracy"] for row in rows]
        for key, rows in group(results).items()
    }
    arms = {arm for arm, _ in accuracy}
    memory = next((arm for arm in MEMORY_ARMS if arm in arms), None)
    baseline = next((arm for arm in BASELINE_ARMS if arm in arms), None)
    if memory is None or baseline is None:
        return (
            f"Arms {sorted(arms)}: no memory arm {MEMORY_ARMS} and baseline "
            f"{BASELINE_ARMS} to weigh against each other; see the table."
        )
    lengths = [
        length
        for arm, length in accuracy
        if arm == memory and (baseline, length) in accuracy
    ]
    if not lengths:
        return _sentence(
            f"{ARM_NAMES[memory]} and {ARM_NAMES[baseline]} ran at no common "
            "length: nothing to weigh; see the table."
        )
    pairs = [(accuracy[memory, n], accuracy[baseline, n]) for n in lengths]
    gaps = [np.mean(ours) - np.mean(theirs) for ours, theirs in pairs]
    wins, losses = sum(gap > 0 for gap in gaps), sum(gap < 0 for gap in gaps)
    outcome = "beats" if wins >= losses else "loses to"
    if len(gaps) == 1:
        where = f"{lengths[0]} symbols"
    elif max(wins, losses) == len(gaps):
        where = "every length"
    else:
        where = f"{max(wins, losses)} of {len(gaps)} lengths"
    if wins == losses == 0:
        outcome = "ties with"
    head = f"{ARM_NAMES[memory]} {outcome} {ARM_NAMES[baseline]} at {where}"
    if len(lengths) > 1:
        means = [
            ", ".join(f"{np.mean(pair[i]):.3f}" for pair in pairs)
            for i in (0, 1)
        ]
        numbers = (
            f"answer accuracy at {', '.join(map(str, lengths))} symbols: "
            f"{means[0]} against {means[1]}"
        )
    else:
        ours, theirs = pairs[0]
        numbers = (
            f"answer accuracy {_spread_or_value(ours)} against "
            f"{_spread_or_value(theirs)}, {gaps[0]:+.3f}"
        )
    seeds = min(len(values) for values in accuracy.values())
    if seeds == 1:
        judgement = " (one seed: no spread)"
    else:
        apart = [
            length
            for length, (ours, theirs) in zip(lengths, pairs, strict=True)
            if separated(ours, theirs) or separated(theirs, ours)
        ]
        if len(apart) == len(lengths):
            judgement = ", beyond the seed spread"
        elif not apart:
            judgement = ", within the seed spread: no conclusion"
        else:
            judgement = (
                f", beyond the seed spread at {', '.join(map(str, apart))} "
                "symbols only"
            )
    return _sentence(f"{head}: {numbers}{judgement}")


def _sentence(text):
    return text[0].upper() + text[1:]


def _spread_or_value(values):
    """One seed: the value alone (the verdict says "one seed" once);
    several: `experiments.records.spread`."""
    return f"{values[0]:.3f}" if len(values) == 1 else spread(values)


def figure_path(output, name):
    """Where a record's figure goes: ``docs/images/`` for the records of
    ``benchmarks/results`` (the docs serve ``docs/`` only; the record's
    page links the figure there), beside the JSON otherwise."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    results = os.path.join(root, "benchmarks", "results")
    if os.path.realpath(output) == os.path.realpath(results):
        return os.path.join(root, "docs", "images", f"{name}.png")
    return os.path.join(output, f"{name}.png")


def write_record(record, output, name):
    """Writes ``<output>/<name>.json`` and the figure of answer accuracy
    against length (`figure_path`; without matplotlib, none).

    Returns:
        The list of paths written.
    """
    os.makedirs(output, exist_ok=True)
    path = os.path.join(output, f"{name}.json")
    write_json(record, path, indent=2)
    means = [
        {"arm": arm, "length": length, "accuracy": np.mean(accuracies)}
        for (arm, length), accuracies in (
            (key, [row["accuracy"] for row in rows])
            for key, rows in group(record["results"]).items()
        )
    ]
    try:
        from experiments.plots import plot_accuracy_by_length

        figure = figure_path(output, name)
        plot_accuracy_by_length(
            means, figure, title=f"Sorting, scale {record['scale']!r}"
        )
    except ImportError:  # matplotlib is optional
        print("(matplotlib not installed: no figure)")
        return [path]
    return [path, figure]
