"""The experiments' tasks and readers: seeded NumPy generators and
readers of local files, no downloads.

* `experiments.data.sorting`: the paper's sorting task;
* `experiments.data.corpora`: the offline Shakespeare corpus;
* `experiments.data.cmu_dog`: the CMU-DoG dialogue reader;
* `experiments.data.grounded`: an offline document-grounded dialogue task.
* `experiments.data.retrieval`: long-context retrieval (passkey, BABILong-
  style qa1 / qa2 in Shakespeare filler) with a word-level vocabulary.

Nothing here builds a model: the data modules import neither
`keras_infmemory.models` nor the experiments' model code (a test checks
the direction of the imports).
"""

from experiments.data.sorting import (
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
