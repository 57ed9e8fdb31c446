"""Models with an ∞-former memory.

* `InfFormerLM`: our own transformer of `InfFormerBlock`s, with the paper's
  arms by name (`ARMS`, `InfFormerLM.arm`);
* `FiniteMemoryCheck`: a callback that reports a stateful model's memory
  rows that are no longer finite (NaN or inf);
* `keras_infmemory.models.hub`: KerasHub causal LMs with memory
  (`attach_memory`, `InfMemoryCausalLM.from_preset` and the
  ``InfMemory<Family>*`` classes of every supported family).

``attach_memory``, ``InfMemoryCausalLM`` and ``InfMemoryBackbone`` are
importable from here too; they import ``keras_hub`` on first use, not at
``import keras_infmemory``.
"""

import importlib
from typing import TYPE_CHECKING

from keras_infmemory.models.inf_former_lm import ARMS, InfFormerLM
from keras_infmemory.models.memory_model import FiniteMemoryCheck

if TYPE_CHECKING:  # static tools see them; Python imports them on use
    from keras_infmemory.models.hub import (
        InfMemoryBackbone,
        InfMemoryCausalLM,
        attach_memory,
    )

__all__ = [
    "ARMS",
    "FiniteMemoryCheck",
    "InfFormerLM",
    "InfMemoryBackbone",
    "InfMemoryCausalLM",
    "attach_memory",
]
_FROM_HUB = ("InfMemoryBackbone", "InfMemoryCausalLM", "attach_memory")


def __getattr__(name):
    """The KerasHub names, imported on first use (``keras_hub`` is heavy)."""
    if name == "hub":
        return importlib.import_module("keras_infmemory.models.hub")
    if name in _FROM_HUB:
        hub = importlib.import_module("keras_infmemory.models.hub")
        return getattr(hub, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
