"""The memory classes of every family: thin subclasses of the family's own.

As KerasHub adds a family that differs little from another (``Llama3`` over
``Llama``), each supported family gets four registered subclasses, made
here from one pattern rather than written out ten times:

* ``InfMemory<Family>Backbone`` = `InfMemoryBackbone` + the family backbone;
* ``InfMemory<Family>CausalLM`` = `InfMemoryCausalLM` + the family causal LM;
* ``InfMemory<Family>CausalLMPreprocessor`` and ``InfMemory<Family>
  Tokenizer``: the family's, unchanged, pointing at the memory backbone so
  that KerasHub's ``from_preset`` finds them for a saved memory model.

They are registered for serialization (``package="keras_infmemory"``), so a
preset saved with ``save_to_preset`` loads with KerasHub's own
``from_preset`` (``keras_hub.models.CausalLM.from_preset(path)``) once
`keras_infmemory.models.hub` is imported.
"""

import dataclasses

import keras

from keras_infmemory.models.hub.backbone import InfMemoryBackbone
from keras_infmemory.models.hub.causal_lm import InfMemoryCausalLM
from keras_infmemory.models.hub.families import FAMILIES, family_of


@dataclasses.dataclass(frozen=True)
class MemoryClasses:
    """The four memory classes of one family."""

    backbone: type
    causal_lm: type
    preprocessor: type
    tokenizer: type


def _register(cls):
    return keras.saving.register_keras_serializable(package="keras_infmemory")(
        cls
    )


def _make(family):
    base_lm = family.causal_lm_class
    base_backbone = base_lm.backbone_cls
    base_preprocessor = base_lm.preprocessor_cls
    base_tokenizer = base_preprocessor.tokenizer_cls
    stem = "InfMemory" + base_lm.__name__.removesuffix("CausalLM")
    doc = (
        f"`{base_lm.__name__}`'s {{}} with an ∞-former memory (see "
        "`keras_infmemory.models.hub`)."
    )
    backbone = _register(
        type(
            f"{stem}Backbone",
            (InfMemoryBackbone, base_backbone),
            {
                "family": family,
                "__doc__": doc.format("backbone")
                + "\n\n"
                + InfMemoryBackbone.__doc__,
                "__module__": __name__,
            },
        )
    )
    tokenizer = _register(
        type(
            f"{stem}Tokenizer",
            (base_tokenizer,),
            {
                "backbone_cls": backbone,
                "__doc__": doc.format("tokenizer"),
                "__module__": __name__,
            },
        )
    )
    preprocessor = _register(
        type(
            f"{stem}CausalLMPreprocessor",
            (base_preprocessor,),
            {
                "backbone_cls": backbone,
                "tokenizer_cls": tokenizer,
                "__doc__": doc.format("preprocessor"),
                "__module__": __name__,
            },
        )
    )
    causal_lm = _register(
        type(
            f"{stem}CausalLM",
            (InfMemoryCausalLM, base_lm),
            {
                "backbone_cls": backbone,
                "preprocessor_cls": preprocessor,
                "__doc__": doc.format("causal LM")
                + "\n\n"
                + InfMemoryCausalLM.__doc__,
                "__module__": __name__,
            },
        )
    )
    return MemoryClasses(backbone, causal_lm, preprocessor, tokenizer)


CLASSES = {name: _make(family) for name, family in FAMILIES.items()}
"""The memory classes of each family, by family name."""


def memory_classes(model_or_family):
    """The `MemoryClasses` of a family: by name (``"llama3"``), or of a
    causal LM (instance or class; a memory model gives its own family)."""
    if isinstance(model_or_family, str):
        if model_or_family not in CLASSES:
            raise ValueError(
                f"`family` must be one of {sorted(CLASSES)}. "
                f"Received: family={model_or_family!r}"
            )
        return CLASSES[model_or_family]
    return CLASSES[family_of(model_or_family).name]
