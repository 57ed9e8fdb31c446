"""The KerasHub causal LM families that can carry a memory, and where.

One adapter serves every family (see `keras_infmemory.models.hub`): in each
chosen decoder layer the memory takes the layer's input (the residual
stream, as the authors do for GPT-2), is read by the self-attention's
projected queries (before any rotary embedding: the memory has no token
positions; with grouped-query attention, the query heads), both by default
divided by their root mean square (`decoder_memory.memory_input`), and
its output is added to the self-attention output after its output
projection, before dropout and the residual (docs/math.md §3.5). A family
is therefore named
by three attributes of its decoder layer: the self-attention layer, and in
it the query projection and the output projection. They are the families'
own (private) layer attributes, checked by the tests for the KerasHub
version this library is tested with.
"""

import dataclasses

import keras_hub


@dataclasses.dataclass(frozen=True)
class Family:
    """Where the memory plugs into one KerasHub family.

    Attributes:
        name: the family's short name (``"llama3"``).
        causal_lm: the name of its `keras_hub.models` causal LM class.
        attention: the decoder layer's attribute holding self-attention.
        query: the attention's attribute holding the query projection,
            whose output is ``(B, T, H, d)``.
        output: the attention's attribute holding the output projection.
        positions: for learned positions, the backbone's
            `keras_hub.layers.PositionEmbedding`, as a dotted attribute
            path (a short-term memory places each segment's tokens after
            it, `keras_infmemory.models.hub.short_term`); ``None`` for
            rotary positions, which the attention applies itself.
    """

    name: str
    causal_lm: str
    attention: str
    query: str
    output: str
    positions: str = None

    @property
    def causal_lm_class(self):
        return getattr(keras_hub.models, self.causal_lm)


def _family(name, causal_lm, layout, positions=None):
    return Family(name, causal_lm, *layout, positions=positions)


# Attribute layouts shared by several families.
_HUB_DECODER = ("_self_attention_layer", "_query_dense", "_output_dense")
_GEMMA_DECODER = ("attention", "query_dense", "output_dense")

FAMILIES = {
    family.name: family
    for family in (
        _family("gpt2", "GPT2CausalLM", _HUB_DECODER, "position_embedding"),
        _family(
            "opt",
            "OPTCausalLM",
            _HUB_DECODER,
            "embeddings.position_embedding",
        ),
        _family("llama", "LlamaCausalLM", _HUB_DECODER),
        _family("llama3", "Llama3CausalLM", _HUB_DECODER),
        _family("mistral", "MistralCausalLM", _HUB_DECODER),
        _family("qwen", "QwenCausalLM", _HUB_DECODER),
        _family("qwen3", "Qwen3CausalLM", _HUB_DECODER),
        _family("gemma", "GemmaCausalLM", _GEMMA_DECODER),
        _family("gemma3", "Gemma3CausalLM", _GEMMA_DECODER),
        _family("phi3", "Phi3CausalLM", _GEMMA_DECODER),
    )
}


def supported():
    """The supported causal LM classes, by name, for error messages."""
    return ", ".join(f.causal_lm for f in FAMILIES.values())


def family_of(causal_lm):
    """The `Family` of a causal LM (an instance or a class).

    The nearest class in its hierarchy that is a supported family decides
    (a `Llama3CausalLM` is Llama 3, not Llama).

    Raises:
        ValueError: for any other class, naming the supported ones.
    """
    cls = causal_lm if isinstance(causal_lm, type) else type(causal_lm)
    by_class = {f.causal_lm_class: f for f in FAMILIES.values()}
    for base in cls.__mro__:
        if base in by_class:
            return by_class[base]
    raise ValueError(
        "Memory is available for these KerasHub causal LMs: "
        f"{supported()}. Received: {cls.__name__}"
    )
