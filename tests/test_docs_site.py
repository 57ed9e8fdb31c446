"""The documentation site builds, and its API reference renders properly.

Builds the site once (``mkdocs build --strict``) and reads the API page's
HTML: docstring examples must be code blocks (Markdown would otherwise read
each ``>>>`` as nested blockquotes and join the lines), "Call arguments"
a list of the documented names, and every public module must have its
section.
"""

import html.parser
import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
# Every public module of the package, each with a section in docs/api.md.
# GPT-2: add the new package's public modules here (and in docs/api.md).
MODULES = (
    "keras_infmemory",
    "keras_infmemory.basis",
    "keras_infmemory.layers",
    "keras_infmemory.layers.segment_memory",
    "keras_infmemory.layers.compressive_memory",
    "keras_infmemory.layers.memory_constants",
    "keras_infmemory.layers.ltm_options",
    "keras_infmemory.layers.attention",
    "keras_infmemory.layers.block_state",
    "keras_infmemory.segments",
    "keras_infmemory.models.inf_former_lm",
    "keras_infmemory.models.sorting",
    "keras_infmemory.models.options",
    "keras_infmemory.models.hub",
    "keras_infmemory.models.hub.families",
    "keras_infmemory.models.hub.attach",
    "keras_infmemory.models.hub.causal_lm",
    "keras_infmemory.models.hub.backbone",
    "keras_infmemory.models.hub.decoder_memory",
    "keras_infmemory.models.hub.classes",
    "keras_infmemory.optimizers",
    "keras_infmemory.data.sorting",
    "keras_infmemory.data.documents",
    "keras_infmemory.data.tokenizers",
    "keras_infmemory.data.corpora",
    "keras_infmemory.data.cmu_dog",
    "keras_infmemory.data.grounded",
    "keras_infmemory.dialogue",
    "keras_infmemory.evaluation",
    "keras_infmemory.memory_map",
    "keras_infmemory.checkpoint",
    "keras_infmemory.plotting",
    "keras_infmemory.records",
    "keras_infmemory.interop",
    "keras_infmemory.state",
    "keras_infmemory.distribution",
    "keras_infmemory.validation",
)
# Classes whose docstrings have a "Call arguments:" section: (source, id).
CALL_ARGUMENTS = (
    ("keras_infmemory/layers/continuous_ltm.py", "ContinuousLTM"),
    ("keras_infmemory/layers/sticky_memory_sampler.py", "StickyMemorySampler"),
    ("keras_infmemory/layers/inf_former_block.py", "InfFormerBlock"),
)


@pytest.fixture(scope="module")
def api_html(tmp_path_factory):
    for module in ("mkdocs", "mkdocstrings_handlers.python", "material"):
        pytest.importorskip(module, reason="the docs extras are not installed")
    site = tmp_path_factory.mktemp("site")
    env = dict(os.environ, NO_MKDOCS_2_WARNING="1")
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (ROOT, env.get("PYTHONPATH")) if p
    )
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict"]
        + ["--site-dir", str(site)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    with open(site / "api" / "index.html", encoding="utf-8") as f:
        return f.read()


class _Text(html.parser.HTMLParser):
    """Each run of text with the tags open around it."""

    def __init__(self):
        super().__init__()
        self.open = []
        self.runs = []

    def handle_starttag(self, tag, attrs):
        if tag not in ("br", "img", "hr", "input", "meta", "link"):
            self.open.append(tag)

    def handle_endtag(self, tag):
        if tag in self.open:  # close it and anything left open inside it
            del self.open[len(self.open) - 1 - self.open[::-1].index(tag) :]

    def handle_data(self, data):
        self.runs.append((tuple(self.open), data))


def text_runs(page):
    parser = _Text()
    parser.feed(page)
    return parser.runs


def test_examples_render_as_code(api_html):
    prompts = [
        (tags, text) for tags, text in text_runs(api_html) if ">>>" in text
    ]
    # The examples of the layers, the models and the data modules at least.
    assert len(prompts) >= 20
    for tags, text in prompts:
        assert "blockquote" not in tags, text
        assert "pre" in tags and "code" in tags, (tags, text)
    assert "&gt;&gt;&gt;" not in re.sub(
        r"<pre>.*?</pre>", "", api_html, flags=re.DOTALL
    )


def _documented_call_arguments(path):
    with open(os.path.join(ROOT, path), encoding="utf-8") as f:
        source = f.read()
    block = source.split("    Call arguments:\n", 1)[1].split("\n\n", 1)[0]
    return re.findall(r"^ {8}(\w+):", block, flags=re.MULTILINE)


@pytest.mark.parametrize("path, name", CALL_ARGUMENTS)
def test_call_arguments_render_as_a_list(api_html, path, name):
    section = api_html.split(f'id="keras_infmemory.{name}"', 1)[1]
    section = section.split('class="doc doc-children"', 1)[0]
    found = re.search(
        r"Call arguments:</span></p>\s*<ul>(.*?)</ul>", section, re.DOTALL
    )
    assert found, f"no list under 'Call arguments:' in {name}"
    items = re.findall(r"<li[^>]*>\s*<b><code>(\w+)</code></b>", found[1])
    expected = _documented_call_arguments(path)
    assert expected and items == expected


@pytest.mark.parametrize("module", MODULES)
def test_every_public_module_has_a_section(api_html, module):
    assert re.search(rf'<h[2-4] id="{re.escape(module)}"', api_html), module


def test_api_page_lists_every_module_of_the_package():
    """A new public module must be added to MODULES (and so to the page)."""
    package = os.path.join(ROOT, "keras_infmemory")
    found = set()
    for directory, _, files in os.walk(package):
        if "__pycache__" in directory:
            continue
        relative = os.path.relpath(directory, ROOT).replace(os.sep, ".")
        for name in files:
            if name == "__init__.py":
                found.add(relative)
            elif name.endswith(".py") and not name.startswith("_"):
                found.add(f"{relative}.{name[:-3]}")
    # Packages documented through their modules.
    covered_elsewhere = {
        "keras_infmemory.models",
        "keras_infmemory.data",
        "keras_infmemory.layers.continuous_ltm",
        "keras_infmemory.layers.sticky_memory_sampler",
        "keras_infmemory.layers.inf_former_block",
    }
    missing = found - set(MODULES) - covered_elsewhere
    assert not missing, sorted(missing)
