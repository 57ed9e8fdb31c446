"""InfFormerLM training steps on one device and data-parallel on several.

``XLA_FLAGS=--xla_force_host_platform_device_count=4 KERAS_BACKEND=jax
python -m tests.data_parallel_case OUT.npz`` (JAX only) trains the same
∞-former LM (memory arm, two segments per sequence) for a few
``train_on_batch`` steps twice in one process: with no distribution (one
device) and under `keras_infmemory.distribution.data_parallel`, and streams
one batch with an explicit state under the distribution. It writes the
losses, the final weights and how the returned memory state is laid out.
"""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402

from keras_infmemory.distribution import data_parallel  # noqa: E402
from keras_infmemory.models import InfFormerLM  # noqa: E402

BATCH, SEGMENT, STEPS, VOCAB = 8, 8, 2, 16


def make_model():
    keras.utils.set_random_seed(7)
    model = InfFormerLM.arm(
        "inf_former",
        vocabulary_size=VOCAB,
        num_layers=1,
        hidden_dim=16,
        num_heads=2,
        intermediate_dim=32,
        segment_length=SEGMENT,
        memory_options={
            "num_basis": 16,
            "num_samples": 16,
            "basis_widths": (0.05, 0.1),
        },
    )
    model.build((BATCH, 2 * SEGMENT))
    return model


def train(model, weights, batches):
    model.set_weights(weights)
    model.compile(
        optimizer=keras.optimizers.Adam(1e-2),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    losses = [float(model.train_on_batch(x, y)) for x, y in batches]
    return np.array(losses), [np.asarray(w) for w in model.get_weights()]


def compute(num_devices):
    rng = np.random.default_rng(3)
    batches = []
    for _ in range(STEPS):
        tokens = rng.integers(0, VOCAB, (BATCH, 2 * SEGMENT + 1), "int32")
        batches.append((tokens[:, :-1], tokens[:, 1:]))

    keras.distribution.set_distribution(None)
    single = make_model()
    initial = [np.asarray(w) for w in single.get_weights()]
    single_losses, single_weights = train(single, initial, batches)

    distribution = data_parallel(num_devices)
    parallel = make_model()
    parallel_losses, parallel_weights = train(parallel, initial, batches)

    # Streaming with an explicit state under the distribution: the batch is
    # laid out over the devices and the returned state follows it.
    import jax

    tokens = batches[0][0][:, :SEGMENT]
    layout = distribution.get_data_layout(tokens.shape)
    tokens = keras.distribution.distribute_tensor(tokens, layout)
    state = parallel.get_initial_state(BATCH)

    @jax.jit
    def step(trainable, fixed, tokens, state):
        (logits, state), _ = parallel.stateless_call(
            trainable, fixed, tokens, state
        )
        return logits, state

    trainable = [v.value for v in parallel.trainable_variables]
    fixed = [v.value for v in parallel.non_trainable_variables]
    for _ in range(3):
        _, state = step(trainable, fixed, tokens, state)
    coefficients = state[0]["ltm"]["memory"]["coefficients"]  # (B, N, e)
    rows = sorted(
        {shard.data.shape[0] for shard in coefficients.addressable_shards}
    )
    devices = len(coefficients.sharding.device_set)
    keras.distribution.set_distribution(None)
    return {
        "num_devices": np.array(len(distribution.device_mesh.devices.ravel())),
        "single_losses": single_losses,
        "parallel_losses": parallel_losses,
        "max_weight_difference": np.array(
            max(
                float(np.max(np.abs(a - b)))
                for a, b in zip(single_weights, parallel_weights, strict=True)
            )
        ),
        "max_weight_change": np.array(
            max(
                float(np.max(np.abs(a - b)))
                for a, b in zip(single_weights, initial, strict=True)
            )
        ),
        "state_devices": np.array(devices),
        "state_rows_per_device": np.array(rows),
        "state_spec": np.array(str(coefficients.sharding.spec)),
    }


if __name__ == "__main__":
    np.savez(sys.argv[1], **compute(int(sys.argv[2])))
