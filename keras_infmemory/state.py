"""Per-row operations on memory states (batch-first, fixed-shape tensors).

A memory state is any nested structure (dict, list) of tensors whose first
axis is the batch; these helpers act on each row independently, so one
document can start over while the others go on.
"""

import keras
from keras import ops


def where_rows(mask, new, old):
    """``new`` in the rows where ``mask`` ``(B,)`` is True, else ``old``.

    ``new`` and ``old`` are tensors or structures of tensors of the same
    layout, each of shape ``(B, ...)``.

    Example:

    >>> import keras
    >>> import numpy as np
    >>> from keras_infmemory.state import where_rows
    >>> new = {"x": np.ones((2, 3))}
    >>> old = {"x": np.zeros((2, 3))}
    >>> picked = where_rows(np.array([True, False]), new, old)
    >>> tuple(keras.ops.convert_to_numpy(picked["x"]).sum(axis=1).tolist())
    (3.0, 0.0)
    """
    mask = ops.cast(mask, "bool")

    def select(a, b):
        rows = ops.reshape(mask, (-1,) + (1,) * (len(a.shape) - 1))
        return ops.where(rows, a, b)

    return keras.tree.map_structure(select, new, old)
