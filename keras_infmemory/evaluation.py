"""Scores of generated replies against references (the paper's CMU-DoG
metrics).

The ∞-former's grounded-dialogue experiment (Martins et al. 2022, §4.3;
docs/documents.md) reports, over every generated reply:

* **F1**: unigram F1 after the SQuAD normalisation (lower case, no
  punctuation, no articles ``a``/``an``/``the``, single spaces);
* **ROUGE-1 and ROUGE-L** (``rouge-score``, Porter stemming): the standard
  F-measure, and the authors' variant, which calls the scorer with
  hypothesis and reference swapped and keeps the precision; swapped, the
  precision is the standard *recall* (matches over reference length), so
  that is what the variant measures;
* **METEOR** (NLTK's, which needs the WordNet data; without it the other
  metrics are still computed and a message says how to get it);
* **BLEU** (``sacrebleu``'s corpus BLEU).

Every score is in percent (0–100), averaged over replies, except BLEU,
computed over the corpus. The three packages form the ``dialogue`` extra:
``pip install "keras-infmemory[dialogue]"``.
"""

import collections
import re
import string
import warnings

WORDNET_MESSAGE = (
    "METEOR needs NLTK's WordNet data, which was not found: run "
    "`python -m nltk.downloader wordnet` (or `import nltk; "
    "nltk.download('wordnet')`) where the machine can reach the NLTK data "
    "server, or copy a `corpora/wordnet` folder into a folder of "
    "`nltk.data.path` (or one named by the NLTK_DATA variable). The other "
    "metrics were computed; METEOR is reported as None."
)

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = set(string.punctuation)


def normalize_answer(text):
    """The SQuAD normalisation: lower case, punctuation and the articles
    a/an/the removed, whitespace collapsed."""
    text = _check_text("text", text).lower()
    text = "".join(c for c in text if c not in _PUNCTUATION)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def unigram_f1(hypothesis, reference):
    """Unigram F1 of two texts after `normalize_answer`, in [0, 1].

    Tokens are counted with multiplicity (a word twice in both counts
    twice). Two texts that normalise to nothing score 1; one empty text
    scores 0.

    Example:

    >>> from keras_infmemory.evaluation import unigram_f1
    >>> round(unigram_f1("The cat sat.", "a cat sat on the mat"), 4)
    0.6667
    """
    hyp = normalize_answer(hypothesis).split()
    ref = normalize_answer(reference).split()
    if not hyp or not ref:
        return float(hyp == ref)
    common = collections.Counter(hyp) & collections.Counter(ref)
    same = sum(common.values())
    if same == 0:
        return 0.0
    precision = same / len(hyp)
    recall = same / len(ref)
    return 2 * precision * recall / (precision + recall)


def rouge_scores(hypotheses, references):
    """ROUGE-1 and ROUGE-L per reply, both ways (see the module).

    Returns a dict of lists (values in [0, 1]): ``"rouge1"``, ``"rougeL"``
    (standard F-measure) and ``"rouge1_authors"``, ``"rougeL_authors"``
    (the scorer called as ``score(hypothesis, reference)``, its precision:
    the standard recall).
    """
    hypotheses, references = _check_pairs(hypotheses, references)
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rouge1", "rougeL"], use_stemmer=True)
    result = {
        k: [] for k in ("rouge1", "rougeL", "rouge1_authors", "rougeL_authors")
    }
    for hyp, ref in zip(hypotheses, references, strict=True):
        standard = scorer.score(ref, hyp)  # score(target, prediction)
        swapped = scorer.score(hyp, ref)
        for name in ("rouge1", "rougeL"):
            result[name].append(standard[name].fmeasure)
            result[f"{name}_authors"].append(swapped[name].precision)
    return result


def load_wordnet():
    """NLTK's WordNet reader, loaded; ``None`` (with a warning carrying
    `WORDNET_MESSAGE`) when its data is missing."""
    from nltk.corpus import wordnet

    try:
        wordnet.ensure_loaded()
    except LookupError:
        warnings.warn(WORDNET_MESSAGE, stacklevel=2)
        return None
    return wordnet


def meteor_scores(hypotheses, references, wordnet=None):
    """NLTK's METEOR per reply (whitespace tokens, lower-cased), in [0, 1].

    Args:
        hypotheses: list of generated texts.
        references: list of reference texts, as many.
        wordnet: a WordNet reader (default: NLTK's, see `load_wordnet`).

    Returns:
        The list of scores, or ``None`` when WordNet is missing (with a
        warning saying how to get it).
    """
    hypotheses, references = _check_pairs(hypotheses, references)
    from nltk.translate.meteor_score import meteor_score

    if wordnet is None:
        wordnet = load_wordnet()
        if wordnet is None:
            return None
    return [
        meteor_score([ref.split()], hyp.split(), wordnet=wordnet)
        for hyp, ref in zip(hypotheses, references, strict=True)
    ]


def corpus_bleu(hypotheses, references):
    """``sacrebleu``'s corpus BLEU (13a tokenisation), in percent."""
    hypotheses, references = _check_pairs(hypotheses, references)
    import sacrebleu

    return float(sacrebleu.corpus_bleu(hypotheses, [references]).score)


def dialogue_metrics(hypotheses, references, wordnet=None):
    """All the paper's reply metrics, in percent.

    Example:

    >>> from keras_infmemory.evaluation import dialogue_metrics
    >>> scores = dialogue_metrics(["the cat sat"], ["a cat sat down"],
    ...                           wordnet=False)
    >>> round(scores["f1"], 2), scores["meteor"]
    (80.0, None)

    Args:
        hypotheses: list of generated replies (text).
        references: list of the reference replies, as many.
        wordnet: a WordNet reader for METEOR, ``None`` (NLTK's), or
            ``False`` to skip METEOR.

    Returns:
        A dict: ``"f1"``, ``"rouge1"``, ``"rougeL"``, ``"rouge1_authors"``,
        ``"rougeL_authors"``, ``"meteor"`` (means over replies; METEOR
        ``None`` without WordNet), ``"bleu"`` (corpus) and ``"count"``.
    """
    hypotheses, references = _check_pairs(hypotheses, references)
    mean = lambda values: 100.0 * sum(values) / len(values)  # noqa: E731
    scores = {
        "f1": mean(
            [
                unigram_f1(h, r)
                for h, r in zip(hypotheses, references, strict=True)
            ]
        )
    }
    scores.update(
        {k: mean(v) for k, v in rouge_scores(hypotheses, references).items()}
    )
    meteor = None
    if wordnet is not False:
        meteor = meteor_scores(hypotheses, references, wordnet=wordnet)
    scores["meteor"] = None if meteor is None else mean(meteor)
    scores["bleu"] = corpus_bleu(hypotheses, references)
    scores["count"] = len(hypotheses)
    return scores


def _check_text(name, text):
    if not isinstance(text, str):
        raise ValueError(
            f"`{name}` must be a string. Received: {name}={text!r}"
        )
    return text


def _check_pairs(hypotheses, references):
    if isinstance(hypotheses, str) or isinstance(references, str):
        raise ValueError(
            "`hypotheses` and `references` must be lists of strings. "
            f"Received: hypotheses={hypotheses!r}, references={references!r}"
        )
    hypotheses, references = list(hypotheses), list(references)
    if len(hypotheses) != len(references) or not hypotheses:
        raise ValueError(
            "`hypotheses` and `references` must be non-empty and of the "
            f"same length. Received: {len(hypotheses)} hypotheses, "
            f"{len(references)} references"
        )
    for name, texts in (("hypotheses", hypotheses), ("references", references)):
        for text in texts:
            _check_text(name, text)
    return hypotheses, references
