"""``explain_rules``: what ``apply_rules`` would do, leaf by leaf, as a report.

Invariant: explaining builds the same plan as applying
(:func:`~flaxinit.rules.planning.make_plan`) and does no array work, so it works on
abstract trees (``jax.eval_shape`` output) and says exactly what ``apply_rules`` would do.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import numpy as np

from flaxinit._deprecation import warn_renamed
from flaxinit.rules.actions import Reinit
from flaxinit.rules.matching import Rule, UnmatchedRule
from flaxinit.rules.paths import LeafInfo
from flaxinit.rules.planning import LayerContexts, layer_axis, make_plan
from flaxinit.tables import RecordTable

__all__ = ["LeafReport", "RulesReport", "explain_rules"]


@dataclasses.dataclass(frozen=True)
class LeafReport:
    """One leaf in an :class:`RulesReport`.

    Attributes:
      path: the leaf's path.
      shape: the leaf's shape.
      dtype: the leaf's dtype.
      layer: the layer index read from the path, or None.
      layer_axis: the ``'layers'`` axis from the leaf's metadata, or None
        (``stacked_axis`` before; the old name warns).
      rules: the indices of the rules that hit the leaf, in order.
      patterns: their patterns.
      actions: their actions' descriptions (``per layer`` when run per slice).
      role: with ``structure=``, the leaf's role; else None.
      fan_axes: with ``structure=``, the fan axes a re-draw on this leaf uses
        (``in[1] out[0, 2]``); empty otherwise.
    """

    path: str
    shape: tuple[int, ...]
    dtype: np.dtype
    layer: int | None
    layer_axis: int | None
    rules: tuple[int, ...]
    patterns: tuple[str, ...]
    actions: tuple[str, ...]
    role: str | None = None
    fan_axes: str = ""

    @property
    def stacked_axis(self) -> int | None:
        """Deprecated name of :attr:`layer_axis`."""
        warn_renamed("LeafReport.stacked_axis", "LeafReport.layer_axis")
        return self.layer_axis

    @property
    def touched(self) -> bool:
        """Whether any rule hit this leaf."""
        return bool(self.rules)


@dataclasses.dataclass(frozen=True)
class RulesReport(RecordTable[LeafReport]):
    """What ``explain_rules`` found: one :class:`LeafReport` per leaf, in tree order.

    A sequence of records (``report[0].path``, ``[r.path for r in report if
    r.touched]``) with ``untouched`` (paths no rule hit), ``unmatched_rules`` (rules
    that hit nothing), ``legend`` (``(index, pattern, action)`` per rule) and
    ``problems`` (what would fail or be lost: a fan-based re-draw of a 1-D leaf, a
    scale that a later re-draw of the same leaf overwrites); ``str(report)`` is an
    aligned table, the legend and the problems.
    """

    unmatched_rules: tuple[UnmatchedRule, ...] = ()
    legend: tuple[tuple[int, str, str], ...] = ()
    problems: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("unmatched_rules", "legend", "problems"):
            object.__setattr__(self, name, tuple(getattr(self, name)))

    @property
    def untouched(self) -> tuple[str, ...]:
        """The paths no rule hit, in tree order."""
        return tuple(r.path for r in self.records if not r.touched)

    def by_path(self) -> dict[str, LeafReport]:
        """The records keyed by path."""
        return {r.path: r for r in self.records}

    def __repr__(self) -> str:
        touched = sum(r.touched for r in self.records)
        return (
            f"RulesReport({len(self.records)} leaves, {touched} touched, "
            f"{len(self.unmatched_rules)} unmatched rules)"
        )

    @functools.cached_property
    def _structural(self) -> bool:
        return any(r.role is not None for r in self.records)

    def headers(self) -> list[str]:
        headers = ["path", "shape", "dtype", "layer"]
        if self._structural:
            headers += ["role", "fan axes"]
        return [*headers, "rules"]

    def row(self, record: LeafReport) -> list[str]:
        layer = "" if record.layer is None else str(record.layer)
        if record.layer_axis is not None:
            layer = f"stack@{record.layer_axis}"
        chain = " -> ".join(f"#{i} {a}" for i, a in zip(record.rules, record.actions, strict=True))
        row = [record.path, str(record.shape), str(record.dtype), layer]
        if self._structural:
            row += [record.role or "", record.fan_axes]
        return [*row, chain or "-"]

    def footer(self) -> list[str]:
        lines = []
        if self.legend:
            lines.append("rules:")
            lines += [f"  #{i} {pattern!r} -> {action}" for i, pattern, action in self.legend]
        if self.problems:
            lines.append("problems:")
            lines += [f"  {problem}" for problem in self.problems]
        if self.unmatched_rules:
            lines.append("unmatched rules:")
            for m in self.unmatched_rules:
                near = "roles in the model" if m.roles else "closest"
                lines.append(f"  #{m.index} {m.pattern!r}; {near}: {', '.join(m.closest) or '-'}")
        return lines

    def __str__(self) -> str:
        if not self.records:  # no table: say that the tree has no array leaves
            return "\n".join(["(no leaves)", *self.footer()])
        return super().__str__()


def _draw_problem(info: LeafInfo, rule: Rule, action: Any) -> str | None:
    """Why a re-draw cannot draw this leaf (a fan-based initializer on a 1-D bias),
    found by tracing it on the shape; None if it can."""
    init = getattr(action, "init", None)
    if not isinstance(action, Reinit) or init is None or len(info.shape) >= 2:
        return None
    try:
        jax.eval_shape(lambda k: init(k, info.shape, info.dtype), jax.random.key(0))
    except Exception as e:  # what the initializer says is the reason shown
        return (
            f"#{rule.index} {action!r} cannot draw {info.path!r} of shape {info.shape}: "
            f"{str(e).splitlines()[0]}"
        )
    return None


def _describe_step(info: LeafInfo, rule: Rule) -> str:
    axis, action = layer_axis(info, rule.value)
    if axis is None:
        return repr(action)
    return f"per layer(axis {axis}, {info.shape[axis]} layers): {action!r}"


def _fan_axes(contexts: LayerContexts, n: int, info: LeafInfo, hits: Sequence[Rule]) -> str:
    """The fan axes a re-draw on leaf ``n`` uses (from the structure), for reports."""
    if contexts.structure is None or not any(getattr(r.value, "needs_key", False) for r in hits):
        return ""
    ctx = contexts.context(n, info)
    if ctx.fan_in_axes is None:
        return ""
    used = "" if ctx.structural_axes is not None else " (= Flax's)"
    batch = f" batch{list(ctx.batch_axes)}" if ctx.batch_axes else ""
    return f"in{list(ctx.fan_in_axes)} out{list(ctx.fan_out_axes)}{batch}{used}"


def explain_rules(
    tree: Any,
    rules: Sequence[tuple[Any, Any]],
    *,
    context: Mapping[str, Any] | None = None,
    structure: Any = None,
    num_layers: int | None = None,
    layer_of: Callable[[str], int | None] | None = None,
) -> RulesReport:
    """Says what :func:`apply_rules` would do, leaf by leaf, without doing it.

    Works on arrays and on abstract trees (``jax.eval_shape`` output). Rules that
    match nothing are reported, not raised.

    Returns:
      A :class:`RulesReport`: per leaf its path, shape, dtype, layer index, and the
      rules that hit it in order with their actions; plus ``untouched`` and
      ``unmatched_rules``. ``print(report)`` shows a table.

    Example:
      >>> import jax, flax.linen as nn
      >>> from flaxinit.rules import fill
      >>> v = jax.eval_shape(nn.Dense(4).init, jax.random.key(0), jax.numpy.ones((1, 3)))
      >>> report = explain_rules(v, [("bias", fill(0.0))])
      >>> report.untouched
      ('params/kernel',)
    """
    plan = make_plan(tree, rules, context, structure, num_layers=num_layers, layer_of=layer_of)
    records = []
    for n, info in enumerate(plan.flat.infos):
        hits = plan.hits[n]
        records.append(
            LeafReport(
                path=info.path,
                shape=info.shape,
                dtype=info.dtype,
                layer=plan.contexts.context(n, info).layer,
                layer_axis=info.layer_axis,
                rules=tuple(r.index for r in hits),
                patterns=tuple(r.pattern.source for r in hits),
                actions=tuple(_describe_step(info, r) for r in hits),
                role=None
                if plan.contexts.structure is None
                else plan.contexts.structure.leaves[n].role,
                fan_axes=_fan_axes(plan.contexts, n, info, hits),
            )
        )
    problems = []
    for n, info in enumerate(plan.flat.infos):
        hits = plan.hits[n]
        for step, rule in enumerate(hits):
            _, action = layer_axis(info, rule.value)
            problem = _draw_problem(info, rule, action)
            if problem:
                problems.append(problem)
            if getattr(action, "overwrites", False):
                lost = [r for r in hits[:step] if not getattr(r.value, "overwrites", False)]
                problems += [
                    f"#{r.index} {r.value!r} on {info.path!r} is overwritten by "
                    f"#{rule.index} {action!r}"
                    for r in lost
                ]
    legend = [(r.index, r.pattern.source, repr(r.value)) for r in plan.rules]
    return RulesReport(tuple(records), tuple(plan.missing()), tuple(legend), tuple(problems))
