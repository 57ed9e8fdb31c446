"""KerasHub causal LMs with an ∞-former memory, one adapter for all families.

`attach_memory` gives a model in hand a memory; `InfMemoryCausalLM.
from_preset` loads a preset and gives it one. Both return the family's
causal LM with memory, a `keras_hub.models.CausalLM`. The pieces, one
concept per file:

* ``families``: the supported families and where the memory plugs in;
* ``decoder_memory``: the decoder layer with memory (taps) and one run;
* ``short_term``: the short-term memory (``stm_length``): each decoder
  layer attends exactly to the tokens before its segment;
* ``backbone``: `InfMemoryBackbone`, the backbone with memory;
* ``causal_lm``: `InfMemoryCausalLM`, calls with a memory state and
  generation;
* ``classes``: the memory classes of every family
  (``InfMemory<Family>Backbone``, ``…CausalLM``,
  ``…CausalLMPreprocessor``, ``…Tokenizer``);
* ``attach``: `attach_memory`, the weight copy and ``from_preset``.
"""

from keras_infmemory.models.hub.attach import attach_memory
from keras_infmemory.models.hub.backbone import InfMemoryBackbone
from keras_infmemory.models.hub.causal_lm import InfMemoryCausalLM
from keras_infmemory.models.hub.classes import (
    CLASSES,
    InfMemoryGemma3Backbone,
    InfMemoryGemma3CausalLM,
    InfMemoryGemma3CausalLMPreprocessor,
    InfMemoryGemma3Tokenizer,
    InfMemoryGemmaBackbone,
    InfMemoryGemmaCausalLM,
    InfMemoryGemmaCausalLMPreprocessor,
    InfMemoryGemmaTokenizer,
    InfMemoryGPT2Backbone,
    InfMemoryGPT2CausalLM,
    InfMemoryGPT2CausalLMPreprocessor,
    InfMemoryGPT2Tokenizer,
    InfMemoryLlama3Backbone,
    InfMemoryLlama3CausalLM,
    InfMemoryLlama3CausalLMPreprocessor,
    InfMemoryLlama3Tokenizer,
    InfMemoryLlamaBackbone,
    InfMemoryLlamaCausalLM,
    InfMemoryLlamaCausalLMPreprocessor,
    InfMemoryLlamaTokenizer,
    InfMemoryMistralBackbone,
    InfMemoryMistralCausalLM,
    InfMemoryMistralCausalLMPreprocessor,
    InfMemoryMistralTokenizer,
    InfMemoryOPTBackbone,
    InfMemoryOPTCausalLM,
    InfMemoryOPTCausalLMPreprocessor,
    InfMemoryOPTTokenizer,
    InfMemoryPhi3Backbone,
    InfMemoryPhi3CausalLM,
    InfMemoryPhi3CausalLMPreprocessor,
    InfMemoryPhi3Tokenizer,
    InfMemoryQwen3Backbone,
    InfMemoryQwen3CausalLM,
    InfMemoryQwen3CausalLMPreprocessor,
    InfMemoryQwen3Tokenizer,
    InfMemoryQwenBackbone,
    InfMemoryQwenCausalLM,
    InfMemoryQwenCausalLMPreprocessor,
    InfMemoryQwenTokenizer,
    MemoryClasses,
    memory_classes,
)
from keras_infmemory.models.hub.families import FAMILIES, Family, family_of

__all__ = [
    "CLASSES",
    "FAMILIES",
    "Family",
    "InfMemoryBackbone",
    "InfMemoryCausalLM",
    "MemoryClasses",
    "attach_memory",
    "family_of",
    "memory_classes",
    "InfMemoryGPT2Backbone",
    "InfMemoryGPT2CausalLM",
    "InfMemoryGPT2CausalLMPreprocessor",
    "InfMemoryGPT2Tokenizer",
    "InfMemoryGemma3Backbone",
    "InfMemoryGemma3CausalLM",
    "InfMemoryGemma3CausalLMPreprocessor",
    "InfMemoryGemma3Tokenizer",
    "InfMemoryGemmaBackbone",
    "InfMemoryGemmaCausalLM",
    "InfMemoryGemmaCausalLMPreprocessor",
    "InfMemoryGemmaTokenizer",
    "InfMemoryLlama3Backbone",
    "InfMemoryLlama3CausalLM",
    "InfMemoryLlama3CausalLMPreprocessor",
    "InfMemoryLlama3Tokenizer",
    "InfMemoryLlamaBackbone",
    "InfMemoryLlamaCausalLM",
    "InfMemoryLlamaCausalLMPreprocessor",
    "InfMemoryLlamaTokenizer",
    "InfMemoryMistralBackbone",
    "InfMemoryMistralCausalLM",
    "InfMemoryMistralCausalLMPreprocessor",
    "InfMemoryMistralTokenizer",
    "InfMemoryOPTBackbone",
    "InfMemoryOPTCausalLM",
    "InfMemoryOPTCausalLMPreprocessor",
    "InfMemoryOPTTokenizer",
    "InfMemoryPhi3Backbone",
    "InfMemoryPhi3CausalLM",
    "InfMemoryPhi3CausalLMPreprocessor",
    "InfMemoryPhi3Tokenizer",
    "InfMemoryQwen3Backbone",
    "InfMemoryQwen3CausalLM",
    "InfMemoryQwen3CausalLMPreprocessor",
    "InfMemoryQwen3Tokenizer",
    "InfMemoryQwenBackbone",
    "InfMemoryQwenCausalLM",
    "InfMemoryQwenCausalLMPreprocessor",
    "InfMemoryQwenTokenizer",
]
