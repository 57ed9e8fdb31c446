"""Giving a KerasHub causal LM a memory: `attach_memory` and `from_preset`.

The family's backbone cannot take a memory after it is built (its decoder
layers are built and called in its constructor), so a memory model is
constructed as such, from the family's own config, and given the model's
weights unchanged, matched by path. The LTMs are new.
"""

import inspect

import keras_hub
from keras import ops

from keras_infmemory.layers.continuous_ltm import ContinuousLTM
from keras_infmemory.models.hub.backbone import (
    InfMemoryBackbone,
    memory_backbone_arguments,
)
from keras_infmemory.models.hub.causal_lm import InfMemoryCausalLM
from keras_infmemory.models.hub.classes import memory_classes
from keras_infmemory.models.hub.families import family_of, supported

# Keyword arguments of `attach_memory` other than ContinuousLTM options.
MODEL_ARGUMENTS = (
    "memory_layers",
    "segment_length",
    "segment_loop",
    "normalize_memory",
    "stm_length",
    "memory_options",
    "stateful",
    "batch_size",
)


def attach_memory(causal_lm, memory_layers=None, **memory_options):
    """Gives a KerasHub causal LM an ∞-former memory.

    Builds the family's causal LM with memory (same configuration, same
    preprocessor), copies every weight unchanged and adds a fresh
    `ContinuousLTM` to each chosen decoder layer. Supported families:
    GPT-2, OPT, Llama, Llama 3, Mistral, Qwen (2), Qwen 3, Gemma, Gemma 3
    and Phi-3 (see `keras_infmemory.models.hub.families`).

    Example:

    >>> import keras_hub
    >>> from keras_infmemory.models import attach_memory
    >>> llama = keras_hub.models.Llama3CausalLM(
    ...     keras_hub.models.Llama3Backbone(
    ...         vocabulary_size=16, num_layers=1, num_query_heads=4,
    ...         num_key_value_heads=2, hidden_dim=16, intermediate_dim=32,
    ...     )
    ... )
    >>> lm = attach_memory(llama, segment_length=8, num_basis=16,
    ...                    num_samples=16)
    >>> type(lm).__name__, lm.backbone.memories[0].num_heads
    ('InfMemoryLlama3CausalLM', 4)

    Args:
        causal_lm: a KerasHub causal LM of a supported family (with or
            without a memory; on one with a memory, the options given
            replace its own).
        memory_layers: ``None`` (every decoder layer) or a list of layer
            indices that get a memory.
        **memory_options: ``segment_length`` (default 512, capped at the
            model's ``max_sequence_length``), ``segment_loop``,
            ``normalize_memory``, ``stm_length`` (the short-term memory,
            default 0: none; see `InfMemoryBackbone`),
            ``stateful`` and ``batch_size`` (see `InfMemoryCausalLM`),
            ``memory_options`` (a dict) and any `ContinuousLTM` argument
            (``num_basis``, ``tau``, ``sticky``, …).

    Returns:
        The family's `InfMemoryCausalLM` (a `keras_hub.models.CausalLM`).

    Raises:
        ValueError: for an unsupported class (naming the supported ones) or
            an unknown option.
    """
    if not isinstance(causal_lm, keras_hub.models.CausalLM):
        hint = ""
        if isinstance(causal_lm, str):
            hint = (
                " For a preset name, load the model with its memory: "
                f"`InfMemoryCausalLM.from_preset({causal_lm!r}, ...)`, or "
                "load the family's model first "
                f"(`keras_hub.models.CausalLM.from_preset({causal_lm!r})`) "
                "and pass it."
            )
        raise ValueError(
            "`attach_memory` takes a KerasHub causal LM (a "
            "`keras_hub.models.CausalLM` of a supported family: "
            f"{supported()}).{hint} Received: causal_lm={causal_lm!r}"
        )
    classes = memory_classes(causal_lm)
    options = dict(memory_options)
    options["memory_layers"] = memory_layers
    model_args = {k: options.pop(k) for k in MODEL_ARGUMENTS if k in options}
    ltm_options = dict(model_args.pop("memory_options", None) or {})
    ltm_options.update(options)  # the rest: ContinuousLTM arguments
    old = causal_lm.backbone
    config, memory = memory_backbone_arguments(old.get_config())
    config.pop("trainable", None)
    if isinstance(old, InfMemoryBackbone):
        ltm_options = {**memory["memory_options"], **ltm_options}
        for name in (
            "memory_layers",
            "segment_length",
            "segment_loop",
            "normalize_memory",
            "stm_length",
        ):
            if model_args.get(name) is None and name in memory:
                model_args[name] = memory[name]
    _check_options(ltm_options)
    backbone = classes.backbone(
        **config,
        segment_length=model_args.get("segment_length"),
        memory_layers=model_args.get("memory_layers"),
        memory_options=ltm_options,
        segment_loop=model_args.get("segment_loop") or "python",
        normalize_memory=model_args.get("normalize_memory", True),
        stm_length=model_args.get("stm_length") or 0,
    )
    copy_weights(old, backbone)
    return classes.causal_lm(
        backbone,
        preprocessor=causal_lm.preprocessor,
        stateful=bool(model_args.get("stateful", False)),
        batch_size=model_args.get("batch_size"),
    )


def _ltm_arguments():
    """The `ContinuousLTM` arguments a user may set (the others come from
    the model)."""
    names = set(inspect.signature(ContinuousLTM.__init__).parameters)
    return (
        names
        - {"self", "kwargs", "num_heads", "key_dim", "memory_dim"}
        - {
            "output_dim",
            "name",
            "dtype",
        }
    )


def _check_options(options):
    known = _ltm_arguments()
    unknown = sorted(set(options) - known)
    if unknown:
        raise ValueError(
            "Unknown memory options: expected "
            f"{sorted(MODEL_ARGUMENTS)} or ContinuousLTM arguments "
            f"{sorted(known)}. Received: {unknown}"
        )


def copy_weights(source, target):
    """Copies every weight of ``source`` into ``target``, matched by path.

    Raises:
        ValueError: if a weight of ``source`` has no counterpart of the
            same shape in ``target`` (e.g. a memory layer dropped).
    """
    by_path = {v.path: v for v in target.weights}
    for variable in source.weights:
        destination = by_path.get(variable.path)
        if destination is None:
            raise ValueError(
                f"Cannot place weight {variable.path!r}: the new backbone "
                "has no weight with that path (a memory layer dropped?). "
                f"Received: source={type(source).__name__}"
            )
        if tuple(destination.shape) != tuple(variable.shape):
            raise ValueError(
                f"Shape mismatch for {variable.path!r}: "
                f"{tuple(variable.shape)} vs {tuple(destination.shape)}. "
                f"Received: source={type(source).__name__}"
            )
        # A copy: on JAX an assigned array is shared, and training the new
        # model (which donates its buffers) would delete the source's.
        destination.assign(ops.copy(variable.value))


def from_preset(cls, preset, load_weights=True, **kwargs):
    """`InfMemoryCausalLM.from_preset` (``cls``: the class it was called
    on; a family's class accepts only its family's presets)."""
    options = {k: kwargs.pop(k) for k in MODEL_ARGUMENTS if k in kwargs}
    options.update(_pop_ltm_options(kwargs))
    try:
        model = keras_hub.models.CausalLM.from_preset(
            preset, load_weights=load_weights, **kwargs
        )
    except OSError as error:  # no network, a missing folder or file
        raise ValueError(
            f"Could not load the preset {preset!r}: a KerasHub preset name "
            "must be downloaded (network access to Kaggle or Hugging Face; "
            "it is cached after the first time), or `preset` must be a "
            "local folder (e.g. written by `save_to_preset`). Cause: "
            f"{type(error).__name__}. Received: preset={preset!r}"
        ) from error
    family = getattr(cls, "backbone_cls", None)
    if family is not None and family_of(model) != family.family:
        raise ValueError(
            f"{cls.__name__} loads {family.family.causal_lm} presets. "
            f"Received: preset={preset!r} with {type(model).__name__}"
        )
    if isinstance(model, InfMemoryCausalLM) and not options:
        return model
    return attach_memory(model, **options)


def _pop_ltm_options(kwargs):
    names = _ltm_arguments()
    return {k: kwargs.pop(k) for k in list(kwargs) if k in names}
