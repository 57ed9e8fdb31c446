"""An optimizer with its own learning rate for the long-term memories."""

import keras

from keras_infmemory.layers.continuous_ltm import ContinuousLTM


@keras.saving.register_keras_serializable(package="keras_infmemory")
class MemoryAdamW(keras.optimizers.AdamW):
    """AdamW with its own learning rate and no weight decay for the LTMs.

    The paper's GPT-2 fine-tuning (docs/math.md §7): the host model's
    weights at ``learning_rate`` with weight decay, the `ContinuousLTM`
    weights at ``memory_learning_rate`` without; both follow the same
    schedule (the memory's rate is ``learning_rate(step) ·
    memory_learning_rate / learning_rate(0)``). It serves any model with
    an LTM (`InfFormerLM`, the KerasHub models with memory): LTM weights
    are recognised by name (`ContinuousLTM.WEIGHT_NAMES`).

    Example:

    >>> from keras_infmemory.optimizers import MemoryAdamW
    >>> optimizer = MemoryAdamW(
    ...     learning_rate=5e-5, memory_learning_rate=2.5e-4, clipnorm=1.0
    ... )

    Args:
        learning_rate: float or schedule, the host model's learning rate.
        memory_learning_rate: float > 0, the LTM learning rate at step 0.
        weight_decay: float, for the host model's weights only.
        memory_variable_names: names of the LTM weights.
        **kwargs: `keras.optimizers.AdamW` arguments (``clipnorm``, …).
    """

    def __init__(
        self,
        learning_rate=5e-5,
        memory_learning_rate=2.5e-4,
        weight_decay=0.01,
        memory_variable_names=ContinuousLTM.WEIGHT_NAMES,
        **kwargs,
    ):
        super().__init__(
            learning_rate=learning_rate, weight_decay=weight_decay, **kwargs
        )
        if float(memory_learning_rate) <= 0:
            raise ValueError(
                "`memory_learning_rate` must be > 0. "
                f"Received: memory_learning_rate={memory_learning_rate}"
            )
        self.memory_learning_rate = float(memory_learning_rate)
        self.memory_variable_names = tuple(memory_variable_names)
        initial = learning_rate
        if isinstance(initial, keras.optimizers.schedules.LearningRateSchedule):
            initial = float(keras.ops.convert_to_numpy(initial(0)))
        self._memory_ratio = self.memory_learning_rate / float(initial)
        # TensorFlow hands tf.Variables ("scope/key_kernel:0") to the update.
        self.exclude_from_weight_decay(
            var_names=[f"(^|/){n}(:\\d+)?$" for n in self.memory_variable_names]
        )

    def is_memory_variable(self, variable):
        """Whether ``variable`` is an LTM weight (by name)."""
        name = variable.name.split("/")[-1].split(":")[0]
        return name in self.memory_variable_names

    def update_step(self, gradient, variable, learning_rate):
        if self.is_memory_variable(variable):
            learning_rate = learning_rate * self._memory_ratio
        super().update_step(gradient, variable, learning_rate)

    def get_config(self):
        config = super().get_config()
        config["memory_learning_rate"] = self.memory_learning_rate
        config["memory_variable_names"] = list(self.memory_variable_names)
        return config
