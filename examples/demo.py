"""The memory absorbs a long signal and gives it back.

A `ContinuousLTM` with the authors' GPT-2 geometry (N = 512 Gaussians,
widths {0.005, 0.01}, λ = 0.5, τ = 0.5, M = 512) absorbs a long, smooth,
multichannel signal segment by segment. After some of the writes we
reconstruct segments from the coefficients alone, ``x̄(t) = Bᵀ ψ(t)``, at the
positions where those segments now sit, and print the relative L2 error:

* the newest segment was placed at ``τ + (1 − τ)·i/L``, i = 1..L;
* each later write squeezes old content at position ``t`` to ``τ·t``, so the
  segment written ``k`` writes ago now sits at ``τᵏ`` times its own places.

The memory's size never changes (N × e floats per row) however many tokens
it has absorbed. The newest segment's error sits mostly at its last tokens,
near t = 1, where the zero padding of the fit pulls the signal towards 0;
older segments are squeezed into ever shorter stretches of [0, 1] and fade
once they are narrower than the basis functions. Finally a few queries read
the memory by continuous attention.

Run: ``python examples/demo.py`` (any ``KERAS_BACKEND``); ``--quick`` runs a
short stream for the tests.
"""

import argparse
import os
import time

os.environ.setdefault("KERAS_BACKEND", "jax")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402
from keras import ops  # noqa: E402

import keras_infmemory  # noqa: E402
from keras_infmemory import basis  # noqa: E402

# Reconstruct the segments written this many writes ago.
AGES = (0, 1, 2, 4, 6, 8)


def smooth_signal(num_tokens, channels, rng):
    """``(num_tokens, channels)``: per channel, 3 sinusoids with periods of
    100 to 1000 tokens, normalised to unit RMS."""
    t = np.arange(num_tokens, dtype=np.float64)[:, None]  # (T, 1)
    x = np.zeros((num_tokens, channels))
    for _ in range(3):
        period = rng.uniform(100.0, 1000.0, size=channels)  # (e,)
        phase = rng.uniform(0.0, 2 * np.pi, size=channels)
        x += rng.normal(size=channels) * np.sin(2 * np.pi * t / period + phase)
    return (x / np.sqrt(np.mean(x**2, axis=0))).astype("float32")


def segment_positions(length, tau, age):
    """Where the ``length`` tokens of a segment written ``age`` writes ago
    sit now (not the very first write, which uses cell midpoints)."""
    i = np.arange(1, length + 1, dtype=np.float64)
    return (tau**age) * (tau + (1.0 - tau) * i / length)  # (L,)


def relative_error(reconstruction, target):
    diff = np.linalg.norm(reconstruction - target)
    return float(diff / np.linalg.norm(target))


def main(quick=False):
    length = 128 if quick else 256  # tokens per segment
    num_segments = 10 if quick else 96
    num_heads, key_dim = 4, 8  # e = 32 channels
    batch = 2
    rng = np.random.default_rng(0)
    keras.utils.set_random_seed(0)  # the layer's initial weights

    # Gate off, so the memory stores the signal itself, not a gated copy.
    ltm = keras_infmemory.ContinuousLTM(
        num_heads=num_heads, key_dim=key_dim, memory_gate=None
    )
    e = ltm.memory_dim
    centers, widths = basis.basis_parameters(ltm.num_basis, ltm.basis_widths)
    centers = ops.convert_to_tensor(centers.astype("float32"))
    widths = ops.convert_to_tensor(widths.astype("float32"))

    stream = np.stack(
        [smooth_signal(length * num_segments, e, rng) for _ in range(batch)]
    )  # (B, T, e)
    segments = np.split(stream, num_segments, axis=1)  # S × (B, L, e)

    def error(state, written, age):
        """Relative L2 error of the segment written ``age`` writes ago."""
        positions = segment_positions(length, ltm.tau, age)
        psi = basis.psi(
            ops.convert_to_tensor(positions.astype("float32")),
            centers,
            widths,
        )  # (L, N)
        signal = basis.evaluate(psi, state["coefficients"])  # (B, L, e)
        target = segments[written - 1 - age]  # (B, L, e)
        return relative_error(ops.convert_to_numpy(signal), target)

    print(
        f"backend {keras.backend.backend()}; N={ltm.num_basis}, "
        f"widths={ltm.basis_widths}, λ={ltm.ridge_penalty}, "
        f"τ={ltm.tau}, M={ltm.num_samples}; segments of L={length}, "
        f"e={e} channels, batch {batch}"
    )
    ages = ", ".join(str(a) for a in AGES)
    print(f"relative L2 error of the segment written k writes ago, k = {ages}")
    header = (
        f"{'tokens':>7} {'floats/row':>10} "
        + " ".join(f"{'k=' + str(a):>7}" for a in AGES)
        + f" {'ms/write':>9}"
    )
    print(header)
    print("-" * len(header))

    report = {2, 4, 8} | {s for s in range(16, num_segments + 1, 16)}
    report.add(num_segments)
    state = ltm.get_initial_state(batch_size=batch)
    times = []
    for written, segment in enumerate(segments, start=1):
        start = time.perf_counter()
        state = ltm.write(segment, state)
        ops.convert_to_numpy(state["coefficients"][0, 0, 0])  # wait for it
        times.append(time.perf_counter() - start)
        if written not in report:
            continue
        cells = []
        for age in AGES:
            # The very first write sits at cell midpoints; skip it.
            ok = written - 1 - age >= 1
            cells.append(f"{error(state, written, age):7.4f}" if ok else "-")
        floats = int(np.prod(state["coefficients"].shape[1:]))
        recent = 1e3 * float(np.median(times[-8:]))
        print(
            f"{written * length:>7} {floats:>10} "
            + " ".join(f"{c:>7}" for c in cells)
            + f" {recent:>9.2f}"
        )

    print(
        "floats/row: the memory's size, N × e. ms/write: median wall time of "
        "the last 8 writes (the first builds the constants)."
    )

    # Continuous attention: each query of each head reads a Gaussian window.
    query = (
        np.random.default_rng(1)
        .normal(size=(batch, 3, num_heads, key_dim))
        .astype("float32")
    )  # (B, Lq, H, d)
    output = ltm.read(query, state)  # (B, Lq, e)
    mu, variance = ltm.density(query, state)  # (B, H, Lq) each
    mu, variance = ops.convert_to_numpy(mu), ops.convert_to_numpy(variance)
    print(
        f"read: query {tuple(query.shape)} -> output {tuple(output.shape)}; "
        f"μ in [{mu.min():.3f}, {mu.max():.3f}], "
        f"σ² in [{variance.min():.2g}, {variance.max():.2g}]"
    )
    return state


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick", action="store_true", help="a short stream (for tests)"
    )
    main(quick=parser.parse_args().quick)
