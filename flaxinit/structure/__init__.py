"""Model structure: each parameter's role and fan axes, read from the model's jaxpr.

A parameter's name and raw shape do not say how the model uses it: Gemma's
``q_einsum`` kernel ``(heads, d_model, head_dim)`` contracts its *middle* axis, a
norm computing ``x * (1 + scale)`` wants its scale at 0, a tied embedding is also
the readout. :func:`model_structure` traces the model once, abstractly, and
follows every leaf through the computation to the ops that consume it::

    s = fi.model_structure(model, tokens)               # NNX, or Linen + variables
    print(s)                                             # role, fan axes, evidence
    s["layers/0/attn/q_einsum/w"].fan_in_axes            # (1,)
    rules = [("@attention_out", fi.scale(0.5))]          # select leaves by role
    params = fi.apply_rules(params, rules, key=key, structure=s)

With ``structure=``, :func:`flaxinit.apply_rules` resolves ``@role`` patterns,
re-draws every fan-based initializer on the leaf's true fan axes, and the recipes
use roles for their default patterns. See :mod:`flaxinit.structure.roles` for how
each role is recognised, and :mod:`flaxinit.structure.dataflow` for the pass.
"""

from __future__ import annotations

import collections
import collections.abc
import gc
from collections.abc import Iterator, Sequence
from typing import Any

import jax
import numpy as np

from flaxinit.structure.dataflow import analyze
from flaxinit.structure.roles import LINEAR_ROLES, ROLES, LeafStructure, classify
from flaxinit.tables import format_table

__all__ = ["LINEAR_ROLES", "ROLES", "LeafStructure", "ModelStructure", "model_structure"]

# Role groups a pattern can name besides the roles themselves.
ROLE_GROUPS: dict[str, tuple[str, ...]] = {
    "kernel": tuple(LINEAR_ROLES),
    "attention": ("attention_query", "attention_key", "attention_value", "attention_out"),
    "mlp": ("mlp_in", "mlp_out"),
    "norm": ("norm_scale", "norm_bias"),
}


class ModelStructure(collections.abc.Mapping):
    """The structure :func:`model_structure` read: a mapping path -> :class:`LeafStructure`.

    Paths are those :func:`flaxinit.rules.tree_paths` writes for the model's
    variables (Linen paths start with the collection, ``params/...``).
    ``str(structure)`` is a table (path, shape, role, fan axes, layer, residual,
    evidence or reason).

    Attributes:
      api: ``"linen"`` or ``"nnx"``.
      num_layers: the model's depth: the length of its scanned stack, else the
        number of distinct block indices, else None.
    """

    def __init__(self, leaves: Sequence[LeafStructure], api: str) -> None:
        self._leaves = {leaf.path: leaf for leaf in leaves}
        self.api = api
        stacks = [leaf.shape[leaf.layer_axis] for leaf in leaves if leaf.layer_axis is not None]
        layers = {leaf.layer for leaf in leaves if leaf.layer is not None}
        self.num_layers: int | None = (
            max(stacks) if stacks else (max(layers) + 1 if layers else None)
        )

    def __getitem__(self, path: str) -> LeafStructure:
        try:
            return self._leaves[path]
        except KeyError:
            raise KeyError(
                f"no leaf at {path!r} in this model structure; paths look like "
                f"{next(iter(self._leaves), '(none)')!r}"
            ) from None

    def __iter__(self) -> Iterator[str]:
        return iter(self._leaves)

    def __len__(self) -> int:
        return len(self._leaves)

    def by_role(self) -> dict[str, list[str]]:
        """The paths of each role present, in tree order."""
        out: dict[str, list[str]] = {}
        for leaf in self._leaves.values():
            for role in leaf.roles:
                out.setdefault(role, []).append(leaf.path)
        return out

    def select(self, role: str) -> list[str]:
        """The paths a ``@role`` pattern selects: a role, a group (``kernel``,
        ``attention``, ``mlp``, ``norm``), ``residual_output``, or any of these
        with ``:residual`` (``@norm_scale:residual``: the last norm of a branch)."""
        check_role(role)
        base, _, qualifier = role.partition(":")
        if base == "residual_output":
            hits = [p for p, leaf in self._leaves.items() if leaf.residual_output]
        else:
            wanted = set(ROLE_GROUPS.get(base, (base,)))
            hits = [p for p, leaf in self._leaves.items() if wanted & set(leaf.roles)]
        if qualifier == "residual":
            hits = [p for p in hits if self._leaves[p].residual_output]
        return hits

    def lookup(self, path: str) -> LeafStructure | None:
        """The leaf at ``path``, also for a Linen ``params`` tree without its
        ``params/`` prefix; None if there is none."""
        leaf = self._leaves.get(path)
        if leaf is None and self.api == "linen":
            leaf = self._leaves.get("params/" + path)
        return leaf

    def __repr__(self) -> str:
        counts = collections.Counter(leaf.role for leaf in self._leaves.values())
        return (
            f"ModelStructure({self.api}, {len(self)} leaves, num_layers={self.num_layers}, "
            + ", ".join(f"{r}={counts[r]}" for r in ROLES if counts[r])
            + ")"
        )

    def __str__(self) -> str:
        rows = []
        for leaf in self._leaves.values():
            layer = "" if leaf.layer is None else str(leaf.layer)
            if leaf.layer_axis is not None:
                layer = f"stack@{leaf.layer_axis}"
            role = "+".join(leaf.roles) if len(leaf.roles) > 1 else leaf.role
            if leaf.norm_offset:
                role += f" ({leaf.norm_offset:g} + scale)"
            axes = (
                f"in{list(leaf.fan_in_axes)} out{list(leaf.fan_out_axes)}"
                + (f" batch{list(leaf.batch_axes)}" if leaf.batch_axes else "")
                if leaf.fan_in_axes or leaf.fan_out_axes
                else (f"batch{list(leaf.batch_axes)}" if leaf.batch_axes else "-")
            )
            why = leaf.reason or "; ".join(leaf.evidence[:2])
            rows.append(
                [
                    leaf.path,
                    str(leaf.shape),
                    role,
                    axes,
                    layer,
                    "yes" if leaf.residual_output else "",
                    why,
                ]
            )
        return format_table(
            ["path", "shape", "role", "axes", "layer", "residual", "evidence"], rows
        )

    def check_tree(self, infos: Sequence[Any]) -> list[LeafStructure]:
        """Per leaf record (``path``, ``shape``) of a tree, its structure; raises
        ``ValueError`` naming the first leaf this structure does not describe, or the
        first parameter the model uses that the tree lacks (a structure of a deeper
        model). A tree may leave out leaves the model does not compute with
        (``batch_stats``, RNG state) or be the ``params`` collection alone."""
        out = []
        for info in infos:
            leaf = self.lookup(info.path)
            if leaf is None or tuple(leaf.shape) != tuple(info.shape):
                what = (
                    "has no leaf at that path"
                    if leaf is None
                    else f"has it with shape {leaf.shape}, the tree {tuple(info.shape)}"
                )
                raise ValueError(
                    f"structure= does not describe this tree: the structure {what} "
                    f"({info.path!r}); build it from this model with "
                    "fi.model_structure(model, *inputs)"
                )
            out.append(leaf)
        seen = {leaf.path for leaf in out}
        collections = {p.split("/", 1)[0] for p in seen} if self.api == "linen" else None
        for path, leaf in self._leaves.items():
            if leaf.role == "other" or path in seen:
                continue
            if collections is not None and path.split("/", 1)[0] not in collections:
                continue  # a collection the tree leaves out as a whole
            raise ValueError(
                f"structure= does not describe this tree: the model uses {path!r} "
                f"({leaf.role}, shape {leaf.shape}) and the tree has no such leaf; build "
                "the structure from this model with fi.model_structure(model, *inputs)"
            )
        return out


def check_role(role: str) -> str:
    """Raises ``ValueError`` listing the roles if ``role`` is not one."""
    known = (*ROLES, *ROLE_GROUPS, "residual_output")
    base, sep, qualifier = role.partition(":")
    if base not in known or (sep and qualifier != "residual"):
        raise ValueError(
            f"unknown role '@{role}'; roles: "
            + ", ".join("@" + r for r in known)
            + " (any of them may end in ':residual')"
        )
    return role


# --------------------------------------------------------------------------- tracing


def _abstract(x: Any) -> Any:
    if hasattr(x, "shape") and hasattr(x, "dtype"):
        return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None))
    return x


def _is_array(x: Any) -> bool:
    return hasattr(x, "shape") and hasattr(x, "dtype")


def _trace(fn: Any, leaves: Sequence[Any], args: Sequence[Any], what: str) -> Any:
    leaf_structs = [jax.ShapeDtypeStruct(x.shape, x.dtype) for x in leaves]
    arg_flat, arg_def = jax.tree_util.tree_flatten(args)
    array_pos = [i for i, a in enumerate(arg_flat) if _is_array(a)]
    arrays = [jax.ShapeDtypeStruct(arg_flat[i].shape, arg_flat[i].dtype) for i in array_pos]

    def traced(leaf_values: list[Any], array_values: list[Any]) -> Any:
        flat = list(arg_flat)
        for i, v in zip(array_pos, array_values, strict=True):
            flat[i] = v
        return fn(leaf_values, jax.tree_util.tree_unflatten(arg_def, flat))

    try:
        closed = jax.make_jaxpr(traced)(leaf_structs, arrays)
    except Exception as e:
        e.add_note(
            f"(raised while fi.model_structure traced the {what} on the given inputs; "
            "pass inputs and keyword arguments the model accepts)"
        )
        raise
    return closed, len(arrays)


def model_structure(model: Any, *args: Any, variables: Any = None, **kwargs: Any) -> ModelStructure:
    """Reads every parameter's role and fan axes from the model's own computation.

    Traces the model's forward pass once, abstractly (``jax.make_jaxpr`` on shapes:
    no FLOPs, no device memory beyond the inputs), and follows each leaf through
    reshape/transpose/convert/broadcast/slicing, into ``jit``, ``custom_jvp``/
    ``custom_vjp``, remat, ``cond``, ``while`` and ``scan`` bodies (a stacked
    ``nn.scan``/``nnx.scan`` leaf is followed per layer) to the ops that consume
    it. Roles come from those ops (:mod:`flaxinit.structure.roles`); what cannot be
    classified is ``other`` with the reason, never a guess.

    Args:
      model: a ``flax.linen.Module`` or an ``nnx.Module``.
      *args: example inputs (arrays or ``jax.ShapeDtypeStruct``) for the call.
      variables: Linen only: the variables (arrays or ``jax.eval_shape`` output);
        None initializes abstractly (``jax.eval_shape(model.init, ...)``).
      **kwargs: keyword arguments of the call (``train=False``, ``positions=...``).

    Returns:
      A :class:`ModelStructure`: ``s[path]`` is a :class:`LeafStructure`, paths as
      :func:`flaxinit.rules.tree_paths` writes them; ``print(s)`` shows a table.

    Raises:
      TypeError: ``model`` is neither a Linen nor an NNX module.
      Exception: whatever the model raises on these inputs, with a note naming
        ``model_structure``.

    Example:
      >>> import jax, jax.numpy as jnp, flax.linen as nn
      >>> class MLP(nn.Module):
      ...     @nn.compact
      ...     def __call__(self, x):
      ...         x = nn.LayerNorm(name="norm")(x)
      ...         x = nn.relu(nn.Dense(8, name="hidden")(x))
      ...         return nn.Dense(3, name="head")(x)
      >>> s = model_structure(MLP(), jnp.ones((2, 4)))
      >>> s["params/head/kernel"].role, s["params/norm/scale"].role
      ('readout', 'norm_scale')
      >>> s["params/hidden/kernel"].role, s["params/hidden/kernel"].fan_in_axes
      ('dense', (0,))
    """
    import flax.linen as nn
    from flax import nnx

    from flaxinit.rules.paths import flatten_tree

    if isinstance(model, nn.Module):
        api = "linen"
        if variables is None:
            keys = {"params": jax.random.key(0), "dropout": jax.random.key(1)}
            try:
                variables = jax.eval_shape(lambda: model.init(keys, *args, **kwargs))
            except Exception as e:
                e.add_note(
                    "(raised while fi.model_structure initialized the Linen model abstractly; "
                    "pass inputs the model accepts, or variables=)"
                )
                raise
        flat = flatten_tree(variables)
        rngs = {"dropout": jax.random.key(1)}

        def fn(leaves: list[Any], call_args: Sequence[Any]) -> Any:
            out, _ = model.apply(
                flat.rebuild(leaves), *call_args, mutable=True, rngs=rngs, **kwargs
            )
            return out

    elif isinstance(model, nnx.Module):
        api = "nnx"
        if variables is not None:
            raise TypeError("model_structure: variables= is for Linen models; NNX holds its own")
        graphdef, state = nnx.split(model)
        flat = flatten_tree(state)

        def fn(leaves: list[Any], call_args: Sequence[Any]) -> Any:
            return nnx.merge(graphdef, flat.rebuild(leaves))(*call_args, **kwargs)

    else:
        raise TypeError(
            "model_structure: model must be a flax.linen.Module or an nnx.Module, got "
            f"{type(model).__name__}"
        )

    leaves = list(flat.arrays)
    # The trace and the pass allocate many short-lived objects and no cycles worth
    # collecting mid-way: collection would cost a third of the time.
    collecting = gc.isenabled()
    gc.disable()
    try:
        closed, num_inputs = _trace(fn, leaves, args, f"{api} model")
        facts = analyze(closed, len(leaves), num_inputs)
    finally:
        if collecting:
            gc.enable()
    infos = flat.infos
    collections_ = [
        info.path.split("/", 1)[0] if api == "linen" and "/" in info.path else None
        for info in infos
    ]
    structures = classify(
        facts,
        [i.path for i in infos],
        [i.shape for i in infos],
        [np.dtype(i.dtype) for i in infos],
        [i.layer for i in infos],
        collections_,
    )
    return ModelStructure(structures, api)
