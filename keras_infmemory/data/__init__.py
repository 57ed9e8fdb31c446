"""Data for the paper's experiments: NumPy generators, no downloads."""

from keras_infmemory.data.sorting import (
    ANSWER_LENGTH,
    NUM_SYMBOLS,
    PAD_ID,
    SEPARATOR_ID,
    VOCABULARY_SIZE,
    SortingDataset,
    answer_accuracy,
    counting_baseline,
    make_batch,
    make_example,
    sample_distributions,
    sample_sequence,
    sorting_target,
    total_length,
)

__all__ = [
    "ANSWER_LENGTH",
    "NUM_SYMBOLS",
    "PAD_ID",
    "SEPARATOR_ID",
    "VOCABULARY_SIZE",
    "SortingDataset",
    "answer_accuracy",
    "counting_baseline",
    "make_batch",
    "make_example",
    "sample_distributions",
    "sample_sequence",
    "sorting_target",
    "total_length",
]
from keras_infmemory.data.documents import (  # noqa: E402, F401
    DocumentBlocks,
    cut_blocks,
    read_documents,
)
