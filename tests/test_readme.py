"""The README is a test: its ```python blocks run in order, sharing names."""

import os
import re

import pytest

README = os.path.join(os.path.dirname(__file__), "..", "README.md")
_BLOCK = re.compile(r"^```python\n(.*?)^```", re.DOTALL | re.MULTILINE)


def python_blocks():
    with open(README, encoding="utf-8") as f:
        return _BLOCK.findall(f.read())


def test_readme_has_python_blocks():
    assert len(python_blocks()) >= 3


def test_readme_python_blocks_run():
    namespace = {"__name__": "readme"}
    for index, block in enumerate(python_blocks()):
        code = compile(block, f"README.md, python block {index + 1}", "exec")
        try:
            exec(code, namespace)
        except Exception as error:  # name the block that failed
            pytest.fail(f"README python block {index + 1} failed: {error!r}")
