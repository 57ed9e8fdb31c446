"""Memory states: saving and restoring them, so a long stream can resume
exactly, and checking that they are finite.

A memory state is a (nested) dict of fixed-shape tensors, as returned by
``get_initial_state`` of `ContinuousLTM` or a block. These helpers store it
as a NumPy ``.npz`` file, keys joined with ``/``, values bit for bit;
`finite_rows` says which of its rows hold no NaN or inf (a NaN that once
entered a row's memory is read by every later segment of that row).
"""

import os

import keras
import numpy as np
from keras import ops

_SEPARATOR = "/"
_BFLOAT16 = "__bfloat16__"


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
                key = f"#{index}"  # a top-level list has no prefix
                visit(f"{prefix}{_SEPARATOR}{key}" if prefix else key, item)
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
        node[parts[-1]] = ops.convert_to_tensor(value)
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
    >>> restored = keras_infmemory.checkpoint.load_state(path, like=state)
    >>> sorted(restored)
    ['coefficients', 'has_memory']
    """
    _check_path(path)
    flat = state_to_numpy(state)
    # NumPy files cannot hold bfloat16: store its bits as uint16 and list
    # those entries under _BFLOAT16.
    bfloat16 = sorted(k for k, v in flat.items() if _dtype(v) == "bfloat16")
    for key in bfloat16:
        flat[key] = flat[key].view(np.uint16)
    np.savez(path, **flat, **{_BFLOAT16: np.array(bfloat16, dtype=str)})


def load_state(path, like=None):
    """Reads a state written by `save_state`.

    Args:
        path: the ``.npz`` file.
        like: optional template state (e.g. ``get_initial_state(batch)`` of
            the layer or model that will continue the stream): the file
            must hold the same entries with the same shapes and dtypes,
            else a ``ValueError`` names the first difference.
    """
    _check_path(path)
    if not os.path.exists(path):
        raise ValueError(f"No state file at `path`. Received: path={path!r}")
    with np.load(path) as data:
        flat = {k: data[k] for k in data.files if k != _BFLOAT16}
        bfloat16 = data[_BFLOAT16].tolist() if _BFLOAT16 in data else []
    for key in bfloat16:
        # bfloat16 bits are the top half of a float32's: exact round trip.
        bits = flat[key].astype(np.uint32) << 16
        flat[key] = ops.cast(bits.view(np.float32), "bfloat16")
    if like is not None:
        expected = state_to_numpy(like)
        if set(flat) != set(expected):
            raise ValueError(
                f"The state in {path!r} does not match `like`: entries "
                f"{sorted(set(expected) - set(flat))} are missing and "
                f"{sorted(set(flat) - set(expected))} unexpected. "
                f"Received: entries={sorted(flat)}"
            )
        for key, value in expected.items():
            got = flat[key]
            if tuple(got.shape) != value.shape or _dtype(got) != _dtype(value):
                raise ValueError(
                    f"The state entry {key!r} in {path!r} does not match "
                    f"`like` (shape {value.shape}, dtype {_dtype(value)}). "
                    f"Received: shape={tuple(got.shape)}, dtype={_dtype(got)}"
                )
    return state_from_numpy(flat)


def finite_rows(state):
    """Whether each row of a memory state is finite.

    A NaN or inf that enters a row's memory (a NaN in that row's input,
    say) is read by every later segment of the row until the row is
    emptied. This tells which rows are affected: a pure function of
    ``keras.ops`` (it also runs inside compiled code), one reduction per
    tensor of the state, no host copy.

    Example:

    >>> import numpy as np
    >>> import keras
    >>> import keras_infmemory
    >>> ltm = keras_infmemory.ContinuousLTM(2, 4, num_basis=16, num_samples=8)
    >>> state = ltm.get_initial_state(batch_size=3)
    >>> segment = np.ones((3, 5, 8), "float32")
    >>> segment[1, 2, 0] = np.nan  # row 1's input holds a NaN
    >>> state = ltm.write(segment, state)
    >>> finite = keras_infmemory.checkpoint.finite_rows(state)
    >>> keras.ops.convert_to_numpy(finite).tolist()
    [True, False, True]

    Args:
        state: a memory state (any nest of tensors whose first axis is the
            batch), e.g. from ``get_initial_state``, a call with
            ``state=``, or `InfMemoryCausalLM.absorb`.

    Returns:
        A bool tensor ``(B,)``: True where every float entry of the row is
        finite. The models report rows that are not where they return to
        the host anyway (`InfMemoryCausalLM.absorb`, ``score``,
        ``generate``; `keras_infmemory.models.FiniteMemoryCheck` for a
        stateful model in ``fit``).
    """
    leaves = keras.tree.flatten(state) if keras.tree.is_nested(state) else []
    leaves = [leaf for leaf in leaves if hasattr(leaf, "shape")]
    if not leaves or any(len(leaf.shape) == 0 for leaf in leaves):
        raise ValueError(
            "`state` must be a memory state: a dict or list of tensors "
            "whose first axis is the batch. "
            f"Received: state={state!r}"
        )
    batch = ops.shape(leaves[0])[0]
    finite = ops.ones((batch,), "bool")
    for leaf in leaves:
        if "float" not in keras.backend.standardize_dtype(leaf.dtype):
            continue
        rows = ops.reshape(ops.isfinite(leaf), (batch, -1))
        finite = ops.logical_and(finite, ops.all(rows, axis=1))
    return finite


def _dtype(array):
    return keras.backend.standardize_dtype(array.dtype)


def _check_path(path):
    if not isinstance(path, (str, os.PathLike)):
        raise ValueError(
            f"`path` must be a str or os.PathLike. Received: path={path!r}"
        )
