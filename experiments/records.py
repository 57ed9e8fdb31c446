"""Run records: what the examples and benchmarks measured, written as JSON
(a file a reader, or a later ``--merge``, can load back) and as Markdown,
and the ending every example prints (a short table, a one-line verdict
with the seed spread, the paths written).

A record is a dict of plain values plus the NumPy scalars that metrics
and ``.item()``-less arithmetic hand back (``np.float32(0.5)``,
``np.int64(3)``): they are written as Python numbers (tuples, as JSON
itself does, as lists); anything else JSON cannot hold is an error naming
it.

Example:

>>> import json, os, tempfile
>>> import numpy as np
>>> from experiments.records import write_json
>>> path = os.path.join(tempfile.mkdtemp(), "run.json")
>>> write_json({"loss": np.float32(0.5), "widths": (0.05, 0.1)}, path)
>>> with open(path) as f:
...     json.load(f)
{'loss': 0.5, 'widths': [0.05, 0.1]}
"""

import json
import os

import numpy as np


def write_json(record, path, indent=1):
    """Writes ``record`` to ``path`` as JSON, NumPy scalars as numbers.

    Args:
        record: a dict (or list) of JSON values and NumPy scalars.
        path: the file to write (its folder must exist).
        indent: spaces per nesting level, as in `json.dump`.

    Raises:
        TypeError: a value JSON cannot hold (e.g. a NumPy array or a
            tensor), named in the message.
    """
    with open(path, "w", encoding="utf-8") as f:
        json.dump(record, f, indent=indent, default=_jsonable)


def _jsonable(value):
    """`json.dump`'s ``default``: the JSON form of a value it cannot write."""
    if isinstance(value, np.generic):  # np.float32, np.int64, np.bool_, …
        return value.item()
    raise TypeError(
        f"A run record holds only JSON values and NumPy scalars. "
        f"Received: {value!r} (type {type(value).__name__})"
    )


def markdown_table(header, rows):
    """A Markdown table: ``header`` (names) over ``rows`` (lists of cells).

    Example:

    >>> from experiments.records import markdown_table
    >>> print(markdown_table(["arm", "accuracy"], [["sticky", 0.5]]))
    | arm | accuracy |
    |---|---|
    | sticky | 0.5 |
    """
    lines = ["| " + " | ".join(header) + " |"]
    lines.append("|" + "---|" * len(header))
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def spread(values, digits=3):
    """``values`` (one per seed) as text: the mean and, over several seeds,
    their range; one seed says it has no spread.

    Example:

    >>> from experiments.records import spread
    >>> spread([0.31, 0.35, 0.33])
    '0.330 (min 0.310, max 0.350, 3 seeds)'
    >>> spread([0.31])
    '0.310 (one seed: no spread)'
    """
    values = [float(v) for v in values]
    if not values:
        raise ValueError("`values` must hold one number per seed. Received: []")
    mean = f"{np.mean(values):.{digits}f}"
    if len(values) == 1:
        return f"{mean} (one seed: no spread)"
    return (
        f"{mean} (min {min(values):.{digits}f}, max {max(values):.{digits}f}"
        f", {len(values)} seeds)"
    )


def separated(better, worse, higher_is_better=True):
    """Whether two arms' per-seed values are apart: every seed of
    ``better`` beats every seed of ``worse`` (their ranges do not overlap).

    Example:

    >>> from experiments.records import separated
    >>> separated([0.4, 0.5], [0.2, 0.3]), separated([0.4, 0.5], [0.45])
    (True, False)
    """
    if higher_is_better:
        return min(better) > max(worse)
    return max(better) < min(worse)


def finish(table, verdict, paths):
    """Prints an example's ending: its table, a one-line verdict and the
    files it wrote (``paths``: a list, or a dict of name -> path)."""
    if isinstance(paths, dict):
        paths = list(paths.values())
    lines = [table, "", verdict, ""]
    lines += ["wrote:"] + [f"  {os.path.relpath(p)}" for p in paths]
    print("\n".join(lines), flush=True)
