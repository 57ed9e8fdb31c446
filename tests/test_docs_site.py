"""The documentation site builds, and its API reference renders properly.

Builds the site once (``mkdocs build --strict``) and reads the API page's
HTML: docstring examples must be code blocks (Markdown would otherwise read
each ``>>>`` as nested blockquotes and join the lines), "Call arguments"
a list of the documented names, references such as ``docs/math.md §4``
links to that page and section of the site, and the page documents the
public API (`keras_infmemory.__all__`), every name of it and nothing else.
"""

import html.parser
import importlib.util
import os
import posixpath
import re
import subprocess
import sys

import pytest

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))

# The site is built by MkDocs from the sources: the same on every backend
# (tests/conftest.py).
pytestmark = pytest.mark.one_backend


# The public API (`keras_infmemory.__all__`): each module and layer has a
# section in docs/api.md; the KerasHub adapter is public through
# `keras_infmemory.models.hub`.
def public_sections():
    import keras_infmemory

    sections = {"keras_infmemory", "keras_infmemory.models.hub"}
    sections |= {f"keras_infmemory.{name}" for name in keras_infmemory.__all__}
    return sections


# Classes whose docstrings have a "Call arguments:" section: (source, id).
CALL_ARGUMENTS = (
    ("keras_infmemory/layers/continuous_ltm.py", "ContinuousLTM"),
    ("keras_infmemory/layers/sticky_memory_sampler.py", "StickyMemorySampler"),
    ("keras_infmemory/layers/inf_former_block.py", "InfFormerBlock"),
)


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """The built site's folder."""
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
    return site


@pytest.fixture(scope="module")
def api_html(site):
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


class _Links(html.parser.HTMLParser):
    """Each link's ``href`` and text."""

    def __init__(self):
        super().__init__()
        self.links = []
        self._href = None

    def handle_starttag(self, tag, attrs):
        if tag == "a":
            self._href = dict(attrs).get("href")
            self.links.append([self._href, ""])

    def handle_endtag(self, tag):
        if tag == "a":
            self._href = None

    def handle_data(self, data):
        if self._href is not None:
            self.links[-1][1] += data


_DOCS_PATH = re.compile(r"docs/[a-z_]+\.md")


def test_docstring_references_to_the_docs_are_links(site, api_html):
    """Docstrings cite the docs as ``docs/math.md §4`` (a path from the
    repository's root, for ``help()``); on the site each is a link to that
    page, and to the section's anchor, which must exist."""
    for tags, text in text_runs(api_html):
        if _DOCS_PATH.search(text):
            assert "a" in tags, f"not a link: {text!r} in {tags}"
    parser = _Links()
    parser.feed(api_html)
    links = [(h, t) for h, t in parser.links if _DOCS_PATH.match(t)]
    assert len(links) >= 20  # math.md sections, sticky_memories.md, ...
    assert any("#s" in href for href, _ in links)
    for href, text in links:
        path, _, anchor = href.partition("#")
        page = posixpath.normpath(posixpath.join("api", path))
        target = site / page / "index.html"
        assert target.exists(), f"{text!r} links to a missing page {href}"
        expected = _DOCS_PATH.match(text)[0][len("docs/") : -len(".md")]
        assert page == expected, (text, href)
        if anchor:
            with open(target, encoding="utf-8") as f:
                assert f'id="{anchor}"' in f.read(), (text, href)


def _docstring_tool():
    path = os.path.join(ROOT, "tools", "griffe_keras_docstrings.py")
    spec = importlib.util.spec_from_file_location("griffe_keras", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(
    "text, expected",
    [
        ("(docs/math.md §4)", "([docs/math.md §4](math.md#s4))"),
        ("docs/math.md §3.5.", "[docs/math.md §3.5](math.md#s3-5)."),
        ("docs/math.md §6–§7", "[docs/math.md §6–§7](math.md#s6)"),
        (
            'docs/performance.md, "Decoding in eager\n    torch")',
            '[docs/performance.md, "Decoding in eager\n    torch"]'
            "(performance.md#decoding-in-eager-torch))",
        ),
        ("docs/api.md lists", "[docs/api.md](api.md) lists"),
        ("``docs/math.md``", "``docs/math.md``"),  # code stays code
        ("[docs/math.md](math.md)", "[docs/math.md](math.md)"),  # a link
    ],
)
def test_docs_references_are_rewritten_as_links(text, expected):
    pytest.importorskip("griffe", reason="the docs extras are not installed")
    assert _docstring_tool().link_docs_references(text) == expected


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


@pytest.mark.parametrize("section", sorted(public_sections()))
def test_every_public_name_has_a_section(api_html, section):
    assert re.search(rf'<h[2-4] id="{re.escape(section)}"', api_html), section


def test_api_page_documents_the_public_api_only():
    """docs/api.md documents what `keras_infmemory` lists, nothing else:
    a new public name goes into ``__all__`` and onto the page; an internal
    module stays off it."""
    with open(os.path.join(ROOT, "docs", "api.md"), encoding="utf-8") as f:
        documented = set(re.findall(r"^::: (\S+)$", f.read(), re.MULTILINE))
    assert documented == public_sections()
