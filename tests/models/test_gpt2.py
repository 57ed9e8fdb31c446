"""InfMemoryGPT2CausalLM on a tiny random GPT-2 saved as a local preset."""

import doctest

import keras
import keras_hub
import numpy as np
import pytest

from keras_infmemory import StickyMemorySampler, plotting
from keras_infmemory.data.documents import DocumentBlocks
from keras_infmemory.models import gpt2 as gpt2_module
from keras_infmemory.models.gpt2 import (
    InfMemoryGPT2Backbone,
    InfMemoryGPT2CausalLM,
    MemoryAdamW,
    attach_memory,
)
from keras_infmemory.plotting import density_map, plot_memory_attention
from tests.testing import to_numpy

BLOCK = 8
LTM = {"num_basis": 16, "num_samples": 16, "basis_widths": (0.05, 0.1)}
CHARS = "abcdefghijklmnopqrstuvwxyz"


def tiny_tokenizer():
    vocab = {"<|endoftext|>": 0}
    for token in list(CHARS) + ["Ġ" + c for c in CHARS] + ["Ġ", "."]:
        vocab[token] = len(vocab)
    merges = ["Ġ " + c for c in CHARS]
    return keras_hub.models.GPT2Tokenizer(vocabulary=vocab, merges=merges)


@pytest.fixture(scope="module")
def preset(tmp_path_factory):
    """A tiny random GPT-2 (2 layers, hidden 16) saved with save_to_preset."""
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
        tokenizer, sequence_length=16
    )
    gpt2 = keras_hub.models.GPT2CausalLM(backbone, preprocessor)
    path = str(tmp_path_factory.mktemp("gpt2") / "tiny_gpt2")
    gpt2.save_to_preset(path)
    return path


@pytest.fixture(scope="module")
def gpt2(preset):
    return keras_hub.models.GPT2CausalLM.from_preset(preset)


@pytest.fixture(scope="module")
def model(preset):
    keras.utils.set_random_seed(1)
    return InfMemoryGPT2CausalLM.from_preset(
        preset, block_size=BLOCK, memory_options=LTM
    )


def tokens(batch=2, length=3 * BLOCK, seed=0):
    ids = np.random.default_rng(seed).integers(1, 55, size=(batch, length))
    ids = ids.astype("int32")
    return {"token_ids": ids, "padding_mask": np.ones_like(ids)}


def test_layout_and_weights(model, gpt2):
    """GPT-2's weights are untouched; each layer adds one LTM (7 weights)."""
    assert isinstance(model, keras_hub.models.GPT2CausalLM)
    assert isinstance(model.backbone, InfMemoryGPT2Backbone)
    extra = len(model.backbone.weights) - len(gpt2.backbone.weights)
    assert extra == 2 * 7
    mine = {v.path: v for v in model.backbone.weights}
    for variable in gpt2.backbone.weights:
        np.testing.assert_array_equal(
            to_numpy(mine[variable.path]), to_numpy(variable)
        )
    assert model.backbone.transformer_layers[0].memory.num_basis == 16


def test_empty_memory_equals_gpt2(model, gpt2):
    """Test 1: the first block (empty memory) gives GPT-2's logits."""
    for length in (BLOCK, 5):
        x = tokens(length=length)
        np.testing.assert_allclose(
            to_numpy(model(x)), to_numpy(gpt2(x)), atol=1e-5
        )
    # With a padded row too.
    x = tokens(length=BLOCK)
    x["padding_mask"][0, 5:] = 0
    np.testing.assert_allclose(
        to_numpy(model(x))[:, :5], to_numpy(gpt2(x))[:, :5], atol=1e-5
    )


def test_block_by_block_equals_one_call(model, gpt2):
    """Test 2: carried memory block by block == one call over the blocks."""
    x = tokens()
    whole = to_numpy(model(x))
    memory = model.get_initial_memory(2)
    pieces = []
    for start in range(0, 3 * BLOCK, BLOCK):
        block = {k: v[:, start : start + BLOCK] for k, v in x.items()}
        logits, memory = model.call_with_memory(block, memory)
        pieces.append(to_numpy(logits))
    np.testing.assert_allclose(np.concatenate(pieces, 1), whole, atol=1e-5)
    # Later blocks read the memory: they differ from GPT-2 on the block.
    second = {k: v[:, BLOCK : 2 * BLOCK] for k, v in x.items()}
    assert (
        np.abs(whole[:, BLOCK : 2 * BLOCK] - to_numpy(gpt2(second))).max()
        > 1e-4
    )
    # With the memory switched off, every block is GPT-2 on its own.
    model.memory_enabled = False
    try:
        np.testing.assert_allclose(
            to_numpy(model(x))[:, BLOCK : 2 * BLOCK],
            to_numpy(gpt2(second)),
            atol=1e-5,
        )
    finally:
        model.memory_enabled = True


def test_cached_decoding_matches_forward(model):
    """Test 3: token-by-token cached decoding == uncached forward."""
    x = tokens(length=3 * BLOCK - 3)
    whole = to_numpy(model(x))
    ids = x["token_ids"]
    cache = model.build_generation_cache(2)
    steps = []
    for t in range(ids.shape[1]):
        logits, _, cache = model.call_with_cache(ids[:, t : t + 1], cache, t)
        steps.append(to_numpy(logits))
    np.testing.assert_allclose(np.concatenate(steps, 1), whole, atol=1e-4)
    # A prompt of 1.5 blocks absorbed at once, then decoded token by token.
    cache = model.prefill(ids, model.build_generation_cache(2), 13)
    steps = []
    for t in range(13, ids.shape[1]):
        logits, _, cache = model.call_with_cache(ids[:, t : t + 1], cache, t)
        steps.append(to_numpy(logits))
    np.testing.assert_allclose(
        np.concatenate(steps, 1), whole[:, 13:], atol=1e-4
    )


def test_generate_with_memory(model):
    """Test 3: a two-block prompt; the memory changes what is generated."""
    prompt = tokens(length=4 * BLOCK, seed=3)
    prompt["padding_mask"][:, 2 * BLOCK + 1 :] = 0  # 17-token prompts
    prompt["token_ids"][:, 2 * BLOCK + 1 :] = 0
    preprocessor = model.preprocessor
    model.preprocessor = None
    model.compile(sampler="greedy")
    try:
        with_memory = to_numpy(
            model.generate(prompt, stop_token_ids=None)["token_ids"]
        )
        model.memory_enabled = False
        without = to_numpy(
            model.generate(prompt, stop_token_ids=None)["token_ids"]
        )
    finally:
        model.memory_enabled = True
        model.preprocessor = preprocessor
    np.testing.assert_array_equal(
        with_memory[:, : 2 * BLOCK + 1], prompt["token_ids"][:, : 2 * BLOCK + 1]
    )
    assert (
        with_memory[:, 2 * BLOCK + 1 :] != without[:, 2 * BLOCK + 1 :]
    ).any()
    # Greedy generation agrees with the uncached forward's argmax.
    logits = to_numpy(
        model(
            {
                "token_ids": with_memory,
                "padding_mask": np.ones_like(with_memory),
            }
        )
    )
    np.testing.assert_array_equal(
        logits[:, 2 * BLOCK : -1].argmax(-1), with_memory[:, 2 * BLOCK + 1 :]
    )
    # Strings through the preprocessor work as for GPT-2.
    text = model.generate("ab cd ef gh ij kl", max_length=12)
    assert isinstance(text, str)


def test_fit_two_learning_rates(preset):
    """Test 4: GPT-2 and LTM weights move by their own learning rates."""
    keras.utils.set_random_seed(2)
    model = InfMemoryGPT2CausalLM.from_preset(
        preset, block_size=BLOCK, memory_options=LTM, carry_batch_size=2
    )
    model.preprocessor = None
    assert model.backbone.reset_token_id == 0  # the tokenizer's end token
    rng = np.random.default_rng(0)
    documents = [rng.integers(1, 55, size=n) for n in (30, 20, 12)]
    data = DocumentBlocks(documents, BLOCK, batch_size=2, start_token_id=0)
    x, y, w = data.arrays()
    lr, memory_lr = 1e-3, 1e-2
    model.compile(
        optimizer=MemoryAdamW(
            learning_rate=lr, memory_learning_rate=memory_lr, clipnorm=1.0
        ),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    # Fill the carried memory with the first block of each stream, then
    # one Adam step on the second: every weight moves by about its rate.
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
    # The whole epoch, blocks in order: the memory is carried and reset.
    layer = model.backbone.transformer_layers[0]
    model.reset_memory()
    history = model.fit(
        x, y, sample_weight=w, batch_size=2, shuffle=False, verbose=0
    )
    assert np.isfinite(history.history["loss"]).all()
    assert to_numpy(layer._carry["has_memory"]).all()
    assert np.abs(to_numpy(layer._carry["coefficients"])).max() > 0


def test_carry_equals_explicit_memory(preset):
    """Carry mode: consecutive calls == call_with_memory; resets per row."""
    model = InfMemoryGPT2CausalLM.from_preset(
        preset, block_size=BLOCK, memory_options=LTM, carry_batch_size=2
    )
    x = tokens(length=3 * BLOCK, seed=5)
    x["token_ids"][1, 2 * BLOCK] = 0  # row 1: a document starts at block 2
    memory = model.get_initial_memory(2)
    for start in range(0, 3 * BLOCK, BLOCK):
        block = {k: v[:, start : start + BLOCK] for k, v in x.items()}
        if start == 2 * BLOCK:
            memory = model.reset_memory_state(memory, np.array([False, True]))
        expected, memory = model.call_with_memory(block, memory)
        np.testing.assert_allclose(
            to_numpy(model(block)), to_numpy(expected), atol=1e-5
        )


def test_preset_round_trip(model, tmp_path):
    """Test 5: save_to_preset → from_preset gives identical logits."""
    path = str(tmp_path / "memory_preset")
    model.save_to_preset(path)
    loaded = InfMemoryGPT2CausalLM.from_preset(path)
    assert isinstance(loaded, InfMemoryGPT2CausalLM)
    assert loaded.backbone.get_config() == model.backbone.get_config()
    x = tokens()
    np.testing.assert_allclose(
        to_numpy(loaded(x)), to_numpy(model(x)), atol=1e-6
    )
    # The generic KerasHub entry point finds the memory classes too.
    generic = keras_hub.models.CausalLM.from_preset(path)
    assert isinstance(generic, InfMemoryGPT2CausalLM)


def test_attach_memory_options(gpt2):
    """attach_memory on a model in hand: layers, sticky, errors."""
    model = attach_memory(
        gpt2,
        block_size=BLOCK,
        memory_layers=[1],
        sticky=StickyMemorySampler(mode="quantile"),
        **LTM,
    )
    layers = model.backbone.transformer_layers
    assert not layers[0].has_memory and layers[1].has_memory
    assert layers[1].memory.sticky.mode == "quantile"
    x = tokens()
    whole = to_numpy(model(x))
    memory = model.get_initial_memory(2)
    pieces = []
    for start in range(0, 3 * BLOCK, BLOCK):
        block = {k: v[:, start : start + BLOCK] for k, v in x.items()}
        logits, memory = model.call_with_memory(block, memory)
        pieces.append(to_numpy(logits))
    np.testing.assert_allclose(np.concatenate(pieces, 1), whole, atol=1e-5)
    assert to_numpy(memory[1]["memory"]["histogram"]).sum() > 0
    with pytest.raises(ValueError, match="block_size"):
        attach_memory(gpt2, block_size=64)
    with pytest.raises(ValueError, match="memory_layers"):
        attach_memory(gpt2, memory_layers=[5])
    with pytest.raises(ValueError, match="Unknown"):
        attach_memory(gpt2, colour="red")
    with pytest.raises(ValueError, match="backbone"):
        InfMemoryGPT2CausalLM(gpt2.backbone)


def test_memory_densities(model, tmp_path):
    densities, _ = model.memory_densities(tokens()["token_ids"])
    assert len(densities) == 2 and len(densities[0]) == 2
    mu, variance = (to_numpy(t) for t in densities[0][0])
    assert mu.shape == (2, 2, BLOCK) and (variance > 0).all()
    # The paper's Fig. 4/5 idea: read densities over the memory's time.
    layer_mu = [to_numpy(m)[0] for m, _ in densities[-1]]
    layer_var = [to_numpy(v)[0] for _, v in densities[-1]]
    figure = plot_memory_attention(
        list(zip(layer_mu, layer_var, strict=True)),
        histogram=np.full(128, 1 / 128),
        path=str(tmp_path / "memory.png"),
    )
    assert len(figure.axes) >= 3 and (tmp_path / "memory.png").exists()
    t, density = density_map(layer_mu[0], layer_var[0], num_points=50)
    assert density.shape == (BLOCK, 50) and (density >= 0).all()


def test_docstring_examples():
    finder = doctest.DocTestFinder(exclude_empty=True)
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    for module in (gpt2_module, plotting):
        for test in finder.find(module, module.__name__, globs={}):
            runner.run(test)
    assert runner.failures == 0 and runner.tries > 5


def test_finetune_example_runs(preset, tmp_path):
    """examples/finetune_gpt2.py end to end on the tiny preset (--data)."""
    import importlib.util
    import json
    import os

    path = os.path.join(
        os.path.dirname(__file__), "..", "..", "examples", "finetune_gpt2.py"
    )
    spec = importlib.util.spec_from_file_location("finetune_gpt2", path)
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    rng = np.random.default_rng(0)
    folder = tmp_path / "docs"
    folder.mkdir()
    for i in range(3):
        words = [
            "".join(rng.choice(list(CHARS), size=rng.integers(1, 4)))
            for _ in range(30)
        ]
        (folder / f"doc{i}.txt").write_text(" ".join(words))
    output = tmp_path / "out"
    record = example.main(
        [
            "--data", str(folder), "--preset", preset, "--block-size", "8",
            "--batch-size", "2", "--steps", "3", "--num-basis", "16",
            "--num-samples", "16", "--held-out-fraction", "0.34",
            "--sticky", "--output", str(output),
        ]
    )  # fmt: skip
    saved = json.loads((output / "finetune_gpt2.json").read_text())
    assert saved["perplexity_with_memory"] == record["perplexity_with_memory"]
    assert np.isfinite(saved["perplexity_memory_off"])
    assert (output / "finetune_gpt2.png").exists()
    assert (output / "finetune_gpt2_memory.png").exists()
