"""Tiny tokenizers of every KerasHub causal LM family, trained offline.

To build a small model of a family without downloading anything (tests,
examples, experiments on a private corpus), `train_tokenizer` trains a
vocabulary on local text and loads it into the family's own KerasHub
tokenizer class, with the special tokens that class requires laid out as
in the family's real vocabulary:

* byte-level BPE (trained with ``tokenizers``) for GPT-2, OPT, Llama 3,
  Qwen (2) and Qwen 3;
* SentencePiece (trained with ``sentencepiece``, byte fallback) for Llama,
  Mistral, Gemma, Gemma 3 and Phi-3.

In every layout the end token differs from the padding id, as in the real
presets: a model that pads with its end token would stop generating at
once. The tokenizer and the family's causal LM preprocessor class then
serve as for a downloaded preset (``save_to_preset`` stores the vocabulary
with the model).
"""

import dataclasses
import io
import json
import os
import tempfile

from experiments.data.cmu_dog import SPECIAL_TOKENS
from keras_infmemory.models.hub.families import FAMILIES


@dataclasses.dataclass(frozen=True)
class TokenizerLayout:
    """Where a family's special tokens go in a locally trained vocabulary.

    Attributes:
        kind: ``"bpe"`` (byte-level BPE) or ``"sentencepiece"``.
        first: special tokens given the first ids, in order.
        last: special tokens given the ids after the learned ones (BPE), or
            further pieces that always stay whole (SentencePiece).
    """

    kind: str
    first: tuple = ()
    last: tuple = ()


# Each family's special tokens, placed as in its real vocabulary (and named
# as its KerasHub tokenizer class looks them up). BPE: GPT-2, Llama 3 and
# Qwen keep id 0 (their padding id) an ordinary token and append the special
# ones; OPT starts with them. SentencePiece: the first four ids are
# <unk> <s> </s> in Llama's order (padding id 0 = <unk>) or <pad> <eos>
# <bos> <unk> in Gemma's.
_LLAMA_PIECES = ("<unk>", "<s>", "</s>")
_GEMMA_PIECES = ("<pad>", "<eos>", "<bos>", "<unk>")
_PIECE_ROLES = {
    "<unk>": "unk",
    "<s>": "bos",
    "</s>": "eos",
    "<pad>": "pad",
    "<bos>": "bos",
    "<eos>": "eos",
}
LAYOUTS = {
    "gpt2": TokenizerLayout("bpe", last=("<|endoftext|>",)),
    "opt": TokenizerLayout("bpe", first=("<s>", "<pad>", "</s>", "<unk>")),
    "llama3": TokenizerLayout(
        "bpe",
        last=(
            "<|begin_of_text|>",
            "<|end_of_text|>",
            "<|start_header_id|>",
            "<|end_header_id|>",
            "<|eot_id|>",
        ),
    ),
    "qwen": TokenizerLayout(
        "bpe", last=("<|endoftext|>", "<|im_start|>", "<|im_end|>")
    ),
    "qwen3": TokenizerLayout(
        "bpe", last=("<|endoftext|>", "<|im_start|>", "<|im_end|>")
    ),
    "llama": TokenizerLayout("sentencepiece", first=_LLAMA_PIECES),
    "mistral": TokenizerLayout("sentencepiece", first=_LLAMA_PIECES),
    "gemma": TokenizerLayout("sentencepiece", first=_GEMMA_PIECES),
    "gemma3": TokenizerLayout(
        "sentencepiece",
        first=_GEMMA_PIECES,
        last=("<start_of_image>", "<end_of_image>", "<img>"),
    ),
    "phi3": TokenizerLayout(
        "sentencepiece", first=_LLAMA_PIECES, last=("<|endoftext|>",)
    ),
}

BPE_FAMILIES = tuple(n for n, x in LAYOUTS.items() if x.kind == "bpe")
SENTENCEPIECE_FAMILIES = tuple(
    n for n, x in LAYOUTS.items() if x.kind == "sentencepiece"
)


def _check_family(family):
    if family not in LAYOUTS:
        raise ValueError(
            f"`family` must be one of {sorted(LAYOUTS)}. "
            f"Received: family={family!r}"
        )
    return family


def family_classes(family):
    """The KerasHub classes of a family: ``(causal_lm, preprocessor,
    tokenizer)``, e.g. ``GPT2CausalLM``, ``GPT2CausalLMPreprocessor``,
    ``GPT2Tokenizer`` for ``"gpt2"``.

    Example:

    >>> from experiments.tokenizers import family_classes
    >>> [cls.__name__ for cls in family_classes("gemma3")]
    ['Gemma3CausalLM', 'Gemma3CausalLMPreprocessor', 'Gemma3Tokenizer']
    """
    causal_lm = FAMILIES[_check_family(family)].causal_lm_class
    preprocessor = causal_lm.preprocessor_cls
    return causal_lm, preprocessor, preprocessor.tokenizer_cls


def minimum_vocabulary_size(family):
    """The smallest ``vocabulary_size`` `train_tokenizer` accepts.

    The 256 bytes (every byte-level BPE vocabulary holds them, SentencePiece
    keeps them as fallback pieces), the family's special tokens and 8
    learned tokens. SentencePiece needs a piece per distinct character of
    the corpus besides (checked as it trains).

    Example:

    >>> from experiments.tokenizers import minimum_vocabulary_size
    >>> minimum_vocabulary_size("gpt2"), minimum_vocabulary_size("gemma")
    (265, 268)
    """
    layout = LAYOUTS[_check_family(family)]
    return 256 + len(layout.first) + len(layout.last) + 8


def train_tokenizer(family, texts, vocabulary_size=1024):
    """Trains a tokenizer of ``family`` on ``texts``, offline.

    Byte-level BPE for GPT-2, OPT, Llama 3, Qwen and Qwen 3; SentencePiece
    for Llama, Mistral, Gemma, Gemma 3 and Phi-3 (BPE model, byte
    fallback, digits split, no normalization but the removal of byte-order
    marks). The text round-trips exactly; the special tokens are laid out
    as in the family's real vocabulary (`LAYOUTS`), so that the end token
    is not the padding id.

    Example:

    >>> from experiments.tokenizers import train_tokenizer
    >>> texts = ["To be, or not to be, that is the question."] * 20
    >>> tokenizer, preprocessor_cls = train_tokenizer("gpt2", texts, 300)
    >>> type(tokenizer).__name__, preprocessor_cls.__name__
    ('GPT2Tokenizer', 'GPT2CausalLMPreprocessor')
    >>> tokenizer.end_token_id != tokenizer.pad_token_id
    True
    >>> tokenizer.detokenize(tokenizer("not to be"))
    'not to be'

    Args:
        family: the family's short name, one of
            `keras_infmemory.models.hub.FAMILIES` (``"gpt2"``, ``"llama"``,
            …).
        texts: an iterable of strings (documents or lines).
        vocabulary_size: int, the largest vocabulary (special tokens
            included); a small corpus may give fewer tokens. At least
            `minimum_vocabulary_size` (``family``).

    Returns:
        ``(tokenizer, preprocessor_cls)``: the family's KerasHub tokenizer
        (e.g. ``keras_hub.models.GPT2Tokenizer``) and its causal LM
        preprocessor class, to build with
        ``preprocessor_cls(tokenizer, sequence_length=...)``.

    Raises:
        ValueError: for an unknown family, no text, or a vocabulary size
            below the minimum (SentencePiece: below the 256 bytes, the
            special tokens and one piece per character of ``texts``).
    """
    layout = LAYOUTS[_check_family(family)]
    least = minimum_vocabulary_size(family)
    if (
        isinstance(vocabulary_size, bool)
        or not isinstance(vocabulary_size, int)
        or vocabulary_size < least
    ):
        raise ValueError(
            f"`vocabulary_size` must be an int >= {least} for "
            f"family={family!r}. Received: vocabulary_size={vocabulary_size!r}"
        )
    texts = [t for t in texts if t]
    if not texts:
        raise ValueError(
            "`texts` must hold some text. Received: texts with no characters"
        )
    _, preprocessor_cls, tokenizer_cls = family_classes(family)
    if layout.kind == "bpe":
        vocabulary, merges = _train_bpe(texts, vocabulary_size, layout)
        tokenizer = tokenizer_cls(vocabulary=vocabulary, merges=merges)
    else:
        proto = _train_sentencepiece(texts, vocabulary_size, layout)
        tokenizer = tokenizer_cls(proto=proto)
    return tokenizer, preprocessor_cls


def _train_bpe(texts, vocabulary_size, layout):
    """A byte-level BPE vocabulary and its merges, learned tokens between
    ``layout.first`` and ``layout.last``."""
    try:
        from tokenizers import ByteLevelBPETokenizer
    except ImportError as error:
        raise ImportError(
            "Training a BPE tokenizer needs `tokenizers` "
            "(pip install tokenizers)."
        ) from error
    specials = layout.first + layout.last
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(
        texts,
        vocab_size=vocabulary_size - len(specials),
        min_frequency=2,
        show_progress=False,
    )
    model = json.loads(bpe.to_str())["model"]
    learned = sorted(model["vocab"], key=model["vocab"].get)
    tokens = list(layout.first) + learned + list(layout.last)
    vocabulary = {token: i for i, token in enumerate(tokens)}
    merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
    return vocabulary, merges


def _train_sentencepiece(texts, vocabulary_size, layout):
    """A SentencePiece model proto (bytes) with ``layout.first`` as its
    first pieces and ``layout.last`` kept whole."""
    try:
        import sentencepiece
    except ImportError as error:
        raise ImportError(
            "Training a SentencePiece tokenizer needs `sentencepiece` "
            "(pip install sentencepiece)."
        ) from error
    # The trainer's name of each special piece, and its id.
    roles = {_PIECE_ROLES[piece]: piece for piece in layout.first}
    options = {f"{role}_piece": piece for role, piece in roles.items()}
    options.update(
        {f"{role}_id": layout.first.index(p) for role, p in roles.items()}
    )
    options.setdefault("pad_id", -1)  # Llama's layout has no <pad> piece
    lines = (line for text in texts for line in text.splitlines() if line)
    proto = io.BytesIO()
    with tempfile.TemporaryDirectory() as folder:
        # One normalization rule: drop the byte-order mark U+FEFF. Text
        # otherwise round-trips exactly (as with Llama's "identity"), and
        # the model carries a normalization table (TensorFlow Text logs a
        # line each time it loads a model without one).
        rules = os.path.join(folder, "rules.tsv")
        with open(rules, "w", encoding="utf-8") as f:
            f.write("FEFF\t\n")
        try:
            sentencepiece.SentencePieceTrainer.train(
                sentence_iterator=lines,
                model_writer=proto,
                model_type="bpe",
                vocab_size=vocabulary_size,
                hard_vocab_limit=False,  # a small corpus gives fewer pieces
                byte_fallback=True,
                character_coverage=1.0,
                split_digits=True,
                normalization_rule_tsv=rules,
                remove_extra_whitespaces=False,
                user_defined_symbols=list(layout.last),
                num_threads=1,
                minloglevel=2,
                **options,
            )
        except RuntimeError as error:
            if "required_chars" not in str(error):
                raise
            raise ValueError(
                "`vocabulary_size` is too small for the characters of "
                "`texts`: SentencePiece keeps a piece for each character, "
                "the 256 bytes and the special tokens "
                f"({str(error).split('] ')[-1]}). "
                f"Received: vocabulary_size={vocabulary_size}"
            ) from error
    return proto.getvalue()


def add_special_tokens(tokenizer, tokens=SPECIAL_TOKENS):
    """A copy of a byte-pair tokenizer (GPT-2's) with ``tokens`` added.

    Each new token gets the next free id and is never split (nor merged
    with its neighbours) when text is tokenized.

    Example:

    >>> import keras_hub
    >>> from experiments.tokenizers import add_special_tokens
    >>> base = keras_hub.models.GPT2Tokenizer(
    ...     vocabulary={"!": 0, "a": 1, "Ġ": 2, "Ġa": 3,
    ...                 "<|endoftext|>": 4},
    ...     merges=["Ġ a"],
    ... )
    >>> tokenizer, ids = add_special_tokens(base)
    >>> ids
    {'<doc>': 5, '<eos>': 6, '<speaker1>': 7, '<speaker2>': 8}
    >>> [int(i) for i in tokenizer("<speaker1> a")]
    [7, 3]

    Args:
        tokenizer: a `keras_hub.tokenizers.BytePairTokenizer` (e.g.
            `keras_hub.models.GPT2Tokenizer`).
        tokens: the tokens to add. Defaults to the recipe's four.

    Returns:
        ``(tokenizer, ids)``: the new tokenizer and a dict token -> id.
    """
    vocabulary = getattr(tokenizer, "vocabulary", None)
    merges = getattr(tokenizer, "merges", None)
    if not isinstance(vocabulary, dict) or merges is None:
        raise ValueError(
            "`tokenizer` must be a byte-pair tokenizer with a vocabulary and "
            f"merges (GPT-2's). Received: tokenizer={type(tokenizer).__name__}"
        )
    vocabulary = dict(vocabulary)
    ids = {}
    for token in tokens:
        if token not in vocabulary:
            vocabulary[token] = max(vocabulary.values()) + 1
        ids[token] = int(vocabulary[token])
    unsplittable = list(getattr(tokenizer, "unsplittable_tokens", None) or [])
    unsplittable += [t for t in tokens if t not in unsplittable]
    new = type(tokenizer)(
        vocabulary=vocabulary,
        merges=list(merges),
        unsplittable_tokens=unsplittable,
    )
    return new, ids


def word_tokenizer(words=None, special_tokens=SPECIAL_TOKENS):
    """A GPT-2 tokenizer where each word of the offline grounded task
    (`experiments.data.grounded`) is one token.

    A byte-level BPE vocabulary is trained on the task's words
    (`train_tokenizer`, GPT-2's layout: id
    0 an ordinary token, the padding id; ``<|endoftext|>`` appended), then
    the ``special_tokens`` are added, never split
    (`add_special_tokens`).

    Returns:
        ``(tokenizer, special_ids)``.
    """
    from experiments.data.grounded import vocabulary_words

    words = vocabulary_words() if words is None else list(words)
    # Each word after a space and after a newline (a section's first word),
    # twice: BPE keeps merges seen at least twice.
    texts = [" ".join(words), "\n".join(words)] * 2
    tokenizer, _ = train_tokenizer("gpt2", texts, vocabulary_size=1024)
    return add_special_tokens(tokenizer, special_tokens)
