"""The decoder layer with memory: taps into a KerasHub decoder, and one run.

A KerasHub backbone is a functional model whose decoder layers are built
and called in its constructor, so a memory cannot be passed in as a
sublayer. Instead, `install` taps three calls of one decoder layer, without
changing its weights, their paths or its code:

* the decoder layer's call: its input (the residual stream) is noted, the
  memory's input; with a short-term memory (`short_term`), every decoder
  layer runs on the segment after its STM;
* the self-attention's query projection: its output, the queries
  ``(B, T, H, d)``, is noted;
* the self-attention's output projection: the memory's output is added to
  it (``Z = Z_T + Z_LTM``, docs/math.md §3.5).

With the backbone's ``normalize_memory`` (the default), what is noted is
divided by its root mean square first: each token's vector of the input,
each head's query (`memory_input`, `memory_query`).

The taps act only inside a `MemoryRun`, which the model with memory opens
around one call of the family's own code (the functional graph, the cached
decoding step or ``score``); outside one they pass through, so the
backbone remains the plain KerasHub model for every other use.

Shape letters: B batch, S segments, L segment length, C tokens of a decoding
step, D hidden size, H query heads, d head size.
"""

import functools
import inspect

from keras import ops

from keras_infmemory import segments
from keras_infmemory.layers import segment_memory


def install(backbone, layer_index, family):
    """Taps decoder layer ``layer_index`` of ``backbone`` (see module): its
    call, and for a memory layer its query and output projections."""
    decoder = backbone.transformer_layers[layer_index]
    parameters = inspect.signature(decoder.call).parameters
    first = next(iter(parameters))
    # The layer's padding mask argument (a key mask, `MemoryRun`).
    mask_name = next(
        (
            n
            for n in ("decoder_padding_mask", "padding_mask")
            if n in parameters
        ),
        None,
    )
    original = decoder.call

    @functools.wraps(original)
    def call(*args, **kwargs):
        run = backbone.memory_run
        if run is None:
            return original(*args, **kwargs)
        if args:
            inputs, rest = args[0], args[1:]
        else:
            inputs, rest = kwargs.pop(first), ()
        return run.decoder_call(
            layer_index,
            inputs,
            kwargs,
            lambda x, keywords: original(x, *rest, **keywords),
            mask_name,
        )

    decoder.call = call
    if layer_index not in backbone.memory_layers:
        return
    attention = getattr(decoder, family.attention, None)
    query = getattr(attention, family.query, None)
    output = getattr(attention, family.output, None)
    if query is None or output is None:
        raise ValueError(
            f"{type(decoder).__name__} has no `{family.attention}."
            f"{family.query}` / `.{family.output}`: this KerasHub version "
            f"lays out the {family.name} decoder differently from the one "
            "keras-infmemory was tested with. Received: "
            f"{type(backbone).__name__}, layer {layer_index}"
        )

    def note_query(result):
        run = backbone.memory_run
        if run is not None:
            run.note_query(layer_index, result)
        return result  # the family's attention gets its own queries

    def add_memory(result):
        run = backbone.memory_run
        if run is None:
            return result
        return run.add_output(layer_index, result)

    _tap(query, after=note_query)
    _tap(output, after=add_memory)


def install_positions(backbone, family):
    """Taps a learned-position family's position embedding: inside a run
    with a short-term memory, each segment's tokens take the positions
    after their STM (`short_term.Layout.positions`)."""
    layer = backbone
    for name in family.positions.split("."):
        layer = getattr(layer, name, None)
    if layer is None:
        raise ValueError(
            f"{type(backbone).__name__} has no `{family.positions}`: this "
            "KerasHub version lays out the positions of the "
            f"{family.name} backbone differently from the one "
            "keras-infmemory was tested with."
        )
    original = layer.call

    @functools.wraps(original)
    def call(*args, **kwargs):
        run = backbone.memory_run
        if run is not None and run.positions is not None:
            kwargs["positions"] = run.positions  # (rows, tokens)
        return original(*args, **kwargs)

    layer.call = call


def memory_input(hidden, normalize=True):
    """What a memory writes of a decoder layer's input ``hidden``
    ``(..., D)``: with ``normalize``, each token's vector divided by its
    root mean square (`rms_normalize`), else ``hidden`` as it is (the
    authors' GPT-2 code)."""
    return rms_normalize(hidden) if normalize else hidden


def memory_query(query, normalize=True):
    """The queries ``(..., H, d)`` a memory is read with: with
    ``normalize``, each head's query divided by its root mean square, else
    the attention's projected queries as they are."""
    return rms_normalize(query) if normalize else query


def rms_normalize(x, epsilon=1e-6):
    """``x / sqrt(mean(x²) + ε)`` over the last axis, in float32 (no
    weights; a zero vector, e.g. padding, stays zero).

    Why the memory's inputs and queries are normalized (docs/causal_lms.md,
    "What is written and read"): the read's density logits are bilinear in
    both (``w_μᵀ B W_K q``, docs/math.md §3). A KerasHub model at its
    family's initial scale writes a residual stream of RMS 0.01–0.03 and
    reads with queries of RMS 0.16 (`InfFormerLM`: about 0.7 and 1), which
    starts the density weights' gradients 2,000–4,000 times smaller; its reads
    then never learn where to look (`benchmarks/results/recall_probe.md`).
    """
    x = ops.cast(x, "float32")
    return x * ops.rsqrt(
        ops.mean(ops.square(x), axis=-1, keepdims=True) + epsilon
    )


def _tap(layer, after):
    """Makes ``layer.call`` return ``after(result)``; the signature Keras
    inspects stays the same."""
    original = layer.call

    @functools.wraps(original)
    def call(*args, **kwargs):
        return after(original(*args, **kwargs))

    layer.call = call


class Absorbed(Exception):
    """Stops the family's code in a run whose outputs are not wanted, once
    its last memory layer has written (`MemoryRun`, ``outputs=False``)."""


class Refill:
    """A run of the family's cached step that only writes the keys and
    values of a short-term memory into cache slots ``[0, S)`` (cached
    decoding, `short_term`): each decoder layer's input is replaced, on
    its first ``S`` tokens, by the layer's STM inputs ``(B, S, D)``; the
    memories neither read nor write, and the outputs are not used.

    Args:
        stm_inputs: per decoder layer, the STM's inputs ``(B, S, D)``.
    """

    positions = None  # the layers' inputs are given: no embedding counts

    def __init__(self, stm_inputs):
        self.stm_inputs = stm_inputs

    def decoder_call(self, layer_index, inputs, keywords, call, mask_name):
        stm = ops.cast(self.stm_inputs[layer_index], inputs.dtype)
        size = stm.shape[1]
        if inputs.shape[1] != size:
            stm = ops.concatenate([stm, inputs[:, size:]], axis=1)
        return call(stm, keywords)

    def note_query(self, layer_index, query):
        pass

    def add_output(self, layer_index, attention_output):
        return attention_output


class MemoryRun:
    """The memory's part of one call of a KerasHub model with memory.

    Two kinds:

    * **segments** (``mask`` given): the family's code runs on a batch of
      segments, one per row ``(B·S, L)``; each memory layer runs the
      write-then-read step over the ``S`` segments of every row in order
      (`keras_infmemory.segments.run`). With a short-term memory
      (``stm``), every decoder layer runs on ``[STM; segment]`` and each
      LTM writes what leaves the STM (`short_term`).
    * **decoding** (``position`` given): the family's cached step runs on
      ``C`` tokens at ``position`` of their segment; a segment starting
      there (``write``) first enters the memory. With a short-term memory
      (``stm``, a `short_term.Decoding`), the cache holds the STM before
      the segment: each layer's input is kept for the STM, each token
      attends to the real STM slots (a key mask) and each LTM is given
      the tokens leaving the STM.

    Args:
        backbone: the backbone with memory.
        states: one state per memory layer (`segment_memory` layout).
        mask: segments: ``(S, B, L)`` bool, the real tokens.
        position: decoding: int tensor, the tokens' place in their segment.
        write: decoding: bool tensor, a segment starts at ``position``.
        inputs_mask: decoding: optional ``(B, C)`` bool, the real tokens.
        regularize: segments: add the reads' KL terms (a training or
            evaluation call; not while generating or scoring).
        record: segments: keep where each read looked (``densities``).
        starts_empty: segments: ``states`` are the initial ones (empty memories,
            nothing waiting), so the first segment skips the memory's work
            (``starts_empty`` of `segment_memory.step`).
        outputs: segments: False when only the new states are wanted
            (absorbing text). The last memory layer then writes without
            reading (`segment_memory.write_step`) as soon as its input
            is known, and `Absorbed` stops the family's code there: that
            layer's attention and read, the layers after it and the head
            would only make outputs. A last memory with sticky memories
            reads (its histogram sums the reads), so it runs in full.
            With a short-term memory every layer's input is kept, so the
            code stops at the last decoder layer instead.
        stm: a `short_term.Layout` (segments) or `short_term.Decoding`
            (decoding), or None (no STM).
        stm_inputs: segments with ``stm``: the STM state's per-layer
            inputs.

    Attributes:
        states: the states, updated by each memory layer as it runs.
        stm_inputs: with ``stm``, the new STM's per-layer inputs, filled
            as each decoder layer runs.
        densities: with ``record``, per memory layer a dict of the reads'
            ``"mu"`` and ``"variance"`` ``(S, B, H, L)`` and
            ``"has_memory"`` ``(S, B)``.
    """

    def __init__(
        self,
        backbone,
        states,
        mask=None,
        position=None,
        write=None,
        inputs_mask=None,
        regularize=True,
        record=False,
        starts_empty=False,
        outputs=True,
        stm=None,
        stm_inputs=None,
    ):
        self.backbone = backbone
        self.regularize = regularize
        self.record = record
        self.starts_empty = starts_empty
        self.densities = [None] * len(states)
        self.states = list(states)
        self.mask = mask
        self.position = position
        self.write = write
        self.inputs_mask = inputs_mask
        self.stm = stm
        self._stm_inputs = stm_inputs
        self.stm_inputs = [None] * len(backbone.transformer_layers)
        # What each LTM writes: the segments' real tokens, or with an STM
        # the real tokens leaving it.
        if stm is None:
            self.write_mask = mask if mask is not None else inputs_mask
        elif mask is not None:
            self.write_mask = stm.leaving
        else:
            self.write_mask = stm.leaving_mask
        self.inputs = {}  # decoder layer index -> the memory's input
        self.queries = {}  # decoder layer index -> its queries
        # Where the family's code may stop (`reached`): the last memory
        # layer, when nothing after its write is wanted (a backbone may
        # have no memory layer at all: a baseline); with an STM, the last
        # decoder layer, once its input is kept.
        self.stop_at = None
        if mask is not None and not outputs and not record:
            sticky = bool(backbone.memories) and (
                backbone.memories[-1].sticky is not None
            )
            if stm is not None:
                last = len(backbone.transformer_layers) - 1
                if not (sticky and backbone.memory_layers[-1] == last):
                    self.stop_at = last
            elif backbone.memories and not sticky:
                self.stop_at = backbone.memory_layers[-1]

    @property
    def positions(self):
        """The tokens' positions for a learned position embedding with an
        STM (after the STM's real tokens), else None (the family's)."""
        return None if self.stm is None else self.stm.positions

    def note_query(self, layer_index, query):
        """Notes a memory layer's queries ``(rows, tokens, H, d)`` (with an
        STM's segment layout, those of the segment)."""
        if self.stm is not None and self.mask is not None:
            query = self.stm.segment(query)  # (B·G, L, H, d)
        self.queries[layer_index] = memory_query(
            query, self.backbone.normalize_memory
        )

    def decoder_call(self, layer_index, inputs, keywords, call, mask_name):
        """Decoder layer ``layer_index`` on ``inputs`` ``(B·S, L, D)``, or
        ``(B, C, D)`` decoding: ``call(x, keywords)`` runs the family's
        layer, ``mask_name`` is its padding mask argument. Notes the
        memory's input; with an STM, runs the layer on ``[STM; segment]``
        and keeps the segment's outputs (decoding: the STM is in the
        cache, masked where empty)."""
        backbone = self.backbone
        has_memory = layer_index in backbone.memory_layers
        if self.stm is None:
            if has_memory:
                self.inputs[layer_index] = memory_input(
                    inputs, backbone.normalize_memory
                )
            self.reached(layer_index)  # may stop the family's code
            return call(inputs, keywords)
        if self.mask is None:  # decoding
            leaving = self.stm.layer(layer_index, inputs)  # (B, C, D)
            if has_memory:
                self.inputs[layer_index] = memory_input(
                    leaving, backbone.normalize_memory
                )
            self._check_stm_keywords(keywords, mask_name, decoding=True)
            keywords = dict(keywords)
            keywords[mask_name] = self.stm.key_mask  # (B, S + L)
            return call(inputs, keywords)
        stm, leaving, self.stm_inputs[layer_index] = self.stm.layer(
            self._stm_inputs[layer_index], inputs
        )
        if has_memory:
            self.inputs[layer_index] = memory_input(
                leaving, backbone.normalize_memory
            )
        self.reached(layer_index)
        self._check_stm_keywords(keywords, mask_name, decoding=False)
        keywords = dict(keywords)
        keywords[mask_name] = self.stm.extend_mask(keywords[mask_name])
        output = call(self.stm.extend(stm, inputs), keywords)
        return self.stm.segment(output)  # (B·S, L, D)

    def _check_stm_keywords(self, keywords, mask_name, decoding):
        """A decoder layer's arguments that a short-term memory can lay
        out: a padding mask (given, except when decoding, where the run
        makes one) and no attention mask or positions of the family's."""
        backbone = self.backbone
        for name in ("decoder_attention_mask", "vision_mask", "positions"):
            if keywords.get(name) is not None:
                raise ValueError(
                    "A short-term memory lays each segment after its STM "
                    f"and cannot place `{name}`. Received: stm_length="
                    f"{backbone.stm_length} with {name} given"
                )
        if mask_name is None or (
            not decoding and keywords.get(mask_name) is None
        ):
            raise ValueError(
                "A short-term memory needs the decoder layer's padding mask "
                "(its empty slots are masked): this KerasHub version calls "
                f"{type(backbone).__name__}'s layers without one. Received: "
                f"stm_length={backbone.stm_length}"
            )

    def reached(self, layer_index):
        """Decoder layer ``layer_index`` starts (its memory's input noted).
        At ``stop_at`` its memory, if any, writes the segments (no read)
        and `Absorbed` stops the family's code."""
        if layer_index != self.stop_at:
            return
        backbone = self.backbone
        if layer_index in backbone.memory_layers:
            slot = backbone.memory_layers.index(layer_index)
            ltm = backbone.memories[slot]
            batch = ops.shape(self.mask)[1]

            def step(index, segment, state):
                x, written, real = segment
                starts_empty = segments.finds_empty(index, self.starts_empty)
                state = segment_memory.write_step(
                    ltm,
                    state,
                    x,
                    written,
                    starts_empty,
                    active=ops.any(real, axis=1),
                )
                return ops.zeros((), "float32"), state

            _, self.states[slot] = segments.run(
                step,
                self.states[slot],
                [
                    segments.rows_to_segments(
                        self.inputs.pop(layer_index), batch
                    ),
                    self.write_mask,
                    self.mask,
                ],
                layer=ltm,
                loop=backbone.segment_loop,
            )
        raise Absorbed()

    def add_output(self, layer_index, attention_output):
        """``attention_output`` + the memory's output for one layer (with
        an STM, placed at the segment's positions of the layer's rows)."""
        backbone = self.backbone
        slot = backbone.memory_layers.index(layer_index)
        ltm = backbone.memories[slot]
        inputs = self.inputs.pop(layer_index, None)
        query = self.queries.pop(layer_index, None)
        if inputs is None or query is None:
            raise ValueError(
                "The memory of decoder layer "
                f"{layer_index} did not see the layer's input and queries "
                "before its attention output: this KerasHub version calls "
                "its layers in another order. Received: "
                f"{type(backbone).__name__}"
            )
        if self.position is not None:
            query_mask = self.inputs_mask
            if query_mask is None and self.stm is not None:
                # Every token is real, not every one leaving the STM.
                query_mask = ops.ones_like(self.write_mask)
            output, self.states[slot] = segment_memory.decode_step(
                ltm,
                query,
                self.states[slot],
                inputs,
                self.position,
                self.write,
                inputs_mask=self.write_mask,
                query_mask=query_mask,
            )  # (B, C, D)
        else:
            batch = ops.shape(self.mask)[1]

            def step(index, segment, state):
                x, q, written, real = segment
                result = segment_memory.step(
                    ltm,
                    q,
                    state,
                    x,
                    written,
                    query_mask=real,
                    active=ops.any(real, axis=1),
                    regularize=self.regularize,
                    return_density=self.record,
                    starts_empty=segments.finds_empty(index, self.starts_empty),
                )
                if self.record:
                    output, state, density = result
                    return (output, density), state
                return result

            output, self.states[slot] = segments.run(
                step,
                self.states[slot],
                [
                    segments.rows_to_segments(inputs, batch),  # (S,B,L,D)
                    segments.rows_to_segments(query, batch),  # (S,B,L,H,d)
                    self.write_mask,  # (S, B, L)
                    self.mask,
                ],
                layer=ltm,
                loop=backbone.segment_loop,
            )  # (S, B, L, D)
            if self.record:
                output, self.densities[slot] = output
            output = segments.segments_to_rows(output)  # (B·S, L, D)
            if self.stm is not None:
                output = self.stm.place(output)  # (B·S, S_stm + L, D)
        return attention_output + ops.cast(output, attention_output.dtype)
