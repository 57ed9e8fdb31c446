"""The reply metrics of the CMU-DoG experiment against values computed by
hand (docs/documents.md)."""

import warnings

import numpy as np
import pytest

from experiments import evaluation

REFERENCE = "the cat sat on the mat"


def test_normalize_answer():
    # Lower case, punctuation gone, articles gone, single spaces.
    assert evaluation.normalize_answer("The  Cat's, an apple!") == "cats apple"
    with pytest.raises(ValueError, match="text=3"):
        evaluation.normalize_answer(3)


def test_unigram_f1():
    # "cat sat" vs "cat sat on mat": P = 2/2, R = 2/4.
    assert evaluation.unigram_f1("The cat sat.", "a cat sat on the mat") == (
        pytest.approx(2 / 3, abs=1e-12)
    )
    # Multiplicity: one "cat" and one "dog" in common, P = R = 2/3.
    assert evaluation.unigram_f1("cat cat dog", "cat dog dog") == (
        pytest.approx(2 / 3, abs=1e-12)
    )
    assert evaluation.unigram_f1("the", "a") == 1.0  # both empty
    assert evaluation.unigram_f1("", "cat") == 0.0
    assert evaluation.unigram_f1("dog", "cat") == 0.0


def test_rouge_standard_and_authors():
    scores = evaluation.rouge_scores(
        ["sat the cat", "cats running"], [REFERENCE, "cat runs"]
    )
    # ROUGE-1: 3 words in common, P = 3/3, R = 3/6 → F = 2/3; the authors'
    # swapped call keeps the recall, 1/2.
    assert scores["rouge1"][0] == pytest.approx(2 / 3, abs=1e-12)
    assert scores["rouge1_authors"][0] == pytest.approx(1 / 2, abs=1e-12)
    # ROUGE-L: the longest common subsequence is 2 ("the cat"): P = 2/3,
    # R = 2/6 → F = 4/9; the authors' variant is R = 1/3.
    assert scores["rougeL"][0] == pytest.approx(4 / 9, abs=1e-12)
    assert scores["rougeL_authors"][0] == pytest.approx(1 / 3, abs=1e-12)
    # Porter stemming: cats → cat, running and runs → run.
    assert scores["rouge1"][1] == 1.0
    assert scores["rougeL"][1] == 1.0


def test_bleu():
    # 1- to 4-gram precisions 5/6, 3/5, 2/4, 1/3; same length (BP = 1):
    # BLEU = (1/12)^(1/4).
    bleu = evaluation.corpus_bleu(
        ["the cat sat on the mat"], ["the cat sat on a mat"]
    )
    assert bleu == pytest.approx(100 * (1 / 12) ** 0.25, abs=1e-9)
    assert evaluation.corpus_bleu([REFERENCE], [REFERENCE]) == (
        pytest.approx(100.0, abs=1e-9)
    )


def _wordnet_or_skip():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        wordnet = evaluation.load_wordnet()
    if wordnet is None:
        pytest.skip("NLTK's WordNet data is not installed")
    return wordnet


def test_meteor():
    wordnet = _wordnet_or_skip()
    scores = evaluation.meteor_scores(
        ["the cat sat", "a b c"], [REFERENCE, "a b c"], wordnet=wordnet
    )
    # "a b c" vs itself: 3 matches in 1 chunk, F_mean = 1, penalty
    # 0.5·(1/3)³.
    assert scores[1] == pytest.approx(1 - 0.5 / 27, abs=1e-12)
    # "the cat sat" vs the reference: P = 1, R = 1/2, F_mean = PR/(0.9P +
    # 0.1R) = 10/19. NLTK matches "the" to the reference's last "the", so
    # the matches form 2 chunks: penalty 0.5·(2/3)³ = 4/27.
    assert scores[0] == pytest.approx(10 / 19 * (1 - 4 / 27), abs=1e-12)


def test_dialogue_metrics():
    wordnet = _wordnet_or_skip()
    scores = evaluation.dialogue_metrics(
        ["the cat sat", "a b c"], [REFERENCE, "a b c"], wordnet=wordnet
    )
    assert scores["count"] == 2
    # F1 per reply: "cat sat" vs "cat sat on mat" 2/3, and 1.
    assert scores["f1"] == pytest.approx(100 * (2 / 3 + 1) / 2, abs=1e-9)
    assert scores["rouge1"] == pytest.approx(100 * (2 / 3 + 1) / 2, abs=1e-9)
    assert scores["rouge1_authors"] == pytest.approx(75.0, abs=1e-9)
    assert scores["meteor"] == pytest.approx(
        100 * (10 / 19 * 23 / 27 + 53 / 54) / 2, abs=1e-9
    )
    with pytest.raises(ValueError, match="same length"):
        evaluation.dialogue_metrics(["a"], ["a", "b"])
    with pytest.raises(ValueError, match="lists of strings"):
        evaluation.dialogue_metrics("a", "a")


def test_missing_wordnet_keeps_the_other_metrics(monkeypatch):
    import nltk.corpus

    class MissingWordNet:
        """NLTK's lazy WordNet where its data is not installed. (Patching
        the real loader's method would itself load the corpus: NLTK 3.10's
        lazy loader loads on any attribute it lacks.)"""

        def ensure_loaded(self):
            raise LookupError("Resource wordnet not found.")

    monkeypatch.setattr(nltk.corpus, "wordnet", MissingWordNet())
    with pytest.warns(UserWarning, match="nltk.downloader wordnet"):
        scores = evaluation.dialogue_metrics(["the cat sat"], [REFERENCE])
    assert scores["meteor"] is None
    assert scores["f1"] == pytest.approx(100 * 2 / 3, abs=1e-9)
    assert scores["rougeL"] == pytest.approx(100 * 2 / 3, abs=1e-9)
    assert scores["bleu"] >= 0.0


# ----------------------------------------------------------------------- #
# Language models: loss by position in the document
# ----------------------------------------------------------------------- #


def test_bucket_starts():
    # Segments 1, 2, 3–4, 5–8, … up to the longest document.
    assert evaluation.bucket_starts(10, 10) == [0]
    assert evaluation.bucket_starts(10, 11) == [0, 10]
    assert evaluation.bucket_starts(10, 81) == [0, 10, 20, 40, 80]
    with pytest.raises(ValueError, match="segment_length=0"):
        evaluation.bucket_starts(0, 10)


def test_document_positions():
    # 2 rows, 3 steps: row 0 holds one document of 3 blocks, row 1 a
    # document of 1 block then one of 2.
    reset = [True, True, False, True, False, False]
    positions = evaluation.document_positions(reset, 2, 4)
    assert positions.shape == (6, 4)
    assert positions[:, 0].tolist() == [0, 0, 4, 0, 8, 4]
    assert positions[2].tolist() == [4, 5, 6, 7]
    with pytest.raises(ValueError, match="batch_size=4"):
        evaluation.document_positions(reset, 4, 4)


def test_token_cross_entropy_against_a_direct_log_softmax():
    rng = np.random.default_rng(0)
    logits = 30 * rng.normal(size=(2, 3, 7))  # large: needs the max shift
    targets = rng.integers(0, 7, (2, 3))
    expected = -np.log(
        np.exp(logits.astype(np.longdouble))
        / np.exp(logits.astype(np.longdouble)).sum(-1, keepdims=True)
    )
    expected = np.take_along_axis(expected, targets[..., None], -1)[..., 0]
    got = evaluation.token_cross_entropy(logits, targets)
    np.testing.assert_allclose(got, expected.astype(float), rtol=1e-10)


def test_bucket_losses_add_up_to_the_mean():
    rng = np.random.default_rng(1)
    weights = (rng.random((6, 4)) > 0.2).astype(float)
    losses = rng.random((6, 4)) * weights
    positions = evaluation.document_positions(
        [True, True, False, True, False, False], 2, 4
    )
    starts = evaluation.bucket_starts(4, 12)  # [0, 4, 8]
    loss, tokens = evaluation.bucket_losses(losses, weights, positions, starts)
    assert sum(tokens) == weights.sum()
    assert tokens[0] == weights[positions < 4].sum()
    np.testing.assert_allclose(np.dot(loss, tokens), losses.sum(), rtol=1e-12)
    np.testing.assert_allclose(
        loss[2], losses[positions >= 8].sum() / weights[positions >= 8].sum()
    )
    with pytest.raises(ValueError, match="weights.shape"):
        evaluation.bucket_losses(losses, weights[:2], positions, starts)


def test_summary_and_paired_gaps_over_seeds():
    runs = [
        {"arm": arm, "seed": seed, "perplexity": p, "loss_by_position": curve}
        for arm, seed, p, curve in (
            ("a", 0, 10.0, [2.0, 1.0]),
            ("b", 0, 12.0, [2.0, 1.5]),
            ("a", 1, 11.0, [2.2, 1.1]),
            ("b", 1, 12.5, [2.2, 1.4]),
        )
    ]
    summary = evaluation.summarize_runs(runs, ["a", "b"], [0, 8])
    assert summary["bucket_starts"] == [0, 8]
    assert summary["a"]["perplexity"]["mean"] == pytest.approx(10.5)
    assert summary["a"]["perplexity"]["std"] == pytest.approx(np.sqrt(0.5))
    np.testing.assert_allclose(
        summary["b"]["loss_by_position"]["mean"], [2.1, 1.45]
    )
    gap = evaluation.paired_gaps(runs, "b", "a")
    assert gap["perplexity"]["values"] == pytest.approx([2.0, 1.5])
    np.testing.assert_allclose(gap["loss_by_position"]["mean"], [0.0, 0.4])
    np.testing.assert_allclose(
        gap["loss_by_position"]["std"], [0.0, np.std([0.5, 0.3], ddof=1)]
    )
    assert evaluation.paired_gaps(runs, "c", "a") is None
    with pytest.raises(ValueError, match="'c'"):
        evaluation.summarize_runs(runs, ["c"], [0, 8])
