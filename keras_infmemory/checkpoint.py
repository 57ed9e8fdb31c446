"""Saving and restoring memory states, so a long stream can resume exactly.

A memory state is a (nested) dict of fixed-shape tensors, as returned by
``get_initial_state`` of `ContinuousLTM` or a block. These helpers store it
as a NumPy ``.npz`` file, keys joined with ``/``, values bit for bit.
"""

import numpy as np
from keras import ops

_SEPARATOR = "/"


def state_to_numpy(state):
    """A flat ``{"a/b": ndarray}`` copy of a nested state dict."""
    flat = {}

    def visit(prefix, value):
        if isinstance(value, dict):
            for key, item in value.items():
                if _SEPARATOR in str(key):
                    raise ValueError(
                        f"State keys must not contain '{_SEPARATOR}'. "
                        f"Received: key={key!r}"
                    )
                visit(
                    f"{prefix}{_SEPARATOR}{key}" if prefix else str(key), item
                )
        elif isinstance(value, (list, tuple)):
            for index, item in enumerate(value):
                visit(f"{prefix}{_SEPARATOR}#{index}", item)
        else:
            flat[prefix] = ops.convert_to_numpy(value)

    if not isinstance(state, (dict, list, tuple)):
        raise ValueError(
            f"`state` must be a dict of tensors. Received: state={state!r}"
        )
    visit("", state)
    return flat


def state_from_numpy(flat):
    """Inverse of `state_to_numpy`: nested dicts (and lists) of tensors."""
    root = {}
    for path, value in flat.items():
        parts = path.split(_SEPARATOR)
        node = root
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = ops.convert_to_tensor(np.asarray(value))
    return _lists(root)


def _lists(node):
    if not isinstance(node, dict):
        return node
    items = {k: _lists(v) for k, v in node.items()}
    if items and all(k.startswith("#") for k in items):
        return [items[f"#{i}"] for i in range(len(items))]
    return items


def save_state(path, state):
    """Writes a memory state to ``path`` (``.npz``), exactly.

    Example:

    >>> import os, tempfile
    >>> import keras_infmemory
    >>> ltm = keras_infmemory.ContinuousLTM(2, 4, num_basis=16, num_samples=8)
    >>> state = ltm.get_initial_state(batch_size=2)
    >>> path = os.path.join(tempfile.mkdtemp(), "memory.npz")
    >>> keras_infmemory.checkpoint.save_state(path, state)
    >>> restored = keras_infmemory.checkpoint.load_state(path)
    >>> sorted(restored)
    ['coefficients', 'has_memory']
    """
    np.savez(path, **state_to_numpy(state))


def load_state(path):
    """Reads a state written by `save_state`."""
    with np.load(path) as data:
        return state_from_numpy({k: data[k] for k in data.files})
