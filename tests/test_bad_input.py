"""Every public entry point rejects bad input with a ValueError that names
the argument and echoes what it received; valid input of any shape never
errors and gives finite outputs (hypothesis)."""

import keras
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import keras_infmemory as ki
from keras_infmemory import checkpoint, validation
from keras_infmemory.models import InfFormerLM
from tests.testing import to_numpy

E, H, D = 8, 2, 4  # memory width, heads, key_dim


def ltm(**kwargs):
    return ki.ContinuousLTM(
        H, D, num_basis=16, num_samples=8, basis_widths=(0.05, 0.1), **kwargs
    )


def block(**kwargs):
    layer = ki.InfFormerBlock(
        num_heads=H, intermediate_dim=16, stm_length=4, ltm=ltm(), **kwargs
    )
    layer.build((None, None, E))
    return layer


def lm(**kwargs):
    arguments = dict(
        vocabulary_size=10,
        num_layers=1,
        hidden_dim=E,
        num_heads=H,
        intermediate_dim=16,
        segment_length=4,
        memory_options={"num_basis": 16, "num_samples": 8},
    )
    arguments.update(kwargs)
    return InfFormerLM(**arguments)


def f32(*shape, fill=None):
    x = np.random.default_rng(0).normal(size=shape).astype("float32")
    if fill is not None:
        x.flat[0] = fill
    return x


@pytest.fixture
def value_checks():
    """NaN/inf checks are a debug switch (off by default): on for a test."""
    previous = validation.set_value_checks(True)
    yield
    validation.set_value_checks(previous)


def test_value_checks_are_off_by_default_and_switchable():
    """By default no check reads tensor values (no host copy per layer and
    segment); the switch turns the NaN checks on."""
    assert not validation.value_checks_enabled()
    layer = ltm()
    bad = f32(2, 6, E, fill=np.nan)
    layer.write(bad, layer.get_initial_state(2))  # no error, no copy
    previous = validation.set_value_checks(True)
    try:
        with pytest.raises(ValueError, match="memory_input` must be finite"):
            layer.write(bad, layer.get_initial_state(2))
    finally:
        validation.set_value_checks(previous)
    with pytest.raises(ValueError, match="enabled=1"):
        validation.set_value_checks(1)


# ---------------------------------------------------------------------- #
# Shared checks
# ---------------------------------------------------------------------- #


@pytest.mark.parametrize("value", [np.int64(3), np.int32(1), 5])
def test_integers_of_any_kind_are_accepted(value):
    assert validation.check_int("n", value) == int(value)
    ltm_layer = ki.ContinuousLTM(value, value)
    assert ltm_layer.memory_dim == int(value) ** 2
    ki.InfFormerBlock(num_heads=value, intermediate_dim=value)
    ki.StickyMemorySampler(num_bins=value)


@pytest.mark.parametrize("value", [True, 2.0, "2", None, 0, -1])
def test_non_integers_are_rejected_everywhere(value):
    for build in (
        lambda: ki.ContinuousLTM(value, 4),
        lambda: ki.InfFormerBlock(num_heads=value, intermediate_dim=8),
        lambda: ki.StickyMemorySampler(num_bins=value),
        lambda: lm(num_heads=value),
    ):
        with pytest.raises(ValueError, match="Received: num_"):
            build()


# ---------------------------------------------------------------------- #
# ContinuousLTM
# ---------------------------------------------------------------------- #


def test_ltm_rejects_bad_calls(value_checks):
    layer = ltm()
    state = layer.get_initial_state(2)
    x, q = f32(2, 6, E), f32(2, 3, H, D)
    cases = [
        (lambda: layer.write(x[0], state), r"memory_input.shape=\(6, 8\)"),
        (lambda: layer.write(x[:, :0], state), r"shape=\(2, 0, 8\)"),
        (lambda: layer.write(f32(3, 6, E), state), r"memory_input.shape=\(3,"),
        (
            lambda: layer.write(f32(2, 6, E, fill=np.nan), state),
            "Received: memory_input with shape",
        ),
        (lambda: layer.read(q[:, :0], state), r"query.shape=\(2, 0, 2, 4\)"),
        (lambda: layer.read(f32(1, 3, H, D), state), r"query.shape=\(1,"),
        (
            lambda: layer.read(f32(2, 3, H, D, fill=np.inf), state),
            "Received: query with shape",
        ),
        (
            lambda: layer.read(q, state, query_mask=np.ones((2, 4), bool)),
            "query_mask.shape",
        ),
        (lambda: layer.density(q[..., :2], state), "query.shape"),
        (lambda: layer(q, x[:, :0], state), "memory_input.shape"),
        (
            lambda: layer.reset_rows(state, np.ones((3,), bool)),
            r"reset_mask.shape=\(3,\)",
        ),
        (lambda: layer.get_initial_state(0), "batch_size=0"),
        (lambda: layer.get_initial_state(2.5), "batch_size=2.5"),
        (
            lambda: layer.write(
                x, dict(state, has_memory=np.zeros((3,), bool))
            ),
            r"state\['has_memory'\].shape=\(3,\)",
        ),
    ]
    for call, message in cases:
        with pytest.raises(ValueError, match=message):
            call()


def test_sticky_sampler_rejects_bad_calls(value_checks):
    sampler = ki.StickyMemorySampler(num_bins=8, mode="quantile")
    mu, variance = f32(2, 5), np.full((2, 5), 1e-3, "float32")
    with pytest.raises(ValueError, match=r"mu.shape=\(5,\)"):
        sampler.histogram(mu[0], variance)
    with pytest.raises(ValueError, match=r"variance.shape=\(2, 4\)"):
        sampler.histogram(mu, variance[:, :4])
    with pytest.raises(ValueError, match=r"mask.shape=\(2, 3\)"):
        sampler.histogram(mu, variance, mask=np.ones((2, 3), bool))
    with pytest.raises(ValueError, match="Received: mu with shape"):
        sampler.histogram(f32(2, 5, fill=np.nan), variance)
    with pytest.raises(ValueError, match=r"histogram.shape=\(2, 7\)"):
        sampler.sample_positions(np.full((2, 7), 1 / 7, "float32"), 4)
    with pytest.raises(ValueError, match="num_samples=0"):
        sampler.sample_positions(np.full((2, 8), 1 / 8, "float32"), 0)
    with pytest.raises(ValueError, match="seed='x'"):
        ki.StickyMemorySampler(seed="x")


# ---------------------------------------------------------------------- #
# InfFormerBlock
# ---------------------------------------------------------------------- #


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"stm_length": -4}, "stm_length=-4"),
        ({"stm_length": 4.0}, "stm_length=4.0"),
        ({"dropout": 1.0}, "dropout=1.0"),
        ({"dropout": "a"}, "dropout='a'"),
        ({"layer_norm_epsilon": 0.0}, "layer_norm_epsilon=0.0"),
        ({"segment_length": np.int64(0)}, "segment_length=0"),
    ],
)
def test_block_rejects_bad_configs(kwargs, message):
    arguments = dict(num_heads=H, intermediate_dim=8)
    arguments.update(kwargs)
    with pytest.raises(ValueError, match=message):
        ki.InfFormerBlock(**arguments)


def test_block_rejects_bad_calls(value_checks):
    layer = block()
    state = layer.get_initial_state(2)
    x = f32(2, 4, E)
    cases = [
        (lambda: layer(x[:, :0]), r"inputs.shape=\(2, 0, 8\)"),
        (lambda: layer(f32(2, 4, 6)), r"input_shape=\(2, 4, 6\)|inputs.shape"),
        (lambda: layer(x[0]), r"shape=\(4, 8\)"),
        (lambda: layer(f32(3, 4, E), state), r"inputs.shape=\(3, 4, 8\)"),
        (lambda: layer(f32(2, 4, E, fill=np.nan)), "Received: inputs with"),
        (
            lambda: layer(x, state, padding_mask=np.ones((2, 3), bool)),
            "padding_mask.shape",
        ),
        (
            lambda: layer(x, state, reset_mask=np.ones((3,), bool)),
            r"reset_mask.shape=\(3,\)",
        ),
        (
            lambda: layer(
                x, dict(state, stm=dict(state["stm"], inputs=f32(2, 8, E)))
            ),
            r"state\['stm'\]\['inputs'\].shape=\(2, 8, 8\)",
        ),
        (lambda: layer.get_initial_state(-1), "batch_size=-1"),
    ]
    for call, message in cases:
        with pytest.raises(ValueError, match=message):
            call()


# ---------------------------------------------------------------------- #
# InfFormerLM
# ---------------------------------------------------------------------- #


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"vocabulary_size": np.int64(0)}, "vocabulary_size=0"),
        ({"intermediate_dim": 0}, "intermediate_dim=0"),
        ({"stm_length": -1}, "stm_length=-1"),
        ({"dropout": -0.1}, "dropout=-0.1"),
        ({"stateful": "yes"}, "stateful='yes'"),
        ({"batch_size": True}, "batch_size=True"),
    ],
)
def test_lm_rejects_bad_configs(kwargs, message):
    with pytest.raises(ValueError, match=message):
        lm(**kwargs)


def test_lm_accepts_numpy_integers():
    model = lm(num_layers=np.int64(1), segment_length=np.int32(4))
    assert model(np.zeros((1, 8), "int32")).shape == (1, 8, 10)


def test_lm_rejects_bad_calls():
    model = lm()
    state = model.get_initial_state(2)
    tokens = np.ones((2, 8), "int32")
    cases = [
        (lambda: model(tokens[:, :0]), r"token_ids.shape=\(2, 0\)"),
        (lambda: model(tokens[0]), r"token_ids.shape=\(8,\)"),
        (lambda: model(tokens + 20), r"token_ids with values in \[21, 21\]"),
        (lambda: model(tokens - 2), "vocabulary_size=10"),
        (lambda: model(tokens.astype("float32")), "token_ids.dtype=float32"),
        (lambda: model(tokens[:1], state), r"token_ids.shape=\(1, 8\)"),
        (lambda: model(tokens, state[0]), "state of type dict"),
        (
            lambda: model(tokens, state, reset_mask=np.ones((3,), bool)),
            r"reset_mask.shape=\(3,\)",
        ),
        (
            lambda: model(tokens, padding_mask=np.ones((2, 7), bool)),
            r"padding_mask.shape=\(2, 7\)",
        ),
        (  # left padding: the real tokens' segments would shift
            lambda: model(tokens, padding_mask=np.arange(8) >= np.ones((2, 1))),
            r"real tokens first.*rows \[0, 1\]",
        ),
    ]
    for call, message in cases:
        with pytest.raises(ValueError, match=message):
            call()


def test_stateful_lm_rejects_another_batch_size():
    model = lm(stateful=True, batch_size=2)
    model(np.ones((2, 4), "int32"))
    with pytest.raises(ValueError, match=r"token_ids.shape=\(3, 4\)"):
        model(np.ones((3, 4), "int32"))
    with pytest.raises(ValueError, match=r"reset_mask.shape=\(3,\)"):
        model.reset_state(np.ones((3,), bool))


# ---------------------------------------------------------------------- #
# Token ids in the data fit / evaluate / predict are given
# ---------------------------------------------------------------------- #

# Compiled (JAX, TensorFlow), a call cannot read its inputs' values: before
# the host checks, JAX trained on NaN (an id outside the vocabulary embeds
# as NaN) and TensorFlow failed inside a gather.
OUT_OF_RANGE = (
    r"must be in \[0, vocabulary_size=10\).*"
    r"Received: token_ids with values in \[\d+, 12\] in rows \[2\]"
)


def lm_data(bad_row=None, rows=4):
    tokens = np.random.default_rng(0).integers(0, 10, (rows, 9))
    if bad_row is not None:
        tokens[bad_row, 5] = 12
    tokens = tokens.astype("int32")
    return tokens[:, :-1], tokens[:, 1:]


@pytest.fixture(scope="module")
def compiled_lm():
    model = lm()
    model.compile(
        optimizer="adam",
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    return model


class Batches(keras.utils.PyDataset):
    """Fixed batches; counts the epochs it was told about."""

    def __init__(self, batches):
        super().__init__()
        self.batches = batches
        self.epochs_ended = 0

    def __len__(self):
        return len(self.batches)

    def __getitem__(self, index):
        return self.batches[index]

    def on_epoch_end(self):
        self.epochs_ended += 1


def test_lm_checks_the_token_ids_of_its_data(compiled_lm):
    model = compiled_lm
    x, y = lm_data(bad_row=2)
    good_x, good_y = lm_data()
    cases = [
        lambda: model.fit(x, y, batch_size=2, verbose=0),
        lambda: model.fit({"token_ids": x}, y, batch_size=2, verbose=0),
        lambda: model.fit(x.tolist(), y, batch_size=2, verbose=0),
        lambda: model.fit(
            good_x, good_y, validation_data=(x, y), batch_size=2, verbose=0
        ),
        lambda: model.evaluate(x, y, batch_size=2, verbose=0),
        lambda: model.predict(x, batch_size=2, verbose=0),
        lambda: model.train_on_batch(x, y),
        lambda: model.test_on_batch(x, y),
        lambda: model.predict_on_batch(x),
    ]
    for call in cases:
        with pytest.raises(ValueError, match=OUT_OF_RANGE):
            call()
    negative = np.where(x == 12, -3, x)
    with pytest.raises(ValueError, match=r"values in \[-3, \d+\] in rows"):
        model.predict(negative, verbose=0)


def test_lm_checks_each_batch_of_a_dataset(compiled_lm):
    """A PyDataset or a generator is checked batch by batch as Keras reads
    it (NumPy batches, on the host); the batch is named. A refused batch
    leaves the model usable (on JAX, Keras holds the variables outside the
    model while fit or predict runs)."""
    model = compiled_lm
    good, bad = lm_data(rows=2), lm_data(bad_row=0, rows=2)
    with pytest.raises(ValueError, match=r"\(batch 1 of the PyDataset\)"):
        model.fit(Batches([good, bad]), verbose=0)
    with pytest.raises(ValueError, match=r"\(batch 1 of the generator\)"):
        model.fit((batch for batch in (good, bad)), verbose=0)
    first = r"batch 0 of the PyDataset.*rows \[0\]"
    with pytest.raises(ValueError, match=first):
        model.predict(Batches([bad[:1]]), verbose=0)
    logits = to_numpy(model.predict_on_batch(good[0]))
    assert np.all(np.isfinite(logits))


def test_checked_datasets_train_as_given(compiled_lm):
    """No false alarm, and the wrapped PyDataset is the user's: its length
    and its epoch hooks are kept."""
    model = compiled_lm
    data = Batches([lm_data(rows=2), lm_data(rows=2)])
    history = model.fit(
        data, epochs=2, validation_data=lm_data(rows=2), verbose=0
    )
    assert data.epochs_ended >= 2  # Keras' calls, passed on (3 in 3.15)
    assert len(history.history["loss"]) == 2
    assert np.all(np.isfinite(history.history["val_loss"]))
    history = model.fit((b for b in [lm_data(rows=2)]), verbose=0)
    assert np.isfinite(history.history["loss"][0])


def test_lm_checks_the_batches_of_a_grain_dataset(compiled_lm):
    grain = pytest.importorskip("grain")
    good, bad = lm_data(rows=2), lm_data(bad_row=1, rows=2)
    data = grain.MapDataset.source([good, bad])
    with pytest.raises(ValueError, match=r"grain dataset.*rows \[1\]"):
        compiled_lm.fit(data, verbose=0)


def test_checkpoint_rejects_bad_input(tmp_path):
    with pytest.raises(ValueError, match="Received: state=3"):
        checkpoint.save_state(str(tmp_path / "a.npz"), 3)
    with pytest.raises(ValueError, match="Received: path=None"):
        checkpoint.load_state(None)


# ---------------------------------------------------------------------- #
# Valid inputs never error (hypothesis)
# ---------------------------------------------------------------------- #


@settings(
    max_examples=2,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(
    heads=st.integers(1, 2),
    head_size=st.sampled_from([2, 4]),
    stm_segments=st.integers(0, 2),
    segment_length=st.integers(1, 5),
    num_segments=st.integers(1, 3),
    batch=st.integers(1, 2),
    sticky=st.booleans(),
    normalize_first=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_valid_lm_inputs_give_finite_outputs(
    heads,
    head_size,
    stm_segments,
    segment_length,
    num_segments,
    batch,
    sticky,
    normalize_first,
    seed,
):
    model = InfFormerLM.arm(
        "sticky" if sticky else "inf_former",
        vocabulary_size=7,
        num_layers=1,
        hidden_dim=heads * head_size,
        num_heads=heads,
        intermediate_dim=8,
        segment_length=segment_length,
        memory_options={"num_basis": 8, "num_samples": 6},
        normalize_first=normalize_first,
    )
    # arm() fixes the STM to one segment; vary it through a direct build.
    if stm_segments != 1:
        config = model.get_config()
        config["stm_length"] = stm_segments * segment_length
        model = InfFormerLM.from_config(config)
    rng = np.random.default_rng(seed)
    length = segment_length * num_segments - int(rng.integers(0, 2))
    length = max(length, 1)
    tokens = rng.integers(0, 7, (batch, length)).astype("int32")
    logits = to_numpy(model(tokens))
    assert logits.shape == (batch, length, 7)
    assert np.all(np.isfinite(logits))
    state = model.get_initial_state(batch)
    logits, state = model(tokens[:, :segment_length], state)
    assert np.all(np.isfinite(to_numpy(logits)))
    for block_state in state:
        coefficients = to_numpy(block_state["ltm"]["memory"]["coefficients"])
        assert np.all(np.isfinite(coefficients))


def test_symbolic_calls_skip_value_checks():
    """Keras functional models trace with unknown values: the checks that
    need values must not fire (nor fail) there."""
    inputs = keras.Input((8,), dtype="int32")
    outputs = lm()(inputs)
    model = keras.Model(inputs, outputs)
    assert model(np.zeros((1, 8), "int32")).shape == (1, 8, 10)
