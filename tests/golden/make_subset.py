"""Regenerates the golden subset in tests/golden/ from the full golden set.

The full set holds the outputs of the authors' PyTorch module
(``deep-spin/infinite-former``, ``long_term_attention.py`` of its GPT-2
copy) run in float64 on six cases; see ``README.md`` in this folder. It is
about 9 MB, too much for the repository, so we ship the leading steps of
every case (and its leading batch rows) with the keys the tests read,
float64 as recorded, and the constant matrices of both geometries: about
3.5 MB in all.

Usage::

    python tests/golden/make_subset.py FULL_SET_DIR [--output tests/golden]

Every kept array is a plain slice of the recorded one (leading steps and
batch rows), so the subset checks the same numbers the full set does, on
fewer segments. ``tests/layers/test_continuous_ltm_golden.py`` checks that again
whenever the full set is present.
"""

import argparse
import os

import numpy as np

# Case -> (leading steps, leading batch rows) kept. Each case keeps at
# least one write into an existing memory; the reset case keeps its reset
# (step 3); the sticky case keeps two writes with the recorded draws, and
# both batch rows, whose draws differ.
SUBSET = {
    "gpt2_nomask": (3, 1),  # gate off
    "gpt2_cnnmask": (3, 1),  # gate on
    "gpt2_sticky": (3, 2),  # sticky memories, recorded sample positions
    "gpt2_reset": (4, 1),  # the authors' counter reset at step 3; Lq != L
    "gpt2_nomemory": (2, 1),  # no state: every step is a first write
    "gpt2_fine": (2, 1),  # N 256, L 128, M 128: realistic conditioning
}
# Per-case keys (kept whole): configuration, parameters, constants name.
CASE_PREFIXES = ("cfg_", "param_")
CASE_KEYS = ("constants_file",)
# Per-step keys: (steps, batch, ...), sliced to the leading steps and rows.
STEP_KEYS = (
    "in_x",
    "in_q",
    "step_B",
    "step_mu",
    "step_sigma_sq",
    "step_out",
    "step_kl",
    "step_kl_variance_only",
)
STICKY_STEP_KEYS = (
    "step_attn_past_mu",
    "step_attn_past_sigma",
    "step_hist",
    "step_positions",
)
CONSTANT_KEYS = ("basis_centers", "basis_widths", "G_L", "G_inf", "S")


def subset_case(case, steps, rows):
    """The subset of one case file's arrays (a dict of arrays)."""
    total_steps, total_rows = int(case["cfg_steps"]), int(case["cfg_batch"])
    if not 0 < steps <= total_steps:
        raise ValueError(
            f"`steps` must be in [1, {total_steps}]. Received: steps={steps}"
        )
    if not 0 < rows <= total_rows:
        raise ValueError(
            f"`rows` must be in [1, {total_rows}]. Received: rows={rows}"
        )
    out = {
        key: value
        for key, value in case.items()
        if key.startswith(CASE_PREFIXES) or key in CASE_KEYS
    }
    step_keys = STEP_KEYS + (STICKY_STEP_KEYS if case["cfg_sticky"] else ())
    for key in step_keys:
        if key not in case:
            raise KeyError(f"case file lacks `{key}`")
        out[key] = case[key][:steps, :rows]
    out["has_memory_before"] = case["has_memory_before"][:steps]  # (S,)
    out["cfg_steps"] = np.asarray(steps, case["cfg_steps"].dtype)
    out["cfg_batch"] = np.asarray(rows, case["cfg_batch"].dtype)
    # Where the subset came from: the full case's steps and rows.
    out["subset_of_steps"] = np.asarray(total_steps, np.int64)
    out["subset_of_batch"] = np.asarray(total_rows, np.int64)
    return out


def make_subset(source, output):
    """Writes the subset of the full set in ``source`` to ``output``."""
    os.makedirs(output, exist_ok=True)
    constants_files = set()
    for name, (steps, rows) in SUBSET.items():
        with np.load(os.path.join(source, name + ".npz")) as data:
            case = {key: data[key] for key in data.files}
        subset = subset_case(case, steps, rows)
        np.savez_compressed(os.path.join(output, name + ".npz"), **subset)
        constants_files.add(str(case["constants_file"]))
    for name in sorted(constants_files):
        with np.load(os.path.join(source, name)) as data:
            constants = {key: data[key] for key in CONSTANT_KEYS}
        np.savez_compressed(os.path.join(output, name), **constants)
    return sorted([n + ".npz" for n in SUBSET] + list(constants_files))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("source", help="folder of the full golden set")
    parser.add_argument(
        "--output",
        default=os.path.dirname(os.path.abspath(__file__)),
        help="where to write the subset (default: this folder)",
    )
    args = parser.parse_args()
    total = 0
    for name in make_subset(args.source, args.output):
        size = os.path.getsize(os.path.join(args.output, name))
        total += size
        print(f"{name}: {size / 1e3:.0f} kB")
    print(f"total: {total / 1e6:.2f} MB")


if __name__ == "__main__":
    main()
