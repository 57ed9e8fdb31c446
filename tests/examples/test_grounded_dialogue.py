"""examples/grounded_dialogue.py end to end, tiny: a small GPT-2 with memory
trained from scratch on a CMU-DoG fixture in the dataset's layout, its
replies scored with the document in memory, with the memory off and with
no document, and the Figs. 4/5 drawn (docs/documents.md)."""

import importlib.util
import json
import os
import shutil

import pytest

from experiments.data import cmu_dog
from tests.experiments.data.test_cmu_dog import write_fixture

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
SCRIPT = os.path.join(ROOT, "examples", "grounded_dialogue.py")


def load_example():
    spec = importlib.util.spec_from_file_location("grounded_dialogue", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_grounded_dialogue_tiny(tmp_path):
    data = str(tmp_path / "cmu_dog")
    write_fixture(data)
    test = os.path.join(data, "Conversations", "test", "c0.json")
    for split in ("train", "valid"):  # the same conversation in each split
        shutil.copy(test, os.path.join(data, "Conversations", split))
    output = str(tmp_path / "out")
    example = load_example()
    record = example.main(
        ["--offline", "--data", data, "--output", output, "--seeds", "0",
         "--epochs", "1", "--batch-size", "1", "--segment-length", "16",
         "--max-new-tokens", "4", "--hidden-dim", "16", "--num-layers", "1",
         "--num-basis", "16", "--num-samples", "8"]
    )  # fmt: skip
    # One conversation per split, 2 replies scored (turns 3 and 4).
    assert record["conversations"] == {"train": 1, "valid": 1, "test": 1}
    metrics = record["runs"][0]["metrics"]
    assert set(metrics) == {"memory", "memory_off", "no_document"}
    for scores in metrics.values():
        assert scores["count"] == 2
        assert 0.0 <= scores["f1"] <= 100.0
        assert 0.0 <= scores["rougeL_authors"] <= 100.0
    with open(os.path.join(output, "grounded_offline.json")) as f:
        assert json.load(f)["summary"]["memory"]["f1"]["min"] >= 0.0
    for suffix in ("fig4.png", "fig5.png", "figures.html"):
        assert os.path.getsize(
            os.path.join(output, f"grounded_offline_{suffix}")
        )
    # Fig. 4 on the first reply ("yes"): weights over the absorbed tokens.
    (weights,) = record["figures"]["words"].values()
    assert len(weights) == 5
    assert sum(w for _, w in weights) <= 1.0 + 1e-6
    assert cmu_dog.read_split(data, "train")[0].turns[2] == "yes"


def test_needs_data_or_offline():
    with pytest.raises(SystemExit):
        load_example().parse_args([])
