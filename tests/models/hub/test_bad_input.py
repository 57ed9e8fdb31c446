"""Mistakes on the KerasHub path get Keras-style errors that say what to do:
a preset name where a model is expected, a preset that cannot be fetched,
a padding mask of another length or padding on the left, token ids outside
the vocabulary (a tokenizer of another model)."""

import keras
import keras_hub
import numpy as np
import pytest

from keras_infmemory.models import InfMemoryCausalLM, attach_memory
from tests.models.hub.tiny import VOCAB, tiny_causal_lm
from tests.testing import to_numpy

L = 8
MEMORY = {"num_basis": 16, "num_samples": 16, "basis_widths": (0.05, 0.1)}


@pytest.fixture(scope="module")
def model():
    return attach_memory(tiny_causal_lm("llama3"), segment_length=L, **MEMORY)


@pytest.mark.parametrize("given", ["gpt2_base_en", "gpt2", 3])
def test_attach_memory_takes_a_model(given):
    with pytest.raises(ValueError, match="takes a KerasHub causal LM") as info:
        attach_memory(given)
    message = str(info.value)
    assert f"Received: causal_lm={given!r}" in message
    if isinstance(given, str):  # names lead to from_preset
        assert f"InfMemoryCausalLM.from_preset({given!r}" in message


def test_a_preset_that_cannot_be_fetched_says_so(monkeypatch):
    """Offline, KerasHub's download fails deep in an HTTP client: one
    sentence says what a preset needs; the cause stays chained."""

    def offline(*args, **kwargs):
        raise ConnectionError("Failed to resolve 'api.kaggle.com'")

    monkeypatch.setattr(keras_hub.models.CausalLM, "from_preset", offline)
    with pytest.raises(ValueError, match="must be downloaded") as info:
        InfMemoryCausalLM.from_preset("gpt2_base_en", num_basis=16)
    assert "Received: preset='gpt2_base_en'" in str(info.value)
    assert isinstance(info.value.__cause__, ConnectionError)


def tokens(length=2 * L):
    ids = np.random.default_rng(0).integers(1, VOCAB, (2, length))
    return ids.astype("int32")


def test_a_padding_mask_of_another_length(model):
    ids = tokens()
    mask = np.ones((2, 2 * L - 1), "int32")
    with pytest.raises(ValueError, match=r"padding_mask.shape=\(2, 15\)"):
        model({"token_ids": ids, "padding_mask": mask})
    with pytest.raises(ValueError, match=r"padding_mask.shape=\(2, 15\)"):
        model.score(ids, padding_mask=mask)


def test_left_padding_is_refused(model):
    """The memory writes a row's segments in order: padding before a token
    of the same segment would shift its positions, so it is refused
    wherever a mask enters; a segment may end in padding and the next start
    anew (a document padded to whole segments, then a prompt)."""
    ids = tokens()
    mask = np.ones_like(ids)
    mask[1, :3] = 0  # row 1 left-padded
    inputs = {"token_ids": ids, "padding_mask": mask}
    for call in (
        lambda: model(inputs),
        lambda: model.score(ids, padding_mask=mask),
        lambda: model.absorb(inputs),
    ):
        with pytest.raises(
            ValueError, match=r"real tokens first.*rows \[1\] \(segments of 8\)"
        ):
            call()
    mask[1, :3], mask[1, -3:] = 1, 0  # right padding is fine
    assert np.isfinite(to_numpy(model.score(ids, padding_mask=mask))).all()
    mask[1, L - 3 : L] = 0  # so is padding up to a segment's end
    assert np.isfinite(to_numpy(model.score(ids, padding_mask=mask))).all()


def test_a_wrong_state_names_what_was_expected(model):
    """A memory of another batch, a dict that is no state, one memory's
    state instead of the model's, or another model's sizes: each names the
    argument, what was expected and what was received, at the model's
    entry (call, score, generate), before any layer runs."""
    ids = tokens()
    two = model.get_initial_state(2)
    three = {"token_ids": np.ones((3, L + 2), "int32")}
    three["padding_mask"] = np.ones_like(three["token_ids"])
    other = attach_memory(
        tiny_causal_lm("llama3"), segment_length=L, num_basis=8, num_samples=16
    )
    cases = [
        (lambda: model.score(**three, state=two), "has batch size 3"),
        (lambda: model(three, state=two), "has batch size 3"),
        (lambda: model(three, state={"foo": 1}), "state of type dict"),
        (lambda: model.score(ids, state=two[0]), "state of type dict"),
        (
            lambda: model.score(ids, state=other.get_initial_state(2)),
            r"\['coefficients'\]\.shape=\(2, 8, 16\)",
        ),
    ]
    for call, message in cases:
        with pytest.raises(ValueError, match=message) as info:
            call()
        assert "Received:" in str(info.value)
    model.compile(sampler="greedy")
    preprocessor, model.preprocessor = model.preprocessor, None
    try:
        with pytest.raises(ValueError, match="has batch size 3"):
            model.generate(three, stop_token_ids=None, state=two)
    finally:
        model.preprocessor = preprocessor


def test_return_state_must_be_a_bool(model):
    """Checked before anything runs (``generate``: before compiling)."""
    ids = tokens()
    prompt = {"token_ids": ids, "padding_mask": np.ones_like(ids)}
    for call in (
        lambda: model.score(ids, return_state="yes"),
        lambda: model.generate(prompt, stop_token_ids=None, return_state="yes"),
    ):
        with pytest.raises(ValueError, match="Received: return_state='yes'"):
            call()


# Token ids outside the vocabulary (a tokenizer of another model): compiled
# calls (JAX, TensorFlow) cannot read their inputs, so before the host
# checks JAX embedded the id as NaN (fit: loss nan; generate: the prompt
# followed by zeros) and torch's score and generate raised a bare
# IndexError from the embedding.
OUT_OF_RANGE = (
    rf"must be in \[0, vocabulary_size={VOCAB}\).*"
    r"Received: token_ids with values in \[\d+, 99\] in rows \[1\]"
)


def test_out_of_range_ids_are_refused_on_the_host(model):
    ids = tokens()
    ids[1, 3] = 99
    inputs = {"token_ids": ids, "padding_mask": np.ones_like(ids)}
    prompt = {"token_ids": ids, "padding_mask": np.zeros_like(ids)}
    prompt["padding_mask"][:, :6] = 1  # the bad id is in the prompt
    model.compile(
        optimizer="adam",
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        sampler="greedy",
    )
    preprocessor, model.preprocessor = model.preprocessor, None
    try:
        cases = [
            lambda: model.fit(inputs, ids, batch_size=2, verbose=0),
            lambda: model.evaluate(inputs, ids, batch_size=2, verbose=0),
            lambda: model.predict(inputs, batch_size=2, verbose=0),
            lambda: model.train_on_batch(inputs, ids),
            lambda: model.predict_on_batch(inputs),
            lambda: model.score(ids),
            lambda: model.score(ids, padding_mask=np.ones_like(ids)),
            lambda: model.generate(prompt, stop_token_ids=None),
            lambda: model.absorb(inputs),
            lambda: model.memory_densities(inputs),
        ]
        for call in cases:
            with pytest.raises(ValueError, match=OUT_OF_RANGE):
                call()
    finally:
        model.preprocessor = preprocessor


def test_a_tokenizer_larger_than_the_vocabulary_is_refused():
    """Text goes through the preprocessor inside KerasHub's data pipeline,
    where its ids cannot be read cheaply: the tokenizer's vocabulary is
    checked against the model's instead (here 53 tokens for 48 ids; " y"
    tokenizes to id 52)."""
    letters = "abcdefghijklmnopqrstuvwxyz"
    pieces = ["<|endoftext|>", "Ġ", *letters, *("Ġ" + c for c in letters[:25])]
    vocabulary = {piece: i for i, piece in enumerate(pieces)}
    tokenizer = keras_hub.models.GPT2Tokenizer(
        vocabulary=vocabulary, merges=["Ġ y"]
    )
    assert tokenizer.vocabulary_size() == 53
    gpt2 = tiny_causal_lm("gpt2")
    gpt2.preprocessor = keras_hub.models.GPT2CausalLMPreprocessor(
        tokenizer, sequence_length=L
    )
    lm = attach_memory(gpt2, segment_length=L, **MEMORY)
    lm.compile(
        optimizer="adam",
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        sampler="greedy",
    )
    message = (
        rf"ids in \[0, vocabulary_size={VOCAB}\).*Received: "
        rf"tokenizer.vocabulary_size\(\)=53 with vocabulary_size={VOCAB}"
    )
    for call in (
        lambda: lm.fit([" y a"], verbose=0),
        lambda: lm.predict([" y a"], verbose=0),
        lambda: lm.generate(" y a", max_length=L),
    ):
        with pytest.raises(ValueError, match=message):
            call()
