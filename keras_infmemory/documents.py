"""Long documents → blocks, in document order, with per-row resets.

The paper fine-tunes GPT-2 on long documents cut into 512-token blocks fed
in order, the memory carried from block to block and reset at document
boundaries (docs/math.md §6–§7). `DocumentBlocks` lays tokenized documents
out for ``model.fit(..., shuffle=False)``: each batch row is a stream of
whole documents, and step ``k`` of the epoch holds the ``k``-th block of every
stream. Every document starts with ``start_token_id`` (GPT-2's
``<|endoftext|>``), and the inputs' ``"reset_mask"`` marks the rows where a
document starts: a stateful model empties their memory there.
"""

import os

import numpy as np


def read_documents(paths):
    """Reads text documents: files, or folders of ``.txt`` files (sorted).

    Returns a list of ``(name, text)``; one document per file.
    """
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    documents = []
    for path in paths:
        path = os.fspath(path)
        if os.path.isdir(path):
            names = sorted(
                os.path.join(path, n)
                for n in os.listdir(path)
                if not n.startswith(".")
                and os.path.isfile(os.path.join(path, n))
            )
        elif os.path.isfile(path):
            names = [path]
        else:
            raise ValueError(
                f"`paths` must name files or folders. Received: {path!r}"
            )
        for name in names:
            with open(name, encoding="utf-8", errors="replace") as f:
                documents.append((os.path.basename(name), f.read()))
    return documents


def cut_blocks(token_ids, segment_length, start_token_id, pad_id=0):
    """One document's tokens as LM blocks.

    The document ``[start] + token_ids`` is cut into consecutive blocks of
    ``segment_length`` inputs; block ``k``'s targets are the next tokens (the
    first target of block ``k+1`` is the last input's successor).

    Returns ``(inputs, targets, weights)``, each ``(K, segment_length)``;
    the last block is padded with ``pad_id`` and weight 0.
    """
    if not isinstance(segment_length, int) or segment_length < 1:
        raise ValueError(
            "`segment_length` must be a positive int. "
            f"Received: segment_length={segment_length!r}"
        )
    tokens = np.concatenate(
        [[start_token_id], np.asarray(token_ids, "int64").ravel()]
    )
    count = len(tokens) - 1  # prediction targets
    num_blocks = max(1, -(-count // segment_length))
    size = num_blocks * segment_length
    inputs = np.full(size, pad_id, "int32")
    targets = np.full(size, pad_id, "int32")
    weights = np.zeros(size, "float32")
    inputs[:count] = tokens[:-1]
    targets[:count] = tokens[1:]
    weights[:count] = 1.0
    shape = (num_blocks, segment_length)
    return inputs.reshape(shape), targets.reshape(shape), weights.reshape(shape)


class DocumentBlocks:
    """Tokenized documents laid out as in-order blocks for ``fit``.

    Documents are assigned to ``batch_size`` streams (longest first, each
    to the currently shortest stream); each stream is its documents' blocks
    one after another, padded at the end with empty blocks (weight 0). Row
    ``i`` of step ``k`` is block ``k`` of stream ``i``, so with
    ``fit(..., batch_size=batch_size, shuffle=False)`` a model that carries
    its memory across batches (``stateful=True, batch_size=batch_size``)
    sees every document in order; the inputs' ``"reset_mask"`` empties a
    row's memory where a document starts.

    Example:

    >>> from keras_infmemory.documents import DocumentBlocks
    >>> docs = [list(range(1, 30)), list(range(1, 12)), list(range(1, 5))]
    >>> data = DocumentBlocks(docs, segment_length=8, batch_size=2,
    ...                       start_token_id=0)
    >>> x, y, w = data.arrays()
    >>> x["token_ids"].shape  # 4 steps × 2 rows
    (8, 8)
    >>> x["reset_mask"].reshape(4, 2).tolist()  # (step, row): doc starts
    [[True, True], [False, False], [False, True], [False, False]]

    Args:
        documents: list of token-id sequences, one per document.
        segment_length: int, tokens per block (the model's segment).
        batch_size: int, number of parallel streams (rows).
        start_token_id: int, prepended to every document.
        pad_id: int, the padding id. Defaults to 0.
        cut: bool. ``False``: ``documents`` are already cut, each an
            ``(inputs, targets, weights)`` of ``(K, segment_length)`` arrays
            (as `cut_blocks` returns; ``start_token_id`` is unused), with
            an optional fourth, the padding mask (default: ``weights >
            0``). Defaults to True.
    """

    def __init__(
        self,
        documents,
        segment_length,
        batch_size,
        start_token_id,
        pad_id=0,
        cut=True,
    ):
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(
                f"`batch_size` must be a positive int. Received: {batch_size!r}"
            )
        if len(documents) == 0:
            raise ValueError("`documents` must not be empty. Received: []")
        self.segment_length = segment_length
        self.batch_size = batch_size
        self.start_token_id = start_token_id
        self.pad_id = pad_id
        if cut:
            blocks = [
                cut_blocks(doc, segment_length, start_token_id, pad_id)
                for doc in documents
            ]
        else:
            blocks = [tuple(np.asarray(a) for a in doc) for doc in documents]
        blocks = [_with_mask(block, segment_length) for block in blocks]
        streams = [[] for _ in range(batch_size)]
        lengths = [0] * batch_size
        order = sorted(range(len(blocks)), key=lambda i: -len(blocks[i][0]))
        for i in order:
            row = int(np.argmin(lengths))
            streams[row].append(blocks[i])
            lengths[row] += len(blocks[i][0])
        self.num_steps = max(lengths)
        shape = (self.num_steps, batch_size, segment_length)
        self._starts = np.zeros(shape[:2], bool)  # a document starts
        self._inputs = np.full(shape, pad_id, "int32")
        self._targets = np.full(shape, pad_id, "int32")
        self._weights = np.zeros(shape, "float32")
        self._mask = np.zeros(shape, "int32")
        for row, stream in enumerate(streams):
            step = 0
            for inputs, targets, weights, mask in stream:
                k = len(inputs)
                self._starts[step, row] = True
                self._inputs[step : step + k, row] = inputs
                self._targets[step : step + k, row] = targets
                self._weights[step : step + k, row] = weights
                self._mask[step : step + k, row] = mask
                step += k
        self.num_tokens = int(self._weights.sum())

    def arrays(self):
        """``(x, y, sample_weight)`` for ``fit(shuffle=False)``: ``x`` a dict
        of ``token_ids`` and ``padding_mask``, each ``(steps·B, L)``, and
        ``reset_mask`` ``(steps·B,)``, True where a document starts."""
        flat = lambda a: a.reshape(-1, self.segment_length)  # noqa: E731
        x = {
            "token_ids": flat(self._inputs),
            "padding_mask": flat(self._mask),
            "reset_mask": self._starts.reshape(-1),
        }
        return x, flat(self._targets), flat(self._weights)

    def steps(self):
        """Yields ``(x, y, sample_weight)`` per step, ``(B, L)`` each."""
        x, y, w = self.arrays()
        b = self.batch_size
        for k in range(self.num_steps):
            rows = slice(k * b, (k + 1) * b)
            yield (
                {name: value[rows] for name, value in x.items()},
                y[rows],
                w[rows],
            )


def _with_mask(block, segment_length):
    """``(inputs, targets, weights, mask)``; the mask defaults to where the
    weights are > 0."""
    if len(block) == 3:
        block = (*block, block[2] > 0)
    if len(block) != 4:
        raise ValueError(
            "A cut document must be (inputs, targets, weights[, mask]). "
            f"Received: {len(block)} arrays"
        )
    inputs, targets, weights, mask = block
    shapes = [np.shape(a) for a in block]
    if (
        len(shapes[0]) != 2
        or shapes[0][1] != segment_length
        or any(s != shapes[0] for s in shapes)
    ):
        raise ValueError(
            "Each cut document's arrays must all have the shape (K, "
            f"segment_length={segment_length}). Received: shapes {shapes}"
        )
    return inputs, targets, weights, np.asarray(mask).astype("int32")
