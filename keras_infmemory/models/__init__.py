"""Models with an ∞-former memory.

* `InfFormerLM` and the sorting transformer (`sorting_transformer`): our
  own transformer of `InfFormerBlock`s;
* `attach_memory`, `InfMemoryCausalLM` and the ``InfMemory<Family>*``
  classes: KerasHub causal LMs with memory (`keras_infmemory.models.hub`).
  They import ``keras_hub`` on first use, not at ``import keras_infmemory``.
"""

import importlib

from keras_infmemory.models.inf_former_lm import ARMS, InfFormerLM
from keras_infmemory.models.sorting import (
    SORTING_PRESETS,
    sorting_compile_arguments,
    sorting_transformer,
)

_HUB_NAMES = (
    "FAMILIES",
    "InfMemoryBackbone",
    "InfMemoryCausalLM",
    "attach_memory",
    "family_of",
    "memory_classes",
)


def __getattr__(name):
    """The KerasHub names, imported lazily (``keras_hub`` is heavy)."""
    if name in _HUB_NAMES or name.startswith("InfMemory"):
        hub = importlib.import_module("keras_infmemory.models.hub")
        if hasattr(hub, name):
            return getattr(hub, name)
    if name == "hub":
        return importlib.import_module("keras_infmemory.models.hub")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "ARMS",
    "SORTING_PRESETS",
    "InfFormerLM",
    "sorting_compile_arguments",
    "sorting_transformer",
    *_HUB_NAMES,
]
