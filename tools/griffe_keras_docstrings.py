"""A griffe extension: Keras-style docstrings as mkdocstrings expects them.

The library's docstrings follow Keras' layout, which Google-style parsers
read differently from how Keras renders it:

* ``Example:`` followed by a blank line and unindented ``>>>`` lines. To
  griffe that is plain text, and Markdown then reads each ``>>>`` as three
  nested blockquotes and joins the code into one paragraph. We rewrite it as
  an indented ``Examples:`` section, which griffe splits into prose and
  doctest blocks and mkdocstrings renders as highlighted code.
* ``Call arguments:``, an unknown section to griffe, which turns it into an
  admonition whose items run together in one paragraph. We rewrite it as an
  "other parameters" section titled ``Call arguments:``, rendered as a list
  of names and descriptions like ``Args:`` (which keeps its title too,
  rather than griffe's "Parameters:").

* References to the docs, ``docs/math.md §4`` or ``docs/performance.md,
  "Decoding in eager torch"``, which read well in ``help()`` and in the
  source (a path from the repository's root) but would be plain text on
  the site. We make each a Markdown link relative to the API page
  (``[docs/math.md §4](math.md#s4)``, the section's anchor; a quoted title
  gives its heading's anchor), which MkDocs resolves and checks like any
  link of the docs (``tests/test_docs_site.py`` checks the anchors too).

Only the text handed to the parser changes; the source docstrings (and the
doctests that run them) stay as they are. Enabled in ``mkdocs.yml`` under
the python handler's ``extensions``.
"""

import re

import griffe
from markdown.extensions.toc import slugify

# A Google-style section title at the docstring's own indentation.
_SECTION = re.compile(r"^[A-Z][A-Za-z ]*:\s*$")
_EXAMPLE_TITLES = ("Example:", "Examples:")
# "Kind: Title": a section of griffe's kind, rendered under Keras' title.
_RETITLED = {
    "Args:": "Args: Args:",
    "Call arguments:": "Other parameters: Call arguments:",
}


def _example_section(lines, start):
    """Rewrites the example section whose title is ``lines[start]``.

    Returns the new lines and the index after the section, or ``None`` if
    the title is not followed by unindented doctest lines.
    """
    body = start + 1
    while body < len(lines) and not lines[body].strip():
        body += 1
    if body == len(lines) or not lines[body].startswith(">>>"):
        return None
    end = body
    while end < len(lines) and not _SECTION.match(lines[end]):
        end += 1
    block = lines[body:end]
    while block and not block[-1].strip():
        block.pop()
    trailing = end - body - len(block)
    # "Examples: <title>": an examples section that keeps its own title.
    rewritten = [f"Examples: {lines[start].strip()}"]
    rewritten += [f"    {line}" if line.strip() else "" for line in block]
    return rewritten + [""] * trailing, end


# "docs/<page>.md", then optionally " §4" (or "§3.5", "§6–§7": the first
# section's anchor) or ', "A heading"'; not inside ``code``, nor a link
# already.
_DOCS_REFERENCE = re.compile(
    r"(?<![`\w/.\[])docs/(?P<page>[a-z_]+)\.md"
    r"(?:(?P<section> §(?P<number>\d+(?:\.\d+)*)(?:[–-]§?\d+(?:\.\d+)*)?)"
    r"|(?P<titled>,\s+\"(?P<title>[^\"]+)\"))?"
)


def _docs_link(match):
    """The Markdown link of one reference to the docs."""
    target = f"{match['page']}.md"
    if match["number"]:
        target += "#s" + match["number"].replace(".", "-")
    elif match["title"]:
        target += "#" + slugify(" ".join(match["title"].split()), "-")
    return f"[{match[0]}]({target})"


def link_docs_references(text):
    """``text`` with each ``docs/<page>.md`` reference made a link."""
    return _DOCS_REFERENCE.sub(_docs_link, text)


def keras_to_google(text):
    """The docstring ``text`` with Keras-style sections made Google-style."""
    lines = text.split("\n")
    out = []
    index = 0
    while index < len(lines):
        line = lines[index]
        if line.strip() in _EXAMPLE_TITLES and not line.startswith(" "):
            section = _example_section(lines, index)
            if section is not None:
                rewritten, index = section
                out += rewritten
                continue
        out.append(_RETITLED.get(line, line))
        index += 1
    return link_docs_references("\n".join(out))


class KerasDocstrings(griffe.Extension):
    """Rewrites every docstring of the loaded objects (see module doc)."""

    def on_object(self, *, obj, **kwargs):
        del kwargs
        if obj.docstring is not None:
            obj.docstring.value = keras_to_google(obj.docstring.value)

    def on_package(self, *, pkg, **kwargs):
        """The top package's own docstring, which `on_object` does not
        see: its references to the docs."""
        del kwargs
        if pkg.docstring is not None:
            pkg.docstring.value = link_docs_references(pkg.docstring.value)
