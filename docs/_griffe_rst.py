"""Griffe extension for the docs build: render kktbridge's reST-flavoured docstrings as Markdown.

The docstrings use Google sections (parsed by mkdocstrings) plus a few reStructuredText constructs
that Markdown does not know; this rewrites them before rendering:

* ``.. math::`` directives (inline or indented block) -> ``$$ ... $$`` display math (arithmatex);
* ``:math:`...``` -> ``$...$`` inline math;
* cross-reference roles ``:func:`~pkg.mod.name``` / ``:class:`...``` / ... -> a code span with the
  name (``~`` keeps only the last component, as in Sphinx);
* a literal-block marker ``Example::`` -> ``Example:`` (the indented block stays a code block);
* an ``Args:`` entry naming several parameters (``A, b: ...``) -> one entry per parameter, the
  later ones pointing to the first (Google style has one name per entry).

Loaded by ``mkdocs.yml`` (``plugins.mkdocstrings.handlers.python.options.extensions``).
"""

from __future__ import annotations

import re

import griffe

_ROLE = re.compile(r":(?:func|class|mod|meth|attr|data|obj|exc|const|ref|py:\w+):`(~?)([^`]+)`")
_MATH_ROLE = re.compile(r":math:`([^`]+)`")
_MATH_DIRECTIVE = re.compile(r"^(?P<indent>[ \t]*)\.\. math::[ \t]*(?P<first>.*)$")


def _role(match: re.Match) -> str:
    tilde, target = match.groups()
    target = target.strip()
    if "<" in target and target.endswith(">"):  # :func:`title <target>`
        return f"`{target.split('<')[0].strip()}`"
    if tilde:
        target = target.rsplit(".", 1)[-1]
    return f"`{target}`"


def _math_blocks(text: str) -> str:
    lines, out, i = text.split("\n"), [], 0
    while i < len(lines):
        m = _MATH_DIRECTIVE.match(lines[i])
        if not m:
            out.append(lines[i])
            i += 1
            continue
        indent, body = m["indent"], [m["first"].strip()] if m["first"].strip() else []
        i += 1
        # The directive's content: following lines indented deeper than the directive (or blank).
        while i < len(lines) and (not lines[i].strip() or len(lines[i]) - len(lines[i].lstrip()) > len(indent)):
            body.append(lines[i].strip())
            i += 1
        while body and not body[-1]:
            body.pop()
        trailing_blank = i < len(lines)
        out += [f"{indent}$$", *(f"{indent}{b}" for b in body if b), f"{indent}$$"]
        if trailing_blank:
            out.append("")
    return "\n".join(out)


_MULTI_ARG = re.compile(r"^(?P<indent>[ \t]+)(?P<names>\w+(?:, \w+)+): (?P<desc>.*)$")
_LITERAL_MARKER = re.compile(r"(\S)::$", re.M)


def _split_multi_args(text: str) -> str:
    out, in_args = [], False
    for line in text.split("\n"):
        if not line.startswith((" ", "\t")):
            in_args = line.strip() in ("Args:", "Arguments:", "Parameters:")
        m = _MULTI_ARG.match(line) if in_args else None
        if m is None:
            out.append(line)
            continue
        first, *others = m["names"].split(", ")
        out.append(f"{m['indent']}{first}: {m['desc']}")
        out += [f"{m['indent']}{name}: see `{first}`." for name in others]
    return "\n".join(out)


def rst_to_markdown(text: str) -> str:
    text = _split_multi_args(_math_blocks(text))
    text = _LITERAL_MARKER.sub(r"\1:", text)
    text = _MATH_ROLE.sub(lambda m: f"${m.group(1)}$", text)
    return _ROLE.sub(_role, text)


class RstToMarkdown(griffe.Extension):
    """Rewrite every docstring once the package is loaded."""

    def on_object(self, *, obj: griffe.Object, **kwargs) -> None:  # noqa: ARG002
        if obj.docstring is not None:
            obj.docstring.value = rst_to_markdown(obj.docstring.value)
