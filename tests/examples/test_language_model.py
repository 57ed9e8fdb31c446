"""examples/language_model.py, tiny and end to end, in-process.

Two arms (Transformer-XL and the ∞-former) trained a few steps on a small
corpus written here: the record's structure, finite perplexities, the
loss-by-position buckets that add up to the perplexity, and perplexities
that match a direct ``model.evaluate`` of the same held-out stream (with
and without the LTM).
"""

import importlib.util
import json
import math
import os

import keras
import numpy as np
import pytest

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
SCRIPT = os.path.join(ROOT, "examples", "language_model.py")
WORDS = (
    "the king queen lord lady night day love death sword crown blood "
    "heaven earth sweet fair good noble speak come go hear see thou thy"
).split()


def load_example():
    spec = importlib.util.spec_from_file_location("language_model", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def example():
    return load_example()


@pytest.fixture(scope="module")
def tiny_run(example, tmp_path_factory):
    folder = tmp_path_factory.mktemp("language_model")
    data = folder / "data"
    data.mkdir()
    rng = np.random.default_rng(0)
    for i in range(5):  # 4 training documents, 1 held out
        words = rng.choice(WORDS, size=300 + 60 * i)
        (data / f"doc{i}.txt").write_text(" ".join(words))
    argv = ["--quick", "--data", str(data), "--held-out-fraction", "0.2"]
    argv += ["--arms", "transformer_xl", "inf_former", "--seeds", "0"]
    argv += ["--max-eval-steps", "5", "--verbose", "0"]
    argv += ["--diagnostics", "3", "--output", str(folder / "out")]
    args = example.parse_args(argv)
    record, models = example.run(args, keep_models=True)
    return args, record, models, folder / "out"


def test_record_structure(tiny_run):
    args, record, _, output = tiny_run
    for suffix in ("json", "md", "png"):
        assert (output / f"language_model.{suffix}").is_file()
    on_disk = json.loads((output / "language_model.json").read_text())
    assert on_disk["arms"] == ["transformer_xl", "inf_former"]
    assert on_disk["held_out_documents"] == ["doc4.txt"]
    starts = on_disk["summary"]["bucket_starts"]
    assert starts[:2] == [0, args.config["model"]["segment_length"]]
    assert set(on_disk["gaps"]) == {"inf_former − transformer_xl"}
    runs = on_disk["runs"]
    assert [(r["arm"], r["seed"]) for r in runs] == [
        ("transformer_xl", 0),
        ("inf_former", 0),
    ]
    for r in runs:
        assert math.isfinite(r["perplexity"]) and r["perplexity"] > 1
        assert len(r["train_loss"]) == args.config["train"]["steps"]
        assert len(r["loss_by_position"]) == len(starts)
        assert all(t > 0 for t in r["tokens_by_position"])
        assert sum(r["tokens_by_position"]) == r["tokens"]
        inside = r["loss_by_segment_position"]
        assert len(inside) == args.config["model"]["segment_length"]
        assert all(math.isfinite(v) and v > 0 for v in inside)
        # The buckets add up to the whole: token-weighted mean loss.
        mean = np.dot(r["loss_by_position"], r["tokens_by_position"])
        np.testing.assert_allclose(
            math.exp(mean / r["tokens"]), r["perplexity"], rtol=1e-6
        )
    plain, memory = runs
    assert plain["perplexity_without_ltm"] is None
    assert math.isfinite(memory["perplexity_without_ltm"])
    assert set(memory["ltm_weight_change"]) >= {"mu_kernel", "output_kernel"}
    final = memory["final_diagnostics"]
    assert len(final["ltm_rms"]) == args.config["model"]["num_layers"]
    assert all(v > 0 for v in final["ltm_rms"] + final["attention_rms"])
    assert [d["step"] for d in memory["diagnostics"]] == [3, 6]
    if keras.backend.backend() == "jax":
        norms = final["gradient_norms"]  # three significant digits
        assert all(math.isfinite(v) and v > 0 for v in norms["mu_kernel"])
        assert all(
            v > 0 for v in norms["value_kernel"] + norms["output_kernel"]
        )
    text = (output / "language_model.md").read_text()
    assert "| inf_former |" in text and "without LTM" in text
    assert "by position inside the segment" in text


@pytest.mark.parametrize("arm", ["transformer_xl", "inf_former"])
def test_perplexity_matches_a_direct_evaluation(tiny_run, arm):
    """``model.evaluate`` over the same held-out stream (stateful, reset
    first, token-weighted cross-entropy) gives the recorded perplexity."""
    args, record, models, _ = tiny_run
    model, held = models[(arm, 0)], models["held_out"]
    x, y, w = held.arrays()
    rows = args.max_eval_steps * held.batch_size
    model.compile(
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        weighted_metrics=[
            keras.metrics.SparseCategoricalCrossentropy(
                from_logits=True, name="cross_entropy"
            )
        ],
    )
    run = next(r for r in record["runs"] if r["arm"] == arm)
    for use_memory, key in ((True, "perplexity"), (False, "without")):
        if key == "without" and model.memory_options is None:
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
        expected = run[key if use_memory else "perplexity_without_ltm"]
        np.testing.assert_allclose(
            math.exp(result["cross_entropy"]), expected, rtol=1e-4
        )


def test_bad_command_lines(example, capsys):
    for argv, message in (
        (["--steps", "0"], "--steps must be"),
        (["--arms", "lstm"], "invalid choice"),
        (["--held-out-fraction", "1.5"], "--held-out-fraction"),
        (["--model", "[16]"], "--model must be a JSON object"),
        (["--ltm", "3"], "--ltm must be a JSON object"),
    ):
        with pytest.raises(SystemExit):
            example.parse_args(argv)
        assert message in capsys.readouterr().err


def test_arms_default_to_every_arm_of_the_model(example):
    from keras_infmemory.models.inf_former_lm import ARMS

    assert example.parse_args([]).arms == list(ARMS)
    assert (
        example.parse_args(["--preset", "paper"]).config["model"][
            "segment_length"
        ]
        == 150
    )
    args = example.parse_args(["--model", '{"segment_length": 16}'])
    assert args.config["model"]["segment_length"] == 16
    assert args.config["model"]["num_layers"] == 2  # the preset's others


def test_merge_rebuilds_the_summary(example, tiny_run, tmp_path):
    """``--merge`` (one process per seed) gives back the same summary."""
    _, record, _, output = tiny_run
    merged = example.main(
        ["--merge", str(output / "language_model.json")]
        + ["--output", str(tmp_path), "--name", "merged"]
    )
    assert merged["summary"] == json.loads(json.dumps(record["summary"]))
    assert (tmp_path / "merged.png").is_file()
