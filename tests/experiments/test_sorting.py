"""The sorting experiment: the scales, the answer-only recipe, a run's
recipe and row, the record, table and verdict, and `examples/sorting.py`
run as a user runs it."""

import doctest
import json
import os
import re
import shlex
import subprocess
import sys
import time

import keras
import numpy as np
import pytest

from experiments import sorting
from experiments.data import sorting as sorting_data
from keras_infmemory import basis
from keras_infmemory.models import ARMS
from tests.testing import to_numpy, xla_flags

# The experiment runs the same code on every backend (its pieces are
# tested on all three): one backend runs this file (tests/conftest.py).
pytestmark = pytest.mark.one_backend

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(__file__)))
PLAN = r"== (\w+), \d+ symbols \((\d+) tokens, \d+ segments of \d+, STM (\d+)\)"
TINY = dict(
    num_layers=1,
    hidden_dim=16,
    num_heads=2,
    intermediate_dim=32,
    segment_length=16,
    memory_options={"num_basis": 16, "num_samples": 16},
)


def run_example(*args, backend=None, **env):
    """Runs `examples/sorting.py *args` in its own process on ``backend``
    (default: this one's); asserts it succeeds and returns the finished
    process."""
    result = subprocess.run(
        [sys.executable, os.path.join("examples", "sorting.py"), *args],
        cwd=ROOT,
        env=dict(
            os.environ, KERAS_BACKEND=backend or keras.backend.backend(), **env
        ),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def row(arm, accuracy, length=1024, seed=0, ablated=None):
    """A `result_row` of the record, as the example writes it."""
    return {
        "arm": arm,
        "length": length,
        "tokens": 1088,
        "segment_length": 64,
        "stm_length": 0 if arm == "window" else 64,
        "seed": seed,
        "accuracy": accuracy,
        "accuracy_without_ltm_read": ablated,
        "eval_loss": 2.0,
        "train_seconds": 100.0,
    }


def test_paper_scale_is_the_papers_configuration():
    model = sorting.sorting_transformer("inf_former", scale="paper")
    assert (model.num_layers, model.hidden_dim, model.num_heads) == (3, 300, 6)
    assert model.intermediate_dim == 300 and model.dropout == 0.1
    assert model.segment_length == model.stm_length == 1024
    assert model.bptt_segments == 1  # gradients through the last segment
    assert model.vocabulary_size == sorting_data.VOCABULARY_SIZE
    ltm = model.blocks[0].ltm
    assert (ltm.num_basis, ltm.num_samples, ltm.tau) == (512, 512, 0.75)
    assert tuple(ltm.basis_widths) == (0.01, 0.05)
    assert (ltm.ridge_penalty, ltm.min_variance) == (1.0, 1e-6)
    assert (ltm.num_heads, ltm.key_dim) == (6, 50)
    train = sorting.SCALES["paper"]["train"]
    assert train["learning_rate"] == 2e-4 and train["global_clipnorm"] == 0.25
    assert (train["batch_size"], train["steps"]) == (8, 20000)
    assert tuple(train["lengths"]) == (4096, 8192, 16384)


@pytest.mark.parametrize("scale", sorted(sorting.SCALES))
def test_scales_have_a_stable_memory(scale):
    """Old content must shrink at every write, or a long stream blows up."""
    config = sorting.SCALES[scale]
    ltm = config["ltm"]
    constants = basis.memory_constants(
        config["model"]["segment_length"],
        ltm["num_basis"],
        ltm["basis_widths"],
        ltm["ridge_penalty"],
        ltm["tau"],
        ltm["num_samples"],
    )
    transition = constants["G_inf"][: ltm["num_samples"]].T @ constants["S"]
    assert basis.update_growth(transition) < 0.9


@pytest.mark.parametrize("arm", ARMS)
def test_arms(arm):
    model = sorting.sorting_transformer(arm, scale="cpu")
    has_ltm = arm in ("inf_former", "sticky")
    assert (model.memory_options is not None) == has_ltm
    assert model.stm_length == (0 if arm == "window" else 64)
    if arm == "sticky":
        assert model.blocks[0].ltm.sticky is not None
    assert model.name == f"sorting_{arm}"


def test_overrides_merge_the_memory_options():
    model = sorting.sorting_transformer(
        "inf_former", scale="cpu", num_layers=1, memory_options={"tau": 0.5}
    )
    assert model.num_layers == 1
    assert model.memory_options["tau"] == 0.5
    assert model.memory_options["num_basis"] == 64  # kept from the scale


@pytest.mark.parametrize("arm", ARMS)
def test_each_arm_trains(arm):
    """A few steps of the recipe: finite loss, every trainable weight moves
    (the LTM's too: it is read by the last segment)."""
    keras.utils.set_random_seed(0)
    model = sorting.sorting_transformer(arm, scale="cpu", **TINY)
    model.compile(**sorting.compile_arguments("cpu", steps=10))
    x, y, w = sorting_data.make_batch(2, 40, seed=0, pad_to_multiple=16)
    model.build(x.shape)
    before = [to_numpy(v) for v in model.trainable_variables]
    for _ in range(3):
        logs = model.train_on_batch(x, y, sample_weight=w, return_dict=True)
    assert np.isfinite(logs["loss"]) and 0.0 <= logs["accuracy"] <= 1.0
    moved = [
        v.path
        for v, old in zip(model.trainable_variables, before, strict=True)
        if not np.array_equal(to_numpy(v), old)
    ]
    assert len(moved) == len(before), set(
        v.path for v in model.trainable_variables
    ) - set(moved)


def test_loss_and_accuracy_count_the_answer_only():
    """The loss is the mean cross-entropy over the 20 answer tokens (not
    divided by the padded sequence length); accuracy matches
    `answer_accuracy`."""
    keras.utils.set_random_seed(0)
    model = sorting.sorting_transformer("transformer_xl", scale="cpu", **TINY)
    model.compile(**sorting.compile_arguments("cpu", steps=10))
    x, y, w = sorting_data.make_batch(2, 40, seed=1, pad_to_multiple=16)
    metrics = model.evaluate(x, y, sample_weight=w, return_dict=True, verbose=0)
    logits = to_numpy(model(x)).astype("float64")  # (B, T, V)
    log_probs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    picked = np.take_along_axis(log_probs, y[..., None], -1)[..., 0]
    expected = -(picked * w).sum() / w.sum()
    np.testing.assert_allclose(metrics["loss"], expected, rtol=1e-5)
    np.testing.assert_allclose(
        metrics["accuracy"],
        sorting_data.answer_accuracy(logits, y, w),
        rtol=1e-6,
    )


def test_bad_arguments():
    with pytest.raises(ValueError, match="Received: scale='tiny'"):
        sorting.sorting_transformer("inf_former", scale="tiny")
    with pytest.raises(ValueError, match="Received: arm='lstm'"):
        sorting.sorting_transformer("lstm", scale="cpu")
    with pytest.raises(ValueError, match="Received: steps=0"):
        sorting.compile_arguments("cpu", steps=0)
    with pytest.raises(ValueError, match="Received: scale='tiny'"):
        sorting.Recipe.from_scale("tiny")


def test_docstring_example():
    result = doctest.testmod(sorting, verbose=False)
    assert result.attempted > 0 and result.failed == 0


def test_recipe_fills_in_the_scale():
    """What is not given comes from the scale (or from `QUICK`); ``None``
    keeps the default; lengths become a tuple."""
    recipe = sorting.Recipe.from_scale("cpu", lengths=[1024], steps=None)
    assert recipe.lengths == (1024,)
    assert (recipe.steps, recipe.batch_size) == (1000, 16)
    assert (recipe.learning_rate, recipe.eval_batches) == (3e-3, 16)
    paper = sorting.Recipe.from_scale("paper")
    assert paper.lengths == (4096, 8192, 16384) and paper.steps == 20000
    quick = sorting.Recipe.from_scale("cpu", quick=True, steps=5)
    assert (quick.lengths, quick.steps, quick.batch_size) == ((40,), 5, 2)
    assert quick.eval_batches == 1 and quick.learning_rate == 3e-3


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"steps": 0}, "Received: steps=0"),
        ({"batch_size": 2.0}, "Received: batch_size=2.0"),
        ({"eval_batches": -1}, "Received: eval_batches=-1"),
        ({"lengths": [100, 0]}, "Received: lengths=0"),
        ({"lengths": []}, "at least one length"),
        ({"learning_rate": 0.0}, "Received: learning_rate=0.0"),
        ({"segment_loop": "while"}, "Received: segment_loop='while'"),
        ({"compressive_options": [1]}, r"Received: compressive_options=\[1\]"),
    ],
)
def test_recipe_refuses_bad_settings(changes, message):
    with pytest.raises(ValueError, match=message):
        sorting.Recipe.from_scale("cpu", **changes)


def test_recipe_takes_numpy_integers():
    """A sweep built with NumPy hands in `np.int64`s; the generators take
    them, so the recipe does too (one check serves both)."""
    recipe = sorting.Recipe.from_scale(
        "cpu", steps=np.int64(7), lengths=[np.int64(64)]
    )
    assert recipe.steps == 7 and list(recipe.lengths) == [64]


def test_scale_defaults_name_every_scale():
    assert sorting.scale_defaults("steps") == "paper 20000, cpu 1000; --quick 3"
    assert sorting.scale_defaults("lengths").startswith("paper 4096 8192")
    assert "--quick" not in sorting.scale_defaults("learning_rate")


def test_build_model_passes_the_compressive_options():
    """`compressive_options` reach the compressive arm's compressors (and
    only that arm); the model comes compiled with the recipe."""
    recipe = sorting.Recipe.from_scale(
        "cpu",
        quick=True,
        compressive_options={"compression": "mean", "compression_rate": 2},
    )
    model = sorting.build_model("compressive", recipe)
    for block in model.blocks:
        assert block.compressor.compression == "mean"
        assert block.compressor.compression_rate == 2
    assert model.hidden_dim == 16 and model.compiled
    other = sorting.build_model("transformer_xl", recipe)
    assert other.blocks[0].compressor is None


def test_make_datasets_hold_out_other_batches():
    recipe = sorting.Recipe.from_scale("cpu", quick=True, seed=3)
    data = sorting.make_datasets(40, 32, recipe)
    assert (len(data["train"]), len(data["eval"])) == (3, 1)
    train, held_out = data["train"][0][0], data["eval"][0][0]
    assert train.shape == held_out.shape == (2, 64)  # padded to 2 segments
    assert not np.array_equal(train, held_out)
    again = sorting.make_datasets(40, 32, recipe)["train"][0][0]
    np.testing.assert_array_equal(train, again)


def test_result_row_describes_the_run():
    recipe = sorting.Recipe.from_scale("cpu", quick=True, seed=2)
    model = sorting.build_model("inf_former", recipe)
    model(np.zeros((2, 64), "int32"))  # 2 segments: the LTM is written
    measured = {
        "train_loss": np.float32(3.0),
        "eval_loss": 2.5,
        "accuracy": np.float64(0.25),
        "accuracy_without_ltm_read": np.float32(0.125),
        "train_seconds": 12.345,
        "eval_seconds": 1.25,
    }
    got = sorting.result_row("inf_former", 40, model, recipe, measured)
    described = (got["tokens"], got["segment_length"], got["stm_length"])
    assert described == (64, 32, 32)
    assert (got["steps"], got["batch_size"], got["seed"]) == (3, 2, 2)
    assert got["accuracy_without_ltm_read"] == 0.125
    assert type(got["train_loss"]) is float and got["train_seconds"] == 12.3
    assert got["parameters"] == model.count_params()
    assert 0 < got["update_growth"] < 1  # the LTM's writes are stable
    assert sorting.describe("inf_former", 40, model, 2).startswith(
        "== inf_former, 40 symbols (64 tokens, 2 segments of 32, STM 32), "
        "seed 2 on "
    )


def test_table_keeps_the_readme_format_and_spans_seeds():
    one = [row("inf_former", 0.339, ablated=0.189), row("window", 0.21)]
    lines = sorting.table(one).splitlines()
    assert lines[0] == (
        "| arm | length | STM / tokens | answer accuracy | without LTM read "
        "| eval loss | train time (s) |"
    )
    assert lines[2] == (
        "| inf_former | 1024 | 64/1088 | 0.339 | 0.189 | 2.000 | 100 |"
    )
    assert lines[3] == "| window | 1024 | 0/1088 | 0.210 | – | 2.000 | 100 |"
    seeds = [row("inf_former", a, seed=s) for s, a in enumerate([0.3, 0.4])]
    (line,) = sorting.table(seeds).splitlines()[2:]
    assert "| 0.350 (0.300–0.400) | – |" in line


@pytest.mark.parametrize(
    "ours, theirs, expected",
    [
        (
            [0.339],
            [0.220],
            "The ∞-former beats Transformer-XL at 1024 symbols: answer "
            "accuracy 0.339 against 0.220, +0.119 (one seed: no spread)",
        ),
        (
            [0.33, 0.35],
            [0.22, 0.24],
            "The ∞-former beats Transformer-XL at 1024 symbols: answer "
            "accuracy 0.340 (min 0.330, max 0.350, 2 seeds) against 0.230 "
            "(min 0.220, max 0.240, 2 seeds), +0.110, beyond the seed spread",
        ),
        (
            [0.20, 0.30],
            [0.26, 0.27],
            "The ∞-former loses to Transformer-XL at 1024 symbols: answer "
            "accuracy 0.250 (min 0.200, max 0.300, 2 seeds) against 0.265 "
            "(min 0.260, max 0.270, 2 seeds), -0.015, within the seed "
            "spread: no conclusion",
        ),
    ],
)
def test_verdict_weighs_the_seed_spread(ours, theirs, expected):
    rows = [row("inf_former", a, seed=s) for s, a in enumerate(ours)]
    rows += [row("transformer_xl", a, seed=s) for s, a in enumerate(theirs)]
    assert sorting.verdict(rows) == expected


def test_verdict_over_lengths_and_arms():
    rows = [
        row(arm, accuracy, length=length, seed=seed)
        for length, base in ((512, 0.2), (2048, 0.3))
        for seed, shift in enumerate((0.0, 0.01))
        for arm, accuracy in (
            ("window", base + shift),
            ("sticky", base + 0.05 * (length == 512) + shift),
        )
    ]
    assert sorting.verdict(rows) == (
        "The ∞-former with sticky memories beats the window at 1 of 2 "
        "lengths: answer accuracy at 512, 2048 symbols: 0.255, 0.305 "
        "against 0.205, 0.305, beyond the seed spread at 512 symbols only"
    )
    assert sorting.verdict([row("window", 0.2)]).startswith(
        "Arms ['window']: no memory arm"
    )


def test_record_summary_and_files(tmp_path):
    """The record keeps the keys `benchmarks/results/sorting_cpu.json`
    has; the summary ends with chance and time; the figure goes beside the
    JSON (or to docs/images/ for benchmarks/results)."""
    recipe = sorting.Recipe.from_scale("cpu", lengths=[1024])
    rows = [row("inf_former", 0.339, ablated=0.19), row("window", 0.2)]
    args = {"arms": ["inf_former", "window"], "lengths": None, "name": "x"}
    record = sorting.make_record(rows, recipe, args, time.perf_counter())
    with open(os.path.join(ROOT, "benchmarks/results/sorting_cpu.json")) as f:
        kept = set(json.load(f)) - {"preset", "counting_baselines_note"}
    assert kept <= set(record)
    assert record["scale"] == "cpu" and record["args"]["lengths"] == (1024,)
    assert record["args"]["arms"] == ["inf_former", "window"]
    baselines = record["counting_baselines"][1024]
    assert baselines["counter over segment + STM"] == pytest.approx(
        0.299, abs=0.002
    )  # as in the README
    assert record["verdict"].startswith("The ∞-former beats the window")
    summary = sorting.summary(record).splitlines()
    assert summary[-2].startswith("1024 symbols, ideal counters: elimination")
    assert summary[-1].startswith("chance: 0.050; total ")
    paths = sorting.write_record(record, str(tmp_path), "run")
    assert paths == [str(tmp_path / "run.json"), str(tmp_path / "run.png")]
    assert json.loads((tmp_path / "run.json").read_text())["results"] == rows
    assert (tmp_path / "run.png").stat().st_size > 0
    results = os.path.join(ROOT, "benchmarks", "results")
    assert sorting.figure_path(results, "sorting_cpu") == os.path.join(
        ROOT, "docs", "images", "sorting_cpu.png"
    )


@pytest.mark.slow
def test_example_quick(tmp_path):
    """`examples/sorting.py --quick` trains two arms on this backend and
    ends as every example ends: the table, the verdict, the paths (the
    files exist)."""
    result = run_example(
        "--quick", "--arms", "inf_former", "transformer_xl",
        "--output", str(tmp_path),
    )  # fmt: skip
    ending = result.stdout.split("| arm | length |", 1)[1].splitlines()
    assert ending[2].startswith("| inf_former | 40 | 32/64 | ")
    assert ending[3].startswith("| transformer_xl | 40 | 32/64 | ")
    verdict = next(line for line in ending if line.startswith("The ∞-former"))
    assert verdict.endswith("(one seed: no spread)")
    assert ending[-3:] == [
        "wrote:",
        "  " + os.path.relpath(tmp_path / "sorting.json", ROOT),
        "  " + os.path.relpath(tmp_path / "sorting.png", ROOT),
    ]
    record = json.loads((tmp_path / "sorting.json").read_text())
    assert record["verdict"] == verdict
    assert record["backend"] == keras.backend.backend()
    assert (tmp_path / "sorting.png").stat().st_size > 0
    assert "absl" not in result.stderr and "cudart" not in result.stderr


@pytest.mark.slow
def test_make_demo_command():
    """`make demo` runs the CPU scale for the ∞-former and Transformer-XL
    arms at a length where the STM covers at most an eighth of the
    sequence: the example accepts the Makefile's words (``--dry-run``
    lists the runs) and documents every option with its default."""
    with open(os.path.join(ROOT, "Makefile"), encoding="utf-8") as f:
        makefile = f.read().replace("\\\n", " ")
    recipe = makefile.split("\ndemo:", 1)[1].split("\n", 2)[1]
    words = shlex.split(recipe)
    argv = words[words.index("examples/sorting.py") + 1 :]
    assert argv[argv.index("--scale") + 1] == "cpu"
    plan = run_example(*argv, "--dry-run", backend="jax").stdout.splitlines()
    runs = [re.match(PLAN, line).groups() for line in plan]
    assert sorted(run[0] for run in runs) == ["inf_former", "transformer_xl"]
    for _, tokens, stm in runs:
        assert 8 * int(stm) <= int(tokens)
    usage = run_example("--help", backend="jax").stdout
    options = re.findall(r"^  (--[a-z-]+)", usage, flags=re.M)
    assert len(options) == 17
    assert usage.count("(default") == len(options)
    assert "A quick look" in usage


@pytest.mark.slow
def test_example_data_parallel(tmp_path):
    """`--data-parallel` splits each batch over (here two simulated CPU)
    devices and trains the ∞-former arm to the end."""
    result = run_example(
        "--quick", "--arms", "inf_former", "--data-parallel",
        "--output", str(tmp_path),
        backend="jax",
        XLA_FLAGS=xla_flags("--xla_force_host_platform_device_count=2"),
    )  # fmt: skip
    assert "Data parallel over 2 devices." in result.stdout
    record = json.loads((tmp_path / "sorting.json").read_text())
    assert record["args"]["data_parallel"] == 0  # all devices
    assert np.isfinite(record["results"][0]["eval_loss"])
