"""Tiny random causal LMs of every supported KerasHub family (no download).

Each has 2 decoder layers, hidden size 16 (Gemma-style families: 4 heads of
size 8, so heads × head size ≠ hidden size) and grouped-query attention
where the family has it; they build in well under a second.
"""

import keras
import keras_hub
import pytest

VOCAB = 48

_COMMON = {"vocabulary_size": VOCAB, "num_layers": 2, "hidden_dim": 16}
_GQA = {"num_query_heads": 4, "num_key_value_heads": 2}
BACKBONES = {
    "gpt2": ("GPT2Backbone", {"num_heads": 2, "max_sequence_length": 32}),
    "opt": ("OPTBackbone", {"num_heads": 2, "max_sequence_length": 32}),
    "llama": ("LlamaBackbone", _GQA),
    "llama3": ("Llama3Backbone", _GQA),
    "mistral": ("MistralBackbone", {**_GQA, "sliding_window": 16}),
    "qwen": ("QwenBackbone", _GQA),
    "qwen3": ("Qwen3Backbone", {**_GQA, "head_dim": 4}),
    "gemma": ("GemmaBackbone", {**_GQA, "head_dim": 8}),
    "gemma3": (
        "Gemma3Backbone",
        {**_GQA, "head_dim": 8, "image_size": 16, "vision_encoder": None},
    ),
    "phi3": ("Phi3Backbone", _GQA),
}
CAUSAL_LMS = {
    "gpt2": "GPT2CausalLM",
    "opt": "OPTCausalLM",
    "llama": "LlamaCausalLM",
    "llama3": "Llama3CausalLM",
    "mistral": "MistralCausalLM",
    "qwen": "QwenCausalLM",
    "qwen3": "Qwen3CausalLM",
    "gemma": "GemmaCausalLM",
    "gemma3": "Gemma3CausalLM",
    "phi3": "Phi3CausalLM",
}


def tiny_backbone(family, seed=0, **overrides):
    """A tiny random backbone of ``family`` (dropout 0)."""
    keras.utils.set_random_seed(seed)
    name, arguments = BACKBONES[family]
    config = {**_COMMON, "intermediate_dim": 32, "dropout": 0.0, **arguments}
    config.update(overrides)
    return getattr(keras_hub.models, name)(**config)


def tiny_causal_lm(family, seed=0, **overrides):
    """The family's causal LM on a tiny backbone, without preprocessor."""
    backbone = tiny_backbone(family, seed=seed, **overrides)
    cls = getattr(keras_hub.models, CAUSAL_LMS[family])
    return cls(backbone=backbone, preprocessor=None)


# GPT-2 (the authors' family) and Llama 3 (grouped-query attention, RoPE)
# run on every backend; the adapter and the memory they share are the same
# code for every family, so each other family's layout is checked on one
# backend, dealt in turn (tests/conftest.py): a third of the time.
EVERY_BACKEND = ("gpt2", "llama3")


def family_params(families):
    """``families``, sorted, as parameters: the `EVERY_BACKEND` ones run on
    every backend, the others each on one (``one_backend(key=family)``)."""
    return [
        name
        if name in EVERY_BACKEND
        else pytest.param(name, marks=pytest.mark.one_backend(key=name))
        for name in sorted(families)
    ]
