"""keras-infmemory: unbounded long-term memory for Keras 3 transformers."""

from keras_infmemory import (
    basis,
    checkpoint,
    distribution,
    interop,
    models,
)
from keras_infmemory.layers import (
    CompressiveMemory,
    ContinuousLTM,
    InfFormerBlock,
    StickyMemorySampler,
)

__version__ = "0.1.0"

__all__ = [
    "CompressiveMemory",
    "ContinuousLTM",
    "InfFormerBlock",
    "StickyMemorySampler",
    "basis",
    "checkpoint",
    "distribution",
    "interop",
    "models",
]
