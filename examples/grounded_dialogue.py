"""Grounded dialogue: a GPT-2 holds a document in its memory and talks
about it (the ∞-former's CMU-DoG experiment, Martins et al. 2022 §4.3;
docs/documents.md).

Each conversation is ``<doc>`` + document + ``<eos>`` + its turns, cut into
segments from the end and fed in order to a GPT-2 with memory
(`keras_infmemory.models.attach_memory`, sticky memories), the memory
emptied per conversation. The replies of the test conversations are then
generated (top-p 0.9) with the context absorbed into the memory, with the
memory switched off (same weights) and with no document, and scored (F1,
ROUGE-1/L, METEOR, BLEU).

* ``--offline``: no download. A task in CMU-DoG's layout is generated
  (`experiments.data.grounded`: the answer is the document's topic and its
  two most frequent words, the document beyond the attention window) and a
  small GPT-2 with memory is trained from scratch, once per seed; the
  answer turn is scored. With ``--data DIR`` it trains on that CMU-DoG
  folder instead (every turn from the 3rd on scored).
* ``--data DIR --preset gpt2_base_en``: CMU-DoG as published
  (``DIR/Conversations/{train,valid,test}``, ``DIR/WikiData``), the paper's
  recipe on the pretrained GPT-2 (downloads the preset).

Commands (two CPU cores; benchmarks/results/grounded_offline.md)::

    python examples/grounded_dialogue.py --offline --quick   # 1-2 minutes
    python examples/grounded_dialogue.py --offline --seeds 0 1 2 \\
        --output benchmarks/results                      # ~2 min per seed
    python examples/grounded_dialogue.py --offline --figures-only \\
        --output benchmarks/results       # redraws Figs. 4/5 from seed 0

It prints a line per epoch and per condition, then a table of the scores
(mean and range over seeds), a one-line verdict weighed against the seed
spread, and the files written to ``--output``: ``grounded_offline.json``
(or ``grounded_cmu_dog.json``: settings, every seed's losses, scores and
sample replies), the first seed's weights and the paper's Figs. 4 and 5
(``*_fig4.png``: where the reads predicting the reply look in the
document; ``*_fig5.png``: the room each sentence takes in the memory;
``*_figures.html``: Fig. 4 for every word).
"""

import argparse
import os
import time

os.environ.setdefault("KERAS_BACKEND", "jax")

from experiments import console  # noqa: E402
from experiments import grounded_dialogue as gd  # noqa: E402  (loads Keras)
from experiments.records import finish, write_json  # noqa: E402
from keras_infmemory import StickyMemorySampler  # noqa: E402
from keras_infmemory.models import attach_memory  # noqa: E402

# Every option: (flag, add_argument keywords, help).
# fmt: off
OPTIONS = [
    ("--offline", dict(action="store_true"), "no download: a small GPT-2"
        " trained from scratch (on the generated task, or on --data)"),
    ("--data", dict(metavar="DIR"), "a CMU-DoG folder (Conversations/,"
        " WikiData/) (default: none; offline, the generated task)"),
    ("--preset", dict(default="gpt2_base_en"), "the KerasHub GPT-2 preset"
        " fine-tuned without --offline"),
    ("--quick", dict(action="store_true"), "a smoke run of a minute or two"
        " (its numbers mean nothing): 64/8/1 conversations, 1 epoch, 1 layer"
        " of width 16, N 16, M 8, where no option is given"),
    ("--seeds", dict(type=int, nargs="+", default=[0]), "the whole run"
        " (weights, training, sampling of sticky writes) once per seed"),
    ("--segment-length", dict(type=int), "tokens per segment"),
    ("--num-basis", dict(type=int), "basis functions of each memory (N)"),
    ("--num-samples", dict(type=int), "samples per memory update (M)"),
    ("--sticky", dict(action=argparse.BooleanOptionalAction, default=True),
        "sticky memories: writes sample where the reads looked"),
    ("--sticky-mode", dict(choices=("quantile", "categorical"),
        default="quantile"), "where sticky writes sample (categorical: the"
        " authors' random draws)"),
    ("--kl-weight", dict(type=float, default=1e-5), "weight of the"
        " memory's KL regularizer"),
    ("--epochs", dict(type=int), "passes over the training conversations"),
    ("--batch-size", dict(type=int), "conversations read side by side"),
    ("--learning-rate", dict(type=float), "AdamW's peak, decayed linearly"),
    ("--memory-learning-rate", dict(type=float), "the memories' rate"),
    ("--max-new-tokens", dict(type=int), "longest generated reply"),
    ("--max-eval", dict(type=int), "replies scored per condition (default:"
        " every test reply)"),
    ("--sizes", dict(type=int, nargs=3, default=[1500, 100, 100],
        metavar=("TRAIN", "VALID", "TEST")), "offline task: conversations"
        " per split"),
    ("--closing-turn", dict(action=argparse.BooleanOptionalAction,
        default=True), "offline task: a closing turn after the answer, so"
        " only its content identifies it (--no-closing-turn: the answer"
        " always ends the conversation, its position gives it away)"),
    ("--hidden-dim", dict(type=int, default=64), "small model: hidden size"),
    ("--num-layers", dict(type=int, default=2), "small model: layers"),
    ("--output", dict(default="grounded_dialogue_output"), "folder for the"
        " record, weights and figures (offline, the task's data too)"),
    ("--figures-only", dict(action="store_true"), "redraw Figs. 4/5 from"
        " a run's saved weights (the first seed's) in --output"),
]
# fmt: on


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0].replace("\n", " "),
        epilog="A quick try: --offline --quick (a minute or two).",
        formatter_class=console.HelpFormatter,
    )
    for flag, keywords, text in OPTIONS:
        name = flag[2:].replace("-", "_")
        if name in gd.MODE_DEFAULTS["offline"]:
            text += " " + gd.mode_default(name)
        parser.add_argument(flag, help=text, **keywords)
    args = parser.parse_args(argv)
    if args.quick:  # the quick sizes where no option is given
        parser.set_defaults(**gd.QUICK)
        args = parser.parse_args(argv)
    try:
        return gd.settings(args)
    except ValueError as error:
        parser.error(str(error))


def memory_model(base, args, seed, **stateful):
    """``base`` (a KerasHub GPT-2) with an ∞-former memory in each decoder
    layer; sticky memories sample where the reads looked."""
    sticky = None
    if args.sticky:
        sticky = StickyMemorySampler(mode=args.sticky_mode, seed=seed)
    return attach_memory(base, sticky=sticky, **gd.memory_sizes(args),
                         **stateful)  # fmt: skip


def train_and_evaluate(task, args, seed):
    """One seed: train, validate with the memory on and off, generate."""
    start = time.time()
    # B conversations side by side, each row's memory carried from segment
    # to segment and emptied where its next conversation starts.
    stream = dict(stateful=True, batch_size=args.batch_size)
    trainer = memory_model(task.base_model(seed), args, seed, **stream)
    train = task.blocks("train", args, labels="all")
    print(f"Seed {seed}: {trainer.count_params():,} weights, "
          f"{train.num_steps} steps per epoch")  # fmt: skip
    losses = gd.train(trainer, train, args)
    train_seconds = time.time() - start
    valid, turn_loss = task.blocks("valid", args, labels="turns"), {}
    for condition in ("memory", "memory_off"):
        trainer.memory_enabled = condition == "memory"  # same weights
        turn_loss[condition] = gd.turn_loss(trainer, valid, args)
    trainer.memory_enabled = True
    print(f"  validation turns' loss: memory {turn_loss['memory']:.3f}, "
          f"memory off {turn_loss['memory_off']:.3f}")  # fmt: skip
    # Generation passes the memory explicitly: absorb the context, then
    # generate reading it (`InfMemoryCausalLM.absorb`, `generate`).
    model = attach_memory(trainer, stateful=False, batch_size=None)
    metrics, samples = gd.evaluate_conditions(model, task, args)
    times = (train_seconds, time.time() - start)
    record = gd.seed_record(seed, losses, turn_loss, metrics, samples, times)
    return model, record


def main(argv=None):
    args = parse_args(argv)
    console.quiet()  # no grain notices at every fit
    paths, start = gd.output_paths(args), time.time()
    task = gd.load_task(args)  # conversations, tokenizer, a GPT-2 per seed
    figure_paths = [paths[k] for k in ("fig4", "fig5", "html")]
    if args.figures_only:
        if not os.path.exists(paths["weights"]):
            raise SystemExit(f"--figures-only needs {paths['weights']}")
        seed = args.seeds[0]
        model = memory_model(task.base_model(seed), args, seed)
        model.load_weights(paths["weights"])
        figures = gd.draw_figures(model, task, args, paths)
        write_json(figures, paths["figures"])
        finish(gd.figures_table(figures), gd.figures_verdict(figures),
               figure_paths + [paths["figures"]])  # fmt: skip
        return figures
    runs, figures = [], None
    for seed in args.seeds:
        model, run = train_and_evaluate(task, args, seed)
        runs.append(run)
        if figures is None:  # the first seed's model: weights and figures
            model.save_weights(paths["weights"])
            figures = gd.draw_figures(model, task, args, paths)
    record = gd.build_record(args, task, runs, figures, time.time() - start)
    write_json(record, paths["record"])
    finish(gd.results_table(record), gd.verdict(record),
           [paths["record"], paths["weights"], *figure_paths])  # fmt: skip
    return record


if __name__ == "__main__":
    main()
