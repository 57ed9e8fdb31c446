"""Per-row operations on memory states (batch-first, fixed-shape tensors).

A memory state is any nested structure (dict, list) of tensors whose first
axis is the batch; these helpers act on each row independently, so one
document can start over while the others go on.
"""

import keras
from keras import ops


def known_value(x, kind):
    """``kind(x)`` (``int`` or ``bool``) where ``x`` has a value now, else
    ``x`` unchanged.

    In eager execution (torch, or a backend outside a trace) a scalar tensor
    has a value, and code that branches or indexes on it can do so in Python
    instead of through a traced conditional (`segments.apply_if`) and a
    tensor-indexed ``ops.slice_update``, each of which costs torch eager
    tens of microseconds per call (docs/performance.md, "Decoding in eager
    torch"). Under ``jax.jit`` or ``tf.function`` the value is not known
    yet and ``x`` comes back as it was. On an accelerator, reading the
    value waits for the device.
    """
    try:
        return kind(x)
    except Exception:  # a tracer, graph or meta tensor: no value yet
        return x


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


class StateHolder:
    """A memory state kept between calls in non-trainable variables.

    The stateful mode of the models (like ``keras.layers.RNN(stateful=True)``)
    keeps its state in variables of ``layer``: one variable per tensor of
    ``template`` (any nest of fixed-shape tensors, e.g. from
    ``get_initial_state``), each with the tensor's dtype (bool stays bool).
    On JAX the trainer threads them through ``stateless_call``.

    Example:

    >>> import keras
    >>> import numpy as np
    >>> from keras_infmemory.state import StateHolder
    >>> layer = keras.layers.Layer()
    >>> template = {"x": np.zeros((2, 3), "float32"), "seen": np.zeros(2, bool)}
    >>> holder = StateHolder(layer, template)
    >>> ones = {"x": np.ones((2, 3), "float32"), "seen": np.ones(2, bool)}
    >>> holder.assign(ones)
    >>> holder.reset(np.array([False, True]))
    >>> keras.ops.convert_to_numpy(holder.read()["seen"]).tolist()
    [True, False]

    Args:
        layer: the `keras.layers.Layer` (or model) that owns the variables.
        template: a state of the right structure, shapes and dtypes.
        name: prefix of the variable names.
    """

    def __init__(self, layer, template, name="state"):
        self._template = template
        self.variables = [
            layer.add_weight(
                shape=tuple(value.shape),
                dtype=keras.backend.standardize_dtype(value.dtype),
                initializer="zeros",
                trainable=False,
                autocast=False,
                name=f"{name}_{i}",
            )
            for i, value in enumerate(keras.tree.flatten(template))
        ]

    def read(self):
        """The stored state (copies on torch, whose backward needs the
        values a call read after the call has assigned new ones)."""
        copy = ops.copy if keras.backend.backend() == "torch" else None
        values = [copy(v.value) if copy else v.value for v in self.variables]
        return keras.tree.pack_sequence_as(self._template, values)

    def assign(self, state):
        """Stores ``state`` (same structure as the template)."""
        for variable, value in zip(
            self.variables, keras.tree.flatten(state), strict=True
        ):
            variable.assign(ops.cast(value, variable.dtype))

    def reset(self, reset_mask=None):
        """Empties the rows where ``reset_mask`` ``(B,)`` is True (all rows
        by default): zeros, False."""
        for variable in self.variables:
            empty = ops.zeros(variable.shape, variable.dtype)
            if reset_mask is not None:
                empty = where_rows(reset_mask, empty, variable.value)
            variable.assign(empty)
