"""The language-model study (`experiments.language_model`), tiny and end to
end, and `examples/language_model.py --quick` in its own process.

Two arms (Transformer-XL and the ∞-former) trained a few steps on a small
corpus written here: the record's structure, finite perplexities, the
loss-by-position buckets that add up to the perplexity, perplexities that
match a direct ``model.evaluate`` of the same held-out stream (with and
without the LTM), the read diagnostics, ``--merge``, and the verdict.
"""

import argparse
import doctest
import json
import math
import os
import re
import subprocess
import sys
import types

import keras
import numpy as np
import pytest

from experiments import language_model as lm
from keras_infmemory.documents import DocumentBlocks

# The experiment runs the same code on every backend (its pieces are
# tested on all three): one backend runs this file (tests/conftest.py).
pytestmark = pytest.mark.one_backend

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(__file__)))
WORDS = (
    "the king queen lord lady night day love death sword crown blood "
    "heaven earth sweet fair good noble speak come go hear see thou thy"
).split()
ARMS = ("transformer_xl", "inf_former")
MAX_EVAL_STEPS = 5


def write_corpus(folder):
    """Five word-salad documents (4 for training, 1 held out at 0.2)."""
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(5):
        words = rng.choice(WORDS, size=300 + 60 * i)
        (folder / f"doc{i}.txt").write_text(" ".join(words))
    return folder


@pytest.fixture(scope="module")
def corpus_folder(tmp_path_factory):
    return write_corpus(tmp_path_factory.mktemp("language_model") / "data")


@pytest.fixture(scope="module")
def tiny_run(corpus_folder):
    """The example's loop, in-process: both arms, diagnostics every 3 of
    the 6 steps, the first 5 held-out segments."""
    config = lm.configure("cpu", quick=True)
    corpus = lm.prepare_corpus(config, [str(corpus_folder)], 0.2)
    held = corpus.held_out
    positions, starts = lm.held_out_buckets(held, MAX_EVAL_STEPS)
    probe = lm.probe_segments(held)
    runs, models = [], {}
    for arm in ARMS:
        model, info = lm.train_arm(
            arm, 0, config, corpus.train, corpus.vocabulary_size, probe, 3
        )
        if model.memory_options is not None:
            info["final_diagnostics"] = lm.diagnose(model, probe)
        models[arm] = lm.evaluation_model(model, arm, config, held.batch_size)
        result = lm.evaluate_arm(
            models[arm], held, positions, starts, MAX_EVAL_STEPS
        )
        runs.append({"arm": arm, "seed": 0, **result, **info})
    record = lm.study_record(
        "cpu", config, ARMS, corpus, starts, runs, 1.0, {"quick": True}
    )
    output = corpus_folder.parent / "out"
    paths = lm.write_record(record, str(output), "language_model")
    return types.SimpleNamespace(
        config=config,
        corpus=corpus,
        record=record,
        paths=paths,
        models=models,
        output=output,
        probe=probe,
    )


@pytest.mark.slow
def test_record_structure(tiny_run):
    config, output = tiny_run.config, tiny_run.output
    assert tiny_run.paths == [
        str(output / f"language_model.{suffix}")
        for suffix in ("json", "md", "png")
    ]
    assert all(os.path.isfile(p) for p in tiny_run.paths)
    on_disk = json.loads((output / "language_model.json").read_text())
    assert on_disk["scale"] == "cpu"
    assert on_disk["arms"] == list(ARMS)
    assert on_disk["held_out_documents"] == ["doc4.txt"]
    starts = on_disk["summary"]["bucket_starts"]
    assert starts[:2] == [0, config["model"]["segment_length"]]
    assert set(on_disk["gaps"]) == {"inf_former − transformer_xl"}
    runs = on_disk["runs"]
    assert [(r["arm"], r["seed"]) for r in runs] == [(a, 0) for a in ARMS]
    for r in runs:
        assert math.isfinite(r["perplexity"]) and r["perplexity"] > 1
        assert len(r["train_loss"]) == config["train"]["steps"]
        assert len(r["loss_by_position"]) == len(starts)
        assert all(t > 0 for t in r["tokens_by_position"])
        assert sum(r["tokens_by_position"]) == r["tokens"]
        inside = r["loss_by_segment_position"]
        assert len(inside) == config["model"]["segment_length"]
        assert all(math.isfinite(v) and v > 0 for v in inside)
        # The buckets add up to the whole: token-weighted mean loss.
        mean = np.dot(r["loss_by_position"], r["tokens_by_position"])
        np.testing.assert_allclose(
            math.exp(mean / r["tokens"]), r["perplexity"], rtol=1e-6
        )
    plain, memory = runs
    assert plain["perplexity_without_ltm"] is None
    assert plain["diagnostics"] == [] and plain["ltm_weight_change"] == {}
    assert math.isfinite(memory["perplexity_without_ltm"])
    assert set(memory["ltm_weight_change"]) >= {"mu_kernel", "output_kernel"}
    assert [d["step"] for d in memory["diagnostics"]] == [3, 6]
    text = (output / "language_model.md").read_text()
    assert "| inf_former |" in text and "without LTM" in text
    assert "by position inside the segment" in text


@pytest.mark.slow
def test_diagnostics_read_the_densities(tiny_run):
    """Per layer, the spread of the read centres and the mean width: six
    tiny steps leave the reads near their initial shape (σ² = softplus(0)
    = ln 2, μ near the same place for every query); on JAX, the gradient
    norm of every LTM weight."""
    memory = tiny_run.record["runs"][1]
    final = memory["final_diagnostics"]
    layers = tiny_run.config["model"]["num_layers"]
    assert len(final["mu_std"]) == len(final["variance_mean"]) == layers
    np.testing.assert_allclose(final["variance_mean"], math.log(2), atol=0.01)
    assert all(0 < v < 0.05 for v in final["mu_std"])
    assert "ltm_rms" not in final  # needed the block's internals
    if keras.backend.backend() == "jax":
        norms = final["gradient_norms"]  # three significant digits
        weights = tiny_run.models["inf_former"].blocks[0].ltm.trainable_weights
        assert set(norms) == {w.name for w in weights}
        assert all(math.isfinite(v) and v > 0 for v in norms["mu_kernel"])
        assert all(v > 0 for v in norms["value_kernel"])
    else:
        assert "gradient_norms" not in final
    window = lm.build_model("window", tiny_run.config, 300, 1)
    assert lm.diagnose(window, tiny_run.probe) == {}


@pytest.mark.slow
@pytest.mark.parametrize("arm", ARMS)
def test_perplexity_matches_a_direct_evaluation(tiny_run, arm):
    """``model.evaluate`` over the same held-out stream (stateful, reset
    first, token-weighted cross-entropy) gives the recorded perplexity."""
    model, held = tiny_run.models[arm], tiny_run.corpus.held_out
    x, y, w = held.arrays()
    rows = MAX_EVAL_STEPS * held.batch_size
    model.compile(
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        weighted_metrics=[
            keras.metrics.SparseCategoricalCrossentropy(
                from_logits=True, name="cross_entropy"
            )
        ],
    )
    run = next(r for r in tiny_run.record["runs"] if r["arm"] == arm)
    for use_memory in (True, False):
        if not use_memory and model.memory_options is None:
            continue
        model.memory_enabled = use_memory
        model.reset_state()
        result = model.evaluate(
            {k: v[:rows] for k, v in x.items()},
            y[:rows],
            sample_weight=w[:rows],
            batch_size=held.batch_size,
            verbose=0,
            return_dict=True,
        )
        model.memory_enabled = True
        key = "perplexity" if use_memory else "perplexity_without_ltm"
        np.testing.assert_allclose(
            math.exp(result["cross_entropy"]), run[key], rtol=1e-4
        )


@pytest.mark.slow
def test_merge_rebuilds_the_summary(tiny_run, tmp_path):
    """``merge`` (one process per seed) gives back the same summary; a
    record written before the rename (``"preset"``) merges with a new one;
    records of different scales are refused."""
    source = tiny_run.output / "language_model.json"
    merged, paths = lm.merge([str(source)], str(tmp_path), "merged")
    assert merged["summary"] == json.loads(
        json.dumps(tiny_run.record["summary"])
    )
    assert paths[-1] == str(tmp_path / "merged.png")
    assert os.path.isfile(paths[-1])
    old = json.loads(source.read_text())
    old["preset"] = old.pop("scale")
    for run in old["runs"]:
        run["seed"] = 1
    (tmp_path / "old.json").write_text(json.dumps(old))
    merged, _ = lm.merge(
        [str(source), str(tmp_path / "old.json")], str(tmp_path), "both"
    )
    assert [(r["arm"], r["seed"]) for r in merged["runs"]] == [
        ("transformer_xl", 0),
        ("inf_former", 0),
        ("transformer_xl", 1),
        ("inf_former", 1),
    ]
    assert len(merged["summary"]["inf_former"]["perplexity"]["values"]) == 2
    old["preset"] = "paper"
    (tmp_path / "paper.json").write_text(json.dumps(old))
    with pytest.raises(ValueError, match="differ in 'scale'"):
        lm.merge(
            [str(source), str(tmp_path / "paper.json")], str(tmp_path), "x"
        )


def test_held_out_buckets_and_probe():
    """Positions restart where a document starts; the buckets reach the
    longest position evaluated; the probe lays a row's first segments
    side by side."""
    docs = [np.arange(1, 40), np.arange(1, 12)]
    data = DocumentBlocks(
        docs, segment_length=8, batch_size=2, start_token_id=0
    )
    positions, starts = lm.held_out_buckets(data)
    assert positions.shape == (data.num_steps * 2, 8)
    assert positions[0].tolist() == list(range(8))  # row 0, step 0
    assert starts == [0, 8, 16, 32]  # 40 tokens in the longest document
    assert lm.held_out_buckets(data, max_eval_steps=1)[1] == [0]
    tokens, targets, weights = lm.probe_segments(data, count=3)
    assert tokens.shape == targets.shape == weights.shape == (2, 24)
    x, _, _ = data.arrays()
    np.testing.assert_array_equal(tokens[0, 8:16], x["token_ids"][2])


def test_configure():
    config = lm.configure("paper")
    assert config["model"]["segment_length"] == 150
    assert config["train"]["memory_learning_rate"] == 2.5e-4
    config = lm.configure(
        "cpu",
        model={"segment_length": 16},
        ltm={"kl_weight": 0},
        steps=10,
        memory_learning_rate=1e-2,
        batch_size=None,  # the scale's
    )
    assert config["model"]["segment_length"] == 16
    assert config["model"]["num_layers"] == 2  # the scale's others
    assert config["ltm"]["kl_weight"] == 0 and config["ltm"]["tau"] == 0.75
    assert config["train"]["steps"] == 10
    assert config["train"]["batch_size"] == 16
    assert config["train"]["memory_learning_rate"] == 1e-2
    quick = lm.configure("cpu", quick=True, steps=3)
    assert quick["model"]["hidden_dim"] == 16 and quick["train"]["steps"] == 3
    assert lm.SCALES["cpu"]["train"]["steps"] == 600  # not changed
    for kwargs, message in (
        ({"scale": "tiny"}, "Received: scale='tiny'"),
        ({"model": [16]}, "Received: model=[16]"),
        ({"steps": 0}, "Received: steps=0"),
        ({"epochs": 2}, "Received: epochs=2"),
    ):
        with pytest.raises(ValueError, match=re.escape(message)):
            lm.configure(**kwargs)


def test_command_line_types():
    assert lm.positive_int("3") == 3 and lm.fraction("0.25") == 0.25
    assert lm.json_object('{"tau": 0.5}') == {"tau": 0.5}
    for parse, text, message in (
        (lm.positive_int, "0", "must be >= 1"),
        (lm.fraction, "1.5", "must be in \\(0, 1\\)"),
        (lm.json_object, "[16]", "must be a JSON object"),
    ):
        with pytest.raises(argparse.ArgumentTypeError, match=message):
            parse(text)


def _record(perplexities):
    """A record with the per-seed perplexities of each arm."""
    runs = [
        {"arm": arm, "seed": seed, "perplexity": p, "train_seconds": 1.0}
        for arm, values in perplexities.items()
        for seed, p in enumerate(values)
    ]
    return {"arms": list(perplexities), "runs": runs}


@pytest.mark.parametrize(
    "perplexities, expected",
    [
        (
            {"transformer_xl": [80.0, 81.0], "inf_former": [78.0, 79.0]},
            "inf_former beats transformer_xl by 2.00 held-out perplexity "
            "(78.50 vs 80.50; beyond the seed spread of 2 seeds)",
        ),
        (
            {"transformer_xl": [80.0], "sticky": [82.5], "window": [71.0]},
            "sticky loses to transformer_xl by 2.50 held-out perplexity "
            "(82.50 vs 80.00; one seed: no spread); best: window (71.00)",
        ),
        (
            {"window": [90.0, 92.0], "compressive": [91.0, 93.0]},
            "window beats compressive by 1.00 held-out perplexity "
            "(91.00 vs 92.00; within the seed spread of 2 seeds: no "
            "conclusion)",
        ),
        (
            {"window": [90.0]},
            "window: held-out perplexity 90.00 (one seed: no spread); one "
            "arm: nothing to compare",
        ),
    ],
)
def test_verdict(perplexities, expected):
    assert lm.verdict(_record(perplexities)) == expected


def test_summary_table():
    record = _record({"transformer_xl": [80.0, 82.0], "inf_former": [81.0]})
    record["runs"][-1]["perplexity_without_ltm"] = 81.5
    assert lm.summary_table(record).splitlines() == [
        "| arm | held-out perplexity | LTM off | train (s) |",
        "|---|---|---|---|",
        "| transformer_xl | 81.00 (min 80.00, max 82.00, 2 seeds) | – | 1 |",
        "| inf_former | 81.00 (one seed: no spread) | 81.50 (one seed: no "
        "spread) | 1 |",
    ]


def test_docstring_examples():
    flags = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE
    result = doctest.testmod(lm, optionflags=flags, verbose=False)
    assert result.attempted > 0 and result.failed == 0


def run_example(*args, backend=None):
    """`examples/language_model.py` in its own process on ``backend`` (this
    one by default); asserts it succeeds and returns the process."""
    result = subprocess.run(
        [sys.executable, os.path.join("examples", "language_model.py"), *args],
        cwd=ROOT,
        env=dict(os.environ, KERAS_BACKEND=backend or keras.backend.backend()),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def ending(stdout):
    """The example's ending (`experiments.records.finish`): ``(table
    lines, verdict, written paths)``."""
    lines = stdout.splitlines()
    wrote = lines.index("wrote:")
    assert lines[wrote - 1] == lines[wrote - 3] == ""
    start = max(i for i in range(wrote) if lines[i].startswith("| arm |"))
    table = lines[start : wrote - 3]
    return table, lines[wrote - 2], [p.strip() for p in lines[wrote + 1 :]]


@pytest.mark.slow
def test_example_quick(corpus_folder, tmp_path):
    """`--quick` on a tiny corpus trains two arms and ends with the table,
    the verdict and the files it wrote; `--merge` of its record ends the
    same way; TensorFlow's load notices are held back."""
    result = run_example(
        "--quick",
        "--data",
        str(corpus_folder),
        "--held-out-fraction",
        "0.2",
        "--output",
        str(tmp_path / "quick"),
    )
    table, verdict, paths = ending(result.stdout)
    assert [line.split(" | ")[0] for line in table[2:]] == [
        "| transformer_xl",
        "| inf_former",
    ]
    assert (
        verdict.startswith("inf_former ") and "one seed: no spread" in verdict
    )
    written = [os.path.join(ROOT, p) for p in paths]
    assert [os.path.basename(p) for p in written] == [
        "language_model.json",
        "language_model.md",
        "language_model.png",
    ]
    assert all(os.path.isfile(p) for p in written)
    assert "cudart_stub" not in result.stderr
    record = json.loads(open(written[0]).read())
    assert record["args"]["max_eval_steps"] == 4  # --quick's
    merged = run_example(
        "--merge", written[0], "--output", str(tmp_path), "--name", "merged"
    )
    assert ending(merged.stdout)[:2] == (table, verdict)
    assert os.path.isfile(tmp_path / "merged.json")


def test_example_help_gives_every_default():
    """``--help`` documents every option with its default and suggests the
    quick setting (the same on every backend: JAX loads fastest)."""
    text = run_example("--help", backend="jax").stdout
    section = text.split("\noptions:\n")[1].split("\n\n")[0]
    entries = ("\n" + section).split("\n  -")[1:]  # one an option
    assert len(entries) == 22, entries
    for entry in entries[1:]:  # --help has none
        assert "default" in " ".join(entry.split()), entry
    assert "Quick look: --quick" in text
