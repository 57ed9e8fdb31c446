"""The KerasHub fine-tuning experiment (`experiments.finetune`) and its
example.

* The example, run once in its own process with ``--quick`` (GPT-2 from a
  BPE trained here, the baseline, one seed): its ending (the table, the
  verdict, the paths it wrote), a console without TensorFlow's or grain's
  notices, a record with the keys of the stored GPT-2 record, its numbers
  (the loss by position adding up to the perplexity, the summary, the
  gaps), the plots, the saved preset and the generated text; ``--help``.
* The module on its own: the settings, the verdict and the table, the
  tiny offline preset (Llama: SentencePiece) and its documents, the
  held-out loss against Keras' ``evaluate``, the model the baseline
  trains.
"""

import argparse
import doctest
import json
import os
import re
import subprocess
import sys

import keras
import keras_hub
import numpy as np
import pytest

from experiments import console, evaluation, finetune
from experiments.tokenizers import family_classes
from keras_infmemory.models.hub import InfMemoryCausalLM, attach_memory
from tests.experiments.test_tokenizers import corpus
from tests.testing import to_numpy

# The experiment runs the same code on every backend (its pieces are
# tested on all three): one backend runs this file (tests/conftest.py).
pytestmark = pytest.mark.one_backend

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(__file__)))
STORED_RECORD = os.path.join(
    ROOT, "benchmarks", "results", "gpt2_shakespeare_stm.json"
)
ARMS = list(finetune.ARMS)


def write_corpus(folder):
    """Four documents of pseudo-English: three to train on, one held out
    (``--held-out-fraction 0.25``)."""
    folder.mkdir()
    for i, text in enumerate(corpus(4, 120, seed=1)):
        (folder / f"document_{i}.txt").write_text(text, encoding="utf-8")
    return str(folder)


def run_example(*argv, **env):
    """`examples/finetune_causal_lm.py` in its own process (stdout not a
    terminal, as in a log file); returns the finished process."""
    return subprocess.run(
        [sys.executable, os.path.join("examples", "finetune_causal_lm.py")]
        + list(argv),
        cwd=ROOT,
        env=dict(os.environ, **env),
        capture_output=True,
        text=True,
        timeout=600,
    )


# ----------------------------------------------------------------------- #
# The example, run once
# ----------------------------------------------------------------------- #


@pytest.fixture(scope="module")
def example(tmp_path_factory):
    """The quick run, offline, with one option given over ``--quick``'s
    (``--steps 3``) and a short-term memory of one segment (every arm)."""
    folder = tmp_path_factory.mktemp("finetune")
    output = folder / "output"
    result = run_example(
        "--offline", "--quick", "--family", "gpt2", "--steps", "3",
        "--stm-length", "8",
        "--data", write_corpus(folder / "data"),
        "--held-out-fraction", "0.25", "--output", str(output),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    with open(output / "finetune_gpt2.json", encoding="utf-8") as f:
        record = json.load(f)
    return result, record


@pytest.mark.slow
def test_example_ends_with_table_verdict_and_paths(example):
    result, record = example
    lines = result.stdout.rstrip("\n").split("\n")
    wrote = lines.index("wrote:")
    paths = [line.strip() for line in lines[wrote + 1 :]]
    assert paths == [
        os.path.relpath(p, ROOT) for p in record["outputs"].values()
    ]
    for path in paths:
        assert os.path.exists(os.path.join(ROOT, path)), path
    verdict = lines[wrote - 2]
    assert verdict == finetune.verdict(record)
    assert verdict.startswith("Held-out perplexity with memory ")
    assert verdict.count("(one seed: no spread)") == 4  # one seed, 3 rivals
    table = lines[wrote - 9 : wrote - 3]
    assert table == finetune.perplexity_table(record).split("\n")
    assert table[0].startswith("| held out (32 tokens) | perplexity |")
    assert [row.split(" | ")[0] for row in table[2:]] == [
        f"| {a}" for a in ARMS
    ]


@pytest.mark.slow
def test_example_console_is_quiet(example):
    """No TensorFlow load notices nor grain notices; one line per epoch
    (no progress bar redrawn) when the output is not a terminal."""
    result, _ = example
    assert not console.LOAD_NOTICES.search(result.stderr), result.stderr
    assert "grain" not in result.stderr.lower(), result.stderr
    assert "\r" not in result.stdout and "\b" not in result.stdout
    epochs = re.findall(r"^(\d+)/\1 - .* - loss: ", result.stdout, re.M)
    assert epochs == ["2", "3", "3"]  # pretraining, baseline, with memory


@pytest.mark.slow
def test_record_keeps_the_stored_records_keys(example):
    """`benchmarks/results/gpt2_shakespeare_stm.json` came from this example:
    a run writes the same keys, nested ones included (``quick`` aside)."""

    def keys(value, prefix=""):
        found = set()
        if isinstance(value, dict):
            for key, inner in value.items():
                if key not in finetune.ARMS:  # the summary's arms
                    found |= {prefix + key} | keys(inner, prefix + key + "/")
        elif isinstance(value, list) and value and isinstance(value[0], dict):
            found |= keys(value[0], prefix + "[]/")
        return found

    with open(STORED_RECORD, encoding="utf-8") as f:
        stored = json.load(f)
    _, record = example
    assert keys(record) - {"arguments/quick"} == keys(stored) - {
        "arguments/quick"
    }
    assert set(finetune.QUICK) | set(finetune.MODE_DEFAULTS["offline"]) <= set(
        record["arguments"]
    )


@pytest.mark.slow
def test_record(example):
    _, record = example
    assert record["backend"] == keras.backend.backend()
    assert (record["family"], record["model_class"]) == (
        "gpt2",
        "InfMemoryGPT2CausalLM",
    )
    assert (record["train_documents"], record["held_out_documents"]) == (3, 1)
    arguments = record["arguments"]
    assert arguments["steps"] == record["fine_tune_steps"] == 3  # given
    assert arguments["num_basis"] == finetune.QUICK["num_basis"]
    assert arguments["baseline"] is True  # offline's default
    assert record["seeds"] == [0] and record["arms"] == ARMS
    assert len(record["seed_runs"][0]["train_loss_running_mean"]) == 3
    # 4 held-out steps of 2 rows × 8 tokens: one document, so the buckets
    # are segments 1, 2 and 3–4 of it.
    assert record["bucket_starts"] == [0, 8, 16]
    runs = {r["arm"]: r for r in record["runs"]}
    assert [r["arm"] for r in record["runs"]] == ARMS
    for r in runs.values():
        # A tiny model barely trained: near uniform over the vocabulary.
        assert 1 < r["perplexity"] < 4 * 400
        assert r["tokens"] == record["held_out_tokens"] == 32
        assert r["tokens_by_position"] == [8, 8, 16]
        # The buckets add up to the whole: token-weighted mean loss.
        mean = np.dot(r["loss_by_position"], r["tokens_by_position"])
        np.testing.assert_allclose(
            np.exp(mean / r["tokens"]), r["perplexity"], rtol=1e-6
        )
        assert record["summary"][r["arm"]]["perplexity"]["values"] == [
            r["perplexity"]
        ]
    on, off = runs["with memory"], runs["memory off"]
    assert on["perplexity"] != off["perplexity"]
    # The first segment reads an empty memory: the same loss.
    np.testing.assert_allclose(
        on["loss_by_position"][0], off["loss_by_position"][0], rtol=1e-4
    )
    # A document's first segment has no tokens before it: its window is
    # the segment alone, the baseline's own reading.
    base, window = runs["without memory"], runs["sliding window"]
    np.testing.assert_allclose(
        window["loss_by_position"][0], base["loss_by_position"][0], rtol=1e-5
    )
    assert window["perplexity"] != base["perplexity"]  # later: the window
    # By position inside the segment: buckets 1, 2, 3–4, 5–8 adding up.
    assert record["segment_bucket_starts"] == [0, 1, 2, 4]
    for r in runs.values():
        assert r["tokens_by_segment_position"] == [4, 4, 8, 16]
        mean = np.dot(
            r["loss_by_segment_position"], r["tokens_by_segment_position"]
        )
        np.testing.assert_allclose(
            np.exp(mean / r["tokens"]), r["perplexity"], rtol=1e-6
        )
    assert list(record["segment_gaps"]) == list(gaps := record["gaps"])
    assert list(gaps) == [f"{a} − with memory" for a in ARMS[1:]]
    for arm in ARMS[1:]:
        np.testing.assert_allclose(
            gaps[f"{arm} − with memory"]["perplexity"]["values"],
            [runs[arm]["perplexity"] - on["perplexity"]],
        )
    tables = open(record["outputs"]["tables"], encoding="utf-8").read()
    assert tables.startswith(finetune.perplexity_table(record))
    assert "| memory off − with memory |" in tables
    assert "by position inside the segment" in tables


@pytest.mark.slow
def test_plots_are_pngs(example):
    _, record = example
    for name in ("position_plot", "training_plot", "memory_plot"):
        with open(record["outputs"][name], "rb") as f:
            data = f.read()
        assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 5000


@pytest.mark.slow
def test_generation_makes_new_tokens(example):
    """Greedy, with the family's stop token (the end token): were it the
    padding id, generate() would give the prompt back unchanged."""
    _, record = example
    prompt, text = record["prompt"], record["generated"]
    assert prompt == "ROMEO:" and text.startswith(prompt)
    assert len(text) > len(prompt)


@pytest.mark.slow
def test_saved_preset(example):
    """The first seed's fine-tuned weights, saved stateless: loaded
    stateful, they score the held-out documents as the record says."""
    _, record = example
    folder = record["outputs"]["preset"]
    loaded = InfMemoryCausalLM.from_preset(folder)
    assert type(loaded).__name__ == record["model_class"]
    assert not loaded.stateful  # the weights, not the last batch's memory
    assert loaded.backbone.memory_layers == [0]
    assert loaded.backbone.memories[0].num_basis == 16
    assert isinstance(loaded.preprocessor, family_classes("gpt2")[1])
    args = argparse.Namespace(**record["arguments"])
    data = finetune.held_out_data(folder, *finetune.load_documents(args), args)
    lm = InfMemoryCausalLM.from_preset(
        folder, stateful=True, batch_size=2, preprocessor=None
    )
    run = finetune.evaluate(lm, "with memory", 0, data)
    expected = record["runs"][0]
    assert run["arm"] == expected["arm"] == "with memory"
    np.testing.assert_allclose(
        run["perplexity"], expected["perplexity"], rtol=1e-5
    )


@pytest.mark.slow
def test_help_lists_every_option_with_a_default():
    result = run_example("--help", COLUMNS="400")  # one line per option
    assert result.returncode == 0, result.stderr[-3000:]
    text = result.stdout
    assert "Fine-tune a KerasHub causal LM" in text and "--quick" in text
    entries, current = {}, None
    for line in text.split("options:")[1].splitlines():
        found = re.match(r"  (--[\w-]+)", line)
        if found:
            current = found[1]
            entries[current] = line
        elif current and line.startswith("    "):
            entries[current] += " " + line.strip()  # help on the next line
        else:
            current = None  # a group title or a blank line
    assert len(entries) == 31  # every option but -h, --help
    for entry in entries.values():
        assert re.search(r"\(default: [^)]+\)", entry), entry
        assert "(default: None)" not in entry, entry
    assert (
        "(default: 128 offline, 512 with --preset)"
        in (entries["--segment-length"])
    )


# ----------------------------------------------------------------------- #
# The module: settings, verdict, table
# ----------------------------------------------------------------------- #


def options(**given):
    """Parsed options as the example's parser gives them (the mode's
    options None), with ``given`` over them."""
    values = dict(
        preset=None, data=None, offline=False, family="gpt2", seeds=[0],
        output=None, generate_length=64, pretrain_steps=600,
        held_out_fraction=0.1, max_eval_steps=None, memory_layers=None,
        num_basis=512, num_samples=512, sticky=False, vocabulary_size=2048,
        num_layers=4, hidden_dim=128, num_heads=4,
        pretrain_learning_rate=1e-3, stm_length=0,
    )  # fmt: skip
    values.update({name: None for name in finetune.MODE_DEFAULTS["offline"]})
    values.update(given)
    return argparse.Namespace(**values)


def test_docstring_examples():
    result = doctest.testmod(finetune, verbose=False)
    assert result.attempted > 0 and result.failed == 0


def test_settings_take_the_modes_defaults():
    args = finetune.settings(options(offline=True, family="qwen3"))
    assert args.output == os.path.join("runs", "finetune_qwen3")
    assert (args.segment_length, args.batch_size, args.steps) == (128, 8, 300)
    assert args.baseline is True and args.prompt == "ROMEO:"
    args = finetune.settings(
        options(preset="hf://x/Some Model", data=["."], steps=7)
    )
    assert args.output == os.path.join("runs", "finetune_Some_Model")
    assert (args.segment_length, args.learning_rate) == (512, 5e-5)
    assert args.steps == 7 and args.baseline is False


@pytest.mark.parametrize(
    "given, message",
    [
        ({}, "either --preset"),
        ({"offline": True, "preset": "gpt2_base_en"}, "either --preset"),
        ({"preset": "gpt2_base_en"}, "needs --data"),
        ({"offline": True, "steps": 0}, "Received: --steps 0"),
        ({"offline": True, "pretrain_steps": -1}, "--pretrain-steps -1"),
        ({"offline": True, "stm_length": -2}, "Received: --stm-length -2"),
        ({"offline": True, "seeds": [1, 1]}, "Received: --seeds 1 1"),
    ],
)
def test_settings_refuse(given, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        finetune.settings(options(**given))


def summary_record(**values):
    """A record with the perplexities ``values`` (arm -> one per seed)."""
    arms = [arm for arm in ARMS if arm in values]
    gaps = {
        f"{arm} − with memory": {
            "perplexity": {
                "values": list(np.subtract(values[arm], values["with memory"]))
            }
        }
        for arm in arms[1:]
    }
    summary = {arm: {"perplexity": {"values": values[arm]}} for arm in arms}
    return {
        "arms": arms,
        "summary": summary,
        "gaps": gaps,
        "held_out_tokens": 1024,
    }


@pytest.mark.parametrize(
    "values, expected",
    [
        (  # apart: every seed of one arm beats every seed of the other
            {"with memory": [10.0, 11.0], "memory off": [12.0, 13.0]},
            "the memory beats the same weights with the memory off by 2.00 "
            "(beyond the seed spread)",
        ),
        (
            {"with memory": [12.0, 13.0], "without memory": [10.0, 11.0]},
            "the memory loses to the model fine-tuned without memory by "
            "2.00 (beyond the seed spread)",
        ),
        (
            {"with memory": [10.0, 12.5], "without memory": [12.0, 13.0]},
            "beats the model fine-tuned without memory by 1.25 (within the "
            "seed spread: no conclusion)",
        ),
        (
            {"with memory": [10.0], "memory off": [10.0]},
            "ties with the same weights with the memory off (one seed: no "
            "spread)",
        ),
    ],
)
def test_verdict(values, expected):
    line = finetune.verdict(summary_record(**values))
    assert expected in line and "\n" not in line


def test_verdict_of_two_rivals_and_of_none():
    line = finetune.verdict(
        summary_record(
            **{
                "with memory": [199.21],
                "memory off": [199.0],
                "without memory": [197.83],
            }
        )
    )
    assert line == (
        "Held-out perplexity with memory 199.21 (one seed: no spread): the "
        "memory loses to the same weights with the memory off by 0.21 (one "
        "seed: no spread) and loses to the model fine-tuned without memory "
        "by 1.38 (one seed: no spread)."
    )
    alone = finetune.verdict(summary_record(**{"with memory": [5.0, 6.0]}))
    assert alone == (
        "Held-out perplexity with memory 5.50 (min 5.00, max 6.00, 2 seeds)."
    )


def test_perplexity_table_gives_the_spread_not_a_zero_deviation():
    one = finetune.perplexity_table(
        summary_record(**{"with memory": [199.21], "without memory": [197.83]})
    )
    assert one.split("\n") == [
        "| held out (1,024 tokens) | perplexity | − with memory, paired (> "
        "0: the memory is better) |",
        "|---|---|---|",
        "| with memory | 199.21 (one seed: no spread) |  |",
        "| without memory | 197.83 (one seed: no spread) | -1.38 (one seed: "
        "no spread) |",
    ]
    assert "±" not in one
    two = finetune.perplexity_table(
        summary_record(**{"with memory": [1.0, 3.0], "memory off": [2.0, 5.0]})
    )
    assert "| memory off | 3.50 (min 2.00, max 5.00, 2 seeds) |" in two


def test_mode_default_help():
    assert finetune.mode_default("baseline") == (
        "(default: on offline, off with --preset)"
    )
    assert finetune.mode_default("prompt") == (
        "(default: 'ROMEO:' offline, 'The' with --preset)"
    )


def test_tiny_backbone_arguments():
    args = options(offline=True, num_heads=4, hidden_dim=16, segment_length=8)
    gpt2 = finetune.tiny_backbone_arguments("gpt2", 300, args)
    assert gpt2["max_sequence_length"] == 8 and gpt2["num_heads"] == 4
    gemma = finetune.tiny_backbone_arguments("gemma", 300, args)
    assert (gemma["num_query_heads"], gemma["num_key_value_heads"]) == (4, 2)
    assert gemma["head_dim"] == 4 and gemma["intermediate_dim"] == 64
    with pytest.raises(SystemExit, match="multiple of --num-heads 3"):
        finetune.tiny_backbone_arguments("gpt2", 300, options(num_heads=3))


# ----------------------------------------------------------------------- #
# The module: a tiny Llama preset, its documents, the held-out loss
# ----------------------------------------------------------------------- #

TINY = dict(
    segment_length=8, batch_size=2, steps=2, num_basis=16, num_samples=16,
    max_eval_steps=4, vocabulary_size=400, num_layers=1, hidden_dim=16,
    num_heads=2, pretrain_steps=0, held_out_fraction=0.25, stm_length=0,
)  # fmt: skip


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    """A tiny Llama (SentencePiece) preset with random weights, made as
    the offline run makes it for its second seed, and its documents."""
    folder = tmp_path_factory.mktemp("llama")
    data = write_corpus(folder / "data")
    args = finetune.settings(
        options(
            offline=True,
            family="llama",
            data=[data],
            seeds=[0, 1],
            output=str(folder / "output"),
            **TINY,
        )  # fmt: skip
    )
    texts = finetune.load_documents(args)
    paths = finetune.output_paths(args)
    tokenizer = finetune.offline_tokenizer(args, texts[0])
    preset = finetune.starting_preset(args, 1, texts, paths, tokenizer)
    return args, texts, preset, finetune.held_out_data(preset, *texts, args)


def test_starting_preset(llama):
    args, _, preset, _ = llama
    assert preset == os.path.join(args.output, "pretrained_seed1")
    model = keras_hub.models.CausalLM.from_preset(preset)
    assert type(model) is family_classes("llama")[0]
    assert model.backbone.num_layers == 1
    real = finetune.settings(options(preset="some_preset", data=["."]))
    assert finetune.starting_preset(real, 0, None, None, None) == (
        "some_preset"
    )


def test_held_out_data(llama):
    args, texts, preset, data = llama
    assert (len(texts[0]), len(texts[1])) == (3, 1)
    tokenizer = keras_hub.tokenizers.Tokenizer.from_preset(preset)
    assert len(data["test_ids"]) == 1
    assert data["test_ids"][0][-1] == tokenizer.end_token_id
    x, _, w = data["test"].arrays()
    assert x["token_ids"].shape[1] == 8 and data["test"].batch_size == 2
    assert data["positions"].shape == x["token_ids"].shape
    # One held-out document in 2 rows: 4 steps reach positions up to 31.
    assert data["starts"] == [0, 8, 16] and data["max_steps"] == 4
    assert finetune.fine_tune_steps(data, args) == 2


def test_held_out_loss_matches_keras_evaluate(llama):
    """The per-token losses behind the record give the perplexity Keras'
    ``evaluate`` gives on the same stream (stateful, reset first,
    token-weighted cross-entropy), with and without the memory."""
    args, _, preset, data = llama
    lm = InfMemoryCausalLM.from_preset(
        preset,
        stateful=True,
        batch_size=2,
        segment_length=8,
        preprocessor=None,
        **finetune.memory_options(args),
    )
    lm.compile(
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        weighted_metrics=[finetune.cross_entropy()],
    )
    x, y, w = data["test"].arrays()
    rows = args.max_eval_steps * 2
    results = {}
    for arm in ("with memory", "memory off"):
        results[arm] = finetune.evaluate(lm, arm, 0, data)
        assert results[arm]["arm"] == arm and results[arm]["seed"] == 0
        lm.memory_enabled = arm == "with memory"
        lm.reset_state()
        expected = lm.evaluate(
            {k: v[:rows] for k, v in x.items()},
            y[:rows],
            sample_weight=w[:rows],
            batch_size=2,
            verbose=0,
            return_dict=True,
        )["cross_entropy"]
        lm.memory_enabled = True
        np.testing.assert_allclose(
            results[arm]["perplexity"], np.exp(expected), rtol=1e-4
        )
    on, off = (results[a]["loss_by_position"] for a in results)
    np.testing.assert_allclose(on[0], off[0], rtol=1e-5)  # empty memory
    assert on[1:] != off[1:]


def test_sliding_window_losses(llama):
    """`experiments.evaluation.window_losses`: with no context each
    segment is read alone (`token_losses` of the model without memory);
    with a context of one segment it is the model with a short-term
    memory of one segment and no LTM, whose one decoder layer keeps its
    input (the embeddings) for the STM: the same windows, the same
    losses. A document's later segments differ from reading alone."""
    args, _, preset, data = llama
    stream = dict(
        stateful=True,
        batch_size=2,
        segment_length=8,
        preprocessor=None,
        memory_layers=[],
    )
    base = InfMemoryCausalLM.from_preset(preset, **stream)
    test, steps = data["test"], args.max_eval_steps
    alone, weights = evaluation.token_losses(base, test, steps)

    def window(context):
        reader = attach_memory(base, stateful=False, segment_length=8 + context)
        losses, given = evaluation.window_losses(reader, test, context, steps)
        np.testing.assert_array_equal(given, weights)
        return losses

    np.testing.assert_allclose(window(0), alone, atol=1e-5)
    stm = InfMemoryCausalLM.from_preset(preset, stm_length=8, **stream)
    recurrent, _ = evaluation.token_losses(stm, test, steps)
    windowed = window(8)
    np.testing.assert_allclose(windowed, recurrent, atol=1e-4)
    later = (data["positions"][: len(weights)] >= 8) & (weights > 0)
    assert np.abs(windowed[later] - alone[later]).max() > 1e-3


def test_baseline_model(llama):
    """The model the baseline fine-tunes: the starting preset with no
    memory, stateful like the model with memory; the family's model on
    each segment."""
    _, _, preset, _ = llama
    plain = keras_hub.models.CausalLM.from_preset(preset)
    base = InfMemoryCausalLM.from_preset(
        preset, memory_layers=[], stateful=True, batch_size=2, segment_length=8
    )
    assert base.backbone.memories == [] and base.stateful
    vocabulary = plain.backbone.vocabulary_size
    ids = np.random.default_rng(1).integers(0, vocabulary, (2, 8), "int32")
    x = {"token_ids": ids, "padding_mask": np.ones_like(ids)}
    base.reset_state()
    np.testing.assert_allclose(to_numpy(base(x)), to_numpy(plain(x)), atol=1e-5)
