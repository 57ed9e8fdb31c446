"""InfFormerLM: whole sequence = streaming, stateful, fit, gradients, I/O."""

import keras
import numpy as np
import pytest

from keras_infmemory import InfFormerBlock
from keras_infmemory.models import ARMS, InfFormerLM
from tests.testing import keras_hub_checks, to_numpy

VOCAB, SEGMENT = 10, 8
LTM_CONFIG = {
    "num_basis": 16,
    "num_samples": 16,
    "basis_widths": (0.05, 0.1),
}


def make_model(arm="inf_former", **kwargs):
    arguments = dict(
        vocabulary_size=VOCAB,
        num_layers=2,
        hidden_dim=16,
        num_heads=2,
        intermediate_dim=32,
        segment_length=SEGMENT,
        memory_options=LTM_CONFIG,
    )
    arguments.update(kwargs)
    return InfFormerLM.arm(arm, **arguments)


def random_tokens(batch=2, length=4 * SEGMENT, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(1, VOCAB, size=(batch, length)).astype("int32")


def stream(model, tokens, state=None):
    if state is None:
        state = model.get_initial_state(tokens.shape[0])
    outputs = []
    for s in range(tokens.shape[1] // SEGMENT):
        logits, state = model(tokens[:, s * SEGMENT : (s + 1) * SEGMENT], state)
        outputs.append(to_numpy(logits))
    return np.concatenate(outputs, axis=1), state


@pytest.mark.parametrize("arm", ARMS)
def test_whole_sequence_equals_streaming(arm):
    model = make_model(arm)
    tokens = random_tokens()
    whole = to_numpy(model(tokens))
    streamed, _ = stream(model, tokens)
    assert whole.shape == (2, 4 * SEGMENT, VOCAB)
    np.testing.assert_allclose(whole, streamed, atol=1e-5)


def test_scan_equals_python_loop():
    scan = make_model("sticky", dropout=0.2, segment_loop="scan")
    loop = make_model("sticky", dropout=0.2)
    tokens = random_tokens()
    scan.build(tokens.shape)
    loop.build(tokens.shape)
    copy_weights(scan, loop)
    np.testing.assert_allclose(
        to_numpy(scan(tokens)), to_numpy(loop(tokens)), atol=1e-5
    )
    # The KL terms of every LTM read reach `losses` either way.
    scan_kl = sum(float(to_numpy(x)) for x in scan.losses)
    loop_kl = sum(float(to_numpy(x)) for x in loop.losses)
    assert scan_kl > 0
    np.testing.assert_allclose(scan_kl, loop_kl, rtol=1e-4)
    # Dropout seeds advance through the scan: two calls differ.
    first = to_numpy(scan(tokens, training=True))
    second = to_numpy(scan(tokens, training=True))
    assert np.max(np.abs(first - second)) > 1e-3


def test_arms_are_configurations():
    window, xl = make_model("window"), make_model("transformer_xl")
    inf, sticky = make_model("inf_former"), make_model("sticky")
    assert window.blocks[0].stm_length == 0 and window.blocks[0].ltm is None
    assert xl.blocks[0].stm_length == SEGMENT and xl.blocks[0].ltm is None
    assert inf.blocks[1].ltm is not None and inf.blocks[1].ltm.sticky is None
    assert sticky.blocks[1].ltm.sticky.mode == "quantile"
    # Each block owns its memory.
    assert sticky.blocks[0].ltm is not sticky.blocks[1].ltm
    compressive = make_model("compressive")
    block = compressive.blocks[1]
    assert block.ltm is None and block.stm_length == SEGMENT
    assert block.compressor.compression_rate == 4
    assert block.compressor.memory_length == SEGMENT
    assert block.compressor is not compressive.blocks[0].compressor
    assert xl.blocks[0].compressor is None


def test_causal():
    model = make_model()
    tokens = random_tokens()
    base = to_numpy(model(tokens))
    changed = tokens.copy()
    changed[:, 2 * SEGMENT + 3] = (changed[:, 2 * SEGMENT + 3] % 9) + 1
    out = to_numpy(model(changed))
    t = 2 * SEGMENT + 3
    np.testing.assert_allclose(out[:, :t], base[:, :t], atol=1e-6)


def test_streaming_reset_and_padding_dict():
    model = make_model()
    tokens = random_tokens()
    _, state = stream(model, tokens)
    segment = tokens[:, :SEGMENT]
    reset = np.array([True, False])
    logits, _ = model(segment, state, reset_mask=reset)
    fresh, _ = model(segment[:1], model.get_initial_state(1))
    np.testing.assert_allclose(to_numpy(logits)[:1], to_numpy(fresh), atol=1e-5)
    mask = np.ones_like(tokens, bool)
    mask[:, -3:] = False
    by_dict = model({"token_ids": tokens, "padding_mask": mask})
    by_arg = model(tokens, padding_mask=mask)
    np.testing.assert_allclose(to_numpy(by_dict), to_numpy(by_arg))


@pytest.mark.parametrize("arm", ["inf_former", "sticky", "compressive"])
def test_padding_never_enters_the_memory(arm):
    """A partly padded segment in a stream: other ids under the padding
    change neither the next segment's logits nor the state."""
    model = make_model(arm)
    tokens = random_tokens(length=2 * SEGMENT)
    mask = np.ones_like(tokens, bool)
    mask[:, SEGMENT - 3 : SEGMENT] = False
    results = []
    for fill in (0, 7):
        ids = np.where(mask, tokens, fill).astype("int32")
        state = model.get_initial_state(2)
        for s in range(2):
            window = slice(s * SEGMENT, (s + 1) * SEGMENT)
            logits, state = model(
                ids[:, window], state, padding_mask=mask[:, window]
            )
        results.append((to_numpy(logits), keras.tree.flatten(state)))
    np.testing.assert_allclose(results[0][0], results[1][0], atol=1e-6)
    for a, b in zip(results[0][1], results[1][1], strict=True):
        np.testing.assert_allclose(to_numpy(a), to_numpy(b), atol=1e-6)


def test_stateful():
    model = make_model(stateful=True, batch_size=2)
    reference = make_model()
    tokens = random_tokens()
    reference.build(tokens.shape)
    model.build(tokens.shape)
    copy_weights(reference, model)
    whole = to_numpy(reference(tokens))
    first = to_numpy(model(tokens[:, :SEGMENT]))
    rest = to_numpy(model(tokens[:, SEGMENT:]))
    np.testing.assert_allclose(
        np.concatenate([first, rest], 1), whole, atol=1e-5
    )
    model.reset_state()
    again = to_numpy(model(tokens[:, :SEGMENT]))
    np.testing.assert_allclose(again, first, atol=1e-6)
    with pytest.raises(ValueError, match="state"):
        model(tokens, model.get_initial_state(2))


def copy_weights(source, target):
    for name in ("embedding", "final_norm", "head"):
        getattr(target, name).set_weights(getattr(source, name).get_weights())
    for mine, theirs in zip(target.blocks, source.blocks, strict=True):
        mine.set_weights(theirs.get_weights())


def copy_task(num_examples=32, seed=0):
    """Three repeats of a random segment; predict the next token."""
    rng = np.random.default_rng(seed)
    pattern = rng.integers(1, VOCAB, size=(num_examples, SEGMENT))
    sequence = np.tile(pattern, (1, 4))  # (B, 4L)
    return sequence[:, : 3 * SEGMENT], sequence[:, 1 : 3 * SEGMENT + 1]


@pytest.mark.parametrize("segment_loop", ["python", "scan"])
def test_fit_truncated_bptt_reaches_ltm(segment_loop):
    model = make_model(bptt_segments=1, segment_loop=segment_loop)
    x, y = copy_task()
    model.compile(
        optimizer=keras.optimizers.Adam(1e-2),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    model.build(x.shape)
    ltm = model.blocks[0].ltm
    before = {w.path: to_numpy(w) for w in ltm.trainable_weights}
    history = model.fit(x, y, batch_size=8, epochs=4, verbose=0)
    losses = history.history["loss"]
    assert losses[-1] < losses[0] - 0.1, losses
    for w in ltm.trainable_weights:
        assert np.max(np.abs(to_numpy(w) - before[w.path])) > 0, w.path


def gradients(loss_fn, variables):
    """d loss / d variables on the current backend, as NumPy."""
    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        def f(values):
            mapping = list(zip(variables, values, strict=True))
            with keras.StatelessScope(state_mapping=mapping):
                return loss_fn()

        grads = jax.grad(f)([v.value for v in variables])
    elif backend == "tensorflow":
        import tensorflow as tf

        with tf.GradientTape() as tape:
            loss = loss_fn()
        grads = tape.gradient(loss, variables)
    else:
        import torch

        loss = loss_fn()
        grads = torch.autograd.grad(
            loss, [v.value for v in variables], allow_unused=True
        )
    return [
        np.zeros(v.shape) if g is None else to_numpy(g)
        for v, g in zip(variables, grads, strict=True)
    ]


def test_no_gradient_crosses_the_memory():
    model = make_model()
    # Token ids 1-3 only in segment 0, 4-6 only in 1, 7-9 only in 2.
    rng = np.random.default_rng(0)
    tokens = np.concatenate(
        [rng.integers(1 + 3 * s, 4 + 3 * s, (2, SEGMENT)) for s in range(3)],
        axis=1,
    ).astype("int32")
    model.build(tokens.shape)
    ltm = model.blocks[0].ltm
    variables = [model.embedding.embeddings] + list(ltm.trainable_weights)

    def last_segment_loss():
        logits = model(tokens)
        return keras.ops.mean(keras.ops.square(logits[:, 2 * SEGMENT :]))

    grads = gradients(last_segment_loss, variables)
    embedding = np.abs(grads[0]).sum(axis=1)
    assert np.all(embedding[1:7] == 0.0), embedding  # segments 0 and 1
    assert np.all(embedding[7:] > 0.0), embedding
    # The LTM read segment 0 at segment 2: its parameters get gradients.
    for w, g in zip(ltm.trainable_weights, grads[1:], strict=True):
        assert np.max(np.abs(g)) > 0, w.path

    model.bptt_segments = 1

    def all_segments_loss():
        return keras.ops.mean(keras.ops.square(model(tokens)))

    embedding = np.abs(gradients(all_segments_loss, variables[:1])[0])
    assert np.all(embedding.sum(axis=1)[1:7] == 0.0)


def test_sequential_composition_long_sequences():
    """Embedding → 2 blocks (sequence mode, scanned segments) → head trains
    with fit and equals the streaming model, segment by segment."""
    length, segment = 512, 128
    vocab, hidden = VOCAB, 16

    def block():
        from keras_infmemory import ContinuousLTM

        return InfFormerBlock(
            num_heads=2,
            intermediate_dim=32,
            stm_length=segment,
            ltm=ContinuousLTM(num_heads=2, key_dim=8, **LTM_CONFIG),
            normalize_first=True,
            segment_loop="scan",  # traced once inside `fit`
        )

    sequential = keras.Sequential(
        [
            keras.Input((length,), dtype="int32"),
            keras.layers.Embedding(vocab, hidden),
            block(),
            block(),
            keras.layers.LayerNormalization(epsilon=1e-5),
            keras.layers.Dense(vocab),
        ]
    )
    x = random_tokens(batch=2, length=length)
    y = np.roll(x, -1, axis=1)
    sequential.compile(
        optimizer="adam",
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    history = sequential.fit(x, y, batch_size=1, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])

    model = make_model(
        segment_length=segment, vocabulary_size=vocab, hidden_dim=hidden
    )
    model.build(x.shape)
    ours = [model.embedding, *model.blocks, model.final_norm, model.head]
    for mine, theirs in zip(ours, sequential.layers, strict=True):
        mine.set_weights(theirs.get_weights())
    expected = to_numpy(sequential(x))
    state = model.get_initial_state(2)
    outputs = []
    for s in range(length // segment):
        logits, state = model(x[:, s * segment : (s + 1) * segment], state)
        outputs.append(to_numpy(logits))
    np.testing.assert_allclose(np.concatenate(outputs, 1), expected, atol=1e-4)


@pytest.mark.parametrize("arm", ["sticky", "compressive"])
def test_save_and_load(arm):
    """KerasHub's checks: serialization round trips and a ``.keras`` file
    that loads back as an `InfFormerLM` with the same outputs."""
    model = make_model(arm, dropout=0.1)
    hub = keras_hub_checks()
    hub.run_serialization_test(model)
    hub.run_model_saving_test(
        InfFormerLM, model.get_config(), random_tokens(), atol=1e-6
    )


def test_mixed_precision():
    keras.config.set_dtype_policy("mixed_float16")
    model = make_model()
    tokens = random_tokens()
    logits = model(tokens)
    assert keras.backend.standardize_dtype(logits.dtype) == "float32"
    assert np.all(np.isfinite(to_numpy(logits)))
    state = model.get_initial_state(2)
    assert (
        keras.backend.standardize_dtype(state[0]["stm"]["inputs"].dtype)
        == "float16"
    )


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"num_layers": 0}, "num_layers=0"),
        ({"segment_length": -8}, "segment_length=-8"),
        ({"hidden_dim": 15}, "hidden_dim=15"),
        ({"bptt_segments": 0}, "bptt_segments=0"),
        ({"memory_options": {"key_dim": 4}}, "key_dim"),
        ({"memory_options": [1]}, "memory_options"),
        ({"stm_length": 12}, "stm_length=12"),
        ({"segment_loop": "while"}, "segment_loop='while'"),
        ({"compressive_options": [4]}, "compressive_options"),
        (
            {
                "compressive_options": {
                    "compression_rate": 3,
                    "memory_length": 4,
                }
            },
            "segment_length=8",
        ),
    ],
)
def test_bad_arguments(kwargs, message):
    arguments = dict(
        vocabulary_size=VOCAB,
        num_layers=2,
        hidden_dim=16,
        num_heads=2,
        intermediate_dim=32,
        segment_length=SEGMENT,
        memory_options=LTM_CONFIG,
    )
    arguments.update(kwargs)
    with pytest.raises(ValueError, match=message):
        InfFormerLM(**arguments)
    with pytest.raises(ValueError, match="arm"):
        InfFormerLM.arm("lstm", segment_length=8)


def test_compressive_fit_moves_every_weight():
    """The compressive arm with the reconstruction loss trains every weight
    (the compressor by that loss alone; without it, by the task loss: see
    tests/experiments/test_sorting.py)."""
    model = make_model(
        "compressive",
        num_layers=1,
        bptt_segments=1,
        compressive_options={"reconstruction_weight": 1.0},
    )
    x, y = copy_task(num_examples=8)
    model.compile(
        optimizer=keras.optimizers.Adam(1e-2),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    model.build(x.shape)
    before = {w.path: to_numpy(w) for w in model.trainable_weights}
    model.fit(x, y, batch_size=8, epochs=1, verbose=0)
    still = [
        w.path
        for w in model.trainable_weights
        if np.array_equal(to_numpy(w), before[w.path])
    ]
    assert not still, still
    assert any("compressor" in path for path in before)


def test_a_fresh_memory_skips_the_first_segment(monkeypatch):
    """A call without a state starts from empty memories: the first
    segment's write and read are skipped, with the logits and gradients of
    the full road (the same call given the initial state). The model passes
    ``starts_empty`` to its blocks; what a block does with it is tested per
    memory (uniform, sticky, no STM) in tests/layers/test_inf_former_block.py,
    so one arm checks the wiring here."""
    from tests.testing import fresh_road, variable_grads

    model = make_model("sticky")
    tokens = random_tokens(length=3 * SEGMENT + 2, seed=3)
    weights = np.random.default_rng(4).normal(size=(2, 3 * SEGMENT + 2, VOCAB))
    weights = weights.astype("float32")
    results = {}
    for road in ("skip", "full"):
        # Both roads take the short step when told the state starts
        # empty; the call decides.
        writes = fresh_road(monkeypatch, "skip")
        if road == "skip":
            call = lambda: model(tokens)  # noqa: E731
        else:
            call = lambda: model(  # noqa: E731
                tokens, model.get_initial_state(2)
            )[0]
        logits = to_numpy(call())
        grads = variable_grads(
            lambda call=call: keras.ops.sum(
                keras.ops.multiply(call(), weights)
            ),
            model.trainable_variables,
        )
        results[road] = (logits, [to_numpy(g) for g in grads])
        # Two blocks, four segments; with an STM the LTM's first write
        # comes at segment 2, but the step runs from segment 0 on.
        count = len(writes) // 2  # the call and the gradient's call
        assert count == (3 if road == "skip" else 4) * 2, (road, count)
    (logits, grads), (logits_full, grads_full) = results.values()
    np.testing.assert_array_equal(logits, logits_full)
    for got, expected in zip(grads, grads_full, strict=True):
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-7)
    with pytest.raises(ValueError, match="starts_empty"):
        model.blocks[0](
            np.zeros((2, SEGMENT, 16), "float32"),
            model.blocks[0].get_initial_state(2),
            starts_empty=1,
        )


@pytest.mark.parametrize("arm", ["inf_former", "sticky"])
def test_memory_densities(arm):
    """Where the reads look, by token: what the blocks' LTMs read in the
    same run as a call (same state after), with no loss added."""
    model = make_model(arm)
    tokens = random_tokens(length=3 * SEGMENT + 3, seed=7)
    initial = model.get_initial_state(2)
    densities, state = model.memory_densities(tokens, initial)
    assert not model.losses  # an inspection adds no KL term
    _, expected = model(tokens, initial)
    assert len(densities) == len(model.blocks)
    for density in densities:
        assert tuple(density["mu"].shape) == (2, 2, tokens.shape[1])
        assert tuple(density["variance"].shape) == (2, 2, tokens.shape[1])
        seen = to_numpy(density["has_memory"])
        # The STM holds one segment: the LTM has something from segment 2.
        assert not seen[:, : 2 * SEGMENT].any() and seen[:, 2 * SEGMENT :].all()
        mu = to_numpy(density["mu"])[:, :, 2 * SEGMENT :]
        assert np.all((mu > 0) & (mu < 1))
        assert np.all(to_numpy(density["variance"]) >= 0)
    for got, want in zip(
        keras.tree.flatten(state), keras.tree.flatten(expected), strict=True
    ):
        np.testing.assert_allclose(to_numpy(got), to_numpy(want), atol=1e-5)
