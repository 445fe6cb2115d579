"""optax label and mask trees from the rules' pattern language.

``rule_labels`` drives ``optax.multi_transform`` (``optax.partition``) and
``rule_mask`` drives ``optax.masked``/``optax.add_decayed_weights(mask=...)``.
Boxes and NNX ``Variable``s are replaced by their label (a prefix of the params
tree, which optax accepts), so the same label tree serves a Linen dict, a boxed
Linen dict and an ``nnx.State`` (including the one ``nnx.Optimizer`` hands optax).
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from typing import Any

from flax import nnx

from flaxinit.rules.matching import (
    compile_rules,
    match_rules,
    raise_unmatched,
    unmatched,
    view_structure,
)
from flaxinit.rules.paths import flatten_tree

__all__ = ["rule_labels", "rule_mask"]


class _Missing:
    def __repr__(self) -> str:
        return "<no default>"


_MISSING: Any = _Missing()


def _check_tree(tree: Any, name: str) -> None:
    if isinstance(tree, nnx.Module):
        raise TypeError(
            f"{name}: optax sees an NNX model's state, not the module; pass "
            "nnx.state(model, nnx.Param) (the `wrt` of nnx.Optimizer)"
        )


def _label(value: Any) -> Any:
    try:
        hash(value)
    except TypeError:
        raise TypeError(f"a label must be hashable (a string, usually), got {value!r}") from None
    return value


def rule_labels(
    tree: Any,
    rules: Sequence[tuple[Any, Hashable]],
    *,
    default: Hashable = _MISSING,
    strict: bool = True,
    structure: Any = None,
) -> Any:
    """A label tree for ``optax.multi_transform``: the first matching rule's label.

    With ``nnx.Optimizer(model, tx, wrt=nnx.Param)`` build the labels from
    ``nnx.state(model, nnx.Param)``, or pass ``lambda params: rule_labels(params,
    ...)`` to optax, which calls it with the state it sees.

    Args:
      tree: the params (a Linen dict, boxed or not, an ``nnx.State``, any pytree).
      rules: ``(pattern, label)`` pairs; for each leaf the first match wins.
      default: the label of leaves no rule matches; without it such leaves raise.
      strict: raise ``ValueError`` if a pattern matches no leaf.
      structure: resolves ``@role`` patterns (``@norm_scale``, ``@bias``), as in
        :func:`flaxinit.apply_rules`.

    Returns:
      A tree like ``tree`` with a label in place of each array (or box/Variable).

    Raises:
      ValueError: a pattern matched nothing (``strict``), or a leaf has no label
        and no ``default`` was given.

    Example:
      >>> import jax, optax, flax.linen as nn
      >>> params = nn.Dense(4).init(jax.random.key(0), jax.numpy.ones((1, 3)))
      >>> labels = rule_labels(params, [("bias", "no_decay")], default="decay")
      >>> labels["params"]
      {'bias': 'no_decay', 'kernel': 'decay'}
      >>> tx = optax.multi_transform(
      ...     {"decay": optax.adamw(1e-3), "no_decay": optax.adam(1e-3)}, labels)
    """
    _check_tree(tree, "rule_labels")
    compiled = compile_rules(rules, convert=_label, what="label")
    flat = flatten_tree(tree)
    view = view_structure(structure, flat.infos)
    hits = match_rules(compiled, flat.infos, view)
    if strict:
        raise_unmatched(unmatched(compiled, hits, flat.infos, view), what="label rule")
    labels = []
    uncovered = []
    for info, leaf_hits in zip(flat.infos, hits, strict=True):
        if leaf_hits:
            labels.append(leaf_hits[0].value)
        else:
            labels.append(default)
            uncovered.append(info.path)
    if uncovered and default is _MISSING:
        shown = ", ".join(repr(p) for p in uncovered[:5])
        more = f" and {len(uncovered) - 5} more" if len(uncovered) > 5 else ""
        raise ValueError(f"rule_labels: no rule labels {shown}{more}; add a rule or pass default=")
    return flat.map_outer(lambda n: labels[n])


def rule_mask(
    tree: Any, patterns: str | Sequence[Any], *, strict: bool = True, structure: Any = None
) -> Any:
    """A boolean tree, True where any pattern matches: for ``optax.masked`` and
    ``optax.add_decayed_weights(mask=...)``.

    Args:
      tree: the params.
      patterns: a pattern or a sequence of patterns.
      strict: raise ``ValueError`` if a pattern matches no leaf.
      structure: resolves ``@role`` patterns (see :func:`flaxinit.apply_rules`).

    Example:
      >>> import jax, optax, flax.linen as nn
      >>> params = nn.Dense(4).init(jax.random.key(0), jax.numpy.ones((1, 3)))
      >>> rule_mask(params, ["kernel"])["params"]
      {'bias': False, 'kernel': True}
      >>> tx = optax.adamw(1e-3, mask=rule_mask(params, ["kernel"]))
    """
    _check_tree(tree, "rule_mask")
    if isinstance(patterns, str):
        patterns = [patterns]
    compiled = compile_rules([(p, True) for p in patterns], convert=_label, what="pattern")
    flat = flatten_tree(tree)
    view = view_structure(structure, flat.infos)
    hits = match_rules(compiled, flat.infos, view)
    if strict:
        raise_unmatched(unmatched(compiled, hits, flat.infos, view), what="mask pattern")
    return flat.map_outer(lambda n: bool(hits[n]))
