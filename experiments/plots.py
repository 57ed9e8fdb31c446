"""Plots of the experiments' records: training curves, accuracy against
length (the paper's Fig. 2), perplexity by position in the document,
retrieval accuracy against context length and depth.

Needs ``matplotlib`` (imported on use, with the non-interactive Agg
backend). The plots of what a memory holds are the library's
(`keras_infmemory.plotting`).
"""

import numpy as np


def plot_training(losses, perplexities, path=None, title="Fine-tuning"):
    """Training loss per step and held-out perplexities as bars.

    Args:
        losses: sequence of training losses per step (Keras logs the
            running mean over the epoch).
        perplexities: dict ``label -> perplexity``.
        path: optional PNG file.
        title: figure title.

    Returns:
        The `matplotlib.figure.Figure`.
    """
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    figure, (left, right) = plt.subplots(1, 2, figsize=(9, 3.2))
    left.plot(np.arange(1, len(losses) + 1), losses)
    left.set_xlabel("step")
    left.set_ylabel("training loss (running mean)")
    labels = list(perplexities)
    values = [perplexities[k] for k in labels]
    bars = right.bar(labels, values)
    for bar, value in zip(bars, values, strict=True):
        right.annotate(
            f"{value:.2f}",
            (bar.get_x() + bar.get_width() / 2, value),
            ha="center",
            va="bottom",
        )
    right.set_ylabel("held-out perplexity")
    figure.suptitle(title)
    figure.tight_layout()
    if path is not None:
        figure.savefig(path, dpi=120)
    return figure


def plot_accuracy_by_length(results, path=None, title="Sorting"):
    """Answer accuracy per arm against sequence length (the paper's Fig. 2).

    Args:
        results: iterable of dicts with ``"arm"``, ``"length"`` and
            ``"accuracy"`` (as written by ``examples/sorting.py``).
        path: optional PNG file.
        title: figure title.

    Returns:
        The `matplotlib.figure.Figure`.
    """
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    by_arm = {}
    for row in results:
        by_arm.setdefault(row["arm"], []).append(
            (row["length"], row["accuracy"])
        )
    figure, axis = plt.subplots(figsize=(5, 3.4))
    for arm, points in by_arm.items():
        lengths, accuracies = zip(*sorted(points), strict=True)
        axis.plot(lengths, accuracies, marker="o", label=arm)
    axis.set_xscale("log", base=2)
    axis.set_xlabel("symbols before the separator")
    axis.set_ylabel("answer accuracy")
    axis.set_ylim(0.0, 1.0)
    axis.legend()
    axis.set_title(title)
    figure.tight_layout()
    if path is not None:
        figure.savefig(path, dpi=120)
    return figure


def plot_language_model(
    summary, path=None, title="Language model", by_position="loss"
):
    """Held-out perplexity per arm and loss by position in the document.

    Args:
        summary: dict ``arm -> {"perplexity": {"mean", "std", "values"},
            "loss_by_position": {"mean", "std"}}`` plus the shared
            ``"bucket_starts"`` (token positions where each bucket starts),
            as `experiments.evaluation.summarize_runs` writes it.
        path: optional PNG file.
        title: figure title.
        by_position: ``"loss"`` (nats per token) or ``"perplexity"`` (its
            exponential) on the right, mean ± std over seeds.

    Returns:
        The `matplotlib.figure.Figure`.
    """
    if by_position not in ("loss", "perplexity"):
        raise ValueError(
            "`by_position` must be 'loss' or 'perplexity'. Received: "
            f"by_position={by_position!r}"
        )
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    arms = [arm for arm in summary if arm != "bucket_starts"]
    starts = np.maximum(np.asarray(summary["bucket_starts"], float), 1.0)
    figure, (left, right) = plt.subplots(1, 2, figsize=(10, 3.6))
    for i, arm in enumerate(arms):
        perplexity = summary[arm]["perplexity"]
        left.bar(i, perplexity["mean"], yerr=perplexity["std"], capsize=4)
        left.plot(
            [i] * len(perplexity["values"]), perplexity["values"], "k.", ms=4
        )
        loss = summary[arm]["loss_by_position"]
        mean, std = np.asarray(loss["mean"]), np.asarray(loss["std"])
        low, high = mean - std, mean + std
        if by_position == "perplexity":
            mean, low, high = np.exp(mean), np.exp(low), np.exp(high)
        right.plot(starts, mean, marker="o", ms=3, label=arm)
        right.fill_between(starts, low, high, alpha=0.2)
    left.set_xticks(range(len(arms)), arms, rotation=20)
    left.set_ylabel("held-out perplexity (mean ± std)")
    spans = [
        (
            min(p["values"] + [p["mean"] - p["std"]]),
            max(p["values"] + [p["mean"] + p["std"]]),
        )
        for p in (summary[a]["perplexity"] for a in arms)
    ]
    low, high = min(s[0] for s in spans), max(s[1] for s in spans)
    left.set_ylim(0.9 * low, high + 0.1 * (high - low) + 0.05 * high)
    right.set_xscale("log", base=2)
    right.set_xlabel("token position in the document (bucket start)")
    right.set_ylabel(
        "held-out loss (nats / token)"
        if by_position == "loss"
        else "held-out perplexity (exp of the loss)"
    )
    right.legend(fontsize=8)
    figure.suptitle(title)
    figure.tight_layout()
    if path is not None:
        figure.savefig(path, dpi=120)
    return figure


def plot_retrieval(results, path=None, title="Retrieval"):
    """Retrieval accuracy per arm against context length (mean over the
    depths evaluated there) and against depth (mean over the lengths), for
    each task a row of two panels in exact match and, where the results
    have it, one in token accuracy; seeds averaged.

    Args:
        results: iterable of dicts with ``"task"``, ``"arm"``,
            ``"context_tokens"``, ``"depth_segments"``, ``"accuracy"`` and
            optionally ``"token_accuracy"`` (as written by
            ``examples/retrieval.py``).
        path: optional PNG file.
        title: figure title.

    Returns:
        The `matplotlib.figure.Figure`.
    """
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    results = list(results)
    panels = []
    for task in dict.fromkeys(row["task"] for row in results):
        panels.append((task, "accuracy", "exact match"))
        if all("token_accuracy" in row for row in results):
            panels.append((task, "token_accuracy", "token accuracy"))
    figure, axes = plt.subplots(
        len(panels), 2, figsize=(10, 3.2 * len(panels)), squeeze=False
    )
    for (by_length, by_depth), (task, metric, label) in zip(
        axes, panels, strict=True
    ):
        rows = [row for row in results if row["task"] == task]
        for arm in dict.fromkeys(row["arm"] for row in rows):
            mine = [row for row in rows if row["arm"] == arm]
            for axis, key in (
                (by_length, "context_tokens"),
                (by_depth, "depth_segments"),
            ):
                values = {}
                for row in mine:
                    values.setdefault(row[key], []).append(row[metric])
                xs = sorted(values)
                axis.plot(
                    xs,
                    [np.mean(values[x]) for x in xs],
                    marker="o",
                    label=arm,
                )
        by_length.set_xscale("log", base=2)
        by_length.set_xlabel("context length (tokens)")
        by_length.set_ylabel(f"{task}: {label}")
        by_depth.set_xlabel("depth (segments between needle and question)")
        for axis in (by_length, by_depth):
            axis.set_ylim(-0.02, 1.02)
        by_depth.legend(fontsize=7)
    figure.suptitle(title)
    figure.tight_layout()
    if path is not None:
        figure.savefig(path, dpi=120)
    return figure
