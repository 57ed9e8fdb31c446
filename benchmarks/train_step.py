"""What the value checks cost a training step (eager torch by default).

    python benchmarks/train_step.py                  # torch, the records
    python benchmarks/train_step.py --quick          # tiny, smoke test
    KERAS_BACKEND=jax python benchmarks/train_step.py   # another backend

Checks that read tensor values (NaN/inf) copy a tensor to the host; in an
eager training step (torch) they ran at every layer and segment until they
moved behind a debug switch (`keras_infmemory.validation.set_value_checks`).
This benchmark times ``train_on_batch`` of two models with the switch off
(the default) and on (what every step paid before), interleaved in one
process:

* the sorting transformer, ``"cpu"`` scale, ∞-former arm, 1,088 tokens
  (17 segments of 64), batch 16;
* a GPT-2 (4 layers, hidden 128) with a memory in every layer, 4 segments
  of 128 tokens, batch 4.

Writes ``benchmarks/results/train_step.{json,md}``.
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("KERAS_BACKEND", "torch")  # the eager step
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from benchmarks import common  # noqa: E402


def models(quick):
    import keras
    import keras_hub
    import numpy as np

    from experiments.sorting import compile_arguments, sorting_transformer
    from keras_infmemory.models import attach_memory
    from keras_infmemory.optimizers import MemoryAdamW

    rng = np.random.default_rng(0)
    keras.utils.set_random_seed(0)
    overrides = dict(num_layers=1, hidden_dim=16) if quick else {}
    sorting = sorting_transformer("inf_former", scale="cpu", **overrides)
    sorting.compile(**compile_arguments("cpu", steps=100))
    length, batch = (128, 2) if quick else (1024 + 64, 16)
    x = rng.integers(0, 20, size=(batch, length)).astype("int32")
    y = rng.integers(0, 20, size=(batch, length)).astype("int32")
    w = np.zeros((batch, length), "float32")
    w[:, -20:] = 1
    yield "sorting (cpu scale, ∞-former)", sorting, (x, y, w)

    hidden, segment = (16, 16) if quick else (128, 128)
    backbone = keras_hub.models.GPT2Backbone(
        vocabulary_size=256 if quick else 2048,
        num_layers=1 if quick else 4,
        num_heads=2 if quick else 4,
        hidden_dim=hidden,
        intermediate_dim=4 * hidden,
        max_sequence_length=segment,
    )
    gpt2 = attach_memory(
        keras_hub.models.GPT2CausalLM(backbone, None),
        segment_length=segment,
        **(dict(num_basis=16, num_samples=16) if quick else {}),
    )
    gpt2.compile(
        optimizer=MemoryAdamW(learning_rate=1e-4),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    ids = rng.integers(1, 200, size=(2 if quick else 4, 4 * segment))
    ids = ids.astype("int32")
    inputs = {"token_ids": ids, "padding_mask": np.ones_like(ids)}
    yield "GPT-2 4×128 with memory, 4 segments", gpt2, (inputs, ids, None)


def worker(repeats, quick):
    import keras

    from keras_infmemory import validation

    rows = []
    for name, model, (x, y, w) in models(quick):

        def step(checks, model=model, x=x, y=y, w=w):
            def run():
                previous = validation.set_value_checks(checks)
                try:
                    model.train_on_batch(x, y, sample_weight=w)
                finally:
                    validation.set_value_checks(previous)

            return run

        times = common.measure_interleaved(
            {"off": step(False), "on": step(True)},
            repeats=repeats,
            warmup=2,
        )
        rows.append(
            {
                "model": name,
                "seconds_checks_off": times["off"],
                "seconds_checks_on": times["on"],
                "ratio_on_over_off": times["on"] / times["off"],
            }
        )
        print(
            f"{name}: {times['off'] * 1e3:.0f} ms a step (value checks "
            f"off, the default); {times['on'] * 1e3:.0f} ms with them on "
            f"({times['on'] / times['off']:.2f}×)"
        )
    return {"backend": keras.backend.backend(), "rows": rows}


def main(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--repeats", type=int, default=8, help="steps timed")
    parser.add_argument(
        "--quick", action="store_true", help="tiny models (smoke test)"
    )
    args = parser.parse_args(argv)
    load_start = common.loadavg()
    result = worker(2 if args.quick else args.repeats, args.quick)
    out = common.output_dir(args.quick)
    command = (
        f"KERAS_BACKEND={result['backend']} python benchmarks/train_step.py"
        + (" --quick" if args.quick else "")
    )
    common.write_record(
        out,
        "train_step",
        command,
        (load_start, common.loadavg()),
        **result,
    )
    table = common.markdown_table(
        ["model", "step, checks off (s)", "checks on (s)", "on / off"],
        [
            [
                r["model"],
                f"{r['seconds_checks_off']:.3f}",
                f"{r['seconds_checks_on']:.3f}",
                f"{r['ratio_on_over_off']:.2f}",
            ]
            for r in result["rows"]
        ],
    )
    with open(os.path.join(out, "train_step.md"), "w") as f:
        f.write(
            f"# Training step and value checks ({result['backend']})\n\n"
            f"`{command}`\n\n{table}\n"
        )
    print(f"wrote {os.path.join(out, 'train_step.md')}")
    return result


if __name__ == "__main__":
    main()
