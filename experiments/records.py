"""Run records as JSON: what the examples measured, in a file a reader (or
a later ``--merge``) can load back.

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
