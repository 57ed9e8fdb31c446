"""Mixed precision and KerasHub LoRA for models with memory (Llama 3 and
Gemma: grouped-query attention, and heads × head size ≠ hidden size)."""

import keras
import numpy as np
import pytest

from keras_infmemory.models import attach_memory
from keras_infmemory.optimizers import MemoryAdamW
from tests.models.hub.tiny import VOCAB, tiny_causal_lm
from tests.testing import to_numpy

L = 8
MEMORY = {"num_basis": 16, "num_samples": 16, "basis_widths": (0.05, 0.1)}
# Llama 3 on every backend; Gemma, whose layout test_families checks, on
# the backend its family is dealt to there (tests/conftest.py).
FAMILIES = (
    "llama3",
    pytest.param("gemma", marks=pytest.mark.one_backend(key="gemma")),
)


def tokens(length=3 * L, seed=0):
    ids = np.random.default_rng(seed).integers(1, VOCAB, (2, length))
    ids = ids.astype("int32")
    return {"token_ids": ids, "padding_mask": np.ones_like(ids)}


def compile_for_training(model):
    model.compile(
        optimizer=MemoryAdamW(learning_rate=1e-3, memory_learning_rate=1e-2),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )


@pytest.mark.slow
@pytest.mark.parametrize("family", FAMILIES)
def test_mixed_bfloat16(family):
    """Under ``mixed_bfloat16`` the memory's weights, math and state stay
    float32; the model trains and generates, and its logits follow the
    float32 model's (same weights)."""
    full = attach_memory(tiny_causal_lm(family), segment_length=L, **MEMORY)
    keras.config.set_dtype_policy("mixed_bfloat16")
    mixed = attach_memory(tiny_causal_lm(family), segment_length=L, **MEMORY)
    keras.config.set_dtype_policy("float32")
    mixed.set_weights(full.get_weights())
    ltm = mixed.backbone.memories[0]
    assert mixed.backbone.dtype_policy.name == "mixed_bfloat16"
    assert ltm.compute_dtype == "bfloat16"
    assert all(v.dtype == "float32" for v in ltm.weights)
    x = tokens()
    logits, state = mixed(x, state=mixed.get_initial_state(2))
    assert (
        keras.backend.standardize_dtype(
            state[0]["memory"]["coefficients"].dtype
        )
        == "float32"
    )
    expected = to_numpy(full(x))
    got = to_numpy(logits)
    assert np.isfinite(got).all()
    assert np.abs(got - expected).max() < 0.1 * np.abs(expected).max()
    compile_for_training(mixed)
    y = np.roll(x["token_ids"], -1, axis=1)
    history = mixed.fit(x, y, verbose=0)
    assert np.isfinite(history.history["loss"]).all()
    mixed.compile(sampler="greedy")
    prompt = tokens()
    prompt["padding_mask"][:, 12:] = 0
    out = to_numpy(mixed.generate(prompt, stop_token_ids=None)["token_ids"])
    assert out.shape == (2, 3 * L)


@pytest.mark.parametrize("family", FAMILIES)
def test_lora_keeps_the_memory_trainable(family):
    """``backbone.enable_lora(rank)`` freezes the family's weights and adds
    low-rank adapters; the memories stay trainable and learn."""
    model = attach_memory(tiny_causal_lm(family), segment_length=L, **MEMORY)
    model.backbone.enable_lora(2)
    trainable = {v.path for v in model.trainable_weights}
    memory = {v.path for ltm in model.backbone.memories for v in ltm.weights}
    lora = {p for p in trainable if "lora_kernel" in p}
    assert memory <= trainable and lora and trainable == memory | lora
    before = {v.path: to_numpy(v) for v in model.weights}
    compile_for_training(model)
    x = tokens()
    model.fit(x, np.roll(x["token_ids"], -1, axis=1), verbose=0)
    moved = {
        v.path
        for v in model.weights
        if not np.array_equal(before[v.path], to_numpy(v))
    }
    assert memory <= moved  # every LTM weight learned
    assert moved - memory - lora == set()  # the family's weights are frozen
