"""KerasHub models with memory under model parallelism, on several devices.

``XLA_FLAGS=--xla_force_host_platform_device_count=4 KERAS_BACKEND=jax
python -m tests.model_parallel_case OUT.npz FAMILY ...`` (JAX only) builds,
for each ``FAMILY``, a tiny causal LM with memory twice in one process, with
the
same weights: on one device, and under `keras.distribution.ModelParallel`
with the family's KerasHub layout map plus the LTM layout of
`InfMemoryBackbone.get_layout_map` on a 2 × 2 (batch × model) mesh. It
writes both models' logits over three segments, how the LTM weights and
the memory state are laid out, and one training step's losses.
"""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402

from keras_infmemory.models import attach_memory  # noqa: E402
from tests.models.hub.tiny import VOCAB, tiny_causal_lm  # noqa: E402

SEGMENT, BATCH = 8, 4


def make_model(family):
    keras.utils.set_random_seed(5)
    return attach_memory(
        tiny_causal_lm(family),
        segment_length=SEGMENT,
        num_basis=16,
        num_samples=16,
        basis_widths=(0.05, 0.1),
    )


def run(model, x, y):
    # The forward passes are compiled, as a model-parallel model runs
    # (eagerly, JAX compiles each operation for each input layout: 10 s
    # per model, against 3 s for the whole forward); one program gives the
    # logits from no state and the state returned from an explicit one.
    import jax

    @jax.jit
    def forward(trainable, fixed, state):
        logits, _ = model.stateless_call(trainable, fixed, x)
        (_, state), _ = model.stateless_call(trainable, fixed, x, state=state)
        return logits, state

    def call():
        return forward(
            [v.value for v in model.trainable_variables],
            [v.value for v in model.non_trainable_variables],
            model.get_initial_state(BATCH),
        )

    logits, state = call()
    model.compile(
        optimizer=keras.optimizers.SGD(0.1),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    loss = float(model.train_on_batch(x, y, return_dict=True)["loss"])
    after, _ = call()
    return (
        keras.ops.convert_to_numpy(logits),
        state,
        loss,
        keras.ops.convert_to_numpy(after),
    )


def compute(family):
    rng = np.random.default_rng(0)
    ids = rng.integers(1, VOCAB, (BATCH, 3 * SEGMENT + 1)).astype("int32")
    x = {"token_ids": ids[:, :-1], "padding_mask": np.ones_like(ids[:, :-1])}
    y = ids[:, 1:]

    keras.distribution.set_distribution(None)
    single = make_model(family)
    weights = [np.asarray(w) for w in single.get_weights()]
    logits, _, loss, after = run(single, x, y)

    devices = keras.distribution.list_devices("cpu")
    mesh = keras.distribution.DeviceMesh(
        (2, 2), axis_names=("batch", "model"), devices=devices
    )
    backbone_cls = type(single.backbone)
    layout_map = backbone_cls.get_layout_map(mesh)
    keras.distribution.set_distribution(
        keras.distribution.ModelParallel(
            layout_map=layout_map, batch_dim_name="batch"
        )
    )
    parallel = make_model(family)
    parallel.set_weights(weights)
    key_kernel = parallel.backbone.memories[0].key_kernel.value
    p_logits, state, p_loss, p_after = run(parallel, x, y)
    coefficients = state[0]["memory"]["coefficients"]
    keras.distribution.set_distribution(None)
    return {
        "logits": logits,
        "parallel_logits": p_logits,
        "loss": np.array(loss),
        "parallel_loss": np.array(p_loss),
        "after": after,
        "parallel_after": p_after,
        "key_kernel_spec": np.array(str(key_kernel.sharding.spec)),
        "state_spec": np.array(str(coefficients.sharding.spec)),
        "state_devices": np.array(len(coefficients.sharding.device_set)),
    }


if __name__ == "__main__":
    results = {}
    for family in sys.argv[2:]:
        for key, value in compute(family).items():
            results[f"{family}/{key}"] = value
    np.savez(sys.argv[1], **results)
