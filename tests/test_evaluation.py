"""The reply metrics of the CMU-DoG experiment against values computed by
hand (docs/documents.md)."""

import warnings

import pytest

from keras_infmemory import evaluation

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
    from nltk.corpus import wordnet

    def missing():
        raise LookupError("Resource wordnet not found.")

    monkeypatch.setattr(wordnet, "ensure_loaded", missing)
    with pytest.warns(UserWarning, match="nltk.downloader wordnet"):
        scores = evaluation.dialogue_metrics(["the cat sat"], [REFERENCE])
    assert scores["meteor"] is None
    assert scores["f1"] == pytest.approx(100 * 2 / 3, abs=1e-9)
    assert scores["rougeL"] == pytest.approx(100 * 2 / 3, abs=1e-9)
    assert scores["bleu"] >= 0.0
