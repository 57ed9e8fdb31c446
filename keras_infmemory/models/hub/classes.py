"""The memory classes of every family: thin subclasses of the family's own.

As KerasHub adds a family that differs little from another (``Llama3`` over
``Llama``), each supported family gets four registered subclasses, written
out below:

* ``InfMemory<Family>Backbone`` = `InfMemoryBackbone` + the family backbone;
* ``InfMemory<Family>CausalLM`` = `InfMemoryCausalLM` + the family causal LM;
* ``InfMemory<Family>CausalLMPreprocessor`` and ``InfMemory<Family>
  Tokenizer``: the family's, unchanged, pointing at the memory backbone so
  that KerasHub's ``from_preset`` finds them for a saved memory model.

They are registered for serialization (``package="keras_infmemory"``), so a
preset saved with ``save_to_preset`` loads with KerasHub's own
``from_preset`` (``keras_hub.models.CausalLM.from_preset(path)``) once
`keras_infmemory.models.hub` is imported.
"""

import dataclasses

import keras
import keras_hub

from keras_infmemory.models.hub.backbone import InfMemoryBackbone
from keras_infmemory.models.hub.causal_lm import InfMemoryCausalLM
from keras_infmemory.models.hub.families import FAMILIES, family_of

models = keras_hub.models


@dataclasses.dataclass(frozen=True)
class MemoryClasses:
    """The four memory classes of one family."""

    backbone: type
    causal_lm: type
    preprocessor: type
    tokenizer: type


def _memory_class(role):
    """Registers a family's memory class (``role``: ``"backbone"``,
    ``"causal LM"``, ``"preprocessor"`` or ``"tokenizer"``) and writes its
    docstring from the family class it extends."""

    def decorate(cls):
        base = (
            cls.__mro__[2]
            if role in ("backbone", "causal LM")
            else (cls.__mro__[1])
        )
        cls.__doc__ = (
            f"`keras_hub.models.{base.__name__}` with an ∞-former memory "
            "(see `keras_infmemory.models.hub`)."
        )
        if role == "backbone":
            cls.__doc__ += "\n\n" + InfMemoryBackbone.__doc__
        elif role == "causal LM":
            cls.__doc__ += "\n\n" + InfMemoryCausalLM.__doc__
        return keras.saving.register_keras_serializable(
            package="keras_infmemory"
        )(cls)

    return decorate


# GPT2 ('gpt2')


@_memory_class("backbone")
class InfMemoryGPT2Backbone(InfMemoryBackbone, models.GPT2Backbone):
    family = FAMILIES["gpt2"]


@_memory_class("tokenizer")
class InfMemoryGPT2Tokenizer(models.GPT2Tokenizer):
    backbone_cls = InfMemoryGPT2Backbone


@_memory_class("preprocessor")
class InfMemoryGPT2CausalLMPreprocessor(models.GPT2CausalLMPreprocessor):
    backbone_cls = InfMemoryGPT2Backbone
    tokenizer_cls = InfMemoryGPT2Tokenizer


@_memory_class("causal LM")
class InfMemoryGPT2CausalLM(InfMemoryCausalLM, models.GPT2CausalLM):
    backbone_cls = InfMemoryGPT2Backbone
    preprocessor_cls = InfMemoryGPT2CausalLMPreprocessor


# OPT ('opt')


@_memory_class("backbone")
class InfMemoryOPTBackbone(InfMemoryBackbone, models.OPTBackbone):
    family = FAMILIES["opt"]


@_memory_class("tokenizer")
class InfMemoryOPTTokenizer(models.OPTTokenizer):
    backbone_cls = InfMemoryOPTBackbone


@_memory_class("preprocessor")
class InfMemoryOPTCausalLMPreprocessor(models.OPTCausalLMPreprocessor):
    backbone_cls = InfMemoryOPTBackbone
    tokenizer_cls = InfMemoryOPTTokenizer


@_memory_class("causal LM")
class InfMemoryOPTCausalLM(InfMemoryCausalLM, models.OPTCausalLM):
    backbone_cls = InfMemoryOPTBackbone
    preprocessor_cls = InfMemoryOPTCausalLMPreprocessor


# Llama ('llama')


@_memory_class("backbone")
class InfMemoryLlamaBackbone(InfMemoryBackbone, models.LlamaBackbone):
    family = FAMILIES["llama"]


@_memory_class("tokenizer")
class InfMemoryLlamaTokenizer(models.LlamaTokenizer):
    backbone_cls = InfMemoryLlamaBackbone


@_memory_class("preprocessor")
class InfMemoryLlamaCausalLMPreprocessor(models.LlamaCausalLMPreprocessor):
    backbone_cls = InfMemoryLlamaBackbone
    tokenizer_cls = InfMemoryLlamaTokenizer


@_memory_class("causal LM")
class InfMemoryLlamaCausalLM(InfMemoryCausalLM, models.LlamaCausalLM):
    backbone_cls = InfMemoryLlamaBackbone
    preprocessor_cls = InfMemoryLlamaCausalLMPreprocessor


# Llama3 ('llama3')


@_memory_class("backbone")
class InfMemoryLlama3Backbone(InfMemoryBackbone, models.Llama3Backbone):
    family = FAMILIES["llama3"]


@_memory_class("tokenizer")
class InfMemoryLlama3Tokenizer(models.Llama3Tokenizer):
    backbone_cls = InfMemoryLlama3Backbone


@_memory_class("preprocessor")
class InfMemoryLlama3CausalLMPreprocessor(models.Llama3CausalLMPreprocessor):
    backbone_cls = InfMemoryLlama3Backbone
    tokenizer_cls = InfMemoryLlama3Tokenizer


@_memory_class("causal LM")
class InfMemoryLlama3CausalLM(InfMemoryCausalLM, models.Llama3CausalLM):
    backbone_cls = InfMemoryLlama3Backbone
    preprocessor_cls = InfMemoryLlama3CausalLMPreprocessor


# Mistral ('mistral')


@_memory_class("backbone")
class InfMemoryMistralBackbone(InfMemoryBackbone, models.MistralBackbone):
    family = FAMILIES["mistral"]


@_memory_class("tokenizer")
class InfMemoryMistralTokenizer(models.MistralTokenizer):
    backbone_cls = InfMemoryMistralBackbone


@_memory_class("preprocessor")
class InfMemoryMistralCausalLMPreprocessor(models.MistralCausalLMPreprocessor):
    backbone_cls = InfMemoryMistralBackbone
    tokenizer_cls = InfMemoryMistralTokenizer


@_memory_class("causal LM")
class InfMemoryMistralCausalLM(InfMemoryCausalLM, models.MistralCausalLM):
    backbone_cls = InfMemoryMistralBackbone
    preprocessor_cls = InfMemoryMistralCausalLMPreprocessor


# Qwen ('qwen')


@_memory_class("backbone")
class InfMemoryQwenBackbone(InfMemoryBackbone, models.QwenBackbone):
    family = FAMILIES["qwen"]


@_memory_class("tokenizer")
class InfMemoryQwenTokenizer(models.QwenTokenizer):
    backbone_cls = InfMemoryQwenBackbone


@_memory_class("preprocessor")
class InfMemoryQwenCausalLMPreprocessor(models.QwenCausalLMPreprocessor):
    backbone_cls = InfMemoryQwenBackbone
    tokenizer_cls = InfMemoryQwenTokenizer


@_memory_class("causal LM")
class InfMemoryQwenCausalLM(InfMemoryCausalLM, models.QwenCausalLM):
    backbone_cls = InfMemoryQwenBackbone
    preprocessor_cls = InfMemoryQwenCausalLMPreprocessor


# Qwen3 ('qwen3')


@_memory_class("backbone")
class InfMemoryQwen3Backbone(InfMemoryBackbone, models.Qwen3Backbone):
    family = FAMILIES["qwen3"]


@_memory_class("tokenizer")
class InfMemoryQwen3Tokenizer(models.Qwen3Tokenizer):
    backbone_cls = InfMemoryQwen3Backbone


@_memory_class("preprocessor")
class InfMemoryQwen3CausalLMPreprocessor(models.Qwen3CausalLMPreprocessor):
    backbone_cls = InfMemoryQwen3Backbone
    tokenizer_cls = InfMemoryQwen3Tokenizer


@_memory_class("causal LM")
class InfMemoryQwen3CausalLM(InfMemoryCausalLM, models.Qwen3CausalLM):
    backbone_cls = InfMemoryQwen3Backbone
    preprocessor_cls = InfMemoryQwen3CausalLMPreprocessor


# Gemma ('gemma')


@_memory_class("backbone")
class InfMemoryGemmaBackbone(InfMemoryBackbone, models.GemmaBackbone):
    family = FAMILIES["gemma"]


@_memory_class("tokenizer")
class InfMemoryGemmaTokenizer(models.GemmaTokenizer):
    backbone_cls = InfMemoryGemmaBackbone


@_memory_class("preprocessor")
class InfMemoryGemmaCausalLMPreprocessor(models.GemmaCausalLMPreprocessor):
    backbone_cls = InfMemoryGemmaBackbone
    tokenizer_cls = InfMemoryGemmaTokenizer


@_memory_class("causal LM")
class InfMemoryGemmaCausalLM(InfMemoryCausalLM, models.GemmaCausalLM):
    backbone_cls = InfMemoryGemmaBackbone
    preprocessor_cls = InfMemoryGemmaCausalLMPreprocessor


# Gemma3 ('gemma3')


@_memory_class("backbone")
class InfMemoryGemma3Backbone(InfMemoryBackbone, models.Gemma3Backbone):
    family = FAMILIES["gemma3"]


@_memory_class("tokenizer")
class InfMemoryGemma3Tokenizer(models.Gemma3Tokenizer):
    backbone_cls = InfMemoryGemma3Backbone


@_memory_class("preprocessor")
class InfMemoryGemma3CausalLMPreprocessor(models.Gemma3CausalLMPreprocessor):
    backbone_cls = InfMemoryGemma3Backbone
    tokenizer_cls = InfMemoryGemma3Tokenizer


@_memory_class("causal LM")
class InfMemoryGemma3CausalLM(InfMemoryCausalLM, models.Gemma3CausalLM):
    backbone_cls = InfMemoryGemma3Backbone
    preprocessor_cls = InfMemoryGemma3CausalLMPreprocessor


# Phi3 ('phi3')


@_memory_class("backbone")
class InfMemoryPhi3Backbone(InfMemoryBackbone, models.Phi3Backbone):
    family = FAMILIES["phi3"]


@_memory_class("tokenizer")
class InfMemoryPhi3Tokenizer(models.Phi3Tokenizer):
    backbone_cls = InfMemoryPhi3Backbone


@_memory_class("preprocessor")
class InfMemoryPhi3CausalLMPreprocessor(models.Phi3CausalLMPreprocessor):
    backbone_cls = InfMemoryPhi3Backbone
    tokenizer_cls = InfMemoryPhi3Tokenizer


@_memory_class("causal LM")
class InfMemoryPhi3CausalLM(InfMemoryCausalLM, models.Phi3CausalLM):
    backbone_cls = InfMemoryPhi3Backbone
    preprocessor_cls = InfMemoryPhi3CausalLMPreprocessor


CLASSES = {
    "gpt2": MemoryClasses(
        InfMemoryGPT2Backbone,
        InfMemoryGPT2CausalLM,
        InfMemoryGPT2CausalLMPreprocessor,
        InfMemoryGPT2Tokenizer,
    ),
    "opt": MemoryClasses(
        InfMemoryOPTBackbone,
        InfMemoryOPTCausalLM,
        InfMemoryOPTCausalLMPreprocessor,
        InfMemoryOPTTokenizer,
    ),
    "llama": MemoryClasses(
        InfMemoryLlamaBackbone,
        InfMemoryLlamaCausalLM,
        InfMemoryLlamaCausalLMPreprocessor,
        InfMemoryLlamaTokenizer,
    ),
    "llama3": MemoryClasses(
        InfMemoryLlama3Backbone,
        InfMemoryLlama3CausalLM,
        InfMemoryLlama3CausalLMPreprocessor,
        InfMemoryLlama3Tokenizer,
    ),
    "mistral": MemoryClasses(
        InfMemoryMistralBackbone,
        InfMemoryMistralCausalLM,
        InfMemoryMistralCausalLMPreprocessor,
        InfMemoryMistralTokenizer,
    ),
    "qwen": MemoryClasses(
        InfMemoryQwenBackbone,
        InfMemoryQwenCausalLM,
        InfMemoryQwenCausalLMPreprocessor,
        InfMemoryQwenTokenizer,
    ),
    "qwen3": MemoryClasses(
        InfMemoryQwen3Backbone,
        InfMemoryQwen3CausalLM,
        InfMemoryQwen3CausalLMPreprocessor,
        InfMemoryQwen3Tokenizer,
    ),
    "gemma": MemoryClasses(
        InfMemoryGemmaBackbone,
        InfMemoryGemmaCausalLM,
        InfMemoryGemmaCausalLMPreprocessor,
        InfMemoryGemmaTokenizer,
    ),
    "gemma3": MemoryClasses(
        InfMemoryGemma3Backbone,
        InfMemoryGemma3CausalLM,
        InfMemoryGemma3CausalLMPreprocessor,
        InfMemoryGemma3Tokenizer,
    ),
    "phi3": MemoryClasses(
        InfMemoryPhi3Backbone,
        InfMemoryPhi3CausalLM,
        InfMemoryPhi3CausalLMPreprocessor,
        InfMemoryPhi3Tokenizer,
    ),
}
"""The memory classes of each family, by family name."""


def memory_classes(model_or_family):
    """The `MemoryClasses` of a family: by name (``"llama3"``), or of a
    causal LM (instance or class; a memory model gives its own family)."""
    if isinstance(model_or_family, str):
        if model_or_family not in CLASSES:
            raise ValueError(
                f"`family` must be one of {sorted(CLASSES)}. "
                f"Received: family={model_or_family!r}"
            )
        return CLASSES[model_or_family]
    return CLASSES[family_of(model_or_family).name]
