"""Held-out scores: language-model loss by position in the document, and
generated replies against references (the paper's CMU-DoG metrics).

**Loss by position** (docs/math.md §7: where a memory starts to pay): the
held-out documents are streamed in order, a stateful model carrying its
memory from segment to segment (`token_losses`); each target's
cross-entropy is then averaged in position buckets that double in length
(`bucket_starts`, `document_positions`, `bucket_losses`), and runs with
several seeds are summed up as mean ± standard deviation
(`mean_and_spread`, `summarize_runs`, `paired_gaps`). All but
`token_losses` are small NumPy functions.

**Replies.** The ∞-former's grounded-dialogue experiment (Martins et al.
2022, §4.3; docs/documents.md) reports, over every generated reply:

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

import numpy as np

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


# ----------------------------------------------------------------------- #
# Language models: loss by position in the document
# ----------------------------------------------------------------------- #


def bucket_starts(segment_length, longest):
    """Token positions where the buckets start: the first segment, the
    second, segments 3–4, 5–8, … (doubling), up to ``longest`` tokens.

    Example:

    >>> from experiments.evaluation import bucket_starts
    >>> bucket_starts(16, 100)
    [0, 16, 32, 64]
    """
    if segment_length < 1 or longest < 1:
        raise ValueError(
            "`segment_length` and `longest` must be >= 1. Received: "
            f"segment_length={segment_length}, longest={longest}"
        )
    starts, size = [0, segment_length], segment_length
    while starts[-1] + size < longest:
        starts.append(starts[-1] + size)
        size *= 2
    return [s for s in starts if s < longest]


def document_positions(reset_mask, batch_size, segment_length):
    """Position in its document of every input of in-order blocks.

    Args:
        reset_mask: ``(steps·B,)`` bool, True where a row starts a new
            document (as in `keras_infmemory.documents.DocumentBlocks`'
            ``arrays()``: step by step, ``B`` rows each).
        batch_size: ``B``, the rows read in parallel.
        segment_length: ``L``, tokens per block.

    Returns:
        ``(steps·B, L)`` int64 positions, in the layout of the blocks.

    Example:

    >>> from experiments.evaluation import document_positions
    >>> document_positions([1, 1, 0, 1, 0, 0], 2, 2)[:, 0].tolist()
    [0, 0, 2, 0, 4, 2]
    """
    starts = np.asarray(reset_mask, bool)
    if starts.ndim != 1 or len(starts) % batch_size:
        raise ValueError(
            "`reset_mask` must be 1-D with a multiple of `batch_size` "
            f"entries. Received: reset_mask.shape={starts.shape}, "
            f"batch_size={batch_size}"
        )
    starts = starts.reshape(-1, batch_size)  # (steps, B)
    blocks = np.zeros(starts.shape, "int64")  # block index in its document
    for k in range(1, len(starts)):
        blocks[k] = np.where(starts[k], 0, blocks[k - 1] + 1)
    positions = blocks[:, :, None] * segment_length + np.arange(segment_length)
    return positions.reshape(-1, segment_length)


def token_cross_entropy(logits, targets):
    """``−log softmax(logits)[target]`` of every target, in float64.

    Example:

    >>> import numpy as np
    >>> from experiments.evaluation import token_cross_entropy
    >>> token_cross_entropy(np.zeros((1, 2, 4)), np.array([[0, 3]])).round(4)
    array([[1.3863, 1.3863]])
    """
    logits = np.asarray(logits, "float64")  # (..., V)
    top = logits.max(axis=-1, keepdims=True)
    log_norm = np.log(np.exp(logits - top).sum(-1)) + top[..., 0]
    picked = np.take_along_axis(logits, np.asarray(targets)[..., None], -1)
    return log_norm - picked[..., 0]


def token_losses(model, data, max_steps=None, use_memory=True, chunk=1):
    """Cross-entropy of every held-out target, the documents streamed in
    order from an empty memory.

    ``model`` is a stateful model of ``data.batch_size`` rows with
    ``memory_enabled``, ``reset_state()`` and ``predict_on_batch`` taking
    ``token_ids``, ``padding_mask`` and ``reset_mask`` (an
    `keras_infmemory.models.InfFormerLM` or an
    `keras_infmemory.models.InfMemoryCausalLM`); ``data`` a
    `keras_infmemory.documents.DocumentBlocks`. ``chunk`` segments go
    into each call (the model carries its memory within the call as
    between calls) unless a document starts inside a chunk; then one
    segment per call. ``use_memory=False`` switches the memory off (same
    weights); the model is reset before and after.

    Returns:
        ``(losses, weights)``, each ``(steps·B, L)`` float64 in the layout
        of ``data.arrays()`` (weight 0 and loss 0: padding).
    """
    tokens, mask, targets, resets, weights = _by_step(data, max_steps)
    steps, rows, length = tokens.shape
    if resets[[k % chunk != 0 for k in range(steps)]].any():
        chunk = 1
    previous = model.memory_enabled
    model.memory_enabled = use_memory
    model.reset_state()
    losses = np.zeros((steps, rows, length), "float64")
    try:
        for k in range(0, steps, chunk):
            n = min(chunk, steps - k)
            logits = model.predict_on_batch(
                {
                    "token_ids": _rows(tokens[k : k + n], chunk),
                    "padding_mask": _rows(mask[k : k + n], chunk),
                    "reset_mask": resets[k],
                }
            )[:, : n * length]  # (B, n·L, V)
            loss = token_cross_entropy(logits, _rows(targets[k : k + n], n))
            losses[k : k + n] = loss.reshape(rows, n, length).transpose(1, 0, 2)
    finally:
        model.memory_enabled = previous
        model.reset_state()
    return losses.reshape(-1, length) * weights, weights


def window_losses(model, data, context, max_steps=None):
    """Cross-entropy of every held-out target for a model without memory
    read through a sliding window: each segment after the ``context``
    real tokens before it in its document, the window recomputed for every
    segment (no state; the usual strided evaluation of a model with a
    fixed context).

    ``model`` is a stateless causal LM taking ``token_ids`` and a right
    ``padding_mask`` of ``context + L`` tokens in one segment; ``data`` a
    `keras_infmemory.documents.DocumentBlocks`. A window at a document's
    start holds fewer tokens (the segment then sits at position 0).

    Returns:
        ``(losses, weights)`` as `token_losses`.
    """
    tokens, mask, targets, resets, weights = _by_step(data, max_steps)
    steps, rows, length = tokens.shape
    history = [np.zeros(0, "int32") for _ in range(rows)]
    losses = np.zeros((steps, rows, length), "float64")
    width = context + length
    for k in range(steps):
        ids = np.zeros((rows, width), "int32")
        window_mask = np.zeros((rows, width), "int32")
        first = np.zeros(rows, "int64")  # where each row's segment starts
        for b in range(rows):
            if resets[k, b]:
                history[b] = history[b][:0]
            before = history[b][
                len(history[b]) - min(context, len(history[b])) :
            ]
            real = tokens[k, b][mask[k, b].astype(bool)]
            first[b] = len(before)
            ids[b, : len(before)] = before
            ids[b, len(before) : len(before) + length] = tokens[k, b]
            window_mask[b, : len(before) + len(real)] = 1
            text = np.concatenate([history[b], real])
            history[b] = text[len(text) - min(context, len(text)) :]
        logits = model.predict_on_batch(
            {"token_ids": ids, "padding_mask": window_mask}
        )  # (B, context + L, V)
        index = first[:, None] + np.arange(length)[None, :]
        segment = np.take_along_axis(
            np.asarray(logits), index[:, :, None], axis=1
        )
        losses[k] = token_cross_entropy(segment, targets[k])
    return losses.reshape(-1, length) * weights, weights


def _by_step(data, max_steps):
    """The first ``max_steps`` batches of a `DocumentBlocks` (all by
    default): ``token_ids``, ``padding_mask``, targets and ``reset_mask``
    by step, ``(steps, B, L)`` (``(steps, B)``), and the target weights
    ``(steps·B, L)`` float64, in the layout of ``data.arrays()``."""
    x, y, w = data.arrays()
    steps = min(data.num_steps, max_steps or data.num_steps)
    rows = data.batch_size

    def by_step(a):
        return a.reshape(-1, rows, *a.shape[1:])[:steps]

    return (
        by_step(x["token_ids"]),
        by_step(x["padding_mask"]),
        by_step(y),
        by_step(x["reset_mask"]),
        w[: steps * rows].astype("float64"),
    )


def _rows(blocks, count):
    """``(n, B, L)`` consecutive blocks → ``(B, count·L)`` rows, padded
    with zeros (padding) to ``count`` blocks."""
    n, rows, length = blocks.shape
    if n < count:
        pad = np.zeros((count - n, rows, length), blocks.dtype)
        blocks = np.concatenate([blocks, pad])
    return blocks.transpose(1, 0, 2).reshape(rows, count * length)


def bucket_losses(losses, weights, positions, starts):
    """Mean loss and token count in each position bucket.

    Args:
        losses: per-token losses (any shape), 0 where ``weights`` is 0.
        weights: token weights, same shape (0: padding).
        positions: position of each token in its document, same shape
            (or longer: the first rows are used).
        starts: the buckets' first positions, increasing (`bucket_starts`).

    Returns:
        ``(loss_by_position, tokens_by_position)``: two lists, one entry a
        bucket (an empty bucket: loss 0, 0 tokens). Their token-weighted
        mean is the overall mean loss.

    Example:

    >>> import numpy as np
    >>> from experiments.evaluation import bucket_losses
    >>> bucket_losses(np.array([[1.0, 3.0, 2.0, 0.0]]),
    ...               np.array([[1, 1, 1, 0]]),
    ...               np.array([[0, 1, 2, 3]]), [0, 2])
    ([2.0, 2.0], [2, 1])
    """
    losses, weights = np.asarray(losses), np.asarray(weights)
    if losses.shape != weights.shape:
        raise ValueError(
            "`losses` and `weights` must have the same shape. Received: "
            f"losses.shape={losses.shape}, weights.shape={weights.shape}"
        )
    positions = np.asarray(positions)[: len(weights)]
    bucket = np.searchsorted(starts, positions, side="right") - 1
    loss_by_position, tokens_by_position = [], []
    for i in range(len(starts)):
        total = float(weights[bucket == i].sum())
        loss_by_position.append(
            float(losses[bucket == i].sum() / max(total, 1))
        )
        tokens_by_position.append(int(total))
    return loss_by_position, tokens_by_position


def mean_and_spread(values):
    """``{"mean", "std", "values"}`` of a list of numbers (one a seed);
    the sample standard deviation (``ddof=1``), 0 for a single value.

    Example:

    >>> from experiments.evaluation import mean_and_spread
    >>> mean_and_spread([1.0, 2.0, 3.0])
    {'mean': 2.0, 'std': 1.0, 'values': [1.0, 2.0, 3.0]}
    """
    values = np.asarray(values, "float64")
    return {
        "mean": float(values.mean()),
        "std": float(values.std(ddof=1)) if len(values) > 1 else 0.0,
        "values": values.tolist(),
    }


def _curve_stats(curves):
    """Mean and standard deviation over seeds of per-bucket curves
    (``std`` None for one seed)."""
    curves = np.asarray(curves, "float64")  # (seeds, buckets)
    return {
        "mean": curves.mean(0).tolist(),
        "std": curves.std(0, ddof=1).tolist() if len(curves) > 1 else None,
    }


def summarize_runs(runs, arms, starts, extra=()):
    """Mean ± standard deviation over seeds, per arm.

    Args:
        runs: list of dicts, one an arm and seed: ``"arm"``,
            ``"perplexity"``, ``"loss_by_position"`` (one entry a bucket)
            and any key of ``extra``.
        arms: the arms to sum up, in order.
        starts: the buckets' first positions (kept in the summary).
        extra: more per-run numbers to sum up where not None (e.g.
            ``"perplexity_without_ltm"``).

    Returns:
        ``{"bucket_starts": starts, arm: {"perplexity": mean_and_spread,
        "loss_by_position": {"mean", "std"}, …}}`` (``std`` a list of
        zeros for one seed), as `experiments.plots.plot_language_model`
        draws it.

    Example:

    >>> from experiments.evaluation import summarize_runs
    >>> runs = [{"arm": "a", "perplexity": p, "loss_by_position": [p, 1.0]}
    ...         for p in (2.0, 4.0)]
    >>> summarize_runs(runs, ["a"], [0, 8])["a"]["loss_by_position"]
    {'mean': [3.0, 1.0], 'std': [1.4142135623730951, 0.0]}
    """
    summary = {"bucket_starts": list(starts)}
    for arm in arms:
        rows = [r for r in runs if r["arm"] == arm]
        if not rows:
            raise ValueError(f"No run of arm {arm!r}. Received: arms={arms}")
        loss = _curve_stats([r["loss_by_position"] for r in rows])
        if loss["std"] is None:
            loss["std"] = [0.0] * len(loss["mean"])
        entry = {
            "perplexity": mean_and_spread([r["perplexity"] for r in rows]),
            "loss_by_position": loss,
        }
        for key in extra:
            values = [r.get(key) for r in rows]
            if values[0] is not None:
                entry[key] = mean_and_spread(values)
        summary[arm] = entry
    return summary


def paired_gaps(runs, arm, baseline):
    """``arm − baseline`` per seed (same seed, same data order): the
    perplexity difference (`mean_and_spread`) and the loss difference per
    bucket (``{"mean", "std"}``, ``std`` None for one seed); None when no
    seed has both.

    Example:

    >>> from experiments.evaluation import paired_gaps
    >>> runs = [{"arm": a, "seed": s, "perplexity": p,
    ...          "loss_by_position": [p / 10]}
    ...         for a, s, p in (("m", 0, 9.0), ("b", 0, 10.0),
    ...                         ("m", 1, 8.0), ("b", 1, 10.0))]
    >>> paired_gaps(runs, "m", "b")["perplexity"]
    {'mean': -1.5, 'std': 0.7071067811865476, 'values': [-1.0, -2.0]}
    """
    by_seed = {}
    for r in runs:
        by_seed.setdefault(r["seed"], {})[r["arm"]] = r
    pairs = [v for v in by_seed.values() if arm in v and baseline in v]
    if not pairs:
        return None
    return {
        "perplexity": mean_and_spread(
            [p[arm]["perplexity"] - p[baseline]["perplexity"] for p in pairs]
        ),
        "loss_by_position": _curve_stats(
            [
                np.subtract(
                    p[arm]["loss_by_position"], p[baseline]["loss_by_position"]
                )
                for p in pairs
            ]
        ),
    }


def position_table(record, perplexity=False):
    r"""Markdown rows of a by-position record (`summarize_runs`,
    `paired_gaps`): one row per arm (mean ± std over seeds, per bucket),
    the tokens per bucket, one row per paired gap (loss difference in
    nats/token, ± std when there are several seeds).

    ``record`` holds ``"summary"``, ``"arms"``, ``"gaps"``,
    ``"bucket_starts"``, ``"segment_length"`` and ``"tokens"`` (tokens per
    bucket). Columns are named by the first segment of each bucket. The arm
    rows show the loss (nats/token), or with ``perplexity`` its exp, ±
    ``exp(mean)·std`` (to first order).

    Example:

    >>> from experiments.evaluation import position_table
    >>> record = {"arms": ["m"], "gaps": {}, "bucket_starts": [0, 4],
    ...           "segment_length": 4, "tokens": [4, 8],
    ...           "summary": {"m": {"loss_by_position": {
    ...               "mean": [2.0, 1.5], "std": [0.1, 0.2]}}}}
    >>> print("\n".join(position_table(record)))
    | arm | 1 | 2 |
    |---|---|---|
    | m | 2.000 ± 0.100 | 1.500 ± 0.200 |
    | tokens | 4 | 8 |
    """
    starts, length = record["bucket_starts"], record["segment_length"]
    lines = [
        "| arm | " + " | ".join(f"{s // length + 1}" for s in starts) + " |",
        "|---|" + "---|" * len(starts),
    ]
    for arm in record["arms"]:
        loss = record["summary"][arm]["loss_by_position"]
        pairs = zip(loss["mean"], loss["std"], strict=True)
        if perplexity:
            cells = [f"{np.exp(m):.2f} ± {np.exp(m) * d:.2f}" for m, d in pairs]
        else:
            cells = [f"{m:.3f} ± {d:.3f}" for m, d in pairs]
        lines.append(f"| {arm} | " + " | ".join(cells) + " |")
    tokens = " | ".join(f"{t:,}" for t in record["tokens"])
    lines.append(f"| tokens | {tokens} |")
    for name, gap in record["gaps"].items():
        if gap is None:
            continue
        loss = gap["loss_by_position"]
        spreads = loss["std"] or [None] * len(starts)
        cells = [
            f"{m:+.4f}" + ("" if d is None else f" ± {d:.4f}")
            for m, d in zip(loss["mean"], spreads, strict=True)
        ]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


# ----------------------------------------------------------------------- #
# Replies (CMU-DoG)
# ----------------------------------------------------------------------- #


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

    >>> from experiments.evaluation import unigram_f1
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

    >>> from experiments.evaluation import dialogue_metrics
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
