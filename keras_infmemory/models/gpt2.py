"""GPT-2 with an unbounded memory: a `ContinuousLTM` in KerasHub's GPT-2.

The paper's language-model setting (∞-former §4.2, SPEC §6–§7): text is
processed in blocks (512 tokens by default) with positions restarted in each
block; the LTM of each chosen layer absorbs the previous block's layer inputs
(the raw residual stream) and every token of the current block reads it, so
block ``s`` reads a memory of blocks ``< s``. The LTM output is added to the
self-attention output before dropout and the residual (SPEC §3.5). The LTM
queries are the host attention's projected queries (shared projection).

Shape letters: B batch, T tokens, S blocks, L block size, e hidden size,
H heads, d head size, N basis functions.
"""

import keras
import keras_hub
from keras import ops

from keras_infmemory.layers.continuous_ltm import ContinuousLTM
from keras_infmemory.layers.sticky_memory_sampler import StickyMemorySampler
from keras_infmemory.state import where_rows

# Names of the ContinuousLTM weights: the optimizer's "memory" variables.
MEMORY_VARIABLE_NAMES = ContinuousLTM.WEIGHT_NAMES
# Keyword arguments of `attach_memory` that are not ContinuousLTM options.
_MODEL_OPTIONS = (
    "block_size",
    "memory_layers",
    "carry_batch_size",
    "reset_token_id",
)


def _gpt2_initializer(stddev=0.02):
    return keras.initializers.RandomNormal(stddev=stddev)


def _serialize_options(options):
    """ContinuousLTM keyword arguments as a JSON-able dict."""
    options = dict(options or {})
    sticky = options.get("sticky")
    if isinstance(sticky, StickyMemorySampler):
        options["sticky"] = keras.saving.serialize_keras_object(sticky)
    if "basis_widths" in options:
        options["basis_widths"] = [float(w) for w in options["basis_widths"]]
    return options


@keras.saving.register_keras_serializable(package="keras_infmemory")
class BlockPositionEmbedding(keras_hub.layers.PositionEmbedding):
    """Learned positions that restart at 0 in every block of ``block_size``.

    Token ``t`` gets position ``t mod block_size``: long text is processed in
    blocks, each seen by GPT-2 as a fresh sequence (SPEC §6). The weights are
    those of `keras_hub.layers.PositionEmbedding`.

    Example:

    >>> import numpy as np
    >>> from keras_infmemory.models.gpt2 import BlockPositionEmbedding
    >>> layer = BlockPositionEmbedding(sequence_length=16, block_size=4)
    >>> tuple(layer(np.zeros((2, 10, 8), "float32")).shape)
    (2, 10, 8)

    Args:
        sequence_length: int, number of learned positions (GPT-2's
            ``max_sequence_length``).
        block_size: int ≤ ``sequence_length``, the block length.
        **kwargs: `keras_hub.layers.PositionEmbedding` arguments.

    Call arguments:
        inputs: ``(B, T, e)`` embedded tokens.
        start_index: int or int tensor, the global index of the first token.

    Returns:
        ``(B, T, e)`` position embeddings.
    """

    def __init__(self, sequence_length, block_size, **kwargs):
        super().__init__(sequence_length=sequence_length, **kwargs)
        if not isinstance(block_size, int) or not (
            0 < block_size <= sequence_length
        ):
            raise ValueError(
                "`block_size` must be an int in [1, sequence_length="
                f"{sequence_length}]. Received: block_size={block_size!r}"
            )
        self.block_size = block_size

    def call(self, inputs, start_index=0):
        shape = ops.shape(inputs)
        positions = ops.arange(shape[-2], dtype="int32") + ops.cast(
            start_index, "int32"
        )
        positions = ops.mod(positions, self.block_size)  # (T,)
        table = ops.convert_to_tensor(self.position_embeddings)
        embeddings = ops.take(table, positions, axis=0)  # (T, e)
        return ops.broadcast_to(embeddings, shape)

    def get_config(self):
        config = super().get_config()
        config["block_size"] = self.block_size
        return config


@keras.saving.register_keras_serializable(package="keras_infmemory")
class InfMemoryTransformerDecoder(keras.layers.Layer):
    """GPT-2's pre-LN decoder block with an optional ∞-former memory.

    The sublayers and their names are those of
    `keras_hub.layers.TransformerDecoder` as GPT-2 builds it, so GPT-2's
    weights load by path. With ``memory_options`` set, a `ContinuousLTM`
    named ``"memory"`` reads with the attention's projected queries and its
    output is added to the attention output before dropout and the residual:

    ``y = x + Dropout(MHA(LN(x)) + LTM(q(LN(x)), memory))``, then the FFN.

    Text is processed in blocks of ``block_size`` tokens, causal attention
    within each block; the memory absorbs each block's inputs ``x`` (the
    residual stream) at the start of the next block (write, then read).

    Example:

    >>> import numpy as np
    >>> from keras_infmemory.models.gpt2 import InfMemoryTransformerDecoder
    >>> layer = InfMemoryTransformerDecoder(
    ...     num_heads=2, intermediate_dim=32, block_size=4,
    ...     memory_options={"num_basis": 16, "num_samples": 16},
    ... )
    >>> x = np.random.rand(2, 12, 16).astype("float32")  # 3 blocks
    >>> tuple(layer(x).shape)
    (2, 12, 16)

    Args:
        num_heads: int, attention heads.
        intermediate_dim: int, FFN width.
        block_size: int, tokens per block.
        memory_options: ``None`` (no memory: a plain GPT-2 block) or a dict
            of `ContinuousLTM` keyword arguments (``{}``: the authors'
            GPT-2 settings).
        dropout: float, dropout rate.
        layer_norm_epsilon: float.
        carry_batch_size: ``None`` or int. If set, the memory state is
            kept across calls in non-trainable variables for batches of
            exactly this size (training on long documents with ``fit``);
            calls with another batch size start from an empty memory.
            Inside a TensorFlow graph the batch size is unknown and every
            call uses the carried memory: feed batches of this size.
        kernel_initializer: initializer of the GPT-2 kernels.
        **kwargs: base `keras.layers.Layer` arguments.

    Call arguments:
        decoder_sequence: ``(B, T, e)``.
        decoder_padding_mask: optional ``(B, T)``, 1 for real tokens.
        reset_mask: optional ``(B,)`` bool, rows whose carried memory is
            emptied before this call (carry mode only).
        training: bool.

    Returns:
        ``(B, T, e)``.
    """

    def __init__(
        self,
        num_heads,
        intermediate_dim,
        block_size=512,
        memory_options=None,
        dropout=0.0,
        layer_norm_epsilon=1e-5,
        carry_batch_size=None,
        kernel_initializer=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        for name, value in (
            ("num_heads", num_heads),
            ("intermediate_dim", intermediate_dim),
            ("block_size", block_size),
        ):
            if not isinstance(value, int) or value < 1:
                raise ValueError(
                    f"`{name}` must be a positive int. "
                    f"Received: {name}={value!r}"
                )
        if carry_batch_size is not None and (
            not isinstance(carry_batch_size, int) or carry_batch_size < 1
        ):
            raise ValueError(
                "`carry_batch_size` must be None or a positive int. "
                f"Received: carry_batch_size={carry_batch_size!r}"
            )
        if memory_options is not None and not isinstance(memory_options, dict):
            raise ValueError(
                "`memory_options` must be None or a dict of ContinuousLTM "
                f"arguments. Received: memory_options={memory_options!r}"
            )
        self.num_heads = num_heads
        self.intermediate_dim = intermediate_dim
        self.block_size = block_size
        self.memory_options = (
            None
            if memory_options is None
            else _serialize_options(memory_options)
        )
        self.dropout = float(dropout)
        self.layer_norm_epsilon = float(layer_norm_epsilon)
        self.carry_batch_size = carry_batch_size
        self.kernel_initializer = keras.initializers.get(
            kernel_initializer or _gpt2_initializer()
        )
        self.memory_enabled = True  # a switch, not config: see the task

    @property
    def has_memory(self):
        return self.memory_options is not None

    def _init(self):
        return keras.initializers.get(
            keras.initializers.serialize(self.kernel_initializer)
        )

    def build(self, decoder_sequence_shape, *args, **kwargs):
        hidden = decoder_sequence_shape[-1]
        head_dim = hidden // self.num_heads
        if head_dim * self.num_heads != hidden:
            raise ValueError(
                "The hidden size must be divisible by `num_heads`. Received: "
                f"hidden={hidden}, num_heads={self.num_heads}"
            )
        self.head_dim = head_dim
        policy = self.dtype_policy
        self._self_attention_layer = keras_hub.layers.CachedMultiHeadAttention(
            num_heads=self.num_heads,
            key_dim=head_dim,
            dropout=self.dropout,
            kernel_initializer=self._init(),
            bias_initializer="zeros",
            dtype=policy,
            name="self_attention",
        )
        self._self_attention_layer.build(
            query_shape=decoder_sequence_shape,
            value_shape=decoder_sequence_shape,
        )
        self._self_attention_layer_norm = keras.layers.LayerNormalization(
            epsilon=self.layer_norm_epsilon,
            dtype=policy,
            name="self_attention_layer_norm",
        )
        self._self_attention_layer_norm.build(decoder_sequence_shape)
        self._self_attention_dropout = keras.layers.Dropout(
            self.dropout, dtype=policy, name="self_attention_dropout"
        )
        self._feedforward_intermediate_dense = keras.layers.Dense(
            self.intermediate_dim,
            kernel_initializer=self._init(),
            dtype=policy,
            name="feedforward_intermediate_dense",
        )
        self._feedforward_intermediate_dense.build(decoder_sequence_shape)
        self._feedforward_output_dense = keras.layers.Dense(
            hidden,
            kernel_initializer=self._init(),
            dtype=policy,
            name="feedforward_output_dense",
        )
        self._feedforward_output_dense.build(
            tuple(decoder_sequence_shape[:-1]) + (self.intermediate_dim,)
        )
        self._feedforward_layer_norm = keras.layers.LayerNormalization(
            epsilon=self.layer_norm_epsilon,
            dtype=policy,
            name="feedforward_layer_norm",
        )
        self._feedforward_layer_norm.build(decoder_sequence_shape)
        self._feedforward_dropout = keras.layers.Dropout(
            self.dropout, dtype=policy, name="feedforward_dropout"
        )
        self.memory = None
        if self.has_memory:
            self.memory = ContinuousLTM(
                num_heads=self.num_heads,
                key_dim=head_dim,
                dtype=policy,
                name="memory",
                **self.memory_options,
            )
            if self.carry_batch_size is not None:
                self._build_carry(hidden)
        self.built = True

    def _build_carry(self, hidden):
        """Non-trainable variables holding the memory between calls."""
        b, ltm = self.carry_batch_size, self.memory
        shapes = {
            "coefficients": (b, ltm.num_basis, hidden),
            "has_memory": (b,),
            "pending": (b, self.block_size, hidden),
            "has_pending": (b,),
        }
        if ltm.sticky is not None:
            shapes["histogram"] = (b, ltm.sticky.num_bins)
        self._carry = {
            name: self.add_weight(
                name=f"carry_{name}",
                shape=shape,
                initializer="zeros",
                trainable=False,
                autocast=False,
            )
            for name, shape in shapes.items()
        }

    # ------------------------------------------------------------------ #
    # Memory state
    # ------------------------------------------------------------------ #

    def get_initial_state(self, batch_size):
        """Empty memory: ``{"memory": LTM state, "pending": (B, L, e),
        "has_pending": (B,)}``; ``{}`` for a layer without memory."""
        if not self.has_memory:
            return {}
        hidden = self.memory.memory_dim
        return {
            "memory": self.memory.get_initial_state(batch_size),
            "pending": ops.zeros(
                (batch_size, self.block_size, hidden), self.memory.math_dtype
            ),
            "has_pending": ops.zeros((batch_size,), "bool"),
        }

    def reset_state(self, state, reset_mask):
        """Empties the rows of ``state`` where ``reset_mask`` is True."""
        if not self.has_memory:
            return state
        reset_mask = ops.cast(reset_mask, "bool")
        return {
            "memory": self.memory.reset_state(state["memory"], reset_mask),
            "pending": state["pending"],
            "has_pending": ops.logical_and(
                state["has_pending"], ops.logical_not(reset_mask)
            ),
        }

    def _read_carry(self):
        # Copies: the variables are assigned after the call, and torch's
        # backward needs the values this call read.
        c = {k: ops.copy(v.value) for k, v in self._carry.items()}
        memory = {
            "coefficients": c["coefficients"],
            "has_memory": c["has_memory"] > 0.5,
        }
        if "histogram" in c:
            memory["histogram"] = c["histogram"]
        return {
            "memory": memory,
            "pending": c["pending"],
            "has_pending": c["has_pending"] > 0.5,
        }

    def _write_carry(self, state):
        flat = dict(state["memory"])
        flat["pending"] = state["pending"]
        flat["has_pending"] = state["has_pending"]
        for name, variable in self._carry.items():
            variable.assign(ops.cast(flat[name], variable.dtype))

    def reset_carry(self):
        """Empties the memory carried between calls (carry mode)."""
        if self.has_memory and self.carry_batch_size is not None:
            for variable in self._carry.values():
                variable.assign(ops.zeros(variable.shape, variable.dtype))

    # ------------------------------------------------------------------ #
    # Calls
    # ------------------------------------------------------------------ #

    def call(
        self,
        decoder_sequence,
        decoder_padding_mask=None,
        reset_mask=None,
        training=None,
    ):
        x = decoder_sequence
        batch = x.shape[0]  # None inside a TF graph: the carry decides
        if (
            self.has_memory
            and self.memory_enabled
            and self.carry_batch_size is not None
            and batch in (None, self.carry_batch_size)
        ):
            state = self._read_carry()
            if reset_mask is not None:
                state = self.reset_state(state, reset_mask)
            y, state = self.call_with_state(
                x, decoder_padding_mask, state, training=training
            )
            self._write_carry(state)
            return y
        y, _ = self.call_with_state(
            x, decoder_padding_mask, None, training=training
        )
        return y

    def call_with_state(self, x, padding_mask, state, training=None):
        """Blocks of ``x`` ``(B, T, e)`` in order, memory carried.

        ``state`` is a state from `get_initial_state` (or ``None``: empty,
        and then nothing is returned for it). Returns ``(y, new_state)``.
        """
        memory = self.has_memory and self.memory_enabled
        batch, length, hidden = ops.shape(x)[0], x.shape[1], x.shape[2]
        if length is None:
            raise ValueError(
                "InfMemoryTransformerDecoder needs a static sequence length. "
                f"Received: shape={x.shape}"
            )
        block = self.block_size
        if padding_mask is None:
            padding_mask = ops.ones((batch, length), "bool")
        padding_mask = ops.cast(padding_mask, "bool")
        stateless_single = (state is None or not memory) and length <= block
        num_blocks = 1 if stateless_single else -(-length // block)
        size = length if stateless_single else block
        pad = num_blocks * size - length
        if pad:
            x = ops.pad(x, ((0, 0), (0, pad), (0, 0)))
            padding_mask = ops.pad(padding_mask, ((0, 0), (0, pad)))
        xb = ops.reshape(x, (-1, size, hidden))  # (B·S, L, e)
        mb = ops.reshape(padding_mask, (-1, size))  # (B·S, L)

        h = self._self_attention_layer_norm(xb)
        causal = ops.arange(size)[:, None] >= ops.arange(size)[None, :]
        mask = ops.logical_and(causal[None], mb[:, None, :])  # (B·S, L, L)
        attention = self._self_attention_layer(
            query=h, value=h, attention_mask=mask, training=training
        )  # (B·S, L, e)
        if memory:
            query = self._self_attention_layer.query_dense(h)
            query = ops.reshape(
                query, (-1, num_blocks, size, self.num_heads, self.head_dim)
            )  # (B, S, L, H, d)
            xs = ops.reshape(xb, (-1, num_blocks, size, hidden))
            ms = ops.reshape(mb, (-1, num_blocks, size))
            outputs, state = self._memory_blocks(query, xs, ms, state)
            attention = attention + ops.reshape(outputs, ops.shape(attention))
        y = self._finish(xb, attention, training)
        y = ops.reshape(y, (-1, num_blocks * size, hidden))[:, :length]
        return y, state

    def _memory_blocks(self, query, xs, ms, state):
        """Write-then-read per block; returns ``(B, S, L, e)`` outputs."""
        num_blocks = xs.shape[1]
        ltm = self.memory
        outputs = []
        for j in range(num_blocks):
            if state is None:  # first block of a stateless call: empty
                outputs.append(ops.zeros_like(xs[:, j]))
                state = self.get_initial_state(ops.shape(xs)[0])
            else:
                written = ltm.write(state["pending"], state["memory"])
                current = where_rows(
                    state["has_pending"], written, state["memory"]
                )
                out, current = ltm.read(
                    query[:, j], current, query_mask=ms[:, j], return_state=True
                )
                outputs.append(ops.cast(out, xs.dtype))
                state = dict(state, memory=current)
            state = {
                "memory": {
                    k: ops.stop_gradient(v) for k, v in state["memory"].items()
                },
                "pending": ops.stop_gradient(
                    ops.cast(xs[:, j], ltm.math_dtype)
                ),
                "has_pending": ops.any(ms[:, j], axis=-1),
            }
        return ops.stack(outputs, axis=1), state

    def _finish(self, x, attention, training):
        """Dropout, residual, then GPT-2's feed-forward sub-block."""
        x = x + self._self_attention_dropout(attention, training=training)
        h = self._feedforward_layer_norm(x)
        h = self._feedforward_intermediate_dense(h)
        h = keras.activations.gelu(h, approximate=True)
        h = self._feedforward_output_dense(h)
        return x + self._feedforward_dropout(h, training=training)

    def call_with_cache(
        self, x, key_value, inputs, memory, index, write, query_mask=None
    ):
        """Cached decoding of ``x`` ``(B, C, e)`` inside one block.

        Args:
            x: ``(B, C, e)``, tokens at block positions ``index..index+C``.
            key_value: ``(B, 2, L, H, d)`` the block's attention cache.
            inputs: ``(B, L, e)`` the block's layer inputs (the next write).
            memory: the LTM state (``{}`` without memory).
            index: int tensor, the position inside the block.
            write: bool tensor; first absorb ``inputs`` (the previous,
                complete block) into the memory.
            query_mask: optional ``(B, C)``, reads that count for the KL and
                sticky histogram.

        Returns:
            ``(y, key_value, inputs, memory)``.
        """
        use_memory = self.has_memory and self.memory_enabled
        if use_memory:
            memory = ops.cond(
                write,
                lambda: self.memory.write(inputs, memory),
                lambda: memory,
            )
        if self.has_memory:
            inputs = ops.slice_update(
                inputs, [0, index, 0], ops.cast(x, inputs.dtype)
            )
        size = x.shape[1]
        h = self._self_attention_layer_norm(x)
        i = ops.arange(size) + ops.cast(index, "int32")
        causal = i[:, None] >= ops.arange(key_value.shape[2])[None, :]
        mask = ops.broadcast_to(
            causal[None], (ops.shape(x)[0], size, key_value.shape[2])
        )
        attention, key_value = self._self_attention_layer(
            query=h,
            value=h,
            attention_mask=mask,
            cache=key_value,
            cache_update_index=index,
        )
        if use_memory:
            query = self._self_attention_layer.query_dense(h)
            out, memory = self.memory.read(
                query, memory, query_mask=query_mask, return_state=True
            )
            attention = attention + ops.cast(out, attention.dtype)
        y = self._finish(x, attention, training=False)
        return y, key_value, inputs, memory

    def save_own_variables(self, store):
        """The carried memory is state, not weights: it is not saved."""

    def load_own_variables(self, store):
        """Nothing to load: see `save_own_variables`."""

    def compute_output_shape(self, decoder_sequence_shape, *args, **kwargs):
        return decoder_sequence_shape

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "num_heads": self.num_heads,
                "intermediate_dim": self.intermediate_dim,
                "block_size": self.block_size,
                "memory_options": self.memory_options,
                "dropout": self.dropout,
                "layer_norm_epsilon": self.layer_norm_epsilon,
                "carry_batch_size": self.carry_batch_size,
                "kernel_initializer": keras.initializers.serialize(
                    self.kernel_initializer
                ),
            }
        )
        return config


@keras.saving.register_keras_serializable(package="keras_infmemory")
class InfMemoryGPT2Backbone(keras_hub.models.GPT2Backbone):
    """GPT-2 whose decoder layers carry an ∞-former long-term memory.

    The same layers, names and weights as `keras_hub.models.GPT2Backbone`,
    plus one `ContinuousLTM` per layer in ``memory_layers``. Inputs longer
    than ``block_size`` are processed in blocks with positions restarted at
    0 in each block; each memory absorbs the previous block's layer inputs
    and is read by every token of the current block. With an empty memory
    (a single block) the output equals GPT-2's.

    Example:

    >>> import numpy as np
    >>> from keras_infmemory.models.gpt2 import InfMemoryGPT2Backbone
    >>> backbone = InfMemoryGPT2Backbone(
    ...     vocabulary_size=50, num_layers=2, num_heads=2, hidden_dim=16,
    ...     intermediate_dim=32, max_sequence_length=16, block_size=8,
    ...     memory_options={"num_basis": 16, "num_samples": 16},
    ... )
    >>> inputs = {
    ...     "token_ids": np.ones((2, 24), "int32"),  # three blocks
    ...     "padding_mask": np.ones((2, 24), "int32"),
    ... }
    >>> tuple(backbone(inputs).shape)
    (2, 24, 16)

    Args:
        vocabulary_size, num_layers, num_heads, hidden_dim,
        intermediate_dim, dropout, max_sequence_length: as
            `keras_hub.models.GPT2Backbone`.
        block_size: int ≤ ``max_sequence_length``, tokens per block.
            Defaults to 512 (the paper's), capped at ``max_sequence_length``.
        memory_layers: ``None`` (every layer) or a list of layer indices
            that get a memory.
        memory_options: dict of `ContinuousLTM` arguments; ``None`` or
            ``{}`` gives the authors' GPT-2 settings (N 512, widths
            {0.005, 0.01}, λ 0.5, τ 0.5, M 512, conv gate, KL 1e-6).
        carry_batch_size: ``None`` or int: keep the memory across calls for
            batches of this size (training on long documents, see
            `keras_infmemory.data.documents`). Not saved with the weights.
        reset_token_id: ``None`` or int. In carry mode, rows whose block
            starts with this token (a document start) empty their memory
            first.
        dtype: dtype policy.
        **kwargs: `keras_hub.models.Backbone` arguments.
    """

    def __init__(
        self,
        vocabulary_size,
        num_layers,
        num_heads,
        hidden_dim,
        intermediate_dim,
        dropout=0.1,
        max_sequence_length=1024,
        block_size=512,
        memory_layers=None,
        memory_options=None,
        carry_batch_size=None,
        reset_token_id=None,
        dtype=None,
        **kwargs,
    ):
        if block_size is None:
            block_size = min(512, max_sequence_length)
        if not isinstance(block_size, int) or not (
            0 < block_size <= max_sequence_length
        ):
            raise ValueError(
                "`block_size` must be an int in [1, max_sequence_length="
                f"{max_sequence_length}]. Received: block_size={block_size!r}"
            )
        if memory_layers is None:
            memory_layers = list(range(num_layers))
        memory_layers = [int(i) for i in memory_layers]
        if any(i < 0 or i >= num_layers for i in memory_layers):
            raise ValueError(
                f"`memory_layers` must be indices in [0, {num_layers}). "
                f"Received: memory_layers={memory_layers}"
            )
        if memory_options is not None and not isinstance(memory_options, dict):
            raise ValueError(
                "`memory_options` must be a dict of ContinuousLTM arguments. "
                f"Received: memory_options={memory_options!r}"
            )
        memory_options = _serialize_options(memory_options)
        self.token_embedding = keras.layers.ReversibleEmbedding(
            input_dim=vocabulary_size,
            output_dim=hidden_dim,
            embeddings_initializer=_gpt2_initializer(stddev=0.01),
            dtype=dtype,
            name="token_embedding",
        )
        self.position_embedding = BlockPositionEmbedding(
            initializer=_gpt2_initializer(stddev=0.02),
            sequence_length=max_sequence_length,
            block_size=block_size,
            dtype=dtype,
            name="position_embedding",
        )
        self.embeddings_add = keras.layers.Add(
            dtype=dtype, name="embeddings_add"
        )
        self.embeddings_dropout = keras.layers.Dropout(
            dropout, dtype=dtype, name="embeddings_dropout"
        )
        self.transformer_layers = [
            InfMemoryTransformerDecoder(
                num_heads=num_heads,
                intermediate_dim=intermediate_dim,
                block_size=block_size,
                memory_options=memory_options if i in memory_layers else None,
                dropout=dropout,
                layer_norm_epsilon=1e-5,
                carry_batch_size=carry_batch_size,
                kernel_initializer=_gpt2_initializer(stddev=0.02),
                dtype=dtype,
                name=f"transformer_layer_{i}",
            )
            for i in range(num_layers)
        ]
        self.layer_norm = keras.layers.LayerNormalization(
            axis=-1, epsilon=1e-5, dtype=dtype, name="layer_norm"
        )

        token_id_input = keras.Input(
            shape=(None,), dtype="int32", name="token_ids"
        )
        padding_mask_input = keras.Input(
            shape=(None,), dtype="int32", name="padding_mask"
        )
        tokens = self.token_embedding(token_id_input)
        positions = self.position_embedding(tokens)
        x = self.embeddings_add((tokens, positions))
        x = self.embeddings_dropout(x)
        reset = None
        if carry_batch_size is not None and reset_token_id is not None:
            reset = ops.logical_and(
                ops.equal(token_id_input[:, 0], reset_token_id),
                ops.cast(padding_mask_input[:, 0], "bool"),
            )  # (B,) a document starts here
        for layer in self.transformer_layers:
            x = layer(
                x, decoder_padding_mask=padding_mask_input, reset_mask=reset
            )
        sequence_output = self.layer_norm(x)
        # Skip GPT2Backbone.__init__ (it builds plain decoders): Backbone's.
        super(keras_hub.models.GPT2Backbone, self).__init__(
            inputs={
                "token_ids": token_id_input,
                "padding_mask": padding_mask_input,
            },
            outputs=sequence_output,
            dtype=dtype,
            **kwargs,
        )
        self.vocabulary_size = vocabulary_size
        self.num_layers = num_layers
        self.num_heads = num_heads
        self.hidden_dim = hidden_dim
        self.intermediate_dim = intermediate_dim
        self.dropout = dropout
        self.max_sequence_length = max_sequence_length
        self.block_size = block_size
        self.memory_layers = memory_layers
        self.memory_options = memory_options
        self.carry_batch_size = carry_batch_size
        self.reset_token_id = reset_token_id

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "block_size": self.block_size,
                "memory_layers": list(self.memory_layers),
                "memory_options": self.memory_options,
                "carry_batch_size": self.carry_batch_size,
                "reset_token_id": self.reset_token_id,
            }
        )
        return config

    @property
    def memory_layers_list(self):
        """The decoder layers that carry a memory."""
        return [layer for layer in self.transformer_layers if layer.has_memory]


@keras.saving.register_keras_serializable(package="keras_infmemory")
class InfMemoryGPT2Tokenizer(keras_hub.models.GPT2Tokenizer):
    """`keras_hub.models.GPT2Tokenizer` for `InfMemoryGPT2Backbone` presets.

    Identical to GPT-2's; it exists so that ``from_preset`` finds a
    tokenizer for the memory backbone.

    Example:

    >>> from keras_infmemory.models.gpt2 import InfMemoryGPT2Tokenizer
    >>> vocab = {"<|endoftext|>": 0, "a": 1, "b": 2, "ab": 3}
    >>> tokenizer = InfMemoryGPT2Tokenizer(vocabulary=vocab, merges=["a b"])
    >>> tokenizer.vocabulary_size()
    4
    """

    backbone_cls = InfMemoryGPT2Backbone


@keras.saving.register_keras_serializable(package="keras_infmemory")
class InfMemoryGPT2CausalLMPreprocessor(
    keras_hub.models.GPT2CausalLMPreprocessor
):
    """`keras_hub.models.GPT2CausalLMPreprocessor` for the memory backbone.

    Example:

    >>> from keras_infmemory.models import gpt2
    >>> vocab = {"<|endoftext|>": 0, "a": 1, "b": 2, "ab": 3}
    >>> tokenizer = gpt2.InfMemoryGPT2Tokenizer(vocab, merges=["a b"])
    >>> preprocessor = gpt2.InfMemoryGPT2CausalLMPreprocessor(
    ...     tokenizer, sequence_length=4
    ... )
    >>> x, y, w = preprocessor(["ab"])
    """

    backbone_cls = InfMemoryGPT2Backbone
    tokenizer_cls = InfMemoryGPT2Tokenizer


_LTM_OPTIONS = (
    "num_basis",
    "basis_widths",
    "ridge_penalty",
    "tau",
    "num_samples",
    "min_variance",
    "kl_sigma",
    "kl_weight",
    "kl_prior_mean",
    "memory_gate",
    "sticky",
)


def _split_options(kwargs):
    """Pops the memory options out of ``kwargs``."""
    options = {k: kwargs.pop(k) for k in _MODEL_OPTIONS if k in kwargs}
    memory_options = dict(kwargs.pop("memory_options", None) or {})
    memory_options.update(
        {k: kwargs.pop(k) for k in _LTM_OPTIONS if k in kwargs}
    )
    if memory_options:
        options["memory_options"] = memory_options
    return options


@keras.saving.register_keras_serializable(package="keras_infmemory")
class InfMemoryGPT2CausalLM(keras_hub.models.GPT2CausalLM):
    """A KerasHub GPT-2 causal LM with an unbounded ∞-former memory.

    A `keras_hub.models.GPT2CausalLM` whose backbone is an
    `InfMemoryGPT2Backbone`: ``fit``, ``predict``, ``generate``, ``score``
    and ``save_to_preset`` work as for GPT-2.

    * Calling the model on ``T`` tokens processes ``ceil(T / block_size)``
      blocks in order, the memory starting empty and carried from block to
      block. A single block gives exactly GPT-2's logits.
    * `call_with_memory` takes and returns the memory state explicitly, to
      feed a document block by block.
    * With ``carry_batch_size`` set, ``fit`` carries the memory from one
      batch to the next (one block per row per step, rows reset where a
      block starts with ``reset_token_id``); see
      `keras_infmemory.data.documents.DocumentBlocks`.
    * ``generate()`` keeps the memory in the sampler's cache: a long prompt
      is absorbed block by block, then every decoded token reads the memory
      and each completed block is written to it.
    * ``memory_enabled = False`` switches the memory off (same weights):
      GPT-2 on each block alone.

    Load a preset (KerasHub name or local directory) and add a memory with
    `from_preset`; give a model in hand a memory with `attach_memory`.
    GPT-2's weights are copied unchanged; the LTMs are new.

    Example:

    >>> import numpy as np
    >>> import keras_hub
    >>> from keras_infmemory.models.gpt2 import attach_memory
    >>> vocab = {"<|endoftext|>": 0, "a": 1, "b": 2, "ab": 3}
    >>> tokenizer = keras_hub.models.GPT2Tokenizer(vocab, merges=["a b"])
    >>> gpt2 = keras_hub.models.GPT2CausalLM(
    ...     keras_hub.models.GPT2Backbone(
    ...         vocabulary_size=4, num_layers=2, num_heads=2, hidden_dim=16,
    ...         intermediate_dim=32, max_sequence_length=16,
    ...     ),
    ...     keras_hub.models.GPT2CausalLMPreprocessor(
    ...         tokenizer, sequence_length=16
    ...     ),
    ... )
    >>> lm = attach_memory(gpt2, block_size=8, num_basis=16, num_samples=16)
    >>> ids = np.ones((1, 24), "int32")
    >>> logits = lm({"token_ids": ids, "padding_mask": ids})  # 3 blocks
    >>> tuple(logits.shape)
    (1, 24, 4)

    Args:
        backbone: an `InfMemoryGPT2Backbone`.
        preprocessor: a `keras_hub.models.GPT2CausalLMPreprocessor` or
            ``None``.
        **kwargs: `keras_hub.models.GPT2CausalLM` arguments.
    """

    backbone_cls = InfMemoryGPT2Backbone
    preprocessor_cls = InfMemoryGPT2CausalLMPreprocessor

    def __init__(self, backbone, preprocessor=None, **kwargs):
        if not isinstance(backbone, InfMemoryGPT2Backbone):
            raise ValueError(
                "`backbone` must be an InfMemoryGPT2Backbone; use "
                "attach_memory() for a plain GPT-2. "
                f"Received: backbone={type(backbone).__name__}"
            )
        super().__init__(backbone, preprocessor=preprocessor, **kwargs)

    @classmethod
    def from_preset(cls, preset, load_weights=True, **kwargs):
        """Loads a KerasHub GPT-2 preset and gives it a memory.

        ``preset``: a KerasHub preset name (``"gpt2_base_en"``), a
        ``kaggle://``/``hf://`` handle or a local preset directory, holding a
        plain GPT-2 or a saved `InfMemoryGPT2CausalLM`. Memory options
        (``block_size``, ``memory_layers``, ``carry_batch_size``,
        ``reset_token_id``, ``memory_options`` or any `ContinuousLTM`
        argument such as ``num_basis`` or ``sticky``) go to
        `attach_memory`; the rest to ``GPT2CausalLM.from_preset``.
        """
        options = _split_options(kwargs)
        model = keras_hub.models.GPT2CausalLM.from_preset(
            preset, load_weights=load_weights, **kwargs
        )
        if isinstance(model, InfMemoryGPT2CausalLM) and not options:
            return model
        return attach_memory(model, **options)

    # ------------------------------------------------------------------ #
    # Memory switches and explicit state
    # ------------------------------------------------------------------ #

    @property
    def memory_enabled(self):
        """Whether the LTMs are used (False: GPT-2 on each block alone)."""
        return all(
            layer.memory_enabled for layer in self.backbone.transformer_layers
        )

    @memory_enabled.setter
    def memory_enabled(self, value):
        for layer in self.backbone.transformer_layers:
            layer.memory_enabled = bool(value)
        # Compiled functions baked the old value in.
        self.train_function = self.test_function = None
        self.predict_function = self.generate_function = None

    def reset_memory(self):
        """Empties the memory carried between calls (carry mode)."""
        for layer in self.backbone.transformer_layers:
            layer.reset_carry()

    def get_initial_memory(self, batch_size):
        """An empty memory: one state per decoder layer (``{}`` if none)."""
        return [
            layer.get_initial_state(batch_size)
            for layer in self.backbone.transformer_layers
        ]

    def reset_memory_state(self, memory, reset_mask):
        """Empties the rows of ``memory`` where ``reset_mask`` is True."""
        return [
            layer.reset_state(state, reset_mask)
            for layer, state in zip(
                self.backbone.transformer_layers, memory, strict=True
            )
        ]

    def call_with_memory(self, inputs, memory, training=False):
        """Logits for ``inputs`` given the memory, and the new memory.

        Args:
            inputs: dict with ``"token_ids"`` ``(B, T)`` and optional
                ``"padding_mask"``. ``T`` may span several blocks; the
                first token starts a block.
            memory: from `get_initial_memory` or a previous call.
            training: bool.

        Returns:
            ``(logits (B, T, vocabulary), new_memory)``.
        """
        backbone = self.backbone
        token_ids = ops.convert_to_tensor(inputs["token_ids"], "int32")
        mask = inputs.get("padding_mask")
        tokens = backbone.token_embedding(token_ids)
        positions = backbone.position_embedding(tokens)
        x = backbone.embeddings_add((tokens, positions))
        x = backbone.embeddings_dropout(x, training=training)
        new_memory = []
        for layer, state in zip(
            backbone.transformer_layers, memory, strict=True
        ):
            x, state = layer.call_with_state(
                x, mask, state if layer.has_memory else None, training
            )
            new_memory.append(state if layer.has_memory else {})
        x = backbone.layer_norm(x)
        return backbone.token_embedding(x, reverse=True), new_memory

    # ------------------------------------------------------------------ #
    # Generation: the memory rides in the sampler's cache
    # ------------------------------------------------------------------ #

    def build_generation_cache(self, batch_size):
        """An empty decoding cache: per layer the block's key/value cache
        ``(B, 2, L, H, d)``, the block's layer inputs ``(B, L, e)`` and the
        memory state."""
        backbone = self.backbone
        block, heads = backbone.block_size, backbone.num_heads
        head_dim = backbone.hidden_dim // heads
        cache = {"key_value": [], "inputs": [], "memory": []}
        for layer in backbone.transformer_layers:
            cache["key_value"].append(
                ops.zeros(
                    (batch_size, 2, block, heads, head_dim), self.compute_dtype
                )
            )
            state = layer.get_initial_state(batch_size)
            if layer.has_memory:
                cache["inputs"].append(state["pending"])
                cache["memory"].append(state["memory"])
            else:
                cache["inputs"].append(ops.zeros((batch_size, 1), "float32"))
                cache["memory"].append({})
        return cache

    def _cached_forward(self, token_ids, cache, start, write, query_mask=None):
        """Tokens ``start..start+C`` (inside one block) through the cache."""
        backbone = self.backbone
        index = ops.mod(ops.cast(start, "int32"), backbone.block_size)
        tokens = backbone.token_embedding(token_ids)
        positions = backbone.position_embedding(tokens, start_index=index)
        x = backbone.embeddings_add((tokens, positions))
        x = backbone.embeddings_dropout(x, training=False)
        new = {"key_value": [], "inputs": [], "memory": []}
        for i, layer in enumerate(backbone.transformer_layers):
            x, key_value, inputs, memory = layer.call_with_cache(
                x,
                cache["key_value"][i],
                cache["inputs"][i],
                cache["memory"][i],
                index,
                write,
                query_mask=query_mask,
            )
            new["key_value"].append(key_value)
            new["inputs"].append(inputs)
            new["memory"].append(memory)
        hidden_states = backbone.layer_norm(x)
        logits = backbone.token_embedding(hidden_states, reverse=True)
        return logits, hidden_states, new

    def call_with_cache(self, token_ids, cache, cache_update_index):
        """One decoding step (KerasHub's signature).

        ``token_ids`` ``(B, C)`` at global positions
        ``cache_update_index..+C`` inside one block; ``cache`` from
        `build_generation_cache`. At a block start (index a positive
        multiple of ``block_size``) the previous block is first written to
        the memory. Returns ``(logits, hidden_states, cache)``.
        """
        index = ops.cast(cache_update_index, "int32")
        write = ops.logical_and(
            ops.equal(ops.mod(index, self.backbone.block_size), 0), index > 0
        )
        return self._cached_forward(token_ids, cache, index, write)

    def prefill(self, token_ids, cache, length):
        """Absorbs ``token_ids[:, :length]`` into ``cache``.

        Full blocks are processed whole (each written to the memory at the
        start of the next); the block holding token ``length`` gets its
        first ``length mod block_size`` tokens. Then decoding may continue
        with `call_with_cache` at index ``length``.
        """
        block = self.backbone.block_size
        batch, total = ops.shape(token_ids)[0], token_ids.shape[1]
        pad = -total % block + block
        token_ids = ops.pad(token_ids, ((0, 0), (0, pad)))
        length = ops.cast(length, "int32")
        full, rest = length // block, ops.mod(length, block)

        def block_ids(j):
            return ops.slice(token_ids, [0, j * block], [batch, block])

        def body(j, cache):
            _, _, cache = self._cached_forward(
                block_ids(j), cache, j * block, j > 0
            )
            return cache

        cache = ops.fori_loop(0, full, body, cache)

        def partial():
            valid = ops.arange(block)[None, :] < rest  # (1, L)
            valid = ops.broadcast_to(valid, (batch, block))
            _, _, new = self._cached_forward(
                block_ids(full), cache, full * block, full > 0, valid
            )
            return new

        return ops.cond(rest > 0, partial, lambda: cache)

    def generate_step(self, inputs, stop_token_ids=None):
        """GPT-2's compilable generation step, with the memory in the cache.

        The contrastive sampler is not supported (no ``hidden_states``).
        """
        token_ids, padding_mask = inputs["token_ids"], inputs["padding_mask"]
        batch = ops.shape(token_ids)[0]
        row_lengths = ops.sum(ops.cast(padding_mask, "int32"), axis=-1)
        index = ops.min(row_lengths)
        cache = self.build_generation_cache(batch)
        # The sampler re-processes token index - 1 first.
        cache = self.prefill(token_ids, cache, index - 1)

        def next(prompt, cache, index):
            cache_update_index = index - 1
            batch_size = ops.shape(prompt)[0]
            prompt = ops.slice(prompt, [0, cache_update_index], [batch_size, 1])
            logits, hidden_states, cache = self.call_with_cache(
                prompt, cache, cache_update_index
            )
            return (
                ops.squeeze(logits, axis=1),
                ops.squeeze(hidden_states, axis=1),
                cache,
            )

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
        if stop_token_ids is not None:
            stops = ops.convert_to_tensor(list(stop_token_ids), "int32")
            is_stop = ops.any(
                ops.equal(ops.cast(token_ids, "int32")[..., None], stops),
                axis=-1,
            )
            end_locations = ops.logical_and(
                is_stop, ops.logical_not(ops.cast(padding_mask, "bool"))
            )
            end_locations = ops.cast(end_locations, "int32")
            cumsum = ops.cast(ops.cumsum(end_locations, axis=-1), "int32")
            overflow = cumsum - end_locations
            padding_mask = ops.logical_not(ops.cast(overflow, "bool"))
        else:
            padding_mask = ops.ones_like(token_ids, dtype="bool")
        return {"token_ids": token_ids, "padding_mask": padding_mask}

    # ------------------------------------------------------------------ #
    # Inspection
    # ------------------------------------------------------------------ #

    def memory_densities(self, token_ids, memory=None):
        """Where each layer's memory is read, block by block.

        Returns, per block ``s ≥ 1`` (block 0 has an empty memory), a list
        over memory layers of ``(mu, variance)`` ``(B, H, L)`` arrays, and
        the final memory.
        """
        backbone = self.backbone
        block = backbone.block_size
        token_ids = ops.convert_to_tensor(token_ids, "int32")
        total = token_ids.shape[1]
        batch = ops.shape(token_ids)[0]
        memory = memory or self.get_initial_memory(batch)
        densities = []
        for start in range(0, total, block):
            ids = token_ids[:, start : start + block]
            per_layer = []
            tokens = backbone.token_embedding(ids)
            x = backbone.embeddings_add(
                (tokens, backbone.position_embedding(tokens))
            )
            new_memory = []
            for layer, state in zip(
                backbone.transformer_layers, memory, strict=True
            ):
                if layer.has_memory and start > 0:
                    current = where_rows(
                        state["has_pending"],
                        layer.memory.write(state["pending"], state["memory"]),
                        state["memory"],
                    )
                    h = layer._self_attention_layer_norm(x)
                    query = layer._self_attention_layer.query_dense(h)
                    per_layer.append(layer.memory.density(query, current))
                x, state = layer.call_with_state(
                    x, None, state if layer.has_memory else None
                )
                new_memory.append(state if layer.has_memory else {})
            memory = new_memory
            if start > 0:
                densities.append(per_layer)
        return densities, memory


def attach_memory(gpt2_causal_lm, **options):
    """Gives a KerasHub GPT-2 causal LM an ∞-former memory.

    Builds an `InfMemoryGPT2CausalLM` with the same GPT-2 configuration,
    copies every GPT-2 weight unchanged (matched by path) and adds a fresh
    `ContinuousLTM` to each chosen layer. The preprocessor is shared.

    Example:

    >>> import keras_hub
    >>> from keras_infmemory.models.gpt2 import attach_memory
    >>> gpt2 = keras_hub.models.GPT2CausalLM(
    ...     keras_hub.models.GPT2Backbone(
    ...         vocabulary_size=8, num_layers=1, num_heads=2, hidden_dim=8,
    ...         intermediate_dim=16, max_sequence_length=8,
    ...     )
    ... )
    >>> lm = attach_memory(gpt2, block_size=4, num_basis=16, num_samples=8)
    >>> type(lm).__name__
    'InfMemoryGPT2CausalLM'

    Args:
        gpt2_causal_lm: a `keras_hub.models.GPT2CausalLM` (with or without
            a memory).
        **options: ``block_size`` (default 512, capped at
            ``max_sequence_length``), ``memory_layers``,
            ``carry_batch_size``, ``reset_token_id`` (defaults to the
            tokenizer's end token in carry mode), ``memory_options`` and any
            `ContinuousLTM` argument (``num_basis``, ``tau``, ``sticky``, …).
            On a model that already has a memory, the given options
            replace its own.

    Returns:
        An `InfMemoryGPT2CausalLM`.
    """
    if not isinstance(gpt2_causal_lm, keras_hub.models.GPT2CausalLM):
        raise ValueError(
            "`gpt2_causal_lm` must be a keras_hub.models.GPT2CausalLM. "
            f"Received: {type(gpt2_causal_lm).__name__}"
        )
    rest = dict(options)
    options = _split_options(rest)
    if rest:
        raise ValueError(
            "Unknown memory options: expected "
            f"{list(_MODEL_OPTIONS + _LTM_OPTIONS)} or memory_options. "
            f"Received: {sorted(rest)}"
        )
    old = gpt2_causal_lm.backbone
    config = old.get_config()
    for key in ("name", "trainable"):
        config.pop(key, None)
    if isinstance(old, InfMemoryGPT2Backbone):
        memory_options = dict(old.memory_options)
        memory_options.update(options.pop("memory_options", {}))
        options["memory_options"] = memory_options
    config.update(options)
    config.setdefault("block_size", min(512, config["max_sequence_length"]))
    preprocessor = gpt2_causal_lm.preprocessor
    if (
        config.get("carry_batch_size") is not None
        and config.get("reset_token_id") is None
        and preprocessor is not None
    ):
        config["reset_token_id"] = int(preprocessor.tokenizer.end_token_id)
    backbone = InfMemoryGPT2Backbone(**config)
    _copy_weights(old, backbone)
    return InfMemoryGPT2CausalLM(backbone, preprocessor=preprocessor)


def _copy_weights(source, target):
    """Copies every weight of ``source`` into ``target`` by path."""
    by_path = {v.path: v for v in target.weights}
    for variable in source.weights:
        if variable.path.split("/")[-1].startswith("carry_"):
            continue
        if variable.path not in by_path:
            raise ValueError(
                f"Cannot place weight {variable.path!r}: the new backbone "
                "has no weight with that path (a memory layer dropped?)."
            )
        destination = by_path[variable.path]
        if tuple(destination.shape) != tuple(variable.shape):
            raise ValueError(
                f"Shape mismatch for {variable.path!r}: "
                f"{tuple(variable.shape)} vs {tuple(destination.shape)}."
            )
        destination.assign(variable.value)


@keras.saving.register_keras_serializable(package="keras_infmemory")
class MemoryAdamW(keras.optimizers.AdamW):
    """AdamW with its own learning rate and no weight decay for the LTMs.

    The paper's GPT-2 fine-tuning (SPEC §7): GPT-2 weights at
    ``learning_rate`` with weight decay, LTM weights at
    ``memory_learning_rate`` without; both follow the same schedule (the
    memory's rate is ``learning_rate(step) · memory_learning_rate /
    learning_rate(0)``). LTM weights are recognised by name.

    Example:

    >>> from keras_infmemory.models.gpt2 import MemoryAdamW
    >>> optimizer = MemoryAdamW(
    ...     learning_rate=5e-5, memory_learning_rate=2.5e-4, clipnorm=1.0
    ... )

    Args:
        learning_rate: float or schedule, the GPT-2 learning rate.
        memory_learning_rate: float, the LTM learning rate at step 0.
        weight_decay: float, for the GPT-2 weights only.
        memory_variable_names: names of the LTM weights.
        **kwargs: `keras.optimizers.AdamW` arguments (``clipnorm``, …).
    """

    def __init__(
        self,
        learning_rate=5e-5,
        memory_learning_rate=2.5e-4,
        weight_decay=0.01,
        memory_variable_names=MEMORY_VARIABLE_NAMES,
        **kwargs,
    ):
        super().__init__(
            learning_rate=learning_rate, weight_decay=weight_decay, **kwargs
        )
        if float(memory_learning_rate) <= 0:
            raise ValueError(
                "`memory_learning_rate` must be > 0. "
                f"Received: memory_learning_rate={memory_learning_rate}"
            )
        self.memory_learning_rate = float(memory_learning_rate)
        self.memory_variable_names = tuple(memory_variable_names)
        initial = learning_rate
        if isinstance(initial, keras.optimizers.schedules.LearningRateSchedule):
            initial = float(keras.ops.convert_to_numpy(initial(0)))
        self._memory_ratio = self.memory_learning_rate / float(initial)
        # TensorFlow hands tf.Variables ("scope/key_kernel:0") to the update.
        self.exclude_from_weight_decay(
            var_names=[f"(^|/){n}(:\\d+)?$" for n in self.memory_variable_names]
        )

    def is_memory_variable(self, variable):
        """Whether ``variable`` is an LTM weight (by name)."""
        name = variable.name.split("/")[-1].split(":")[0]
        return name in self.memory_variable_names

    def update_step(self, gradient, variable, learning_rate):
        if self.is_memory_variable(variable):
            learning_rate = learning_rate * self._memory_ratio
        super().update_step(gradient, variable, learning_rate)

    def get_config(self):
        config = super().get_config()
        config["memory_learning_rate"] = self.memory_learning_rate
        config["memory_variable_names"] = list(self.memory_variable_names)
        return config
