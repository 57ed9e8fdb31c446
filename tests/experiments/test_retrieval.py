"""The retrieval experiment: the recipe and its depth grid, each arm's
model, the held-out cells, the record's tables, verdict and merge, and
`examples/retrieval.py` run as a user runs it (its ending, its record,
``--merge``, ``--resume`` and ``--help``)."""

import doctest
import importlib.util
import json
import os
import shutil
import subprocess
import sys

import keras
import numpy as np
import pytest

from experiments import retrieval
from experiments.data import retrieval as data
from keras_infmemory.models import InfFormerLM

# The experiment runs the same code on every backend (its pieces are
# tested on all three): one backend runs this file (tests/conftest.py).
pytestmark = pytest.mark.one_backend

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(__file__)))
EXAMPLE = os.path.join(ROOT, "examples", "retrieval.py")
# The end-to-end run: the arms whose code paths differ (STM only, the
# LTM with its ablation, one segment over the context, the KerasHub path).
QUICK_ARGS = (
    "--quick", "--tasks", "passkey",
    "--arms", "transformer_xl", "inf_former", "full_attention", "hub_llama3",
)  # fmt: skip
REQUIRED = {
    "task",
    "arm",
    "context_tokens",
    "depth_segments",
    "seed",
    "accuracy",
}


def run_example(*args, backend=None):
    """Runs `examples/retrieval.py *args` in its own process (this
    checkout first on the path); asserts it succeeds."""
    env = dict(os.environ, KERAS_BACKEND=backend or keras.backend.backend())
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (ROOT, env.get("PYTHONPATH")) if p
    )
    result = subprocess.run(
        [sys.executable, EXAMPLE, *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def ending(stdout):
    """``(table lines, verdict, written paths)`` of an example's output."""
    lines = stdout.splitlines()
    wrote = lines.index("wrote:")
    assert lines[wrote - 1] == lines[wrote - 3] == ""
    start = max(i for i in range(wrote) if lines[i].startswith("| task |"))
    return (
        lines[start : wrote - 3],
        lines[wrote - 2],
        [p.strip() for p in lines[wrote + 1 :]],
    )


def row(arm, accuracy, seed=0, length=256, depth=3, task="passkey", off=None):
    return {
        "task": task,
        "arm": arm,
        "context_tokens": length,
        "depth_segments": depth,
        "seed": seed,
        "accuracy": accuracy,
        "accuracy_memory_off": off,
    }


def record_of(rows, runs=(), **changes):
    """A record as `make_record` writes it, around ``rows``."""
    recipe = retrieval.Recipe.from_scale("cpu", quick=True)
    record = {
        "backend": "jax",
        "scale": "cpu",
        "segment_length": recipe.segment_length,
        "config": json.loads(json.dumps(recipe.config)),
        "recipe": json.loads(json.dumps(vars(recipe))),
        "args": {},
        "command": "python examples/retrieval.py --quick",
        "results": list(rows),
        "runs": list(runs),
        "total_seconds": 10.0,
        **changes,
    }
    record["verdict"] = retrieval.verdict(record)
    return record


def run_of(arm, seed=0, task="passkey", seconds=12.0):
    return {
        "task": task,
        "arm": arm,
        "seed": seed,
        "steps": 2,
        "train_seconds": seconds,
    }


# ---------------------------------------------------------------------------
# The recipe
# ---------------------------------------------------------------------------


def test_docstring_examples():
    result = doctest.testmod(retrieval, verbose=False)
    assert result.attempted > 0 and result.failed == 0


@pytest.mark.parametrize(
    "task, length, segment, expected",
    [
        ("passkey", 512, 32, [1, 2, 4, 8, 14]),  # depth 0 does not fit
        ("qa1", 256, 32, [0, 1, 2, 4, 7]),
        ("qa2", 2048, 64, [0, 1, 2, 4, 8, 16, 31]),
        ("passkey", 60, 32, []),
    ],
)
def test_depth_grid_doubles_up_to_the_deepest(task, length, segment, expected):
    assert retrieval.depth_grid(task, length, segment) == expected
    assert set(expected) <= set(data.valid_depths(task, length, segment))


def test_recipe_fills_in_the_scale():
    recipe = retrieval.Recipe.from_scale("cpu", steps=None, tasks=["qa2"])
    assert recipe.tasks == ("qa2",) and recipe.steps == 1000
    assert recipe.lengths == (256, 512) and recipe.segment_length == 32
    assert recipe.train_lengths("window") == (256, 512)
    quick = retrieval.Recipe.from_scale("cpu", quick=True, depths=[1, 9])
    assert quick.tasks == ("passkey", "qa1") and quick.lengths == (128,)
    assert quick.config["model"]["hidden_dim"] == 16
    assert quick.depths_at("passkey", 128) == [1]  # 9 does not fit
    paper = retrieval.Recipe.from_scale("paper", lengths=[4096, 16384])
    assert paper.segment_length == 512
    assert paper.train_lengths("full_attention") == (4096,)
    assert paper.train_lengths("inf_former") == (4096, 16384)


def test_recipe_takes_numpy_integers():
    """The recipe's checks are the generators' (NumPy integers pass)."""
    recipe = retrieval.Recipe.from_scale(
        "cpu", steps=np.int64(3), depths=[np.int64(1)]
    )
    assert recipe.steps == 3 and recipe.depths == (1,)


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"steps": 0}, "Received: steps=0"),
        ({"batch_size": 2.0}, "Received: batch_size=2.0"),
        ({"max_full_length": -1}, "Received: max_full_length=-1"),
        ({"lengths": []}, "Received: lengths=()"),
        ({"lengths": [40]}, r"Received: lengths=\(40,\)"),
        ({"tasks": ["qa3"]}, r"Received: tasks=\('qa3',\)"),
        ({"depths": [-1]}, "Received: depths=-1"),
        ({"depths": []}, r"Received: depths=\(\)"),
        ({"depths": [40]}, r"No depth fits task 'passkey'"),
        ({"learning_rate": 0.0}, "Received: learning_rate=0.0"),
    ],
)
def test_recipe_refuses_bad_settings(changes, message):
    with pytest.raises(ValueError, match=message):
        retrieval.Recipe.from_scale("cpu", **changes)
    with pytest.raises(ValueError, match="Received: scale='tiny'"):
        retrieval.Recipe.from_scale("tiny")


# ---------------------------------------------------------------------------
# One run
# ---------------------------------------------------------------------------


def test_build_model_gives_each_arm_its_memory():
    """Every arm at the quick size: the InfFormerLM arms' memories, full
    attention's one long segment, Llama 3 with a memory in every layer
    and no STM; all compiled, over the task's vocabulary."""
    recipe = retrieval.Recipe.from_scale("cpu", quick=True)
    segment = recipe.segment_length
    models = {arm: retrieval.build_model(arm, recipe) for arm in retrieval.ARMS}
    assert all(model.compiled for model in models.values())
    for arm in ("window", "transformer_xl", "compressive", "inf_former"):
        model = models[arm]
        assert isinstance(model, InfFormerLM)
        assert model.vocabulary_size == data.VOCABULARY_SIZE
        assert model.segment_length == segment
        assert model.stm_length == (0 if arm == "window" else segment)
        assert (model.memory_options is not None) == (arm == "inf_former")
        assert (model.blocks[0].compressor is not None) == (
            arm == "compressive"
        )
    assert models["sticky"].blocks[0].ltm.sticky is not None
    full = models["full_attention"]
    assert full.segment_length == recipe.max_full_length
    assert full.stm_length == 0 and full.memory_options is None
    hub = models["hub_llama3"]
    assert type(hub).__name__ == "InfMemoryLlama3CausalLM"
    assert retrieval.is_hub(hub) and not retrieval.is_hub(full)
    assert hub.backbone.segment_length == segment
    assert len(hub.backbone.memories) == 1  # QUICK's one layer
    assert hub.backbone.memories[0].num_basis == 16
    assert hub.backbone.vocabulary_size == data.VOCABULARY_SIZE
    with pytest.raises(ValueError, match="Received: arm='lstm'"):
        retrieval.build_model("lstm", recipe)


def test_full_attention_needs_a_length_that_fits():
    recipe = retrieval.Recipe.from_scale("cpu", quick=True, max_full_length=64)
    with pytest.raises(ValueError, match="max_full_length=64"):
        retrieval.train_arm("full_attention", "passkey", 0, recipe)


def test_held_out_cells_are_shared_and_unseen():
    """Held-out batches depend on the cell only (every arm and seed sees
    the same ones), put the needle at the cell's depth and differ from
    the training batches."""
    recipe = retrieval.Recipe.from_scale("cpu", quick=True)
    x, y, w = retrieval.held_out_batch("passkey", 128, 2, 0, recipe)
    again = retrieval.held_out_batch("passkey", 128, 2, 0, recipe)
    np.testing.assert_array_equal(x, again[0])
    assert x.shape == (recipe.batch_size, 128) and w.sum() == 5 * len(x)
    _, _, _, details = data.make_batch(
        recipe.batch_size, "passkey", 128, 32, depth_segments=2,
        seed=(retrieval.EVAL_SEED, 128, 2, 0), split="held_out",
        return_details=True,
    )  # fmt: skip
    assert details["depth_segments"].tolist() == [2, 2]
    train = data.RetrievalDataset(2, "passkey", 32, (128,), steps=4, seed=0)
    assert not any(np.array_equal(x, train[i][0]) for i in range(4))


class _Oracle:
    """A stand-in model whose logits are right on the rows ``right`` and
    wrong on the last answer token of the others; keeps what it was fed."""

    def __init__(self, labels, right):
        self.labels, self.right, self.fed = labels, right, []

    def predict_on_batch(self, inputs):
        self.fed.append(inputs)
        logits = np.eye(data.VOCABULARY_SIZE)[self.labels]
        wrong = ~np.asarray(self.right)
        logits[wrong, -1] = np.roll(logits[wrong, -1], 1, axis=-1)
        return logits


def test_answers_count_exact_match_and_tokens():
    recipe = retrieval.Recipe.from_scale("cpu", quick=True, batch_size=4)
    x, y, w = retrieval.held_out_batch("passkey", 128, 1, 0, recipe)
    oracle = _Oracle(y, [True, False, True, True])
    exact, tokens = retrieval._answers(oracle, [(x, y, w)])
    assert exact == 0.75 and tokens == pytest.approx(19 / 20)
    # Not an InfFormerLM: fed as KerasHub is, with a padding mask of ones.
    (fed,) = oracle.fed
    np.testing.assert_array_equal(fed["token_ids"], x)
    assert fed["padding_mask"].all() and fed["padding_mask"].shape == x.shape


# ---------------------------------------------------------------------------
# The record
# ---------------------------------------------------------------------------


def test_verdict_weighs_the_cells_beyond_the_stm_and_the_seeds():
    rows = [
        row(arm, far + shift, seed=seed)  # depth 3
        for seed, shift in ((0, 0.0), (1, 0.1))
        for arm, far in (("inf_former", 0.6), ("transformer_xl", 0.2))
    ]
    # Within reach of the STM: left out of the verdict.
    rows += [row(arm, 1.0, depth=1) for arm in ("inf_former", "window")]
    assert retrieval.verdict(record_of(rows)) == (
        "passkey, depth > 1 (beyond Transformer-XL's reach): the ∞-former "
        "beats Transformer-XL, 0.650 (0.600–0.700) against 0.250 "
        "(0.200–0.300), +0.400, beyond the spread of 2 seeds"
    )
    close = [row("window", 0.55, seed=1), row("sticky", 0.5, seed=1)]
    close += [row("window", 0.1), row("sticky", 0.6)]
    assert retrieval.verdict(record_of(close)).endswith(
        "+0.225, within the spread of 2 seeds: no conclusion"
    )
    # Two layers of STM reach depth 2: only depth 3 counts.
    deeper = record_of(rows + [row("inf_former", 0.0, depth=2)])
    deeper["config"]["model"]["num_layers"] = 2
    assert "depth > 2 " in retrieval.verdict(deeper)
    assert "0.650 (0.600–0.700) against" in retrieval.verdict(deeper)


def test_verdict_on_the_ceiling_uses_common_cells_only():
    """Without a memory arm, full attention is weighed against the best
    baseline (the headroom), on the cells full attention answered."""
    rows = [
        row("full_attention", 1.0),
        row("window", 0.0),
        row("window", 1.0, length=1024),  # no full attention there
        row("full_attention", 0.5, task="qa1"),
        row("window", 0.5, task="qa1"),
    ]
    assert retrieval.verdict(record_of(rows)) == (
        "passkey, depth > 1 (beyond Transformer-XL's reach): full attention "
        "beats the window, 1.000 against 0.000, +1.000 (one seed: no "
        "spread); qa1, depth > 1 (beyond Transformer-XL's reach): full "
        "attention ties with the window, 0.500 against 0.500, +0.000 (one "
        "seed: no spread)"
    )
    only = retrieval.verdict(record_of([row("window", 0.1)]))
    assert only.startswith("Arms ['window']: no memory arm")


def test_grid_table_spans_seeds_per_cell():
    rows = [
        row("inf_former", 0.2, depth=1, off=0.1),
        row("inf_former", 0.4, seed=1, depth=1, off=0.1),
        row("inf_former", 1.0, length=512, depth=7, off=0.0),
        row("window", 0.0, depth=2),
    ]
    lines = retrieval.grid_table(record_of(rows), "passkey")
    assert lines[0] == "| arm | tokens | depth 1 | depth 2 | depth 7 |"
    assert lines[2:] == [
        "| window | 256 |  | 0.00 |  |",
        "| inf_former | 256 | 0.20–0.40 |  |  |",
        "| inf_former | 512 |  |  | 1.00 |",
        "| inf_former (memory off) | 256 | 0.10–0.10 |  |  |",
        "| inf_former (memory off) | 512 |  |  | 0.00 |",
    ]


def test_summary_table_splits_near_and_far():
    rows = [
        row("transformer_xl", 1.0, depth=1),
        row("transformer_xl", 0.0, depth=3),
        row("transformer_xl", 0.2, depth=4),
        row("hub_llama3", 0.5, depth=3, off=0.25),
    ]
    for r, tokens in zip(rows, (1.0, 0.4, 0.6, 0.7), strict=True):
        r["token_accuracy"] = tokens
    runs = [run_of("transformer_xl"), run_of("hub_llama3", seconds=30.4)]
    lines = retrieval.summary_table(record_of(rows, runs)).splitlines()
    assert lines[0] == (
        "| task | arm | depth ≤ 1 | depth > 1 | depth > 1, memory off "
        "| depth > 1, tokens | steps | train (s) |"
    )
    assert lines[2:] == [
        "| passkey | transformer_xl | 1.000 | 0.100 | – | 0.500 | 2 | 12 |",
        "| passkey | hub_llama3 | – | 0.500 | 0.250 | 0.700 | 2 | 30 |",
    ]


def test_merge_joins_per_seed_records(tmp_path):
    first = record_of([row("inf_former", 0.2)], [run_of("inf_former")])
    second = record_of(
        [row("inf_former", 0.4, seed=1), row("window", 0.1, seed=1)],
        [run_of("inf_former", seed=1), run_of("window", seed=1)],
    )
    paths = []
    for name, record in (("a", first), ("b", second)):
        paths.append(str(tmp_path / f"{name}.json"))
        with open(paths[-1], "w") as f:
            json.dump(record, f)
    merged, written = retrieval.merge(paths, str(tmp_path), "merged")
    assert [(r["arm"], r["seed"]) for r in merged["runs"]] == [
        ("inf_former", 0),
        ("window", 1),
        ("inf_former", 1),
    ]
    assert len(merged["results"]) == 3 and merged["total_seconds"] == 20.0
    assert merged["merged_from"] == ["a.json", "b.json"]
    assert "0.20–0.40" in (tmp_path / "merged.md").read_text()
    assert written == [
        str(tmp_path / f"merged.{e}") for e in ("json", "md", "png")
    ]
    assert (tmp_path / "merged.png").stat().st_size > 0
    with pytest.raises(ValueError, match="is in two records"):
        retrieval.merge([paths[0], paths[0]], str(tmp_path), "twice")
    other = record_of([], config={"model": {"num_layers": 3}})
    with open(tmp_path / "c.json", "w") as f:
        json.dump(other, f)
    with pytest.raises(ValueError, match="differ in 'config'"):
        retrieval.merge(
            [paths[0], str(tmp_path / "c.json")], str(tmp_path), "x"
        )


# ---------------------------------------------------------------------------
# The example, as a user runs it
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("retrieval")
    result = run_example(*QUICK_ARGS, "--output", str(folder))
    return result, folder


@pytest.mark.slow
def test_example_quick_ends_with_table_verdict_and_paths(quick_run):
    result, folder = quick_run
    table, verdict, paths = ending(result.stdout)
    assert [line.split(" | ")[1] for line in table[2:]] == [
        "transformer_xl",
        "inf_former",
        "full_attention",
        "hub_llama3",
    ]
    assert verdict.startswith(
        "passkey, depth > 1 (beyond Transformer-XL's reach): the ∞-former "
    )
    assert verdict.endswith("(one seed: no spread)")
    assert paths == [
        os.path.relpath(folder / f"retrieval.{e}", ROOT)
        for e in ("json", "md", "png")
    ]
    assert all(os.path.getsize(os.path.join(ROOT, p)) > 0 for p in paths)
    assert "cudart_stub" not in result.stderr


@pytest.mark.slow
def test_example_record_schema(quick_run):
    """The issue's schema: ``segment_length`` and ``results`` records of
    task, arm, length, depth, seed and accuracy, one per cell of the grid
    (full attention's up to its length); the LTM arms also with the
    memory off; the command that made it."""
    _, folder = quick_run
    record = json.loads((folder / "retrieval.json").read_text())
    assert record["segment_length"] == 32
    assert record["command"] == "python examples/retrieval.py " + " ".join(
        QUICK_ARGS + ("--output", str(folder))
    )
    results = record["results"]
    assert all(REQUIRED <= set(r) for r in results)
    assert all(0.0 <= r["accuracy"] <= 1.0 for r in results)
    grid = [(128, d) for d in retrieval.depth_grid("passkey", 128, 32)]
    for arm in QUICK_ARGS[4:]:
        mine = [r for r in results if r["arm"] == arm]
        cells = [(r["context_tokens"], r["depth_segments"]) for r in mine]
        assert cells == grid, arm
        off = [r["accuracy_memory_off"] for r in mine]
        if arm in retrieval.LTM_ARMS:
            assert all(0.0 <= a <= 1.0 for a in off)
        else:
            assert off == [None] * len(mine)
    runs = {r["arm"]: r for r in record["runs"]}
    assert runs["full_attention"]["segment_length"] == 128
    assert runs["hub_llama3"]["segment_length"] == 32
    assert record["verdict"] == retrieval.verdict(record)


@pytest.mark.slow
def test_example_merge_and_resume_reproduce_the_ending(quick_run, tmp_path):
    """``--merge`` of the record ends as the run did; ``--resume`` on a
    copy of it trains nothing and ends the same way."""
    result, folder = quick_run
    table, verdict, _ = ending(result.stdout)
    source = str(folder / "retrieval.json")
    merged = run_example("--merge", source, "--output", str(tmp_path))
    assert ending(merged.stdout)[:2] == (table, verdict)
    shutil.copy(source, tmp_path / "again.json")
    spec = importlib.util.spec_from_file_location("retrieval_example", EXAMPLE)
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    record = example.main(
        [*QUICK_ARGS, "--resume", "--output", str(tmp_path), "--name", "again"]
    )
    assert len(record["runs"]) == 4
    assert record["results"] == json.loads(open(source).read())["results"]
    assert record["verdict"] == verdict


def test_example_help_gives_every_default():
    """``--help`` documents every option with its default and suggests the
    quick look (the same on every backend: JAX loads fastest)."""
    text = run_example("--help", backend="jax").stdout
    section = text.split("\noptions:\n")[1].split("\n\n")[0]
    entries = ("\n" + section).split("\n  -")[1:]  # one an option
    assert len(entries) == 18, entries
    for entry in entries[1:]:  # --help has none
        assert "default" in " ".join(entry.split()), entry
    assert "Quick look: --quick" in text
