"""The layers: the memory, its sticky sampler, and a block that uses both.

* `ContinuousLTM`: the continuous long-term memory (write, read, state).
* `StickyMemorySampler`: where the next write samples the old signal.
* `CompressiveMemory`: the Compressive Transformer's compressed memory
  (the baseline `InfFormerLM.arm("compressive")`).
* `InfFormerBlock`: a transformer block with a short-term memory (the
  previous segment) and a `ContinuousLTM`.
"""

from keras_infmemory.layers.compressive_memory import CompressiveMemory
from keras_infmemory.layers.continuous_ltm import ContinuousLTM
from keras_infmemory.layers.inf_former_block import InfFormerBlock
from keras_infmemory.layers.sticky_memory_sampler import StickyMemorySampler

__all__ = [
    "CompressiveMemory",
    "ContinuousLTM",
    "InfFormerBlock",
    "StickyMemorySampler",
]
