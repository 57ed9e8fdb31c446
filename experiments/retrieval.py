"""Long-context retrieval: every memory trained on passkey retrieval and
BABILong-style QA, and evaluated over a grid of context lengths and depths
(the machinery of ``examples/retrieval.py``; docs/retrieval.md).

The tasks, the depth of a needle and the vocabulary are those of
`experiments.data.retrieval`. One model per arm, task and seed trains on
batches that mix lengths and depths (`RetrievalDataset`), then answers
held-out examples at each cell of a grid: context length × depth (in
segments of ``segment_length`` tokens between the needle's segment and the
question's). Arms (`ARMS`):

* ``window``, ``transformer_xl``, ``compressive``, ``inf_former``,
  ``sticky``: `InfFormerLM.arm` (docs/math.md §7): each segment alone,
  plus one segment of short-term memory (STM), plus a FIFO of compressed
  segments, plus the continuous long-term memory (LTM), the LTM with
  sticky memories;
* ``full_attention``: one segment covering the whole context (the window
  arm with ``segment_length`` = ``max_full_length``), the ceiling; it
  trains and is evaluated only at lengths up to ``max_full_length``;
* ``hub_llama3``: a tiny Llama 3 built from scratch with the task's
  vocabulary and given a memory by `attach_memory`, the path users take
  (each segment alone plus the LTM; no STM).

The arms with an LTM are evaluated again with it switched off
(``memory_enabled = False``, same weights): ``accuracy_memory_off``.

* settings: `SCALES` (``"cpu"``, ``"paper"``), `QUICK`, `Recipe`,
  `depth_grid`;
* one run: `build_model`, `train_arm`, `evaluate_arm`;
* records: `make_record`, `write_record` (JSON, Markdown, PNG), `merge`,
  `markdown`, `summary_table` and `verdict` (the example's ending).

Example:

>>> recipe = Recipe.from_scale("cpu")
>>> recipe.segment_length, recipe.lengths, recipe.max_full_length
(32, (256, 512), 512)
>>> depth_grid("passkey", 1024, 64)
[0, 1, 2, 4, 8, 15]
"""

import copy
import dataclasses
import json
import os
import time

from experiments.console import native_notices_held_back

with native_notices_held_back():  # the TensorFlow backend loads it here
    import keras
    import numpy as np

    from experiments.data import retrieval as data
    from experiments.data.checks import check_int, check_positive_int
    from experiments.records import separated, write_json
    from keras_infmemory.models import InfFormerLM

ARMS = (
    "window",
    "transformer_xl",
    "compressive",
    "inf_former",
    "sticky",
    "full_attention",
    "hub_llama3",
)
LTM_ARMS = ("inf_former", "sticky", "hub_llama3")
"""The arms evaluated again with their LTM off (same weights)."""
TASKS = data.TASKS
DEFAULT_TASKS = ("passkey", "qa1")

SCALES = {
    # Two CPU cores. The model is the sorting experiment's "cpu" one
    # (experiments.sorting) and the recipe was chosen from
    # benchmarks/results/retrieval_ceiling.md.
    "cpu": {
        "model": {
            "num_layers": 2,
            "hidden_dim": 64,
            "num_heads": 4,
            "intermediate_dim": 128,
            "dropout": 0.0,
            "segment_length": 32,  # STM = one segment
            "bptt_segments": 1,  # gradients through the last segment only
        },
        "ltm": {
            "num_basis": 64,
            "num_samples": 64,
            "basis_widths": (0.01, 0.05),
            "ridge_penalty": 1.0,
            "tau": 0.75,
            "min_variance": 1e-6,
        },
        # Llama 3's own layout at the same size (grouped-query attention).
        "hub": {
            "num_layers": 2,
            "hidden_dim": 64,
            "num_query_heads": 4,
            "num_key_value_heads": 2,
            "intermediate_dim": 128,
        },
        "train": {
            "lengths": (256, 512),
            "max_full_length": 512,
            "steps": 1000,
            "batch_size": 16,
            "learning_rate": 3e-3,
            "global_clipnorm": 0.25,
            "eval_batches": 4,
        },
    },
    # An accelerator. No paper has this experiment for the ∞-former: this
    # repository's choice, the sorting experiment's paper-scale LTM on a
    # 4-layer model, lengths as in BABILong's shorter splits.
    "paper": {
        "model": {
            "num_layers": 4,
            "hidden_dim": 256,
            "num_heads": 8,
            "intermediate_dim": 1024,
            "dropout": 0.0,
            "segment_length": 512,
            "bptt_segments": 1,
        },
        "ltm": {
            "num_basis": 512,
            "num_samples": 512,
            "basis_widths": (0.01, 0.05),
            "ridge_penalty": 1.0,
            "tau": 0.75,
            "min_variance": 1e-6,
        },
        "hub": {
            "num_layers": 4,
            "hidden_dim": 256,
            "num_query_heads": 8,
            "num_key_value_heads": 4,
            "intermediate_dim": 1024,
        },
        "train": {
            "lengths": (2048, 4096, 8192, 16384),
            "max_full_length": 8192,
            "steps": 20000,
            "batch_size": 8,
            "learning_rate": 2e-4,
            "global_clipnorm": 0.25,
            "eval_batches": 16,
        },
    },
}
"""The scales: ``model`` (`InfFormerLM` arguments), ``ltm`` (`ContinuousLTM`
arguments, every memory arm's), ``hub`` (`keras_hub.models.Llama3Backbone`
arguments) and ``train`` (the recipe)."""

QUICK = {
    "model": {
        "num_layers": 1,
        "hidden_dim": 16,
        "num_heads": 2,
        "intermediate_dim": 32,
        "segment_length": 32,
    },
    "ltm": {"num_basis": 16, "num_samples": 16},
    "hub": {
        "num_layers": 1,
        "hidden_dim": 16,
        "num_query_heads": 2,
        "num_key_value_heads": 1,
        "intermediate_dim": 32,
    },
    "train": {
        "lengths": (128,),
        "max_full_length": 128,
        "steps": 2,
        "batch_size": 2,
        "eval_batches": 1,
    },
}
"""What ``quick=True`` changes (tests, a first look): a tiny model, two
steps at one short length, one held-out batch per cell."""

EVAL_SEED = 1_000_003
"""Held-out batches use the seed ``(EVAL_SEED, length, depth, batch)`` and
the held-out plays: the same examples for every arm and seed."""


def get_scale(scale):
    """A deep copy of ``SCALES[scale]``, checked."""
    if scale not in SCALES:
        raise ValueError(
            f"`scale` must be one of {tuple(SCALES)}. Received: scale={scale!r}"
        )
    return copy.deepcopy(SCALES[scale])


def _check_names(name, values, choices):
    if not values or any(v not in choices for v in values):
        raise ValueError(
            f"`{name}` must be a non-empty sequence of {choices}. "
            f"Received: {name}={values!r}"
        )


@dataclasses.dataclass(frozen=True)
class Recipe:
    """How every arm of a retrieval experiment is trained and evaluated.

    `Recipe.from_scale` fills what is not given from the scale (and
    `QUICK`).

    Attributes:
        scale: ``"cpu"`` or ``"paper"`` (`SCALES`).
        tasks: tuple of `TASKS`, one model per task.
        lengths: tuple of ints, context lengths in tokens (``T`` of
            `experiments.data.retrieval.make_example`): trained on, mixed
            (one per batch), and evaluated at, each.
        depths: ``None`` (`depth_grid` at each length) or a tuple of ints
            (those that fit a length are evaluated there).
        steps: int, training steps, one fresh batch each.
        batch_size: int.
        learning_rate: float, the start of the cosine decay.
        eval_batches: int, held-out batches of ``batch_size`` per cell.
        max_full_length: int, the longest context of ``full_attention``
            (its segment length).
        quick: bool, the tiny model of `QUICK`.
    """

    scale: str
    tasks: tuple
    lengths: tuple
    steps: int
    batch_size: int
    learning_rate: float
    eval_batches: int
    max_full_length: int
    depths: tuple | None = None
    quick: bool = False

    @classmethod
    def from_scale(cls, scale="cpu", quick=False, **changes):
        """The scale's recipe (`QUICK`'s, if ``quick``) with ``changes``;
        a change of ``None`` keeps the default."""
        train = get_scale(scale)["train"]
        names = (
            "lengths",
            "steps",
            "batch_size",
            "learning_rate",
            "eval_batches",
            "max_full_length",
        )
        settings = {name: train[name] for name in names}
        settings["tasks"] = DEFAULT_TASKS
        if quick:
            settings.update(QUICK["train"])
        settings.update({k: v for k, v in changes.items() if v is not None})
        for name in ("tasks", "lengths", "depths"):
            if settings.get(name) is not None:
                settings[name] = tuple(settings[name])
        return cls(scale=scale, quick=quick, **settings)

    def __post_init__(self):
        get_scale(self.scale)
        _check_names("tasks", self.tasks, TASKS)
        for name in ("steps", "batch_size", "eval_batches", "max_full_length"):
            check_positive_int(name, getattr(self, name))
        if not self.lengths:
            raise ValueError(
                "`lengths` must hold at least one length. Received: lengths=()"
            )
        for length in self.lengths:
            check_positive_int("lengths", length)
        if self.depths is not None:
            if not self.depths:
                raise ValueError(
                    "`depths` must be None or non-negative integers. "
                    f"Received: depths={self.depths!r}"
                )
            for depth in self.depths:
                check_int("depths", depth, 0, "None or non-negative integers")
        if not self.learning_rate > 0:
            raise ValueError(
                "`learning_rate` must be positive. Received: "
                f"learning_rate={self.learning_rate!r}"
            )
        for task in self.tasks:
            for length in self.lengths:
                if not self.depths_at(task, length):
                    fit = data.valid_depths(task, length, self.segment_length)
                    raise ValueError(
                        f"No depth fits task {task!r} at {length} tokens "
                        f"(segments of {self.segment_length}; those that "
                        f"fit: {fit}). Received: lengths={self.lengths!r}, "
                        f"depths={self.depths!r}"
                    )

    @property
    def config(self):
        """The scale's settings with `QUICK`'s model over them."""
        config = get_scale(self.scale)
        if self.quick:
            for part in ("model", "ltm", "hub"):
                config[part].update(QUICK[part])
        config["train"].update(
            {
                "lengths": self.lengths,
                "steps": self.steps,
                "batch_size": self.batch_size,
                "learning_rate": self.learning_rate,
                "eval_batches": self.eval_batches,
                "max_full_length": self.max_full_length,
            }
        )
        return config

    @property
    def segment_length(self):
        """``S``: every arm's segment (but full attention's), and the unit
        of depth."""
        model = QUICK["model"] if self.quick else SCALES[self.scale]["model"]
        return model["segment_length"]

    def depths_at(self, task, length):
        """The depths evaluated for ``task`` at ``length`` tokens."""
        if self.depths is None:
            return depth_grid(task, length, self.segment_length)
        valid = data.valid_depths(task, length, self.segment_length)
        return [d for d in self.depths if d in valid]

    def train_lengths(self, arm):
        """The lengths ``arm`` trains at (``full_attention``: those up to
        ``max_full_length``)."""
        if arm != "full_attention":
            return self.lengths
        return tuple(n for n in self.lengths if n <= self.max_full_length)


def depth_grid(task, context_tokens, segment_length):
    """Depths evaluated by default: 0, 1, 2, 4, 8, … and the deepest,
    those that fit (`experiments.data.retrieval.valid_depths`).

    Example:

    >>> depth_grid("qa1", 512, 64)
    [0, 1, 2, 4, 7]
    """
    valid = data.valid_depths(task, context_tokens, segment_length)
    if not valid:
        return []
    wanted = {0, 1} | {2**k for k in range(1, max(valid).bit_length())}
    return sorted((wanted & set(valid)) | {max(valid)})


# -------------------------------------------------------------------------
# One run: an arm, a task and a seed
# -------------------------------------------------------------------------


def compile_arguments(recipe):
    """Adam with a cosine decay over the steps, global gradient-norm
    clipping, cross-entropy and accuracy over the answer tokens only (the
    loss is divided by the number of answer tokens)."""
    schedule = keras.optimizers.schedules.CosineDecay(
        recipe.learning_rate, decay_steps=recipe.steps
    )
    clipnorm = recipe.config["train"]["global_clipnorm"]
    return {
        "optimizer": keras.optimizers.Adam(
            learning_rate=schedule, global_clipnorm=clipnorm
        ),
        "loss": keras.losses.SparseCategoricalCrossentropy(
            from_logits=True, reduction="mean_with_sample_weight"
        ),
        "weighted_metrics": [
            keras.metrics.SparseCategoricalAccuracy(name="accuracy")
        ],
    }


def build_model(arm, recipe):
    """The compiled model of ``arm`` (see the module), built from the
    current random seed."""
    if arm not in ARMS:
        raise ValueError(f"`arm` must be one of {ARMS}. Received: arm={arm!r}")
    config = recipe.config
    if arm == "hub_llama3":
        model = hub_llama3(config, recipe.segment_length)
    else:
        model_config = dict(config["model"])
        name = arm
        if arm == "full_attention":
            arm = "window"
            model_config["segment_length"] = recipe.max_full_length
            model_config["bptt_segments"] = None
        model = InfFormerLM.arm(
            arm,
            vocabulary_size=data.VOCABULARY_SIZE,
            memory_options=dict(config["ltm"]),
            name=f"retrieval_{name}",
            **model_config,
        )
    model.compile(**compile_arguments(recipe))
    return model


def hub_llama3(config, segment_length):
    """A random Llama 3 of ``config["hub"]`` over the task's vocabulary,
    with `attach_memory`'s memory (``config["ltm"]``) in every layer."""
    with native_notices_held_back():  # KerasHub loads TensorFlow Text
        import keras_hub

        from keras_infmemory.models import attach_memory

    backbone = keras_hub.models.Llama3Backbone(
        vocabulary_size=data.VOCABULARY_SIZE, **config["hub"]
    )
    base = keras_hub.models.Llama3CausalLM(backbone, preprocessor=None)
    return attach_memory(
        base, segment_length=segment_length, **dict(config["ltm"])
    )


def is_hub(model):
    """Whether ``model`` is a KerasHub model (its inputs are a dict)."""
    return not isinstance(model, InfFormerLM)


def model_inputs(model, token_ids):
    """What ``model`` takes: the ids, or KerasHub's dict with a padding
    mask of ones (the pads on the left are tokens like the others, as for
    `InfFormerLM`)."""
    if not is_hub(model):
        return token_ids
    return {
        "token_ids": token_ids,
        "padding_mask": np.ones(token_ids.shape, "bool"),
    }


class _Batches(keras.utils.PyDataset):
    """A `RetrievalDataset` fed to ``model`` (`model_inputs`)."""

    def __init__(self, dataset, model):
        super().__init__()
        self.dataset, self.model = dataset, model

    @property
    def num_batches(self):
        return self.dataset.num_batches

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, index):
        x, y, w = self.dataset[index]
        return model_inputs(self.model, x), y, w


def train_arm(arm, task, seed, recipe, verbose=2):
    """Builds ``arm`` from ``seed`` and trains it on ``task``.

    Returns:
        ``(model, run)``, ``run`` a dict of the training: ``task``,
        ``arm``, ``seed``, ``steps``, ``batch_size``, ``train_lengths``,
        ``segment_length`` (the model's), ``parameters``, ``final_loss``
        (the last step's running mean) and ``train_seconds``.
    """
    from experiments.console import set_random_seed

    lengths = recipe.train_lengths(arm)
    if not lengths:
        raise ValueError(
            f"No training length fits full attention: every length exceeds "
            f"max_full_length={recipe.max_full_length}. Received: "
            f"lengths={recipe.lengths!r}"
        )
    set_random_seed(seed)  # the initial weights
    model = build_model(arm, recipe)
    dataset = data.RetrievalDataset(
        recipe.batch_size,
        task,
        recipe.segment_length,
        context_tokens=lengths,
        steps=recipe.steps,
        seed=seed,
        split="train",
    )
    start = time.perf_counter()
    # Keras' own fit: KerasHub's would turn the dataset into arrays (its
    # preprocessing, None here, is all it adds).
    history = keras.Model.fit(
        model, _Batches(dataset, model), epochs=1, verbose=verbose
    )
    seconds = time.perf_counter() - start
    segment = (
        model.backbone.segment_length if is_hub(model) else model.segment_length
    )
    return model, {
        "task": task,
        "arm": arm,
        "seed": seed,
        "steps": recipe.steps,
        "batch_size": recipe.batch_size,
        "train_lengths": list(lengths),
        "segment_length": segment,
        "parameters": model.count_params(),
        "final_loss": float(history.history["loss"][-1]),
        "train_seconds": round(seconds, 1),
    }


def held_out_batch(task, length, depth, index, recipe):
    """Held-out batch ``index`` of one cell: ``(inputs, labels, weights)``
    from the held-out plays, seeded by the cell (`EVAL_SEED`)."""
    return data.make_batch(
        recipe.batch_size,
        task,
        length,
        recipe.segment_length,
        depth_segments=depth,
        seed=(EVAL_SEED, length, depth, index),
        split="held_out",
    )


def _answers(model, batches):
    """Exact match and token accuracy of ``model`` over ``batches``."""
    exact, tokens = [], []
    for x, y, w in batches:
        logits = model.predict_on_batch(model_inputs(model, x))
        rows = data.answer_correct(logits, y, w)
        exact.append(rows)
        right = np.argmax(logits, axis=-1) == y
        tokens.append(right[w > 0])
    return (
        float(np.mean(np.concatenate(exact))),
        float(np.mean(np.concatenate(tokens))),
    )


def evaluate_arm(model, arm, task, seed, recipe):
    """``model`` on the held-out grid of ``task``: one result per cell.

    Returns:
        ``(results, seconds)``: a list of dicts ``task``, ``arm``,
        ``context_tokens``, ``depth_segments``, ``seed``, ``accuracy``
        (exact match: every answer token right), ``token_accuracy``,
        ``accuracy_memory_off`` (the same weights with the LTM off; None
        for the arms without one) and ``examples``.
    """
    start = time.perf_counter()
    lengths = [
        n
        for n in recipe.lengths
        if arm != "full_attention" or n <= recipe.max_full_length
    ]
    cells = [
        (length, depth)
        for length in lengths
        for depth in recipe.depths_at(task, length)
    ]
    batches = {
        cell: [
            held_out_batch(task, *cell, index, recipe)
            for index in range(recipe.eval_batches)
        ]
        for cell in cells
    }
    results = []
    for length, depth in cells:
        exact, tokens = _answers(model, batches[length, depth])
        results.append(
            {
                "task": task,
                "arm": arm,
                "context_tokens": length,
                "depth_segments": depth,
                "seed": seed,
                "accuracy": exact,
                "token_accuracy": tokens,
                "accuracy_memory_off": None,
                "examples": recipe.eval_batches * recipe.batch_size,
            }
        )
    if arm in LTM_ARMS:
        model.memory_enabled = False
        for result in results:
            cell = (result["context_tokens"], result["depth_segments"])
            result["accuracy_memory_off"] = _answers(model, batches[cell])[0]
        model.memory_enabled = True
    return results, round(time.perf_counter() - start, 1)


# -------------------------------------------------------------------------
# Records
# -------------------------------------------------------------------------

ARM_NAMES = {
    "window": "the window",
    "transformer_xl": "Transformer-XL",
    "compressive": "the Compressive Transformer",
    "inf_former": "the ∞-former",
    "sticky": "the ∞-former with sticky memories",
    "full_attention": "full attention",
    "hub_llama3": "Llama 3 with memory",
}
MEMORY_ARMS = (
    "inf_former",
    "sticky",
    "hub_llama3",
    "compressive",
    "full_attention",
)
"""The arm a verdict speaks for: the first of these that ran (full
attention last: then the verdict measures the headroom)."""
BASELINE_ARMS = ("transformer_xl", "window")
"""The arm it is weighed against: the first of these that ran."""


def reach(record):
    """How many segments back Transformer-XL sees: one segment of STM per
    layer (layer ``l`` attends to the STM of layer ``l − 1``'s outputs),
    so ``num_layers``. Deeper needles are *far*: only a long-term memory
    (or full attention) holds them."""
    return int(record["config"]["model"]["num_layers"])


def make_record(recipe, results, runs, args, started, command=None):
    """The JSON record of an experiment.

    Args:
        recipe: the `Recipe`.
        results: `evaluate_arm`'s results, every run's.
        runs: `train_arm`'s run dicts (with ``eval_seconds``).
        args: dict of the command line's options.
        started: `time.perf_counter()` at the start.
        command: the command line, as text.

    Returns:
        A dict: ``backend``, ``scale``, ``segment_length`` (the unit of
        depth), ``config``, ``recipe``, ``args``, ``command``,
        ``results``, ``runs``, ``verdict``, ``total_seconds`` and
        ``load_average`` (the machine's, 1 minute, at the end).
    """
    record = {
        "backend": keras.backend.backend(),
        "scale": recipe.scale,
        "segment_length": recipe.segment_length,
        "config": recipe.config,
        "recipe": dataclasses.asdict(recipe),
        "args": args,
        "command": command,
        "results": results,
        "runs": runs,
        "total_seconds": round(time.perf_counter() - started, 1),
        "load_average": round(os.getloadavg()[0], 2),
    }
    record["verdict"] = verdict(record)
    return record


def _arms_in(record):
    found = {row["arm"] for row in record["results"]}
    found |= {run["arm"] for run in record.get("runs", [])}
    return [arm for arm in ARMS if arm in found]


def _tasks_in(record):
    found = {row["task"] for row in record["results"]}
    return [task for task in TASKS if task in found]


def _span(values):
    """Cell text: one value, or ``min–max`` over seeds."""
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{min(values):.2f}–{max(values):.2f}"


def _mean_span(values, digits=3):
    """``mean`` or ``mean (min–max)`` over seeds."""
    mean = f"{np.mean(values):.{digits}f}"
    if len(values) == 1:
        return mean
    return f"{mean} ({min(values):.{digits}f}–{max(values):.{digits}f})"


def per_seed(
    results, task, arm, cells=None, beyond=None, near=None, key="accuracy"
):
    """``{seed: mean of key}`` over ``task`` and ``arm``'s cells: those in
    ``cells`` (a set of ``(length, depth)``, or all), at depth ``>
    beyond`` (``beyond`` an int) or ``<= near`` (``near`` an int)."""
    values = {}
    for row in results:
        if row["task"] != task or row["arm"] != arm:
            continue
        if row.get(key) is None:
            continue
        cell = (row["context_tokens"], row["depth_segments"])
        if cells is not None and cell not in cells:
            continue
        if beyond is not None and row["depth_segments"] <= beyond:
            continue
        if near is not None and row["depth_segments"] > near:
            continue
        values.setdefault(row["seed"], []).append(row[key])
    return {seed: float(np.mean(v)) for seed, v in sorted(values.items())}


def grid_table(record, task, key="accuracy"):
    """Markdown lines: ``task``'s ``key`` per arm and length (rows) and
    depth (columns), ``min–max`` over seeds; for exact match, the LTM arms
    again with the memory off."""
    rows = [r for r in record["results"] if r["task"] == task]
    depths = sorted({r["depth_segments"] for r in rows})
    lines = [
        "| arm | tokens | " + " | ".join(f"depth {d}" for d in depths) + " |",
        "|---|---|" + "---|" * len(depths),
    ]
    keys = [(key, "{}")]
    if key == "accuracy":
        keys.append(("accuracy_memory_off", "{} (memory off)"))
    for arm in _arms_in(record):
        for name, label in keys:
            cells = {}
            for r in rows:
                if r["arm"] == arm and r.get(name) is not None:
                    cell = (r["context_tokens"], r["depth_segments"])
                    cells.setdefault(cell, []).append(r[name])
            for length in sorted({n for n, _ in cells}):
                text = [
                    _span(cells[length, d]) if (length, d) in cells else ""
                    for d in depths
                ]
                lines.append(
                    f"| {label.format(arm)} | {length} | "
                    + " | ".join(text)
                    + " |"
                )
    return lines


def markdown(record):
    """The record as Markdown: settings, grids per task (exact match, then
    token accuracy; ``min–max`` over seeds), the summary and the
    verdict."""
    recipe = record["recipe"]
    seeds = sorted({r["seed"] for r in record["results"]})
    lines = [
        f"# Retrieval, scale {record['scale']!r} ({record['backend']})",
        "",
        f"Segments of {record['segment_length']} tokens (the unit of "
        f"depth); lengths {', '.join(map(str, recipe['lengths']))}; "
        f"{recipe['steps']} steps of batch {recipe['batch_size']}, "
        f"learning rate {recipe['learning_rate']}; "
        f"{recipe['eval_batches'] * recipe['batch_size']} held-out examples "
        f"per cell; full attention up to {recipe['max_full_length']} "
        f"tokens; seeds {', '.join(map(str, seeds))}. Transformer-XL sees "
        f"{reach(record)} segments back (one per layer): depths beyond "
        "are far.",
    ]
    if record.get("command"):
        lines += ["", "```bash", record["command"], "```"]
    for task in _tasks_in(record):
        for key, title in (
            ("accuracy", "exact match (every answer token right)"),
            ("token_accuracy", "token accuracy (answer tokens right)"),
        ):
            lines += ["", f"## {task}: {title}, min–max over seeds", ""]
            lines += grid_table(record, task, key)
    lines += ["", "## Summary", "", summary_table(record), ""]
    lines += [record["verdict"]]
    return "\n".join(lines)


def summary_table(record):
    """The example's table: per task and arm, exact-match accuracy over
    the cells within Transformer-XL's reach (`reach`) and beyond it (far),
    the latter with the LTM off and in answer tokens, and training time;
    ``mean (min–max)`` over seeds."""
    n = reach(record)
    lines = [
        f"| task | arm | depth ≤ {n} | depth > {n} | depth > {n}, memory "
        f"off | depth > {n}, tokens | steps | train (s) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    results, runs = record["results"], record.get("runs", [])
    for task in _tasks_in(record):
        for arm in _arms_in(record):
            columns = [
                per_seed(results, task, arm, near=n),
                per_seed(results, task, arm, beyond=n),
                per_seed(
                    results, task, arm, beyond=n, key="accuracy_memory_off"
                ),
                per_seed(results, task, arm, beyond=n, key="token_accuracy"),
            ]
            mine = [r for r in runs if r["task"] == task and r["arm"] == arm]
            if not (any(columns) or mine):
                continue
            cells = [
                _mean_span(list(v.values())) if v else "–" for v in columns
            ]
            steps = "/".join(map(str, sorted({r["steps"] for r in mine})))
            times = [r["train_seconds"] for r in mine]
            lines.append(
                f"| {task} | {arm} | {' | '.join(cells)} | {steps or '–'} | "
                f"{_mean_span(times, 0) if times else '–'} |"
            )
    return "\n".join(lines)


def verdict(record):
    """One line: per task, does the memory arm (the first of `MEMORY_ARMS`
    that ran) beat the baseline (the first of `BASELINE_ARMS`) on the far
    cells (depth > `reach`) both were evaluated at, in exact match, and is
    the difference beyond the seed spread
    (`experiments.records.separated`)?

    Example:

    >>> rows = [
    ...     {"task": "passkey", "arm": arm, "context_tokens": 256,
    ...      "depth_segments": 3, "seed": 0, "accuracy": accuracy}
    ...     for arm, accuracy in (("inf_former", 0.5), ("window", 0.1))
    ... ]
    >>> verdict({"config": {"model": {"num_layers": 2}}, "results": rows})
    "passkey, depth > 2 (beyond Transformer-XL's reach): the ∞-former \
beats the window, 0.500 against 0.100, +0.400 (one seed: no spread)"
    """
    results, n = record["results"], reach(record)
    arms = set(_arms_in(record))
    ours = next((arm for arm in MEMORY_ARMS if arm in arms), None)
    theirs = next((arm for arm in BASELINE_ARMS if arm in arms), None)
    if ours is None or theirs is None:
        return (
            f"Arms {sorted(arms)}: no memory arm {MEMORY_ARMS} and baseline "
            f"{BASELINE_ARMS} to weigh against each other; see the table."
        )
    clauses = []
    for task in _tasks_in(record):
        answered = [
            {
                (r["context_tokens"], r["depth_segments"])
                for r in results
                if r["task"] == task and r["arm"] == arm
            }
            for arm in (ours, theirs)
        ]
        common = answered[0] & answered[1]
        a = list(per_seed(results, task, ours, common, beyond=n).values())
        b = list(per_seed(results, task, theirs, common, beyond=n).values())
        if not a or not b:
            clauses.append(
                f"{task}: no cell at depth > {n} that both "
                f"{ARM_NAMES[ours]} and {ARM_NAMES[theirs]} answered"
            )
            continue
        gap = float(np.mean(a) - np.mean(b))
        word = "beats" if gap > 0 else "loses to" if gap < 0 else "ties with"
        clause = (
            f"{task}, depth > {n} (beyond Transformer-XL's reach): "
            f"{ARM_NAMES[ours]} {word} {ARM_NAMES[theirs]}, {_mean_span(a)} "
            f"against {_mean_span(b)}, {gap:+.3f}"
        )
        seeds = min(len(a), len(b))
        if seeds < 2:
            clause += " (one seed: no spread)"
        elif separated(a, b) or separated(b, a):
            clause += f", beyond the spread of {seeds} seeds"
        else:
            clause += f", within the spread of {seeds} seeds: no conclusion"
        clauses.append(clause)
    return "; ".join(clauses)


def write_record(record, output, name):
    """Writes ``<output>/<name>.json``, ``.md`` (`markdown`) and ``.png``
    (accuracy against length and depth; without matplotlib, none).

    Returns:
        The list of paths written.
    """
    os.makedirs(output, exist_ok=True)
    path = os.path.join(output, name)
    write_json(record, f"{path}.json", indent=1)
    with open(f"{path}.md", "w", encoding="utf-8") as f:
        f.write(markdown(record) + "\n")
    paths = [f"{path}.json", f"{path}.md"]
    try:
        from experiments.plots import plot_retrieval

        plot_retrieval(
            record["results"],
            f"{path}.png",
            title=f"Retrieval, scale {record['scale']!r}",
        )
    except ImportError:  # matplotlib is optional
        print("(matplotlib not installed: no figure)")
        return paths
    return paths + [f"{path}.png"]


def load_record(path):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def done_runs(record):
    """The ``(task, arm, seed)`` runs a record holds."""
    return {(r["task"], r["arm"], r["seed"]) for r in record["runs"]}


def check_compatible(first, other, where="records"):
    """Raises unless two records share scale, segment and settings (all
    but the seeds, tasks and arms)."""
    for key in ("scale", "segment_length", "config"):
        a, b = json.dumps(first[key]), json.dumps(other[key])
        if a != b:
            raise ValueError(
                f"The {where} differ in {key!r}. Received: {a} and {b}"
            )


def merge(paths, output, name):
    """One record from several (e.g. one process per seed): same scale,
    segment and settings; runs and results joined, each ``(task, arm,
    seed)`` once. Writes it (`write_record`).

    Returns:
        ``(record, paths written)``.

    Raises:
        ValueError: the records differ, or two hold the same run.
    """
    records = [load_record(path) for path in paths]
    merged = dict(records[0])
    seen = set()
    merged["runs"], merged["results"] = [], []
    for path, record in zip(paths, records, strict=True):
        check_compatible(records[0], record)
        runs = done_runs(record)
        twice = sorted(seen & runs)
        if twice:
            raise ValueError(
                f"Run {twice[0]} is in two records. Received: {path!r}"
            )
        seen |= runs
        merged["runs"] += record["runs"]
        merged["results"] += record["results"]
    order = {arm: i for i, arm in enumerate(ARMS)}
    merged["runs"].sort(
        key=lambda r: (TASKS.index(r["task"]), r["seed"], order[r["arm"]])
    )
    commands = [r.get("command") for r in records]
    merged["command"] = "\n".join(c for c in commands if c) or None
    merged["merged_from"] = [os.path.basename(p) for p in paths]
    merged["args"] = [r["args"] for r in records]
    merged["total_seconds"] = round(sum(r["total_seconds"] for r in records), 1)
    merged["verdict"] = verdict(merged)
    return merged, write_record(merged, output, name)
