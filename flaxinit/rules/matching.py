"""Rules compiled and matched: which rules hit which leaf, decided on static paths.

A rule is a ``(pattern, value)`` pair; :func:`compile_rules` validates the pairs,
compiles the patterns and turns each value into what its caller needs (an action for
``apply_rules``, a label for ``rule_labels``, a ``PartitionSpec`` for the sharding
specs). :func:`match_rules` lists per leaf the rules whose pattern matches its path
(or whose ``@role`` the model's structure gives it), in rule order.

Invariants: matching runs in Python on paths only (at trace time under ``jax.jit``),
never on array values; a rule's key tag depends on its pattern and how many earlier
rules share that pattern, nothing else (see :mod:`flaxinit.rules.keys`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from flaxinit.rules.actions import to_action
from flaxinit.rules.keys import stable_hash
from flaxinit.rules.paths import LeafInfo
from flaxinit.rules.patterns import Pattern, compile_pattern, role_needs_structure
from flaxinit.rules.suggest import closest_paths

__all__ = [
    "Rule",
    "StructureView",
    "UnmatchedRule",
    "compile_rules",
    "match_rules",
    "raise_unmatched",
    "unmatched",
    "view_structure",
]


@dataclasses.dataclass(frozen=True)
class Rule:
    """A validated rule: its position, compiled pattern, value and key tag."""

    index: int
    pattern: Pattern
    value: Any
    tag: int


@dataclasses.dataclass(frozen=True)
class UnmatchedRule:
    """A rule that matched no leaf, with the closest existing paths."""

    index: int
    pattern: str
    closest: tuple[str, ...]
    roles: bool = False
    origin: str | None = None


def compile_rules(
    rules: Iterable[Any],
    convert: Callable[..., Any] = to_action,
    what: str = "action",
) -> list[Rule]:
    """Validates ``(pattern, value)`` pairs, compiles their patterns and converts
    their values with ``convert(value)``.

    A ``TypeError`` from ``convert`` (a value that is no action, an initializer whose
    signature cannot take ``(key, shape, dtype)``) is raised naming the rule's index
    and pattern, when the rules are built.

    Raises:
      TypeError: ``rules`` is not a sequence of pairs, or a pattern or value has the
        wrong type.
      ValueError: a pattern is malformed.

    Example:
      >>> [(r.index, r.pattern.source, r.value) for r in
      ...  compile_rules([("kernel", "a"), ("bias", "b")], convert=str, what="label")]
      [(0, 'kernel', 'a'), (1, 'bias', 'b')]
      >>> compile_rules([("kernel", lambda key, shape: 0)])  # doctest: +ELLIPSIS
      Traceback (most recent call last):
      ...
      TypeError: rule 0 ('kernel'): ...
    """
    if isinstance(rules, (str, bytes, Mapping)) or not isinstance(rules, Iterable):
        raise TypeError(
            f"rules must be a sequence of (pattern, {what}) pairs, got {type(rules).__name__}"
        )
    out: list[Rule] = []
    seen: dict[str, int] = {}
    for i, rule in enumerate(rules):
        if not isinstance(rule, (tuple, list)) or len(rule) != 2:
            raise TypeError(f"rule {i} must be a (pattern, {what}) pair, got {rule!r}")
        pattern = compile_pattern(rule[0])
        try:
            value = convert(rule[1])
        except TypeError as e:
            raise TypeError(f"rule {i} ({pattern.source!r}): {e}") from None
        # A role selector draws with its fallback's tag: the same values with and
        # without a structure wherever both select the leaf.
        source = pattern.fallback_source or pattern.source
        n = seen.get(source, 0)
        seen[source] = n + 1
        out.append(Rule(i, pattern, value, stable_hash(f"{source}#{n}")))
    return out


def _matcher(pattern: Pattern, structure: Any, paths: Sequence[str]) -> Callable[[int], bool]:
    """``leaf index -> bool`` for one pattern (a role selector reads ``structure``)."""
    if pattern.role is None:
        fullmatch = pattern.regex.fullmatch
        return lambda n: fullmatch(paths[n]) is not None
    if structure is None:
        if not pattern.fallback:
            raise ValueError(role_needs_structure(pattern.source))
        regexes = [p.regex.fullmatch for p in pattern.fallback]
        return lambda n: any(m(paths[n]) is not None for m in regexes)
    selected = set(structure.select(pattern.role))
    if pattern.within is not None:
        inside = pattern.within.regex.fullmatch
        return lambda n: structure.leaves[n].path in selected and inside(paths[n]) is not None
    return lambda n: structure.leaves[n].path in selected


def match_rules(
    rules: Sequence[Rule], infos: Sequence[LeafInfo], structure: Any = None
) -> list[list[Rule]]:
    """Per leaf, the rules whose pattern matches it, in rule order.

    ``structure`` is a :class:`StructureView` (``apply_rules(..., structure=)``);
    without one a ``@role`` pattern uses its fallback paths or raises ``ValueError``.

    Example:
      >>> import numpy as np
      >>> from flaxinit.rules.paths import flatten_tree
      >>> infos = flatten_tree({"fc": {"kernel": np.zeros((2, 2)), "bias": np.zeros(2)}}).infos
      >>> rules = compile_rules([("kernel", "k"), ("fc/*", "any")], convert=str, what="label")
      >>> [(info.path, [r.value for r in hits]) for info, hits in
      ...  zip(infos, match_rules(rules, infos))]
      [('fc/bias', ['any']), ('fc/kernel', ['k', 'any'])]
    """
    paths = [info.path for info in infos]
    matchers = [(r, _matcher(r.pattern, structure, paths)) for r in rules]
    return [[r for r, m in matchers if m(n)] for n in range(len(infos))]


@dataclasses.dataclass(frozen=True)
class StructureView:
    """A model structure lined up with one tree's leaves (``leaves[n]`` is leaf n's)."""

    structure: Any
    leaves: tuple[Any, ...]

    def select(self, role: str) -> list[str]:
        return self.structure.select(role)

    @property
    def num_layers(self) -> int | None:
        return self.structure.num_layers


def view_structure(structure: Any, infos: Sequence[LeafInfo]) -> StructureView | None:
    """Lines ``structure`` up with ``infos``; raises naming the first leaf it lacks."""
    if structure is None:
        return None
    from flaxinit.structure import ModelStructure

    if not isinstance(structure, ModelStructure):
        raise TypeError(
            "structure must be a ModelStructure from fi.model_structure(model, *inputs), "
            f"got {type(structure).__name__}"
        )
    return StructureView(structure, tuple(structure.check_tree(infos)))


def unmatched(
    rules: Sequence[Rule],
    hits: Sequence[Sequence[Rule]],
    infos: Sequence[LeafInfo],
    structure: StructureView | None = None,
) -> list[UnmatchedRule]:
    """The rules that matched no leaf, with the closest existing paths (for a role
    selector: the roles the model's leaves play)."""
    used = {r.index for leaf in hits for r in leaf}
    paths = [i.path for i in infos]
    out = []
    for r in rules:
        if r.index in used:
            continue
        pattern = r.pattern
        if pattern.role is not None and structure is not None and pattern.optional:
            continue
        if pattern.role is not None and structure is not None:
            present = tuple(dict.fromkeys(role for leaf in structure.leaves for role in leaf.roles))
            out.append(UnmatchedRule(r.index, pattern.source, present, True, pattern.origin))
        elif pattern.role is not None:
            close = tuple(p for f in pattern.fallback for p in closest_paths(f, paths))
            source = f"{pattern.fallback_source} (the fallback of {pattern.source})"
            out.append(UnmatchedRule(r.index, source, close[:3], False, pattern.origin))
        else:
            closest = closest_paths(pattern, paths)
            out.append(UnmatchedRule(r.index, pattern.source, closest, False, pattern.origin))
    return out


def raise_unmatched(missing: Sequence[UnmatchedRule], what: str = "rule") -> None:
    """Raises ``ValueError`` naming every pattern that matched nothing.

    Example:
      >>> raise_unmatched([UnmatchedRule(1, "kernal", ("fc/kernel",))])
      Traceback (most recent call last):
      ...
      ValueError: rule 1 pattern 'kernal' matched no leaf; closest paths: 'fc/kernel'
      (pass strict=False to allow rules that match nothing)
    """
    if not missing:
        return
    lines = [
        f"{what} {m.index} pattern {m.pattern!r} matched no leaf; "
        + (
            "no leaf plays that role; the model's roles: " + ", ".join(m.closest)
            if m.roles
            else "closest paths: "
            + (", ".join(repr(p) for p in m.closest) or "(the tree has no array leaves)")
        )
        + (
            f"; the pattern is {m.origin}'s default: pass {m.origin.split('(')[0]}"
            f"({m.origin.split('(')[1].split('=')[0]}=<this model's pattern>) or None to drop "
            "the rule, or structure=fi.model_structure(model, *inputs) to select by role"
            if m.origin
            else ""
        )
        for m in missing
    ]
    if any(m.origin for m in missing):
        # Skipping a recipe's rule would apply the rest of a recipe that may not fit.
        raise ValueError("\n".join(lines))
    raise ValueError("\n".join(lines) + "\n(pass strict=False to allow rules that match nothing)")
