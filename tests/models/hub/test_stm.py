"""The short-term memory (``stm_length``) of the KerasHub models with memory.

Per family, on a tiny random model with an STM of one segment: with the
LTM off the second segment is the family's model on the first two
segments; with it on, the first segment is the family's and the LTM
receives only what left the STM; one call equals the same text fed
segment by segment; padding enters neither memory; `absorb` gives a call's
state; cached decoding and greedy generation (two turns, the second from
the first's returned state) are the teacher-forced call; a preset round
trip keeps the STM. Then the options: ``S = 0`` keeps the old
configuration and state, a config saved before the STM loads without one,
bad values are refused.
"""

import re

import keras
import keras_hub
import numpy as np
import pytest

from keras_infmemory import checkpoint
from keras_infmemory.models.hub import (
    FAMILIES,
    InfMemoryCausalLM,
    attach_memory,
)
from tests.models.hub.test_families import (
    MEMORY,
    check_padding_enters_no_memory,
    decode_steps,
    tokens,
)
from tests.models.hub.tiny import EVERY_BACKEND, family_params, tiny_causal_lm
from tests.testing import assert_trees_close, to_numpy

L = 8  # segment length


def segment(x, start, stop):
    return {k: v[:, start:stop] for k, v in x.items()}


def prompt(length, width, seed):
    """``length`` real tokens right-padded to ``width``."""
    x = tokens(width, seed=seed)
    x["token_ids"][:, length:] = 0
    x["padding_mask"][:, length:] = 0
    return x


def document(seed):
    """A document of 11 tokens in row 0 and 3 in row 1: after it, row 1's
    STM is not full (with ``S > 3``)."""
    x = tokens(11, seed=seed)
    x["padding_mask"][1, 3:] = 0
    return x


def check_decoding_is_the_call(model, seed, prefill=5, length=3 * L + 1):
    """Cached decoding from an absorbed document (`document`): the prompt's
    first ``prefill`` tokens seed the cache, then token by token across
    three segment boundaries, the logits are the teacher-forced call's
    from the same state."""
    state = model.absorb(document(seed))
    x = tokens(length, seed=seed + 1)
    whole, _ = model(x, state=state)
    ids = keras.ops.convert_to_tensor(x["token_ids"])
    cache = model._prefill(ids, prefill, state)
    steps = decode_steps(model, ids, cache, prefill)
    np.testing.assert_allclose(steps, to_numpy(whole)[:, prefill:], atol=1e-4)


def relative_gap(actual, expected):
    return np.abs(actual - expected).max() / np.abs(expected).max()


def assert_segments_equal_one_call(model, x, whole, expected):
    """``x`` fed in whole segments from an empty state gives one call's
    logits ``whole`` on the real tokens and its final state ``expected``."""
    state = model.get_initial_state(2)
    pieces = []
    for start in range(0, x["token_ids"].shape[1], L):
        logits, state = model(segment(x, start, start + L), state=state)
        pieces.append(to_numpy(logits))
    real = x["padding_mask"].astype(bool)
    np.testing.assert_allclose(
        np.concatenate(pieces, 1)[real], to_numpy(whole)[real], atol=1e-5
    )
    assert_trees_close(state, expected, atol=1e-5)


@pytest.fixture(scope="module", params=family_params(FAMILIES))
def family(request):
    base = tiny_causal_lm(request.param)
    keras.utils.set_random_seed(1)
    model = attach_memory(base, segment_length=L, stm_length=L, **MEMORY)
    return request.param, base, model


def test_an_stm_of_one_segment_is_the_family_on_two_segments(family):
    name, base, model = family
    x = tokens(3 * L)
    expected = to_numpy(base(segment(x, 0, 2 * L)))  # (B, 2L, V)
    model.memory_enabled = False
    try:
        off = to_numpy(model(x))
    finally:
        model.memory_enabled = True
    gap = relative_gap(off[:, : 2 * L], expected)
    assert gap <= 1e-5, (name, gap)
    # The LTM on: segment 0 (in the STM while segment 1 runs) has not left
    # it, so the first two segments find an empty LTM; the third reads.
    on = to_numpy(model(x))
    gap = relative_gap(on[:, : 2 * L], expected)
    assert gap <= 1e-5, (name, gap)
    assert np.abs(on[:, 2 * L :] - off[:, 2 * L :]).max() > 1e-4, name


def test_streaming_equals_one_call(family):
    name, _, model = family
    x = tokens(3 * L - 3, seed=1)
    x["padding_mask"][1, -5:] = 0  # row 1 ends inside segment 1
    whole, expected = model(x, state=model.get_initial_state(2))
    assert_segments_equal_one_call(model, x, whole, expected)


def test_conversation_turns_are_the_call_on_their_text(family):
    """Two turns of greedy generation from an absorbed document, each
    across three segment boundaries, the second from the first's returned
    state: every generated token is the argmax of one teacher-forced call
    over the document and both turns, and the state is that call's."""
    name, _, model = family
    model.compile(sampler="greedy")
    state = model.absorb(document(15))
    texts = []
    for turn, length in enumerate((3, 2)):
        out, state = model.generate(
            prompt(length, 4 * L, seed=16 + turn),
            stop_token_ids=None,
            state=state,
            return_state=True,
        )
        texts.append(to_numpy(out["token_ids"]).astype("int32"))
    text = np.concatenate(texts, 1)  # (B, 8L)
    logits, expected = model(
        {"token_ids": text, "padding_mask": np.ones_like(text)},
        state=model.absorb(document(15)),
    )
    picks = to_numpy(logits).argmax(-1)
    for turn, length in enumerate((3, 2)):
        start, stop = turn * 4 * L + length, (turn + 1) * 4 * L
        np.testing.assert_array_equal(
            picks[:, start - 1 : stop - 1], text[:, start:stop], err_msg=name
        )
    assert_trees_close(state, expected, atol=1e-5)


def test_padding_enters_neither_memory(family):
    """A first call whose last 3 tokens are padding: other ids under the
    padding change neither the next calls' logits nor the state."""
    check_padding_enters_no_memory(family[2], next_length=2 * L)


def test_absorb_gives_a_calls_state(family):
    """`absorb` stops at the last decoder layer (each layer's input is
    kept in the STM); its state is a call's."""
    name, _, model = family
    x = tokens(3 * L - 2, seed=5)
    x["padding_mask"][1, -6:] = 0
    _, expected = model(x, state=model.get_initial_state(2))
    state = model.absorb(x)
    assert_trees_close(state, expected, atol=1e-5)


def test_preset_round_trip(family, tmp_path):
    name, _, model = family
    path = str(tmp_path / name)
    model.save_to_preset(path)
    loaded = keras_hub.models.CausalLM.from_preset(path)
    assert loaded.backbone.stm_length == L
    x = tokens(2 * L, seed=6)
    np.testing.assert_allclose(
        to_numpy(loaded(x)), to_numpy(model(x)), atol=1e-6
    )


# What follows is the same code for every family: GPT-2 (learned
# positions) and Llama 3 (rotary positions, grouped-query attention). The
# STM's path itself runs on every backend above (GPT-2 and Llama 3); these
# checks of its options are dealt, each family's to one backend.


@pytest.fixture(
    scope="module",
    params=[
        pytest.param(name, marks=pytest.mark.one_backend(key=f"stm-{name}"))
        for name in EVERY_BACKEND
    ],
)
def pair(request):
    """A family's tiny model with an LTM (no STM), and the same weights
    with an STM of one segment."""
    base = tiny_causal_lm(request.param)
    keras.utils.set_random_seed(1)
    plain = attach_memory(base, segment_length=L, **MEMORY)
    return request.param, base, plain, attach_memory(plain, stm_length=L)


def test_an_stm_shorter_or_longer_than_a_segment(pair):
    """Streaming equals one call, the STM drawn from the state and from
    earlier segments alike. With ``size > L`` segment 1 attends to all of
    segment 0: the family on the two segments. (With ``size < L`` no
    model without memory matches: the STM's tokens at layer 1 and above
    were computed with all of segment 0 before them, as in
    Transformer-XL.)"""
    name, base, plain, _ = pair
    size = {"gpt2": 12, "llama3": 3}[name]  # the same code for both
    model = attach_memory(plain, stm_length=size)
    x = tokens(3 * L, seed=7)
    x["padding_mask"][0, -4:] = 0
    whole, expected = model(x, state=model.get_initial_state(2))
    # Calls that cut segments: the STM keeps the last real tokens.
    state = model.get_initial_state(2)
    for start, stop in ((0, 5), (5, 13), (13, 3 * L)):
        _, state = model(segment(x, start, stop), state=state)
        seen = x["padding_mask"][:, :stop].sum(axis=1)
        kept = to_numpy(state["stm"]["mask"])
        np.testing.assert_array_equal(kept.sum(1), np.minimum(seen, size))
        assert kept[:, -1].all()  # right-aligned
    # One call and calls of whole segments agree exactly.
    assert_segments_equal_one_call(model, x, whole, expected)
    check_decoding_is_the_call(model, seed=21)
    if size > L:
        model.memory_enabled = False
        logits = to_numpy(model(segment(x, 0, 2 * L)))
        expected = to_numpy(base(segment(x, 0, 2 * L)))
        assert relative_gap(logits, expected) <= 1e-5, name


def test_a_document_padded_to_segments_then_a_prompt(pair):
    """One call on a document padded to whole segments followed by a
    prompt equals the document's call, then the prompt's: the prompt's
    STM is the document's last real tokens, padding skipped."""
    name, _, _, model = pair
    x = tokens(3 * L, seed=14)
    x["padding_mask"][:, L + 5 : 2 * L] = 0  # the document: 13 tokens
    x["padding_mask"][1, L + 2 : 2 * L] = 0  # row 1's: 10 tokens
    whole, expected = model(x, state=model.get_initial_state(2))
    first, state = model(segment(x, 0, 2 * L), state=model.get_initial_state(2))
    second, state = model(segment(x, 2 * L, 3 * L), state=state)
    real = x["padding_mask"].astype(bool)
    both = np.concatenate([to_numpy(first), to_numpy(second)], 1)
    np.testing.assert_allclose(both[real], to_numpy(whole)[real], atol=1e-5)
    assert_trees_close(state, expected, atol=1e-5)


def test_the_ltm_receives_what_leaves_the_stm(pair):
    """With an STM of one segment, the LTM after segments a, b, c holds
    what the model without an STM holds after a, b: segment a written,
    b waiting. Layer 0's input (Llama 3: the token embeddings) is the same
    in both, so its memories are equal."""
    name, _, plain, model = pair
    x = tokens(3 * L, seed=8)
    _, with_stm = model(x, state=model.get_initial_state(2))
    _, without = plain(segment(x, 0, 2 * L), state=plain.get_initial_state(2))
    assert set(with_stm) == {"stm", "ltm"}
    if name == "gpt2":  # learned positions: segment b sits at L..2L-1
        return
    for a, b in zip(
        keras.tree.flatten(with_stm["ltm"][0]),
        keras.tree.flatten(without[0]),
        strict=True,
    ):
        np.testing.assert_allclose(to_numpy(a), to_numpy(b), atol=1e-5)


def test_reset_rows_and_checkpoints(pair, tmp_path):
    name, base, _, model = pair
    x, y = tokens(L, seed=9), tokens(L, seed=10)
    _, state = model(x, state=model.get_initial_state(2))
    path = str(tmp_path / "state.npz")
    checkpoint.save_state(path, state)
    state = checkpoint.load_state(path, like=model.get_initial_state(2))
    logits, _ = model(
        y, state=state, reset_mask=np.array([True, False])
    )  # row 0 starts again: the family's model on y alone
    logits = to_numpy(logits)
    np.testing.assert_allclose(logits[0], to_numpy(base(y))[0], atol=1e-5)
    assert np.abs(logits[1] - to_numpy(base(y))[1]).max() > 1e-4


def test_a_fit_step_and_the_stateful_mode(pair):
    name, _, _, model = pair
    model = attach_memory(model, stateful=True, batch_size=2)
    model.compile(optimizer="adam", loss=_loss())
    x = tokens(2 * L, seed=11)
    y = np.roll(x["token_ids"], -1, axis=1)
    history = model.fit(x, y, batch_size=2, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0]), name
    state = model._state_holder.read()
    assert to_numpy(state["stm"]["mask"]).all()


def test_score_is_the_forward_pass(pair):
    name, _, _, model = pair
    x = tokens(3 * L - 2, seed=13)
    x["padding_mask"][1, -4:] = 0
    scores, state = model.score(
        x["token_ids"], padding_mask=x["padding_mask"], return_state=True
    )
    logits, expected = model(x, state=model.get_initial_state(2))
    real = x["padding_mask"].astype(bool)
    np.testing.assert_allclose(
        to_numpy(scores)[real], to_numpy(logits)[real], atol=1e-5
    )
    assert_trees_close(state, expected, atol=1e-5)


def _loss():
    return keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def test_two_generations_are_one_over_both_turns(pair):
    """`generate` with ``return_state``, then `generate` on the returned
    state, gives the tokens of one generation over the first turn's text
    and the second prompt (the first turn fills whole segments: a call
    starts a new segment)."""
    name, _, _, model = pair
    model.compile(sampler="greedy")
    first, second = prompt(3, 2 * L, seed=12), prompt(2, 2 * L, seed=13)
    out, state = model.generate(first, stop_token_ids=None, return_state=True)
    turn = to_numpy(out["token_ids"]).astype("int32")
    reply = model.generate(second, stop_token_ids=None, state=state)
    joint = {
        k: np.concatenate(
            [np.ones_like(turn) if k == "padding_mask" else turn, second[k]], 1
        )
        for k in ("token_ids", "padding_mask")
    }
    once = model.generate(joint, stop_token_ids=None)["token_ids"]
    np.testing.assert_array_equal(
        to_numpy(once)[:, 2 * L :], to_numpy(reply["token_ids"])
    )


# --------------------------------------------------------------------- #
# Options (GPT-2, on one backend: configuration only)
# --------------------------------------------------------------------- #


@pytest.fixture(scope="module")
def gpt2():
    return tiny_causal_lm("gpt2")


@pytest.mark.one_backend
def test_no_stm_keeps_the_config_and_the_state(gpt2):
    model = attach_memory(gpt2, segment_length=L, **MEMORY)
    backbone = model.backbone
    config = backbone.get_config()
    assert config["stm_length"] == 0
    assert isinstance(model.get_initial_state(1), list)  # as before
    again = type(backbone).from_config(config)
    assert again.get_config() == config
    # A config saved before `stm_length` existed loads without an STM.
    del config["stm_length"]
    old = type(backbone).from_config(config)
    assert old.stm_length == 0


@pytest.mark.one_backend
def test_from_preset_takes_stm_length(gpt2, tmp_path):
    path = str(tmp_path / "gpt2")
    gpt2.save_to_preset(path)
    model = InfMemoryCausalLM.from_preset(
        path, segment_length=L, stm_length=4, **MEMORY
    )
    assert model.backbone.stm_length == 4
    assert model.backbone.get_config()["stm_length"] == 4


@pytest.mark.one_backend
@pytest.mark.parametrize("value", [-1, 1.5, True, "8"])
def test_bad_stm_length_is_refused(gpt2, value):
    message = re.escape(f"Received: stm_length={value!r}")
    with pytest.raises(ValueError, match=message):
        attach_memory(gpt2, segment_length=L, stm_length=value, **MEMORY)


@pytest.mark.one_backend
def test_learned_positions_must_hold_the_stm_and_the_segment(gpt2):
    # The tiny GPT-2 learns 32 positions.
    attach_memory(gpt2, segment_length=16, stm_length=16, **MEMORY)
    with pytest.raises(ValueError, match="Received: stm_length=17"):
        attach_memory(gpt2, segment_length=16, stm_length=17, **MEMORY)
