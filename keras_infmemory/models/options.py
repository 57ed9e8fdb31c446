"""Options of the long-term memories a model creates, and their switch.

A model with memory takes ``memory_options``, a dict of `ContinuousLTM`
arguments, and gives each of its layers an LTM built from them; these
helpers check, copy and serialize that dict the same way for every model.
"""

import keras

from keras_infmemory import validation as check


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


def fresh_memory_options(memory_options):
    """The options (from `check_memory_options`) for one more LTM: each LTM
    gets its own Keras objects (a sampler), deserialized from the config."""
    return {
        key: keras.saving.deserialize_keras_object(value)
        if isinstance(value, dict) and "class_name" in value
        else value
        for key, value in memory_options.items()
    }


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


def set_memory_enabled(model, ltms, value):
    """Switches the LTMs of ``model`` on or off (ablations: same weights).

    The model's compiled functions baked the old value in: they are reset.
    """
    value = check.check_bool("memory_enabled", value)
    for ltm in ltms:
        if ltm is not None:
            ltm.enabled = value
    model.train_function = model.test_function = None
    model.predict_function = None
    if hasattr(model, "generate_function"):
        model.generate_function = None
