"""Docstring examples and the demo script run as tests."""

import doctest
import importlib
import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.join(os.path.dirname(__file__), "..")


def _modules():
    """Every module of the library and of the experiments beside it whose
    source holds a docstring example (``>>>``): a new one is run too."""
    for package in ("keras_infmemory", "experiments"):
        for folder, _, files in os.walk(os.path.join(ROOT, package)):
            for name in sorted(files):
                path = os.path.join(folder, name)
                if not name.endswith(".py"):
                    continue
                with open(path, encoding="utf-8") as f:
                    if ">>>" not in f.read():
                        continue
                module = os.path.relpath(path, ROOT)[: -len(".py")]
                yield module.replace(os.sep, ".").removesuffix(".__init__")


MODULES = sorted(_modules())
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
        for test in finder.find(module, name):  # module globals, as testmod
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


@pytest.mark.slow
@pytest.mark.one_backend
def test_demo_quick(tmp_path):
    env = dict(os.environ)
    env.setdefault("KERAS_BACKEND", "jax")
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in [os.path.abspath(ROOT), env.get("PYTHONPATH")] if p
    )
    result = subprocess.run(
        [
            sys.executable,
            os.path.join(ROOT, "examples", "demo.py"),
            "--quick",
            "--output",
            str(tmp_path),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    out = result.stdout
    assert f"backend {env['KERAS_BACKEND']}" in out
    assert "floats/row" in out and "read: query" in out
    assert "One run: after" in out and "wrote:" in out
    assert (tmp_path / "demo.json").exists()
