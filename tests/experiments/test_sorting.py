"""The sorting transformer's scales, the answer-only recipe, the example."""

import doctest
import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest

from experiments import sorting
from experiments.data import sorting as sorting_data
from keras_infmemory import basis
from keras_infmemory.models import ARMS
from tests.testing import to_numpy, xla_flags

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(__file__)))
TINY = dict(
    num_layers=1,
    hidden_dim=16,
    num_heads=2,
    intermediate_dim=32,
    segment_length=16,
    memory_options={"num_basis": 16, "num_samples": 16},
)


def run_example(output, *args, backend, **env):
    """Runs `examples/sorting.py --quick` in its own process; asserts it
    succeeds and returns the finished process."""
    result = subprocess.run(
        [
            sys.executable,
            os.path.join("examples", "sorting.py"),
            "--quick",
            *args,
            "--verbose",
            "0",
            "--output",
            str(output),
        ],
        cwd=ROOT,
        env=dict(os.environ, KERAS_BACKEND=backend, **env),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result


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


def test_docstring_example():
    result = doctest.testmod(sorting, verbose=False)
    assert result.attempted > 0 and result.failed == 0


def test_example_quick(tmp_path):
    """`examples/sorting.py --quick` trains and evaluates on this backend
    and writes the JSON and the plot (two arms: every arm trains in
    `test_each_arm_trains`)."""
    result = run_example(
        tmp_path, "--arms", "window", "sticky", backend=keras.backend.backend()
    )
    record = json.loads((tmp_path / "sorting.json").read_text())
    assert record["backend"] == keras.backend.backend()
    assert [r["arm"] for r in record["results"]] == ["window", "sticky"]
    for row in record["results"]:
        assert 0.0 <= row["accuracy"] <= 1.0
        assert np.isfinite(row["eval_loss"])
    assert record["results"][0]["accuracy_without_ltm_read"] is None
    assert 0.0 <= record["results"][1]["accuracy_without_ltm_read"] <= 1.0
    baselines = record["counting_baselines"]["100"]
    assert 0.05 < baselines["elimination only"] < 1.0
    assert (tmp_path / "sorting.png").stat().st_size > 0
    assert "| sticky | 100 |" in result.stdout


def test_make_demo_command():
    """`make demo` runs the CPU scale for the ∞-former and Transformer-XL
    arms at a length where the STM covers at most an eighth of the
    sequence."""
    import importlib.util
    import shlex

    with open(os.path.join(ROOT, "Makefile"), encoding="utf-8") as f:
        makefile = f.read().replace("\\\n", " ")
    recipe = makefile.split("\ndemo:", 1)[1].split("\n", 2)[1]
    words = shlex.split(recipe)
    argv = words[words.index("examples/sorting.py") + 1 :]
    spec = importlib.util.spec_from_file_location(
        "sorting_example", os.path.join(ROOT, "examples", "sorting.py")
    )
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    args = example.parse_args(argv)
    assert args.scale == "cpu"
    assert sorted(args.arms) == ["inf_former", "transformer_xl"]
    model = sorting.sorting_transformer("transformer_xl", scale="cpu")
    for length in args.lengths:
        tokens = sorting_data.total_length(length, model.segment_length)
        assert 8 * model.stm_length <= tokens


@pytest.mark.skipif(
    keras.backend.backend() != "jax",
    reason="keras.distribution trains on several devices on JAX only",
)
def test_example_data_parallel(tmp_path):
    """`--data-parallel` splits each batch over (here two simulated CPU)
    devices and trains the ∞-former arm to the end."""
    result = run_example(
        tmp_path,
        "--arms",
        "inf_former",
        "--data-parallel",
        backend="jax",
        XLA_FLAGS=xla_flags("--xla_force_host_platform_device_count=2"),
    )
    assert "Data parallel over 2 devices." in result.stdout
    record = json.loads((tmp_path / "sorting.json").read_text())
    assert record["args"]["data_parallel"] == 0  # all devices
    assert np.isfinite(record["results"][0]["eval_loss"])


def test_example_compressive_options():
    """`--compressive-options` reaches the compressive arm's compressors
    (and only that arm); anything but a JSON object is refused by name."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "sorting_example", os.path.join(ROOT, "examples", "sorting.py")
    )
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    options = '{"compression": "mean", "compression_rate": 2}'
    args = example.parse_args(["--quick", "--compressive-options", options])
    model = example.build_model("compressive", args)
    for block in model.blocks:
        assert block.compressor.compression == "mean"
        assert block.compressor.compression_rate == 2
    assert (
        example.build_model("transformer_xl", args).blocks[0].compressor is None
    )
    with pytest.raises(SystemExit):
        example.parse_args(["--compressive-options", "[1]"])
