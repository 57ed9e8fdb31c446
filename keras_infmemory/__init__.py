"""keras-infmemory: unbounded long-term memory for Keras 3 transformers."""

from keras_infmemory import basis, interop
from keras_infmemory.layers import ContinuousLTM, StickyMemorySampler

__version__ = "0.1.0"

__all__ = [
    "ContinuousLTM",
    "StickyMemorySampler",
    "basis",
    "interop",
]
