"""A griffe extension that renders flaxinit's reST-flavoured Google docstrings as Markdown.

flaxinit's docstrings are Google style (``Args:``, ``Returns:``, ``Attributes:``) with a
few reStructuredText habits that Markdown does not understand. This extension rewrites
the docstring text, once the whole package is loaded and before it is parsed:

* ``:func:`name``` and the other Sphinx roles (``:class:``, ``:mod:``, ``:data:``,
  ``:attr:``, ``:meth:``; ``~`` shortens the title) become *optional* cross-references:
  a link when the target is rendered somewhere in the site, plain code otherwise (never a
  warning, so ``mkdocs build --strict`` stays clean).
* ``Example:`` (singular) becomes ``Examples:``, so that doctest lines render as code
  (griffe reads ``Example:`` as an admonition); an ``Example:`` at the end of a prose line
  is moved to its own line first.
* Simple reST tables (``====  ====`` rules) become Markdown tables.
* ``Title`` underlined with ``---`` becomes a bold paragraph, and a paragraph ending in
  ``::`` (a reST literal block) ends in ``:`` (the indented block already is Markdown code).
* reST's escaped space after inline code (a backslash and a space between a closing
  double backtick and an ``s``, to write a plural) is dropped.
* An ``Args:`` entry naming several parameters (``convs, norm_scales: the patterns.``)
  becomes one entry per parameter with the shared description (griffe reads one name per
  entry and warns that ``convs, norm_scales`` is not a parameter).

Loaded from ``mkdocs.yml`` (``extensions: [docs/_ext/griffe_rst.py]``); it changes only what
the documentation shows, never the package.
"""

from __future__ import annotations

import html
import re
from typing import Any

import griffe

_ROLE = re.compile(r":(?:func|class|mod|data|attr|meth|obj|exc):`(~?)([^`]+)`")
_TABLE_RULE = re.compile(r"^(\s*)(=+)((?:\s+=+)+)\s*$")
_UNDERLINE = re.compile(r"^\s*-{3,}\s*$")
_ARGS = re.compile(r"^(\s*)(?:Args|Arguments|Parameters|Keyword Args|Keyword Arguments):\s*$")
_MULTI = re.compile(r"^(\s*)([A-Za-z_]\w*(?:\s*,\s*[A-Za-z_]\w*)+)\s*:(.*)$")


def _resolve(obj: griffe.Object, name: str) -> str | None:
    """The full path of ``name`` as seen from ``obj`` (Python scoping), or None."""
    if name.startswith("flaxinit."):
        return name
    head, _, rest = name.partition(".")
    scope: Any = obj
    while scope is not None:
        try:
            path = scope.resolve(head)
        except Exception:
            path = None
        if path:
            return f"{path}.{rest}" if rest else path
        scope = scope.parent
    return None


def _roles(obj: griffe.Object, text: str, public: dict[str, str]) -> str:
    def replace(match: re.Match) -> str:
        short, name = match.group(1), match.group(2)
        title = name.rsplit(".", 1)[-1] if short else name
        code = f"<code>{html.escape(title)}</code>"
        path = _resolve(obj, name)
        if path is None:
            return code
        path = public.get(path, path)
        return f'<autoref identifier="{html.escape(path)}" optional>{code}</autoref>'

    return _ROLE.sub(replace, text)


def _columns(rule: str) -> list[tuple[int, int | None]]:
    spans = [(m.start(), m.end()) for m in re.finditer(r"=+", rule)]
    return [
        (start, spans[i + 1][0] if i + 1 < len(spans) else None)
        for i, (start, _) in enumerate(spans)
    ]


def _tables(lines: list[str]) -> list[str]:
    out: list[str] = []
    i = 0
    while i < len(lines):
        match = _TABLE_RULE.match(lines[i])
        if not match:
            out.append(lines[i])
            i += 1
            continue
        indent, cols = match.group(1), _columns(lines[i])
        rules = [i]
        j = i + 1
        while j < len(lines) and lines[j].strip():
            if _TABLE_RULE.match(lines[j]):
                rules.append(j)
            j += 1
        body = [k for k in range(i + 1, j) if k not in rules]
        has_header = len(rules) >= 3
        cells = [
            [lines[k][a:b].strip() if b else lines[k][a:].strip() for a, b in cols] for k in body
        ]
        header = cells.pop(0) if has_header and cells else [""] * len(cols)
        if out and out[-1].strip():
            out.append("")
        out.append(indent + "| " + " | ".join(_cell(c) for c in header) + " |")
        out.append(indent + "|" + "|".join("---" for _ in cols) + "|")
        out += [indent + "| " + " | ".join(_cell(c) for c in row) + " |" for row in cells]
        i = j
    return out


def _cell(text: str) -> str:
    """A table cell: ``|`` escaped, and ``*`` escaped outside code (``conv*`` is a name)."""
    parts = text.replace("|", "\\|").split("``")
    return "``".join(p if i % 2 else p.replace("*", "\\*") for i, p in enumerate(parts))


def _headings(lines: list[str]) -> list[str]:
    out: list[str] = []
    for line in lines:
        if (
            _UNDERLINE.match(line)
            and out
            and out[-1].strip()
            and not out[-1].strip().startswith("-")
        ):
            out[-1] = f"**{out[-1].strip()}**"
            continue
        out.append(line)
    return out


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip())


def _shared_args(lines: list[str]) -> list[str]:
    """``a, b: text`` entries of an ``Args:`` section, one entry per name."""
    out: list[str] = []
    section: int | None = None  # the indent of the current Args: header
    entries: int | None = None  # the indent of its entries (continuations are deeper)
    i = 0
    while i < len(lines):
        line = lines[i]
        header = _ARGS.match(line)
        if header:
            section, entries = len(header.group(1)), None
            out.append(line)
            i += 1
            continue
        if section is not None and line.strip():
            if _indent(line) <= section:
                section = None
            elif entries is None:
                entries = _indent(line)
        entry = None
        if section is not None and line.strip() and _indent(line) == entries:
            entry = _MULTI.match(line)
        if not entry:
            out.append(line)
            i += 1
            continue
        indent, names, first = entry.group(1), entry.group(2), entry.group(3)
        rest = []
        i += 1
        while i < len(lines) and lines[i].strip() and _indent(lines[i]) > len(indent):
            rest.append(lines[i])
            i += 1
        for name in (n.strip() for n in names.split(",")):
            out.append(f"{indent}{name}:{first}")
            out += rest
    return out


def rewrite(obj: griffe.Object, text: str, public: dict[str, str] | None = None) -> str:
    """The Markdown version of one docstring's text."""
    # "prose. Example:" followed by an indented doctest: give "Examples:" its own line.
    text = re.sub(
        r"(?m)^([ \t]*)(\S[^\n]*?)[ \t]+Examples?:\n(?=[ \t]+>>>)", r"\1\2\n\n\1Examples:\n", text
    )
    text = re.sub(r"(?m)^([ \t]*)Example:[ \t]*$", r"\1Examples:", text)
    text = re.sub(r"(?m)(\S)::$", r"\1:", text)
    text = text.replace("``\\ ", "``")  # reST: ``jax.Array``\ s -> ``jax.Array``s
    lines = _shared_args(_headings(_tables(text.split("\n"))))
    return _roles(obj, "\n".join(lines), public or {})


def _walk(obj: griffe.Object, seen: set[int]):
    if id(obj) in seen:
        return
    seen.add(id(obj))
    yield obj
    for member in obj.members.values():
        if member.is_alias:
            continue
        yield from _walk(member, seen)


class FlaxinitDocstrings(griffe.Extension):
    """Rewrites every docstring of the loaded package (see the module docstring)."""

    def on_package(self, *, pkg: griffe.Module, **kwargs: Any) -> None:
        # Canonical paths of re-exported objects -> the path the API pages render them at
        # (``flaxinit.initializers.basic.normal`` -> ``flaxinit.initializers.normal``).
        public: dict[str, str] = {}
        for module in pkg.modules.values():
            for name in module.exports or ():
                member = module.members.get(name)
                if member is not None and member.is_alias:
                    public.setdefault(member.target_path, f"{module.path}.{name}")
        for obj in _walk(pkg, set()):
            if obj.docstring is not None:
                obj.docstring.value = rewrite(obj, obj.docstring.value, public)
