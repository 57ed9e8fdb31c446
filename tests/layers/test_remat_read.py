"""ContinuousLTM's ``remat_read``: the read's expectation ``r`` recomputed
in the backward pass instead of kept, the same numbers either way."""

import keras
import numpy as np
import pytest

import keras_infmemory as ki
from tests.testing import tiny_inf_former_lm, to_numpy, variable_grads

GEOMETRY = dict(num_basis=16, num_samples=8, basis_widths=(0.05, 0.1))


def layer(**overrides):
    return ki.ContinuousLTM(num_heads=2, key_dim=4, **GEOMETRY, **overrides)


def test_outputs_and_gradients_do_not_depend_on_it():
    """A write then a read, recomputed and kept: the same output and the
    same gradient for every weight (the read's and the write's gate)."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 12, 8)).astype("float32")
    q = rng.normal(size=(2, 5, 2, 4)).astype("float32")
    weights = keras.ops.convert_to_tensor(
        rng.normal(size=(2, 5, 8)).astype("float32")
    )
    results = []
    reference = None
    for remat in (False, True):
        ltm = layer(remat_read=remat)
        if reference is None:
            reference = ltm.get_weights()
        ltm.set_weights(reference)
        state = ltm.write(x, ltm.get_initial_state(2))

        def loss(ltm=ltm, state=state):
            output, _ = ltm(q, x, state)
            return keras.ops.sum(output * weights)

        grads = variable_grads(loss, ltm.trainable_variables)
        results.append((to_numpy(ltm(q, x, state)[0]), grads))
    (kept, kept_grads), (recomputed, recomputed_grads) = results
    np.testing.assert_allclose(recomputed, kept, rtol=1e-6, atol=1e-7)
    assert len(kept_grads) == len(recomputed_grads) == 7
    for grad, want in zip(recomputed_grads, kept_grads, strict=True):
        want = to_numpy(want)
        assert np.any(want != 0)
        np.testing.assert_allclose(to_numpy(grad), want, rtol=1e-5, atol=1e-7)


def test_a_compiled_training_step_is_the_same():
    """Inside the model's compiled segment loop (jax.jit, tf.function with
    XLA; torch eager) a training step recomputing the read takes the same
    step as one keeping it."""
    tokens = np.random.default_rng(1).integers(1, 10, (2, 13))
    x, y = tokens[:, :-1], tokens[:, 1:]
    losses, weights = [], []
    initial = None
    for remat in (False, True):
        keras.utils.set_random_seed(0)
        model = tiny_inf_former_lm({**GEOMETRY, "remat_read": remat})
        model.compile(
            optimizer=keras.optimizers.SGD(0.1),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        )
        model(x)
        if initial is None:
            initial = model.get_weights()
        model.set_weights(initial)
        assert model.blocks[0].ltm.remat_read is remat
        losses.append([float(model.train_on_batch(x, y)) for _ in range(2)])
        weights.append(model.get_weights())
    np.testing.assert_allclose(losses[1], losses[0], rtol=1e-5)
    assert losses[0][1] != losses[0][0]  # the step moved the weights
    for got, want in zip(weights[1], weights[0], strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)


def test_config_round_trip():
    ltm = layer(remat_read=True)
    config = ltm.get_config()
    assert config["remat_read"] is True
    assert ki.ContinuousLTM.from_config(config).remat_read is True
    assert layer().get_config()["remat_read"] is False


@pytest.mark.parametrize("value", ["yes", 1, 0.0, None])
def test_bad_values(value):
    with pytest.raises(ValueError, match="Received: remat_read="):
        layer(remat_read=value)
