"""An offline grounded-dialogue task, written in CMU-DoG's layout.

CMU-DoG cannot be downloaded here, so `write_dataset` generates a small
task of the same shape (docs/documents.md), where a reply can only come
from the document:

* each document is about one of 8 topics: its section 0 names the topic
  (``genre: sea``) and sections 1–3 are short sentences (``the boat finds
  wave .``) whose content words all belong to the topic; two of them, the
  document's *key words*, are much more frequent than the others (a fixed
  number of times each, the first more often than the second);
* each conversation has ``chat_turns`` turns of small talk drawn from fixed
  lists (they say nothing about the document), a question, then the answer
  ``<topic> : <key word 1> and <key word 2>``: the topic and the two most
  frequent content words of the document; with ``closing=True`` a closing
  turn of 1 to 6 words follows (then the answer does not always sit at the
  same place of the conversation's last segment, which is cut from the
  end: without it a model with learned positions can find the answer turn
  by its position alone, and generation, which puts the reply after a
  prompt of fixed length, does not match training; see
  benchmarks/results/grounded_offline.md).

Only the answer is evaluated (`answer_turn`), and nothing but the document
tells its content: with the document out of reach a model can only guess
the topic (1 in 8) and the key words. The small talk and the question
take at least 34 tokens, so with segments of 32 the whole document lies
beyond the attention window when the answer is generated or learned: it
can only be read from the memory.

`experiments.tokenizers.word_tokenizer` trains a GPT-2 byte-pair tokenizer
on the task's words, so that each is one token.
"""

import json
import os

import numpy as np

TOPICS = {
    "sea": "boat wave shell fish sail anchor reef tide crab gull island harbor",
    "music": "guitar drum song piano violin choir melody rhythm flute "
    "singer chord stage",
    "forest": "tree moss fern owl deer branch acorn leaf bark trail mushroom "
    "fox",
    "kitchen": "pan spoon oven knife bread soup pepper salt kettle plate "
    "flour butter",
    "space": "rocket planet comet star orbit moon galaxy astronaut crater "
    "satellite nebula meteor",
    "farm": "cow barn tractor hay goat sheep pig field fence egg hen plow",
    "city": "street taxi tower bridge subway market square traffic "
    "lamp office crowd alley",
    "winter": "snow ice sled scarf frost glove skate blizzard cabin "
    "fireplace icicle mitten",
}
VERBS = ("finds", "meets", "follows", "holds", "sees", "likes")
GREETINGS = ("hi", "hello", "hey there", "good morning")
QUESTIONS = (
    "what is it about ?",
    "tell me about it .",
    "what did you read ?",
    "so what was in it ?",
)
CHAT = (
    "i am fine thanks",
    "nice to meet you",
    "how are you today ?",
    "it is a good day",
    "i like this chat",
    "did you sleep well ?",
    "yes very well thanks",
    "that is good to hear",
)
CLOSINGS = (
    "thanks",
    "ok thanks",
    "great thank you",
    "ok that is good",
    "thanks a lot for that",
    "ok that is good to hear",
)
PUNCTUATION = (".", ",", ":", "?")
EXTRA_WORDS = ("the", "and", "genre:")


def vocabulary_words():
    """Every word the task uses (without the special tokens)."""
    words = list(EXTRA_WORDS) + list(VERBS) + list(PUNCTUATION)
    for topic, content in TOPICS.items():
        words += [topic] + content.split()
    # Not the CLOSINGS: the tokenizer stays that of the runs recorded in
    # benchmarks/results/grounded_offline.md (byte-level BPE splits them).
    for text in GREETINGS + QUESTIONS + CHAT:
        words += text.split()
    return sorted(set(words))


def make_document(rng, num_sentences=(10, 16), key_counts=(8, 5)):
    """One document: ``(wiki, answer)``, ``wiki`` in WikiData's layout.

    Args:
        rng: a `numpy.random.Generator`.
        num_sentences: ``(low, high)``, inclusive range of sentences (two
            content words each).
        key_counts: how often the two key words occur.

    Returns:
        ``wiki`` (sections ``"0"``–``"3"``) and the answer turn's text.
    """
    topic = str(rng.choice(sorted(TOPICS)))
    content = TOPICS[topic].split()
    count = int(rng.integers(num_sentences[0], num_sentences[1] + 1))
    slots = 2 * count
    if sum(key_counts) > slots:
        raise ValueError(
            f"`key_counts` must fit in {slots} content slots. "
            f"Received: key_counts={key_counts}"
        )
    keys = [str(w) for w in rng.choice(content, 2, replace=False)]
    others = [w for w in content if w not in keys]
    words = [keys[0]] * key_counts[0] + [keys[1]] * key_counts[1]
    words += [
        str(w) for w in rng.choice(others, slots - len(words), replace=True)
    ]
    words = [words[i] for i in rng.permutation(slots)]
    sentences = [
        f"the {words[2 * i]} {rng.choice(VERBS)} {words[2 * i + 1]} ."
        for i in range(count)
    ]
    thirds = np.array_split(np.arange(count), 3)
    wiki = {"0": {"genre": topic}}
    for section, rows in zip(("1", "2", "3"), thirds, strict=True):
        wiki[section] = " ".join(sentences[i] for i in rows)
    answer = f"{topic} : {keys[0]} and {keys[1]}"
    return wiki, answer


def answer_turn(chat_turns=6):
    """The index of the answer turn (0-based) with ``chat_turns``."""
    return int(chat_turns) + 1


def write_dataset(
    folder,
    sizes=(1500, 100, 100),
    seed=0,
    chat_turns=6,
    closing=False,
    **document_args,
):
    """Writes the task in CMU-DoG's layout under ``folder``.

    One document per conversation (``WikiData/<i>.json``, its
    ``wikiDocumentIdx`` ``i``) and ``Conversations/{train,valid,test}/
    <i>.json`` with ``history`` (``chat_turns`` + 2 turns, one more with
    ``closing``), ``whoSawDoc`` and ``wikiDocumentIdx``; ``sizes``
    conversations per split.

    Example:

    >>> import tempfile
    >>> from experiments.data import cmu_dog, grounded
    >>> folder = tempfile.mkdtemp()
    >>> grounded.write_dataset(folder, sizes=(3, 1, 1))
    >>> conversation = cmu_dog.read_split(folder, "test")[0]
    >>> len(conversation.turns), conversation.document.startswith("genre: ")
    (8, True)

    Args:
        folder: where to write (created).
        sizes: conversations in train, valid and test.
        seed: int, the generator's seed.
        chat_turns: int, turns of small talk before the question.
        closing: bool, whether a closing turn follows the answer.
        **document_args: passed to `make_document`.
    """
    if isinstance(chat_turns, bool) or not isinstance(chat_turns, int):
        raise ValueError(
            "`chat_turns` must be an int >= 1. "
            f"Received: chat_turns={chat_turns!r}"
        )
    if chat_turns < 1:
        raise ValueError(
            "`chat_turns` must be an int >= 1. "
            f"Received: chat_turns={chat_turns!r}"
        )
    if len(sizes) != 3 or any(int(s) < 0 for s in sizes):
        raise ValueError(
            "`sizes` must be 3 counts (train, valid, test). "
            f"Received: sizes={sizes!r}"
        )
    rng = np.random.default_rng(seed)
    folder = os.fspath(folder)
    os.makedirs(os.path.join(folder, "WikiData"), exist_ok=True)
    index = 0
    for split, size in zip(("train", "valid", "test"), sizes, strict=True):
        os.makedirs(os.path.join(folder, "Conversations", split), exist_ok=True)
        for _ in range(int(size)):
            wiki, answer = make_document(rng, **document_args)
            wiki["wikiDocumentIdx"] = index
            turns = [str(rng.choice(GREETINGS))]
            turns += [str(rng.choice(CHAT)) for _ in range(chat_turns - 1)]
            turns += [str(rng.choice(QUESTIONS)), answer]
            if closing:
                turns += [str(rng.choice(CLOSINGS))]
            users = [("user2", "user1")[k % 2] for k in range(len(turns))]
            history = [
                {
                    "docIdx": 1,
                    "text": text,
                    "uid": user,
                    "utcTimestamp": "2018-01-01T00:00:00",
                }
                for text, user in zip(turns, users, strict=True)
            ]
            conversation = {
                "date": "2018-01-01",
                "history": history,
                "rating": 3,
                "status": 1,
                "whoSawDoc": ["user2"],
                "wikiDocumentIdx": index,
            }
            _write(os.path.join(folder, "WikiData", f"{index}.json"), wiki)
            _write(
                os.path.join(folder, "Conversations", split, f"{index}.json"),
                conversation,
            )
            index += 1


def _write(path, value):
    with open(path, "w", encoding="utf-8") as f:
        json.dump(value, f, indent=1)
