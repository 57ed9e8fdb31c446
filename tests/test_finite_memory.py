"""A NaN in one row's input poisons that row's memory for every later
segment; the NaN checks that would stop it are off by default (a host sync
per layer). The library reports such rows where the models return to the
host anyway: `checkpoint.finite_rows` on any state, a warning from
``absorb``, ``score`` and ``generate`` of the KerasHub models, and the
`FiniteMemoryCheck` callback for a stateful model in ``fit``. Each names
the poisoned row and raises no false alarm on clean input."""

import warnings

import keras
import numpy as np
import pytest

import keras_infmemory as ki
from keras_infmemory.checkpoint import finite_rows
from keras_infmemory.models import FiniteMemoryCheck, InfFormerLM
from tests.testing import to_numpy

POISONED = r"holds NaN or inf in rows \[1\]"


def memory_warnings(call):
    """``call()``'s result and the messages of the memory warnings it
    raised."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = call()
    messages = [
        str(w.message)
        for w in caught
        if issubclass(w.category, RuntimeWarning)
        and "holds NaN or inf" in str(w.message)
    ]
    return result, messages


def poison_embedding(embeddings, token):
    """Sets the embedding of ``token`` to NaN: a NaN in the input of every
    row that holds it."""
    table = to_numpy(embeddings).copy()
    table[token] = np.nan
    embeddings.assign(table)


def test_finite_rows_names_the_poisoned_row_until_it_is_emptied():
    ltm = ki.ContinuousLTM(2, 4, num_basis=16, num_samples=8)
    state = ltm.get_initial_state(3)
    segment = np.random.default_rng(0).normal(size=(3, 5, 8))
    segment = segment.astype("float32")
    poisoned = segment.copy()
    poisoned[1, 2, 3] = np.nan
    state = ltm.write(poisoned, state)
    assert to_numpy(finite_rows(state)).tolist() == [True, False, True]
    state = ltm.write(segment, state)  # later clean segments stay poisoned
    assert to_numpy(finite_rows(state)).tolist() == [True, False, True]
    state = ltm.reset_rows(state, np.array([False, True, False]))
    assert to_numpy(finite_rows(state)).tolist() == [True, True, True]
    clean = ltm.write(segment, ltm.get_initial_state(3))
    assert to_numpy(finite_rows(clean)).all()
    inf = dict(clean, coefficients=to_numpy(clean["coefficients"]).copy())
    inf["coefficients"][2, 0, 0] = np.inf
    assert to_numpy(finite_rows(inf)).tolist() == [True, True, False]
    for bad in (3, None, {}, np.float32(1.0)):
        with pytest.raises(ValueError, match="Received: state="):
            finite_rows(bad)


def tiny_lm(**kwargs):
    return InfFormerLM.arm(
        "inf_former",
        vocabulary_size=12,
        num_layers=1,
        hidden_dim=8,
        num_heads=2,
        intermediate_dim=16,
        segment_length=4,
        memory_options={"num_basis": 8, "num_samples": 8},
        **kwargs,
    )


def test_the_callback_names_a_poisoned_row_of_a_stateful_model():
    tokens = np.random.default_rng(1).integers(0, 11, (2, 9))
    tokens[1, 2] = 11  # only row 1 holds token 11
    tokens = tokens.astype("int32")
    results = {}
    for poisoned in (False, True):
        model = tiny_lm(stateful=True, batch_size=2)
        model.compile(
            optimizer="sgd",
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        )
        model.build((2, None))
        if poisoned:
            poison_embedding(model.embedding.embeddings, 11)
        check = FiniteMemoryCheck()
        history, messages = memory_warnings(
            lambda m=model, c=check: m.fit(
                tokens[:, :-1],
                tokens[:, 1:],
                batch_size=2,
                epochs=3,
                shuffle=False,  # rows in document order
                callbacks=[c],
                verbose=0,
            )
        )
        results[poisoned] = (check.rows, messages, history)
    rows, messages, history = results[False]
    assert rows == [] and messages == []
    assert len(history.history["loss"]) == 3
    rows, messages, history = results[True]
    assert rows == [1]
    assert len(messages) == 1 and "after epoch 1" in messages[0]
    assert len(history.history["loss"]) == 1  # training stopped


def test_the_callback_needs_a_stateful_model():
    model = tiny_lm()
    model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
    tokens = np.zeros((2, 5), "int32")
    with pytest.raises(ValueError, match="Received: model with stateful"):
        model.fit(
            tokens[:, :-1],
            tokens[:, 1:],
            callbacks=[FiniteMemoryCheck()],
            verbose=0,
        )
    with pytest.raises(ValueError, match="stop_training='no'"):
        FiniteMemoryCheck(stop_training="no")


def test_the_causal_lm_names_a_poisoned_row_where_it_returns_to_the_host():
    """``absorb`` and ``score`` check the memory after the text,
    ``generate`` the state it is given; clean input raises no warning."""
    pytest.importorskip("keras_hub")
    from keras_infmemory.models import attach_memory
    from tests.models.hub.tiny import VOCAB, tiny_causal_lm

    lm = attach_memory(
        tiny_causal_lm("llama3"),
        segment_length=8,
        num_basis=16,
        num_samples=16,
        basis_widths=(0.05, 0.1),
    )
    lm.compile(sampler="greedy")
    ids = np.random.default_rng(2).integers(1, VOCAB - 1, (2, 16))
    ids = ids.astype("int32")
    poisoned = ids.copy()
    poisoned[1, 5] = VOCAB - 1  # only row 1 holds the last token
    inputs = {"token_ids": poisoned, "padding_mask": np.ones_like(ids)}
    prompt = {"token_ids": ids, "padding_mask": np.zeros_like(ids)}
    prompt["padding_mask"][:, :4] = 1

    clean, messages = memory_warnings(lambda: lm.absorb(inputs))
    assert messages == []
    _, messages = memory_warnings(lambda: lm.score(ids, state=clean))
    assert messages == []
    _, messages = memory_warnings(
        lambda: lm.generate(prompt, stop_token_ids=None, state=clean)
    )
    assert messages == []

    poison_embedding(lm.backbone.token_embedding.embeddings, VOCAB - 1)
    state, messages = memory_warnings(lambda: lm.absorb(inputs))
    assert to_numpy(finite_rows(state)).tolist() == [True, False]
    assert len(messages) == 1
    assert "after `absorb`" in messages[0] and "rows [1]" in messages[0]
    for call, where in (
        (lambda: lm.score(ids, state=state), "after `score`"),
        (lambda: lm.score(poisoned), "after `score`"),
        (
            lambda: lm.generate(prompt, stop_token_ids=None, state=state),
            "given to `generate`",
        ),
    ):
        _, messages = memory_warnings(call)
        assert len(messages) == 1 and where in messages[0], messages
        assert "rows [1]" in messages[0]
