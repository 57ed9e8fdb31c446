"""Long documents → in-order blocks with per-row document starts."""

import numpy as np
import pytest

from keras_infmemory.documents import (
    DocumentBlocks,
    cut_blocks,
    read_documents,
)


def test_cut_blocks_targets_are_next_tokens():
    inputs, targets, weights = cut_blocks(np.arange(1, 11), 4, 0, pad_id=99)
    assert inputs.shape == (3, 4)  # [0, 1..10]: 10 targets → 3 blocks
    np.testing.assert_array_equal(inputs.ravel()[:10], np.arange(0, 10))
    np.testing.assert_array_equal(targets.ravel()[:10], np.arange(1, 11))
    np.testing.assert_array_equal(weights.ravel(), [1] * 10 + [0] * 2)
    assert (inputs.ravel()[10:] == 99).all()


def test_document_blocks_layout():
    docs = [np.arange(1, 30), np.arange(100, 111), np.arange(200, 205)]
    data = DocumentBlocks(
        docs, segment_length=8, batch_size=2, start_token_id=0
    )
    x, y, w = data.arrays()
    assert data.num_steps == 4 and x["token_ids"].shape == (8, 8)
    assert data.num_tokens == 29 + 11 + 5
    ids = x["token_ids"].reshape(4, 2, 8)
    # Row 0 holds the long document, in order; row 1 the two short ones.
    np.testing.assert_array_equal(ids[:, 0].ravel()[:29], np.arange(0, 29))
    row1 = ids[:, 1].ravel()
    np.testing.assert_array_equal(row1[:11], [0, *range(100, 110)])
    np.testing.assert_array_equal(row1[16:21], [0, *range(200, 204)])
    # Padding: mask and weights agree; padded steps carry no weight.
    np.testing.assert_array_equal(x["padding_mask"], w > 0)
    assert w.reshape(4, 2, 8)[3, 1].sum() == 0
    # Documents start at step 0 (both rows) and at step 2 in row 1.
    np.testing.assert_array_equal(
        x["reset_mask"].reshape(4, 2), [[1, 1], [0, 0], [0, 1], [0, 0]]
    )
    steps = list(data.steps())
    assert len(steps) == 4 and steps[1][0]["token_ids"].shape == (2, 8)


def test_read_documents(tmp_path):
    (tmp_path / "b.txt").write_text("second")
    (tmp_path / "a.txt").write_text("first")
    assert read_documents(tmp_path) == [("a.txt", "first"), ("b.txt", "second")]
    assert read_documents([tmp_path / "b.txt"]) == [("b.txt", "second")]
    with pytest.raises(ValueError, match="paths"):
        read_documents(tmp_path / "missing")


def test_errors():
    with pytest.raises(ValueError, match="segment_length"):
        cut_blocks([1, 2], 0, 0)
    with pytest.raises(ValueError, match="batch_size"):
        DocumentBlocks([[1]], 4, batch_size=0, start_token_id=0)
    with pytest.raises(ValueError, match="documents"):
        DocumentBlocks([], 4, batch_size=1, start_token_id=0)
