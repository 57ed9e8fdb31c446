"""The layers: the memory, its sticky sampler, and a block that uses both.

* `ContinuousLTM`: the continuous long-term memory (write, read, state).
* `StickyMemorySampler`: where the next write samples the old signal.
* `InfFormerBlock`: a transformer block with a short-term memory (the
  previous segment) and a `ContinuousLTM`.
"""

from keras_infmemory.layers.continuous_ltm import ContinuousLTM
from keras_infmemory.layers.inf_former_block import InfFormerBlock
from keras_infmemory.layers.sticky_memory_sampler import StickyMemorySampler

__all__ = ["ContinuousLTM", "InfFormerBlock", "StickyMemorySampler"]
