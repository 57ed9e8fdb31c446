"""Data-parallel training on several devices, through Keras' own API.

`data_parallel` sets a `keras.distribution.DataParallel` for the process:
every batch is split along its first axis over the devices, the weights are
replicated, and ``fit`` / ``train_on_batch`` / ``predict`` average the
gradients across devices, as one device would compute them. The memory
state of `ContinuousLTM`, `InfFormerBlock` and `InfFormerLM` is per batch
row, so the rows of a streaming state never need another device's rows:
the state arrays a distributed step returns are split along the batch like
the inputs.

Keras 3 drives training with ``keras.distribution`` on the **JAX** backend
only. With TensorFlow, use a ``tf.distribute`` strategy's ``scope()``
instead; with PyTorch, ``torch.nn.parallel.DistributedDataParallel`` around
the model. `data_parallel` raises a ``ValueError`` that says so on those
backends rather than pretending to distribute.
"""

import keras

from keras_infmemory import validation as check


def data_parallel(num_devices=None, device_type=None):
    """Sets and returns a `keras.distribution.DataParallel` (JAX only).

    Example (on a machine with 4 GPUs, or on CPU after
    ``XLA_FLAGS=--xla_force_host_platform_device_count=4``):

        import keras_infmemory
        keras_infmemory.distribution.data_parallel(num_devices=4)
        model = keras_infmemory.models.InfFormerLM.arm(...)
        model.compile(...)
        model.fit(...)  # each batch split over the 4 devices

    The batch size must be a multiple of the number of devices.

    Args:
        num_devices: ``None`` (every visible device of ``device_type``) or
            an int ≥ 1, how many of them to use.
        device_type: ``None`` (Keras' default: accelerators if any, else
            CPU), ``"cpu"``, ``"gpu"`` or ``"tpu"``.

    Returns:
        The `keras.distribution.DataParallel` now in effect (undo it with
        ``keras.distribution.set_distribution(None)``).
    """
    backend = keras.backend.backend()
    if backend != "jax":
        raise ValueError(
            "`data_parallel` needs the JAX backend: Keras' distribution API "
            "(keras.distribution.DataParallel) distributes training on JAX "
            "only. On TensorFlow, build and compile the model inside a "
            "tf.distribute strategy's scope(); on PyTorch, wrap it in "
            "torch.nn.parallel.DistributedDataParallel. "
            f"Received: backend={backend!r}"
        )
    if num_devices is not None:
        num_devices = check.check_int("num_devices", num_devices)
    if device_type not in (None, "cpu", "gpu", "tpu"):
        raise ValueError(
            '`device_type` must be None, "cpu", "gpu" or "tpu". '
            f"Received: device_type={device_type!r}"
        )
    devices = keras.distribution.list_devices(device_type)
    if num_devices is None:
        num_devices = len(devices)
    if num_devices > len(devices):
        raise ValueError(
            f"`num_devices` is larger than the {len(devices)} visible "
            f"device(s) {devices}. Received: num_devices={num_devices}"
        )
    distribution = keras.distribution.DataParallel(
        devices=devices[:num_devices]
    )
    keras.distribution.set_distribution(distribution)
    return distribution


def shard_rows(state):
    """Lays every tensor of ``state`` (a nest of ``(B, ...)`` tensors) out
    along its first axis like the data, under the distribution in effect
    (`keras.distribution.DataParallel` or ``ModelParallel``); unchanged
    when there is none.

    A memory state is per batch row: a row never needs another device's
    rows. Under model parallelism XLA would otherwise lay the state out
    like the hidden features (KerasHub's layouts shard the hidden axis).
    """
    distribution = keras.distribution.distribution()
    if distribution is None:
        return state

    def shard(x):
        layout = distribution.get_data_layout(tuple(x.shape))
        return keras.distribution.distribute_tensor(x, layout)

    return keras.tree.map_structure(shard, state)
