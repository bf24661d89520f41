"""Griffe extension for the docs build: render kktbridge's reST-flavoured docstrings as Markdown.

The docstrings use Google sections (parsed by mkdocstrings) plus a few reStructuredText constructs
that Markdown does not know; this rewrites them before rendering:

* ``.. math::`` directives (inline or indented block) -> ``$$ ... $$`` display math (arithmatex);
* ``:math:`...``` -> ``$...$`` inline math;
* cross-reference roles ``:func:`~pkg.mod.name``` / ``:class:`...``` / ... -> a link to the API
  reference when the target is a public name (``kktbridge.__all__`` and the ``__all__`` of the
  namespaces documented there, also when the docstring names it by a private path such as
  ``kktbridge.bridges._conic.solve_conic``), else a code span (``~`` keeps only the last component
  of the title, as in Sphinx);
* a literal-block marker ``Example::`` -> ``Example:`` (the indented block stays a code block);
* an ``Args:`` entry naming several parameters (``A, b: ...``) -> one entry per parameter, the
  later ones pointing to the first (Google style has one name per entry).

Loaded by ``mkdocs.yml`` (``plugins.mkdocstrings.handlers.python.options.extensions``).
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import griffe

_PACKAGE = Path(__file__).resolve().parent.parent / "kktbridge"
_NAMESPACES = ("linear_solve", "optimality", "projection", "prox", "torch")  # the API reference pages


def _all(path: Path) -> list[str]:
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "__all__" for t in node.targets):
            return list(ast.literal_eval(node.value))
    return []


def _public_ids() -> tuple[set[str], dict[str, list[str]]]:
    ids = {f"kktbridge.{n}" for n in _all(_PACKAGE / "__init__.py")} | {"kktbridge"}
    for ns in _NAMESPACES:
        ids |= {f"kktbridge.{ns}"} | {f"kktbridge.{ns}.{n}" for n in _all(_PACKAGE / f"{ns}.py")}
    by_name: dict[str, list[str]] = {}
    for identifier in ids:
        by_name.setdefault(identifier.rsplit(".", 1)[-1], []).append(identifier)
    return ids, by_name


_IDS, _BY_NAME = _public_ids()


def _resolve(target: str) -> str | None:
    """The API-reference identifier documenting ``target``, if it is unambiguous."""
    if target in _IDS:
        return target
    last = target.rsplit(".", 1)[-1]
    if f"kktbridge.{last}" in _IDS:
        return f"kktbridge.{last}"
    candidates = _BY_NAME.get(last, [])
    return candidates[0] if len(candidates) == 1 else None

_ROLE = re.compile(r":(?:func|class|mod|meth|attr|data|obj|exc|const|ref|py:\w+):`(~?)([^`]+)`")
_MATH_ROLE = re.compile(r":math:`([^`]+)`")
_MATH_DIRECTIVE = re.compile(r"^(?P<indent>[ \t]*)\.\. math::[ \t]*(?P<first>.*)$")


def _role(match: re.Match) -> str:
    tilde, target = match.groups()
    target = target.strip()
    if "<" in target and target.endswith(">"):  # :func:`title <target>`
        title, target = target[:-1].split("<", 1)
        title, target = title.strip(), target.strip()
    else:
        title = target.rsplit(".", 1)[-1] if tilde else target
    identifier = _resolve(target)
    return f"[`{title}`][{identifier}]" if identifier else f"`{title}`"


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
