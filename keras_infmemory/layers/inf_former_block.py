"""InfFormerBlock: a transformer block with short- and long-term memory."""

import keras
from keras import ops

from keras_infmemory import segments
from keras_infmemory import validation as check
from keras_infmemory.layers import attention, block_state, segment_memory
from keras_infmemory.layers.compressive_memory import CompressiveMemory
from keras_infmemory.layers.continuous_ltm import ContinuousLTM
from keras_infmemory.state import where_rows


@keras.saving.register_keras_serializable(package="keras_infmemory")
class InfFormerBlock(keras.layers.Layer):
    """Transformer block with a short-term and a continuous long-term memory.

    The ∞-former block (Martins et al. 2022, §3; docs/math.md §6): causal
    multi-head self-attention over ``[STM; segment]``, where the short-term
    memory (STM) holds the block's previous ``stm_length`` inputs
    (stop-gradient, as in Transformer-XL), plus a `ContinuousLTM` read with
    the block's own projected queries, **added** to the attention output
    before dropout and the residual: ``Z = Z_T + Z_LTM``.

    Segment flow. The input is processed in segments of ``segment_length``
    tokens. ``stm_length`` must be 0 or a multiple of ``segment_length``, so
    that exactly one whole segment leaves the STM per step. The LTM absorbs
    the segment that has just left the STM, *then* it is read (write, then
    read: docs/math.md §4): with ``stm_length = segment_length``, segment ``s``
    attends over ``[s−1; s]`` and reads an LTM that has absorbed everything
    up to ``s−2``. With ``stm_length=0`` (GPT-2 style blocks) the LTM absorbs
    the previous segment directly. Every segment enters the LTM exactly once,
    as the raw block inputs (the residual stream, not layer-normed). With
    ``ltm=None`` the block is a plain Transformer-XL block (``stm_length > 0``)
    or a windowed causal block (``stm_length=0``).

    Compressive Transformer. With a `CompressiveMemory` (``compressor=``;
    Rae et al. 2020) the segment leaving the STM is also compressed into a
    FIFO of compressed vectors that attention reads before the STM:
    attention over ``[compressed; STM; segment]``, the compressed vectors
    at relative positions ``−N−S..−S−1`` (one position per vector, as if
    they were part of the sequence). See
    `keras_infmemory.layers.compressive_memory`.

    Positions are relative, with rotary embeddings (RoPE, Su et al. 2021):
    queries sit at ``0..L−1`` and keys at ``−stm_length..L−1`` relative to the
    segment start, and since rotary scores depend only on ``i − j``, attention
    depends only on offsets, never on where a segment starts. The LTM has no
    positions: it receives the un-rotated queries.

    Padding. ``padding_mask`` marks real tokens; padded keys are never
    attended to and padded positions never enter the LTM (the padding
    policy of `keras_infmemory.layers.segment_memory`: a partly padded
    segment is written with its real tokens in place, and a row whose
    segment holds no real token keeps its whole state, STM included).
    Padding is expected at the end of a document (right padding).

    Per-row resets. ``reset_mask`` ``(B,)`` empties the chosen rows' STM and
    LTM before the segment, so documents of different lengths can share a
    batch.

    Call modes:

    * **Streaming**: ``y, state = block(x, state)`` with ``x`` one segment of
      ``segment_length`` tokens; ``state`` comes from `get_initial_state` or
      the previous call.
    * **Sequence**: ``y = block(x)`` with no state. The block splits ``x``
      into segments and runs itself segment by segment from an empty memory,
      returning the whole output, so ``keras.Sequential([Embedding,
      InfFormerBlock, InfFormerBlock, Dense])`` works on long sequences.
      Each block's memory holds that block's own inputs, so running layer by
      layer over the sequence equals running segment by segment through the
      stack. A length that is not a multiple of ``segment_length`` is padded
      internally, and the length may change from call to call (also in a
      TensorFlow graph). ``segment_loop="scan"`` traces the segment loop
      once (see `keras_infmemory.segments.run`).

    Shapes: B batch, L segment length, T sequence length, D hidden size
    (taken from the input), H heads, d = D / H, S = stm_length.

    Example:

    >>> import numpy as np
    >>> import keras_infmemory
    >>> ltm = keras_infmemory.ContinuousLTM(
    ...     num_heads=2, key_dim=8, num_basis=32, num_samples=16
    ... )
    >>> block = keras_infmemory.InfFormerBlock(
    ...     num_heads=2, intermediate_dim=32, stm_length=8, ltm=ltm
    ... )
    >>> x = np.random.rand(3, 40, 16).astype("float32")  # (B, T, D)
    >>> y = block(x)  # sequence mode: 5 segments from an empty memory
    >>> y.shape
    (3, 40, 16)
    >>> state = block.get_initial_state(batch_size=3)
    >>> y, state = block(x[:, :8], state)  # streaming, one segment
    >>> y.shape
    (3, 8, 16)

    Args:
        num_heads: int, number of attention heads ``H``; the hidden size
            must be a multiple of it, with an even head size (rotary).
        intermediate_dim: int, width of the feed-forward layer.
        stm_length: int ≥ 0, number ``S`` of past block inputs kept in the
            short-term memory; 0 or a multiple of ``segment_length``.
        ltm: ``None`` or a `ContinuousLTM` with ``num_heads`` heads of size
            ``d``; ``None`` gives a Transformer-XL block.
        segment_length: int, the segment length ``L``. Defaults to
            ``stm_length`` when that is positive; required when
            ``stm_length=0`` and ``ltm`` is given. With neither, sequence
            mode treats the whole input as one segment.
        dropout: float in [0, 1), dropout rate of attention probabilities,
            the attention output and the feed-forward output.
        normalize_first: bool, pre-LayerNorm (GPT-2) if True, post-LayerNorm
            (original Transformer) if False.
        activation: the feed-forward activation. Defaults to ``"gelu"``.
        layer_norm_epsilon: float, LayerNorm epsilon.
        kernel_initializer: initializer of the projection kernels.
        segment_loop: ``"python"`` (default) or ``"scan"``, how sequence
            mode iterates over segments: unrolled (fastest steps; compile
            time grows with the number of segments) or traced once
            (compile time flat, steps slower; see `InfFormerLM`).
        compressor: ``None`` or a `CompressiveMemory` (Compressive
            Transformer); ``segment_length`` must be a multiple of its
            ``compression_rate``.
        **kwargs: base `keras.layers.Layer` arguments.

    Call arguments:
        inputs: ``(B, L, D)`` one segment (streaming) or ``(B, T, D)`` a whole
            sequence (sequence mode, ``state=None``).
        state: ``None`` or the dict from `get_initial_state` / the previous
            call.
        reset_mask: optional ``(B,)`` bool, rows whose memory is emptied
            before this segment (streaming mode only).
        padding_mask: optional ``(B, L)`` or ``(B, T)`` bool, True for real
            tokens. Defaults to a Keras mask on ``inputs``, if any.
        training: bool, dropout on or off.
        starts_empty: bool, streaming mode: ``state`` is `get_initial_state`'s
            (an empty memory, nothing waiting), so the LTM skips this
            segment's write and read, which would absorb nothing and read
            zeros (same outputs and gradients). For a runner that built the
            state itself (`InfFormerLM`); any other state with
            ``starts_empty=True`` is read as empty. Sequence mode does this
            on its own.

    Returns:
        Streaming: ``(y, new_state)``, ``y`` ``(B, L, D)``. Sequence mode:
        ``y`` ``(B, T, D)``.
    """

    def __init__(
        self,
        num_heads,
        intermediate_dim,
        stm_length=0,
        ltm=None,
        segment_length=None,
        dropout=0.0,
        normalize_first=False,
        activation="gelu",
        layer_norm_epsilon=1e-5,
        kernel_initializer="glorot_uniform",
        segment_loop="python",
        compressor=None,
        **kwargs,
    ):
        # Inputs are cast to the compute dtype in `call`, but the state is
        # not: the LTM state stays float32 under mixed precision.
        kwargs.pop("autocast", None)
        super().__init__(autocast=False, **kwargs)
        num_heads = check.check_int("num_heads", num_heads)
        intermediate_dim = check.check_int("intermediate_dim", intermediate_dim)
        stm_length = check.check_int("stm_length", stm_length, minimum=0)
        if isinstance(ltm, dict):
            ltm = keras.saving.deserialize_keras_object(ltm)
        if ltm is not None and not isinstance(ltm, ContinuousLTM):
            raise ValueError(
                f"`ltm` must be None or a ContinuousLTM. Received: ltm={ltm!r}"
            )
        if isinstance(compressor, dict):
            compressor = keras.saving.deserialize_keras_object(compressor)
        if compressor is not None and not isinstance(
            compressor, CompressiveMemory
        ):
            raise ValueError(
                "`compressor` must be None or a CompressiveMemory. "
                f"Received: compressor={compressor!r}"
            )
        if segment_length is None and stm_length > 0:
            segment_length = stm_length
        if segment_length is None and (
            ltm is not None or compressor is not None
        ):
            raise ValueError(
                "`segment_length` is required when `stm_length=0` and an "
                "`ltm` or a `compressor` is given. "
                f"Received: segment_length={segment_length}"
            )
        if segment_length is not None:
            segment_length = check.check_int("segment_length", segment_length)
            if stm_length % segment_length:
                raise ValueError(
                    "`stm_length` must be 0 or a multiple of "
                    f"`segment_length`={segment_length}. "
                    f"Received: stm_length={stm_length}"
                )
            if compressor is not None:
                compressor.check_segment_length(segment_length)
        segments.check_loop(segment_loop)
        check.check_range("dropout", dropout, 0.0, 1.0, low_ok=True)
        check.check_range("layer_norm_epsilon", layer_norm_epsilon, 0.0, None)
        self.num_heads = num_heads
        self.intermediate_dim = intermediate_dim
        self.stm_length = stm_length
        self.ltm = ltm
        self.segment_length = segment_length
        self.dropout = float(dropout)
        self.normalize_first = bool(normalize_first)
        self.activation = keras.activations.get(activation)
        self.layer_norm_epsilon = float(layer_norm_epsilon)
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.segment_loop = segment_loop
        self.compressor = compressor
        self.supports_masking = True
        self.hidden_dim = None

    # ------------------------------------------------------------------ #
    # Weights
    # ------------------------------------------------------------------ #

    def build(self, input_shape):
        if len(input_shape) != 3:
            raise ValueError(
                "The input must have shape (batch, length, hidden). "
                f"Received: input_shape={tuple(input_shape)}"
            )
        hidden = input_shape[-1]
        if hidden is None or hidden % self.num_heads:
            raise ValueError(
                "The hidden size (last input dimension) must be a multiple "
                f"of `num_heads`={self.num_heads}. "
                f"Received: input_shape={tuple(input_shape)}"
            )
        head_dim = hidden // self.num_heads
        if head_dim % 2:
            raise ValueError(
                "Rotary positions need an even head size "
                f"(hidden size / num_heads). Received: head size {head_dim} "
                f"from input_shape={tuple(input_shape)}"
            )
        if self.ltm is not None and (
            self.ltm.num_heads != self.num_heads or self.ltm.key_dim != head_dim
        ):
            raise ValueError(
                "`ltm` must have the block's heads: num_heads="
                f"{self.num_heads}, key_dim={head_dim}. Received: ltm with "
                f"num_heads={self.ltm.num_heads}, key_dim={self.ltm.key_dim}"
            )
        self.hidden_dim, self.key_dim = hidden, head_dim
        init = self.kernel_initializer.clone
        seq = (None, None, hidden)

        def projection(name):
            layer = keras.layers.EinsumDense(
                "btc,chd->bthd",
                output_shape=(None, self.num_heads, head_dim),
                bias_axes="hd",
                kernel_initializer=init(),
                dtype=self.dtype_policy,
                name=name,
            )
            layer.build(seq)
            return layer

        self.query_dense = projection("query")
        self.key_dense = projection("key")
        self.value_dense = projection("value")
        self.output_dense = keras.layers.EinsumDense(
            "bthd,hdc->btc",
            output_shape=(None, hidden),
            bias_axes="c",
            kernel_initializer=init(),
            dtype=self.dtype_policy,
            name="attention_output",
        )
        self.output_dense.build((None, None, self.num_heads, head_dim))
        self.attention_norm = keras.layers.LayerNormalization(
            epsilon=self.layer_norm_epsilon,
            dtype=self.dtype_policy,
            name="attention_norm",
        )
        self.attention_norm.build(seq)
        self.feedforward_norm = keras.layers.LayerNormalization(
            epsilon=self.layer_norm_epsilon,
            dtype=self.dtype_policy,
            name="feedforward_norm",
        )
        self.feedforward_norm.build(seq)
        self.intermediate_dense = keras.layers.Dense(
            self.intermediate_dim,
            activation=self.activation,
            kernel_initializer=init(),
            dtype=self.dtype_policy,
            name="intermediate",
        )
        self.intermediate_dense.build(seq)
        self.feedforward_output = keras.layers.Dense(
            hidden,
            kernel_initializer=init(),
            dtype=self.dtype_policy,
            name="feedforward_output",
        )
        self.feedforward_output.build((None, None, self.intermediate_dim))
        self.attention_dropout = keras.layers.Dropout(
            self.dropout, dtype=self.dtype_policy, name="attention_dropout"
        )
        self.output_dropout = keras.layers.Dropout(
            self.dropout, dtype=self.dtype_policy, name="output_dropout"
        )
        self.feedforward_dropout = keras.layers.Dropout(
            self.dropout, dtype=self.dtype_policy, name="feedforward_dropout"
        )
        if self.compressor is not None:
            self.compressor.build(seq)
        self.built = True

    # ------------------------------------------------------------------ #
    # State
    # ------------------------------------------------------------------ #

    def get_initial_state(self, batch_size):
        """An empty memory for ``batch_size`` rows.

        Returns a dict with one entry per memory this configuration uses:

        * ``"stm"``: ``{"inputs": (B, S, D), "mask": (B, S)}``, the last
          ``S`` block inputs (oldest first) and which slots hold real
          tokens;
        * ``"ltm"``: the segment that has left the STM and enters the LTM
          at the next call, ``"pending"`` ``(B, L, D)`` float32 and
          ``"pending_mask"`` ``(B, L)``, and ``"memory"``, the
          `ContinuousLTM` state (the layout of
          `keras_infmemory.layers.segment_memory`);
        * ``"compressed"``: the `CompressiveMemory` state (see its
          `get_initial_state`).
        """
        return block_state.initial_state(self, batch_size)

    def reset_rows(self, state, reset_mask):
        """``state`` with the memories of the rows where ``reset_mask``
        ``(B,)`` is True emptied; the other rows unchanged."""
        return block_state.reset_rows(self, state, reset_mask)

    def _check_state(self, state):
        """Checks the keys and shapes of ``state``; returns its batch size."""
        return block_state.check_state(self, state)

    # ------------------------------------------------------------------ #
    # Call
    # ------------------------------------------------------------------ #

    def call(
        self,
        inputs,
        state=None,
        reset_mask=None,
        padding_mask=None,
        training=None,
        mask=None,
        starts_empty=False,
    ):
        if padding_mask is None:
            padding_mask = mask
        check.check_bool("starts_empty", starts_empty)
        check.check_shape(
            "inputs",
            inputs,
            (None, None, self.hidden_dim),
            f"(batch, length, {self.hidden_dim})",
        )
        check.check_not_empty("inputs", inputs, 1, "token")
        check.check_finite("inputs", inputs)
        if padding_mask is not None:
            check.check_shape(
                "padding_mask",
                padding_mask,
                check.shape_of(inputs)[:2],
                "(batch, length), as `inputs`",
            )
        if state is None:
            if reset_mask is not None:
                raise ValueError(
                    "`reset_mask` needs a `state` (streaming mode). "
                    "Received: state=None"
                )
            return self._call_sequence(inputs, padding_mask, training)
        batch = self._check_state(state)
        check.check_batch("inputs", inputs, batch, "`state`")
        length = inputs.shape[1]
        if self.segment_length is not None and length != self.segment_length:
            raise ValueError(
                "In streaming mode the input must be one segment of "
                f"`segment_length`={self.segment_length} tokens (pad the "
                "last one and pass `padding_mask`). "
                f"Received: inputs.shape={tuple(inputs.shape)}"
            )
        if reset_mask is not None:
            state = self.reset_rows(state, reset_mask)
        return self._step(inputs, state, padding_mask, training, starts_empty)

    def _call_sequence(self, inputs, padding_mask, training):
        """Runs the block segment by segment from an empty memory."""
        batch, total = ops.shape(inputs)[0], ops.shape(inputs)[1]
        length = self.segment_length or inputs.shape[1]
        if length is None:
            raise ValueError(
                "Without `segment_length` sequence mode treats the input as "
                "one segment, whose length must be static. "
                f"Received: inputs.shape={tuple(inputs.shape)}"
            )
        x, mask, _ = segments.pad_to_segments(inputs, length, padding_mask)

        def step(index, segment, state):
            starts_empty = segments.finds_empty(index, True)  # an initial state
            return self._step(
                segment[0], state, segment[1], training, starts_empty
            )

        outputs, _ = segments.run(
            step,
            self.get_initial_state(batch),
            [segments.by_segment(x, length), segments.by_segment(mask, length)],
            layer=self,
            loop=self.segment_loop,
        )  # (S, B, L, D)
        return segments.from_segments(outputs)[:, :total]  # (B, T, D)

    def _step(
        self, x, state, padding_mask, training, starts_empty=False, record=False
    ):
        """One segment: attention over [STM; x] (+ LTM), feed-forward.
        ``starts_empty``: ``state`` is `get_initial_state`'s
        (`segment_memory.step`). ``record``: also return where the LTM's
        reads looked (``segment_memory.step``'s density, None without an
        LTM), for inspection: no KL term is added.
        """
        batch, length = ops.shape(x)[0], x.shape[1]
        x = ops.cast(x, self.compute_dtype)
        if padding_mask is None:
            valid = ops.ones((batch, length), "bool")
        else:
            valid = ops.cast(padding_mask, "bool")  # (B, L)
        active = ops.any(valid, axis=1)  # rows with a real token
        new_state, density = {}, None

        # Attention over [STM; segment] (Transformer-XL; docs/math.md §6).
        h = self.attention_norm(x) if self.normalize_first else x
        query = self.query_dense(h)  # (B, L, H, d)
        if self.stm_length:
            stm = ops.stop_gradient(
                ops.cast(state["stm"]["inputs"], self.compute_dtype)
            )
            memory = self.attention_norm(stm) if self.normalize_first else stm
            context = ops.concatenate([memory, h], axis=1)  # (B, S+L, D)
            key_valid = ops.concatenate([state["stm"]["mask"], valid], axis=1)
        else:
            context, key_valid = h, valid
        if self.compressor is not None:  # [compressed; STM; segment]

            def norm(m):  # what attention sees of a block input
                return self.attention_norm(m) if self.normalize_first else m

            compressed, compressed_mask, new_vectors, new_mask = (
                self.compressor.read(state["compressed"], self.compute_dtype)
            )  # (B, N, D): the waiting segment compressed and pushed
            context = ops.concatenate([norm(compressed), context], axis=1)
            key_valid = ops.concatenate([compressed_mask, key_valid], axis=1)
        key = self.key_dense(context)  # (B, S+L, H, d)
        value = self.value_dense(context)  # (B, S+L, H, d)
        attended = self._attend(query, key, value, key_valid, training)
        attention_output = self.output_dense(attended)  # (B, L, D)

        # Push the segment into the STM; the one leaving it enters the LTM
        # at the next segment (write, then read: docs/math.md §4).
        incoming = ops.where(
            valid[:, :, None], ops.stop_gradient(x), ops.zeros_like(x)
        )  # padded positions are not even kept
        if self.stm_length:
            stm, stm_mask = state["stm"]["inputs"], state["stm"]["mask"]
            pushed = {
                "inputs": ops.concatenate(
                    [stm[:, length:], ops.cast(incoming, stm.dtype)], axis=1
                ),  # (B, S, D)
                "mask": ops.concatenate([stm_mask[:, length:], valid], 1),
            }
            new_state["stm"] = where_rows(active, pushed, state["stm"])
            evicted, evicted_mask = stm[:, :length], stm_mask[:, :length]
        else:
            evicted, evicted_mask = incoming, valid
        if self.compressor is not None:
            compressed_state = state["compressed"]
            new_state["compressed"] = self.compressor.next_state(
                compressed_state,
                compressed,
                compressed_mask,
                evicted,
                evicted_mask,
                active,
            )
            self.compressor.add_reconstruction_loss(
                query,
                compressed_state,
                new_vectors,
                new_mask,
                lambda m: (self.key_dense(norm(m)), self.value_dense(norm(m))),
                [self.attention_norm, self.key_dense, self.value_dense],
                query_mask=valid,
            )
        if self.ltm is not None:
            result = segment_memory.step(
                self.ltm,
                query,
                state["ltm"],
                evicted,
                evicted_mask,
                query_mask=valid,
                active=active,
                regularize=not record,
                return_density=record,
                starts_empty=starts_empty,
            )
            ltm_output, new_state["ltm"] = result[:2]  # (B, L, D)
            density = result[2] if record else None
            attention_output = attention_output + ops.cast(
                ltm_output, attention_output.dtype
            )  # Z = Z_T + Z_LTM  (docs/math.md §3)

        attention_output = self.output_dropout(
            attention_output, training=training
        )
        if self.normalize_first:
            residual = x + attention_output
            hidden = self.feedforward_norm(residual)
        else:
            residual = self.attention_norm(x + attention_output)
            hidden = residual
        hidden = self.feedforward_output(self.intermediate_dense(hidden))
        hidden = self.feedforward_dropout(hidden, training=training)
        y = residual + hidden
        if not self.normalize_first:
            y = self.feedforward_norm(y)  # (B, L, D)
        if record:
            return y, new_state, density
        return y, new_state

    def _attend(self, query, key, value, key_valid, training):
        """Causal softmax attention with rotary relative positions
        (`keras_infmemory.layers.attention.causal_attention`).

        ``query`` ``(B, L, H, d)`` at positions ``0..L−1``; ``key`` and
        ``value`` ``(B, S+L, H, d)`` at ``−S..L−1``; ``key_valid``
        ``(B, S+L)``.
        """
        return attention.causal_attention(
            query,
            key,
            value,
            key_valid,
            dropout=self.attention_dropout,
            training=training,
        )  # (B, L, H, d)

    # ------------------------------------------------------------------ #
    # Shapes, masks, config
    # ------------------------------------------------------------------ #

    def compute_output_spec(
        self,
        inputs,
        state=None,
        reset_mask=None,
        padding_mask=None,
        training=None,
        mask=None,
        starts_empty=False,
    ):
        y = keras.KerasTensor(inputs.shape, dtype=self.compute_dtype)
        if state is None:
            return y
        new_state = keras.tree.map_structure(
            lambda v: keras.KerasTensor(v.shape, dtype=v.dtype), state
        )
        return y, new_state

    def compute_output_shape(self, input_shape, *args, **kwargs):
        return tuple(input_shape)

    def compute_mask(self, inputs, mask=None):
        return mask

    def get_config(self):
        config = super().get_config()
        config.pop("autocast", None)
        config.update(
            {
                "num_heads": self.num_heads,
                "intermediate_dim": self.intermediate_dim,
                "stm_length": self.stm_length,
                "ltm": (
                    None
                    if self.ltm is None
                    else keras.saving.serialize_keras_object(self.ltm)
                ),
                "segment_length": self.segment_length,
                "dropout": self.dropout,
                "normalize_first": self.normalize_first,
                "activation": keras.activations.serialize(self.activation),
                "layer_norm_epsilon": self.layer_norm_epsilon,
                "kernel_initializer": keras.initializers.serialize(
                    self.kernel_initializer
                ),
                "segment_loop": self.segment_loop,
                "compressor": (
                    None
                    if self.compressor is None
                    else keras.saving.serialize_keras_object(self.compressor)
                ),
            }
        )
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        if isinstance(config.get("ltm"), dict):
            config["ltm"] = keras.saving.deserialize_keras_object(config["ltm"])
        if isinstance(config.get("compressor"), dict):
            config["compressor"] = keras.saving.deserialize_keras_object(
                config["compressor"]
            )
        return cls(**config)
