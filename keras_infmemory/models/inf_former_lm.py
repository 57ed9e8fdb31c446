"""InfFormerLM: a long-sequence language model of InfFormerBlocks."""

import keras
from keras import ops

from keras_infmemory import segments
from keras_infmemory import validation as check
from keras_infmemory.distribution import shard_rows
from keras_infmemory.layers.compressive_memory import CompressiveMemory
from keras_infmemory.layers.inf_former_block import InfFormerBlock
from keras_infmemory.layers.sticky_memory_sampler import StickyMemorySampler
from keras_infmemory.models.memory_model import (
    StatefulMemory,
    TokenDataChecks,
)
from keras_infmemory.models.options import (
    check_memory_options,
    make_ltm,
    serialize_memory_options,
)

ARMS = ("window", "transformer_xl", "inf_former", "sticky", "compressive")

# The "compressive" arm's defaults (this library's choice, with
# ``memory_length`` = the STM length): 4-fold compression by convolution.
COMPRESSIVE_DEFAULTS = {"compression_rate": 4}


@keras.saving.register_keras_serializable(package="keras_infmemory")
class InfFormerLM(TokenDataChecks, StatefulMemory, keras.Model):
    """Token embedding → `InfFormerBlock` × ``num_layers`` → vocabulary head.

    A long sequence is processed in segments of ``segment_length`` tokens,
    each block carrying its short-term memory (the previous ``stm_length``
    block inputs) and, with ``memory_options``, a `ContinuousLTM` per block
    (∞-former, Martins et al. 2022). The paper's baselines are
    configurations of the same code (see `InfFormerLM.arm`):

    * ``"window"``: ``stm_length=0``, no LTM (each segment alone);
    * ``"transformer_xl"``: ``stm_length=segment_length``, no LTM;
    * ``"inf_former"``: STM and LTM;
    * ``"sticky"``: STM and an LTM with sticky memories;
    * ``"compressive"``: the Compressive Transformer (Rae et al. 2020): STM
      and a FIFO of compressed past segments (`CompressiveMemory`).

    Call modes (B: batch, L: segment length, T: sequence length, V: vocab):

    * **Whole sequence**: ``logits = model(token_ids)`` with ``token_ids``
      ``(B, T)``: the model runs segment by segment from an empty memory
      with the state carried (see ``segment_loop``; it compiles on every
      backend; the length may change from call to call). This is the mode
      ``fit`` uses. Truncated back-propagation (``bptt_segments=k``): only
      the last ``k`` segments' outputs carry gradients; earlier segments
      only build the memory. Since both memories are stop-gradient (STM as
      in Transformer-XL, LTM as in docs/math.md §4), no gradient crosses a
      segment boundary through the memory in any case.
    * **Streaming**: ``logits, state = model(token_ids, state)`` with
      ``state`` from `get_initial_state` or the previous call, and an
      optional ``reset_mask`` ``(B,)`` that empties chosen rows first.
    * **Stateful** (``stateful=True``, like ``keras.layers.RNN``): the state
      lives in non-trainable variables of a fixed ``batch_size``; each call
      continues from it and returns the logits; `reset_state` empties it.

    ``token_ids`` may also be a dict with ``"token_ids"`` and optional
    ``"padding_mask"`` (True for real tokens; right padding only, see
    `InfFormerBlock`) and ``"reset_mask"`` (as the argument).

    ``model.memory_enabled = False`` switches every LTM off (same weights:
    the Transformer-XL that the model contains), for ablations.

    Example:

    >>> import numpy as np
    >>> import keras_infmemory
    >>> model = keras_infmemory.models.InfFormerLM.arm(
    ...     "inf_former",
    ...     vocabulary_size=12,
    ...     num_layers=2,
    ...     hidden_dim=16,
    ...     num_heads=2,
    ...     intermediate_dim=32,
    ...     segment_length=8,
    ...     memory_options={"num_basis": 16, "num_samples": 16},
    ... )
    >>> tokens = np.random.randint(0, 12, (2, 32))
    >>> model(tokens).shape  # whole sequence, 4 segments
    (2, 32, 12)
    >>> state = model.get_initial_state(batch_size=2)
    >>> logits, state = model(tokens[:, :8], state)  # streaming
    >>> logits.shape
    (2, 8, 12)

    Args:
        vocabulary_size: int, number of tokens ``V``.
        num_layers: int, number of blocks.
        hidden_dim: int, hidden size ``D``.
        num_heads: int, attention heads per block.
        intermediate_dim: int, feed-forward width.
        segment_length: int, tokens per segment ``L``.
        stm_length: int, STM length (0 or a multiple of ``segment_length``).
            Defaults to ``segment_length``.
        memory_options: ``None`` (no long-term memory) or a dict of
            `ContinuousLTM` arguments other than ``num_heads`` and
            ``key_dim`` (set from the model); each block gets its own LTM.
        compressive_options: ``None`` (no compressed memory) or a dict of
            `CompressiveMemory` arguments; each block gets its own
            compressor (Compressive Transformer).
        dropout: float, dropout rate of the blocks.
        normalize_first: bool, pre-LayerNorm blocks and a final LayerNorm.
        bptt_segments: ``None`` (all segments) or int ≥ 1, the number of
            last segments whose outputs carry gradients.
        stateful: bool, keep the state in variables between calls.
        batch_size: int, the fixed batch size of a stateful model (else
            taken from the first input).
        segment_loop: ``"python"`` (default) or ``"scan"``, how a call on
            several segments iterates. ``"python"`` unrolls the loop over
            the static number of segments; ``"scan"`` traces one segment
            and iterates with ``keras.ops.scan`` (JAX) or
            ``keras.ops.fori_loop`` (TensorFlow; torch always loops in
            Python; see `keras_infmemory.segments.run`). Both give the same
            numbers. ``"scan"`` compiles in about the same time for any
            number of segments but runs each step slower: unrolled is the
            better default for long training runs, ``"scan"`` for many
            segments (docs/performance.md, "The segment loop: unrolled or
            traced").
        **kwargs: base `keras.Model` arguments.
    """

    def __init__(
        self,
        vocabulary_size,
        num_layers,
        hidden_dim,
        num_heads,
        intermediate_dim,
        segment_length,
        stm_length=None,
        memory_options=None,
        dropout=0.0,
        normalize_first=True,
        bptt_segments=None,
        stateful=False,
        batch_size=None,
        segment_loop="python",
        compressive_options=None,
        **kwargs,
    ):
        # No input autocast: under mixed precision Keras would cast the
        # float32 LTM coefficients of an explicit state to the compute dtype
        # at every call. The sublayers cast what they need themselves.
        kwargs.pop("autocast", None)
        super().__init__(autocast=False, **kwargs)
        segments.check_loop(segment_loop)
        for name, value in (
            ("vocabulary_size", vocabulary_size),
            ("num_layers", num_layers),
            ("hidden_dim", hidden_dim),
            ("num_heads", num_heads),
            ("intermediate_dim", intermediate_dim),
            ("segment_length", segment_length),
        ):
            check.check_int(name, value)
        if bptt_segments is not None:
            check.check_int("bptt_segments", bptt_segments)
        if stm_length is None:
            stm_length = segment_length
        check.check_int("stm_length", stm_length, minimum=0)
        check.check_range("dropout", dropout, 0.0, 1.0, low_ok=True)
        if hidden_dim % num_heads:
            raise ValueError(
                "`hidden_dim` must be a multiple of `num_heads`="
                f"{num_heads}. Received: hidden_dim={hidden_dim}"
            )
        memory_options = check_memory_options(memory_options)
        if compressive_options is not None and not isinstance(
            compressive_options, dict
        ):
            raise ValueError(
                "`compressive_options` must be None or a dict of "
                "CompressiveMemory arguments. "
                f"Received: compressive_options={compressive_options!r}"
            )
        self.vocabulary_size = vocabulary_size
        self.num_layers = num_layers
        self.hidden_dim = hidden_dim
        self.num_heads = num_heads
        self.intermediate_dim = intermediate_dim
        self.segment_length = segment_length
        self.stm_length = stm_length
        self.memory_options = memory_options
        self.dropout = dropout
        self.normalize_first = normalize_first
        self.bptt_segments = bptt_segments
        self._init_stateful(stateful, batch_size)
        self.segment_loop = segment_loop
        self.compressive_options = (
            None if compressive_options is None else dict(compressive_options)
        )

        self.embedding = keras.layers.Embedding(
            vocabulary_size, hidden_dim, name="token_embedding"
        )
        self.blocks = []
        for i in range(num_layers):
            ltm = None
            if memory_options is not None:
                ltm = make_ltm(
                    memory_options,
                    num_heads=num_heads,
                    key_dim=hidden_dim // num_heads,
                    name=f"memory_{i}",
                )
            compressor = None
            if compressive_options is not None:
                compressor = CompressiveMemory(
                    name=f"compressor_{i}", **compressive_options
                )
            self.blocks.append(
                InfFormerBlock(
                    num_heads=num_heads,
                    intermediate_dim=intermediate_dim,
                    stm_length=stm_length,
                    ltm=ltm,
                    segment_length=segment_length,
                    dropout=dropout,
                    normalize_first=normalize_first,
                    compressor=compressor,
                    name=f"block_{i}",
                )
            )
        self.final_norm = (
            keras.layers.LayerNormalization(epsilon=1e-5, name="final_norm")
            if normalize_first
            else None
        )
        self.head = keras.layers.Dense(vocabulary_size, name="head")

    @classmethod
    def arm(
        cls,
        arm,
        segment_length,
        memory_options=None,
        compressive_options=None,
        **kwargs,
    ):
        """One of the paper's configurations, by name (see `ARMS`).

        ``memory_options`` tunes the LTM of ``"inf_former"`` and
        ``"sticky"`` (``"sticky"`` adds a quantile `StickyMemorySampler`
        unless one is given); ``compressive_options`` the compressor of
        ``"compressive"`` (default: rate 4, as many compressed vectors as
        the STM holds, convolution, no reconstruction loss); each is
        ignored by the other arms. The other keyword arguments go to the
        constructor.
        """
        if arm not in ARMS:
            raise ValueError(f"`arm` must be one of {ARMS}. Received: {arm=}")
        memory_options = dict(memory_options or {})
        if arm == "sticky":
            memory_options.setdefault(
                "sticky", StickyMemorySampler(mode="quantile")
            )
        else:
            memory_options.pop("sticky", None)
        has_ltm = arm in ("inf_former", "sticky")
        stm_length = 0 if arm == "window" else segment_length
        if arm == "compressive":
            compressive_options = {
                **COMPRESSIVE_DEFAULTS,
                "memory_length": stm_length,
                **dict(compressive_options or {}),
            }
        else:
            compressive_options = None
        return cls(
            segment_length=segment_length,
            stm_length=stm_length,
            memory_options=memory_options if has_ltm else None,
            compressive_options=compressive_options,
            **kwargs,
        )

    def _memories(self):
        """The blocks' LTMs (`StatefulMemory`)."""
        return [block.ltm for block in self.blocks]

    def _token_vocabulary_size(self):
        """`TokenDataChecks`: the ids the embedding holds."""
        return self.vocabulary_size

    # ------------------------------------------------------------------ #
    # Weights and state
    # ------------------------------------------------------------------ #

    def build(self, input_shape=None):
        if isinstance(input_shape, dict):
            input_shape = input_shape["token_ids"]
        input_shape = tuple(input_shape or (None, None))
        hidden_shape = (None, None, self.hidden_dim)
        for layer, shape in (
            (self.embedding, input_shape),
            *((block, hidden_shape) for block in self.blocks),
            (self.final_norm, hidden_shape),
            (self.head, hidden_shape),
        ):
            if layer is not None and not layer.built:
                layer.build(shape)
        if self.stateful and self._state_holder is None:
            self._make_state_holder(self.batch_size or input_shape[0])
        self.built = True

    def get_initial_state(self, batch_size):
        """An empty memory: a list with one `InfFormerBlock` state per block."""
        for block in self.blocks:
            if not block.built:
                block.build((None, None, self.hidden_dim))
        return [block.get_initial_state(batch_size) for block in self.blocks]

    # ------------------------------------------------------------------ #
    # Call
    # ------------------------------------------------------------------ #

    def call(
        self,
        token_ids,
        state=None,
        reset_mask=None,
        padding_mask=None,
        training=None,
    ):
        if isinstance(token_ids, dict):
            padding_mask = token_ids.get("padding_mask", padding_mask)
            reset_mask = token_ids.get("reset_mask", reset_mask)
            token_ids = token_ids["token_ids"]
        self._check_inputs(token_ids, state, reset_mask, padding_mask)
        if state is None and reset_mask is not None and not self.stateful:
            raise ValueError(
                "`reset_mask` needs a `state` (streaming mode). "
                "Received: state=None"
            )
        explicit = state is not None
        state, starts_empty = self._call_state(state, token_ids)
        logits, state = self._run(
            token_ids,
            state,
            reset_mask,
            padding_mask,
            training,
            starts_empty=starts_empty,
        )
        self._keep_state(state)
        return (logits, state) if explicit else logits

    def _check_inputs(self, token_ids, state, reset_mask, padding_mask):
        """Static shapes always; token values in eager mode."""
        check.check_shape(
            "token_ids", token_ids, (None, None), "(batch, length)"
        )
        check.check_not_empty("token_ids", token_ids, 1, "token")
        check.check_token_ids("token_ids", token_ids, self.vocabulary_size)
        shape = check.shape_of(token_ids)
        if padding_mask is not None:
            check.check_padding_mask("padding_mask", padding_mask, token_ids)
        if self.stateful:
            batch = self.batch_size
        elif state is not None:
            if not isinstance(state, (list, tuple)) or len(state) != len(
                self.blocks
            ):
                raise ValueError(
                    f"`state` must be a list of {len(self.blocks)} block "
                    "states, as returned by get_initial_state(). "
                    f"Received: state of type {type(state).__name__}"
                )
            batch = self.blocks[0]._check_state(state[0])
            check.check_batch("token_ids", token_ids, batch, "`state`")
        else:
            batch = shape[0]
        if reset_mask is not None:
            check.check_shape("reset_mask", reset_mask, (batch,), "(batch,)")

    def _run(
        self,
        token_ids,
        state,
        reset_mask,
        padding_mask,
        training,
        starts_empty=False,
        record=False,
    ):
        """Runs ``(B, T)`` tokens segment by segment, carrying ``state``;
        ``starts_empty``: ``state`` is `get_initial_state`'s, so the first
        segment skips the memories' work (`InfFormerBlock`'s
        ``starts_empty``). Returns ``(logits, state)``; with ``record``,
        ``((logits, densities), state)``, the densities of each LTM's reads
        by token (see `memory_densities`)."""
        if reset_mask is not None:
            state = [
                block.reset_rows(block_state, reset_mask)
                for block, block_state in zip(self.blocks, state, strict=True)
            ]
        length, total = self.segment_length, ops.shape(token_ids)[1]
        token_ids, mask, num_segments = segments.pad_to_segments(
            token_ids, length, padding_mask
        )
        first_tracked = 0
        if self.bptt_segments is not None:
            first_tracked = num_segments - self.bptt_segments

        def step(index, segment, block_states):
            return self._segment(
                segment[0],
                block_states,
                segment[1],
                training,
                segments.finds_empty(index, starts_empty),
                record,
            )

        logits, state = segments.run(
            step,
            state,
            [
                segments.by_segment(token_ids, length),
                segments.by_segment(mask, length),
            ],
            layer=self,
            loop=self.segment_loop,
            first_tracked=first_tracked,
        )  # (S, B, L, V)
        if record:
            logits, densities = logits
            densities = [
                segments.densities_by_token(density, total)
                for density in densities
            ]
            logits = segments.from_segments(logits)[:, :total]
            return (logits, densities), shard_rows(state)
        logits = segments.from_segments(logits)[:, :total]  # (B, T, V)
        return logits, shard_rows(state)

    def _segment(
        self,
        token_ids,
        state,
        padding_mask,
        training,
        starts_empty=False,
        record=False,
    ):
        """One segment through the stack: ``(B, L)`` → ``(B, L, V)``; with
        ``record``, ``((logits, densities), state)``, where each LTM's reads
        looked (`InfFormerBlock`'s ``record``)."""
        x = self.embedding(token_ids)  # (B, L, D)
        new_state, densities = [], []
        for block, block_state in zip(self.blocks, state, strict=True):
            if record:
                x, block_state, density = block._step(
                    x, block_state, padding_mask, training, starts_empty, True
                )
                if density is not None:
                    densities.append(density)
            else:
                x, block_state = block(
                    x,
                    block_state,
                    padding_mask=padding_mask,
                    training=training,
                    starts_empty=starts_empty,
                )
            new_state.append(block_state)
        if self.final_norm is not None:
            x = self.final_norm(x)
        logits = ops.cast(self.head(x), "float32")  # (B, L, V)
        if record:
            return (logits, densities), new_state
        return logits, new_state

    def memory_densities(self, token_ids, state=None, padding_mask=None):
        """Where each LTM's reads look, token by token.

        Runs ``token_ids`` ``(B, T)`` (or a dict of ``"token_ids"`` and
        ``"padding_mask"``) as a call does, from an empty memory or from
        ``state`` (a stateful model's stored state is neither read nor
        changed), and returns, per block with an LTM, a dict of
        ``"mu"`` and ``"variance"`` ``(B, H, T)``, the Gaussian density of
        each token's read of each head over the memory's time axis (0: the
        oldest, 1: the latest segment), and ``"has_memory"`` ``(B, T)``,
        whether that read found anything. Also returns the new state:
        ``(densities, state)``. (The KerasHub models have the same method:
        `InfMemoryCausalLM.memory_densities`.)
        """
        if isinstance(token_ids, dict):
            padding_mask = token_ids.get("padding_mask", padding_mask)
            token_ids = token_ids["token_ids"]
        check.check_shape(
            "token_ids", token_ids, (None, None), "(batch, length)"
        )
        state, _ = self._state_or_empty(state, token_ids)
        (_, densities), state = self._run(
            token_ids, state, None, padding_mask, False, record=True
        )
        return densities, state

    def compute_output_spec(
        self,
        token_ids,
        state=None,
        reset_mask=None,
        padding_mask=None,
        training=None,
    ):
        if isinstance(token_ids, dict):
            token_ids = token_ids["token_ids"]
        logits = keras.KerasTensor(
            tuple(token_ids.shape) + (self.vocabulary_size,), "float32"
        )
        if state is None or self.stateful:
            return logits
        new_state = keras.tree.map_structure(
            lambda v: keras.KerasTensor(v.shape, dtype=v.dtype), state
        )
        return logits, new_state

    def get_config(self):
        config = super().get_config()
        config.pop("autocast", None)
        config.update(
            {
                "vocabulary_size": self.vocabulary_size,
                "num_layers": self.num_layers,
                "hidden_dim": self.hidden_dim,
                "num_heads": self.num_heads,
                "intermediate_dim": self.intermediate_dim,
                "segment_length": self.segment_length,
                "stm_length": self.stm_length,
                "memory_options": serialize_memory_options(self.memory_options),
                "dropout": self.dropout,
                "normalize_first": self.normalize_first,
                "bptt_segments": self.bptt_segments,
                "stateful": self.stateful,
                "batch_size": self.batch_size,
                "segment_loop": self.segment_loop,
                "compressive_options": self.compressive_options,
            }
        )
        return config
