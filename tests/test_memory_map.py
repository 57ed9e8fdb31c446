"""The memory map (the paper's Figs. 4/5; docs/documents.md): where each
absorbed token sits on the memory's time axis after each write."""

import numpy as np
import pytest

from keras_infmemory import StickyMemorySampler
from keras_infmemory import memory_map as mm
from keras_infmemory.models import attach_memory
from tests.models.hub.tiny import tiny_causal_lm

L, TAU = 4, 0.5


def test_last_segment_and_squeezed_positions():
    """A token of the last written segment sits where the update put it,
    ``τ + (1 − τ)(j + 1)/L``; one written ``k`` writes earlier at ``τ^k``
    times its place then (uniform sampling)."""
    memory_map = mm.MemoryMap(2, L, TAU)
    full = np.ones((2, L), bool)
    for _ in range(5):
        memory_map.step(full)
    memory_map.step(np.zeros((2, L), bool))  # padding: nothing written
    # Segments 0..3 written (segment 4 waits: no segment came after it).
    positions = memory_map.positions(0)
    first = (np.arange(L) + 0.5) / L
    update = TAU + (1 - TAU) * (np.arange(L) + 1) / L
    # Writes: segment 0 (first), then 1, 2, 3 (updates); 3 is the latest.
    np.testing.assert_allclose(positions[12:16], update, atol=1e-6)
    np.testing.assert_allclose(positions[8:12], TAU * update, atol=1e-6)
    np.testing.assert_allclose(positions[4:8], TAU**2 * update, atol=1e-6)
    np.testing.assert_allclose(positions[0:4], TAU**3 * first, atol=1e-6)
    assert np.isnan(positions[16:]).all()
    assert memory_map.writes.tolist() == [4, 4]
    np.testing.assert_array_equal(memory_map.positions(1), positions)


def test_rows_written_independently():
    memory_map = mm.MemoryMap(2, L, TAU)
    memory_map.step(np.array([[1, 1, 0, 0], [1, 1, 1, 1]], bool))
    memory_map.step(np.array([[0, 0, 0, 0], [1, 0, 0, 0]], bool))
    memory_map.step(np.array([[1, 0, 0, 0], [1, 0, 0, 0]], bool))
    # Row 0: its 2nd segment was all padding, so its 1st waited; the
    # 3rd step wrote it as a first write, slots 0 and 1.
    np.testing.assert_allclose(
        memory_map.positions(0)[:2], [0.5 / L, 1.5 / L], atol=1e-12
    )
    # Row 1: three steps, two writes.
    assert memory_map.writes.tolist() == [1, 2]
    np.testing.assert_allclose(
        memory_map.positions(1)[:5],
        [*(TAU * (np.arange(L) + 0.5) / L), TAU + (1 - TAU) / L],
        atol=1e-12,
    )
    with pytest.raises(ValueError, match="segment_mask"):
        memory_map.step(np.ones((1, L), bool))


def test_sticky_squeeze_moves_samples_to_their_slots():
    """What sat at the m-th sample position moves to τ·m/M; in between,
    linearly."""
    samples = np.array([0.1, 0.2, 0.2, 0.9])
    moved = mm.squeeze(samples[[0, 3]], TAU, samples)
    np.testing.assert_allclose(moved, [TAU * 1 / 4, TAU * 4 / 4], atol=1e-12)
    # The tie at 0.2 (samples 2 and 3) takes the mean slot 2.5.
    np.testing.assert_allclose(
        mm.squeeze([0.2, 0.55, 0.0, 1.0], TAU, samples),
        TAU * np.array([2.5, (2.5 + 4) / 2, 0.0, 4.0]) / 4,
        atol=1e-12,
    )
    # Uniform samples: the map is p -> τ·p.
    uniform = np.arange(1, 9) / 8
    p = np.linspace(0, 1, 11)
    np.testing.assert_allclose(mm.squeeze(p, TAU, uniform), TAU * p, 1e-12)


def test_read_and_histogram_weights():
    positions = np.array([0.1, 0.5, 0.9, np.nan])
    w = mm.read_weights([0.5, 0.1], [1e-4, 1e-4], positions)
    np.testing.assert_allclose(w, [0.5, 0.5, 0.0, 0.0], atol=1e-9)
    # A histogram of 2 bins: [0, ½) goes to the tokens at 0.1 (its stretch
    # [0, 0.3)) and 0.5 ([0.3, 0.7)), by overlap.
    h = mm.histogram_weights([1.0, 0.0], positions)
    np.testing.assert_allclose(h, [0.6, 0.4, 0.0, 0.0], atol=1e-12)
    np.testing.assert_allclose(mm.room(positions), [0.3, 0.4, 0.3, 0.0])
    np.testing.assert_allclose(
        mm.phrase_weights([0.1, 0.2, 0.3, 0.4], [0, 0, 1, 2]), [0.3, 0.3, 0.4]
    )
    with pytest.raises(ValueError, match="mu"):
        mm.read_weights([0.5, 0.1], [1e-4], positions)


# What the tracker adds is NumPy bookkeeping over the model's writes (the
# sticky write itself is checked on every backend, tests/layers and
# tests/test_cross_backend.py): run once (tests/conftest.py), on torch,
# where it takes 1.5 s (TensorFlow 1.7 s, JAX 32 s: eager compilation).
@pytest.mark.one_backend
def test_tracker_follows_the_model():
    """The tracker replays the model's writes (absorb 3 segments, one row
    partly padded, then read), recording the positions each sticky write
    sampled."""
    lm = attach_memory(
        tiny_causal_lm("gpt2"),
        segment_length=L,
        num_basis=8,
        num_samples=8,
        basis_widths=(0.1,),
        sticky=StickyMemorySampler(num_bins=8, mode="quantile"),
    )
    tracker = mm.MemoryTracker(lm, batch_size=2)
    ids = np.arange(1, 13, dtype="int32").reshape(1, 12).repeat(2, 0)
    mask = np.ones_like(ids)
    mask[1, 6:] = 0  # row 1: 6 tokens
    memory = tracker.absorb({"token_ids": ids, "padding_mask": mask})
    assert tracker.map.writes.tolist() == [2, 1]
    assert np.isnan(tracker.map.positions(0)[8:]).all()
    densities, _ = tracker.memory_densities(
        {"token_ids": ids[:, :L], "padding_mask": np.ones((2, L), "int32")},
        memory,
    )
    # The prompt's segment wrote the last absorbed one.
    assert tracker.map.writes.tolist() == [3, 2]
    positions = tracker.read_positions[0][0]
    assert np.isfinite(positions[:12]).all()
    # The latest write (the 3rd segment) put its tokens at the update's
    # slots; the squeeze keeps older tokens in order, inside [0, τ].
    update = TAU + (1 - TAU) * (np.arange(L) + 1) / L
    np.testing.assert_allclose(positions[8:12], update, atol=1e-6)
    assert (np.diff(positions[:12]) > 0).all()
    assert 0 <= positions[0] and positions[7] <= TAU
    # Row 1: its 6 tokens in two segments (the 2nd partly padded).
    np.testing.assert_allclose(
        tracker.read_positions[0][1][4:6], update[:2], atol=1e-6
    )
    mu = np.asarray(densities[0]["mu"])[0, :, -1]
    variance = np.asarray(densities[0]["variance"])[0, :, -1]
    weights = mm.read_weights(mu, variance, positions)
    np.testing.assert_array_equal(
        tracker.token_weights(densities, 0, L - 1), weights
    )
    assert tracker.room(0)[:12].sum() == pytest.approx(1.0)
    assert weights.shape == (16,) and weights[:12].sum() == pytest.approx(1.0)
    assert (weights[12:] == 0).all()


def test_highlighted_text(tmp_path):
    from keras_infmemory.plotting import highlight_html, plot_highlighted_text

    pieces = ["the", " <boat>", "\nsails"]
    html = highlight_html(pieces, [0.0, 2.0, 1.0], title="boat")
    assert "&lt;boat&gt;" in html and "<br>sails" in html
    assert "rgba(214, 39, 40, 1.000)" in html  # the largest weight
    assert "rgba(214, 39, 40, 0.500)" in html
    path = str(tmp_path / "text.png")
    plot_highlighted_text(pieces, [0.0, 2.0, 1.0], path=path, line_width=8)
    assert open(path, "rb").read(4) == b"\x89PNG"
    with pytest.raises(ValueError, match="weights"):
        highlight_html(pieces, [1.0, 2.0])
