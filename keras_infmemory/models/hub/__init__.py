"""KerasHub causal LMs with an ∞-former memory, one adapter for all families.

`attach_memory` gives a model in hand a memory; `InfMemoryCausalLM.
from_preset` loads a preset and gives it one. Both return the family's
causal LM with memory, a `keras_hub.models.CausalLM`. The pieces, one
concept per file:

* ``families``: the supported families and where the memory plugs in;
* ``decoder_memory``: the decoder layer with memory (taps) and one run;
* ``backbone``: `InfMemoryBackbone`, the backbone with memory;
* ``causal_lm``: `InfMemoryCausalLM`, calls with a memory state and
  generation;
* ``classes``: the memory classes of every family;
* ``attach``: `attach_memory`, the weight copy and ``from_preset``.
"""

from keras_infmemory.models.hub.attach import attach_memory
from keras_infmemory.models.hub.backbone import InfMemoryBackbone
from keras_infmemory.models.hub.causal_lm import InfMemoryCausalLM
from keras_infmemory.models.hub.classes import CLASSES, memory_classes
from keras_infmemory.models.hub.families import FAMILIES, family_of

_FAMILY_CLASSES = {
    cls.__name__: cls
    for group in CLASSES.values()
    for cls in (group.backbone, group.causal_lm, group.preprocessor,
                group.tokenizer)
}  # fmt: skip
globals().update(_FAMILY_CLASSES)

__all__ = [
    "CLASSES",
    "FAMILIES",
    "InfMemoryBackbone",
    "InfMemoryCausalLM",
    "attach_memory",
    "family_of",
    "memory_classes",
    *sorted(_FAMILY_CLASSES),
]
