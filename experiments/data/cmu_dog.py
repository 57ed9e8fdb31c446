"""CMU-DoG: conversations about a document, as token sequences for a causal
LM with memory (the ∞-former's grounded-dialogue experiment, Martins et al.
2022 §4.3; docs/documents.md).

The public dataset's layout, read as it is::

    DIR/Conversations/{train,valid,test}/*.json  one conversation per file:
        "history": [{"text": ..., "uid": ..., "docIdx": ...}, ...],
        "whoSawDoc": [...], "wikiDocumentIdx": int, ...
    DIR/WikiData/*.json  one document per file: sections "0" (a dict of
        the film's facts), "1", "2", "3" (text), "wikiDocumentIdx": int

The recipe (docs/documents.md), as NumPy and plain Python (no Keras here):

* the sequence of a conversation is ``<doc>`` + document + ``<eos>``, then
  the turns, each opened by its speaker tag, alternating ``<speaker2>``
  (turns 1, 3, …) and ``<speaker1>`` (turns 2, 4, …);
* token types: the document part (with ``<doc>`` and ``<eos>``) has the
  type ``<doc>``, each turn (with its tag) its speaker tag;
* the LM targets are the next tokens; training weighs every target, the
  validation loss only targets that are words of a turn (not the document,
  not a speaker tag);
* a conversation is cut into chunks of ``segment_length`` tokens *from the
  end* (the first chunk holds the remainder), fed in order with the memory
  emptied where a conversation starts (`DialogueBlocks`);
* evaluation: every turn from the 3rd on is generated from the document
  and the turns before it (`reply_examples`).
"""

import dataclasses
import json
import os

import numpy as np

from keras_infmemory.documents import DocumentBlocks

SPECIAL_TOKENS = ("<doc>", "<eos>", "<speaker1>", "<speaker2>")
SPLITS = ("train", "valid", "test")


@dataclasses.dataclass
class Conversation:
    """One conversation of CMU-DoG.

    Attributes:
        name: the file's name.
        document: the document's text (sections 0–3, see `document_text`).
        turns: the texts of the turns, in order.
        who_saw_doc: the dataset's ``whoSawDoc``.
        document_index: the dataset's ``wikiDocumentIdx``.
    """

    name: str
    document: str
    turns: list
    who_saw_doc: list
    document_index: int


def document_text(wiki):
    """The text of a ``WikiData`` document: sections 0 to 3, in order,
    separated by a blank line.

    Section 0 is a dict of facts (name, year, director, cast, genre,
    introduction, rating, critical response): each becomes ``key: value``
    (lists joined with ``", "``), keys in the file's order; sections 1–3 are
    text, stripped.
    """
    if not isinstance(wiki, dict):
        raise ValueError(
            f"`wiki` must be a dict of sections. Received: {type(wiki)}"
        )
    parts = []
    for section in ("0", "1", "2", "3"):
        value = wiki.get(section)
        if value is None:
            continue
        if isinstance(value, dict):
            lines = []
            for key, item in value.items():
                if isinstance(item, (list, tuple)):
                    item = ", ".join(str(i) for i in item)
                lines.append(f"{key}: {str(item).strip()}")
            value = "\n".join(lines)
        value = str(value).strip()
        if value:
            parts.append(value)
    return "\n\n".join(parts)


def read_documents(data_dir):
    """``wikiDocumentIdx -> text`` for every file of ``DIR/WikiData``."""
    folder = os.path.join(os.fspath(data_dir), "WikiData")
    if not os.path.isdir(folder):
        raise ValueError(
            "`data_dir` must hold the CMU-DoG folders Conversations/ and "
            f"WikiData/. Received: data_dir={os.fspath(data_dir)!r}"
        )
    documents = {}
    for name in sorted(os.listdir(folder)):
        if not name.endswith(".json"):
            continue
        with open(os.path.join(folder, name), encoding="utf-8") as f:
            wiki = json.load(f)
        documents[int(wiki["wikiDocumentIdx"])] = document_text(wiki)
    return documents


def read_split(data_dir, split):
    """The conversations of one split (``"train"``, ``"valid"``,
    ``"test"``), files in sorted order, each with its document.

    Turns with no text (after stripping) are dropped.
    """
    if split not in SPLITS:
        raise ValueError(
            f"`split` must be one of {SPLITS}. Received: split={split!r}"
        )
    documents = read_documents(data_dir)
    folder = os.path.join(os.fspath(data_dir), "Conversations", split)
    if not os.path.isdir(folder):
        raise ValueError(
            f"No folder Conversations/{split} in `data_dir`. "
            f"Received: data_dir={os.fspath(data_dir)!r}"
        )
    conversations = []
    for name in sorted(os.listdir(folder)):
        if not name.endswith(".json"):
            continue
        with open(os.path.join(folder, name), encoding="utf-8") as f:
            data = json.load(f)
        index = int(data["wikiDocumentIdx"])
        if index not in documents:
            raise ValueError(
                f"Conversation {name} refers to wikiDocumentIdx={index}, "
                f"which WikiData lacks. Received: data_dir={data_dir!r}"
            )
        turns = [str(t["text"]).strip() for t in data["history"]]
        conversations.append(
            Conversation(
                name=name,
                document=documents[index],
                turns=[t for t in turns if t],
                who_saw_doc=list(data.get("whoSawDoc", [])),
                document_index=index,
            )
        )
    return conversations


def speaker_tag(turn_index):
    """The tag of turn ``turn_index`` (0-based): ``<speaker2>`` for turns
    0, 2, 4, …, ``<speaker1>`` for the others."""
    return SPECIAL_TOKENS[3] if turn_index % 2 == 0 else SPECIAL_TOKENS[2]


@dataclasses.dataclass
class EncodedConversation:
    """A conversation as one token sequence (see the module).

    Attributes:
        token_ids: ``(T,)`` int32, the whole sequence.
        token_type_ids: ``(T,)`` int32, ``<doc>``'s id over the document
            part, each turn's speaker tag over the turn.
        turn_mask: ``(T,)`` bool, the words of the turns (not the tags).
        turn_starts: list, where each turn's tag sits.
    """

    token_ids: np.ndarray
    token_type_ids: np.ndarray
    turn_mask: np.ndarray
    turn_starts: list


def encode_conversation(conversation, tokenize, special_ids, num_turns=None):
    """The token sequence of a conversation (or of its first ``num_turns``).

    Args:
        conversation: a `Conversation`.
        tokenize: text -> list of token ids. Each text (the document, each
            turn) is given as ``" " + text`` so that its first word is
            tokenized as any other word (GPT-2's BPE marks a word after a
            space).
        special_ids: dict of the ids of `SPECIAL_TOKENS`.
        num_turns: keep this many turns (default: all).

    Returns:
        An `EncodedConversation`.
    """
    _check_special_ids(special_ids)
    turns = conversation.turns
    if num_turns is not None:
        turns = turns[:num_turns]
    doc = special_ids["<doc>"]
    ids = [doc, *_ids(tokenize, conversation.document), special_ids["<eos>"]]
    types = [doc] * len(ids)
    words = [False] * len(ids)
    starts = []
    for k, text in enumerate(turns):
        tag = special_ids[speaker_tag(k)]
        body = _ids(tokenize, text)
        starts.append(len(ids))
        ids += [tag, *body]
        types += [tag] * (1 + len(body))
        words += [False] + [True] * len(body)
    return EncodedConversation(
        token_ids=np.asarray(ids, "int32"),
        token_type_ids=np.asarray(types, "int32"),
        turn_mask=np.asarray(words, bool),
        turn_starts=starts,
    )


def chunk_from_end(values, segment_length, pad_value=0):
    """``values`` ``(T, ...)`` cut into chunks of ``segment_length`` from
    the end: ``(K, segment_length, ...)``, ``K = ceil(T / L)``; the first
    chunk holds the first ``T − (K−1)·L`` values, right-padded with
    ``pad_value``. Also returns the mask of real values ``(K, L)``.

    Example:

    >>> from experiments.data.cmu_dog import chunk_from_end
    >>> chunks, mask = chunk_from_end([1, 2, 3, 4, 5], 2)
    >>> chunks.tolist(), mask.astype(int).tolist()
    ([[1, 0], [2, 3], [4, 5]], [[1, 0], [1, 1], [1, 1]])
    """
    segment_length = _check_length(segment_length)
    values = np.asarray(values)
    total = len(values)
    count = max(1, -(-total // segment_length))
    head = total - (count - 1) * segment_length  # real values of chunk 0
    chunks = np.full(
        (count * segment_length,) + values.shape[1:], pad_value, values.dtype
    )
    mask = np.zeros(count * segment_length, bool)
    chunks[:head] = values[:head]
    mask[:head] = True
    chunks[segment_length:] = values[head:]
    mask[segment_length:] = True
    shape = (count, segment_length)
    return chunks.reshape(shape + values.shape[1:]), mask.reshape(shape)


def conversation_blocks(
    encoded, segment_length, labels="all", pad_id=0, with_mask=False
):
    """LM blocks of one encoded conversation, cut from the end.

    Inputs are the sequence but its last token, targets the next tokens;
    ``labels="all"`` (training) weighs every target, ``labels="turns"``
    (validation) only the targets that are words of a turn.

    Returns:
        ``(inputs, targets, weights, token_type_ids)``, each ``(K, L)``,
        and with ``with_mask`` the mask of real inputs ``(K, L)``.
    """
    if labels not in ("all", "turns"):
        raise ValueError(
            f"`labels` must be 'all' or 'turns'. Received: labels={labels!r}"
        )
    ids = encoded.token_ids
    if len(ids) < 2:
        raise ValueError(
            "A conversation needs at least 2 tokens. "
            f"Received: {len(ids)} tokens"
        )
    weights = np.ones(len(ids) - 1, "float32")
    if labels == "turns":
        weights = encoded.turn_mask[1:].astype("float32")
    inputs, mask = chunk_from_end(ids[:-1], segment_length, pad_id)
    targets, _ = chunk_from_end(ids[1:], segment_length, pad_id)
    weights, _ = chunk_from_end(weights, segment_length, 0.0)
    types, _ = chunk_from_end(encoded.token_type_ids[:-1], segment_length, 0)
    weights = weights * mask
    if with_mask:
        return inputs, targets, weights, types, mask
    return inputs, targets, weights, types


class DialogueBlocks(DocumentBlocks):
    """Encoded conversations laid out for ``fit(shuffle=False)`` on a
    stateful model: each conversation's blocks (`conversation_blocks`, cut
    from the end) in order, conversations in ``batch_size`` parallel
    streams, ``"reset_mask"`` True where a conversation starts (the memory
    is emptied per conversation). See `DocumentBlocks` for the layout.

    Args:
        conversations: list of `EncodedConversation`.
        segment_length: int, tokens per block.
        batch_size: int, number of streams.
        labels: ``"all"`` (training) or ``"turns"`` (validation).
        pad_id: int, the padding id.
    """

    def __init__(
        self, conversations, segment_length, batch_size, labels="all", pad_id=0
    ):
        blocks = []
        for conversation in conversations:
            inputs, targets, weights, _, mask = conversation_blocks(
                conversation, segment_length, labels, pad_id, with_mask=True
            )
            blocks.append((inputs, targets, weights, mask))
        super().__init__(
            blocks, segment_length, batch_size, start_token_id=None,
            pad_id=pad_id, cut=False,
        )  # fmt: skip


@dataclasses.dataclass
class ReplyExample:
    """A turn to generate, with what comes before it.

    Attributes:
        conversation: index of the conversation in the list given.
        turn: index of the turn (0-based, ≥ 2).
        context_ids: ``(T,)`` int32, ``<doc>`` document ``<eos>``, the turns
            before, and the turn's speaker tag.
        reference: the turn's text.
    """

    conversation: int
    turn: int
    context_ids: np.ndarray
    reference: str


def reply_examples(
    conversations, tokenize, special_ids, first_turn=2, max_examples=None
):
    """Every turn from ``first_turn`` (0-based; 2: the 3rd turn) on, as a
    `ReplyExample`: the reply is generated after its context."""
    examples = []
    for c, conversation in enumerate(conversations):
        for k in range(first_turn, len(conversation.turns)):
            encoded = encode_conversation(
                conversation, tokenize, special_ids, num_turns=k
            )
            tag = special_ids[speaker_tag(k)]
            context = np.concatenate([encoded.token_ids, [tag]])
            examples.append(
                ReplyExample(
                    c, k, context.astype("int32"), conversation.turns[k]
                )
            )
            if max_examples is not None and len(examples) >= max_examples:
                return examples
    return examples


def split_context(context_ids, segment_length, prompt_length):
    """Where a context goes for generation: ``(absorbed, prompt)``.

    The prompt is the last ``prompt_length`` tokens (room is left in its
    segment for the reply); what comes before is cut into chunks of
    ``segment_length`` from the prompt's start backwards, as in training
    (`chunk_from_end`), to be written into the memory first. Returns the
    chunks flattened ``(K·L,)`` with their mask (``None``, ``None`` when the
    context fits in the prompt) and the prompt ``(P,)``.
    """
    segment_length = _check_length(segment_length)
    prompt_length = _check_length(prompt_length, "prompt_length")
    context_ids = np.asarray(context_ids, "int32")
    if len(context_ids) <= prompt_length:
        return None, None, context_ids
    before = context_ids[:-prompt_length]
    chunks, mask = chunk_from_end(before, segment_length)
    return chunks.reshape(-1), mask.reshape(-1), context_ids[-prompt_length:]


def _ids(tokenize, text):
    ids = tokenize(" " + text.strip())
    return [int(i) for i in np.asarray(ids).reshape(-1)]


def _check_special_ids(special_ids):
    missing = [t for t in SPECIAL_TOKENS if t not in (special_ids or {})]
    if missing:
        raise ValueError(
            f"`special_ids` must give the ids of {SPECIAL_TOKENS}. "
            f"Received: special_ids={special_ids!r}"
        )


def _check_length(value, name="segment_length"):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(
            f"`{name}` must be a positive int. Received: {name}={value!r}"
        )
    if value < 1:
        raise ValueError(
            f"`{name}` must be a positive int. Received: {name}={value!r}"
        )
    return int(value)
