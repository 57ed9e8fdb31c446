"""The grounded-dialogue experiment (experiments.grounded_dialogue;
docs/documents.md): settings, the turns each condition generates, the
record, table and verdict (on the stored record of
benchmarks/results/grounded_offline.json), and the example run end to end
with its quickest setting (a subprocess, as a user runs it)."""

import argparse
import json
import os
import re
import subprocess
import sys

import keras
import numpy as np
import pytest

from experiments import grounded_dialogue as gd
from experiments.data import cmu_dog, grounded
from experiments.dialogue import resize_vocabulary
from experiments.tokenizers import word_tokenizer
from tests.experiments.data.test_cmu_dog import SPECIAL, write_fixture
from tests.experiments.data.test_cmu_dog import tokenize as fixture_tokenize

# The experiment runs the same code on every backend (its pieces are
# tested on all three): one backend runs this file (tests/conftest.py).
pytestmark = pytest.mark.one_backend

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
SCRIPT = os.path.join(ROOT, "examples", "grounded_dialogue.py")
RESULTS = os.path.join(ROOT, "benchmarks", "results")


@pytest.fixture(scope="module")
def stored():
    """The offline record and its figures as the example wrote them."""
    with open(os.path.join(RESULTS, "grounded_offline.json")) as f:
        record = json.load(f)
    with open(os.path.join(RESULTS, "grounded_offline_figures.json")) as f:
        return record, json.load(f)


def options(**given):
    """The example's options before `gd.settings` (its parser's defaults,
    mode-dependent ones None)."""
    values = dict(
        data=None, preset="gpt2_base_en", offline=True, quick=False,
        seeds=[0], segment_length=None, num_basis=None, num_samples=None,
        sticky=True, sticky_mode="quantile", kl_weight=1e-5, epochs=None,
        batch_size=None, learning_rate=None, memory_learning_rate=None,
        max_new_tokens=None, max_eval=None, sizes=[1500, 100, 100],
        closing_turn=True, hidden_dim=64, num_layers=2,
        output="grounded_dialogue_output", figures_only=False,
    )  # fmt: skip
    values.update(given)
    return argparse.Namespace(**values)


# ----------------------------------------------------------------------- #
# Settings
# ----------------------------------------------------------------------- #


@pytest.mark.parametrize("offline", [True, False])
def test_settings_fill_the_mode_defaults(offline, stored):
    args = gd.settings(options(offline=offline, data="cmu_dog"))
    mode = "offline" if offline else "preset"
    for name, value in gd.MODE_DEFAULTS[mode].items():
        assert getattr(args, name) == value
    if offline:  # the stored record's settings are the offline defaults
        arguments = stored[0]["arguments"]
        for name in gd.MODE_DEFAULTS["offline"]:
            assert arguments[name] == getattr(args, name), name
        assert set(arguments) <= set(vars(args))


def test_settings_keep_given_values():
    args = gd.settings(options(segment_length=16, max_new_tokens=4))
    assert (args.segment_length, args.max_new_tokens, args.epochs) == (
        16,
        4,
        3,
    )


@pytest.mark.parametrize(
    "given, message",
    [
        (dict(offline=False), "--data"),
        (dict(segment_length=8, max_new_tokens=8), "--max-new-tokens"),
        (dict(epochs=0), "--epochs"),
        (dict(seeds=[0, 0]), "--seeds"),
    ],
)
def test_settings_refuse(given, message):
    with pytest.raises(ValueError, match=message):
        gd.settings(options(**given))


def test_memory_sizes_and_paths(tmp_path):
    args = gd.settings(options(output=str(tmp_path / "out"), seeds=[3]))
    assert gd.memory_sizes(args) == dict(
        segment_length=32, num_basis=64, num_samples=32, kl_weight=1e-5,
        basis_widths=(0.02, 0.05),
    )  # fmt: skip
    paths = gd.output_paths(args)
    assert os.path.isdir(args.output)
    assert os.path.basename(paths["record"]) == "grounded_offline.json"
    assert paths["weights"].endswith("grounded_offline_seed3.weights.h5")
    preset = gd.settings(options(offline=False, data="d", output=args.output))
    assert "basis_widths" not in gd.memory_sizes(preset)
    assert gd.output_paths(preset)["fig4"].endswith("grounded_cmu_dog_fig4.png")


def test_offline_data_folder_differs_per_task():
    folders = {
        gd.offline_data_folder(options(sizes=sizes, closing_turn=closing))
        for sizes in ([1500, 100, 100], [64, 8, 1])
        for closing in (False, True)
    }
    assert len(folders) == 4


# ----------------------------------------------------------------------- #
# The task and its conditions
# ----------------------------------------------------------------------- #


@pytest.fixture
def fixture_task(tmp_path):
    """The CMU-DoG fixture (one conversation, 5 turns) as a `gd.Task`."""
    write_fixture(str(tmp_path))
    splits = {s: cmu_dog.read_split(str(tmp_path), s) for s in ("test",)}
    task = gd.Task(splits, None, SPECIAL, None)
    task.tokenize = lambda text: np.asarray(fixture_tokenize(text))
    return task


def test_condition_examples_every_turn_from_the_third(fixture_task):
    examples = gd.condition_examples(fixture_task)
    assert list(examples) == list(gd.CONDITIONS)
    assert examples["memory_off"] is examples["memory"]
    # Turns 3 and 4 (0-based 2, 3; turn 1 is empty and dropped).
    assert [e.turn for e in examples["memory"]] == [2, 3]
    assert [e.reference for e in examples["memory"]] == ["yes", "balloons"]
    for with_doc, without in zip(
        examples["memory"], examples["no_document"], strict=True
    ):
        assert with_doc.reference == without.reference
        # The same turns after an empty document: <doc> <eos> then turns.
        tail = without.context_ids[2:]
        np.testing.assert_array_equal(with_doc.context_ids[-len(tail) :], tail)
        assert len(without.context_ids) < len(with_doc.context_ids)
    assert (
        len(gd.condition_examples(fixture_task, max_examples=1)["memory"]) == 1
    )


def test_condition_examples_offline_answer_only(tmp_path):
    grounded.write_dataset(str(tmp_path), sizes=(0, 0, 3), closing=True)
    tokenizer, special_ids = word_tokenizer()
    task = gd.Task(
        {"test": cmu_dog.read_split(str(tmp_path), "test")},
        tokenizer,
        special_ids,
        None,
        first_turn=grounded.answer_turn(),
        answer_only=True,
    )
    examples = gd.condition_examples(task)
    for condition in gd.CONDITIONS:  # the answer, not the closing turn
        assert [e.turn for e in examples[condition]] == [7, 7, 7]
    assert " and " in examples["memory"][0].reference
    stops = task.stop_ids()
    assert tokenizer.end_token_id in stops and special_ids["<eos>"] in stops


def test_load_task_offline(tmp_path):
    args = gd.settings(
        options(output=str(tmp_path), sizes=[4, 2, 2], hidden_dim=8,
                num_layers=1)
    )  # fmt: skip
    task = gd.load_task(args)
    assert {s: len(v) for s, v in task.splits.items()} == {
        "train": 4,
        "valid": 2,
        "test": 2,
    }
    assert os.path.isdir(gd.offline_data_folder(args))
    assert (task.first_turn, task.answer_only) == (grounded.answer_turn(), True)
    blocks = task.blocks("valid", args, labels="turns")
    x, y, w = blocks.arrays()
    assert x["token_ids"].shape[1] == 32 and w.sum() > 0
    model = task.base_model(0)
    assert model.backbone.vocabulary_size == task.tokenizer.vocabulary_size()


def test_resize_vocabulary_keeps_the_old_rows():
    import keras_hub

    backbone = keras_hub.models.GPT2Backbone(
        vocabulary_size=10, num_layers=1, num_heads=1, hidden_dim=4,
        intermediate_dim=8, max_sequence_length=8,
    )  # fmt: skip
    resized = resize_vocabulary(keras_hub.models.GPT2CausalLM(backbone), 13)
    old = keras.ops.convert_to_numpy(backbone.token_embedding.embeddings)
    new = keras.ops.convert_to_numpy(
        resized.backbone.token_embedding.embeddings
    )
    assert new.shape == (13, 4)
    np.testing.assert_array_equal(new[:10], old)
    with pytest.raises(ValueError, match="vocabulary_size"):
        resize_vocabulary(keras_hub.models.GPT2CausalLM(backbone), 9)


# ----------------------------------------------------------------------- #
# The record and the ending
# ----------------------------------------------------------------------- #


def test_record_keys_match_the_stored_record(stored):
    record, _ = stored
    run = record["runs"][0]
    rebuilt = gd.seed_record(
        0, run["train_losses"], run["validation_turn_loss"], run["metrics"],
        run["samples"], (run["train_seconds"], run["seconds"]),
    )  # fmt: skip
    assert rebuilt == run
    task = gd.Task({"train": [1] * 3, "valid": [], "test": [2]}, None, {}, None)
    args = options()
    built = gd.build_record(args, task, record["runs"], {}, 1.0)
    assert list(built) == list(record)
    assert built["summary"] == record["summary"]
    assert built["conversations"] == {"train": 3, "valid": 0, "test": 1}


def test_summarize_skips_missing_metrics():
    runs = [
        {"metrics": {c: {"f1": f1, "meteor": None, "count": 2}
                     for c in gd.CONDITIONS}}
        for f1 in (10.0, 30.0)
    ]  # fmt: skip
    summary = gd.summarize(runs)
    assert list(summary["memory"]) == ["f1"]
    assert summary["memory"]["f1"] == dict(mean=20.0, std=10.0, min=10.0,
                                           max=30.0)  # fmt: skip


def test_table_and_verdict_of_the_stored_record(stored):
    record, _ = stored
    table = gd.results_table(record).splitlines()
    assert table[0].startswith("| condition | F1 |")
    assert len(table) == 2 + len(gd.CONDITIONS)
    # Mean (min–max) over the 3 seeds; METEOR was computed; no turn loss
    # without a document.
    assert table[2].startswith("| memory | 2.90 (0.25–5.63) |")
    assert table[4].endswith("| – |")
    line = gd.verdict(record)
    assert line.startswith("F1 2.90 (min 0.25, max 5.63, 3 seeds) with the")
    assert "no document: within the seed spread: no conclusion;" in line
    assert line.endswith("off: the memory leads by 0.075, beyond the seed "
                         "spread.")  # fmt: skip
    assert "\n" not in line


def test_compare_trails_beyond_the_spread():
    worse = gd.compare([1.0, 2.0], {"a": [3.0, 4.0], "b": [0.0, 1.0]})
    assert worse == "the memory trails by 2.00, beyond the seed spread"
    lower = gd.compare([0.5, 0.6], {"off": [0.7, 0.8]}, False, digits=1)
    assert lower == "the memory leads by 0.2, beyond the seed spread"


def test_sentences_and_figures_summary(stored):
    _, figures = stored
    ids = gd.sentence_ids([" a", " ?", "<x>", " b"], [5, 6, 1, 7], {1})
    np.testing.assert_array_equal(ids, [0, 0, 1, 1])
    table = gd.figures_table(figures).splitlines()
    assert len(table) == 2 + len(figures["words"]) + 5
    assert "| Fig. 4: read predicting 'music' | ' guitar' (0.041) |" in table
    line = gd.figures_verdict(figures)
    assert line.startswith("Fig. 4: the reads predicting 5 of the 5 words")
    assert "'the melody follows guitar .' takes the most room (10.5%)" in line


# ----------------------------------------------------------------------- #
# The example, as a user runs it
# ----------------------------------------------------------------------- #


def run_example(*argv):
    result = subprocess.run(
        [sys.executable, SCRIPT, *argv],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=900,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def written(stdout, count):
    """The paths after ``wrote:`` (the last ``count`` lines)."""
    lines = stdout.rstrip().splitlines()
    assert lines[-count - 1] == "wrote:"
    return [os.path.join(ROOT, line.strip()) for line in lines[-count:]]


def test_help_documents_every_option():
    text = run_example("--help").stdout
    assert "A quick try: --offline --quick" in text
    flags = [w for w in text.split() if w.startswith("--")]
    assert "--sticky-mode" in flags and "--figures-only" in flags
    assert "--closing-turn," in flags and "--no-closing-turn" in flags
    assert text.count("(default:") >= 22  # every option but --help


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    """``--offline --quick``, as the example's docstring gives it."""
    output = str(tmp_path_factory.mktemp("grounded") / "out")
    stdout = run_example("--offline", "--quick", "--output", output).stdout
    with open(os.path.join(output, "grounded_offline.json")) as f:
        return output, stdout, json.load(f)


@pytest.mark.slow
def test_example_quick_run_ending(quick_run):
    _, stdout, _ = quick_run
    paths = written(stdout, 5)
    assert all(os.path.getsize(p) for p in paths), paths
    assert os.path.basename(paths[0]) == "grounded_offline.json"
    lines = stdout.splitlines()
    header = (
        "| condition | F1 | ROUGE-1 | ROUGE-L | METEOR | BLEU | turn loss |"
    )
    table = lines.index(header)
    assert [x.split(" |")[0] for x in lines[table + 2 : table + 5]] == [
        "| memory",
        "| memory off",
        "| no document",
    ]
    assert lines[table + 6].startswith("F1 ")  # the verdict, one line
    assert "(one seed: no spread) with the document in memory" in stdout
    # The console: one line for the epoch, none of grain's notices.
    steps = re.search(r"(\d+) steps per epoch", stdout)[1]
    assert re.search(rf"^{steps}/{steps} - \d+s", stdout, re.MULTILINE)
    assert "absl" not in stdout


@pytest.mark.slow
def test_example_quick_run_record(quick_run, stored):
    _, _, record = quick_run
    expected = stored[0]
    assert list(record) == list(expected)
    assert list(record["runs"][0]) == list(expected["runs"][0])
    assert set(expected["arguments"]) < set(record["arguments"])
    sizes = dict(zip(cmu_dog.SPLITS, gd.QUICK["sizes"], strict=True))
    assert record["conversations"] == sizes
    metrics = record["runs"][0]["metrics"]
    assert list(metrics) == list(gd.CONDITIONS)
    for scores in metrics.values():
        assert scores["count"] == sizes["test"]  # the answers
        assert 0.0 <= scores["f1"] <= 100.0
    assert set(record["figures"]) == set(expected["figures"])
    assert len(record["runs"][0]["train_losses"]) == gd.QUICK["epochs"]


@pytest.mark.slow
def test_example_figures_only(quick_run):
    output, _, record = quick_run
    stdout = run_example(
        "--offline", "--quick", "--figures-only", "--output", output
    ).stdout
    paths = written(stdout, 4)
    assert all(os.path.getsize(p) for p in paths), paths
    with open(paths[-1]) as f:
        assert json.load(f) == record["figures"]  # the same model, redrawn
    verdict = stdout.rstrip().splitlines()[-7]
    assert verdict.startswith("Fig. 4: the reads predicting ")
    assert verdict.endswith("one seed's model: no spread.")
