"""The offline tokenizers of every family (`experiments.tokenizers`),
trained on a tiny corpus written here: the family's KerasHub classes, an
end token that is not the padding id, an exact round trip and the
preprocessor's packing."""

import numpy as np
import pytest

from experiments.tokenizers import (
    BPE_FAMILIES,
    LAYOUTS,
    SENTENCEPIECE_FAMILIES,
    family_classes,
    minimum_vocabulary_size,
    train_tokenizer,
)
from keras_infmemory.models.hub import FAMILIES
from tests.testing import to_numpy

WORDS = (
    "the king queen lord lady night day love death sword crown blood "
    "heaven earth sweet fair good noble gentle speak come go hear see "
    "what why where shall will must thou thee thy my our your his her"
).split()
TEXT = "Whether 'tis nobler in the mind\n  to suffer\t1601 slings!"


def corpus(num_documents, words_per_document, seed=0):
    """Pseudo-English documents: lines of random words, reproducible."""
    rng = np.random.default_rng(seed)
    documents = []
    for _ in range(num_documents):
        words = rng.choice(WORDS, size=words_per_document)
        lines = [" ".join(words[i : i + 8]) for i in range(0, len(words), 8)]
        documents.append(".\n".join(line.capitalize() for line in lines))
    return documents


def test_every_family_has_a_layout():
    assert set(LAYOUTS) == set(FAMILIES)
    assert set(BPE_FAMILIES) | set(SENTENCEPIECE_FAMILIES) == set(FAMILIES)
    assert not set(BPE_FAMILIES) & set(SENTENCEPIECE_FAMILIES)


@pytest.mark.parametrize("family", sorted(LAYOUTS))
def test_tokenizer_of_every_family(family):
    tokenizer, preprocessor_cls = train_tokenizer(family, corpus(4, 64), 320)
    _, expected_preprocessor, expected_tokenizer = family_classes(family)
    assert type(tokenizer) is expected_tokenizer
    assert preprocessor_cls is expected_preprocessor
    assert tokenizer.vocabulary_size() <= 320
    # The end token is a special token of the family's layout, not the
    # padding id (the preprocessor pads with pad_token_id).
    end, pad = tokenizer.end_token_id, tokenizer.pad_token_id
    assert end != pad
    layout = LAYOUTS[family]
    assert tokenizer.id_to_token(end) in layout.first + layout.last
    # Exact round trip, spaces, tab, newline and digits included.
    ids = to_numpy(tokenizer(TEXT))
    assert ids.ndim == 1 and len(ids) < len(TEXT)
    assert tokenizer.detokenize(ids) == TEXT
    # The preprocessor packs the prompt: start token (if any), the tokens,
    # then padding.
    preprocessor = preprocessor_cls(tokenizer, sequence_length=64)
    packed = to_numpy(preprocessor.generate_preprocess([TEXT]))
    start = tokenizer.start_token_id
    expected = ([] if start is None else [start]) + ids.tolist()
    n = len(expected)
    assert packed["token_ids"][0, :n].tolist() == expected
    assert (packed["token_ids"][0, n:] == pad).all()
    assert packed["padding_mask"][0].tolist() == [1] * n + [0] * (64 - n)


def test_bpe_vocabulary_layout():
    """GPT-2: learned tokens from id 0 (its padding id), <|endoftext|>
    last; OPT: <s> <pad> </s> <unk> first."""
    gpt2, _ = train_tokenizer("gpt2", corpus(2, 64), 300)
    size = gpt2.vocabulary_size()
    assert gpt2.end_token_id == gpt2.start_token_id == size - 1
    assert gpt2.id_to_token(0) != "<|endoftext|>"
    opt, _ = train_tokenizer("opt", corpus(2, 64), 300)
    assert [opt.id_to_token(i) for i in range(4)] == [
        "<s>",
        "<pad>",
        "</s>",
        "<unk>",
    ]
    assert (opt.pad_token_id, opt.end_token_id) == (1, 2)


def test_tokenizer_errors():
    with pytest.raises(ValueError, match=r"family='bert'"):
        train_tokenizer("bert", ["text"])
    least = minimum_vocabulary_size("gpt2")
    with pytest.raises(ValueError, match=rf"vocabulary_size={least - 1}"):
        train_tokenizer("gpt2", ["text"], least - 1)
    with pytest.raises(ValueError, match="texts"):
        train_tokenizer("gpt2", ["", ""], 300)
    # SentencePiece needs a piece per character besides the bytes.
    many = "".join(chr(0x4E00 + i) for i in range(80))
    with pytest.raises(ValueError, match="characters of `texts`"):
        train_tokenizer("llama", [many] * 4, 300)
