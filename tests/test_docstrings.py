"""Docstring examples and the demo script run as tests."""

import doctest
import importlib
import os
import re
import subprocess
import sys

import pytest

MODULES = [
    "keras_infmemory.basis",
    "keras_infmemory.interop",
    "keras_infmemory.state",
    "keras_infmemory.segments",
    "keras_infmemory.validation",
    "keras_infmemory.optimizers",
    "keras_infmemory.layers.continuous_ltm",
    "keras_infmemory.layers.sticky_memory_sampler",
    "keras_infmemory.layers.compressive_memory",
    "keras_infmemory.models.hub.attach",
    "experiments.tokenizers",
    "keras_infmemory.plotting",
    "experiments.data.cmu_dog",
    "experiments.data.grounded",
    "experiments.dialogue",
    "experiments.evaluation",
    "keras_infmemory.memory_map",
    "experiments.records",
]
ROOT = os.path.join(os.path.dirname(__file__), "..")
FLAGS = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE
# torch and TensorFlow print a shape as torch.Size([3, 5]) / TensorShape([3,
# 5]); the docstrings show the tuple every backend compares equal to.
_SHAPE = re.compile(r"(?:torch\.Size|TensorShape)\(\[([^\]]*)\]\)")


class _ShapeChecker(doctest.OutputChecker):
    def check_output(self, want, got, optionflags):
        got = _SHAPE.sub(lambda m: f"({m.group(1)})", got)
        return super().check_output(want, got, optionflags)


def _doctests():
    finder = doctest.DocTestFinder(exclude_empty=True)
    for name in MODULES:
        module = importlib.import_module(name)
        for test in finder.find(module, name, globs={}):
            if test.examples:
                yield pytest.param(test, id=test.name)


DOCTESTS = list(_doctests())


def test_modules_have_docstring_examples():
    """The public classes and the weight loader each carry an example."""
    names = {param.values[0].name for param in DOCTESTS}
    for expected in (
        "keras_infmemory.layers.continuous_ltm.ContinuousLTM",
        "keras_infmemory.layers.sticky_memory_sampler.StickyMemorySampler",
        "keras_infmemory.interop.load_reference_weights",
    ):
        assert expected in names


@pytest.mark.parametrize("test", DOCTESTS)
def test_docstring_example(test):
    runner = doctest.DocTestRunner(
        checker=_ShapeChecker(), optionflags=FLAGS, verbose=False
    )
    report = []
    runner.run(test, out=report.append)
    result = runner.summarize(verbose=False)
    assert result.failed == 0, "".join(report)


def test_demo_quick():
    env = dict(os.environ)
    env.setdefault("KERAS_BACKEND", "jax")
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in [os.path.abspath(ROOT), env.get("PYTHONPATH")] if p
    )
    result = subprocess.run(
        [sys.executable, os.path.join(ROOT, "examples", "demo.py"), "--quick"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    out = result.stdout
    assert f"backend {env['KERAS_BACKEND']}" in out
    assert "floats/row" in out and "read: query" in out
