"""Every reference in the repository can be followed from a clone of it.

Comments and docs cite the math by ``docs/math.md §n``; nothing may cite
the project's private specification or point into folders outside the
repository (the golden data the tests need ships in ``tests/golden``).
"""

import os
import re

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
# Citations of a file the reader does not have, and paths out of the clone.
OUTSIDE = re.compile(r"\bSPEC\b|\.\./shared|shared/reference|shared/SPEC")
# Not part of the repository: environments, builds, caches, run outputs.
_SKIP_TOP = {".git", ".venv", ".site", "site", "build", "dist", "runs"}
_SKIP_TOP |= {"results"}
_SKIP_ANY = {"__pycache__", ".pytest_cache", ".hypothesis", ".ruff_cache"}
_THIS_FILE = os.path.relpath(os.path.abspath(__file__), ROOT)


def repository_files():
    for directory, subdirectories, files in os.walk(ROOT):
        relative = os.path.relpath(directory, ROOT)
        subdirectories[:] = sorted(
            name
            for name in subdirectories
            if name not in _SKIP_ANY
            and not name.endswith(".egg-info")
            and not (relative == "." and name in _SKIP_TOP)
        )
        for name in sorted(files):
            yield os.path.normpath(os.path.join(relative, name))


def outside_references(path):
    """``(line number, line)`` of each line of ``path`` that points outside
    the repository; none for binary files."""
    try:
        with open(os.path.join(ROOT, path), encoding="utf-8") as f:
            lines = f.read().splitlines()
    except UnicodeDecodeError:
        return []
    return [
        (number, line.strip())
        for number, line in enumerate(lines, 1)
        if OUTSIDE.search(line)
    ]


def test_pattern_catches_the_old_citations():
    for line in (
        "(SPEC §2)",
        "see ../shared/reference",
        "kept in `shared/reference`",
    ):
        assert OUTSIDE.search(line), line
    for line in ("(docs/math.md §2)", "PartitionSpec('batch')", "specs"):
        assert not OUTSIDE.search(line), line


def test_no_reference_points_outside_the_repository():
    found = {
        path: hits
        for path in repository_files()
        if path != _THIS_FILE
        for hits in [outside_references(path)]
        if hits
    }
    assert not found, "\n".join(
        f"{path}:{number}: {line}"
        for path, hits in found.items()
        for number, line in hits
    )
