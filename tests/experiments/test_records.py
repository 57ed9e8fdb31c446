"""experiments.records: run records written as JSON."""

import json

import numpy as np
import pytest

from experiments.records import write_json


def test_numpy_scalars_are_written_as_numbers(tmp_path):
    record = {
        "accuracy": np.float32(0.25),
        "loss": np.float64(1.5),
        "steps": np.int64(3),
        "finite": np.bool_(True),
        "widths": (0.05, 0.1),
        "runs": [{"seed": np.int32(0), "arm": "sticky"}],
    }
    path = tmp_path / "run.json"
    write_json(record, str(path))
    assert json.loads(path.read_text()) == {
        "accuracy": 0.25,
        "loss": 1.5,
        "steps": 3,
        "finite": True,
        "widths": [0.05, 0.1],
        "runs": [{"seed": 0, "arm": "sticky"}],
    }


def test_indent(tmp_path):
    path = tmp_path / "run.json"
    write_json({"a": [1]}, str(path), indent=2)
    assert path.read_text() == '{\n  "a": [\n    1\n  ]\n}'


def test_values_json_cannot_hold_are_named(tmp_path):
    with pytest.raises(TypeError, match=r"Received: array\(\[1, 2\]\)"):
        write_json({"logits": np.array([1, 2])}, str(tmp_path / "a.json"))
