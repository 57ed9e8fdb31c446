"""The ∞-former paper's sorting task (Martins et al., 2022, §4.1).

A sequence of `L` symbols is drawn from a distribution that drifts from
`p_start` to `p_end`; the model must then output the 20 symbols sorted by how
often they occurred. Remembering the start of a long sequence is what makes
the task hard for models whose memory only covers its end.

Token ids:

- `0 .. NUM_SYMBOLS - 1` (0..19): the symbols.
- `SEPARATOR_ID` (20): ends the sequence; the answer follows it.
- `PAD_ID` (21): fills up to a multiple of `pad_to_multiple`. It is only ever
  produced when padding is asked for; `VOCABULARY_SIZE` (22) counts it so an
  embedding sized by it fits every option.

Layout of one example, teacher-forced (without padding, `T = L + 20`):

```
full    = [x_0 .. x_{L-1}, SEP, y_0 .. y_19]      length L + 21
inputs  = full[:-1] = [x_0 .. x_{L-1}, SEP, y_0 .. y_18]
labels  = full[1:]  = [x_1 .. x_{L-1}, SEP, y_0 .. y_19]
weights = [0] * L + [1] * 20
```

The input at position `L` (the separator) predicts `y_0`, and so on: the
answer is always the last 20 positions. Labels elsewhere are the true next
tokens (never negative, so Keras' sparse losses accept them) but carry weight
0, so loss and accuracy count the answer only. With `pad_to_multiple=S`,
`PAD_ID` is put on the left (default) or right until `T` is a multiple of
`S`; pads have weight 0. Left padding keeps the answer at the end of the last
segment, where a segment-wise model that trains only its last segment needs
it.

Everything here is NumPy; Keras is used only for `keras.utils.PyDataset`.
"""

import keras
import numpy as np

from experiments.data.checks import check_positive_int, check_seed

NUM_SYMBOLS = 20
SEPARATOR_ID = NUM_SYMBOLS  # 20
PAD_ID = NUM_SYMBOLS + 1  # 21
VOCABULARY_SIZE = NUM_SYMBOLS + 2  # 22: symbols, separator, pad
ANSWER_LENGTH = NUM_SYMBOLS

_PADDING_SIDES = ("left", "right")


def _check_padding(pad_to_multiple, padding_side):
    if pad_to_multiple is not None:
        check_positive_int("pad_to_multiple", pad_to_multiple)
    if padding_side not in _PADDING_SIDES:
        raise ValueError(
            f"`padding_side` must be one of {_PADDING_SIDES}. "
            f"Received: padding_side={padding_side!r}"
        )


def total_length(length, pad_to_multiple=None):
    """Length `T` of the inputs (and labels) for sequences of `length`.

    `length + 1 + 19`: the sequence, the separator and all answer tokens but
    the last, rounded up to a multiple of `pad_to_multiple` if given.

    Example:

    >>> total_length(4096)
    4116
    >>> total_length(4096, pad_to_multiple=1024)
    5120

    Args:
        length: int, number of symbols `L` before the separator.
        pad_to_multiple: optional int, round `T` up to a multiple of it.

    Returns:
        int, `T`.
    """
    check_positive_int("length", length)
    _check_padding(pad_to_multiple, "left")
    total = length + 1 + ANSWER_LENGTH - 1
    if pad_to_multiple is not None:
        total = -(-total // pad_to_multiple) * pad_to_multiple
    return int(total)


def sample_distributions(rng):
    """Draws `p_start` and `p_end`, each ∝ i.i.d. integers in [1, 9].

    Example:

    >>> p_start, p_end = sample_distributions(np.random.default_rng(0))
    >>> p_start.shape, bool(np.isclose(p_end.sum(), 1.0))
    ((20,), True)

    Args:
        rng: a `np.random.Generator`.

    Returns:
        Tuple `(p_start, p_end)` of float64 arrays of shape `(NUM_SYMBOLS,)`.
    """
    weights = rng.integers(1, 10, size=(2, NUM_SYMBOLS))  # (2, 20), in [1, 9]
    probs = weights / weights.sum(axis=1, keepdims=True)  # (2, 20)
    return probs[0], probs[1]


def sample_sequence(length, p_start, p_end, rng):
    """Draws `length` symbols whose distribution drifts from start to end.

    Token `j` is drawn from `(1 - j / L) p_start + (j / L) p_end`: first pick
    the component (`p_end` with probability `j / L`), then the symbol.

    Example:

    >>> rng = np.random.default_rng(0)
    >>> sequence = sample_sequence(8, *sample_distributions(rng), rng)
    >>> sequence.shape, sequence.dtype
    ((8,), dtype('int32'))

    Args:
        length: int, `L`.
        p_start: array of shape `(NUM_SYMBOLS,)`, the distribution at `j = 0`.
        p_end: array of shape `(NUM_SYMBOLS,)`, the limit at `j = L`.
        rng: a `np.random.Generator`.

    Returns:
        int32 array of shape `(length,)` with values in `[0, NUM_SYMBOLS)`.
    """
    check_positive_int("length", length)
    mix = np.arange(length) / length  # (L,), j / L
    from_end = rng.random(length) < mix  # (L,)
    start_draws = rng.choice(NUM_SYMBOLS, size=length, p=p_start)  # (L,)
    end_draws = rng.choice(NUM_SYMBOLS, size=length, p=p_end)  # (L,)
    return np.where(from_end, end_draws, start_draws).astype("int32")


def sorting_target(sequence):
    """The 20 symbols by descending frequency in `sequence`.

    Ties are broken by first occurrence in the sequence; symbols that never
    occur come last, in index order.

    Example:

    >>> tuple(sorting_target((3, 1, 1, 3, 5)).tolist()[:5])
    (3, 1, 5, 0, 2)

    Args:
        sequence: 1-D int array-like with values in `[0, NUM_SYMBOLS)`.

    Returns:
        int32 array of shape `(NUM_SYMBOLS,)`, a permutation of the symbols.
    """
    sequence = np.asarray(sequence)
    if sequence.size == 0:
        sequence = sequence.astype("int32")  # np.asarray([]) is float64
    if not np.issubdtype(sequence.dtype, np.integer):
        raise ValueError(
            "`sequence` must hold integer ids. "
            f"Received: sequence.dtype={sequence.dtype}"
        )
    if sequence.ndim != 1:
        raise ValueError(
            f"`sequence` must be 1-D. Received: sequence.shape={sequence.shape}"
        )
    if sequence.size and (sequence.min() < 0 or sequence.max() >= NUM_SYMBOLS):
        raise ValueError(
            f"`sequence` values must be in [0, {NUM_SYMBOLS}). Received: "
            f"min={sequence.min()}, max={sequence.max()}"
        )
    counts = np.bincount(sequence, minlength=NUM_SYMBOLS)  # (20,)
    # Unseen symbols get a "first occurrence" past the end, in index order.
    first = len(sequence) + np.arange(NUM_SYMBOLS)  # (20,)
    seen, first_seen = np.unique(sequence, return_index=True)
    first[seen] = first_seen
    # lexsort sorts by the last key first: count descending, then first.
    return np.lexsort((first, -counts)).astype("int32")


def _pad(array, amount, value, padding_side):
    if amount == 0:
        return array
    pad = np.full(amount, value, dtype=array.dtype)
    parts = (pad, array) if padding_side == "left" else (array, pad)
    return np.concatenate(parts)


def make_example(length, rng, pad_to_multiple=None, padding_side="left"):
    """One teacher-forced sorting example (see the module docstring).

    Example:

    >>> inputs, labels, weights = make_example(10, np.random.default_rng(0))
    >>> inputs.shape, int(inputs[10]), float(weights.sum())
    ((30,), 20, 20.0)

    Args:
        length: int, number of symbols `L` before the separator.
        rng: a `np.random.Generator`.
        pad_to_multiple: optional int, pad the `T = L + 20` positions with
            `PAD_ID` up to a multiple of it.
        padding_side: `"left"` (default) or `"right"`, where pads go.

    Returns:
        Tuple `(inputs, labels, weights)`, each of shape `(T,)`: int32 token
        ids, int32 next-token ids, and float32 weights, 1 exactly on the 20
        answer positions.
    """
    check_positive_int("length", length)
    _check_padding(pad_to_multiple, padding_side)
    sequence = sample_sequence(length, *sample_distributions(rng), rng)
    target = sorting_target(sequence)
    full = np.concatenate(
        [sequence, np.array([SEPARATOR_ID], "int32"), target]
    )  # (L + 21,)
    inputs, labels = full[:-1], full[1:]  # (L + 20,) each
    weights = np.zeros(len(inputs), "float32")  # (L + 20,)
    weights[length:] = 1.0  # positions SEP, y_0 .. y_18 predict y_0 .. y_19
    amount = total_length(length, pad_to_multiple) - len(inputs)
    inputs = _pad(inputs, amount, PAD_ID, padding_side)
    labels = _pad(labels, amount, PAD_ID, padding_side)
    weights = _pad(weights, amount, 0.0, padding_side)
    return inputs, labels, weights


def make_batch(
    batch_size, length, seed=None, pad_to_multiple=None, padding_side="left"
):
    """A batch of sorting examples, deterministic for a given `seed`.

    B: batch, T: `total_length(length, pad_to_multiple)`.

    Example:

    >>> inputs, labels, weights = make_batch(2, 100, seed=0)
    >>> inputs.shape, labels.dtype, weights.dtype
    ((2, 120), dtype('int32'), dtype('float32'))

    Args:
        batch_size: int, `B`.
        length: int, number of symbols `L` before the separator.
        seed: int, sequence of ints (e.g. `(seed, index)`) or `None`; passed
            to `np.random.default_rng`. `None` draws fresh entropy.
        pad_to_multiple: optional int, see `make_example`.
        padding_side: `"left"` (default) or `"right"`.

    Returns:
        Tuple `(inputs, labels, weights)` of shapes `(B, T)`: int32, int32,
        float32.
    """
    check_positive_int("batch_size", batch_size)
    check_positive_int("length", length)
    _check_padding(pad_to_multiple, padding_side)
    rng = np.random.default_rng(seed)
    examples = [
        make_example(length, rng, pad_to_multiple, padding_side)
        for _ in range(batch_size)
    ]
    inputs, labels, weights = (
        np.stack(parts) for parts in zip(*examples, strict=True)
    )
    return inputs, labels, weights  # (B, T) each


def answer_accuracy(logits_or_predictions, labels, weights):
    """Accuracy over the answer tokens only (where `weights > 0`).

    Example:

    >>> labels = np.array([[4, 5, 6]])
    >>> weights = np.array([[0.0, 1.0, 1.0]])
    >>> answer_accuracy(np.array([[0, 5, 7]]), labels, weights)
    0.5

    Args:
        logits_or_predictions: either logits (or probabilities) of shape
            `(B, T, V)`, reduced by argmax over the last axis, or predicted
            ids of shape `(B, T)`. Any array-like, e.g. a backend tensor
            converted with `keras.ops.convert_to_numpy`.
        labels: int array of shape `(B, T)`.
        weights: array of shape `(B, T)`; positions with weight 0 are
            ignored, others are weighted.

    Returns:
        Python float in `[0, 1]`.
    """
    predictions = np.asarray(logits_or_predictions)
    labels = np.asarray(labels)
    weights = np.asarray(weights, dtype="float64")
    if predictions.ndim == labels.ndim + 1:
        predictions = np.argmax(predictions, axis=-1)
    if predictions.shape != labels.shape or weights.shape != labels.shape:
        raise ValueError(
            "`logits_or_predictions` must have shape `labels.shape` or "
            "`labels.shape + (V,)`, and `weights` shape `labels.shape`. "
            f"Received: logits_or_predictions.shape="
            f"{np.shape(logits_or_predictions)}, labels.shape={labels.shape}, "
            f"weights.shape={weights.shape}"
        )
    total = weights.sum()
    if total <= 0:
        raise ValueError(
            "`weights` must have a positive sum. "
            f"Received: weights.sum()={total}"
        )
    return float(np.sum(weights * (predictions == labels)) / total)


def counting_baseline(length, visible, num_examples=256, seed=0):
    """Answer accuracy of an ideal counter that sees only the last
    ``visible`` symbols: a yardstick for models with a bounded memory.

    It ranks the symbols by `sorting_target` of its window (frequency, then
    first occurrence, unseen symbols by index) and at each answer position
    names the best-ranked symbol the (teacher-forced) answer has not listed
    yet. ``visible=0`` only eliminates listed symbols, which already gets
    the last answer tokens right: that floor is well above chance (1/20).
    ``visible=length`` sees everything: 1.0.

    Example:

    >>> counting_baseline(100, 100, num_examples=4)
    1.0

    Args:
        length: int, symbols before the separator.
        visible: int in ``[0, length]``, how many of the last symbols the
            counter sees.
        num_examples: int, examples to average over.
        seed: seed of `np.random.default_rng`.

    Returns:
        Python float in ``[0, 1]``.
    """
    check_positive_int("length", length)
    check_positive_int("num_examples", num_examples)
    if (
        isinstance(visible, bool)
        or not isinstance(visible, (int, np.integer))
        or not 0 <= visible <= length
    ):
        raise ValueError(
            f"`visible` must be an integer in [0, length={length}]. "
            f"Received: visible={visible!r}"
        )
    rng = np.random.default_rng(seed)
    correct = 0
    for _ in range(num_examples):
        sequence = sample_sequence(length, *sample_distributions(rng), rng)
        target = sorting_target(sequence)
        ranking = list(sorting_target(sequence[length - visible :]))
        for symbol in target:  # (20,), teacher-forced
            correct += ranking[0] == symbol
            ranking.remove(symbol)  # listed: never named again
    return float(correct / (num_examples * ANSWER_LENGTH))


class SortingDataset(keras.utils.PyDataset):
    """Streams batches of the sorting task for `model.fit`; no files.

    Batch `index` is `make_batch(batch_size, length, seed=(seed, index))`, so
    every batch differs and each is reproducible on its own (also with
    `workers > 1`). Every epoch repeats the same `steps` batches; for the
    paper's single pass of 20k steps, use `steps=20000, epochs=1`, or
    `steps=None` (endless) with `steps_per_epoch` in `fit`.

    B: batch, T: `total_length(length, pad_to_multiple)`.

    Example:

    >>> dataset = SortingDataset(batch_size=4, length=64, steps=10, seed=0)
    >>> inputs, labels, weights = dataset[0]
    >>> len(dataset), inputs.shape
    (10, (4, 84))

    ```python
    model.compile(
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        weighted_metrics=["sparse_categorical_accuracy"],
    )
    model.fit(SortingDataset(8, 4096, steps=20000, seed=0))
    ```

    Args:
        batch_size: int, `B`.
        length: int, number of symbols `L` before the separator.
        steps: int, batches per epoch, or `None` for an endless dataset.
        seed: non-negative int.
        pad_to_multiple: optional int, pad `T` to a multiple of it (e.g. the
            segment length) with `PAD_ID`, weight 0.
        padding_side: `"left"` (default) or `"right"`, where pads go.
        **kwargs: `workers`, `use_multiprocessing`, `max_queue_size`, passed
            to `keras.utils.PyDataset`.

    Returns (per item):
        Tuple `(inputs, labels, weights)` of shapes `(B, T)`: int32, int32,
        float32; `fit` reads it as `(x, y, sample_weight)`.
    """

    def __init__(
        self,
        batch_size,
        length,
        steps,
        seed=0,
        pad_to_multiple=None,
        padding_side="left",
        **kwargs,
    ):
        super().__init__(**kwargs)
        check_positive_int("batch_size", batch_size)
        check_positive_int("length", length)
        if steps is not None:
            check_positive_int("steps", steps)
        check_seed(seed)
        _check_padding(pad_to_multiple, padding_side)
        self.batch_size = int(batch_size)
        self.length = int(length)
        self.steps = None if steps is None else int(steps)
        self.seed = int(seed)
        self.pad_to_multiple = pad_to_multiple
        self.padding_side = padding_side

    @property
    def num_batches(self):
        return self.steps

    def __len__(self):
        if self.steps is None:
            raise TypeError("An endless SortingDataset (steps=None) has no len")
        return self.steps

    def __getitem__(self, index):
        if index < 0 or (self.steps is not None and index >= self.steps):
            raise IndexError(
                f"`index` must be in [0, {self.steps}). Received: index={index}"
            )
        return make_batch(
            self.batch_size,
            self.length,
            seed=(self.seed, int(index)),
            pad_to_multiple=self.pad_to_multiple,
            padding_side=self.padding_side,
        )
