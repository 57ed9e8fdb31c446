"""What a KerasHub model's memory writes and reads, segment by segment.

The KerasHub path runs the family's code on a batch of segment rows while
each memory steps through the segments; `InfFormerLM` drives its memory
directly. These tests drive the same `ContinuousLTM` by hand with what the
family's own layers produced (each decoder layer's input and each head's
query, divided by their root mean square), segment by segment, and require
the KerasHub path to have written, read and kept exactly that: outputs,
coefficients and sticky histograms. They also require what is written and
how it is read not to depend on the scale of the family's residual stream
or queries: a KerasHub model at its family's initial scale (residual RMS
0.01–0.03, queries 0.16) otherwise reads with density gradients so small
that its reads never learn where to look (issue 32;
`benchmarks/results/recall_probe.md`).
"""

import functools

import keras
import numpy as np
import pytest

from keras_infmemory import StickyMemorySampler
from keras_infmemory.models import attach_memory
from keras_infmemory.models.hub import decoder_memory
from tests.models.hub.tiny import VOCAB, tiny_causal_lm
from tests.testing import to_numpy

B, S, L = 2, 4, 8  # rows, segments, segment length
MEMORY = {"num_basis": 16, "num_samples": 16, "basis_widths": (0.05, 0.1)}


def tokens(seed=0):
    ids = np.random.default_rng(seed).integers(1, VOCAB, (B, S * L))
    ids = ids.astype("int32")
    return {"token_ids": ids, "padding_mask": np.ones_like(ids)}


def memory_model(family, sticky=False, **options):
    keras.utils.set_random_seed(1)
    if sticky:
        options["sticky"] = StickyMemorySampler(mode="quantile")
    return attach_memory(
        tiny_causal_lm(family), segment_length=L, **MEMORY, **options
    )


def rms_normalized(x):
    x = x.astype("float64")
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + 1e-6)


def _record_calls(monkeypatch, layer, after):
    """Wraps ``layer.call`` (outside the adapter's own tap)."""
    original = layer.call

    @functools.wraps(original)
    def call(*args, **kwargs):
        result = original(*args, **kwargs)
        after(args, kwargs, result)
        return result

    monkeypatch.setattr(layer, "call", call)


def run_recorded(monkeypatch, model, inputs):
    """One call of ``model`` on ``inputs``; per memory layer: the decoder
    layer's input and the queries as the family computed them, the
    memory's output, and the memory state after the call."""
    backbone = model.backbone
    family = backbone.family
    seen = {i: {} for i in backbone.memory_layers}
    for i in backbone.memory_layers:
        decoder = backbone.transformer_layers[i]
        attention = getattr(decoder, family.attention)

        def note_input(args, kwargs, result, i=i):
            hidden = args[0] if args else next(iter(kwargs.values()))
            seen[i]["input"] = to_numpy(hidden)

        def note_query(args, kwargs, result, i=i):
            seen[i]["query"] = to_numpy(result)

        _record_calls(monkeypatch, decoder, note_input)
        _record_calls(monkeypatch, getattr(attention, family.query), note_query)
    add_output = decoder_memory.MemoryRun.add_output

    def recorded_add_output(run, layer_index, attention_output):
        # What the memory is handed: to write (next segment) and to read.
        seen[layer_index]["memory_input"] = to_numpy(run.inputs[layer_index])
        seen[layer_index]["memory_query"] = to_numpy(run.queries[layer_index])
        result = add_output(run, layer_index, attention_output)
        seen[layer_index]["output"] = to_numpy(result) - to_numpy(
            attention_output
        )
        return result

    monkeypatch.setattr(
        decoder_memory.MemoryRun, "add_output", recorded_add_output
    )
    state = model.get_initial_state(B)
    _, state = model(inputs, state=state)
    return seen, state


def by_segment(rows):
    """``(B·S, L, ...)`` segment rows → ``(B, S, L, ...)``."""
    return rows.reshape((B, S) + rows.shape[1:])


@pytest.mark.parametrize("family", ["llama3", "gpt2", "gemma"])
@pytest.mark.parametrize("sticky", [False, True], ids=["uniform", "sticky"])
def test_memory_writes_and_reads_what_a_bare_ltm_does(
    monkeypatch, family, sticky
):
    model = memory_model(family, sticky=sticky)
    seen, state = run_recorded(monkeypatch, model, tokens())
    for slot, i in enumerate(model.backbone.memory_layers):
        ltm = model.backbone.memories[slot]
        written = by_segment(rms_normalized(seen[i]["input"]))  # (B,S,L,D)
        query = by_segment(rms_normalized(seen[i]["query"]))  # (B,S,L,H,d)
        output = by_segment(seen[i]["output"])  # (B, S, L, D)
        assert query.shape[3:] == (ltm.num_heads, ltm.key_dim)
        reference = ltm.get_initial_state(B)
        # Segment 0 finds the memory empty: nothing is added.
        np.testing.assert_array_equal(output[:, 0], 0.0)
        for s in range(1, S):
            reference = ltm.write(written[:, s - 1], reference)
            expected, reference = ltm.read(
                query[:, s], reference, return_state=True
            )
            scale = np.abs(to_numpy(expected)).max()
            assert scale > 0, (family, i, s)
            np.testing.assert_allclose(
                output[:, s],
                to_numpy(expected),
                atol=1e-5 * scale,
                err_msg=f"{family} layer {i} segment {s}",
            )
        kept = state[slot]
        for name in reference:
            # float32 on both sides: TensorFlow's sticky write differs by
            # up to 1.1e-6 on coefficients of about 0.1.
            np.testing.assert_allclose(
                to_numpy(kept["memory"][name]).astype("float64"),
                to_numpy(reference[name]).astype("float64"),
                rtol=1e-5,
                atol=1e-5,
                err_msg=f"{family} layer {i}: {name}",
            )
        # The last segment waits, normalized, for the next write.
        np.testing.assert_allclose(
            to_numpy(kept["pending"]), written[:, -1], rtol=1e-5, atol=1e-6
        )


def _first_memory_coefficients(model, inputs):
    return to_numpy(model.absorb(inputs)[0]["memory"]["coefficients"])


@pytest.mark.parametrize("family", ["llama3", "gpt2"])
def test_what_is_written_does_not_depend_on_the_residual_scale(family):
    """Scaling the embeddings by 100 scales the first layer's input by
    100; its memory (a function of that input alone) must not change.
    Writing the stream as it is (``normalize_memory=False``) grows it
    about 100-fold (not exactly: the gate is not linear)."""
    inputs = tokens(1)
    ratios = {}
    for kind in ("default", "raw"):
        options = {} if kind == "default" else {"normalize_memory": False}
        model = memory_model(family, **options)
        before = _first_memory_coefficients(model, inputs)
        for variable in model.backbone.weights:
            if "embedding" in variable.path:
                variable.assign(variable.value * 100.0)
        after = _first_memory_coefficients(model, inputs)
        ratios[kind] = np.linalg.norm(after) / np.linalg.norm(before)
    assert abs(ratios["default"] - 1) < 0.02, (family, ratios)
    assert ratios["raw"] > 50, (family, ratios)


def rms(x):
    """Root mean square over the last axis."""
    return np.sqrt(np.mean(np.square(x.astype("float64")), axis=-1))


@pytest.mark.parametrize("family", ["llama3", "gpt2"])
def test_the_memory_writes_and_reads_at_unit_scale(monkeypatch, family):
    """At its family's initial scale a KerasHub model's residual stream and
    queries are far below 1 (the cause of issue 32); by default the memory
    is handed each token's vector and each head's query at RMS 1, and with
    ``normalize_memory=False`` the family's own."""
    inputs = tokens()
    for normalize in (True, False):
        model = memory_model(family, normalize_memory=normalize)
        with monkeypatch.context() as patch:
            seen, _ = run_recorded(patch, model, inputs)
        for i in model.backbone.memory_layers:
            hidden, query = seen[i]["input"], seen[i]["query"]
            # The family's scale: queries of RMS about 0.1, and the first
            # layer's input, the embeddings, about 0.01 (later layers add
            # the memory's output to the stream).
            assert rms(query).mean() < 0.5, (family, i, rms(query).mean())
            if i == model.backbone.memory_layers[0]:
                assert rms(hidden).mean() < 0.1, (family, rms(hidden).mean())
            written, read_with = (
                seen[i]["memory_input"],
                seen[i]["memory_query"],
            )
            if normalize:
                assert written.shape == hidden.shape  # (B·S, L, D)
                assert read_with.shape == query.shape  # (B·S, L, H, d)
                np.testing.assert_allclose(
                    written, rms_normalized(hidden), rtol=1e-5, atol=1e-6
                )
                np.testing.assert_allclose(
                    read_with, rms_normalized(query), rtol=1e-5, atol=1e-6
                )
                # 1 up to the ε of x / sqrt(mean(x²) + ε), ε = 1e-6, which
                # shows at a stream of RMS 0.01 (0.995).
                np.testing.assert_allclose(rms(written), 1.0, atol=0.03)
                np.testing.assert_allclose(rms(read_with), 1.0, atol=0.03)
            else:
                np.testing.assert_array_equal(written, hidden)
                np.testing.assert_array_equal(read_with, query)


def test_normalize_memory_round_trips_and_old_configs_keep_theirs():
    model = memory_model("llama3")
    assert model.backbone.normalize_memory is True
    config = model.backbone.get_config()
    assert config["normalize_memory"] is True
    cls = type(model.backbone)
    assert cls.from_config(config).normalize_memory is True
    # A config saved before the option existed: raw inputs and queries.
    del config["normalize_memory"]
    assert cls.from_config(config).normalize_memory is False
    # attach_memory keeps a memory model's choice unless told otherwise.
    raw = attach_memory(model, normalize_memory=False)
    assert raw.backbone.normalize_memory is False
    assert attach_memory(raw).backbone.normalize_memory is False
    with pytest.raises(ValueError, match="normalize_memory"):
        attach_memory(tiny_causal_lm("llama3"), normalize_memory="yes")
