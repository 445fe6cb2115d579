"""Where a rule's result is produced: the layout (``NamedSharding``) of each new leaf.

A leaf's layout is the one given in ``apply_rules(..., shardings=)``, else its own: a
placed array's sharding, or under explicit mesh axes the sharding in a traced leaf's
type. :func:`in_layout` produces a step's result directly in that layout, so a
re-draw of a sharded leaf is generated shard by shard and never materialized whole on
one device.

Invariant: values never depend on the layout (``jax_threefry_partitionable``); only
where they are computed does.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax

from flaxinit.rules.paths import FlatTree

__all__ = ["given_layouts", "in_layout", "own_layout"]


def _named(sharding: Any) -> Any:
    """``sharding`` if it is a ``NamedSharding`` that splits some axis, else None."""
    if not isinstance(sharding, jax.sharding.NamedSharding):
        return None
    if all(entry is None for entry in sharding.spec):
        return None
    return sharding


def own_layout(x: Any) -> Any:
    """The layout a leaf's new value should get when none is given: a placed array's
    sharding, or under explicit mesh axes the sharding in a traced leaf's type.
    None when that layout splits no axis (nothing to keep).

    Example:
      >>> import jax.numpy as jnp
      >>> own_layout(jnp.zeros(4)) is None  # not placed, or on one device
      True
    """
    if isinstance(x, jax.core.Tracer):
        try:
            sharding = jax.typeof(x).sharding
        except Exception:  # not an array type
            return None
        named = _named(sharding)
        return named if named is not None and named.mesh.explicit_axes else None
    if isinstance(x, jax.Array) and x.committed:
        return _named(x.sharding)
    return None


def given_layouts(flat: FlatTree, shardings: Any) -> list[Any]:
    """Per array leaf of ``flat``, its entry of the ``shardings`` tree (or None)."""
    try:
        outer = flat.treedef.flatten_up_to(shardings)
    except (ValueError, TypeError) as e:
        raise TypeError(
            "shardings must be a tree with the structure of `tree` holding a "
            "NamedSharding (or None) per leaf, as nn.get_sharding or "
            f"nnx.get_named_sharding give: {e}"
        ) from None
    out = []
    for o, i in flat.slots:
        item = outer[o]
        if item is not None and not isinstance(item, jax.sharding.Sharding):
            subs = jax.tree_util.tree_leaves(item)
            item = subs[max(i, 0)] if 0 <= i < len(subs) else (subs[0] if subs else None)
        if item is not None and not isinstance(item, jax.sharding.Sharding):
            raise TypeError(
                f"shardings: the entry for {flat.infos[len(out)].path!r} must be a "
                f"NamedSharding or None, got {item!r}"
            )
        out.append(_named(item))
    return out


def in_layout(step: Callable[..., Any], x: Any, keys: Any, layout: Any) -> Any:
    """``step(x, keys)``, its result produced directly in ``layout`` (a NamedSharding).

    Under explicit mesh axes the step runs with them made automatic and its result
    is laid out as ``layout`` (``jax.sharding.auto_axes``), so a re-draw is generated
    shard by shard instead of replicated and then resharded; under automatic axes a
    sharding constraint on the result lets the partitioner do the same. Values do
    not depend on the layout (``jax_threefry_partitionable``). Arrays enter as
    arguments, never closed over: a traced value typed on the explicit mesh may not
    be used inside the automatic one.
    """
    if layout is None:
        return step(x, keys)
    explicit = tuple(layout.mesh.explicit_axes)
    if explicit:
        return jax.sharding.auto_axes(step, axes=explicit, out_sharding=layout)(x, keys)
    out = step(x, keys)
    if isinstance(out, jax.core.Tracer):
        return jax.lax.with_sharding_constraint(out, layout)
    return out
