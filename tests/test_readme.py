"""The README and the docs are tests: their ```python blocks run.

The blocks of one file run in order and share their names, as a reader
would paste them. One test per block; running a block runs the blocks of
its file before it first, so each test also works on its own. An HTML
comment just above a block limits it:

* ``<!-- skip: needs the gpt2_base_en download -->`` skips it, with that
  reason (downloads, accelerators);
* ``<!-- backends: jax -->`` runs it on the listed backends only.
"""

import glob
import os
import re

import keras
import pytest

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
_BLOCK = re.compile(
    r"(?:^<!--\s*(?P<kind>skip|backends):\s*(?P<value>.*?)\s*-->\s*\n)?"
    r"^```python\n(?P<code>.*?)^```",
    re.DOTALL | re.MULTILINE,
)


def markdown_files():
    paths = [os.path.join(ROOT, "README.md")]
    paths += sorted(glob.glob(os.path.join(ROOT, "docs", "*.md")))
    return [os.path.relpath(p, ROOT).replace(os.sep, "/") for p in paths]


def python_blocks(path, root=ROOT):
    """``(code, skip reason or None)`` of each ```python block of a file."""
    with open(os.path.join(root, path), encoding="utf-8") as f:
        text = f.read()
    blocks = []
    for match in _BLOCK.finditer(text):
        kind, value = match["kind"], match["value"]
        reason = None
        if kind == "skip":
            reason = value
        elif kind == "backends":
            backends = [b.strip() for b in value.split(",")]
            if keras.backend.backend() not in backends:
                reason = f"runs on {', '.join(backends)} only"
        blocks.append((match["code"], reason))
    return blocks


def _cases():
    """A page's blocks show the library, whose behaviour is tested on every
    backend: each page runs once (``one_backend``), unless a block names
    its backends (then the page runs on all three)."""
    for path in markdown_files():
        with open(os.path.join(ROOT, path), encoding="utf-8") as f:
            named = "<!-- backends:" in f.read()
        marks = () if named else pytest.mark.one_backend
        for index in range(len(python_blocks(path))):
            yield pytest.param(
                path, index, id=f"{path}:{index + 1}", marks=marks
            )


# path -> {"namespace": ..., "done": blocks run, "failed": a block's name}
_RUNS = {}


def _run_through(path, index):
    """Runs the blocks of ``path`` up to ``index``, from where it left off."""
    blocks = python_blocks(path)
    run = _RUNS.setdefault(
        path, {"namespace": {"__name__": "docs"}, "done": 0, "failed": None}
    )
    while run["done"] <= index:
        number = run["done"]
        run["done"] += 1
        code, reason = blocks[number]
        if run["failed"] is not None:
            pytest.fail(f"an earlier block failed: {run['failed']}")
        if reason is not None:
            continue
        name = f"{path}, python block {number + 1}"
        try:
            exec(compile(code, name, "exec"), run["namespace"])
        except Exception:
            run["failed"] = name
            raise


def test_markdown_files_have_python_blocks():
    assert len(python_blocks("README.md")) >= 3
    assert sum(len(python_blocks(p)) for p in markdown_files()) >= 10


def test_markers_are_parsed(tmp_path):
    page = tmp_path / "page.md"
    page.write_text(
        "```python\na = 1\n```\n\n"
        "<!-- skip: needs a download -->\n```python\nb = 2\n```\n"
        "<!-- backends: no-such-backend -->\n```python\nc = 3\n```\n",
        encoding="utf-8",
    )
    assert python_blocks("page.md", root=tmp_path) == [
        ("a = 1\n", None),
        ("b = 2\n", "needs a download"),
        ("c = 3\n", "runs on no-such-backend only"),
    ]


@pytest.mark.parametrize("path, index", list(_cases()))
def test_python_block_runs(path, index):
    _run_through(path, index)
    reason = python_blocks(path)[index][1]
    if reason is not None:
        pytest.skip(f"{path}, python block {index + 1}: {reason}")


def test_make_demo_is_described_as_the_makefile_runs_it():
    with open(os.path.join(ROOT, "Makefile"), encoding="utf-8") as f:
        recipe = re.search(r"^demo:.*\n((?:\t.*\n)+)", f.read(), re.M)[1]
    scripts = set(re.findall(r"examples/\w+\.py", recipe))
    assert len(scripts) == 1, recipe
    for path in markdown_files():
        with open(os.path.join(ROOT, path), encoding="utf-8") as f:
            for number, line in enumerate(f, 1):
                if "make demo" in line:
                    named = set(re.findall(r"examples/\w+\.py", line))
                    assert named <= scripts, f"{path}:{number}: {line}"
