"""Causal self-attention over ``[memory; segment]`` with rotary positions.

The attention of `InfFormerBlock` (docs/math.md §6), as pure functions:
queries of one segment at positions ``0..L−1`` attend to keys at
``−S..L−1`` (``S`` past tokens kept in a short-term memory, then the
segment itself), causally and only to valid keys. Positions are relative,
through rotary embeddings (RoPE, Su et al. 2021): the score of a query at
``p`` and a key at ``p'`` depends only on ``p − p'``.

On torch and TensorFlow, without attention dropout, the scores, mask,
softmax and weighted sum go through ``keras.ops.dot_product_attention``
(torch's fused scaled-dot-product attention). On JAX, and with dropout on
the probabilities (the dropout layer acts between the softmax and the
sum), the same steps run op by op: JAX's fused path is the slower one on
CPU (docs/performance.md, "Attention: fused where it is faster").
"""

import math

import keras
from keras import ops

MAX_WAVELENGTH = 10000.0
FUSED_BACKENDS = ("torch", "tensorflow")


def rotate(x, positions):
    """Rotary embedding of ``x`` ``(B, T, H, d)`` at ``positions`` ``(T,)``.

    Rotates pairs ``(x_i, x_{i+d/2})`` by ``position · θ_i`` with
    ``θ_i = 10000^{−2i/d}``: the score of a rotated query at ``p`` and key at
    ``p'`` depends only on ``p − p'``.
    """
    half = x.shape[-1] // 2
    inverse = 1.0 / (
        MAX_WAVELENGTH ** (ops.arange(0, half, dtype="float32") / float(half))
    )  # (d/2,)
    angles = positions[:, None] * inverse[None, :]  # (T, d/2)
    cos = ops.cast(ops.cos(angles), x.dtype)[None, :, None, :]
    sin = ops.cast(ops.sin(angles), x.dtype)[None, :, None, :]
    first, second = x[..., :half], x[..., half:]
    return ops.concatenate(
        [first * cos - second * sin, second * cos + first * sin], axis=-1
    )


def allowed_keys(key_valid, query_length):
    """Which keys each query may attend to: ``(B, 1, L, S+L)`` bool.

    ``key_valid`` ``(B, S+L)``: a query at ``i`` sees the keys up to its own
    position ``S + i`` (causal) that are valid (real tokens).
    """
    total = key_valid.shape[1]
    memory = total - query_length
    causal = ops.arange(total)[None, :] <= (
        ops.arange(query_length)[:, None] + memory
    )  # (L, S+L)
    return ops.logical_and(
        causal[None, None], ops.cast(key_valid, "bool")[:, None, None, :]
    )


def causal_attention(query, key, value, key_valid, dropout=None, training=None):
    """Causal softmax attention with rotary relative positions.

    Args:
        query: ``(B, L, H, d)``, at positions ``0..L−1``.
        key: ``(B, S+L, H, d)``, at positions ``−S..L−1``.
        value: ``(B, S+L, H, d)``.
        key_valid: ``(B, S+L)`` bool, the keys that hold real tokens.
        dropout: ``None`` or a ``keras.layers.Dropout`` applied to the
            attention probabilities.
        training: bool, whether dropout is on.

    Returns:
        ``(B, L, H, d)``: for each query, the values weighted by
        ``softmax(q·k/√d)`` over the allowed keys. A query with no allowed
        key (a padded query in an empty row) weighs all keys alike.
    """
    length, total = query.shape[1], key.shape[1]
    memory = total - length
    head_dim = query.shape[-1]
    query = rotate(query, ops.arange(0, length, dtype="float32"))
    key = rotate(key, ops.arange(-memory, length, dtype="float32"))
    allowed = allowed_keys(key_valid, length)  # (B, 1, L, S+L)
    no_dropout = dropout is None or dropout.rate == 0 or not training
    if no_dropout and keras.backend.backend() in FUSED_BACKENDS:
        return ops.dot_product_attention(
            query, key, value, mask=allowed, scale=1.0 / math.sqrt(head_dim)
        )
    scores = ops.einsum("bqhd,bkhd->bhqk", query, key)  # (B, H, L, S+L)
    scores = ops.cast(scores, "float32") / math.sqrt(head_dim)
    scores = ops.where(allowed, scores, -1e9)
    probs = ops.softmax(scores, axis=-1)  # (B, H, L, S+L)
    probs = ops.cast(probs, value.dtype)
    if not no_dropout:
        probs = dropout(probs, training=training)
    return ops.einsum("bhqk,bkhd->bqhd", probs, value)  # (B, L, H, d)
