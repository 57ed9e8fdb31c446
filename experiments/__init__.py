"""The experiments beside the library: tasks, readers, metrics, recipes and
record writers that the examples and benchmarks of this repository use.

This package is not the library's API (that is `keras_infmemory`): it
builds on the library and the library never imports it (a test checks the
direction). Its modules:

* `experiments.data`: the tasks (sorting, an offline grounded dialogue) and
  readers (the Shakespeare plays, CMU-DoG), NumPy only;
* `experiments.tokenizers`: tiny tokenizers of every KerasHub family,
  trained offline;
* `experiments.sorting`: the paper's sorting transformer at two scales;
* `experiments.evaluation`: per-token losses, position buckets, seed
  spreads and the dialogue metrics;
* `experiments.dialogue`: reply generation for the grounded dialogue;
* `experiments.plots` and `experiments.records`: figures and JSON records.
"""
