"""Grounded dialogue with the document in memory: the model side of the
CMU-DoG recipe (Martins et al. 2022 §4.3; docs/documents.md).

* `resize_vocabulary`: room in the model's embeddings for the recipe's
  special tokens (``<doc>``, ``<eos>``, ``<speaker1>``, ``<speaker2>``),
  which `experiments.tokenizers.add_special_tokens` adds to a byte-pair
  tokenizer (GPT-2's);
* `ReplySampler`: nucleus sampling (top-p 0.9, temperature 1) that cannot
  stop before the first token of a reply (replies of 1–50 tokens);
* `generate_replies`: for each `experiments.data.cmu_dog.ReplyExample`,
  the context before the reply's segment is absorbed into the memory
  (`InfMemoryCausalLM.absorb`), then the reply is generated from the last
  tokens, reading that memory;
* `evaluate_replies`: `generate_replies` scored with
  `experiments.evaluation.dialogue_metrics`.

Imports ``keras_hub`` on use.
"""

import numpy as np
from keras import ops
from keras.utils import Progbar

from experiments.data.cmu_dog import split_context
from experiments.evaluation import dialogue_metrics


def resize_vocabulary(causal_lm, vocabulary_size, seed=0, stddev=0.02):
    """A copy of a KerasHub causal LM with ``vocabulary_size`` embedding rows.

    Every weight is copied; those with a vocabulary axis (the token
    embedding, an untied head) keep their rows and get new ones drawn from
    ``N(0, stddev²)`` (GPT-2's initialisation). Resize a plain model, then
    give it a memory (`keras_infmemory.models.attach_memory`).

    Args:
        causal_lm: a `keras_hub.models.CausalLM` (no memory yet).
        vocabulary_size: int ≥ the current size.
        seed: int, seeds the new rows.
        stddev: float, their standard deviation.

    Returns:
        A causal LM of the same class (same preprocessor).
    """
    from keras_infmemory.models.hub.causal_lm import InfMemoryCausalLM

    if isinstance(causal_lm, InfMemoryCausalLM):
        raise ValueError(
            "Resize the vocabulary of the plain model, then attach the "
            f"memory. Received: {type(causal_lm).__name__}"
        )
    backbone = causal_lm.backbone
    config = backbone.get_config()
    old = int(config["vocabulary_size"])
    if not isinstance(vocabulary_size, int) or vocabulary_size < old:
        raise ValueError(
            f"`vocabulary_size` must be an int ≥ {old}. "
            f"Received: vocabulary_size={vocabulary_size!r}"
        )
    config["vocabulary_size"] = vocabulary_size
    new_backbone = type(backbone).from_config(config)
    by_path = {v.path: v for v in new_backbone.weights}
    rng = np.random.default_rng(seed)
    for variable in backbone.weights:
        target = by_path[variable.path]
        value = ops.convert_to_numpy(variable)
        if tuple(target.shape) != value.shape:
            axis = [
                i
                for i, (a, b) in enumerate(
                    zip(value.shape, target.shape, strict=True)
                )
                if a != b
            ]
            if len(axis) != 1 or value.shape[axis[0]] != old:
                raise ValueError(
                    f"Cannot resize {variable.path!r}: shape {value.shape} "
                    f"-> {tuple(target.shape)}. Received: "
                    f"vocabulary_size={vocabulary_size}"
                )
            extra = list(value.shape)
            extra[axis[0]] = vocabulary_size - old
            new_rows = rng.normal(0.0, stddev, extra).astype(value.dtype)
            value = np.concatenate([value, new_rows], axis=axis[0])
        target.assign(value)
    return type(causal_lm)(
        backbone=new_backbone, preprocessor=causal_lm.preprocessor
    )


def reply_sampler(p=0.9, temperature=1.0, banned_first_ids=(), seed=None):
    """A `ReplySampler` (KerasHub's top-p sampler that never ends a reply
    before its first token); built on use, ``keras_hub`` imported then."""
    import keras_hub

    class ReplySampler(keras_hub.samplers.TopPSampler):
        """Top-p sampling; at each row's first new token the ids in
        ``banned_first_ids`` (the stop tokens) get no probability."""

        def __init__(self, banned_first_ids=(), **kwargs):
            super().__init__(**kwargs)
            self.banned_first_ids = tuple(int(i) for i in banned_first_ids)

        def __call__(
            self, next, prompt, cache=None, index=0, mask=None, **kwargs
        ):
            if mask is None or not self.banned_first_ids:
                return super().__call__(
                    next, prompt, cache, index, mask, **kwargs
                )
            lengths = ops.sum(ops.cast(mask, "int32"), axis=-1)  # (B,)
            banned_ids = ops.convert_to_tensor(self.banned_first_ids, "int32")

            def guarded(prompt, cache, i):
                logits, hidden, cache = next(prompt, cache, i)
                size = logits.shape[-1]
                banned = ops.sum(ops.one_hot(banned_ids, size), axis=0) > 0
                first = ops.equal(lengths, ops.cast(i, "int32"))  # (B,)
                drop = ops.logical_and(first[:, None], banned[None, :])
                logits = ops.where(drop, ops.full_like(logits, -1e9), logits)
                return logits, hidden, cache

            return super().__call__(
                guarded, prompt, cache, index, mask, **kwargs
            )

    return ReplySampler(
        banned_first_ids=banned_first_ids,
        p=p,
        temperature=temperature,
        seed=seed,
    )


def generate_replies(
    model,
    examples,
    tokenizer,
    stop_token_ids,
    max_new_tokens=50,
    batch_size=8,
    sampler=None,
    seed=None,
    progress=False,
):
    """Generates the reply of every example, the context in memory.

    For each `experiments.data.cmu_dog.ReplyExample`, the last
    ``segment_length − max_new_tokens`` tokens of its context are the
    prompt (room is left in its segment for the reply); what comes before
    is cut into segments from the prompt backwards and absorbed into the
    memory (`InfMemoryCausalLM.absorb`). The reply is sampled (default:
    top-p 0.9, temperature 1, `reply_sampler`) until a stop token, at most
    ``max_new_tokens`` and at least 1 token. With ``model.memory_enabled =
    False`` the same code runs with nothing in memory.

    Args:
        model: a KerasHub causal LM with memory.
        examples: list of `experiments.data.cmu_dog.ReplyExample`.
        tokenizer: the tokenizer that decodes the reply.
        stop_token_ids: ids that end a reply (the speaker tags, ``<eos>``).
        max_new_tokens: int, the longest reply.
        batch_size: int, examples per call.
        sampler: a `keras_hub.samplers.Sampler` (default: `reply_sampler`
            with ``stop_token_ids`` banned at the first token).
        seed: int, seeds the default sampler.
        progress: bool, whether a progress bar (`keras.utils.Progbar`,
            updated in place) counts the replies generated.

    Returns:
        The list of replies (text, stripped).
    """
    length = model.backbone.segment_length
    if not isinstance(max_new_tokens, int) or not 0 < max_new_tokens < length:
        raise ValueError(
            "`max_new_tokens` must be an int in [1, segment_length="
            f"{length}). Received: max_new_tokens={max_new_tokens!r}"
        )
    stops = tuple(int(i) for i in stop_token_ids)
    if sampler is None:
        sampler = reply_sampler(banned_first_ids=stops, seed=seed)
    prompt_length = length - max_new_tokens
    saved = (model.sampler, model.preprocessor, model.generate_function)
    model.sampler, model.preprocessor = sampler, None
    model.generate_function = None
    replies = []
    bar = Progbar(len(examples), unit_name="reply") if progress else None
    try:
        for start in range(0, len(examples), batch_size):
            batch = examples[start : start + batch_size]
            replies += _generate_batch(
                model, batch, tokenizer, stops, length, prompt_length,
                max_new_tokens,
            )  # fmt: skip
            if bar is not None:
                bar.update(len(replies))
    finally:
        model.sampler, model.preprocessor, _ = saved
        model.generate_function = None
    return replies


def _generate_batch(
    model, batch, tokenizer, stops, length, prompt_length, max_new_tokens
):
    parts = [split_context(e.context_ids, length, prompt_length) for e in batch]
    absorbed = max((0 if a is None else len(a)) for a, _, _ in parts)
    memory = None
    if absorbed:
        ids = np.zeros((len(batch), absorbed), "int32")
        mask = np.zeros((len(batch), absorbed), "int32")
        for row, (chunks, real, _) in enumerate(parts):
            if chunks is not None:
                ids[row, : len(chunks)] = chunks
                mask[row, : len(chunks)] = real
        memory = model.absorb({"token_ids": ids, "padding_mask": mask})
    # Every call has the shape (B, segment_length): one compiled function.
    ids = np.zeros((len(batch), length), "int32")
    mask = np.zeros((len(batch), length), "int32")
    for row, (_, _, prompt) in enumerate(parts):
        ids[row, : len(prompt)] = prompt
        mask[row, : len(prompt)] = 1
    out = model.generate(
        {"token_ids": ids, "padding_mask": mask},
        stop_token_ids=stops,
        state=memory,
    )
    out = ops.convert_to_numpy(out["token_ids"])
    replies = []
    for row, (_, _, prompt) in enumerate(parts):
        new = [int(t) for t in out[row, len(prompt) :]][:max_new_tokens]
        reply = []
        for token in new:
            if token in stops:
                break
            reply.append(token)
        text = tokenizer.detokenize([reply]) if reply else [""]
        text = text[0] if not isinstance(text, str) else text
        if isinstance(text, bytes):
            text = text.decode("utf-8", errors="replace")
        replies.append(str(ops.convert_to_numpy(text)).strip())
    return replies


def evaluate_replies(
    model, examples, tokenizer, stop_token_ids, wordnet=None, **kwargs
):
    """`generate_replies` scored against the examples' references with
    `experiments.evaluation.dialogue_metrics`.

    Returns ``(scores, replies)``.
    """
    replies = generate_replies(
        model, examples, tokenizer, stop_token_ids, **kwargs
    )
    references = [e.reference for e in examples]
    return dialogue_metrics(replies, references, wordnet=wordnet), replies
