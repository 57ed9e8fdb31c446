"""The experiments beside the library: tasks, readers, metrics, recipes and
record writers that the examples and benchmarks of this repository use.

This package is not the library's API (that is `keras_infmemory`): it
builds on the library and the library never imports it (a test checks the
direction). Its modules:

* `experiments.data`: the tasks (sorting, an offline grounded dialogue) and
  readers (the Shakespeare plays, CMU-DoG), NumPy only;
* `experiments.tokenizers`: tiny tokenizers of every KerasHub family,
  trained offline;
* `experiments.sorting`: the paper's sorting experiment: the transformer
  at two scales, a run's recipe, and the record, table and verdict of
  ``examples/sorting.py``;
* `experiments.retrieval`: long-context retrieval (passkey, BABILong-style
  QA) over a grid of lengths and depths, every memory and a KerasHub
  Llama 3 with one, for ``examples/retrieval.py`` (recipe, runs, record,
  verdict);
* `experiments.language_model`: the from-scratch language-model study of
  ``examples/language_model.py`` (settings, data, training, evaluation,
  diagnostics, records);
* `experiments.finetune`: the KerasHub fine-tuning experiment of
  ``examples/finetune_causal_lm.py`` (settings, held-out evaluation,
  record, verdict);
* `experiments.grounded_dialogue`: the document-grounded dialogue
  experiment of ``examples/grounded_dialogue.py`` (the task, training, the
  three conditions, Figs. 4 and 5, the record);
* `experiments.evaluation`: per-token losses, position buckets, seed
  spreads and the dialogue metrics;
* `experiments.dialogue`: reply generation for the grounded dialogue;
* `experiments.plots` and `experiments.records`: figures, JSON and Markdown
  records, and the ending every example prints (table, verdict, paths);
* `experiments.console`: a console with what a user should read (no
  native load notices, progress bars in place, every option's default).
"""
