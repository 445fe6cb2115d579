"""``apply_rules`` and ``apply_rules_``: the public entry of the rules engine.

Applying rules is three steps, each in its own module: a static plan from paths
(:mod:`~flaxinit.rules.planning`, matching in :mod:`~flaxinit.rules.matching`), the
keys (:mod:`~flaxinit.rules.keys`), then one compiled program of array work
(:mod:`~flaxinit.rules.program`, layouts in :mod:`~flaxinit.rules.layout`).
``explain_rules`` (:mod:`~flaxinit.rules.report`) shows the plan without running it.

Invariant: the same key and tree give bitwise the same result, jitted or not, and a
leaf's values depend on the key and its path only.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax

from flaxinit._deprecation import module_getattr
from flaxinit.rules.keys import check_key
from flaxinit.rules.layout import given_layouts, own_layout
from flaxinit.rules.matching import raise_unmatched
from flaxinit.rules.planning import make_plan
from flaxinit.rules.program import program

__all__ = ["apply_rules", "apply_rules_"]


def _load(module: str, name: str) -> Callable[[], Any]:
    def load() -> Any:
        import importlib

        return getattr(importlib.import_module(f"flaxinit.rules.{module}"), name)

    return load


# The names this module held before the split, each now in the module that owns it.
__getattr__ = module_getattr(
    __name__,
    {
        name: (f"flaxinit.rules.{name}", _load(module, name))
        for module, names in {
            "report": ("LeafReport", "RulesReport", "explain_rules"),
            "matching": ("UnmatchedRule",),
            "keys": ("stable_hash",),
        }.items()
        for name in names
    },
)


def apply_rules(
    tree: Any,
    rules: Sequence[tuple[Any, Any]],
    *,
    key: Any = None,
    context: Mapping[str, Any] | None = None,
    strict: bool = True,
    shardings: Any = None,
    structure: Any = None,
    num_layers: int | None = None,
    layer_of: Callable[[str], int | None] | None = None,
) -> Any:
    """Rewrites the leaves of a parameter tree that the rules' patterns match.

    Every rule whose pattern matches a leaf's path applies, in list order, each to
    the result of the previous one. The result has the structure, shapes, dtypes
    and metadata (boxes, NNX Variables) of ``tree``; an NNX module gives a new
    module and leaves the input alone (see :func:`apply_rules_` to update in place).
    Matching runs in Python when called (at trace time under ``jax.jit``); only
    array work remains in the compiled program. Keys come from ``key`` and each
    leaf's path only (see the module docstring), so jitted and eager calls agree
    bitwise and adding other leaves changes nothing here.

    Args:
      tree: a Linen variable dict (with or without ``params``, boxed or not), an
        ``nnx.State``, an NNX module, or any pytree of arrays.
      rules: ``(pattern, action)`` pairs; see :mod:`flaxinit.rules` for patterns and
        actions.
      key: a ``jax.random.key`` or legacy ``PRNGKey``; needed by re-draws.
      context: extra entries for ``ctx`` (``ctx.d_model``). Its keys may not be
        names of ``RuleContext`` attributes.
      strict: raise ``ValueError`` if a rule matches no leaf.
      shardings: where each rewritten leaf lives: a tree with the structure of
        ``tree`` holding a ``NamedSharding`` (or None) per leaf, as
        ``nn.get_sharding``/``nnx.get_named_sharding`` give. Each rule's result is
        then produced directly in that layout (under automatic mesh axes with a
        sharding constraint, under explicit ones with ``jax.sharding.auto_axes``),
        so a re-draw never materializes a full copy on one device. By default a
        leaf's own layout is used: a placed array's ``.sharding``, or under
        explicit mesh axes the sharding in a traced leaf's type. Under an outer
        ``jax.jit`` with automatic axes a traced leaf has no layout of its own;
        pass ``shardings`` (``flaxinit.sharding`` does). Values never depend on it.
      structure: a :class:`~flaxinit.structure.ModelStructure` of the model the
        tree belongs to (``fi.model_structure(model, *inputs)``). It resolves
        ``@role`` patterns, gives each rule's context the leaf's ``role``, fan axes
        and ``norm_offset``, and makes re-draws without declared axes use the fan
        axes the model contracts (an Einsum kernel ``(heads, d, head_dim)`` is
        drawn with fan_in ``d``, fan_out ``heads * head_dim``).
      num_layers: ``ctx.num_layers`` for every leaf, overriding the count read from
        the tree (``context['num_layers']`` before; that still works and warns).
      layer_of: a function ``path -> int | None`` giving each leaf's layer index
        (``ctx.layer``), replacing the built-in parser of ``layers_3``/``blocks/3``
        (``context['layer_of']`` before; that still works and warns).

    Returns:
      The rewritten tree.

    Raises:
      ValueError: a rule matched nothing (``strict``), an action changed a leaf's
        shape or dtype, a scale factor is not finite, a re-draw has no key, a
        ``@role`` pattern has no ``structure``, or ``structure`` describes another
        model (the first path that differs is named).
      TypeError: a rule is not a ``(pattern, action)`` pair.

    Example:
      >>> import jax, flax.linen as nn
      >>> from flaxinit.initializers import he_normal
      >>> from flaxinit.rules import fill
      >>> params = nn.Dense(4).init(jax.random.key(0), jax.numpy.ones((1, 3)))
      >>> params = apply_rules(params, [("kernel", he_normal()), ("bias", fill(0.1))],
      ...                      key=jax.random.key(1))
      >>> bool((params["params"]["bias"] == jax.numpy.float32(0.1)).all())
      True
    """
    shardings_tree = shardings
    plan = make_plan(tree, rules, context, structure, num_layers=num_layers, layer_of=layer_of)
    if strict:
        raise_unmatched(plan.missing())
    key = check_key(key)
    arrays = list(plan.flat.arrays)
    touched = [n for n, leaf_rules in enumerate(plan.hits) if leaf_rules]
    if not touched:
        return plan.flat.rebuild(arrays)

    xs = [arrays[n] for n in touched]
    # Eagerly, a committed (placed) array's new value keeps its sharding; under an
    # outer jit the outer program decides.
    shardings = [
        x.sharding
        if isinstance(x, jax.Array) and not isinstance(x, jax.core.Tracer) and x.committed
        else None
        for x in xs
    ]
    if shardings_tree is None:
        layouts = [own_layout(x) for x in xs]
    else:
        given = given_layouts(plan.flat, shardings_tree)
        layouts = [given[n] for n in touched]
        # Eagerly, a given layout is also where the new value is placed.
        shardings = [
            s if layout is None or isinstance(x, jax.core.Tracer) else layout
            for s, layout, x in zip(shardings, layouts, xs, strict=True)
        ]
    if all(s is None for s in shardings):
        shardings = None
    if all(layout is None for layout in layouts):
        layouts = None
    new = program(plan, touched, shardings, layouts)(xs, key)
    for n, x in zip(touched, new, strict=True):
        arrays[n] = x
    return plan.flat.rebuild(arrays)


def apply_rules_(module: Any, rules: Sequence[tuple[Any, Any]], **kwargs: Any) -> Any:
    """``apply_rules`` on an NNX module, writing the new values into it in place.

    Equivalent to ``nnx.update(module, nnx.state(apply_rules(module, rules, ...)))``;
    the module's Variables keep their identity and metadata. Returns ``module``.

    Example:
      >>> from flax import nnx
      >>> from flaxinit.rules import fill
      >>> model = nnx.Linear(3, 4, rngs=nnx.Rngs(0))
      >>> apply_rules_(model, [("bias", fill(0.5))]) is model
      True
      >>> model.bias[...].tolist()
      [0.5, 0.5, 0.5, 0.5]
    """
    from flax import nnx

    if not isinstance(module, nnx.Module):
        raise TypeError(f"apply_rules_ updates an nnx.Module in place, got {type(module).__name__}")
    new = apply_rules(module, rules, **kwargs)
    nnx.update(module, nnx.state(new))
    return module
