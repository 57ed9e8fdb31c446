from keras_infmemory.layers.continuous_ltm import ContinuousLTM
from keras_infmemory.layers.inf_former_block import InfFormerBlock
from keras_infmemory.layers.sticky_memory_sampler import StickyMemorySampler

__all__ = ["ContinuousLTM", "InfFormerBlock", "StickyMemorySampler"]
