"""The backbone with memory: a KerasHub backbone plus one LTM per layer.

`InfMemoryBackbone` is mixed into a family's own backbone class (see
`keras_infmemory.models.hub.classes`): its constructor calls the family's
constructor unchanged, then gives each chosen decoder layer a
`ContinuousLTM` (taps, see `decoder_memory`). Text runs in segments of
``segment_length`` tokens, each seen by the family's code as a sequence of
its own (positions restart at 0, as in the paper's GPT-2 setting,
docs/math.md §6): a call on ``T`` tokens runs the family's code once on a
batch of ``B·S`` segment rows, while each memory steps through the ``S``
segments of every row in order, so segment ``s`` reads a memory of
segments ``< s``. With an empty memory a segment's output is the family's,
exactly.

With a short-term memory (``stm_length > 0``, `short_term`) each decoder
layer also attends exactly to the ``stm_length`` tokens before the segment,
and the long-term memory receives tokens as they leave the STM.
"""

import contextlib

from keras import ops

from keras_infmemory import segments
from keras_infmemory import validation as check
from keras_infmemory.distribution import shard_rows
from keras_infmemory.layers import segment_memory
from keras_infmemory.models.hub import decoder_memory, short_term
from keras_infmemory.models.memory_model import MemorySwitch
from keras_infmemory.models.options import (
    check_memory_options,
    make_ltm,
    serialize_memory_options,
)

# Where a model-parallel layout shards each LTM weight (JAX, see
# `InfMemoryBackbone.get_layout_map`): K, V and O like the attention's own
# projections, along the heads; the rest (N-vectors, the gate) replicated.
LTM_LAYOUT = {
    "key_kernel": (None, "model"),
    "value_kernel": (None, "model"),
    "output_kernel": ("model", None),
    "mu_kernel": (None,),
    "sigma_kernel": (None,),
    "gate_kernel": (None, None, None),
    "gate_bias": (None,),
}


class InfMemoryBackbone(MemorySwitch):
    """A KerasHub backbone whose decoder layers carry a long-term memory.

    Mixed into a family's backbone (``InfMemoryLlama3Backbone`` is
    ``InfMemoryBackbone`` + `keras_hub.models.Llama3Backbone`); build one with
    `keras_infmemory.models.attach_memory` or ``from_preset``.

    Args:
        *args: the family backbone's positional arguments.
        segment_length: int, tokens per segment ``L``. Defaults to 512 (the
            paper's), capped at the family's ``max_sequence_length``.
        memory_layers: ``None`` (every decoder layer) or a list of layer
            indices that get a memory.
        memory_options: dict of `ContinuousLTM` arguments; ``None`` or
            ``{}`` gives the authors' GPT-2 settings (N 512, widths
            {0.005, 0.01}, λ 0.5, τ 0.5, M 512, conv gate, KL 1e-6).
        segment_loop: ``"python"`` or ``"scan"``, how each memory steps
            through the segments of a call (see
            `keras_infmemory.segments.run`).
        stm_length: int ≥ 0, the short-term memory ``S``: how many tokens
            before a segment its decoder layers attend to exactly
            (`keras_infmemory.models.hub.short_term`). 0 (the default)
            gives segments that see earlier text only through the LTM.
            With learned positions ``segment_length + stm_length`` must
            fit in ``max_sequence_length``.
        normalize_memory: bool, whether each memory writes the decoder
            layer's input (the residual stream, before the layer's norm)
            and is read with the attention's queries divided by their root
            mean square (each token's vector; each head's query), without
            weights (default), or as they are (False: the authors' GPT-2
            code). Why True is the default: the read's density logits are
            bilinear in both (``w_μᵀ B W_K q``, docs/math.md §3); a
            KerasHub model at its family's initial scale (embeddings std
            0.01, kernels 0.02) writes a residual stream of RMS 0.01–0.03
            and reads with queries of RMS 0.16, against about 0.7 and 1 in
            `InfFormerLM`'s second layer, so the density weights'
            gradients start 2,000–4,000 times smaller and the reads never
            learn where to look (`benchmarks/results/recall_probe.md`).
        **kwargs: the family backbone's keyword arguments.
    """

    family = None  # the `Family`, set on each class by `classes`

    def __init__(
        self,
        *args,
        segment_length=None,
        memory_layers=None,
        memory_options=None,
        segment_loop="python",
        normalize_memory=True,
        stm_length=0,
        **kwargs,
    ):
        super().__init__(*args, **kwargs)
        check.check_bool("normalize_memory", normalize_memory)
        stm_length = check.check_int("stm_length", stm_length, minimum=0)
        max_length = getattr(self, "max_sequence_length", None)
        if segment_length is None:
            segment_length = min(512, max_length or 512)
        segment_length = check.check_int("segment_length", segment_length)
        if max_length is not None and segment_length > max_length:
            raise ValueError(
                "`segment_length` must be at most the model's "
                f"max_sequence_length={max_length}. "
                f"Received: segment_length={segment_length}"
            )
        if (
            stm_length
            and self.family.positions is not None
            and max_length is not None
            and segment_length + stm_length > max_length
        ):
            raise ValueError(
                f"{self.family.name} learns its positions up to "
                f"max_sequence_length={max_length}, and a segment sits "
                "after its short-term memory: `segment_length + "
                "stm_length` must be at most that. Received: "
                f"stm_length={stm_length} with "
                f"segment_length={segment_length}"
            )
        if stm_length and getattr(self, "vision_encoder", None) is not None:
            raise ValueError(
                "A short-term memory holds text tokens; a backbone with a "
                "vision encoder interleaves image embeddings, which it "
                "cannot place. Use the text-only model. Received: "
                f"stm_length={stm_length} with a vision encoder"
            )
        num_layers = len(self.transformer_layers)
        if memory_layers is None:
            memory_layers = list(range(num_layers))
        if not isinstance(memory_layers, (list, tuple)) or any(
            isinstance(i, bool)
            or not isinstance(i, int)
            or not 0 <= i
            or i >= num_layers
            for i in memory_layers
        ):
            raise ValueError(
                f"`memory_layers` must be a list of layer indices in [0, "
                f"{num_layers}). Received: memory_layers={memory_layers!r}"
            )
        memory_options = check_memory_options(
            dict(memory_options or {}),
            reserved=("num_heads", "key_dim", "memory_dim", "output_dim"),
        )
        self.segment_length = segment_length
        self.memory_layers = sorted(set(int(i) for i in memory_layers))
        self.memory_options = memory_options
        self.segment_loop = segments.check_loop(segment_loop)
        self.normalize_memory = bool(normalize_memory)
        self.stm_length = int(stm_length)
        self.memory_run = None
        memories = []
        for i in self.memory_layers:
            attention = getattr(
                self.transformer_layers[i], self.family.attention
            )
            query = getattr(attention, self.family.query)
            _, _, heads, head_dim = query.compute_output_shape(
                (None, None, self.hidden_dim)
            )  # (B, T, H, d)
            memories.append(
                make_ltm(
                    memory_options,
                    num_heads=heads,
                    key_dim=head_dim,
                    memory_dim=self.hidden_dim,
                    output_dim=self.hidden_dim,
                    dtype=self.dtype_policy,
                    name=f"memory_{i}",
                )
            )
        self.memories = memories
        for i in range(num_layers):
            decoder_memory.install(self, i, self.family)
        if self.family.positions is not None:
            decoder_memory.install_positions(self, self.family)

    # ------------------------------------------------------------------ #
    # State
    # ------------------------------------------------------------------ #

    def get_initial_state(self, batch_size):
        """An empty memory: one LTM state per memory layer (a list, in the
        order of ``memory_layers``; see
        `keras_infmemory.layers.segment_memory`). With a short-term
        memory, a dict: ``{"stm": …, "ltm": that list}`` (``"stm"``: see
        `keras_infmemory.models.hub.short_term`)."""
        ltm = [
            segment_memory.initial_state(ltm, batch_size, self.segment_length)
            for ltm in self.memories
        ]
        if not self.stm_length:
            return ltm
        stm = short_term.initial_state(
            batch_size,
            self.stm_length,
            len(self.transformer_layers),
            self.hidden_dim,
            self.dtype_policy.compute_dtype,
        )
        return {"stm": stm, "ltm": ltm}

    def reset_rows(self, state, reset_mask):
        """``state`` with the rows where ``reset_mask`` ``(B,)`` is True
        emptied."""
        stm, ltm = self._split_state(state)
        ltm = [
            segment_memory.reset_rows(memory, s, reset_mask)
            for memory, s in zip(self.memories, ltm, strict=True)
        ]
        if stm is None:
            return ltm
        return {"stm": short_term.reset_rows(stm, reset_mask), "ltm": ltm}

    def _split_state(self, state):
        """``(stm state or None, LTM states)``."""
        if self.stm_length:
            return state["stm"], state["ltm"]
        return None, state

    def _memories(self):
        """The LTMs (`MemorySwitch`: ``memory_enabled = False`` gives the
        family's model on each segment alone, same weights)."""
        return self.memories

    def open_run(self, states, **kind):
        """Opens a `decoder_memory.MemoryRun` for one call of the family's
        code; yields it (its ``states`` are the new states after)."""
        return self._running(decoder_memory.MemoryRun(self, states, **kind))

    def open_refill(self, stm_inputs):
        """Opens a `decoder_memory.Refill` for one cached step of the
        family's code that writes the STM's keys and values."""
        return self._running(decoder_memory.Refill(stm_inputs))

    @contextlib.contextmanager
    def _running(self, run):
        previous, self.memory_run = self.memory_run, run
        try:
            yield run
        finally:
            self.memory_run = previous

    def run_segments(
        self,
        function,
        inputs,
        state,
        regularize=True,
        record=False,
        starts_empty=False,
        outputs=True,
    ):
        """Runs ``function`` on ``inputs`` laid out as segment rows.

        Args:
            function: called on a dict like ``inputs`` whose per-token
                tensors are ``(B·S, L, ...)`` segment rows; returns one
                per-token tensor ``(B·S, L, ...)``.
            inputs: dict with ``"token_ids"`` ``(B, T)``, optional
                ``"padding_mask"`` (right padding) and other per-token
                tensors ``(B, T, ...)``.
            state: the memory state before the first segment.
            regularize: add the memories' KL terms (see `MemoryRun`).
            record: keep where the reads looked (`MemoryRun.densities`).
            starts_empty: ``state`` is `get_initial_state`'s: the first segment
                finds every memory empty and skips its write and read
                (`MemoryRun`).
            outputs: False when only the new state is wanted (absorbing
                text): ``function`` is stopped once the last memory layer
                has written (`MemoryRun`), and the output is None.

        Returns:
            ``(output (B, T, ...), run)``: ``run.states`` is the new state.
        """
        length = self.segment_length
        token_ids = inputs["token_ids"]
        if inputs.get("padding_mask") is not None:
            check.check_padding_mask(
                "padding_mask", inputs["padding_mask"], token_ids, length
            )
        batch, total = ops.shape(token_ids)[0], ops.shape(token_ids)[1]
        mask_dtype = getattr(inputs.get("padding_mask"), "dtype", "int32")
        token_ids, mask, _ = segments.pad_to_segments(
            token_ids, length, inputs.get("padding_mask")
        )
        rows = {
            name: segments.to_rows(
                segments.pad_to_segments(value, length)[0], length
            )
            for name, value in inputs.items()
            if name not in ("token_ids", "padding_mask")
        }
        rows["token_ids"] = segments.to_rows(token_ids, length)
        row_mask = segments.to_rows(mask, length)  # (B·S, L)
        # Every row needs a real key: a row of padding attends to its first
        # position (its outputs are dropped and it never reaches memory).
        empty = ops.logical_not(ops.any(row_mask, axis=1, keepdims=True))
        first = ops.arange(length)[None, :] == 0
        attention_mask = ops.logical_or(row_mask, ops.logical_and(empty, first))
        rows["padding_mask"] = ops.cast(attention_mask, mask_dtype)
        stm, state = self._split_state(state)
        layout = None
        if stm is not None:
            layout = short_term.Layout(stm, mask, length)
        with self.open_run(
            state,
            stm=layout,
            stm_inputs=None if stm is None else stm["inputs"],
            mask=segments.by_segment(mask, length),
            regularize=regularize,
            record=record,
            starts_empty=starts_empty,
            outputs=outputs,
        ) as run:
            try:
                output = function(rows)  # (B·S, L, ...)
            except decoder_memory.Absorbed:
                output = None
        if layout is not None:
            run.states = {
                "stm": {"inputs": run.stm_inputs, "mask": layout.mask},
                "ltm": run.states,
            }
        run.states = shard_rows(run.states)
        if not outputs:
            return None, run
        return segments.from_rows(output, batch)[:, :total], run

    # ------------------------------------------------------------------ #
    # Keras
    # ------------------------------------------------------------------ #

    def call(self, inputs, *args, **kwargs):
        """The backbone alone: hidden states ``(B, T, D)`` of ``T`` tokens
        in segments, from an empty memory (the models with memory call it
        segment rows by segment rows inside their own run)."""
        parent = super().call
        if self.memory_run is not None:
            return parent(inputs, *args, **kwargs)
        batch = ops.shape(inputs["token_ids"])[0]
        hidden, _ = self.run_segments(
            lambda rows: parent(rows, *args, **kwargs),
            inputs,
            self.get_initial_state(batch),
            starts_empty=True,
        )
        return hidden

    def enable_lora(self, rank, target_layer_names=None):
        """KerasHub's LoRA (frozen weights, low-rank adapters on the
        attention projections), with the LTM weights left trainable: the
        memory is new and must learn."""
        super().enable_lora(rank, target_layer_names=target_layer_names)
        for ltm in self.memories:
            ltm.trainable = True

    @classmethod
    def get_layout_map(
        cls,
        device_mesh,
        model_parallel_dim_name="model",
        data_parallel_dim_name="batch",
    ):
        """The family's `keras.distribution.LayoutMap` plus the LTM weights
        (`LTM_LAYOUT`: K, V, O sharded along the heads on the model axis,
        the rest replicated). The memory state follows the data, split on
        the batch axis."""
        parent = super().get_layout_map
        layout_map = parent(
            device_mesh,
            model_parallel_dim_name=model_parallel_dim_name,
            data_parallel_dim_name=data_parallel_dim_name,
        )
        for name, axes in LTM_LAYOUT.items():
            axes = tuple(
                model_parallel_dim_name if a == "model" else a for a in axes
            )
            layout_map[rf"memory_\d+/{name}"] = axes
        return layout_map

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "segment_length": self.segment_length,
                "memory_layers": list(self.memory_layers),
                "memory_options": serialize_memory_options(self.memory_options),
                "segment_loop": self.segment_loop,
                "normalize_memory": self.normalize_memory,
                "stm_length": self.stm_length,
            }
        )
        return config

    @classmethod
    def from_config(cls, config):
        # A config saved before `normalize_memory` existed was trained
        # with the residual stream and the queries as they are: it loads
        # that way.
        config = dict(config)
        config.setdefault("normalize_memory", False)
        # One saved before the short-term memory existed has none.
        config.setdefault("stm_length", 0)
        return super().from_config(config)


def memory_backbone_arguments(config):
    """Splits a backbone config into (family arguments, memory arguments)."""
    config = dict(config)
    memory = {
        name: config.pop(name)
        for name in (
            "segment_length",
            "memory_layers",
            "memory_options",
            "segment_loop",
            "normalize_memory",
            "stm_length",
        )
        if name in config
    }
    return config, memory
