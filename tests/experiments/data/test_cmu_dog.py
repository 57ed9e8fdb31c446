"""The CMU-DoG reader on a fixture in the dataset's exact layout: the token
sequence, token types and labels, checked by hand (docs/documents.md)."""

import json
import os

import numpy as np
import pytest

from experiments.data import cmu_dog

# A word-level tokenizer: whitespace-separated words, ids fixed here, so
# that every expected id below can be read off by hand.
SPECIAL = {"<doc>": 1, "<eos>": 2, "<speaker1>": 3, "<speaker2>": 4}
WORDS = {
    "movieName:": 10, "Up": 11, "year:": 12, "2009": 13, "cast:": 14,
    "Carl,": 15, "Russell": 16, "a": 17, "house": 18, "flies": 19,
    "balloons": 20, "hi": 21, "did": 22, "you": 23, "see": 24, "it": 25,
    "yes": 26,
}  # fmt: skip


def tokenize(text):
    return [WORDS[w] for w in text.split()]


def write_fixture(folder):
    """One document and one conversation, as the dataset ships them
    (section 0 a dict of facts, an empty section, an empty turn)."""
    os.makedirs(os.path.join(folder, "WikiData"))
    for split in cmu_dog.SPLITS:
        os.makedirs(os.path.join(folder, "Conversations", split))
    wiki = {
        "0": {"movieName": "Up", "year": 2009, "cast": ["Carl", "Russell"]},
        "1": " a house flies ",
        "2": "",
        "3": "balloons",
        "wikiDocumentIdx": 7,
    }
    texts = ["hi", "  ", "did you see it", "yes", "balloons"]
    users = ["user2", "user1", "user1", "user2", "user1"]
    conversation = {
        "date": "2018-03-27 00:23:10.528452",
        "history": [
            {
                "docIdx": 0,
                "text": text,
                "uid": uid,
                "utcTimestamp": "2018-03-27T00:25:45.131Z",
            }
            for text, uid in zip(texts, users, strict=True)
        ],
        "rating": 2,
        "status": 1,
        "uid1LogInTime": "2018-03-27T00:23:36.002Z",
        "uid1LogOutTime": "2018-03-27T00:34:50.436Z",
        "uid1response": {"response": [1], "type": "finish"},
        "uid2LogInTime": "2018-03-27T00:23:10.527Z",
        "uid2LogOutTime": "2018-03-27T00:34:50.434Z",
        "uid2response": {"response": [1], "type": "finish"},
        "user1_id": "USR1",
        "user2_id": "USR2",
        "whoSawDoc": ["user2"],
        "wikiDocumentIdx": 7,
    }
    with open(os.path.join(folder, "WikiData", "Up.json"), "w") as f:
        json.dump(wiki, f)
    path = os.path.join(folder, "Conversations", "test", "c0.json")
    with open(path, "w") as f:
        json.dump(conversation, f)


@pytest.fixture
def conversation(tmp_path):
    write_fixture(str(tmp_path))
    (conversation,) = cmu_dog.read_split(str(tmp_path), "test")
    return conversation


# The whole sequence: <doc> document <eos>, then the turns, tags alternating
# <speaker2>, <speaker1>, ... (the empty turn is dropped).
IDS = [1, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 2,
       4, 21, 3, 22, 23, 24, 25, 4, 26, 3, 20]  # fmt: skip


def test_read_split(conversation, tmp_path):
    assert conversation.document == (
        "movieName: Up\nyear: 2009\ncast: Carl, Russell\n\na house flies"
        "\n\nballoons"
    )
    assert conversation.turns == ["hi", "did you see it", "yes", "balloons"]
    assert conversation.who_saw_doc == ["user2"]
    assert conversation.document_index == 7
    assert cmu_dog.read_split(str(tmp_path), "train") == []
    with pytest.raises(ValueError, match="split='dev'"):
        cmu_dog.read_split(str(tmp_path), "dev")
    with pytest.raises(ValueError, match="data_dir="):
        cmu_dog.read_split(str(tmp_path / "nowhere"), "test")


def test_encode_conversation(conversation):
    encoded = cmu_dog.encode_conversation(conversation, tokenize, SPECIAL)
    assert encoded.token_ids.tolist() == IDS
    assert encoded.token_type_ids.tolist() == (
        [1] * 13 + [4, 4] + [3] * 5 + [4, 4] + [3, 3]
    )
    assert encoded.turn_mask.astype(int).tolist() == (
        [0] * 13 + [0, 1] + [0, 1, 1, 1, 1] + [0, 1] + [0, 1]
    )
    assert encoded.turn_starts == [13, 15, 20, 22]
    with pytest.raises(ValueError, match="special_ids"):
        cmu_dog.encode_conversation(conversation, tokenize, {"<doc>": 1})


def test_blocks_from_the_end(conversation):
    encoded = cmu_dog.encode_conversation(conversation, tokenize, SPECIAL)
    # 23 inputs in segments of 8 from the end: the first holds 7.
    inputs, targets, weights, types = cmu_dog.conversation_blocks(
        encoded, 8, labels="turns"
    )
    assert inputs.tolist() == [
        [1, 10, 11, 12, 13, 14, 15, 0],
        [16, 17, 18, 19, 20, 2, 4, 21],
        [3, 22, 23, 24, 25, 4, 26, 3],
    ]
    assert targets.tolist() == [
        [10, 11, 12, 13, 14, 15, 16, 0],
        [17, 18, 19, 20, 2, 4, 21, 3],
        [22, 23, 24, 25, 4, 26, 3, 20],
    ]
    # Validation: only targets that are words of a turn.
    assert weights.astype(int).tolist() == [
        [0, 0, 0, 0, 0, 0, 0, 0],
        [0, 0, 0, 0, 0, 0, 1, 0],
        [1, 1, 1, 1, 0, 1, 0, 1],
    ]
    assert types.tolist() == [
        [1, 1, 1, 1, 1, 1, 1, 0],
        [1, 1, 1, 1, 1, 1, 4, 4],
        [3, 3, 3, 3, 3, 4, 4, 3],
    ]
    # Training: every real target.
    _, _, weights, _ = cmu_dog.conversation_blocks(encoded, 8, labels="all")
    assert weights.astype(int).tolist() == [[1] * 7 + [0], [1] * 8, [1] * 8]
    with pytest.raises(ValueError, match="labels='some'"):
        cmu_dog.conversation_blocks(encoded, 8, labels="some")


def test_dialogue_blocks_reset_per_conversation(conversation):
    encoded = cmu_dog.encode_conversation(conversation, tokenize, SPECIAL)
    short = cmu_dog.encode_conversation(
        conversation, tokenize, SPECIAL, num_turns=1
    )  # 15 tokens: 14 inputs, 2 segments of 8
    blocks = cmu_dog.DialogueBlocks([short, encoded], 8, batch_size=1)
    x, y, w = blocks.arrays()
    # One stream: the longer conversation first (3 segments), then the
    # shorter (2); the memory is emptied where each starts.
    assert x["reset_mask"].tolist() == [True, False, False, True, False]
    assert x["token_ids"][3].tolist() == [1, 10, 11, 12, 13, 14, 0, 0]
    assert x["padding_mask"][3].tolist() == [1, 1, 1, 1, 1, 1, 0, 0]
    assert x["token_ids"][4].tolist() == [15, 16, 17, 18, 19, 20, 2, 4]
    assert y[4].tolist() == [16, 17, 18, 19, 20, 2, 4, 21]
    assert w.sum() == 23 + 14


def test_reply_examples(conversation):
    examples = cmu_dog.reply_examples([conversation], tokenize, SPECIAL)
    # Every turn from the 3rd on: its context ends with its speaker's tag.
    assert [e.turn for e in examples] == [2, 3]
    assert [e.reference for e in examples] == ["yes", "balloons"]
    assert examples[0].context_ids.tolist() == IDS[:20] + [4]
    assert examples[1].context_ids.tolist() == IDS[:22] + [3]
    # For generation: the last 5 tokens are the prompt, the 18 before are
    # cut into segments of 8 from the prompt backwards.
    chunks, mask, prompt = cmu_dog.split_context(examples[1].context_ids, 8, 5)
    assert prompt.tolist() == [24, 25, 4, 26, 3]
    assert chunks.tolist() == (
        [1, 10, 0, 0, 0, 0, 0, 0] + IDS[2:10] + IDS[10:18]
    )
    assert mask.astype(int).tolist() == [1, 1] + [0] * 6 + [1] * 16
    assert cmu_dog.split_context([5, 6], 8, 5)[2].tolist() == [5, 6]


def test_chunk_from_end_rejects_bad_length():
    with pytest.raises(ValueError, match="segment_length=0"):
        cmu_dog.chunk_from_end([1, 2], 0)
    np.testing.assert_array_equal(
        cmu_dog.chunk_from_end([1, 2, 3, 4], 2)[0], [[1, 2], [3, 4]]
    )
