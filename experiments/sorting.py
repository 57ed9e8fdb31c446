"""The ∞-former paper's sorting transformer (docs/math.md §7), at two scales.

A scale fixes the model (an `InfFormerLM`), its LTM and its training
recipe. ``"paper"`` is the paper's configuration; ``"cpu"`` is a scaled-down
one that trains in minutes on two CPU cores, with the same ratios where they
matter: one segment of STM, ``N = M``, ``τ = 0.75``, widths {0.01, 0.05},
``λ = 1`` and gradients through the last segment only.

Example:

>>> model = sorting_transformer("inf_former", scale="cpu")
>>> model.segment_length, model.stm_length, model.memory_options["num_basis"]
(64, 64, 64)
>>> model.compile(**compile_arguments("cpu", steps=100))
"""

import copy

import keras

from experiments.data import sorting as sorting_data
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
