"""Tests for the sorting task generator (pure NumPy; any backend)."""

import re

import keras
import numpy as np
import pytest

from experiments.data import sorting
from experiments.data.sorting import (
    NUM_SYMBOLS,
    PAD_ID,
    SEPARATOR_ID,
    VOCABULARY_SIZE,
    SortingDataset,
    answer_accuracy,
    make_batch,
    make_example,
    sample_distributions,
    sample_sequence,
    sorting_target,
    total_length,
)


def _reference_target(sequence):
    """Slow, obvious version of the ordering rule."""
    sequence = list(sequence)

    def key(symbol):
        count = sequence.count(symbol)
        first = sequence.index(symbol) if count else len(sequence) + symbol
        return (-count, first)

    return sorted(range(NUM_SYMBOLS), key=key)


def test_token_ids():
    assert (NUM_SYMBOLS, SEPARATOR_ID, PAD_ID) == (20, 20, 21)
    assert VOCABULARY_SIZE == 22


# --- distributions and drift ---------------------------------------------


def test_distributions_are_proportional_to_integers_1_to_9():
    rng = np.random.default_rng(0)
    for _ in range(50):
        for p in sample_distributions(rng):
            assert p.shape == (NUM_SYMBOLS,)
            np.testing.assert_allclose(p.sum(), 1.0)
            # p = w / sum(w) with w in [1, 9]: ratios to the minimum are
            # rational with small integers, and max / min is at most 9.
            assert p.max() / p.min() <= 9 + 1e-9
            assert p.min() >= 1 / (9 * (NUM_SYMBOLS - 1) + 1) - 1e-12


def test_distribution_drifts_from_start_to_end():
    rng = np.random.default_rng(42)
    p_start, p_end = sample_distributions(rng)
    length, num_sequences = 10_000, 20
    tenth = length // 10
    first = np.zeros(NUM_SYMBOLS)
    last = np.zeros(NUM_SYMBOLS)
    for _ in range(num_sequences):
        sequence = sample_sequence(length, p_start, p_end, rng)
        first += np.bincount(sequence[:tenth], minlength=NUM_SYMBOLS)
        last += np.bincount(sequence[-tenth:], minlength=NUM_SYMBOLS)
    first /= first.sum()
    last /= last.sum()

    # Expected frequency over a window = mean of its per-token mixtures.
    mix = np.arange(length) / length
    mix_first, mix_last = mix[:tenth].mean(), mix[-tenth:].mean()
    expected_first = (1 - mix_first) * p_start + mix_first * p_end
    expected_last = (1 - mix_last) * p_start + mix_last * p_end
    # 20_000 draws per window: one standard error is at most ~0.0035.
    np.testing.assert_allclose(first, expected_first, atol=0.012)
    np.testing.assert_allclose(last, expected_last, atol=0.012)
    # And the ends look like their own distribution, not the other one.
    assert np.abs(first - p_start).sum() < np.abs(first - p_end).sum()
    assert np.abs(last - p_end).sum() < np.abs(last - p_start).sum()


def test_first_token_comes_from_p_start():
    # At j = 0 the mixture is exactly p_start: a symbol with zero mass there
    # can never start a sequence.
    p_start = np.zeros(NUM_SYMBOLS)
    p_start[3] = 1.0
    p_end = np.full(NUM_SYMBOLS, 1 / NUM_SYMBOLS)
    rng = np.random.default_rng(0)
    starts = [sample_sequence(50, p_start, p_end, rng)[0] for _ in range(200)]
    assert set(starts) == {3}


def test_make_example_uses_the_documented_draws():
    length = 37
    inputs, _, _ = make_example(length, np.random.default_rng(5))
    rng = np.random.default_rng(5)
    sequence = sample_sequence(length, *sample_distributions(rng), rng)
    np.testing.assert_array_equal(inputs[:length], sequence)


# --- target ----------------------------------------------------------------


def test_target_is_sorted_by_descending_frequency():
    rng = np.random.default_rng(1)
    for length in (1, 5, 19, 20, 100, 1000):
        sequence = sample_sequence(length, *sample_distributions(rng), rng)
        target = sorting_target(sequence)
        assert target.dtype == np.int32
        assert sorted(target.tolist()) == list(range(NUM_SYMBOLS))
        counts = np.bincount(sequence, minlength=NUM_SYMBOLS)[target]
        assert np.all(np.diff(counts) <= 0)
        assert target.tolist() == _reference_target(sequence)


def test_ties_go_to_first_occurrence():
    target = sorting_target([5, 2, 2, 5, 7, 9, 9, 7])
    assert target.tolist()[:4] == [5, 2, 7, 9]
    target = sorting_target([2, 5, 5, 2])
    assert target.tolist()[:2] == [2, 5]


def test_unseen_symbols_are_appended_in_index_order():
    target = sorting_target([7, 7, 7])
    expected = [7] + [s for s in range(NUM_SYMBOLS) if s != 7]
    assert target.tolist() == expected
    target = sorting_target([19, 0, 12, 12])
    assert target.tolist() == [12, 19, 0] + [
        s for s in range(1, NUM_SYMBOLS) if s not in (12, 19)
    ]
    # Unseen symbols rank below seen ones whatever their index.
    assert sorting_target([]).tolist() == list(range(NUM_SYMBOLS))


def test_sorting_target_rejects_bad_input():
    with pytest.raises(ValueError, match="Received: min=0, max=20"):
        sorting_target([0, 20])
    with pytest.raises(ValueError, match="must be 1-D"):
        sorting_target([[1, 2]])


# --- layout ----------------------------------------------------------------


@pytest.mark.parametrize("length", [1, 7, 64])
def test_layout_mask_and_shift(length):
    inputs, labels, weights = make_example(length, np.random.default_rng(3))
    size = total_length(length)
    assert size == length + 20
    assert inputs.shape == labels.shape == weights.shape == (size,)
    assert (inputs.dtype, labels.dtype, weights.dtype) == (
        np.int32,
        np.int32,
        np.float32,
    )
    # Labels are the inputs shifted by one (next-token prediction).
    np.testing.assert_array_equal(labels[:-1], inputs[1:])
    # The separator sits at position L, the answer follows.
    assert inputs[length] == SEPARATOR_ID
    assert np.all(inputs[:length] < NUM_SYMBOLS)
    target = sorting_target(inputs[:length])
    np.testing.assert_array_equal(labels[length:], target)
    np.testing.assert_array_equal(inputs[length + 1 :], target[:-1])
    # Weight 1 exactly where the label is an answer token.
    expected_weights = np.zeros(size, np.float32)
    expected_weights[length:] = 1.0
    np.testing.assert_array_equal(weights, expected_weights)
    assert weights.sum() == 20
    assert np.all(labels >= 0) and np.all(labels < VOCABULARY_SIZE)


@pytest.mark.parametrize("padding_side", ["left", "right"])
def test_padding(padding_side):
    length, multiple = 10, 16  # T = 30 -> 32: two pads
    rng = np.random.default_rng(0)
    inputs, labels, weights = make_example(
        length, rng, pad_to_multiple=multiple, padding_side=padding_side
    )
    plain, plain_labels, plain_weights = make_example(
        length, np.random.default_rng(0)
    )
    assert total_length(length, multiple) == 32
    assert inputs.shape == labels.shape == weights.shape == (32,)
    body = slice(2, None) if padding_side == "left" else slice(None, 30)
    pads = slice(None, 2) if padding_side == "left" else slice(30, None)
    np.testing.assert_array_equal(inputs[body], plain)
    np.testing.assert_array_equal(labels[body], plain_labels)
    np.testing.assert_array_equal(weights[body], plain_weights)
    assert np.all(inputs[pads] == PAD_ID) and np.all(labels[pads] == PAD_ID)
    assert np.all(weights[pads] == 0) and weights.sum() == 20
    if padding_side == "left":
        # The answer stays in the last 20 positions of the last segment.
        assert np.all(weights[-20:] == 1)


def test_padding_exact_multiple_adds_nothing():
    # L = 1004: T = 1024 already.
    inputs, _, _ = make_example(
        1004, np.random.default_rng(0), pad_to_multiple=1024
    )
    assert inputs.shape == (1024,) and not np.any(inputs == PAD_ID)
    assert total_length(4096, pad_to_multiple=1024) == 5120


# --- batches and determinism -----------------------------------------------


def test_make_batch_is_deterministic_per_seed():
    first = make_batch(3, 50, seed=7)
    again = make_batch(3, 50, seed=7)
    other = make_batch(3, 50, seed=8)
    for a, b in zip(first, again, strict=True):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(first[0], other[0])
    # Examples within a batch differ.
    assert not np.array_equal(first[0][0], first[0][1])
    assert first[0].shape == (3, 70)
    assert [x.dtype for x in first] == [np.int32, np.int32, np.float32]


def test_dataset_shapes_and_determinism():
    dataset = SortingDataset(4, 30, steps=5, seed=11, pad_to_multiple=16)
    assert len(dataset) == dataset.num_batches == 5
    inputs, labels, weights = dataset[2]
    assert inputs.shape == labels.shape == weights.shape == (4, 64)
    assert [x.dtype for x in (inputs, labels, weights)] == [
        np.int32,
        np.int32,
        np.float32,
    ]
    np.testing.assert_array_equal(weights.sum(axis=1), [20] * 4)
    # Same (seed, index) -> same batch; other index or seed -> another one.
    np.testing.assert_array_equal(dataset[2][0], inputs)
    np.testing.assert_array_equal(
        SortingDataset(4, 30, steps=5, seed=11, pad_to_multiple=16)[2][0],
        inputs,
    )
    assert not np.array_equal(dataset[3][0], inputs)
    assert not np.array_equal(
        SortingDataset(4, 30, steps=5, seed=12, pad_to_multiple=16)[2][0],
        inputs,
    )
    np.testing.assert_array_equal(
        dataset[2][0], make_batch(4, 30, (11, 2), pad_to_multiple=16)[0]
    )
    assert len(list(dataset)) == 5
    with pytest.raises(IndexError):
        dataset[5]


def test_endless_dataset():
    dataset = SortingDataset(2, 8, steps=None, seed=0)
    assert dataset.num_batches is None
    batches = []
    for batch in dataset:
        batches.append(batch[0])
        if len(batches) == 3:
            break
    assert not np.array_equal(batches[0], batches[2])


def test_dataset_trains_with_fit():
    length = 12
    model = keras.Sequential(
        [
            keras.Input((total_length(length),), dtype="int32"),
            keras.layers.Embedding(VOCABULARY_SIZE, 8),
            keras.layers.Dense(VOCABULARY_SIZE),
        ]
    )
    model.compile(
        optimizer="adam",
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        weighted_metrics=["sparse_categorical_accuracy"],
    )
    history = model.fit(
        SortingDataset(2, length, steps=2, seed=0), epochs=1, verbose=0
    )
    assert np.isfinite(history.history["loss"][0])
    inputs, labels, weights = make_batch(2, length, seed=1)
    logits = keras.ops.convert_to_numpy(model(inputs))
    accuracy = answer_accuracy(logits, labels, weights)
    assert 0.0 <= accuracy <= 1.0


# --- accuracy ----------------------------------------------------------------


def test_answer_accuracy_counts_answer_tokens_only():
    inputs, labels, weights = make_batch(2, 10, seed=0)
    # Perfect on the answer, wrong everywhere else.
    predictions = np.where(weights > 0, labels, (labels + 1) % VOCABULARY_SIZE)
    assert answer_accuracy(predictions, labels, weights) == 1.0
    # Logits work too, reduced by argmax.
    logits = np.eye(VOCABULARY_SIZE)[predictions]  # (B, T, V)
    assert answer_accuracy(logits, labels, weights) == 1.0
    # Break one answer token in 40.
    predictions[0, -1] = (labels[0, -1] + 1) % NUM_SYMBOLS
    assert answer_accuracy(predictions, labels, weights) == 39 / 40


def test_answer_accuracy_errors():
    labels = np.zeros((2, 3), np.int32)
    with pytest.raises(ValueError, match="Received: logits_or_predictions"):
        answer_accuracy(np.zeros((2, 4)), labels, np.ones((2, 3)))
    with pytest.raises(ValueError, match="positive sum"):
        answer_accuracy(labels, labels, np.zeros((2, 3)))


# --- argument checks ---------------------------------------------------------


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: total_length(0), "Received: length=0"),
        (lambda: make_batch(0, 10, seed=0), "Received: batch_size=0"),
        (lambda: make_batch(2, -3, seed=0), "Received: length=-3"),
        (lambda: make_batch(2, 2.5, seed=0), "Received: length=2.5"),
        (
            lambda: make_batch(2, 10, seed=0, pad_to_multiple=0),
            "Received: pad_to_multiple=0",
        ),
        (
            lambda: make_batch(2, 10, seed=0, padding_side="middle"),
            "Received: padding_side='middle'",
        ),
        (
            lambda: make_example(0, np.random.default_rng(0)),
            "Received: length=0",
        ),
        (lambda: SortingDataset(0, 10, steps=1), "Received: batch_size=0"),
        (lambda: SortingDataset(2, 0, steps=1), "Received: length=0"),
        (lambda: SortingDataset(2, 10, steps=0), "Received: steps=0"),
        (lambda: SortingDataset(2, 10, 1, seed=-1), "Received: seed=-1"),
    ],
)
def test_bad_arguments(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_counting_baseline_brackets():
    """Seeing everything is exact; seeing more never hurts on average; even
    seeing nothing beats chance (teacher forcing eliminates symbols)."""
    full = sorting.counting_baseline(200, 200, num_examples=16)
    assert full == 1.0
    floor = sorting.counting_baseline(200, 0, num_examples=64, seed=1)
    some = sorting.counting_baseline(200, 50, num_examples=64, seed=1)
    assert 1 / sorting.NUM_SYMBOLS < floor < some < 1.0
    # The last answer token is always right by elimination.
    assert floor >= 1 / sorting.ANSWER_LENGTH


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"length": 10, "visible": 11}, "Received: visible=11"),
        ({"length": 10, "visible": -1}, "Received: visible=-1"),
        ({"length": 10, "visible": True}, "Received: visible=True"),
        ({"length": 0, "visible": 0}, "Received: length=0"),
        (
            {"length": 10, "visible": 1, "num_examples": 0},
            "Received: num_examples=0",
        ),
    ],
)
def test_counting_baseline_errors(kwargs, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        sorting.counting_baseline(**kwargs)
