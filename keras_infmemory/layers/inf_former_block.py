"""InfFormerBlock: a transformer block with short- and long-term memory."""

import math

import keras
from keras import ops

from keras_infmemory import validation as check
from keras_infmemory.layers.continuous_ltm import ContinuousLTM
from keras_infmemory.state import where_rows

_MAX_WAVELENGTH = 10000.0


@keras.saving.register_keras_serializable(package="keras_infmemory")
class InfFormerBlock(keras.layers.Layer):
    """Transformer block with a short-term and a continuous long-term memory.

    The ∞-former block (Martins et al. 2022, §3 and SPEC §6): causal
    multi-head self-attention over ``[STM; segment]``, where the short-term
    memory (STM) holds the block's previous ``stm_length`` inputs
    (stop-gradient, as in Transformer-XL), plus a `ContinuousLTM` read with
    the block's own projected queries, **added** to the attention output
    before dropout and the residual: ``Z = Z_T + Z_LTM``.

    Segment flow. The input is processed in segments of ``segment_length``
    tokens. ``stm_length`` must be 0 or a multiple of ``segment_length``, so
    that exactly one whole segment leaves the STM per step. The LTM absorbs
    the segment that has just left the STM, *then* it is read (write, then
    read: SPEC §4): with ``stm_length = segment_length``, segment ``s``
    attends over ``[s−1; s]`` and reads an LTM that has absorbed everything
    up to ``s−2``. With ``stm_length=0`` (GPT-2 style blocks) the LTM absorbs
    the previous segment directly. Every segment enters the LTM exactly once,
    as the raw block inputs (the residual stream, not layer-normed). With
    ``ltm=None`` the block is a plain Transformer-XL block (``stm_length > 0``)
    or a windowed causal block (``stm_length=0``).

    Positions are relative, with rotary embeddings (RoPE, Su et al. 2021):
    queries sit at ``0..L−1`` and keys at ``−stm_length..L−1`` relative to the
    segment start, and since rotary scores depend only on ``i − j``, attention
    depends only on offsets, never on where a segment starts. The LTM has no
    positions: it receives the un-rotated queries.

    Padding. ``padding_mask`` marks real tokens; padded keys are never
    attended to. Padding is expected only at the end of a document (right
    padding): a segment that contains padding is the last one of its
    document, and a row's evicted segment is written to the LTM only if all
    its tokens are real, so padded positions never enter the memory (the
    real tokens of a partly padded last segment are not absorbed either;
    reset the row before its next document).

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
      internally. ``segment_loop="scan"`` traces the segment loop once
      (``keras.ops.scan`` on JAX, ``fori_loop`` on TensorFlow).

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
        if segment_length is None and stm_length > 0:
            segment_length = stm_length
        if segment_length is None and ltm is not None:
            raise ValueError(
                "`segment_length` is required when `stm_length=0` and an "
                f"`ltm` is given. Received: segment_length={segment_length}"
            )
        if segment_length is not None:
            segment_length = check.check_int("segment_length", segment_length)
            if stm_length % segment_length:
                raise ValueError(
                    "`stm_length` must be 0 or a multiple of "
                    f"`segment_length`={segment_length}. "
                    f"Received: stm_length={stm_length}"
                )
        if segment_loop not in ("scan", "python"):
            raise ValueError(
                '`segment_loop` must be "scan" or "python". '
                f"Received: segment_loop={segment_loop!r}"
            )
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
        self.supports_masking = True
        self.hidden_dim = None
        self._value_reader = _NoAutocast(
            self._variable_values, name="value_reader"
        )

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
        self.hidden_dim, self.head_dim = hidden, head_dim
        init = lambda: keras.initializers.get(  # noqa: E731
            keras.initializers.serialize(self.kernel_initializer)
        )
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
        # The LTM's math runs in float32: its variables must not be autocast
        # by this block's mixed-precision scope, so it is entered through a
        # weightless layer with autocast=False.
        self._memory_access = _NoAutocast(self._read_memory, name="ltm_access")
        self.built = True

    # ------------------------------------------------------------------ #
    # State
    # ------------------------------------------------------------------ #

    def get_initial_state(self, batch_size):
        """An empty memory for ``batch_size`` rows.

        Returns a dict, with only the entries this configuration uses:

        * ``"stm"`` ``(B, S, D)`` the last ``S`` block inputs, oldest first,
          and ``"stm_mask"`` ``(B, S)`` bool, which slots hold real tokens;
        * ``"pending"`` ``(B, L, D)`` and ``"pending_mask"`` ``(B, L)``: the
          segment that has left the STM and enters the LTM at the next call;
        * ``"ltm"``: the `ContinuousLTM` state.
        """
        if self.hidden_dim is None:
            raise ValueError(
                "Build the block (call it once or `block.build(shape)`) "
                "before `get_initial_state`: the hidden size comes from "
                "the input."
            )
        batch_size = check.check_batch_size(batch_size)
        dtype = self.compute_dtype
        state = {}
        if self.stm_length:
            state["stm"] = ops.zeros(
                (batch_size, self.stm_length, self.hidden_dim), dtype
            )
            state["stm_mask"] = ops.zeros((batch_size, self.stm_length), "bool")
        if self.ltm is not None:
            length = self.segment_length
            state["pending"] = ops.zeros(
                (batch_size, length, self.hidden_dim), dtype
            )
            state["pending_mask"] = ops.zeros((batch_size, length), "bool")
            state["ltm"] = self.ltm.get_initial_state(batch_size)
        return state

    def reset_state(self, state, reset_mask):
        """Empties the STM and LTM of the rows where ``reset_mask`` is True."""
        batch = self._check_state(state)
        check.check_shape("reset_mask", reset_mask, (batch,), "(batch,)")
        reset = ops.cast(reset_mask, "bool")  # (B,)
        new_state = {
            name: ops.zeros_like(value)  # empty STM, masks all False
            for name, value in state.items()
            if name != "ltm"
        }
        new_state = where_rows(
            reset,
            new_state,
            {name: value for name, value in state.items() if name != "ltm"},
        )
        if "ltm" in state:
            new_state["ltm"] = self.ltm.reset_state(state["ltm"], reset)
        return new_state

    def _check_state(self, state):
        """Checks the keys and shapes of ``state``; returns its batch size."""
        expected = set()
        if self.stm_length:
            expected |= {"stm", "stm_mask"}
        if self.ltm is not None:
            expected |= {"pending", "pending_mask", "ltm"}
        if not isinstance(state, dict) or set(state) != expected:
            got = sorted(state) if isinstance(state, dict) else type(state)
            raise ValueError(
                f"`state` must be a dict with keys {sorted(expected)}, as "
                f"returned by get_initial_state(). Received: state={got}"
            )
        batch = None
        for name, length in (
            ("stm", self.stm_length),
            ("pending", self.segment_length),
        ):
            if name not in state:
                continue
            batch = check.shape_of(state[name])[0] if batch is None else batch
            check.check_shape(
                f"state['{name}']",
                state[name],
                (batch, length, self.hidden_dim),
                f"(batch, {length}, {self.hidden_dim})",
            )
            check.check_shape(
                f"state['{name}_mask']",
                state[f"{name}_mask"],
                (batch, length),
                f"(batch, {length})",
            )
        if self.ltm is not None:
            self.ltm._check_state(state["ltm"])
            check.check_batch(
                "state['ltm']['coefficients']",
                state["ltm"]["coefficients"],
                batch,
                "state['pending']",
            )
        return batch

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
    ):
        if padding_mask is None:
            padding_mask = mask
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
            state = self.reset_state(state, reset_mask)
        return self._step(inputs, state, padding_mask, training)

    def _call_sequence(self, inputs, padding_mask, training):
        """Runs the block segment by segment from an empty memory."""
        total = inputs.shape[1]
        if total is None:
            raise ValueError(
                "Sequence mode needs a static sequence length. "
                f"Received: inputs.shape={tuple(inputs.shape)}"
            )
        length = self.segment_length or total
        num_segments = -(-total // length)
        padded = num_segments * length
        batch = ops.shape(inputs)[0]
        if padding_mask is None and padded != total:
            padding_mask = ops.ones((batch, total), "bool")
        if padding_mask is not None:
            padding_mask = ops.cast(padding_mask, "bool")
        if padded != total:
            inputs = ops.pad(inputs, ((0, 0), (0, padded - total), (0, 0)))
            padding_mask = ops.pad(padding_mask, ((0, 0), (0, padded - total)))
        state = self.get_initial_state(batch)
        if num_segments == 1 or self.segment_loop == "python":
            outputs = []
            for s in range(num_segments):
                window = slice(s * length, (s + 1) * length)
                mask = None if padding_mask is None else padding_mask[:, window]
                y, state = self._step(inputs[:, window], state, mask, training)
                outputs.append(y)
            y = outputs[0] if num_segments == 1 else ops.concatenate(outputs, 1)
            return y[:, :total]

        def by_segment(x):  # (B, n·L, ...) -> (n, B, L, ...)
            x = ops.reshape(x, (batch, num_segments, length) + x.shape[2:])
            return ops.moveaxis(x, 1, 0)

        segments = [by_segment(inputs)]
        if padding_mask is not None:
            segments.append(by_segment(padding_mask))

        def step(index, segment, state):
            mask = segment[1] if len(segment) > 1 else None
            return self._step(segment[0], state, mask, training)

        outputs, _ = scan_segments(
            self,
            step,
            state,
            segments,
            output_spec=((batch, length, inputs.shape[2]), self.compute_dtype),
            adds_losses=self.ltm is not None,
        )  # (n, B, L, D)
        y = ops.reshape(ops.moveaxis(outputs, 0, 1), (batch, padded, -1))
        return y[:, :total]  # (B, T, D)

    def _variable_values(self, anchor, trainable):
        """Variable values, read through ``_value_reader`` (no autocast)."""
        return [v.value for v in self.variables if v.trainable == trainable]

    def _step(self, x, state, padding_mask, training):
        """One segment: attention over [STM; x] (+ LTM), feed-forward."""
        batch, length = ops.shape(x)[0], x.shape[1]
        x = ops.cast(x, self.compute_dtype)
        if padding_mask is None:
            valid = ops.ones((batch, length), "bool")
        else:
            valid = ops.cast(padding_mask, "bool")  # (B, L)
        new_state = {}

        # Attention over [STM; segment] (Transformer-XL; SPEC §6).
        h = self.attention_norm(x) if self.normalize_first else x
        query = self.query_dense(h)  # (B, L, H, d)
        if self.stm_length:
            stm = ops.stop_gradient(ops.cast(state["stm"], self.compute_dtype))
            memory = self.attention_norm(stm) if self.normalize_first else stm
            context = ops.concatenate([memory, h], axis=1)  # (B, S+L, D)
            key_valid = ops.concatenate([state["stm_mask"], valid], axis=1)
        else:
            context, key_valid = h, valid
        key = self.key_dense(context)  # (B, S+L, H, d)
        value = self.value_dense(context)  # (B, S+L, H, d)
        attended = self._attend(query, key, value, key_valid, training)
        attention_output = self.output_dense(attended)  # (B, L, D)

        if self.ltm is not None:
            ltm_output, new_state["ltm"] = self._memory_access(
                query,
                state["pending"],
                state["pending_mask"],
                state["ltm"],
                valid,
            )  # (B, L, D)
            attention_output = attention_output + ops.cast(
                ltm_output, attention_output.dtype
            )  # Z = Z_T + Z_LTM  (SPEC §3.5)

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

        # Push the segment into the STM; what leaves it waits in "pending".
        incoming = ops.stop_gradient(x)
        if self.stm_length:
            stm, stm_mask = state["stm"], state["stm_mask"]
            new_state["stm"] = ops.concatenate(
                [stm[:, length:], ops.cast(incoming, stm.dtype)], axis=1
            )  # (B, S, D)
            new_state["stm_mask"] = ops.concatenate(
                [stm_mask[:, length:], valid], axis=1
            )
            evicted, evicted_mask = stm[:, :length], stm_mask[:, :length]
        else:
            evicted, evicted_mask = incoming, valid
        if self.ltm is not None:
            new_state["pending"] = ops.cast(evicted, state["pending"].dtype)
            new_state["pending_mask"] = evicted_mask
        return y, new_state

    def _read_memory(self, query, pending, pending_mask, ltm_state, valid):
        """The segment that left the STM enters the LTM, then the LTM is read
        (write, then read: SPEC §4). Only rows whose evicted segment is all
        real tokens write; the others keep their memory."""
        pending = ops.stop_gradient(pending)  # (B, L, D)
        writes = ops.all(pending_mask, axis=1)  # (B,)
        written = self.ltm.write(pending, ltm_state)
        ltm_state = {
            name: where_rows(writes, written[name], ltm_state[name])
            for name in ltm_state
        }
        output, ltm_state = self.ltm.read(
            query, ltm_state, query_mask=valid, return_state=True
        )  # (B, L, D)
        return output, {k: ops.stop_gradient(v) for k, v in ltm_state.items()}

    def _attend(self, query, key, value, key_valid, training):
        """Causal softmax attention with rotary relative positions.

        ``query`` ``(B, L, H, d)`` at positions ``0..L−1``; ``key`` and
        ``value`` ``(B, S+L, H, d)`` at ``−S..L−1``; ``key_valid``
        ``(B, S+L)``.
        """
        length, total = query.shape[1], key.shape[1]
        memory = total - length
        query = _rotate(query, ops.arange(0, length, dtype="float32"))
        key = _rotate(key, ops.arange(-memory, length, dtype="float32"))
        scores = ops.einsum("bqhd,bkhd->bhqk", query, key)  # (B,H,L,S+L)
        scores = ops.cast(scores, "float32") / math.sqrt(self.head_dim)
        causal = ops.arange(total)[None, :] <= (
            ops.arange(length)[:, None] + memory
        )  # (L, S+L)
        allowed = ops.logical_and(
            causal[None, None], key_valid[:, None, None, :]
        )  # (B, 1, L, S+L)
        scores = ops.where(allowed, scores, -1e9)
        probs = ops.softmax(scores, axis=-1)  # (B, H, L, S+L)
        probs = ops.cast(probs, self.compute_dtype)
        probs = self.attention_dropout(probs, training=training)
        return ops.einsum("bhqk,bkhd->bqhd", probs, value)  # (B, L, H, d)

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
            }
        )
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        if isinstance(config.get("ltm"), dict):
            config["ltm"] = keras.saving.deserialize_keras_object(config["ltm"])
        return cls(**config)


class _NoAutocast(keras.layers.Layer):
    """Runs ``function`` outside any autocast scope (owns no weights)."""

    def __init__(self, function, **kwargs):
        super().__init__(autocast=False, **kwargs)
        self._function = function
        self.built = True

    def call(self, *args, **kwargs):
        return self._function(*args, **kwargs)


def scan_segments(layer, step, state, segments, output_spec, adds_losses):
    """Runs ``step`` over segments, traced once; used by sequence modes.

    ``step(index, segment, state) -> (output, state)`` with ``segment`` one
    slice of each tensor in the list ``segments`` (each ``(n, ...)``).
    ``output_spec`` ``(shape, dtype)`` describes one output; ``adds_losses``
    says whether ``step`` adds losses. Returns the stacked outputs
    ``(n, ...)`` and the last state. JAX runs a
    ``keras.ops.scan``; TensorFlow a ``keras.ops.fori_loop`` (its scan needs
    outputs shaped like the carry and slice updates have no gradient);
    torch a Python loop. Inside the traced step a `keras.StatelessScope`
    maps every variable of ``layer`` to its value read outside (read through
    ``layer._value_reader`` so that no autocast applies), collects the
    losses added inside (the LTM's KL terms: they are summed and added to
    ``layer`` outside) and catches variable updates (dropout and sampler
    seeds), which ride in the carry and are assigned at the end.
    """
    num_segments = segments[0].shape[0]
    backend = keras.backend.backend()
    if backend == "torch":
        outputs = []
        for index in range(num_segments):
            output, state = step(index, [x[index] for x in segments], state)
            outputs.append(output)
        return ops.stack(outputs, axis=0), state

    fixed = [v for v in layer.variables if v.trainable]
    updated = [v for v in layer.variables if not v.trainable]
    fixed_values = layer._value_reader(ops.zeros(()), trainable=True)

    def run(index, state, updated_values):
        mapping = list(zip(fixed, fixed_values, strict=True))
        mapping += list(zip(updated, updated_values, strict=True))
        with keras.StatelessScope(
            state_mapping=mapping, collect_losses=True
        ) as scope:
            segment = [ops.take(x, index, axis=0) for x in segments]
            output, state = step(index, segment, state)
        loss = ops.zeros((), "float32")
        for extra in scope.losses:
            loss = loss + ops.cast(extra, "float32")
        updated_values = [
            value
            if scope.get_current_value(v) is None
            else scope.get_current_value(v)
            for v, value in zip(updated, updated_values, strict=True)
        ]
        return output, loss, state, updated_values

    updated_values = layer._value_reader(ops.zeros(()), trainable=False)
    if backend == "jax":

        def scan_step(carry, index):
            output, loss, *carry = run(index, *carry)
            return tuple(carry), (output, loss)

        (state, updated_values), (outputs, losses) = ops.scan(
            scan_step, (state, updated_values), ops.arange(num_segments)
        )
        loss = ops.sum(losses)
    else:
        output_shape, output_dtype = output_spec

        def loop_step(index, carry):
            state, updated_values, outputs, loss = carry
            output, extra, state, updated_values = run(
                index, state, updated_values
            )
            here = ops.reshape(
                ops.arange(num_segments) == index,
                (-1,) + (1,) * len(output_shape),
            )
            outputs = ops.where(here, output[None], outputs)  # (n, ...)
            return state, updated_values, outputs, loss + extra

        carry = (
            state,
            updated_values,
            ops.zeros((num_segments,) + tuple(output_shape), output_dtype),
            ops.zeros((), "float32"),
        )
        state, updated_values, outputs, loss = ops.fori_loop(
            0, num_segments, loop_step, carry
        )
    for variable, value in zip(updated, updated_values, strict=True):
        variable.assign(value)
    if adds_losses:
        layer.add_loss(loss)
    return outputs, state


def _rotate(x, positions):
    """Rotary embedding of ``x`` ``(B, T, H, d)`` at ``positions`` ``(T,)``.

    Rotates pairs ``(x_i, x_{i+d/2})`` by ``position · θ_i`` with
    ``θ_i = 10000^{−2i/d}``: the score of a rotated query at ``p`` and key at
    ``p'`` depends only on ``p − p'``.
    """
    half = x.shape[-1] // 2
    inverse = 1.0 / (
        _MAX_WAVELENGTH ** (ops.arange(0, half, dtype="float32") / float(half))
    )  # (d/2,)
    angles = positions[:, None] * inverse[None, :]  # (T, d/2)
    cos = ops.cast(ops.cos(angles), x.dtype)[None, :, None, :]
    sin = ops.cast(ops.sin(angles), x.dtype)[None, :, None, :]
    first, second = x[..., :half], x[..., half:]
    return ops.concatenate(
        [first * cos - second * sin, second * cos + first * sin], axis=-1
    )
