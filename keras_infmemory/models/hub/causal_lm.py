"""The causal LM with memory: calls with a memory state, and generation.

`InfMemoryCausalLM` is mixed into a family's own causal LM class (see
`keras_infmemory.models.hub.classes`), whose backbone is the family's
backbone with memory (`InfMemoryBackbone`). Everything the family's code
computes (embeddings, decoder layers, the head, the cached decoding step,
the sampler, ``score``) is the family's own; this mixin lays the tokens out
in segments and carries the memory state around it.

Shape letters: B batch, T tokens, L segment length, V vocabulary.
"""

import inspect

from keras import ops

from keras_infmemory import segments
from keras_infmemory import validation as check
from keras_infmemory.models.hub import short_term
from keras_infmemory.models.memory_model import (
    StatefulMemory,
    TokenDataChecks,
    warn_if_not_finite,
)
from keras_infmemory.state import known_value


class InfMemoryCausalLM(TokenDataChecks, StatefulMemory):
    """A KerasHub causal LM whose decoder layers carry a long-term memory.

    Mixed into a family's causal LM (``InfMemoryLlama3CausalLM`` is
    ``InfMemoryCausalLM`` + `keras_hub.models.Llama3CausalLM`): ``fit``,
    ``evaluate``, ``predict``, ``score``, ``generate`` and
    ``save_to_preset`` work as for the family. Build one with
    `keras_infmemory.models.attach_memory` or ``from_preset``.

    Call modes (``inputs``: a dict with ``"token_ids"`` ``(B, T)`` and
    ``"padding_mask"``, optionally ``"reset_mask"`` ``(B,)``):

    * ``model(inputs)``: ``T`` tokens in ``ceil(T / L)`` segments, the
      memory starting empty and carried from segment to segment; returns
      the logits ``(B, T, V)``. A single segment gives the family's logits.
    * ``model(inputs, state=state)``: starts from ``state`` (from
      `get_initial_state` or a previous call) and returns
      ``(logits, new_state)``, to feed a long text call by call; a call
      starts a new segment. ``reset_mask`` empties chosen rows first.
    * ``stateful=True``: the state lives in variables for batches of
      exactly ``batch_size`` rows, so ``fit`` carries the memory from
      batch to batch (documents fed in order, see
      `keras_infmemory.documents.DocumentBlocks`, whose inputs hold a
      ``"reset_mask"`` where documents start); `reset_state` empties it.

    ``generate()`` keeps the memory in the sampler's cache: a long prompt is
    absorbed segment by segment, then every new token reads the memory and
    each completed segment is written to it. ``memory_enabled = False``
    switches the memory off (same weights: the family's model on each
    segment alone), for ablations. A short-term memory (``stm_length >
    0``, see `InfMemoryBackbone`) rides in every call and in the decoding
    cache alike: greedy ``generate`` gives the tokens the teacher-forced
    call's logits pick. ``generate(..., return_state=True)`` and
    ``score(..., return_state=True)`` also return the memory after the
    text, for the next turn of a conversation.

    Args:
        backbone: a `InfMemoryBackbone` of the family.
        preprocessor: the family's causal LM preprocessor, or ``None``.
        stateful: bool, keep the memory state between calls (above).
        batch_size: int, the batch size of a stateful model.
        **kwargs: the family causal LM's arguments.
    """

    def __init__(
        self,
        backbone,
        preprocessor=None,
        stateful=False,
        batch_size=None,
        **kwargs,
    ):
        from keras_infmemory.models.hub.backbone import InfMemoryBackbone

        if not isinstance(backbone, InfMemoryBackbone):
            raise ValueError(
                "`backbone` must be a backbone with memory; give a plain "
                "model a memory with keras_infmemory.models.attach_memory(). "
                f"Received: backbone={type(backbone).__name__}"
            )
        super().__init__(backbone=backbone, preprocessor=preprocessor, **kwargs)
        self._init_stateful(stateful, batch_size)
        # The state `generate` was given, kept in a plain object (Keras
        # would wrap a list attribute in a tracker).
        self._generation = _GenerationState()
        if stateful:
            self._make_state_holder(batch_size)

    @classmethod
    def from_preset(cls, preset, load_weights=True, **kwargs):
        """Loads a KerasHub causal LM preset and gives it a memory.

        ``preset``: a KerasHub preset name (``"llama3_8b_en"``), a
        ``kaggle://`` / ``hf://`` handle or a local preset folder holding a
        plain model of a supported family (its family picks the class) or
        a saved model with memory (loaded as saved unless memory options
        are given). Memory options (see `attach_memory`) go to
        `attach_memory`, the rest to
        ``keras_hub.models.CausalLM.from_preset``.
        """
        from keras_infmemory.models.hub.attach import from_preset

        return from_preset(cls, preset, load_weights=load_weights, **kwargs)

    # ------------------------------------------------------------------ #
    # Memory state
    # ------------------------------------------------------------------ #

    def get_initial_state(self, batch_size):
        """An empty memory for ``batch_size`` rows (see
        `InfMemoryBackbone.get_initial_state`)."""
        return self.backbone.get_initial_state(batch_size)

    def _memories(self):
        """The backbone's LTMs (`StatefulMemory`: ``memory_enabled = False``
        gives the family's model on each segment alone, same weights)."""
        return self.backbone.memories

    # ------------------------------------------------------------------ #
    # Token ids, checked on the host
    # ------------------------------------------------------------------ #

    def _token_vocabulary_size(self):
        """`TokenDataChecks`: the ids the backbone embeds."""
        return self.backbone.vocabulary_size

    def _checked_data(self, data, packed=False):
        """`TokenDataChecks`: token ids as given are checked; text goes
        through the preprocessor inside KerasHub's data pipeline, where
        its ids cannot be read cheaply, so its tokenizer is checked
        instead."""
        if self.preprocessor is not None:
            self._check_tokenizer()
        return super()._checked_data(data, packed=packed)

    def _check_tokenizer(self):
        """The preprocessor's tokenizer makes no id the backbone cannot
        embed (a tokenizer of another model, or tokens added without
        resizing the embeddings)."""
        tokenizer = getattr(self.preprocessor, "tokenizer", None)
        try:
            size = int(tokenizer.vocabulary_size())
        except Exception:  # no tokenizer, or one without a vocabulary yet
            return
        vocabulary = self.backbone.vocabulary_size
        if size > vocabulary:
            raise ValueError(
                f"The preprocessor's tokenizer makes ids up to {size - 1}, "
                f"but the model embeds ids in [0, vocabulary_size="
                f"{vocabulary}) (a tokenizer of another model, or tokens "
                "added without resizing the embeddings?). Received: "
                f"tokenizer.vocabulary_size()={size} with "
                f"vocabulary_size={vocabulary}"
            )

    # ------------------------------------------------------------------ #
    # Calls
    # ------------------------------------------------------------------ #

    def call(self, inputs, state=None, reset_mask=None, training=None, **kw):
        inputs = dict(inputs)
        reset_mask = inputs.pop("reset_mask", reset_mask)
        token_ids = inputs["token_ids"]
        check.check_shape(
            "token_ids", token_ids, (None, None), "(batch, length)"
        )
        check.check_token_ids(
            "token_ids", token_ids, self.backbone.vocabulary_size
        )
        explicit = state is not None
        state, starts_empty = self._call_state(state, token_ids)
        if reset_mask is not None:
            state = self.backbone.reset_rows(state, reset_mask)
        parent = super().call
        logits, run = self.backbone.run_segments(
            lambda rows: parent(rows, training=training, **kw),
            inputs,
            state,
            starts_empty=starts_empty,
        )  # (B, T, V)
        state = run.states
        self._keep_state(state)
        return (logits, state) if explicit else logits

    def score(
        self,
        token_ids,
        padding_mask=None,
        scoring_mode="logits",
        layer_intercept_fn=None,
        target_ids=None,
        state=None,
        return_state=False,
    ):
        """The family's ``score`` over segments, the memory carried (from
        empty, or from ``state``, e.g. an absorbed document: see `absorb`).
        ``layer_intercept_fn`` sees the activations of segment rows
        ``(B·S, L, D)``. Warns (``RuntimeWarning``) naming the rows whose
        memory holds NaN or inf after the text (see `absorb`).
        ``return_state=True`` returns ``(scores, new_state)``, the memory
        after the text (as `generate`'s)."""
        check.check_bool("return_state", return_state)
        parent = getattr(super(), "score", None)
        if parent is None:
            raise ValueError(
                f"{type(self).__name__}'s KerasHub family has no `score`. "
                f"Received: scoring_mode={scoring_mode!r}"
            )
        check.check_token_ids(
            "token_ids", token_ids, self.backbone.vocabulary_size
        )
        inputs = {"token_ids": token_ids}
        if padding_mask is not None:
            inputs["padding_mask"] = padding_mask
        if target_ids is not None:
            inputs["target_ids"] = target_ids

        def score_rows(rows):
            return parent(
                rows["token_ids"],
                padding_mask=rows["padding_mask"],
                scoring_mode=scoring_mode,
                layer_intercept_fn=layer_intercept_fn,
                target_ids=rows.get("target_ids"),
            )

        state, starts_empty = self._state_or_empty(state, token_ids)
        scores, run = self.backbone.run_segments(
            score_rows,
            inputs,
            state,
            regularize=False,
            starts_empty=starts_empty,
        )
        warn_if_not_finite(run.states, "after `score`")
        return (scores, run.states) if return_state else scores

    def absorb(self, inputs, state=None):
        """Writes a long text into the memory, segment by segment.

        The text runs through the backbone in segments and the memory
        after it is returned; no logits are computed, and the backbone
        stops once its last memory layer has written (without sticky
        memories that layer does not read, and the layers after it do not
        run: docs/performance.md, "Absorbing stops at the last memory").
        Read from the memory with ``generate(prompt, state=...)``,
        ``score(..., state=...)`` or a call with ``state=``: the next text
        starts a new segment, and the
        text's last segment enters the memory when it starts. Absorbing a
        document and then calling on a prompt equals one call over the
        document (padded to whole segments) and the prompt.

        Args:
            inputs: strings (tokenized by the preprocessor, whole: never
                truncated) or a dict of ``"token_ids"`` ``(B, T)`` and
                ``"padding_mask"``: several documents of different lengths
                per batch (right padding).
            state: the memory state to add to (default: an empty one).

        Returns:
            The new memory state (see `get_initial_state`).

        A NaN in a document's input would be read by every later segment of
        its row: rows whose memory holds NaN or inf are named in a
        ``RuntimeWarning`` (``B`` bools copied to the host once per call;
        `keras_infmemory.checkpoint.finite_rows` tells the same).
        """
        if not isinstance(inputs, dict):
            inputs = self._tokenize_whole(inputs)
        inputs = dict(inputs)
        token_ids = ops.convert_to_tensor(inputs["token_ids"])
        check.check_token_ids(
            "token_ids", token_ids, self.backbone.vocabulary_size
        )
        state, starts_empty = self._state_or_empty(state, token_ids)
        _, run = self.backbone.run_segments(
            self.backbone,
            inputs,
            state,
            regularize=False,
            starts_empty=starts_empty,
            outputs=False,
        )
        warn_if_not_finite(run.states, "after `absorb`")
        return run.states

    def _tokenize_whole(self, texts):
        """Strings → right-padded ``token_ids`` and ``padding_mask``."""
        if self.preprocessor is None:
            raise ValueError(
                "Text needs a preprocessor (its tokenizer); pass token ids "
                "instead. Received: preprocessor=None"
            )
        if isinstance(texts, str):
            texts = [texts]
        tokenizer = self.preprocessor.tokenizer
        ids = [
            [int(i) for i in ops.convert_to_numpy(tokenizer(t))] for t in texts
        ]
        length = max(1, max(len(i) for i in ids))
        token_ids = [i + [0] * (length - len(i)) for i in ids]
        mask = [[1] * len(i) + [0] * (length - len(i)) for i in ids]
        return {
            "token_ids": ops.convert_to_tensor(token_ids, "int32"),
            "padding_mask": ops.convert_to_tensor(mask, "int32"),
        }

    def memory_densities(self, inputs, state=None):
        """Where each memory layer's reads look, token by token.

        Runs ``inputs`` (as `call`; from an empty memory, or ``state``)
        without the head and returns, per memory layer (in the order of
        ``backbone.memory_layers``), a dict of NumPy-convertible tensors:
        ``"mu"`` and ``"variance"`` ``(B, H, T)``, the Gaussian density of
        each token's read of each head over the memory's time axis (0: the
        oldest, 1: the latest segment), and ``"has_memory"`` ``(B, T)``,
        whether that read found anything (False in a row's first segment).
        Also returns the new state: ``(densities, state)``.
        """
        inputs = dict(inputs)
        token_ids = inputs["token_ids"]
        check.check_token_ids(
            "token_ids", token_ids, self.backbone.vocabulary_size
        )
        batch, total = ops.shape(token_ids)[0], ops.shape(token_ids)[1]
        if state is None:
            state = self.get_initial_state(batch)
        _, run = self.backbone.run_segments(
            self.backbone, inputs, state, regularize=False, record=True
        )
        densities = [
            segments.densities_by_token(density, total)
            for density in run.densities
        ]
        return densities, run.states

    # ------------------------------------------------------------------ #
    # Generation: the memory rides in the sampler's cache
    # ------------------------------------------------------------------ #

    def call_with_cache(self, token_ids, cache, cache_update_index, **kwargs):
        """One decoding step (KerasHub's signature).

        ``cache`` is ``(key_value_cache, memory_state)``: the family's cache
        of one segment (with a short-term memory, of the STM and one
        segment: `short_term`, "Cached decoding") and the memory state.
        ``token_ids`` ``(B, C)`` sit at ``cache_update_index`` of the whole
        text; at a segment start the previous segment first enters the
        memory (with an STM: the STM, whose oldest tokens enter the LTM as
        the new segment's tokens arrive). Returns ``(logits,
        hidden_states, cache)``.
        """
        if self.backbone.memory_run is not None:
            # The family's `_build_cache` seeding a cache (`_prefill`).
            return super().call_with_cache(
                token_ids, cache, cache_update_index, **kwargs
            )
        key_value, state = cache
        index = ops.cast(cache_update_index, "int32")
        position = ops.mod(index, self.backbone.segment_length)
        # In eager execution (torch) the memory branches and indexes in
        # Python: the position is read once here, not in every layer
        # (`known_value`); compiled, it stays a tensor.
        known = known_value(position, int)
        # A segment starts: what waits enters the memory (a no-op when
        # nothing waits, e.g. at the start of a text).
        if isinstance(known, int):
            write = known == 0
        else:
            write = ops.equal(position, 0)
        return self._decode(token_ids, key_value, state, known, write, **kwargs)

    def _decode(
        self,
        token_ids,
        key_value,
        state,
        position,
        write,
        inputs_mask=None,
        advance=True,
        **kwargs,
    ):
        """The family's cached step on ``token_ids`` ``(B, C)`` at
        ``position`` of their segment, inside a decoding `MemoryRun`;
        ``write``: a segment starts there. With a short-term memory the
        state is `short_term.decoding_state`'s and, when a segment starts
        (and ``advance``), the finished segment first enters the STM and
        the cache's STM slots are rewritten. Returns ``(logits, hidden,
        (key_value, state))``."""
        parent = super().call_with_cache
        stm, ltm = self.backbone._split_state(state)
        if stm is None:
            with self.backbone.open_run(
                ltm, position=position, write=write, inputs_mask=inputs_mask
            ) as run:
                logits, hidden, key_value = parent(
                    token_ids, key_value, position, **kwargs
                )
            return logits, hidden, (key_value, run.states)
        if advance:
            # `apply_if`: compiled, the cache is carried, not copied.
            key_value, stm = segments.apply_if(
                write,
                lambda carry: self._advance(*carry),
                (key_value, stm),
                layer=self.backbone,
            )
        decoding = short_term.Decoding(
            stm, position, token_ids.shape[1], inputs_mask
        )
        with self.backbone.open_run(
            ltm,
            position=position,
            write=write,
            inputs_mask=inputs_mask,
            stm=decoding,
        ) as run:
            logits, hidden, key_value = parent(
                token_ids,
                key_value,
                self.backbone.stm_length + position,
                **kwargs,
            )
        state = {"stm": decoding.new_state(), "ltm": run.states}
        return logits, hidden, (key_value, state)

    def _advance(self, key_value, stm):
        """A segment boundary while decoding: the finished segment enters
        the STM (`short_term.advance`) and the cache's slots ``[0, S)`` are
        rewritten from the new STM."""
        stm = short_term.advance(stm)
        return self._refill(key_value, stm), stm

    def _refill(self, key_value, stm):
        """``key_value`` with slots ``[0, S)`` holding the keys and values
        of the STM ``stm`` (the family's own step, `decoder_memory.Refill`;
        its outputs are not used)."""
        batch = ops.shape(stm["mask"])[0]
        placeholder = ops.zeros((batch, self.backbone.stm_length), "int32")
        with self.backbone.open_refill(stm["inputs"]):
            _, _, key_value = super().call_with_cache(placeholder, key_value, 0)
        return key_value

    def _prefill(self, token_ids, length, state, starts_empty=False):
        """The cache after ``token_ids[:, :length]`` (``length``: an int
        tensor): the segments before the one holding token ``length`` run
        through the backbone (their outputs unused), then the family's
        ``_build_cache`` seeds the cache with that segment's first tokens
        (with a short-term memory: a cache of ``S + L`` slots, the STM's
        written first, then the segment's first tokens as one step).
        ``starts_empty``: ``state`` is the initial one (`MemoryRun`).
        """
        size = self.backbone.segment_length
        batch, total = ops.shape(token_ids)[0], token_ids.shape[1]
        length = ops.cast(length, "int32")
        start = (length // size) * size  # where the last segment starts
        # ``length < total``, so the segments before ``start`` lie within
        # the first ``before`` tokens: the last segment of ``token_ids``
        # (and any wholly after it) is never absorbed here; with every
        # memory off and no STM, nothing is. ``start`` is known only when
        # the code runs, so each of those segments is absorbed under
        # `apply_if`: the ones from ``start`` on (the room left for new
        # tokens) are skipped, not run on padding.
        before = ((total - 1) // size) * size
        stm_length = self.backbone.stm_length
        if not stm_length and not any(
            m.enabled for m in self.backbone.memories
        ):
            before = 0
        for first in range(0, before, size):

            def absorb(state, first=first):
                rows = token_ids[:, first : first + size]
                _, run = self.backbone.run_segments(
                    self.backbone,
                    {"token_ids": rows, "padding_mask": ops.ones_like(rows)},
                    state,
                    regularize=False,
                    starts_empty=starts_empty and first == 0,
                    outputs=False,
                )
                return run.states

            # `apply_if`: a sticky sampler's seed may advance inside.
            state = segments.apply_if(
                ops.less(first, start), absorb, state, layer=self.backbone
            )
        padded = ops.pad(token_ids, ((0, 0), (0, size)))
        segment = ops.slice(padded, [0, start], [batch, size])  # (B, L)
        real = ops.broadcast_to(
            ops.arange(size)[None, :] < length - start, (batch, size)
        )
        position = ops.zeros((), "int32")
        write = ops.ones((), "bool")
        extra = len(inspect.signature(super()._build_cache).parameters) - 1
        if not stm_length:
            with self.backbone.open_run(
                state, position=position, write=write, inputs_mask=real
            ) as run:
                _, key_value = super()._build_cache(segment, *[None] * extra)
            return key_value, run.states
        stm, ltm = self.backbone._split_state(state)
        stm = short_term.decoding_state(stm, size)
        # The family's cache of ``S + L`` slots, the STM's written.
        with self.backbone.open_refill(stm["inputs"]):
            _, key_value = super()._build_cache(
                ops.zeros((batch, stm_length + size), "int32"),
                *[None] * extra,
            )
        _, _, cache = self._decode(
            segment,
            key_value,
            {"stm": stm, "ltm": ltm},
            position,
            write,
            inputs_mask=real,
            advance=False,
        )
        return cache

    def generate(self, inputs, *args, state=None, return_state=False, **kwargs):
        """The family's ``generate`` (same arguments), optionally from a
        memory ``state`` (e.g. an absorbed document, see `absorb`, or a
        previous turn's) instead of an empty one: the prompt starts a new
        segment after it. With a state, ``inputs`` is one batch of as many
        rows as the state. The prompt's token ids are checked on the host
        (with a preprocessor, its tokenizer's vocabulary too), and rows of
        ``state`` that hold NaN or inf are named in a ``RuntimeWarning``
        (see `absorb`).

        ``return_state=True`` returns ``(outputs, new_state)``: the memory
        after the prompt and what was generated (up to and including a
        stop token), ready for the next turn's ``generate`` or ``score``,
        so a conversation goes on over one memory that holds it all
        (docs/documents.md, "A conversation over one memory"). It is the
        state a call over the same text would leave (the text is absorbed
        once more after generating: the sampler keeps no state of its
        own); ``inputs`` must then be one batch.
        """
        check.check_bool("return_state", return_state)
        if self.preprocessor is not None:
            self._check_tokenizer()
        if state is not None:
            warn_if_not_finite(state, "given to `generate`")
        self._generation.state = state
        self._generation.outputs = [] if return_state else None
        try:
            outputs = super().generate(inputs, *args, **kwargs)
            generated = self._generation.outputs
        finally:
            self._generation.state = None
            self._generation.outputs = None
        if not return_state:
            return outputs
        if len(generated) != 1:
            raise ValueError(
                "`return_state=True` needs the prompts in one batch (the "
                "state has one row per prompt). Received: "
                f"{len(generated)} batches"
            )
        text = {
            "token_ids": generated[0]["token_ids"],
            "padding_mask": ops.cast(generated[0]["padding_mask"], "int32"),
        }
        return outputs, self.absorb(text, state=state)

    def make_generate_function(self):
        """The family's compiled generation function, fed the state given
        to `generate` as an input (never baked into the compiled code).
        The prompt's token ids are checked on the host first: the compiled
        function cannot read them without a device sync."""
        if self.generate_function is not None:
            return self.generate_function
        compiled = super().make_generate_function()

        def generate_function(inputs, stop_token_ids=None):
            check.check_token_ids(
                "token_ids",
                ops.convert_to_numpy(inputs["token_ids"]),
                self.backbone.vocabulary_size,
            )
            state = self._generation.state
            if state is not None:
                inputs = dict(inputs, state=state)
            outputs = compiled(inputs, stop_token_ids)
            if self._generation.outputs is not None:
                self._generation.outputs.append(outputs)
            return outputs

        self.generate_function = generate_function
        return generate_function

    def generate_step(self, inputs, stop_token_ids=None):
        """A compilable generation function for one batch, with the memory
        in the cache (the family's sampler and stop tokens; the contrastive
        sampler, which needs every position's hidden states, is not
        supported)."""
        token_ids, padding_mask = inputs["token_ids"], inputs["padding_mask"]
        batch = ops.shape(token_ids)[0]
        index = ops.min(ops.sum(ops.cast(padding_mask, "int32"), axis=-1))
        state, starts_empty = self._state_or_empty(
            inputs.get("state"), token_ids
        )
        # The sampler's first step recomputes token index - 1.
        cache = self._prefill(
            token_ids, index - 1, state, starts_empty=starts_empty
        )

        def next(prompt, cache, index):
            prompt = ops.slice(prompt, [0, index - 1], [batch, 1])
            logits, hidden, cache = self.call_with_cache(
                prompt, cache, index - 1
            )
            return logits[:, 0], hidden[:, 0], cache

        token_ids = self.sampler(
            next=next,
            prompt=token_ids,
            cache=cache,
            index=index,
            mask=padding_mask,
            stop_token_ids=stop_token_ids,
            hidden_states=None,
            model=self,
        )
        return {
            "token_ids": token_ids,
            "padding_mask": _generated_mask(
                token_ids, padding_mask, stop_token_ids
            ),
        }

    def get_config(self):
        config = super().get_config()
        config.update(
            {"stateful": self.stateful, "batch_size": self.batch_size}
        )
        return config


class _GenerationState:
    """Where `generate` leaves its state for the generation function, and
    where that function leaves its outputs for ``return_state``."""

    state = None
    outputs = None


def _generated_mask(token_ids, prompt_mask, stop_token_ids):
    """The prompt and generated tokens up to and including the first stop
    token after the prompt (KerasHub's output convention)."""
    if stop_token_ids is None:
        return ops.ones_like(token_ids, dtype="bool")
    prompt_mask = ops.cast(prompt_mask, "bool")
    stops = ops.convert_to_tensor(list(stop_token_ids), "int32")
    is_stop = ops.any(
        ops.equal(ops.cast(token_ids, "int32")[..., None], stops), axis=-1
    )
    ends = ops.cast(
        ops.logical_and(is_stop, ops.logical_not(prompt_mask)), "int32"
    )
    after = ops.cumsum(ends, axis=-1) - ends  # > 0 after the first stop
    return ops.equal(after, 0)
