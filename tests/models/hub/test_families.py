"""Every supported KerasHub family with memory, on a tiny random model.

Per family: an empty memory gives the family's logits; one call over
several segments equals feeding them one at a time; cached decoding equals
the forward pass; padding never enters the memory; absorbing stops after
the last memory's write; save_to_preset → from_preset gives identical
logits. Also: unsupported classes are refused
with the supported ones named.
"""

import keras
import keras_hub
import numpy as np
import pytest

from keras_infmemory.models.hub import (
    FAMILIES,
    InfMemoryCausalLM,
    attach_memory,
)
from tests.models.hub.tiny import VOCAB, family_params, tiny_causal_lm
from tests.testing import assert_trees_close, to_numpy

L = 8  # segment length
MEMORY = {"num_basis": 16, "num_samples": 16, "basis_widths": (0.05, 0.1)}


def tokens(length, batch=2, seed=0):
    ids = np.random.default_rng(seed).integers(1, VOCAB, (batch, length))
    ids = ids.astype("int32")
    return {"token_ids": ids, "padding_mask": np.ones_like(ids)}


def segment(x, s):
    return {k: v[:, s * L : (s + 1) * L] for k, v in x.items()}


@pytest.fixture(scope="module", params=family_params(FAMILIES))
def family(request):
    base = tiny_causal_lm(request.param)
    keras.utils.set_random_seed(1)
    model = attach_memory(base, segment_length=L, **MEMORY)
    return request.param, base, model


def test_empty_memory_is_the_family_and_memory_changes_later_segments(
    family,
):
    name, base, model = family
    assert isinstance(model, InfMemoryCausalLM)
    assert isinstance(model, type(base))  # a CausalLM of the same family
    assert len(model.backbone.memories) == 2
    x = tokens(3 * L)
    whole = to_numpy(model(x))
    for s in range(3):
        alone = to_numpy(base(segment(x, s)))
        gap = np.abs(whole[:, s * L : (s + 1) * L] - alone).max()
        if s == 0:
            assert gap <= 1e-5, (name, gap)  # an empty memory: the family
        else:
            assert gap > 1e-4, (name, gap)  # later segments read the memory
    # With the memory switched off every segment is the family's alone.
    model.memory_enabled = False
    try:
        off = to_numpy(model(x))
    finally:
        model.memory_enabled = True
    np.testing.assert_allclose(
        off[:, L : 2 * L], to_numpy(base(segment(x, 1))), atol=1e-5
    )


def test_streaming_equals_one_call_and_cached_decoding(family):
    name, _, model = family
    x = tokens(3 * L - 3, seed=1)
    whole = to_numpy(model(x))
    state = model.get_initial_state(2)
    pieces = []
    for s in range(3):
        logits, state = model(segment(x, s), state=state)
        pieces.append(to_numpy(logits))
    np.testing.assert_allclose(np.concatenate(pieces, 1), whole, atol=1e-5)
    # Cached decoding from a prompt of 1.6 segments, token by token.
    ids = x["token_ids"]
    cache = model._prefill(
        keras.ops.convert_to_tensor(ids), 13, model.get_initial_state(2)
    )
    steps = decode_steps(model, ids, cache, 13)
    np.testing.assert_allclose(steps, whole[:, 13:], atol=1e-4)


def decode_steps(model, ids, cache, start):
    """The logits of ``ids[:, start:]`` decoded token by token from
    ``cache`` (`call_with_cache`, KerasHub's step), as one NumPy array.

    On JAX the step runs under ``jax.jit`` with a traced index, as in
    KerasHub's compiled generation loop (eager JAX compiles every
    operation anew for each position: 34 s of the Llama 3 check against
    a few for one compiled step); torch and TensorFlow run it eagerly, the
    memory's Python path for a known position."""
    step, index = model.call_with_cache, int
    if keras.backend.backend() == "jax":
        import jax

        step, index = jax.jit(step), np.int32
    ids = keras.ops.convert_to_tensor(ids)
    steps = []
    for t in range(start, ids.shape[1]):
        logits, _, cache = step(ids[:, t : t + 1], cache, index(t))
        steps.append(to_numpy(logits))
    return np.concatenate(steps, 1)


def test_generate_matches_the_forward_pass(family):
    """Greedy generation from a 1.5-segment prompt: each new token is the
    argmax of the uncached forward pass over the text so far."""
    name, _, model = family
    model.compile(sampler="greedy")
    length = 3 * L
    prompt = tokens(length, seed=2)
    prompt["token_ids"][:, 12:] = 0
    prompt["padding_mask"][:, 12:] = 0
    out = to_numpy(model.generate(prompt, stop_token_ids=None)["token_ids"])
    out = out.astype("int32")
    np.testing.assert_array_equal(out[:, :12], prompt["token_ids"][:, :12])
    logits = to_numpy(
        model({"token_ids": out, "padding_mask": np.ones_like(out)})
    )
    np.testing.assert_array_equal(logits[:, 11:-1].argmax(-1), out[:, 12:])


def test_padding_never_enters_the_memory(family):
    """A segment whose last 3 tokens are padding: other ids under the
    padding change neither the next segment's logits nor the state."""
    check_padding_enters_no_memory(family[2], next_length=L)


def check_padding_enters_no_memory(model, next_length):
    """A first call of one segment whose last 3 tokens are padding, then
    ``next_length`` tokens: the ids under the padding change neither the
    second call's logits nor the state."""
    first, second = tokens(L, seed=3), tokens(next_length, seed=4)
    first["padding_mask"][:, -3:] = 0
    results = []
    for fill in (0, 7):
        x = {k: v.copy() for k, v in first.items()}
        x["token_ids"][:, -3:] = fill
        _, state = model(x, state=model.get_initial_state(2))
        logits, state = model(second, state=state)
        results.append((to_numpy(logits), keras.tree.flatten(state)))
    np.testing.assert_allclose(results[0][0], results[1][0], atol=1e-6)
    for a, b in zip(results[0][1], results[1][1], strict=True):
        np.testing.assert_allclose(to_numpy(a), to_numpy(b), atol=1e-6)


def test_absorbing_stops_once_the_last_memory_has_written(family, monkeypatch):
    """`absorb` wants only the state: the family's code stops once the
    last memory layer has written (`MemoryRun`, ``outputs=False``), so that
    memory never reads; the state equals a call's (padding included)."""
    name, _, model = family
    x = tokens(3 * L - 2, seed=5)
    x["padding_mask"][1, -6:] = 0
    _, expected = model(x, state=model.get_initial_state(2))
    reads = {i: 0 for i in range(len(model.backbone.memories))}
    for i, ltm in enumerate(model.backbone.memories):
        original = ltm.read

        def counted(*args, i=i, original=original, **kwargs):
            reads[i] += 1
            return original(*args, **kwargs)

        monkeypatch.setattr(ltm, "read", counted)
    state = model.absorb(x)
    assert reads == {0: 2, 1: 0}, (name, reads)  # segments 2 and 3 read
    assert_trees_close(state, expected, atol=1e-6)


def test_preset_round_trip(family, tmp_path):
    name, _, model = family
    path = str(tmp_path / name)
    model.save_to_preset(path)
    loaded = keras_hub.models.CausalLM.from_preset(path)
    assert type(loaded) is type(model)
    assert loaded.backbone.get_config() == model.backbone.get_config()
    x = tokens(2 * L, seed=5)
    np.testing.assert_allclose(
        to_numpy(loaded(x)), to_numpy(model(x)), atol=1e-6
    )
    again = InfMemoryCausalLM.from_preset(path)
    assert type(again) is type(model)


def test_unsupported_class_is_refused():
    backbone = keras_hub.models.BertBackbone(
        vocabulary_size=10,
        num_layers=1,
        num_heads=2,
        hidden_dim=8,
        intermediate_dim=16,
        max_sequence_length=8,
    )
    bert = keras_hub.models.BertMaskedLM(backbone)
    with pytest.raises(ValueError, match="GPT2CausalLM, OPTCausalLM"):
        attach_memory(bert)
