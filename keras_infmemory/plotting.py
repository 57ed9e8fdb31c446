"""Plots of what the memory holds: where it is read (the paper's Fig. 4/5
idea) and highlighted text (Figs. 4 and 5 themselves).

Needs ``matplotlib`` (imported on use, with the non-interactive Agg
backend).
"""

import numpy as np


def density_map(mu, variance, num_points=200):
    """Read densities on a grid of the memory's time axis.

    Args:
        mu: ``(H, Lq)`` means of the read densities (one row, one layer).
        variance: ``(H, Lq)`` their variances σ².
        num_points: grid points on [0, 1].

    Returns:
        ``(t, density)``: the grid ``(num_points,)`` and the density
        ``N(t; μ, σ²)`` averaged over heads, ``(Lq, num_points)``.
    """
    mu = np.asarray(mu, "float64")
    variance = np.asarray(variance, "float64")
    if mu.ndim != 2 or mu.shape != variance.shape:
        raise ValueError(
            "`mu` and `variance` must have the same shape (heads, queries). "
            f"Received: mu.shape={mu.shape}, variance.shape={variance.shape}"
        )
    t = np.linspace(0.0, 1.0, num_points)
    z = (t[None, None, :] - mu[..., None]) ** 2 / variance[..., None]
    density = np.exp(-0.5 * z) / np.sqrt(2 * np.pi * variance[..., None])
    return t, density.mean(axis=0)  # (Lq, T)


def plot_memory_attention(
    densities,
    histogram=None,
    path=None,
    title="Where the memory is read",
    num_points=200,
    layers=None,
):
    """Per layer, the read density over the memory's time axis.

    One panel per memory layer: rows are the query positions of a segment,
    columns the memory's time axis ``t ∈ [0, 1]`` (0 oldest, 1 the latest
    segment), colour the read density averaged over heads. An optional last
    panel shows a sticky-memory histogram (where the next write samples).

    Example:

    >>> import numpy as np
    >>> from keras_infmemory.plotting import plot_memory_attention
    >>> mu = np.random.rand(2, 8)  # (heads, queries)
    >>> figure = plot_memory_attention([(mu, np.full((2, 8), 1e-3))])
    >>> len(figure.axes) >= 1
    True
    >>> figure = plot_memory_attention(
    ...     [{"mu": mu, "variance": np.full((2, 8), 1e-3)}], layers=[3]
    ... )
    >>> figure.axes[0].get_title()
    'layer 3'

    With a KerasHub model with memory, `memory_densities` gives per layer
    a dict of ``(B, H, T)`` arrays; one row and one segment of each:

        densities, _ = lm.memory_densities(inputs)
        plot_memory_attention(
            [{k: np.asarray(d[k])[0, :, -L:] for k in ("mu", "variance")}
             for d in densities],
            layers=lm.backbone.memory_layers,
        )

    Args:
        densities: list over layers of ``(mu, variance)`` pairs or
            ``{"mu": mu, "variance": variance}`` dicts of ``(H, Lq)``
            arrays (heads, query positions).
        histogram: optional ``(num_bins,)`` sticky histogram.
        path: optional file to save the figure to (PNG).
        title: figure title.
        num_points: grid points on [0, 1].
        layers: optional layer index of each panel, for its title
            (default: 0, 1, …).

    Returns:
        The `matplotlib.figure.Figure`.
    """
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    densities = [
        (d["mu"], d["variance"]) if isinstance(d, dict) else d
        for d in densities
    ]
    layers = list(range(len(densities))) if layers is None else list(layers)
    if len(layers) != len(densities):
        raise ValueError(
            "`layers` must name one layer per entry of `densities` "
            f"({len(densities)}). Received: layers={layers}"
        )
    panels = len(densities) + (histogram is not None)
    if panels == 0:
        raise ValueError("Nothing to plot. Received: densities=[]")
    figure, axes = plt.subplots(
        1, panels, figsize=(3.2 * panels, 3.0), squeeze=False
    )
    axes = axes[0]
    for i, (mu, variance) in enumerate(densities):
        t, density = density_map(
            np.asarray(mu), np.asarray(variance), num_points
        )
        axes[i].imshow(
            density,
            aspect="auto",
            origin="lower",
            extent=(t[0], t[-1], 0, density.shape[0]),
            cmap="viridis",
        )
        axes[i].set_title(f"layer {layers[i]}")
        axes[i].set_xlabel("memory time t (0 = oldest)")
        if i == 0:
            axes[i].set_ylabel("query position in segment")
    if histogram is not None:
        histogram = np.asarray(histogram, "float64")
        edges = np.linspace(0, 1, len(histogram) + 1)
        axes[-1].bar(edges[:-1], histogram, width=np.diff(edges), align="edge")
        axes[-1].set_title("sticky histogram")
        axes[-1].set_xlabel("memory time t")
    figure.suptitle(title)
    figure.tight_layout()
    if path is not None:
        figure.savefig(path, dpi=120)
    return figure


def _check_pieces(pieces, weights):
    pieces = [str(p) for p in pieces]
    weights = np.asarray(weights, "float64").reshape(-1)
    if len(pieces) != len(weights) or not np.isfinite(weights).all():
        raise ValueError(
            "`weights` must hold one finite value per piece of text "
            f"({len(pieces)}). Received: weights of shape {weights.shape}"
        )
    top = weights.max() if len(weights) and weights.max() > 0 else 1.0
    return pieces, np.clip(weights / top, 0.0, 1.0)


def highlight_html(pieces, weights, title=None):
    """Text with each piece highlighted by its weight (the paper's Figs. 4
    and 5): the darker, the more weight (scaled to the largest).

    Example:

    >>> from keras_infmemory.plotting import highlight_html
    >>> html = highlight_html(["the", " boat", " sails"], [0.0, 1.0, 0.5])
    >>> 'rgba(214, 39, 40, 1.000)">&nbsp;boat' in html
    True

    Args:
        pieces: list of strings, the text's pieces in order (e.g. each
            token decoded), concatenated as they are.
        weights: ``(n,)`` non-negative weights, one per piece (e.g.
            `keras_infmemory.memory_map.read_weights`).
        title: optional heading.

    Returns:
        A self-contained HTML string.
    """
    import html

    pieces, shades = _check_pieces(pieces, weights)
    spans = []
    for piece, shade in zip(pieces, shades, strict=True):
        text = html.escape(piece).replace(" ", "&nbsp;").replace("\n", "<br>")
        spans.append(
            f'<span title="{shade:.3f}" style="background-color: '
            f'rgba(214, 39, 40, {shade:.3f})">{text}</span>'
        )
    head = f"<h3>{html.escape(title)}</h3>\n" if title else ""
    return (
        '<div style="font-family: monospace; line-height: 1.6">\n'
        f"{head}{''.join(spans)}\n</div>\n"
    )


def plot_highlighted_text(
    pieces, weights, path=None, title=None, line_width=80
):
    """`highlight_html` as a figure (PNG with ``path``): the pieces laid out
    in a monospace font, wrapped at ``line_width`` characters, each on a
    background as dark as its weight.

    Example:

    >>> from keras_infmemory.plotting import plot_highlighted_text
    >>> figure = plot_highlighted_text(["the", " boat"], [0.2, 1.0])
    >>> len(figure.axes)
    1

    Returns:
        The `matplotlib.figure.Figure`.
    """
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    pieces, shades = _check_pieces(pieces, weights)
    placed, line, column = [], 0, 0
    for piece, shade in zip(pieces, shades, strict=True):
        for k, part in enumerate(piece.split("\n")):
            if k > 0 or column + len(part) > line_width:
                line, column = line + 1, 0
            if part:
                placed.append((part, line, column, shade))
                column += len(part)
    lines = line + 1
    figure, axis = plt.subplots(
        figsize=(0.09 * line_width + 0.4, 0.22 * lines + 0.6)
    )
    colours = matplotlib.colormaps["Reds"]
    for part, row, column, shade in placed:
        axis.text(
            column,
            lines - row - 0.5,
            part.replace(" ", "\u00a0"),
            family="monospace",
            fontsize=9,
            va="center",
            ha="left",
            bbox={
                "facecolor": colours(0.85 * shade),
                "edgecolor": "none",
                "pad": 0.6,
                "alpha": 1.0 if shade > 0 else 0.0,
            },
        )
    axis.set_xlim(0, line_width)
    axis.set_ylim(0, lines)
    axis.axis("off")
    if title:
        axis.set_title(title, fontsize=10)
    figure.tight_layout()
    if path is not None:
        figure.savefig(path, dpi=120)
    return figure
