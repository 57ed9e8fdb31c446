"""Grounded dialogue with the document in memory (the ∞-former's CMU-DoG
experiment, Martins et al. 2022 §4.3; docs/documents.md).

Each conversation is ``<doc>`` + document + ``<eos>`` + its turns, cut into
segments from the end and fed in order to a GPT-2 with memory, the memory
emptied per conversation; every turn from the 3rd on is then generated with
nucleus sampling (top-p 0.9), the context before the reply's segment in
memory, and scored (F1, ROUGE-1/L both ways, METEOR, BLEU).

Two ways to run it:

* ``--data DIR --preset gpt2_base_en``: CMU-DoG as published
  (``DIR/Conversations/{train,valid,test}``, ``DIR/WikiData``), the
  paper's recipe: segments of 512, sticky memories, AdamW 5e-5 with linear
  decay, clipping 1.0, KL weight 1e-5 (downloads the preset).
* ``--offline``: no download. A task in the same layout is generated
  (`experiments.data.grounded`: the answer is the document's topic and
  its two most frequent words, the document beyond the attention window),
  a GPT-2 byte-level tokenizer is trained on its words, and a small GPT-2
  with memory is trained from scratch, once per seed; each is evaluated on
  the answer turn with the document in memory, with the memory switched
  off (same weights) and with no document. With ``--data DIR`` the small
  model trains on that CMU-DoG folder instead (every turn from the 3rd on
  evaluated).

The first seed's model also draws the paper's Figs. 4 and 5 (PNG and
HTML): where the reads that predict a reply's words look in the document,
and how much room each sentence takes in the memory.

Example (CPU minutes; benchmarks/results/grounded_offline.md)::

    KERAS_BACKEND=jax python examples/grounded_dialogue.py --offline \\
        --seeds 0 1 2 --output benchmarks/results

``--figures-only`` redraws the figures from a run's saved model (the
first seed's) and writes what they show to ``*_figures.json``.
"""

import argparse
import json
import os
import time

os.environ.setdefault("KERAS_BACKEND", "jax")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402

from experiments.data import cmu_dog, grounded  # noqa: E402
from experiments.dialogue import (  # noqa: E402
    evaluate_replies,
    resize_vocabulary,
)
from experiments.tokenizers import (  # noqa: E402
    add_special_tokens,
    word_tokenizer,
)
from keras_infmemory import StickyMemorySampler  # noqa: E402
from keras_infmemory.models import attach_memory  # noqa: E402
from keras_infmemory.optimizers import MemoryAdamW  # noqa: E402

CONDITIONS = ("memory", "memory_off", "no_document")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", help="the CMU-DoG folder")
    p.add_argument("--preset", default="gpt2_base_en")
    p.add_argument("--offline", action="store_true")
    p.add_argument("--output", default="grounded_dialogue_output")
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--segment-length", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--learning-rate", type=float, default=None)
    p.add_argument("--memory-learning-rate", type=float, default=None)
    p.add_argument("--kl-weight", type=float, default=1e-5)
    p.add_argument("--num-basis", type=int, default=None)
    p.add_argument("--num-samples", type=int, default=None)
    p.add_argument("--max-new-tokens", type=int, default=None)
    p.add_argument("--max-eval", type=int, default=None)
    p.add_argument("--sticky", action=argparse.BooleanOptionalAction)
    p.add_argument(
        "--sticky-mode",
        default="quantile",
        choices=("quantile", "categorical"),
        help="where sticky writes sample (categorical: the authors' draws; "
        "on JAX, generation with it fails, see docs/documents.md)",
    )
    p.add_argument("--sizes", type=int, nargs=3, default=[1500, 100, 100])
    p.add_argument("--hidden-dim", type=int, default=64)
    p.add_argument("--num-layers", type=int, default=2)
    p.add_argument("--figures-only", action="store_true")
    p.add_argument(
        "--closing-turn",
        action="store_true",
        help="offline task: a closing turn after the answer (see "
        "experiments.data.grounded)",
    )
    args = p.parse_args(argv)
    if not args.offline and not args.data:
        p.error("give --data CMU_DOG_DIR, or --offline")
    defaults = (
        dict(segment_length=32, batch_size=16, epochs=3,
             learning_rate=2e-3, memory_learning_rate=2e-3, num_basis=64,
             num_samples=32, max_new_tokens=8, max_eval=None, sticky=True)
        if args.offline
        else dict(segment_length=512, batch_size=1, epochs=1,
                  learning_rate=5e-5, memory_learning_rate=5e-5,
                  num_basis=512, num_samples=512, max_new_tokens=50,
                  max_eval=None, sticky=True)
    )  # fmt: skip
    for name, value in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    return args


# --------------------------------------------------------------------- #
# Data and model
# --------------------------------------------------------------------- #


def load_task(args):
    """``(splits, tokenizer, special_ids, base_model_fn)``."""
    import keras_hub

    if args.offline:
        folder = args.data or os.path.join(args.output, "grounded_data")
        if not os.path.isdir(os.path.join(folder, "WikiData")):
            grounded.write_dataset(
                folder, sizes=args.sizes, seed=1234, closing=args.closing_turn
            )
        # Byte-level: any text tokenizes; the task's words are one token.
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
    return splits, tokenizer, special_ids, base_model


def memory_model(base, args, seed, stateful):
    sticky = None
    if args.sticky:
        sticky = StickyMemorySampler(mode=args.sticky_mode, seed=seed)
    options = dict(
        segment_length=args.segment_length,
        num_basis=args.num_basis,
        num_samples=args.num_samples,
        kl_weight=args.kl_weight,
        sticky=sticky,
    )
    if args.offline:
        options["basis_widths"] = (0.02, 0.05)
    if stateful:
        options.update(stateful=True, batch_size=args.batch_size)
    return attach_memory(base, **options)


def tokenize_fn(tokenizer):
    return lambda text: np.asarray(keras.ops.convert_to_numpy(tokenizer(text)))


def train(model, train_blocks, args):
    x, y, w = train_blocks.arrays()
    steps = args.epochs * train_blocks.num_steps
    model.compile(
        optimizer=MemoryAdamW(
            learning_rate=keras.optimizers.schedules.PolynomialDecay(
                args.learning_rate, steps, end_learning_rate=0.0
            ),
            memory_learning_rate=args.memory_learning_rate,
            weight_decay=0.0,
            clipnorm=1.0,
        ),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    losses = []
    for epoch in range(args.epochs):
        start = time.time()
        model.reset_state()
        history = model.fit(
            x,
            y,
            sample_weight=w,
            batch_size=args.batch_size,
            shuffle=False,
            epochs=1,
            verbose=0,
        )
        losses.append(float(history.history["loss"][-1]))
        print(
            f"  epoch {epoch + 1}: loss {losses[-1]:.4f} "
            f"({time.time() - start:.0f} s)",
            flush=True,
        )
    return losses


def turn_loss(model, blocks, args, memory):
    """Mean cross-entropy over the turns' words (validation labels)."""
    x, y, w = blocks.arrays()
    model.memory_enabled = memory
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
    model.memory_enabled = True
    return float(result["cross_entropy"])


def without_documents(conversations):
    return [
        cmu_dog.Conversation(
            c.name, "", c.turns, c.who_saw_doc, c.document_index
        )
        for c in conversations
    ]


def first_turn(args):
    """The first turn generated: the 3rd (the recipe), offline the answer."""
    return grounded.answer_turn() if args.offline and not args.data else 2


def evaluate_conditions(model, conversations, tokenizer, special_ids, args):
    tokenize = tokenize_fn(tokenizer)
    stops = [special_ids[t] for t in ("<eos>", "<speaker1>", "<speaker2>")] + [
        tokenizer.end_token_id
    ]
    examples = {
        "memory": cmu_dog.reply_examples(
            conversations,
            tokenize,
            special_ids,
            first_turn=first_turn(args),
            max_examples=args.max_eval,
        ),
        "no_document": cmu_dog.reply_examples(
            without_documents(conversations),
            tokenize,
            special_ids,
            first_turn=first_turn(args),
            max_examples=args.max_eval,
        ),
    }
    if args.offline and not args.data:  # the answer only, not the closing
        examples = {
            k: [e for e in v if e.turn == first_turn(args)]
            for k, v in examples.items()
        }
    examples["memory_off"] = examples["memory"]
    results, samples = {}, {}
    for condition in CONDITIONS:
        start = time.time()
        model.memory_enabled = condition != "memory_off"
        scores, replies = evaluate_replies(
            model,
            examples[condition],
            tokenizer,
            stops,
            max_new_tokens=args.max_new_tokens,
            batch_size=max(args.batch_size, 16),
            seed=1,
        )
        model.memory_enabled = True
        results[condition] = scores
        samples[condition] = [
            {"reference": e.reference, "reply": r}
            for e, r in list(zip(examples[condition], replies, strict=True))[:5]
        ]
        print(
            f"  {condition} ({time.time() - start:.0f} s): " + _format(scores),
            flush=True,
        )
    return results, samples


def _format(scores):
    return ", ".join(
        f"{k} {v:.2f}"
        for k, v in scores.items()
        if isinstance(v, float) and k != "count"
    )


# --------------------------------------------------------------------- #
# Figures 4 and 5
# --------------------------------------------------------------------- #


def draw_figures(model, conversations, tokenizer, special_ids, args, name):
    """The paper's Figs. 4 and 5 on the first test conversation, as PNG and
    HTML: the document's tokens shaded by how much the read that predicts
    each word of the reference reply looks at them (Fig. 4), and by the
    room each sentence takes in the memory (Fig. 5)."""
    from keras_infmemory.memory_map import MemoryTracker, phrase_weights
    from keras_infmemory.plotting import highlight_html, plot_highlighted_text

    tokenize = tokenize_fn(tokenizer)
    (example,) = cmu_dog.reply_examples(
        conversations[:1], tokenize, special_ids, first_turn(args), 1
    )
    length = args.segment_length
    chunks, mask, prompt = cmu_dog.split_context(
        example.context_ids, length, length - args.max_new_tokens
    )
    reply = [int(i) for i in tokenize(" " + example.reference)]
    tokens = np.concatenate([prompt, reply])[:length].astype("int32")
    tracker = MemoryTracker(model, batch_size=1)
    memory = tracker.absorb(
        {"token_ids": chunks[None], "padding_mask": mask[None].astype("int32")}
    )
    densities, _ = tracker.memory_densities(
        {"token_ids": tokens[None], "padding_mask": np.ones_like(tokens)[None]},
        memory,
    )
    absorbed = [int(i) for i in chunks[mask.astype(bool)]]
    pieces = [_piece(tokenizer, i) for i in absorbed]
    count = len(absorbed)
    record = {"reference": example.reference, "words": {}}
    words = [_piece(tokenizer, i) for i in reply]
    pages = []
    words = words[: len(tokens) - len(prompt)]
    shown = min(2, len(words) - 1)  # offline: the first key word
    for k, word in enumerate(words):
        position = len(prompt) + k - 1  # the read that predicts the word
        weights = tracker.token_weights(densities, 0, position)[:count]
        top = np.argsort(-weights)[:5]
        record["words"][word.strip() or word] = [
            [pieces[i], round(float(weights[i]), 4)] for i in top
        ]
        title = f"Fig. 4: where the read predicting {word.strip()!r} looks"
        pages.append(highlight_html(pieces, weights, title))
        if k == shown:
            plot_highlighted_text(
                pieces, weights, os.path.join(args.output, f"{name}_fig4.png"),
                title, line_width=70,
            )  # fmt: skip
    # Fig. 5: the room each sentence takes now (sticky writes give more room
    # to what the reads attended).
    room = tracker.room(0)[:count]
    special = set(special_ids.values())
    starts = [0] + [
        pieces[k - 1].strip() in (".", "?") or absorbed[k] in special
        for k in range(1, count)
    ]  # a sentence, a turn or a tag starts a phrase
    phrases = np.cumsum(starts)
    per_phrase = phrase_weights(room, phrases)
    sizes = np.bincount(phrases)
    shade = (per_phrase / sizes)[phrases]  # room per token of the sentence
    title = "Fig. 5: room per token of each sentence in the memory"
    pages.append(highlight_html(pieces, shade, title))
    plot_highlighted_text(
        pieces, shade, os.path.join(args.output, f"{name}_fig5.png"), title,
        line_width=70,
    )  # fmt: skip
    order = np.argsort(-per_phrase)[:5]
    record["sentences_by_room"] = [
        ["".join(p for p, q in zip(pieces, phrases, strict=True) if q == i)
         .strip(), round(float(per_phrase[i]), 4)]
        for i in order
    ]  # fmt: skip
    with open(os.path.join(args.output, f"{name}_figures.html"), "w") as f:
        f.write("<html><body>\n" + "\n".join(pages) + "</body></html>\n")
    return record


def _piece(tokenizer, token_id):
    text = tokenizer.detokenize([[int(token_id)]])
    text = np.asarray(keras.ops.convert_to_numpy(text)).reshape(-1)[0]
    return text.decode("utf-8", "replace") if isinstance(text, bytes) else text


# --------------------------------------------------------------------- #
# Main
# --------------------------------------------------------------------- #


def run_seed(seed, splits, tokenizer, special_ids, base_model, args):
    tokenize = tokenize_fn(tokenizer)
    encoded = {
        s: [
            cmu_dog.encode_conversation(c, tokenize, special_ids)
            for c in splits[s]
        ]
        for s in ("train", "valid")
    }
    train_blocks = cmu_dog.DialogueBlocks(
        encoded["train"], args.segment_length, args.batch_size, labels="all"
    )
    valid_blocks = cmu_dog.DialogueBlocks(
        encoded["valid"], args.segment_length, args.batch_size, labels="turns"
    )
    start = time.time()
    trainer = memory_model(base_model(seed), args, seed, stateful=True)
    print(
        f"seed {seed}: {trainer.count_params():,} weights, "
        f"{train_blocks.num_steps} steps per epoch",
        flush=True,
    )
    losses = train(trainer, train_blocks, args)
    train_seconds = time.time() - start
    loss = {
        "memory": turn_loss(trainer, valid_blocks, args, True),
        "memory_off": turn_loss(trainer, valid_blocks, args, False),
    }
    print(f"  validation turn loss: {loss}", flush=True)
    model = attach_memory(trainer, stateful=False, batch_size=None)
    results, samples = evaluate_conditions(
        model, splits["test"], tokenizer, special_ids, args
    )
    return model, {
        "seed": seed,
        "train_losses": losses,
        "validation_turn_loss": loss,
        "metrics": results,
        "samples": samples,
        "train_seconds": round(train_seconds, 1),
        "seconds": round(time.time() - start, 1),
    }


def summarize(runs):
    """Mean and spread (min, max) over seeds, per condition and metric."""
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


def main(argv=None):
    args = parse_args(argv)
    os.makedirs(args.output, exist_ok=True)
    name = "grounded_offline" if args.offline else "grounded_cmu_dog"
    splits, tokenizer, special_ids, base_model = load_task(args)
    weights = os.path.join(args.output, f"{name}_seed{args.seeds[0]}")
    if args.figures_only:
        model = memory_model(base_model(args.seeds[0]), args, 0, False)
        model.load_weights(weights + ".weights.h5")
        figures = draw_figures(
            model, splits["test"], tokenizer, special_ids, args, name
        )
        path = os.path.join(args.output, f"{name}_figures.json")
        with open(path, "w") as f:
            json.dump(figures, f, indent=1)
        return figures
    start = time.time()
    runs = []
    for i, seed in enumerate(args.seeds):
        model, record = run_seed(
            seed, splits, tokenizer, special_ids, base_model, args
        )
        runs.append(record)
        if i == 0:
            model.save_weights(weights + ".weights.h5")
            record_figures = draw_figures(
                model, splits["test"], tokenizer, special_ids, args, name
            )
    record = {
        "backend": keras.backend.backend(),
        "task": "offline grounded task" if args.offline else "CMU-DoG",
        "arguments": vars(args),
        "conversations": {s: len(v) for s, v in splits.items()},
        "summary": summarize(runs),
        "runs": runs,
        "figures": record_figures,
        "seconds": round(time.time() - start, 1),
    }
    with open(os.path.join(args.output, f"{name}.json"), "w") as f:
        json.dump(record, f, indent=1)
    print(json.dumps(record["summary"], indent=1))
    return record


if __name__ == "__main__":
    main()
