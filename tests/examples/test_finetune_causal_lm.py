"""examples/finetune_causal_lm.py and the offline tokenizers it trains.

* Every family's tokenizer, trained on a tiny corpus written here: the
  family's KerasHub classes, an end token that is not the padding id, an
  exact round trip and the preprocessor's packing.
* The example end to end, in-process and tiny: GPT-2 (BPE) offline with
  two seeds and the baseline, and Llama (SentencePiece) from a local
  preset folder as for a real preset: the record (per seed and arm, the
  loss by position bucket adding up to the perplexity, the summary over
  seeds, the paired gaps), its tables, the plots, the held-out loss
  against Keras' ``evaluate``, the saved preset (same logits once
  loaded), the model the baseline trains and generation of new tokens.
* ``--help`` documents every option with its default.
"""

import dataclasses
import importlib.util
import json
import os
import pathlib
import re

import keras
import keras_hub
import numpy as np
import pytest

from experiments.tokenizers import (
    BPE_FAMILIES,
    LAYOUTS,
    SENTENCEPIECE_FAMILIES,
    family_classes,
    minimum_vocabulary_size,
    train_tokenizer,
)
from keras_infmemory.models.hub import FAMILIES, InfMemoryCausalLM
from tests.testing import to_numpy

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
SCRIPT = os.path.join(ROOT, "examples", "finetune_causal_lm.py")
WORDS = (
    "the king queen lord lady night day love death sword crown blood "
    "heaven earth sweet fair good noble gentle speak come go hear see "
    "what why where shall will must thou thee thy my our your his her"
).split()
TEXT = "Whether 'tis nobler in the mind\n  to suffer\t1601 slings!"


def corpus(num_documents, words_per_document, seed=0):
    """Pseudo-English documents: lines of random words, reproducible."""
    rng = np.random.default_rng(seed)
    documents = []
    for _ in range(num_documents):
        words = rng.choice(WORDS, size=words_per_document)
        lines = [" ".join(words[i : i + 8]) for i in range(0, len(words), 8)]
        documents.append(".\n".join(line.capitalize() for line in lines))
    return documents


def load_example():
    spec = importlib.util.spec_from_file_location("finetune_causal_lm", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def example():
    return load_example()


# ----------------------------------------------------------------------- #
# The tokenizers of every family
# ----------------------------------------------------------------------- #


def test_every_family_has_a_layout():
    assert set(LAYOUTS) == set(FAMILIES)
    assert set(BPE_FAMILIES) | set(SENTENCEPIECE_FAMILIES) == set(FAMILIES)
    assert not set(BPE_FAMILIES) & set(SENTENCEPIECE_FAMILIES)


@pytest.mark.parametrize("family", sorted(LAYOUTS))
def test_tokenizer_of_every_family(family):
    tokenizer, preprocessor_cls = train_tokenizer(family, corpus(4, 64), 320)
    _, expected_preprocessor, expected_tokenizer = family_classes(family)
    assert type(tokenizer) is expected_tokenizer
    assert preprocessor_cls is expected_preprocessor
    assert tokenizer.vocabulary_size() <= 320
    # The end token is a special token of the family's layout, not the
    # padding id (the preprocessor pads with pad_token_id).
    end, pad = tokenizer.end_token_id, tokenizer.pad_token_id
    assert end != pad
    layout = LAYOUTS[family]
    assert tokenizer.id_to_token(end) in layout.first + layout.last
    # Exact round trip, spaces, tab, newline and digits included.
    ids = to_numpy(tokenizer(TEXT))
    assert ids.ndim == 1 and len(ids) < len(TEXT)
    assert tokenizer.detokenize(ids) == TEXT
    # The preprocessor packs the prompt: start token (if any), the tokens,
    # then padding.
    preprocessor = preprocessor_cls(tokenizer, sequence_length=64)
    packed = to_numpy(preprocessor.generate_preprocess([TEXT]))
    start = tokenizer.start_token_id
    expected = ([] if start is None else [start]) + ids.tolist()
    n = len(expected)
    assert packed["token_ids"][0, :n].tolist() == expected
    assert (packed["token_ids"][0, n:] == pad).all()
    assert packed["padding_mask"][0].tolist() == [1] * n + [0] * (64 - n)


def test_bpe_vocabulary_layout():
    """GPT-2: learned tokens from id 0 (its padding id), <|endoftext|>
    last; OPT: <s> <pad> </s> <unk> first."""
    gpt2, _ = train_tokenizer("gpt2", corpus(2, 64), 300)
    size = gpt2.vocabulary_size()
    assert gpt2.end_token_id == gpt2.start_token_id == size - 1
    assert gpt2.id_to_token(0) != "<|endoftext|>"
    opt, _ = train_tokenizer("opt", corpus(2, 64), 300)
    assert [opt.id_to_token(i) for i in range(4)] == [
        "<s>",
        "<pad>",
        "</s>",
        "<unk>",
    ]
    assert (opt.pad_token_id, opt.end_token_id) == (1, 2)


def test_tokenizer_errors():
    with pytest.raises(ValueError, match=r"family='bert'"):
        train_tokenizer("bert", ["text"])
    least = minimum_vocabulary_size("gpt2")
    with pytest.raises(ValueError, match=rf"vocabulary_size={least - 1}"):
        train_tokenizer("gpt2", ["text"], least - 1)
    with pytest.raises(ValueError, match="texts"):
        train_tokenizer("gpt2", ["", ""], 300)
    # SentencePiece needs a piece per character besides the bytes.
    many = "".join(chr(0x4E00 + i) for i in range(80))
    with pytest.raises(ValueError, match="characters of `texts`"):
        train_tokenizer("llama", [many] * 4, 300)


# ----------------------------------------------------------------------- #
# The example end to end
# ----------------------------------------------------------------------- #

# Each fit compiles a training step (seconds on JAX), so only the offline
# run fine-tunes the baseline and has two seeds; `test_baseline_model`
# checks the model the baseline trains in both.
SIZES = (
    "--segment-length 8 --batch-size 2 --steps 2 --num-basis 16 "
    "--num-samples 16 --max-eval-steps 4 --generate-length 20 "
    "--held-out-fraction 0.25"
).split()
TINY_MODEL = (
    "--num-layers 1 --hidden-dim 16 --num-heads 2 --vocabulary-size 400"
).split()


@dataclasses.dataclass
class Run:
    family: str
    argv: list
    output: pathlib.Path
    name: str  # the record's file name, without extension
    base_preset: str  # the preset without memory the run started from
    record: dict
    model: object


def write_corpus(folder):
    folder.mkdir()
    for i, text in enumerate(corpus(4, 120, seed=1)):
        (folder / f"document_{i}.txt").write_text(text, encoding="utf-8")
    return str(folder)


def offline_run(example, folder):
    """GPT-2 (BPE) offline: tokenizer, tiny model pretrained 2 steps."""
    data = write_corpus(folder / "data")
    output = folder / "output"
    argv = ["--offline", "--family", "gpt2", "--pretrain-steps", "2"]
    argv += TINY_MODEL + SIZES + ["--seeds", "0", "1", "--baseline"]
    argv += ["--data", data, "--output", str(output)]
    record, model = example.main(argv)
    base = record["outputs"]["pretrained_preset"]
    return Run("gpt2", argv, output, "finetune_gpt2", base, record, model)


def preset_run(example, folder):
    """Llama (SentencePiece) from a local preset folder, as for a real
    preset: the tiny preset is made first, with random weights."""
    data = write_corpus(folder / "data")
    preset = str(folder / "tiny_llama")
    offline = ["--offline", "--family", "llama", "--pretrain-steps", "0"]
    args = example.parse_args(offline + TINY_MODEL + SIZES)
    texts, _ = example.load_documents(
        example.parse_args(offline + ["--data", data])
    )
    example.tiny_preset(args, texts, preset)
    output = folder / "output"
    argv = ["--preset", preset, "--data", data, "--prompt", "The king"]
    argv += SIZES + ["--no-baseline", "--output", str(output)]
    record, model = example.main(argv)
    name = "finetune_tiny_llama"
    return Run("llama", argv, output, name, preset, record, model)


@pytest.fixture(scope="module", params=["gpt2 offline", "llama preset"])
def run(request, example, tmp_path_factory):
    folder = tmp_path_factory.mktemp(request.param.replace(" ", "_"))
    if request.param.endswith("offline"):
        return offline_run(example, folder)
    return preset_run(example, folder)


def test_record(run):
    record = run.record
    with open(run.output / f"{run.name}.json", encoding="utf-8") as f:
        assert json.load(f) == json.loads(json.dumps(record))
    assert record["backend"] == keras.backend.backend()
    assert record["family"] == run.family
    causal_lm = family_classes(run.family)[0].__name__
    assert record["model_class"] == f"InfMemory{causal_lm}"
    assert (record["train_documents"], record["held_out_documents"]) == (3, 1)
    assert record["fine_tune_steps"] == 2
    seeds = [0, 1] if run.family == "gpt2" else [0]
    arms = ["with memory", "memory off"]
    arms += ["without memory"] if run.family == "gpt2" else []
    assert record["seeds"] == seeds and record["arms"] == arms
    assert [s["seed"] for s in record["seed_runs"]] == seeds
    for info in record["seed_runs"]:
        assert len(info["train_loss_running_mean"]) == 2
    # 4 held-out steps of 2 rows × 8 tokens: one document, so the buckets
    # are segments 1, 2 and 3–4 of it.
    assert record["bucket_starts"] == [0, 8, 16]
    runs = {(r["seed"], r["arm"]): r for r in record["runs"]}
    assert sorted(runs) == sorted((s, a) for s in seeds for a in arms)
    vocabulary = run.model.backbone.vocabulary_size
    for r in runs.values():
        # A tiny model barely trained: near uniform over the vocabulary.
        assert 1 < r["perplexity"] < 4 * vocabulary
        assert r["tokens"] == record["held_out_tokens"] > 0
        assert sum(r["tokens_by_position"]) == r["tokens"]
        assert all(t > 0 for t in r["tokens_by_position"])
        # The buckets add up to the whole: token-weighted mean loss.
        mean = np.dot(r["loss_by_position"], r["tokens_by_position"])
        np.testing.assert_allclose(
            np.exp(mean / r["tokens"]), r["perplexity"], rtol=1e-6
        )
    for seed in seeds:
        on, off = runs[seed, "with memory"], runs[seed, "memory off"]
        assert on["perplexity"] != off["perplexity"]
        # The first segment reads an empty memory: the same loss.
        np.testing.assert_allclose(
            on["loss_by_position"][0], off["loss_by_position"][0], rtol=1e-4
        )
    for arm in arms:
        values = [runs[s, arm]["perplexity"] for s in seeds]
        stats = record["summary"][arm]["perplexity"]
        assert stats["values"] == values
        np.testing.assert_allclose(stats["mean"], np.mean(values))
    assert set(record["gaps"]) == {f"{a} − with memory" for a in arms[1:]}
    gap = record["gaps"]["memory off − with memory"]["perplexity"]["values"]
    np.testing.assert_allclose(
        gap,
        [
            runs[s, "memory off"]["perplexity"]
            - runs[s, "with memory"]["perplexity"]
            for s in seeds
        ],
    )
    if run.family == "gpt2":  # two seeds: two different memories
        assert runs[0, "with memory"] != runs[1, "with memory"]
        assert os.path.isdir(record["outputs"]["pretrained_preset"] + "_seed1")
    tables = (run.output / f"{run.name}.md").read_text(encoding="utf-8")
    for arm in arms:
        assert f"| {arm} |" in tables
    assert "| memory off − with memory |" in tables
    for path in record["outputs"].values():
        assert os.path.exists(path), path
        assert str(run.output) in path


def test_held_out_loss_matches_keras_evaluate(run, example):
    """The per-token losses behind the record give the perplexity Keras'
    ``evaluate`` gives on the same stream (stateful, reset first,
    token-weighted cross-entropy), with and without the memory."""
    args = example.parse_args(run.argv)
    lm = InfMemoryCausalLM.from_preset(
        run.record["outputs"]["preset"], stateful=True, batch_size=2
    )
    texts = example.load_documents(args)
    data = example.held_out_data(lm, *texts, args)
    lm.preprocessor = None
    lm.compile(
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        weighted_metrics=[
            keras.metrics.SparseCategoricalCrossentropy(
                from_logits=True, name="cross_entropy"
            )
        ],
    )
    test = data["test"]
    x, y, w = test.arrays()
    rows = args.max_eval_steps * test.batch_size
    for use_memory in (True, False):
        result = example.evaluate(
            lm, test, data["positions"], data["starts"], 4, use_memory
        )
        lm.memory_enabled = use_memory
        lm.reset_state()
        expected = lm.evaluate(
            {k: v[:rows] for k, v in x.items()},
            y[:rows],
            sample_weight=w[:rows],
            batch_size=test.batch_size,
            verbose=0,
            return_dict=True,
        )["cross_entropy"]
        lm.memory_enabled = True
        np.testing.assert_allclose(
            result["perplexity"], np.exp(expected), rtol=1e-4
        )


def test_plots_are_pngs(run):
    names = ("", "_memory", "_by_position")
    for name in (f"{run.name}{suffix}.png" for suffix in names):
        with open(run.output / name, "rb") as f:
            data = f.read()
        assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 5000


def test_generation_makes_new_tokens(run):
    """Greedy, with the family's stop token (the end token): were it the
    padding id, as in finetune_gpt2.py's tokenizer, generate() would give
    the prompt back unchanged."""
    prompt, text = run.record["prompt"], run.record["generated"]
    assert isinstance(text, str) and text.startswith(prompt)
    assert len(text) > len(prompt)


def test_saved_preset_loads_with_the_same_logits(run):
    model = run.model
    loaded = InfMemoryCausalLM.from_preset(run.record["outputs"]["preset"])
    assert type(loaded) is type(model)
    assert not loaded.stateful  # weights, not the last batch's memory
    assert loaded.backbone.memory_layers == [0]
    assert loaded.backbone.memories[0].num_basis == 16
    assert isinstance(loaded.preprocessor, family_classes(run.family)[1])
    vocabulary = model.backbone.vocabulary_size
    # Three segments: the later ones read the earlier ones from memory. (One
    # row of 3 segments, as the example's plot: on JAX the operations run
    # one by one are compiled once per shape.)
    ids = np.random.default_rng(0).integers(0, vocabulary, (1, 24), "int32")
    x = {"token_ids": ids, "padding_mask": np.ones_like(ids)}
    expected = to_numpy(model(x))
    np.testing.assert_allclose(to_numpy(loaded(x)), expected, atol=1e-5)
    # Memory switched off, the outputs change: the memory is read.
    loaded.memory_enabled = False
    assert np.abs(to_numpy(loaded(x)) - expected)[:, 8:].max() > 1e-6


def test_baseline_model(run, example):
    """The model the baseline fine-tunes: the starting preset with no
    memory, stateful like the model with memory; the family's model on
    each segment."""
    plain = keras_hub.models.CausalLM.from_preset(run.base_preset)
    assert type(plain) is family_classes(run.family)[0]
    args = example.parse_args(run.argv)
    base = example.load_memory_model(run.base_preset, args, memory_layers=[])
    assert base.backbone.memories == [] and base.stateful
    vocabulary = plain.backbone.vocabulary_size
    ids = np.random.default_rng(1).integers(0, vocabulary, (2, 8), "int32")
    x = {"token_ids": ids, "padding_mask": np.ones_like(ids)}
    base.reset_state()
    np.testing.assert_allclose(to_numpy(base(x)), to_numpy(plain(x)), atol=1e-5)


# ----------------------------------------------------------------------- #
# The command line
# ----------------------------------------------------------------------- #


def test_help_lists_every_option_with_a_default(example, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "400")  # one line per option
    with pytest.raises(SystemExit) as exit_info:
        example.main(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    assert "Fine-tune a KerasHub causal LM" in text
    entries, current = {}, None
    for line in text.splitlines():
        found = re.match(r"  (--[\w-]+)", line)
        if found:
            current = found[1]
            entries[current] = line
        elif current and line.startswith("    "):
            entries[current] += " " + line.strip()
        else:
            current = None  # a group title or a blank line
    options = {
        option
        for action in example.build_parser()._actions
        for option in action.option_strings
        if option.startswith("--") and option != "--help"
        and not option.startswith("--no-")
    }  # fmt: skip
    assert options == set(entries)
    for entry in entries.values():
        assert re.search(r"\(default: [^)]+\)", entry), entry


@pytest.mark.parametrize(
    "argv, message",
    [
        ([], "either --preset"),
        (["--offline", "--preset", "gpt2_base_en"], "either --preset"),
        (["--preset", "gpt2_base_en"], "needs --data"),
        (["--offline", "--steps", "0"], "--steps must be"),
        (["--offline", "--family", "bert"], "invalid choice"),
    ],
)
def test_bad_command_lines(example, capsys, argv, message):
    with pytest.raises(SystemExit):
        example.parse_args(argv)
    assert message in capsys.readouterr().err


def test_default_output_is_a_scratch_folder(example):
    args = example.parse_args(["--offline", "--family", "qwen3"])
    assert args.output == os.path.join("runs", "finetune_qwen3")
    assert (args.segment_length, args.batch_size) == (128, 8)
    args = example.parse_args(["--preset", "hf://x/Some Model", "--data", "."])
    assert args.output == os.path.join("runs", "finetune_Some_Model")
    assert (args.segment_length, args.learning_rate) == (512, 5e-5)
    assert "benchmarks/results" not in example.__doc__
