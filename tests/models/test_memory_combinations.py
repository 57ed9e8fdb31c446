"""Every combination of the memories: STM × LTM (none, uniform, sticky) ×
compressor, in an `InfFormerBlock` and in an `InfFormerLM`.

Each combination runs a whole sequence and the same sequence streamed
segment by segment (the two must agree), with finite outputs.
"""

import itertools

import numpy as np
import pytest

from keras_infmemory import (
    CompressiveMemory,
    ContinuousLTM,
    InfFormerBlock,
    StickyMemorySampler,
)
from keras_infmemory.models import InfFormerLM
from tests.testing import to_numpy

HIDDEN, HEADS, SEGMENT, VOCABULARY = 8, 2, 4, 11
STM = (0, SEGMENT)
LTM = (None, "uniform", "sticky")
COMPRESSOR = (False, True)
COMBINATIONS = list(itertools.product(STM, LTM, COMPRESSOR))


def combination_id(combination):
    stm, ltm, compressor = combination
    return f"stm{stm}-{ltm or 'noltm'}-{'comp' if compressor else 'nocomp'}"


def ltm_options(ltm):
    if ltm is None:
        return None
    options = {"num_basis": 8, "num_samples": 8, "basis_widths": (0.1, 0.2)}
    if ltm == "sticky":
        options["sticky"] = StickyMemorySampler(num_bins=8, mode="quantile")
    return options


def make_block(stm, ltm, compressor):
    options = ltm_options(ltm)
    block = InfFormerBlock(
        num_heads=HEADS,
        intermediate_dim=16,
        stm_length=stm,
        segment_length=SEGMENT,
        ltm=None
        if options is None
        else ContinuousLTM(HEADS, HIDDEN // HEADS, **options),
        compressor=CompressiveMemory(compression_rate=2, memory_length=4)
        if compressor
        else None,
    )
    block.build((None, None, HIDDEN))
    return block


@pytest.mark.parametrize("combination", COMBINATIONS, ids=combination_id)
def test_block(combination):
    block = make_block(*combination)
    x = np.random.default_rng(0).normal(size=(2, 4 * SEGMENT, HIDDEN))
    x = x.astype("float32")
    whole = to_numpy(block(x))
    state = block.get_initial_state(2)
    streamed = []
    for s in range(4):
        y, state = block(x[:, s * SEGMENT : (s + 1) * SEGMENT], state)
        streamed.append(to_numpy(y))
    assert np.all(np.isfinite(whole))
    np.testing.assert_allclose(np.concatenate(streamed, 1), whole, atol=1e-5)


@pytest.mark.parametrize("combination", COMBINATIONS, ids=combination_id)
def test_language_model(combination):
    stm, ltm, compressor = combination
    model = InfFormerLM(
        vocabulary_size=VOCABULARY,
        num_layers=2,
        hidden_dim=HIDDEN,
        num_heads=HEADS,
        intermediate_dim=16,
        segment_length=SEGMENT,
        stm_length=stm,
        memory_options=ltm_options(ltm),
        compressive_options={"compression_rate": 2, "memory_length": 4}
        if compressor
        else None,
    )
    tokens = np.random.default_rng(1).integers(0, VOCABULARY, (2, 4 * SEGMENT))
    whole = to_numpy(model(tokens))
    state = model.get_initial_state(2)
    streamed = []
    for s in range(4):
        logits, state = model(tokens[:, s * SEGMENT : (s + 1) * SEGMENT], state)
        streamed.append(to_numpy(logits))
    assert np.all(np.isfinite(whole))
    np.testing.assert_allclose(np.concatenate(streamed, 1), whole, atol=1e-5)
