"""CompressiveMemory: the Compressive Transformer's compressed memory.

The Compressive Transformer (Rae et al. 2020) keeps, beside the
short-term memory (STM) of past block inputs, a FIFO of ``memory_length``
*compressed* vectors: each segment leaving the STM is compressed ``c``-fold
(``L`` vectors → ``L / c``) and pushed in, the oldest compressed vectors
falling out. Attention reads ``[compressed; STM; segment]``. This layer
owns the compression (its weights), the memory's state and the
attention-reconstruction loss; `InfFormerBlock` (``compressor=``) does the
attention.

Segment flow (the order of docs/math.md §4, write then read). The segment
leaving the STM waits in the state (``"pending"``) and is compressed at
the start of the next segment, then read by it: the numbers are those of
compressing it when it leaves (the paper's order), but the compressed
vectors a segment reads first are computed in its own forward pass, so the
task loss trains the compressor without back-propagating through earlier
segments (the state is stop-gradient, as the STM's).

Compression functions (``compression``): ``"conv"`` (default), a 1-D
convolution with kernel = stride = ``c``, one output per ``c`` inputs
(``y_j = b + Σ_{i<c} W_i x_{jc+i}``, the paper's main choice); ``"mean"``, mean
pooling over each window (no weights).

Attention-reconstruction loss (``reconstruction_weight > 0``; Rae et al.
2020): ``‖attn(h, old) − attn(h, compress(old))‖²`` for the queries ``h``
of the segment that first reads the compressed vectors, with the block's
own query, key and value projections (content attention: no positions, no
causal mask), added with ``add_loss``. As in the paper, everything but the
compressor is stop-gradient in it (queries, memories and the block's
weights), and the compressed vectors that attention reads are then
stop-gradient too: the compressor is trained by this loss alone, the rest of
the block by the task loss alone. With ``reconstruction_weight=0``
(default) the compressor is trained by the task loss through that first
read instead.

Padding. Positions under the padding are zeros in the STM (their values
never enter it), and a compressed vector whose window holds no real token
is masked out of attention. A ``"conv"`` window that is partly padded sees
zeros there; ``"mean"`` averages the real tokens only.

Shapes: B batch, L segment length, D hidden size, c compression rate,
N ``memory_length``.

Example:

>>> import numpy as np
>>> import keras_infmemory
>>> compressor = keras_infmemory.layers.CompressiveMemory(
...     compression_rate=4, memory_length=8
... )
>>> block = keras_infmemory.InfFormerBlock(
...     num_heads=2, intermediate_dim=32, stm_length=8, compressor=compressor
... )
>>> x = np.random.rand(3, 40, 16).astype("float32")  # (B, T, D)
>>> block(x).shape  # sequence mode, 5 segments
(3, 40, 16)
>>> state = block.get_initial_state(batch_size=3)
>>> tuple(state["compressed"]["memory"].shape)  # (B, N, D)
(3, 8, 16)
"""

import math

import keras
from keras import ops

from keras_infmemory import validation as check
from keras_infmemory.state import where_rows

COMPRESSIONS = ("conv", "mean")


@keras.saving.register_keras_serializable(package="keras_infmemory")
class CompressiveMemory(keras.layers.Layer):
    """The compressed memory of a Compressive Transformer block.

    See the module docstring for the segment flow, the compression
    functions, the reconstruction loss and padding. The layer is not called
    on its own: `InfFormerBlock` uses its methods.

    Args:
        compression_rate: int ``c`` ≥ 1, inputs per compressed vector; the
            block's ``segment_length`` must be a multiple of it.
        memory_length: int ``N`` ≥ 1, compressed vectors kept (FIFO).
        compression: ``"conv"`` (default) or ``"mean"``.
        reconstruction_weight: float ≥ 0, weight of the
            attention-reconstruction loss; 0 (default) turns it off. It
            needs a trainable compression (``"conv"``).
        kernel_initializer: initializer of the ``"conv"`` kernel.
        **kwargs: base `keras.layers.Layer` arguments.
    """

    def __init__(
        self,
        compression_rate,
        memory_length,
        compression="conv",
        reconstruction_weight=0.0,
        kernel_initializer="glorot_uniform",
        **kwargs,
    ):
        # Compression runs in float32; the result is cast to the STM dtype.
        kwargs.pop("autocast", None)
        super().__init__(autocast=False, **kwargs)
        compression_rate = check.check_int("compression_rate", compression_rate)
        memory_length = check.check_int("memory_length", memory_length)
        if compression not in COMPRESSIONS:
            raise ValueError(
                f"`compression` must be one of {COMPRESSIONS}. "
                f"Received: compression={compression!r}"
            )
        reconstruction_weight = check.check_range(
            "reconstruction_weight", reconstruction_weight, 0.0, None, True
        )
        if reconstruction_weight > 0 and compression != "conv":
            raise ValueError(
                "The reconstruction loss trains the compressor: it needs "
                "compression='conv'. Received: reconstruction_weight="
                f"{reconstruction_weight} with compression={compression!r}"
            )
        self.compression_rate = compression_rate
        self.memory_length = memory_length
        self.compression = compression
        self.reconstruction_weight = reconstruction_weight
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.hidden_dim = None

    def build(self, input_shape):
        """Creates the ``"conv"`` kernel ``(c, D, D)`` and bias ``(D,)`` for
        inputs ``(B, L, D)``."""
        hidden = input_shape[-1]
        if self.built:
            if hidden != self.hidden_dim:
                raise ValueError(
                    f"This compressor was built for hidden size "
                    f"{self.hidden_dim}. Received: input_shape={input_shape}"
                )
            return
        self.hidden_dim = hidden
        if self.compression == "conv":
            self.kernel = self.add_weight(
                name="kernel",
                shape=(self.compression_rate, hidden, hidden),
                initializer=self.kernel_initializer.clone(),
                autocast=False,
            )
            self.bias = self.add_weight(
                name="bias",
                shape=(hidden,),
                initializer="zeros",
                autocast=False,
            )
        self.built = True

    def check_segment_length(self, segment_length):
        """``segment_length`` must be a multiple of ``compression_rate``."""
        if segment_length % self.compression_rate:
            raise ValueError(
                "`segment_length` must be a multiple of the compressor's "
                f"`compression_rate`={self.compression_rate}. "
                f"Received: segment_length={segment_length}"
            )

    # ------------------------------------------------------------------ #
    # State
    # ------------------------------------------------------------------ #

    def get_initial_state(self, batch_size, segment_length, dtype):
        """An empty memory: ``"memory"`` ``(B, N, D)``, the compressed
        vectors (oldest first), and ``"memory_mask"`` ``(B, N)``;
        ``"pending"`` ``(B, L, D)`` and ``"pending_mask"`` ``(B, L)``, the
        segment that has left the STM and is compressed at the next
        call."""
        hidden = self.hidden_dim
        return {
            "memory": ops.zeros(
                (batch_size, self.memory_length, hidden), dtype
            ),
            "memory_mask": ops.zeros((batch_size, self.memory_length), "bool"),
            "pending": ops.zeros((batch_size, segment_length, hidden), dtype),
            "pending_mask": ops.zeros((batch_size, segment_length), "bool"),
        }

    def reset_rows(self, state, reset_mask):
        """``state`` with the rows where ``reset_mask`` ``(B,)`` is True
        emptied; the other rows unchanged."""
        empty = {k: ops.zeros_like(v) for k, v in state.items()}
        return where_rows(ops.cast(reset_mask, "bool"), empty, state)

    # ------------------------------------------------------------------ #
    # Compression and the FIFO
    # ------------------------------------------------------------------ #

    def compress(self, x, mask):
        """``x`` ``(B, L, D)`` → ``(B, L/c, D)`` float32 and the mask
        ``(B, L/c)`` of the windows holding a real token."""
        c, hidden = self.compression_rate, x.shape[-1]
        # The number of windows stays static where L is (a -1 would lose it
        # in a TensorFlow graph whose batch size is unknown).
        windows = -1 if x.shape[1] is None else x.shape[1] // c
        mask = ops.cast(mask, "bool")
        batch = ops.shape(x)[0]
        real = ops.cast(
            ops.reshape(mask, (batch, windows, c)), "float32"
        )  # (B, L/c, c)
        windows = ops.reshape(
            ops.cast(x, "float32"), (batch, windows, c, hidden)
        )  # (B, L/c, c, D)
        count = ops.sum(real, axis=-1)  # (B, L/c)
        if self.compression == "conv":
            # Kernel = stride = c: y_j = b + Σ_i W_i x_{jc+i}.
            compressed = ops.einsum("bjcd,cde->bje", windows, self.kernel)
            compressed = compressed + self.bias
        else:
            total = ops.sum(windows * real[..., None], axis=2)  # (B, L/c, D)
            compressed = total / ops.maximum(count, 1.0)[..., None]
        return compressed, count > 0

    def read(self, state, dtype):
        """The memory a segment attends to: the waiting segment compressed
        and pushed into the FIFO.

        Returns:
            ``(memory, memory_mask, new_vectors, new_mask)``: ``memory``
            ``(B, N, D)`` in ``dtype`` and its mask, and the newly
            compressed vectors ``(B, L/c, D)`` float32 and their mask (for
            the reconstruction loss). Only the new vectors carry a
            gradient to the compressor, and only when the reconstruction
            loss is off.
        """
        new_vectors, new_mask = self.compress(
            ops.stop_gradient(state["pending"]), state["pending_mask"]
        )
        pushed = new_vectors
        if self.reconstruction_weight > 0:
            pushed = ops.stop_gradient(
                new_vectors
            )  # trained by that loss alone
        n = self.memory_length
        memory = ops.concatenate(
            [ops.stop_gradient(state["memory"]), ops.cast(pushed, dtype)],
            axis=1,
        )[:, -n:]  # (B, N, D), oldest first
        memory_mask = ops.concatenate([state["memory_mask"], new_mask], axis=1)[
            :, -n:
        ]
        return memory, memory_mask, new_vectors, new_mask

    def next_state(
        self, state, memory, memory_mask, leaving, leaving_mask, active
    ):
        """The state after a segment: the FIFO ``memory`` it read and the
        segment ``leaving`` the STM ``(B, L, D)`` (waiting); rows not
        ``active`` ``(B,)`` keep ``state``."""
        leaving_mask = ops.cast(leaving_mask, "bool")
        leaving = ops.cast(leaving, state["pending"].dtype)
        new_state = {
            "memory": ops.cast(memory, state["memory"].dtype),
            "memory_mask": memory_mask,
            "pending": ops.where(
                leaving_mask[:, :, None], leaving, ops.zeros_like(leaving)
            ),
            "pending_mask": leaving_mask,
        }
        new_state = where_rows(active, new_state, state)
        return keras.tree.map_structure(ops.stop_gradient, new_state)

    # ------------------------------------------------------------------ #
    # Attention-reconstruction loss (Rae et al. 2020)
    # ------------------------------------------------------------------ #

    def add_reconstruction_loss(
        self, query, state, new_vectors, new_mask, project, layers, query_mask
    ):
        """Adds ``weight · ‖attn(h, old) − attn(h, compress(old))‖²``.

        Args:
            query: ``(B, Lq, H, d)`` the queries of the segment reading the
                new vectors (stop-gradient here).
            state: the state before the segment (``"pending"`` is the
                old memory).
            new_vectors: ``(B, L/c, D)`` its compression, from `read`.
            new_mask: ``(B, L/c)``.
            project: ``project(x)`` → ``(keys, values)`` ``(B, T, H, d)``,
                the block's own key and value projections.
            layers: the layers ``project`` uses; their weights are
                stop-gradient in the loss.
            query_mask: ``(B, Lq)`` bool, the real queries.
        """
        if self.reconstruction_weight <= 0:
            return
        old = ops.stop_gradient(state["pending"])
        old_mask = ops.cast(state["pending_mask"], "bool")
        with _frozen(layers):
            old_keys, old_values = project(old)
            new_keys, new_values = project(ops.cast(new_vectors, old.dtype))
        query = ops.stop_gradient(ops.cast(query, "float32"))
        difference = _content_attention(
            query, new_keys, new_values, new_mask
        ) - _content_attention(query, old_keys, old_values, old_mask)
        # Real queries of rows that compressed something.
        weight = ops.logical_and(
            ops.cast(query_mask, "bool"), ops.any(old_mask, axis=1)[:, None]
        )
        weight = ops.cast(weight, "float32")[:, :, None, None]  # (B,Lq,1,1)
        size = ops.sum(weight) * difference.shape[2] * difference.shape[3]
        loss = ops.sum(weight * ops.square(difference)) / ops.maximum(size, 1.0)
        self.add_loss(self.reconstruction_weight * loss)

    def compute_output_shape(self, input_shape):
        return (
            input_shape[0],
            input_shape[1] // self.compression_rate,
            input_shape[2],
        )

    def get_config(self):
        config = super().get_config()
        config.pop("autocast", None)
        config.update(
            {
                "compression_rate": self.compression_rate,
                "memory_length": self.memory_length,
                "compression": self.compression,
                "reconstruction_weight": self.reconstruction_weight,
                "kernel_initializer": keras.initializers.serialize(
                    self.kernel_initializer
                ),
            }
        )
        return config


def _content_attention(query, keys, values, key_mask):
    """Softmax attention by content only (no positions, no causal mask):
    ``query`` ``(B, Lq, H, d)`` over ``keys``/``values`` ``(B, T, H, d)``
    with ``key_mask`` ``(B, T)``; float32 ``(B, Lq, H, d)``."""
    keys, values = ops.cast(keys, "float32"), ops.cast(values, "float32")
    scores = ops.einsum("bqhd,bkhd->bhqk", query, keys)
    scores = scores / math.sqrt(query.shape[-1])  # (B, H, Lq, T)
    scores = ops.where(ops.cast(key_mask, "bool")[:, None, None], scores, -1e9)
    probs = ops.softmax(scores, axis=-1)
    return ops.einsum("bhqk,bkhd->bqhd", probs, values)


def _frozen(layers):
    """A scope in which the weights of ``layers`` are stop-gradient: the
    layers compute as usual, but no gradient reaches their weights."""
    variables = [v for layer in layers for v in layer.trainable_variables]
    return keras.StatelessScope(
        state_mapping=[(v, ops.stop_gradient(v.value)) for v in variables]
    )
