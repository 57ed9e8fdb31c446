"""The grounded-dialogue experiment: a GPT-2 with the document in memory,
replies generated and scored three ways (the ∞-former's CMU-DoG
experiment, Martins et al. 2022 §4.3; docs/documents.md).

``examples/grounded_dialogue.py`` runs it. Each conversation is ``<doc>``
+ document + ``<eos>`` + its turns, cut into segments from the end and fed
in order to a stateful GPT-2 with memory (`train`), the memory emptied per
conversation; the validation turns' loss is taken with the memory on and
off (`turn_loss`). Replies are then generated (top-p 0.9, the context
before the reply's segment absorbed into the memory) and scored in each
of the `CONDITIONS` (`evaluate_conditions`):

* ``"memory"``: the document and the turns before in memory;
* ``"memory_off"``: the same weights, every memory switched off;
* ``"no_document"``: the same conversation with an empty document.

The first seed's model also draws the paper's Figs. 4 and 5
(`draw_figures`). This module holds what the example measures with, so
that the example shows the library: settings (`MODE_DEFAULTS`, `QUICK`,
`settings`, `memory_sizes`; importing it hides TensorFlow's load
notices, `experiments.console`), the task
(`load_task`), the record (`seed_record`, `build_record`, `summarize`) and
the ending (`results_table`, `verdict`, `figures_table`,
`figures_verdict`).

Example:

>>> from experiments.grounded_dialogue import verdict
>>> runs = [{"metrics": {"memory": {"f1": 52.5}, "memory_off": {"f1": 25.9},
...          "no_document": {"f1": 28.1}},
...          "validation_turn_loss": {"memory": 0.51, "memory_off": 0.59}}]
>>> print(verdict({"runs": runs}))
F1 52.50 (one seed: no spread) with the document in memory, 25.90 with \
the memory off, 28.10 with no document: the memory leads by 24.40 (one \
seed: no spread); validation turns' loss 0.510 with the memory, 0.590 \
off: the memory leads by 0.080 (one seed: no spread).
"""

import collections
import dataclasses
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
from experiments import console
from experiments.console import fit_verbosity, native_notices_held_back

with native_notices_held_back():
    import keras
    import keras_hub
    import numpy as np

    from experiments.data import cmu_dog, grounded
    from experiments.dialogue import evaluate_replies, resize_vocabulary
    from experiments.records import markdown_table, separated, spread
    from experiments.tokenizers import add_special_tokens, word_tokenizer
    from keras_infmemory.memory_map import MemoryTracker, phrase_weights
    from keras_infmemory.optimizers import MemoryAdamW
    from keras_infmemory.plotting import highlight_html, plot_highlighted_text

CONDITIONS = ("memory", "memory_off", "no_document")
"""Where the replies are generated from, in the record's order."""

# ----------------------------------------------------------------------- #
# Settings
# ----------------------------------------------------------------------- #

MODE_DEFAULTS = {
    "offline": {
        "segment_length": 32,
        "batch_size": 16,
        "epochs": 3,
        "learning_rate": 2e-3,
        "memory_learning_rate": 2e-3,
        "num_basis": 64,
        "num_samples": 32,
        "max_new_tokens": 8,
    },
    "preset": {
        "segment_length": 512,
        "batch_size": 1,
        "epochs": 1,
        "learning_rate": 5e-5,
        "memory_learning_rate": 5e-5,
        "num_basis": 512,
        "num_samples": 512,
        "max_new_tokens": 50,
    },
}
"""Options whose default depends on the mode: the paper's recipe on a
pretrained preset (§4.3: segments of 512, N = M = 512, AdamW 5e-5, replies
of at most 50 tokens), a small GPT-2 trained from scratch offline."""

QUICK = {
    "sizes": [64, 8, 1],
    "epochs": 1,
    "hidden_dim": 16,
    "num_layers": 1,
    "num_basis": 16,
    "num_samples": 8,
}
"""``--quick``: sizes for a smoke run of a minute or two (the numbers mean
nothing); options given on the command line still win."""

OFFLINE_BASIS_WIDTHS = (0.02, 0.05)
"""The small model's Gaussian widths: segments of 32 tokens are short, so
narrower than the paper's GPT-2 widths (docs/math.md)."""


MODE_LABELS = {"offline": "with --offline", "preset": "without"}


def mode_default(name):
    """The help text of an option whose default depends on the mode.

    Example:

    >>> from experiments.grounded_dialogue import mode_default
    >>> mode_default("segment_length")
    '(default: 32 with --offline, 512 without)'
    """
    return console.mode_default(MODE_DEFAULTS, name, MODE_LABELS)


def settings(args):
    """Completes and checks the parsed options: the mode's defaults
    (`MODE_DEFAULTS`) where an option is None.

    Args:
        args: the example's parsed options (an `argparse.Namespace`).

    Returns:
        ``args``, completed.

    Raises:
        ValueError: a combination or value the example refuses, named in
            the message.
    """
    if not args.offline and not args.data:
        raise ValueError("give --data CMU_DOG_DIR, or --offline")
    console.fill_mode_defaults(
        args, MODE_DEFAULTS, "offline" if args.offline else "preset"
    )
    for name in ("segment_length", "batch_size", "epochs", "max_new_tokens"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1")
    if args.max_new_tokens >= args.segment_length:
        raise ValueError(
            "--max-new-tokens must be below --segment-length (the prompt "
            f"and the reply share a segment); got {args.max_new_tokens} "
            f"and {args.segment_length}"
        )
    if len(set(args.seeds)) != len(args.seeds):
        raise ValueError(f"--seeds must differ; got {args.seeds}")
    return args


def memory_sizes(args):
    """`keras_infmemory.models.attach_memory` keywords but the sticky
    sampler: segment length, N, M, KL weight (and, offline, the widths)."""
    sizes = dict(
        segment_length=args.segment_length,
        num_basis=args.num_basis,
        num_samples=args.num_samples,
        kl_weight=args.kl_weight,
    )
    if args.offline:
        sizes["basis_widths"] = OFFLINE_BASIS_WIDTHS
    return sizes


def output_paths(args):
    """``{what: path}`` of the files a run writes in ``args.output``
    (created here): the record, the first seed's weights and figures."""
    os.makedirs(args.output, exist_ok=True)
    name = "grounded_offline" if args.offline else "grounded_cmu_dog"
    stem = os.path.join(args.output, name)
    return {
        "record": f"{stem}.json",
        "weights": f"{stem}_seed{args.seeds[0]}.weights.h5",
        "fig4": f"{stem}_fig4.png",
        "fig5": f"{stem}_fig5.png",
        "html": f"{stem}_figures.html",
        "figures": f"{stem}_figures.json",
    }


# ----------------------------------------------------------------------- #
# The console
# ----------------------------------------------------------------------- #


# ----------------------------------------------------------------------- #
# The task
# ----------------------------------------------------------------------- #


@dataclasses.dataclass
class Task:
    """The conversations and what reads them.

    Attributes:
        splits: ``{"train", "valid", "test"}`` -> list of
            `experiments.data.cmu_dog.Conversation`.
        tokenizer: a GPT-2 tokenizer with the special tokens.
        special_ids: ``{"<doc>", "<eos>", "<speaker1>", "<speaker2>"}`` ->
            id.
        base_model: ``seed`` -> a `keras_hub.models.GPT2CausalLM` without
            memory (offline: new weights; else the preset, resized).
        first_turn: the first turn generated (0-based): the 3rd (the
            recipe); on the offline task, the answer.
        answer_only: whether only ``first_turn`` is scored (the offline
            task: not the closing turn).
    """

    splits: dict
    tokenizer: object
    special_ids: dict
    base_model: object
    first_turn: int = 2
    answer_only: bool = False

    def tokenize(self, text):
        """``text`` -> ``(T,)`` token ids (NumPy)."""
        return np.asarray(keras.ops.convert_to_numpy(self.tokenizer(text)))

    def stop_ids(self):
        """The ids that end a reply: ``<eos>``, the speaker tags and the
        tokenizer's end token."""
        tags = ("<eos>", "<speaker1>", "<speaker2>")
        return [self.special_ids[t] for t in tags] + [
            self.tokenizer.end_token_id
        ]

    def blocks(self, split, args, labels):
        """A split as `experiments.data.cmu_dog.DialogueBlocks`
        (``labels``: ``"all"`` to train, ``"turns"`` to validate)."""
        encoded = [
            cmu_dog.encode_conversation(c, self.tokenize, self.special_ids)
            for c in self.splits[split]
        ]
        return cmu_dog.DialogueBlocks(
            encoded, args.segment_length, args.batch_size, labels=labels
        )


def offline_data_folder(args):
    """Where the offline task is written: ``args.output``/
    ``grounded_data_<train>_<valid>_<test>`` (``_closing`` with a closing
    turn), so that runs of different sizes never share one."""
    name = "grounded_data_" + "_".join(str(int(s)) for s in args.sizes)
    if args.closing_turn:
        name += "_closing"
    return os.path.join(args.output, name)


def load_task(args):
    """The conversations, tokenizer and base model of a run (a `Task`).

    Offline, the task of `experiments.data.grounded` is written (once) and
    read, or the CMU-DoG folder ``args.data``; a byte-level tokenizer with
    one token per task word (`experiments.tokenizers.word_tokenizer`); a
    small GPT-2 (``args.num_layers``, ``args.hidden_dim``, 4 heads) with
    new weights per seed. With ``--preset``: CMU-DoG, the preset's
    tokenizer and model with the special tokens added.
    """
    if args.offline:
        folder = args.data or offline_data_folder(args)
        if not os.path.isdir(os.path.join(folder, "WikiData")):
            grounded.write_dataset(
                folder, sizes=args.sizes, seed=1234, closing=args.closing_turn
            )
        tokenizer, special_ids = word_tokenizer()

        def base_model(seed):
            keras.utils.set_random_seed(seed)
            backbone = keras_hub.models.GPT2Backbone(
                vocabulary_size=tokenizer.vocabulary_size(),
                num_layers=args.num_layers,
                num_heads=4,
                hidden_dim=args.hidden_dim,
                intermediate_dim=4 * args.hidden_dim,
                dropout=0.0,
                max_sequence_length=args.segment_length,
            )
            return keras_hub.models.GPT2CausalLM(backbone, None)

    else:
        folder = args.data
        gpt2 = keras_hub.models.GPT2CausalLM.from_preset(args.preset)
        tokenizer, special_ids = add_special_tokens(gpt2.preprocessor.tokenizer)

        def base_model(seed):
            return resize_vocabulary(
                gpt2, tokenizer.vocabulary_size(), seed=seed
            )

    splits = {s: cmu_dog.read_split(folder, s) for s in cmu_dog.SPLITS}
    answer_only = args.offline and not args.data
    return Task(
        splits,
        tokenizer,
        special_ids,
        base_model,
        first_turn=grounded.answer_turn() if answer_only else 2,
        answer_only=answer_only,
    )


# ----------------------------------------------------------------------- #
# Training and evaluation
# ----------------------------------------------------------------------- #


class _EmptyMemories(keras.callbacks.Callback):
    """Empties a stateful model's memories before each epoch."""

    def on_epoch_begin(self, epoch, logs=None):
        self.model.reset_state()


def train(model, blocks, args):
    """The recipe's training (§4.3): AdamW with linear decay to 0, the
    memory's own learning rate, clipping 1.0; the blocks in order.

    Args:
        model: a stateful causal LM with memory (``batch_size`` rows).
        blocks: `experiments.data.cmu_dog.DialogueBlocks` (labels
            ``"all"``).
        args: the settings (epochs, batch size, learning rates).

    Returns:
        The training loss of each epoch.
    """
    x, y, w = blocks.arrays()  # token_ids, padding_mask: (S·B, L)
    model.compile(
        optimizer=MemoryAdamW(
            learning_rate=keras.optimizers.schedules.PolynomialDecay(
                args.learning_rate,
                args.epochs * blocks.num_steps,
                end_learning_rate=0.0,
            ),
            memory_learning_rate=args.memory_learning_rate,
            weight_decay=0.0,
            clipnorm=1.0,
        ),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    history = model.fit(
        x,
        y,
        sample_weight=w,
        batch_size=args.batch_size,
        epochs=args.epochs,
        shuffle=False,  # row b of a batch continues row b of the last one
        callbacks=[_EmptyMemories()],
        verbose=fit_verbosity(),
    )
    return [float(loss) for loss in history.history["loss"]]


def turn_loss(model, blocks, args):
    """Mean cross-entropy over the turns' words (the recipe's validation
    labels, teacher-forced), the memories emptied first; set
    ``model.memory_enabled`` before."""
    x, y, w = blocks.arrays()
    model.reset_state()
    model.compile(
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        weighted_metrics=[
            keras.metrics.SparseCategoricalCrossentropy(
                from_logits=True, name="cross_entropy"
            )
        ],
    )
    result = model.evaluate(
        x,
        y,
        sample_weight=w,
        batch_size=args.batch_size,
        verbose=0,
        return_dict=True,
    )
    return float(result["cross_entropy"])


def without_documents(conversations):
    """The conversations with empty documents (the ``no_document``
    condition)."""
    return [
        cmu_dog.Conversation(
            c.name, "", c.turns, c.who_saw_doc, c.document_index
        )
        for c in conversations
    ]


def condition_examples(task, max_examples=None):
    """``{condition: [ReplyExample]}``: the test turns to generate in each
    of the `CONDITIONS` (``memory_off`` reuses ``memory``'s)."""
    test = task.splits["test"]
    examples = {}
    for condition, conversations in (
        ("memory", test),
        ("no_document", without_documents(test)),
    ):
        examples[condition] = cmu_dog.reply_examples(
            conversations,
            task.tokenize,
            task.special_ids,
            first_turn=task.first_turn,
            max_examples=max_examples,
        )
        if task.answer_only:  # the answer, not the closing turn
            examples[condition] = [
                e for e in examples[condition] if e.turn == task.first_turn
            ]
    examples["memory_off"] = examples["memory"]
    return {c: examples[c] for c in CONDITIONS}


def evaluate_conditions(model, task, args):
    """Generates and scores the test replies in each of the `CONDITIONS`
    (`experiments.dialogue.evaluate_replies`: top-p 0.9, seed 1).

    Returns:
        ``(metrics, samples)``: per condition, the scores
        (`experiments.evaluation.dialogue_metrics`) and the first 5
        ``{"reference", "reply"}`` pairs.
    """
    examples = condition_examples(task, args.max_eval)
    metrics, samples = {}, {}
    for condition in CONDITIONS:
        start = time.time()
        model.memory_enabled = condition != "memory_off"
        scores, replies = evaluate_replies(
            model,
            examples[condition],
            task.tokenizer,
            task.stop_ids(),
            max_new_tokens=args.max_new_tokens,
            batch_size=max(args.batch_size, 16),
            seed=1,
            progress=sys.stdout.isatty(),
        )
        model.memory_enabled = True
        metrics[condition] = scores
        pairs = zip(examples[condition][:5], replies[:5], strict=True)
        samples[condition] = [
            {"reference": e.reference, "reply": r} for e, r in pairs
        ]
        shown = ", ".join(
            f"{k} {v:.2f}" for k, v in scores.items() if isinstance(v, float)
        )
        print(f"  {condition} ({time.time() - start:.0f} s): {shown}")
    return metrics, samples


# ----------------------------------------------------------------------- #
# Figures 4 and 5
# ----------------------------------------------------------------------- #


def draw_figures(model, task, args, paths):
    """The paper's Figs. 4 and 5 on the first test conversation's first
    generated turn, as PNG (``paths["fig4"]``, ``paths["fig5"]``) and HTML
    (``paths["html"]``).

    Fig. 4: the absorbed tokens (document and turns before the reply's
    segment) shaded by the weight the read predicting a word of the
    reference reply puts on them (`MemoryTracker.token_weights`, first
    memory layer; the PNG for the 3rd word, offline the first key word).
    Fig. 5: shaded by the room their sentence takes in the memory
    (`MemoryTracker.room`, per token of the sentence).

    Returns:
        ``{"reference", "words": {word: [[piece, weight]] × 5},
        "sentences_by_room": [[sentence, share]] × 5}``.
    """
    (example,) = cmu_dog.reply_examples(
        task.splits["test"][:1],
        task.tokenize,
        task.special_ids,
        task.first_turn,
        1,
    )
    length = args.segment_length
    chunks, mask, prompt = cmu_dog.split_context(
        example.context_ids, length, length - args.max_new_tokens
    )
    reply = [int(i) for i in task.tokenize(" " + example.reference)]
    tokens = np.concatenate([prompt, reply])[:length].astype("int32")  # (T,)
    tracker = MemoryTracker(model, batch_size=1)
    memory = tracker.absorb(
        {"token_ids": chunks[None], "padding_mask": mask[None].astype("int32")}
    )
    densities, _ = tracker.memory_densities(
        {"token_ids": tokens[None], "padding_mask": np.ones_like(tokens)[None]},
        memory,
    )
    absorbed = [int(i) for i in chunks[mask.astype(bool)]]
    pieces = [_piece(task.tokenizer, i) for i in absorbed]
    words = [_piece(task.tokenizer, i) for i in reply]
    words = words[: len(tokens) - len(prompt)]
    record = {"reference": example.reference, "words": {}}
    pages = []
    shown = min(2, len(words) - 1)  # offline: the first key word
    for k, word in enumerate(words):
        position = len(prompt) + k - 1  # the read that predicts the word
        weights = tracker.token_weights(densities, 0, position)
        weights = weights[: len(absorbed)]  # (n,)
        top = np.argsort(-weights)[:5]
        record["words"][word.strip() or word] = [
            [pieces[i], round(float(weights[i]), 4)] for i in top
        ]
        title = f"Fig. 4: where the read predicting {word.strip()!r} looks"
        pages.append(highlight_html(pieces, weights, title))
        if k == shown:
            plot_highlighted_text(
                pieces, weights, paths["fig4"], title, line_width=70
            )
    page, record["sentences_by_room"] = _room_figure(
        tracker, pieces, absorbed, set(task.special_ids.values()), paths
    )
    with open(paths["html"], "w") as f:
        f.write("<html><body>\n" + "\n".join(pages + [page]))
        f.write("</body></html>\n")
    return record


def sentence_ids(pieces, absorbed, special_ids):
    """The sentence of each absorbed token: a sentence, a turn or a tag
    starts after ``.`` or ``?`` and at a special token.

    Example:

    >>> from experiments.grounded_dialogue import sentence_ids
    >>> sentence_ids([" a", " .", " b", "<eos>", " c"], [5, 6, 7, 1, 8], {1})
    array([0, 0, 1, 2, 2])
    """
    starts = [0] + [
        pieces[k - 1].strip() in (".", "?") or absorbed[k] in special_ids
        for k in range(1, len(absorbed))
    ]
    return np.cumsum(starts)


def _room_figure(tracker, pieces, absorbed, special_ids, paths):
    """Fig. 5 (PNG at ``paths["fig5"]``): ``(html, top 5 sentences by
    room)``. Sticky writes give more room to what the reads attended."""
    room = tracker.room(0)[: len(absorbed)]  # (n,)
    sentences = sentence_ids(pieces, absorbed, special_ids)  # (n,)
    per_sentence = phrase_weights(room, sentences)
    shade = (per_sentence / np.bincount(sentences))[sentences]  # per token
    title = "Fig. 5: room per token of each sentence in the memory"
    plot_highlighted_text(pieces, shade, paths["fig5"], title, line_width=70)
    top = [
        ["".join(p for p, s in zip(pieces, sentences, strict=True) if s == i)
         .strip(), round(float(per_sentence[i]), 4)]
        for i in np.argsort(-per_sentence)[:5]
    ]  # fmt: skip
    return highlight_html(pieces, shade, title), top


def _piece(tokenizer, token_id):
    """One token's text."""
    text = tokenizer.detokenize([[int(token_id)]])
    text = np.asarray(keras.ops.convert_to_numpy(text)).reshape(-1)[0]
    if isinstance(text, bytes):
        return text.decode("utf-8", "replace")
    return str(text)  # not NumPy's str_


# ----------------------------------------------------------------------- #
# The record
# ----------------------------------------------------------------------- #


def seed_record(seed, losses, turn_losses, metrics, samples, times):
    """One seed's entry of the record's ``"runs"``; ``times``: the
    seconds of training and of the whole seed."""
    return {
        "seed": seed,
        "train_losses": losses,
        "validation_turn_loss": turn_losses,
        "metrics": metrics,
        "samples": samples,
        "train_seconds": round(times[0], 1),
        "seconds": round(times[1], 1),
    }


def summarize(runs):
    """Mean, standard deviation, min and max over seeds, per condition and
    metric (metrics that are None, and ``count``, left out)."""
    summary = {}
    for condition in CONDITIONS:
        summary[condition] = {}
        for name in runs[0]["metrics"][condition]:
            values = [r["metrics"][condition][name] for r in runs]
            if any(v is None for v in values) or name == "count":
                continue
            summary[condition][name] = {
                "mean": float(np.mean(values)),
                "std": float(np.std(values)),
                "min": float(np.min(values)),
                "max": float(np.max(values)),
            }
    return summary


def build_record(args, task, runs, figures, seconds):
    """The run's record (``grounded_offline.json`` or
    ``grounded_cmu_dog.json``): settings, conversations per split, the
    summary over seeds, every seed's numbers and the figures' content."""
    return {
        "backend": keras.backend.backend(),
        "task": "offline grounded task" if args.offline else "CMU-DoG",
        "arguments": vars(args),
        "conversations": {s: len(v) for s, v in task.splits.items()},
        "summary": summarize(runs),
        "runs": runs,
        "figures": figures,
        "seconds": round(seconds, 1),
    }


# ----------------------------------------------------------------------- #
# The ending
# ----------------------------------------------------------------------- #

_COLUMNS = {
    "f1": "F1",
    "rouge1": "ROUGE-1",
    "rougeL": "ROUGE-L",
    "meteor": "METEOR",
    "bleu": "BLEU",
}


def results_table(record):
    """The scores per condition (mean, and the range over several seeds)
    and the validation turns' loss, as a Markdown table."""
    runs = record["runs"]
    rows = []
    for condition in CONDITIONS:
        row = [condition.replace("_", " ")]
        for name in _COLUMNS:
            values = [r["metrics"][condition].get(name) for r in runs]
            row.append(_cell(values, 2))
        losses = [r["validation_turn_loss"].get(condition) for r in runs]
        row.append(_cell(losses, 3))
        rows.append(row)
    header = ["condition", *_COLUMNS.values(), "turn loss"]
    return markdown_table(header, rows)


def _cell(values, digits):
    """``mean`` or ``mean (min–max)``; ``–`` where a value is missing."""
    if any(v is None for v in values):
        return "–"
    text = f"{np.mean(values):.{digits}f}"
    if len(values) > 1:
        text += f" ({min(values):.{digits}f}–{max(values):.{digits}f})"
    return text


def compare(memory, rivals, higher_is_better=True, digits=2):
    """How the memory's per-seed values stand against the rivals' (the
    closest rival's mean gives the gap), weighed against the seed spread
    (`experiments.records.separated`), as words.

    Example:

    >>> from experiments.grounded_dialogue import compare
    >>> compare([3.0, 5.0], {"off": [1.0, 2.0]})
    'the memory leads by 2.50, beyond the seed spread'
    >>> compare([3.0, 5.0], {"off": [1.0, 4.0]})
    'within the seed spread: no conclusion'
    >>> compare([0.5], {"off": [0.5]}, higher_is_better=False)
    'no difference (one seed: no spread)'
    """
    best = max if higher_is_better else min
    rival = best(rivals.values(), key=np.mean)  # the closest to the memory
    gap = float(np.mean(memory)) - float(np.mean(rival))
    side = "leads" if (gap > 0) == higher_is_better else "trails"
    by = f"by {abs(gap):.{digits}f}"
    if len(memory) == 1:
        if round(abs(gap), digits) == 0:
            return "no difference (one seed: no spread)"
        return f"the memory {side} {by} (one seed: no spread)"
    if all(separated(memory, v, higher_is_better) for v in rivals.values()):
        return f"the memory leads {by}, beyond the seed spread"
    if any(separated(v, memory, higher_is_better) for v in rivals.values()):
        return f"the memory trails {by}, beyond the seed spread"
    return "within the seed spread: no conclusion"


def verdict(record):
    """One line: F1 in the three conditions and the validation turns'
    loss with the memory on and off, each weighed against the seed
    spread (`compare`)."""
    runs = record["runs"]
    f1 = {c: [r["metrics"][c]["f1"] for r in runs] for c in CONDITIONS}
    loss = {
        c: [r["validation_turn_loss"][c] for r in runs]
        for c in ("memory", "memory_off")
    }
    rivals = {c: f1[c] for c in CONDITIONS[1:]}
    return (
        f"F1 {spread(f1['memory'], 2)} with the document in memory, "
        f"{np.mean(f1['memory_off']):.2f} with the memory off, "
        f"{np.mean(f1['no_document']):.2f} with no document: "
        f"{compare(f1['memory'], rivals)}; validation turns' loss "
        f"{np.mean(loss['memory']):.3f} with the memory, "
        f"{np.mean(loss['memory_off']):.3f} off: "
        + compare(
            loss["memory"],
            {"off": loss["memory_off"]},
            higher_is_better=False,
            digits=3,
        )
        + "."
    )


def figures_table(figures):
    """What Figs. 4 and 5 show, as a Markdown table: each reply word's
    most-read token, and the sentences with the most room."""
    rows = [
        [f"Fig. 4: read predicting {w!r}", f"{top[0][0]!r} ({top[0][1]:.3f})"]
        for w, top in figures["words"].items()
    ]
    rows += [
        [f"Fig. 5: room of {sentence!r}", f"{share:.1%}"]
        for sentence, share in figures["sentences_by_room"]
    ]
    return markdown_table(["what", "value"], rows)


def figures_verdict(figures):
    """One line on what the figures show: the token most read for the
    reply's words (Fig. 4), the sentence with the most room (Fig. 5).

    Example:

    >>> from experiments.grounded_dialogue import figures_verdict
    >>> figures_verdict({"reference": "sea : boat", "words": {
    ...     "sea": [[" boat", 0.04]], "boat": [[" boat", 0.03]]},
    ...     "sentences_by_room": [["the boat sails .", 0.106]]})
    "Fig. 4: the reads predicting 2 of the 2 words of 'sea : boat' look \
most at ' boat' (up to 0.040); Fig. 5: 'the boat sails .' takes the most \
room (10.6%); one seed's model: no spread."
    """
    tops = [top[0] for top in figures["words"].values()]
    piece, count = collections.Counter(p for p, _ in tops).most_common(1)[0]
    peak = max(w for p, w in tops if p == piece)
    sentence, share = figures["sentences_by_room"][0]
    return (
        f"Fig. 4: the reads predicting {count} of the {len(tops)} words of "
        f"{figures['reference']!r} look most at {piece!r} (up to "
        f"{peak:.3f}); Fig. 5: {sentence!r} takes the most room "
        f"({share:.1%}); one seed's model: no spread."
    )
