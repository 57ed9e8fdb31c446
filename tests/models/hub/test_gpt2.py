"""GPT-2 with memory end to end: weights, text generation, fine-tuning with
two learning rates on documents in order, the stateful mode, score and the
options of attach_memory (the other families share this code)."""

import keras
import keras_hub
import numpy as np
import pytest

from keras_infmemory import StickyMemorySampler
from keras_infmemory.documents import DocumentBlocks
from keras_infmemory.models import InfMemoryCausalLM, attach_memory
from keras_infmemory.optimizers import MemoryAdamW
from tests.testing import to_numpy

L = 8
MEMORY = {"num_basis": 16, "num_samples": 16, "basis_widths": (0.05, 0.1)}
CHARS = "abcdefghijklmnopqrstuvwxyz"


def tiny_tokenizer():
    """A byte-level BPE vocabulary in GPT-2's layout: id 0 is an ordinary
    token ("!") and ``<|endoftext|>`` is the last id, so the end token is
    not the padding id 0 (as in the real GPT-2)."""
    vocab = {"!": 0}
    for token in list(CHARS) + ["Ġ" + c for c in CHARS] + ["Ġ", "."]:
        vocab[token] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    merges = ["Ġ " + c for c in CHARS]
    return keras_hub.models.GPT2Tokenizer(vocabulary=vocab, merges=merges)


@pytest.fixture(scope="module")
def gpt2():
    keras.utils.set_random_seed(0)
    tokenizer = tiny_tokenizer()
    backbone = keras_hub.models.GPT2Backbone(
        vocabulary_size=tokenizer.vocabulary_size(),
        num_layers=2,
        num_heads=2,
        hidden_dim=16,
        intermediate_dim=32,
        max_sequence_length=16,
    )
    preprocessor = keras_hub.models.GPT2CausalLMPreprocessor(
        tokenizer, sequence_length=32
    )
    return keras_hub.models.GPT2CausalLM(backbone, preprocessor)


@pytest.fixture(scope="module")
def model(gpt2):
    keras.utils.set_random_seed(1)
    return attach_memory(gpt2, segment_length=L, **MEMORY)


def tokens(length=3 * L, batch=2, seed=0):
    ids = np.random.default_rng(seed).integers(1, 54, size=(batch, length))
    ids = ids.astype("int32")
    return {"token_ids": ids, "padding_mask": np.ones_like(ids)}


def test_weights_are_gpt2s_plus_seven_per_memory(model, gpt2):
    assert len(model.backbone.weights) - len(gpt2.backbone.weights) == 2 * 7
    mine = {v.path: v for v in model.backbone.weights}
    for variable in gpt2.backbone.weights:
        np.testing.assert_array_equal(
            to_numpy(mine[variable.path]), to_numpy(variable)
        )
    assert model.backbone.memories[0].num_basis == 16
    assert model.preprocessor is gpt2.preprocessor


def test_generate_text_makes_new_tokens(model):
    """Strings through the preprocessor, as for GPT-2: real new tokens."""
    model.compile(sampler="greedy")
    prompt = "ab cd ef gh ij kl"
    text = model.generate(prompt, max_length=24, stop_token_ids=None)
    assert isinstance(text, str) and text.startswith(prompt)
    assert len(text) > len(prompt)


def test_generate_with_categorical_sticky_memories(gpt2):
    """A categorical sticky write draws random positions inside the
    prompt's and the decoding's conditional writes (`segments.apply_if`);
    a traced JAX loop cannot advance the seed generator, so `apply_if`
    carries it out (a `cond` without that raised JAX's
    UnexpectedTracerError before)."""
    keras.utils.set_random_seed(2)
    sticky = attach_memory(
        gpt2,
        segment_length=L,
        sticky=StickyMemorySampler(mode="categorical", seed=4),
        **MEMORY,
    )
    sticky.compile(sampler="greedy")
    prompt = tokens(2 * L + 3, batch=1, seed=5)
    # Room for 2 segments' worth of new tokens: decoding writes at 3L.
    room = {k: np.pad(v, ((0, 0), (0, L + 2))) for k, v in prompt.items()}
    preprocessor, sticky.preprocessor = sticky.preprocessor, None
    try:
        out = sticky.generate(room, stop_token_ids=None)
    finally:
        sticky.preprocessor = preprocessor
    out = to_numpy(out["token_ids"])
    n = prompt["token_ids"].shape[1]
    np.testing.assert_array_equal(out[:, :n], prompt["token_ids"])
    vocabulary = sticky.backbone.vocabulary_size
    assert out.shape == (1, n + L + 2) and np.all(out[:, n:] < vocabulary)


def test_absorbing_skips_the_layers_after_the_last_memory(gpt2, monkeypatch):
    """With a memory in the first layer only, absorbing never runs the
    second decoder layer; with sticky memories the last memory reads (its
    histogram sums the reads) and the layers run in full, as without any
    memory layer (a baseline). Either way the state is a call's."""
    x = tokens(3 * L, seed=9)
    for layers, sticky, second_runs in (
        ([0], None, False),
        (None, StickyMemorySampler(mode="quantile"), True),
        ([], None, True),
    ):
        keras.utils.set_random_seed(3)
        model = attach_memory(
            gpt2,
            segment_length=L,
            memory_layers=layers,
            sticky=sticky,
            **MEMORY,
        )
        _, expected = model(x, state=model.get_initial_state(2))
        second = model.backbone.transformer_layers[1]
        calls = []

        def counted(*args, calls=calls, original=second.call, **kwargs):
            calls.append(1)
            return original(*args, **kwargs)

        monkeypatch.setattr(second, "call", counted)
        state = model.absorb(x)
        assert bool(calls) == second_runs
        for a, b in zip(
            keras.tree.flatten(state),
            keras.tree.flatten(expected),
            strict=True,
        ):
            np.testing.assert_allclose(to_numpy(a), to_numpy(b), atol=1e-6)


def test_score_is_the_forward_pass(model):
    x = tokens()
    logits = to_numpy(model(x))
    np.testing.assert_allclose(
        to_numpy(model.score(x["token_ids"], x["padding_mask"])),
        logits,
        atol=1e-5,
    )
    targets = np.roll(x["token_ids"], -1, axis=1)
    loss = to_numpy(
        model.score(
            x["token_ids"],
            x["padding_mask"],
            scoring_mode="loss",
            target_ids=targets,
        )
    )
    shifted = logits - logits.max(-1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
    expected = -np.take_along_axis(log_probs, targets[..., None], -1)[..., 0]
    np.testing.assert_allclose(loss, expected, atol=1e-4)


def test_fit_two_learning_rates_on_documents_in_order(gpt2):
    """GPT-2 and LTM weights move by their own rates; the stateful memory
    is carried over the documents, in order, and reset where they start."""
    keras.utils.set_random_seed(2)
    model = attach_memory(
        gpt2, segment_length=L, stateful=True, batch_size=2, **MEMORY
    )
    model.preprocessor = None
    rng = np.random.default_rng(0)
    documents = [rng.integers(1, 54, size=n) for n in (30, 20, 12)]
    data = DocumentBlocks(documents, L, batch_size=2, start_token_id=55)
    x, y, w = data.arrays()
    lr, memory_lr = 1e-3, 1e-2
    model.compile(
        optimizer=MemoryAdamW(
            learning_rate=lr, memory_learning_rate=memory_lr, clipnorm=1.0
        ),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    # Fill the memory with the first block of each stream, then one Adam
    # step on the second: every weight moves by about its rate.
    model({k: v[:2] for k, v in x.items()})
    before = {v.path: to_numpy(v) for v in model.trainable_weights}
    model.fit(
        {k: v[2:4] for k, v in x.items()},
        y[2:4],
        sample_weight=w[2:4],
        batch_size=2,
        shuffle=False,
        verbose=0,
    )
    steps = {True: [], False: []}
    for v in model.trainable_weights:
        delta = np.abs(to_numpy(v) - before[v.path]).max()
        steps[model.optimizer.is_memory_variable(v)].append(delta)
    assert len(steps[True]) == 2 * 7
    np.testing.assert_allclose(max(steps[False]), lr, rtol=0.05)
    np.testing.assert_allclose(max(steps[True]), memory_lr, rtol=0.05)
    assert min(steps[True]) > 0  # every LTM weight gets a gradient
    # The whole epoch, blocks in order.
    model.reset_state()
    history = model.fit(
        x, y, sample_weight=w, batch_size=2, shuffle=False, verbose=0
    )
    assert np.isfinite(history.history["loss"]).all()
    memory = model._state_holder.read()[0]["memory"]
    assert to_numpy(memory["has_memory"]).all()


def test_stateful_equals_explicit_state(gpt2):
    """Consecutive stateful calls == calls with the state carried by hand
    (same weights), with a row reset where its document starts."""
    keras.utils.set_random_seed(3)
    stateful = attach_memory(
        gpt2, segment_length=L, stateful=True, batch_size=2, **MEMORY
    )
    explicit = attach_memory(stateful, stateful=False)  # weights copied
    x = tokens(3 * L, seed=5)
    state = explicit.get_initial_state(2)
    for s in range(3):
        block = {k: v[:, s * L : (s + 1) * L] for k, v in x.items()}
        reset = np.array([False, s == 2])
        expected, state = explicit(block, state=state, reset_mask=reset)
        got = stateful(dict(block, reset_mask=reset))
        np.testing.assert_allclose(to_numpy(got), to_numpy(expected), atol=1e-5)
    with pytest.raises(ValueError, match="batch size 3"):
        stateful(tokens(L, batch=3))


def test_attach_memory_options(gpt2):
    model = attach_memory(
        gpt2,
        segment_length=L,
        memory_layers=[1],
        sticky=StickyMemorySampler(mode="quantile"),
        **MEMORY,
    )
    assert model.backbone.memory_layers == [1]
    assert model.backbone.memories[0].sticky.mode == "quantile"
    x = tokens()
    _, state = model(x, state=model.get_initial_state(2))
    assert to_numpy(state[0]["memory"]["histogram"]).sum() > 0
    # Re-attaching keeps what is not given, replaces what is.
    again = attach_memory(model, tau=0.75)
    assert again.backbone.memory_layers == [1]
    assert again.backbone.memories[0].tau == 0.75
    assert again.backbone.memories[0].num_basis == 16
    with pytest.raises(ValueError, match="segment_length"):
        attach_memory(gpt2, segment_length=64)  # > max_sequence_length
    with pytest.raises(ValueError, match="memory_layers"):
        attach_memory(gpt2, memory_layers=[5])
    with pytest.raises(ValueError, match=r"Unknown memory options.*colour"):
        attach_memory(gpt2, colour="red")
    with pytest.raises(ValueError, match="backbone with memory"):
        type(model)(gpt2.backbone)
    with pytest.raises(ValueError, match="token_ids"):
        model(tokens(L) | {"token_ids": np.full((2, L), 99, "int32")})


def test_from_preset_gives_a_plain_preset_a_memory(gpt2, tmp_path):
    path = str(tmp_path / "gpt2")
    gpt2.save_to_preset(path)
    model = InfMemoryCausalLM.from_preset(path, segment_length=L, **MEMORY)
    assert type(model).__name__ == "InfMemoryGPT2CausalLM"
    assert model.backbone.segment_length == L
    x = tokens(L)
    np.testing.assert_allclose(to_numpy(model(x)), to_numpy(gpt2(x)), atol=1e-5)
    with pytest.raises(ValueError, match="loads Llama3CausalLM presets"):
        from keras_infmemory.models.hub import InfMemoryLlama3CausalLM

        InfMemoryLlama3CausalLM.from_preset(path)


def test_memory_densities(model):
    """Where each token's read looks: one density per head and token."""
    x = tokens(3 * L - 2)
    densities, state = model.memory_densities(x)
    assert len(densities) == 2
    mu, variance = (
        to_numpy(densities[0]["mu"]),
        to_numpy(densities[0]["variance"]),
    )
    assert mu.shape == variance.shape == (2, 2, 3 * L - 2)
    assert ((mu > 0) & (mu < 1)).all() and (variance > 0).all()
    seen = to_numpy(densities[1]["has_memory"])
    assert not seen[:, :L].any() and seen[:, L:].all()
    # The state is the call's.
    _, expected = model(x, state=model.get_initial_state(2))
    for a, b in zip(
        keras.tree.flatten(state), keras.tree.flatten(expected), strict=True
    ):
        np.testing.assert_allclose(to_numpy(a), to_numpy(b), atol=1e-6)


@pytest.mark.slow
def test_absorbed_documents_then_prompt_equal_one_call(model):
    """Documents of different lengths absorbed into a memory, then a prompt:
    scoring, a call with the state and greedy generation all equal one call
    over each document padded to whole segments followed by the prompt."""
    rng = np.random.default_rng(7)
    lengths = (2 * L + 3, L - 2)  # per-row document lengths
    documents = np.zeros((2, 3 * L), "int32")
    mask = np.zeros((2, 3 * L), "int32")
    for row, n in enumerate(lengths):
        documents[row, :n] = rng.integers(1, 54, n)
        mask[row, :n] = 1
    memory = model.absorb({"token_ids": documents, "padding_mask": mask})
    prompt = tokens(L + 4, seed=8)
    # One call: each document, its padding up to whole segments, the prompt.
    both = {
        "token_ids": np.concatenate([documents, prompt["token_ids"]], 1),
        "padding_mask": np.concatenate([mask, prompt["padding_mask"]], 1),
    }
    whole = to_numpy(model(both))[:, 3 * L :]
    after, _ = model(prompt, state=memory)
    np.testing.assert_allclose(to_numpy(after), whole, atol=1e-5)
    np.testing.assert_allclose(
        to_numpy(model.score(**prompt, state=memory)), whole, atol=1e-5
    )
    # Greedy generation from the memory: each new token is the argmax of
    # the one-call forward pass over documents + text so far.
    model.compile(sampler="greedy")
    preprocessor, model.preprocessor = model.preprocessor, None  # token ids
    try:
        room = {k: np.pad(v, ((0, 0), (0, 6))) for k, v in prompt.items()}
        out = model.generate(room, stop_token_ids=None, state=memory)
        plain = model.generate(room, stop_token_ids=None)
    finally:
        model.preprocessor = preprocessor
    out = to_numpy(out["token_ids"]).astype("int32")
    plain = to_numpy(plain["token_ids"]).astype("int32")
    text = np.concatenate([documents, out], 1)
    full = {
        "token_ids": text,
        "padding_mask": np.concatenate([mask, np.ones_like(out)], 1),
    }
    logits = to_numpy(model(full))[:, 3 * L :]
    n = prompt["token_ids"].shape[1]
    np.testing.assert_array_equal(logits[:, n - 1 : -1].argmax(-1), out[:, n:])
    # Without the memory the generation is the model's on the prompt alone.
    alone = to_numpy(
        model({"token_ids": plain, "padding_mask": np.ones_like(plain)})
    )
    np.testing.assert_array_equal(alone[:, n - 1 : -1].argmax(-1), plain[:, n:])
    # Text absorbs through the preprocessor, whole (never truncated).
    text_memory = model.absorb(["ab cd ef gh ij kl mn op qr st uv wx", "ab"])
    assert to_numpy(text_memory[0]["pending_mask"]).any()


def test_a_fresh_memory_skips_the_first_segment_exactly(model, monkeypatch):
    """A call without a state starts from empty memories: its first segment
    neither writes nor reads (nothing waits, nothing is stored). Logits,
    KL losses and a training step equal the full road's, every segment
    run (same weights, one SGD step)."""
    from tests.testing import fresh_road

    x = tokens(3 * L, seed=7)
    x["padding_mask"][1, -3:] = 0  # a padded row end
    y = np.roll(x["token_ids"], -1, axis=1)
    results = {}
    for road in ("skip", "full"):
        writes = fresh_road(monkeypatch, road)
        lm = attach_memory(model)  # the same weights
        lm.preprocessor = None
        lm.compile(
            optimizer=keras.optimizers.SGD(learning_rate=0.5),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        )
        logits = to_numpy(lm(x))
        assert len(writes) == (2 if road == "skip" else 3) * 2, road
        kl = sum(float(to_numpy(keras.ops.stop_gradient(v))) for v in lm.losses)
        loss = lm.train_on_batch(
            x, y, sample_weight=x["padding_mask"], return_dict=True
        )["loss"]
        weights = [to_numpy(v) for v in lm.trainable_weights]
        results[road] = (logits, kl, float(loss), weights)
    (logits, kl, loss, weights), full = results.values()
    np.testing.assert_array_equal(logits, full[0])
    np.testing.assert_allclose(kl, full[1], rtol=1e-6)
    np.testing.assert_allclose(loss, full[2], rtol=1e-6)
    stepped = 0
    for variable, got, expected in zip(
        model.trainable_weights, weights, full[3], strict=True
    ):
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
        # The write's (gate) and the read's (values, output) weights learn.
        # (The density kernels' gradients, ~1e-8 here, move them less than
        # float32 resolves.)
        if variable.path.split("/")[-1] in ("gate_kernel", "value_kernel"):
            stepped += 1
            assert not np.array_equal(got, to_numpy(variable)), variable.path
    assert stepped == 2 * 2
