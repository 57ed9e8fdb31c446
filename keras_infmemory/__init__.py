"""keras-infmemory: unbounded long-term memory for Keras 3 transformers.

This module lists the library's public API; docs/api.md documents exactly
these names, and the other modules of the package are its internals.

Layers (`keras.layers.Layer`s):

* `ContinuousLTM`: the continuous long-term memory (write, read, state);
* `StickyMemorySampler`: where the next write samples the old signal;
* `InfFormerBlock`: a transformer block with a short-term memory and an LTM;
* `CompressiveMemory`: the Compressive Transformer's compressed memory.

Modules:

* `keras_infmemory.models`: `InfFormerLM`, and `keras_infmemory.models.hub`
  (`attach_memory` and the KerasHub causal LMs with memory);
* `keras_infmemory.optimizers`: `MemoryAdamW`, AdamW with the memory's
  own learning rate;
* `keras_infmemory.documents`: long documents as blocks in document order
  (`DocumentBlocks`), for a model that carries its memory between batches;
* `keras_infmemory.checkpoint`: memory states on disk, bit for bit;
* `keras_infmemory.memory_map` and `keras_infmemory.plotting`: what the
  memory holds and where it is read, as numbers and as pictures;
* `keras_infmemory.basis`: the math (basis functions, the ridge fit, the
  Gaussian expectations, the bin masses), as small `keras.ops` functions;
* `keras_infmemory.interop`: the authors' PyTorch weights in our layers;
* `keras_infmemory.distribution`: data-parallel training.

The tasks, readers, metrics and recipes of this repository's examples and
benchmarks are not part of the library: they live in the `experiments`
package beside it.
"""

from keras_infmemory import (
    basis,
    checkpoint,
    distribution,
    documents,
    interop,
    memory_map,
    models,
    optimizers,
    plotting,
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
    "documents",
    "interop",
    "memory_map",
    "models",
    "optimizers",
    "plotting",
]
