"""Path patterns: a small glob language compiled once to a regular expression.

A path is a string of segments joined by ``/`` (``params/block_3/attn/out/kernel``).
A pattern is either a glob over those segments, or, behind the ``re:`` prefix, a
Python regular expression matched against the whole path, or, behind ``@``, a role
read from the model's computation (``@mlp_out``, resolved with ``structure=``; see
:mod:`flaxinit.structure`). See the package
docstring of :mod:`flaxinit.rules` for the full language with examples.
"""

from __future__ import annotations

import dataclasses
import functools
import re
from typing import Any

__all__ = ["Pattern", "compile_pattern", "role_pattern"]

REGEX_PREFIX = "re:"

# One segment never contains "/"; every wildcard is confined to a segment.
_SEGMENT_CHAR = "[^/]"


@dataclasses.dataclass(frozen=True)
class Pattern:
    """A compiled path pattern.

    Attributes:
      source: the pattern as written by the user (``re:`` prefix included).
      regex: the compiled regular expression, used with ``fullmatch``.
      anchored: whether the pattern must match from the root (a leading ``/`` or a
        regular expression) rather than any suffix of the path.
      role: for a ``@role`` selector, the role (``regex`` is then None).
      fallback: a role selector's path patterns for trees without a structure.
      origin: what set the pattern (``gpt2(residual=...)``), for error messages.
    """

    source: str
    regex: re.Pattern[str] | None
    anchored: bool
    role: str | None = None
    fallback: tuple[Pattern, ...] = ()
    origin: str | None = dataclasses.field(default=None, compare=False)
    within: Pattern | None = None
    optional: bool = False

    def under(self, prefix: str) -> Pattern:
        """This pattern restricted to leaves under ``prefix`` (a glob of segments):
        a glob is prefixed (``prefix/**/pattern``), a role selector also requires the
        path to match ``prefix/**``."""
        if self.role is None:
            if self.source.startswith(REGEX_PREFIX):
                raise ValueError(
                    f"pattern {self.source!r}: a regular expression cannot be put under "
                    f"{prefix!r}; use a glob"
                )
            return compile_pattern(f"{prefix}/**/{self.source.lstrip('/')}")
        return dataclasses.replace(
            self,
            source=f"{self.source} under {prefix!r}",
            fallback=tuple(p.under(prefix) for p in self.fallback),
            within=compile_pattern(f"{prefix}/**"),
        )

    def matches(self, path: str) -> bool:
        """Whether ``path`` (segments joined by ``/``) is matched by this pattern.

        A role selector has no path to match: it raises ``ValueError`` unless it
        carries fallback path patterns (recipes' defaults do).
        """
        if self.role is not None:
            if not self.fallback:
                raise ValueError(role_needs_structure(self.source))
            return any(p.matches(path) for p in self.fallback)
        return self.regex.fullmatch(path) is not None

    def __repr__(self) -> str:
        if self.fallback:
            return f"Pattern({self.source!r}, else {self.fallback_source!r})"
        return f"Pattern({self.source!r})"

    @property
    def fallback_source(self) -> str:
        """The fallback patterns as written, ``|``-joined (empty without)."""
        return " | ".join(p.source for p in self.fallback)


def _translate_segment(segment: str, source: str) -> str:
    """Regex for one glob segment: ``*``, ``?``, ``[...]`` and ``\\`` escapes."""
    out: list[str] = []
    i, n = 0, len(segment)
    while i < n:
        c = segment[i]
        if c == "*":
            if segment.startswith("**", i):
                raise ValueError(
                    f"invalid pattern {source!r}: '**' must be a whole segment "
                    f"(as in 'a/**/b'), got segment {segment!r}"
                )
            out.append(_SEGMENT_CHAR + "*")
            i += 1
        elif c == "?":
            out.append(_SEGMENT_CHAR)
            i += 1
        elif c == "[":
            j = i + 1
            negate = j < n and segment[j] in "!^"
            if negate:
                j += 1
            # A "]" right after "[" or "[!" is a literal, as in fnmatch.
            if j < n and segment[j] == "]":
                j += 1
            while j < n and segment[j] != "]":
                j += 1
            if j >= n:
                raise ValueError(f"invalid pattern {source!r}: unbalanced '[' in {segment!r}")
            body = segment[i + 1 + negate : j]
            if not body:
                raise ValueError(f"invalid pattern {source!r}: empty '[]' in {segment!r}")
            body = "".join("\\" + ch if ch in "\\^[]" else ch for ch in body)
            # A class never matches the separator, negated or not.
            out.append(f"[^/{body}]" if negate else f"(?:(?!/)[{body}])")
            i = j + 1
        elif c == "\\":
            if i + 1 >= n:
                raise ValueError(f"invalid pattern {source!r}: trailing '\\' in {segment!r}")
            out.append(re.escape(segment[i + 1]))
            i += 2
        elif c == "]":
            raise ValueError(f"invalid pattern {source!r}: unbalanced ']' in {segment!r}")
        else:
            out.append(re.escape(c))
            i += 1
    return "".join(out)


def _translate_glob(source: str) -> tuple[str, bool]:
    """Regex source for a glob, and whether it is anchored at the root."""
    anchored = source.startswith("/")
    body = source[1:] if anchored else source
    if not body:
        raise ValueError(f"invalid pattern {source!r}: the pattern is empty")
    segments = body.split("/")
    if any(not s for s in segments):
        raise ValueError(f"invalid pattern {source!r}: empty segment (a doubled or trailing '/')")
    out = ""
    need_sep = False
    last = len(segments) - 1
    for i, seg in enumerate(segments):
        if seg == "**":
            if i == last:
                # Zero or more trailing segments; alone it matches any path.
                out += "(?:/[^/]*)*" if need_sep else ".*"
            else:
                # Zero or more whole segments, each with its own trailing "/".
                out += ("/" if need_sep else "") + "(?:[^/]*/)*"
                need_sep = False
            continue
        out += ("/" if need_sep else "") + _translate_segment(seg, source)
        need_sep = True
    if not anchored:
        # Suffix match on a segment boundary: an implicit leading "**/".
        out = "(?:.*/)?" + out
    return out, anchored


ROLE_PREFIX = "@"


def role_needs_structure(source: str) -> str:
    return (
        f"pattern {source!r} selects leaves by role: pass "
        "structure=fi.model_structure(model, *inputs) so the roles are known"
    )


def role_pattern(role: str, fallback: Any = (), *, optional: bool = False) -> Pattern:
    """A ``@role`` selector; ``fallback`` path patterns are used without a structure.

    Recipes build their defaults this way: with ``structure=`` the rule selects by
    role, without it by the stock Flax names it always used. An ``optional`` role
    may be absent from a model (biases in a bias-free model, the readout of a tied
    embedding): with a structure, matching nothing is then not an error.

    Example:
      >>> role_pattern("mlp_out", "fc2/kernel")
      Pattern('@mlp_out', else 'fc2/kernel')
    """
    from flaxinit.structure import check_role

    check_role(role)
    items = [fallback] if isinstance(fallback, (str, Pattern)) else list(fallback)
    compiled = tuple(compile_pattern(p) for p in items)
    if any(p.role is not None for p in compiled):
        raise ValueError(f"role_pattern: a fallback must be a path pattern, got {fallback!r}")
    return Pattern(ROLE_PREFIX + role, None, False, role, compiled, optional=optional)


@functools.lru_cache(maxsize=4096)
def _compile_str(source: str) -> Pattern:
    if source.startswith(ROLE_PREFIX):
        return role_pattern(source[len(ROLE_PREFIX) :])
    if source.startswith(REGEX_PREFIX):
        expr = source[len(REGEX_PREFIX) :]
        if not expr:
            raise ValueError(f"invalid pattern {source!r}: empty regular expression")
        try:
            regex = re.compile(expr, re.DOTALL)
        except re.error as e:
            raise ValueError(f"invalid pattern {source!r}: bad regular expression: {e}") from None
        return Pattern(source, regex, anchored=True)
    expr, anchored = _translate_glob(source)
    return Pattern(source, re.compile(expr, re.DOTALL), anchored)


def compile_pattern(pattern: Any) -> Pattern:
    """Compiles a path pattern (cached, so repeated rules cost one compile).

    ``pattern`` is a glob string, an ``re:``-prefixed regular expression, a compiled
    ``re.Pattern`` (matched with ``fullmatch``), or an already compiled
    :class:`Pattern`.

    Raises:
      TypeError: if ``pattern`` is not one of those.
      ValueError: if the pattern is empty or malformed (unbalanced ``[``, a ``**``
        inside a segment, an empty segment, a bad regular expression).

    Example:
      >>> p = compile_pattern("*/attn/out/kernel")
      >>> p.matches("params/block_3/attn/out/kernel"), p.matches("attn/out/kernel")
      (True, False)
    """
    if isinstance(pattern, Pattern):
        return pattern
    if isinstance(pattern, re.Pattern):
        if not isinstance(pattern.pattern, str):
            raise TypeError(f"a regex pattern must be a str regex, got {pattern!r}")
        return Pattern(REGEX_PREFIX + pattern.pattern, pattern, anchored=True)
    if not isinstance(pattern, str):
        raise TypeError(
            f"a pattern must be a string (glob or 're:' regex), got "
            f"{type(pattern).__name__} {pattern!r}"
        )
    return _compile_str(pattern)
