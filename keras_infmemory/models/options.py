"""Options of the long-term memories a model creates.

A model with memory takes ``memory_options``, a dict of `ContinuousLTM`
arguments, and gives each of its layers an LTM built from them; these
helpers check, serialize and build from that dict the same way for every
model.
"""

import keras

from keras_infmemory.layers.continuous_ltm import ContinuousLTM


def check_memory_options(memory_options, reserved=("num_heads", "key_dim")):
    """``None`` or a dict of `ContinuousLTM` arguments, as a plain dict.

    The arguments set by the model (``reserved``) are refused. Keras
    objects (a `StickyMemorySampler`) may be given as objects or as their
    serialized configs (after a config round trip).
    """
    if memory_options is None:
        return None
    if not isinstance(memory_options, dict):
        raise ValueError(
            "`memory_options` must be None or a dict of ContinuousLTM "
            f"arguments. Received: memory_options={memory_options!r}"
        )
    memory_options = dict(memory_options)
    for name in reserved:
        if name in memory_options:
            raise ValueError(
                f"`memory_options` must not set `{name}` (taken from the "
                f"model). Received: memory_options={memory_options}"
            )
    # Stored as config (JSON-able): a Keras object in a dict attribute would
    # become a tracked sublayer of the model.
    return serialize_memory_options(memory_options)


def make_ltm(memory_options, **arguments):
    """A new `ContinuousLTM` of ``memory_options`` (from
    `check_memory_options`) and the ``arguments`` the model sets (its heads,
    sizes, name, dtype). Each LTM gets Keras objects of its own (a sampler),
    deserialized from the config."""
    options = {
        key: keras.saving.deserialize_keras_object(value)
        if isinstance(value, dict) and "class_name" in value
        else value
        for key, value in (memory_options or {}).items()
    }
    return ContinuousLTM(**arguments, **options)


def serialize_memory_options(memory_options):
    """``memory_options`` as JSON-able config (Keras objects serialized;
    Keras' serialization imports TensorFlow where it is installed, so a
    model given a sampler object pays that import once)."""
    if memory_options is None:
        return None
    return {
        key: keras.saving.serialize_keras_object(value)
        if isinstance(value, keras.layers.Layer)
        else (list(value) if isinstance(value, (tuple, list)) else value)
        for key, value in memory_options.items()
    }
