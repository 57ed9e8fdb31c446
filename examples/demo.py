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

Run (any ``KERAS_BACKEND``; about half a minute on two CPU cores)::

    python examples/demo.py            # 96 segments of 256 tokens
    python examples/demo.py --quick    # 10 segments of 128: seconds

It ends with the table of errors by tokens absorbed, a one-line verdict
(one run: what comes back and what fades) and the path of its JSON record
(``<output>/demo.json``).
"""

import argparse
import os
import time

os.environ.setdefault("KERAS_BACKEND", "jax")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from experiments.console import (  # noqa: E402
    native_notices_held_back,
    set_random_seed,
)

with native_notices_held_back():  # TensorFlow's load notices
    import keras
    import numpy as np
    from keras import ops

    import keras_infmemory
    from experiments.records import finish, markdown_table, write_json
    from keras_infmemory import basis

# Reconstruct the segments written this many writes ago.
AGES = (0, 1, 2, 4, 6, 8)
# A relative L2 error from which on the verdict calls a segment faded.
FADED = 0.1


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


def verdict(rows):
    """One line on the last row: what the memory gives back, what fades."""
    tokens, floats = rows[-1]["tokens"], rows[-1]["floats_per_row"]
    errors = {age: e for age, e in rows[-1]["errors"].items() if e is not None}
    kept = [age for age, e in errors.items() if e < FADED]
    faded = ", ".join(
        f"k={age}: {e:.3f}" for age, e in errors.items() if e >= FADED
    )
    line = (
        f"One run: after {tokens} tokens the memory still holds {floats} "
        f"floats per row and gives back the segments written 0–{max(kept)} "
        f"writes ago within {max(errors[a] for a in kept):.3f} relative error"
    )
    return line + (f"; older ones fade ({faded})" if faded else "")


def main(quick=False, folder="results/demo"):
    length = 128 if quick else 256  # tokens per segment
    num_segments = 10 if quick else 96
    num_heads, key_dim = 4, 8  # e = 32 channels
    batch = 2
    rng = np.random.default_rng(0)
    set_random_seed(0)  # the layer's initial weights

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

    report = {2, 4, 8} | {s for s in range(16, num_segments + 1, 16)}
    report.add(num_segments)
    state = ltm.get_initial_state(batch_size=batch)
    times, rows = [], []
    for written, segment in enumerate(segments, start=1):
        start = time.perf_counter()
        state = ltm.write(segment, state)
        ops.convert_to_numpy(state["coefficients"][0, 0, 0])  # wait for it
        times.append(time.perf_counter() - start)
        if written not in report:
            continue
        # The very first write sits at cell midpoints: skipped.
        errors = [
            error(state, written, age) if written - age >= 2 else None
            for age in AGES
        ]
        floats = int(np.prod(state["coefficients"].shape[1:]))  # N × e
        recent = 1e3 * float(np.median(times[-8:]))  # ms per write
        rows.append(
            {
                "tokens": written * length,
                "floats_per_row": floats,
                "errors": dict(zip(AGES, errors, strict=True)),
                "ms_per_write": recent,
            }
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
        f"σ² in [{variance.min():.2g}, {variance.max():.2g}]\n"
    )

    table = markdown_table(
        ["tokens", "floats/row", *(f"k={age}" for age in AGES), "ms/write"],
        [
            [row["tokens"], row["floats_per_row"]]
            + ["–" if e is None else f"{e:.4f}" for e in row["errors"].values()]
            + [f"{row['ms_per_write']:.2f}"]
            for row in rows
        ],
    )
    table += (
        "\n\nk=…: relative L2 error of the segment written k writes ago; "
        "floats/row: N × e; ms/write: median of the last 8 writes."
    )
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, "demo.json")
    names = ("num_basis", "basis_widths", "ridge_penalty", "tau")
    record = {
        "backend": keras.backend.backend(),
        "memory": {name: getattr(ltm, name) for name in names},
        "segment_length": length,
        "rows": rows,
        "verdict": verdict(rows),
    }
    write_json(record, path, indent=2)
    finish(table, record["verdict"], [path])
    return state


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        epilog="A quick look (seconds): --quick.",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="10 segments of 128 tokens, not 96 of 256 (default: off)",
    )
    parser.add_argument(
        "--output",
        default="results/demo",
        help="folder of demo.json (default: %(default)s)",
    )
    args = parser.parse_args()
    main(quick=args.quick, folder=args.output)
