"""Imports point one way: math → layers → models → experiments → examples
and benchmarks.

Read from the source (every ``import`` statement, also those inside
functions), so an import that runs only on some path is caught too.
"""

import ast
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# The library's math and support modules: they build on Keras alone.
FOUNDATION = (
    "keras_infmemory.basis",
    "keras_infmemory.segments",
    "keras_infmemory.state",
    "keras_infmemory.validation",
)


def modules(package):
    """``{module name: [imported module names]}`` for a package's files."""
    found = {}
    for folder, _, files in os.walk(os.path.join(ROOT, package)):
        for name in sorted(files):
            if not name.endswith(".py"):
                continue
            path = os.path.join(folder, name)
            module = os.path.relpath(path, ROOT)[: -len(".py")]
            module = module.replace(os.sep, ".").removesuffix(".__init__")
            with open(path, encoding="utf-8") as f:
                tree = ast.parse(f.read(), path)
            imported = []
            for node in ast.walk(tree):
                if isinstance(node, ast.Import):
                    imported += [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom) and node.module:
                    imported.append(node.module)
                    imported += [
                        f"{node.module}.{alias.name}" for alias in node.names
                    ]
            found[module] = imported
    return found


def offenders(package, rule):
    return sorted(
        f"{module} imports {name}"
        for module, names in modules(package).items()
        for name in names
        if rule(module, name)
    )


def under(name, *prefixes):
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def test_modules_are_read():
    library = modules("keras_infmemory")
    assert "keras_infmemory.layers.continuous_ltm" in library
    assert "keras_infmemory.basis" in library["keras_infmemory.memory_map"]
    assert "experiments.data.sorting" in modules("experiments")


def test_the_library_never_imports_the_experiments():
    assert not offenders(
        "keras_infmemory",
        lambda _, name: under(
            name, "experiments", "examples", "benchmarks", "tests"
        ),
    )


@pytest.mark.parametrize("module", FOUNDATION)
def test_the_math_imports_no_layer_and_no_model(module):
    found = modules("keras_infmemory")[module]
    assert not [
        name
        for name in found
        if under(name, "keras_infmemory.layers", "keras_infmemory.models")
    ]


def test_layers_never_import_models():
    assert not offenders(
        "keras_infmemory",
        lambda module, name: (
            under(module, "keras_infmemory.layers")
            and under(name, "keras_infmemory.models")
        ),
    )


def test_data_never_imports_models():
    """The tasks and readers are NumPy: no model of the library, nor the
    experiments' model code (recipes, tokenizers of model families)."""
    assert not offenders(
        "experiments",
        lambda module, name: (
            under(module, "experiments.data")
            and (
                under(name, "keras_infmemory.models", "keras_hub")
                or (
                    under(name, "experiments")
                    and not under(name, "experiments.data")
                )
            )
        ),
    )
