"""Sharded initialization of Linen and NNX models, rules applied in the same program.

The recipe, for both frameworks:

1. Abstract init (``jax.eval_shape`` / ``nnx.eval_shape``): shapes, dtypes and
   metadata, no FLOPs, no memory.
2. Per leaf a ``PartitionSpec``: a partition rule's, else the partitioning
   metadata's, else replicated; checked against the mesh before anything compiles.
3. One ``jax.jit(init + apply_rules, out_shardings=...)``, traced under the mesh
   with every axis made automatic and sharding constraints on each new value, so
   the partitioner generates every parameter (and every re-draw of a rule) shard by
   shard; the outputs are laid out on the caller's mesh, Explicit axes included.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
from flax import nnx
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from flaxinit.rules.engine import apply_rules
from flaxinit.rules.matching import raise_unmatched
from flaxinit.rules.paths import flatten_tree
from flaxinit.rules.planning import make_plan
from flaxinit.sharding.program import ShardedInit, auto_mesh
from flaxinit.sharding.specs import outer_tree, resolve_specs, rule_specs

__all__ = ["init_sharded", "nnx_init_sharded", "plan_init", "plan_nnx_init"]


def _context(mesh: Any, logical_axis_rules: Any) -> Callable[..., contextlib.ExitStack]:
    """Enters the automatic-axes twin of ``mesh`` (and the logical axis rules)."""
    automatic = auto_mesh(mesh)

    def enter(with_mesh: bool = True) -> contextlib.ExitStack:
        stack = contextlib.ExitStack()
        if with_mesh:
            stack.enter_context(jax.set_mesh(automatic))
        if logical_axis_rules is not None:
            # One context for Linen and NNX (flax.core.spmd).
            stack.enter_context(nn.logical_axis_rules(logical_axis_rules))
        return stack

    return enter


def _check_rules(
    abstract: Any, rules: Any, context: Any, strict: bool, num_layers: Any, layer_of: Any
) -> None:
    """Compiles the rules and matches them on the abstract tree, before tracing."""
    if rules is None:
        return
    plan = make_plan(abstract, rules, context, num_layers=num_layers, layer_of=layer_of)
    if strict:
        raise_unmatched(plan.missing())


def _layout(
    abstract: Any, mesh: Any, partition_rules: Any, logical_axis_rules: Any, strict: bool
) -> tuple[Any, Any, Any, Any]:
    """Specs, shardings on ``mesh``, shardings on its automatic twin, and the
    abstract tree with each leaf's sharding."""
    flat = flatten_tree(abstract)
    specs = resolve_specs(
        flat,
        mesh,
        partition_rules=partition_rules,
        logical_axis_rules=logical_axis_rules,
        strict=strict,
    )
    automatic = auto_mesh(mesh)
    shardings = [NamedSharding(mesh, s) for s in specs]
    inner = [NamedSharding(automatic, s) for s in specs]
    sds = [
        jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s)
        for x, s in zip(flat.arrays, shardings, strict=True)
    ]
    return (
        outer_tree(flat, specs),
        outer_tree(flat, shardings),
        outer_tree(flat, inner),
        flat.rebuild(sds),
    )


def plan_init(
    model: nn.Module,
    key: Any,
    *args: Any,
    mesh: jax.sharding.Mesh,
    rules: Sequence[tuple[Any, Any]] | None = None,
    rules_key: Any = None,
    partition_rules: Sequence[tuple[Any, Any]] | None = None,
    logical_axis_rules: Any = None,
    context: Any = None,
    num_layers: int | None = None,
    layer_of: Callable[[str], int | None] | None = None,
    strict: bool = True,
    **init_kwargs: Any,
) -> ShardedInit:
    """Plans ``model.init(key, *args)`` (then ``apply_rules``) sharded on ``mesh``.

    Nothing runs but an abstract init: the result knows every leaf's shape and
    sharding (``.abstract``, ``.specs``), can report the program's per-device memory
    (``.memory()``), and runs when called. See :func:`init_sharded`.

    Example:
      >>> import flax.linen as nn
      >>> from jax.sharding import PartitionSpec as P
      >>> from flaxinit.sharding import plan_init
      >>> mesh = jax.make_mesh((8,), ("model",))
      >>> plan = plan_init(nn.Dense(64), jax.random.key(0), jnp.ones((1, 16)), mesh=mesh,
      ...                  partition_rules=[("kernel", P(None, "model"))])
      >>> plan.specs["params"]["kernel"] == P(None, "model")
      True
      >>> variables = plan()
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a flax.linen Module, got {type(model).__name__}")
    enter = _context(mesh, logical_axis_rules)
    rules_key = key if rules_key is None else rules_key
    rules = None if rules is None else list(rules)

    def init(key: Any, rules_key: Any, *args: Any) -> Any:
        return model.init(key, *args, **init_kwargs)

    with enter():
        abstract = jax.eval_shape(init, key, rules_key, *args)
    _check_rules(abstract, rules, context, strict, num_layers, layer_of)
    specs, shardings, inner, abstract = _layout(
        abstract, mesh, partition_rules, logical_axis_rules, strict
    )

    def program(key: Any, rules_key: Any, *args: Any) -> Any:
        variables = init(key, rules_key, *args)
        if rules is None:
            return variables
        return apply_rules(
            variables,
            rules,
            key=rules_key,
            context=context,
            strict=strict,
            shardings=inner,
            num_layers=num_layers,
            layer_of=layer_of,
        )

    replicated = NamedSharding(mesh, P())
    fn = jax.jit(program, in_shardings=replicated, out_shardings=shardings)
    return ShardedInit(
        abstract=abstract,
        specs=specs,
        shardings=shardings,
        mesh=mesh,
        _fn=fn,
        _args=(key, rules_key, *args),
        _context=enter,
        _finish=lambda out: out,
    )


def init_sharded(
    model: nn.Module,
    key: Any,
    *args: Any,
    mesh: jax.sharding.Mesh,
    rules: Sequence[tuple[Any, Any]] | None = None,
    rules_key: Any = None,
    partition_rules: Sequence[tuple[Any, Any]] | None = None,
    logical_axis_rules: Any = None,
    context: Any = None,
    num_layers: int | None = None,
    layer_of: Callable[[str], int | None] | None = None,
    strict: bool = True,
    **init_kwargs: Any,
) -> Any:
    """Initializes a Linen model directly sharded on ``mesh``, rules included.

    Returns what ``apply_rules(model.init(key, *args), rules, key=rules_key)``
    returns (boxes and all), bitwise the same values as that computation jitted on
    one device, each leaf laid out as its spec says and generated shard by shard:
    no device or host ever holds a full copy of a sharded parameter.

    A leaf's spec is that of the first ``partition_rules`` pattern matching its
    path (``params/h_0/mlp/c_fc/kernel``), else what its box declares
    (``nn.with_partitioning``; ``nn.with_logical_partitioning`` mapped by
    ``logical_axis_rules``), else replicated. A logical name that no rule maps
    raises (map it to None to replicate on purpose).

    On an Explicit mesh (``jax.make_mesh``'s default) the arrays come back with
    Explicit shardings, and a stock model's forward pass on them can be refused by
    JAX (``nn.Embed``'s gather of a sharded table asks for an ``out_sharding``);
    pass ``mesh=auto_mesh(mesh)`` to get the same layout on Auto axes.

    Args:
      model: a ``flax.linen`` Module.
      key: the init key (typed or legacy); the same on every process.
      *args: example inputs of ``model.init`` (replicated; shapes are what count).
      mesh: a ``jax.sharding.Mesh`` with Auto or Explicit axes.
      rules: ``(pattern, action)`` rules for :func:`flaxinit.apply_rules`, run in
        the same program.
      rules_key: the key of the rules' re-draws (default ``key``: rule keys fold in
        each leaf's path, so they are not Linen's per-module keys).
      partition_rules: ``(pattern, PartitionSpec)`` pairs; first match wins.
      logical_axis_rules: ``(logical_name, mesh_axes)`` pairs for logical metadata
        (default: the active ``nn.logical_axis_rules`` context).
      context: the rules' ``context`` (see :func:`flaxinit.apply_rules`).
      num_layers: the rules' ``num_layers`` (see :func:`flaxinit.apply_rules`).
      layer_of: the rules' ``layer_of`` (see :func:`flaxinit.apply_rules`).
      strict: raise for rules or partition rules that match nothing, for specs
        that do not divide a shape (else such a dimension is replicated) and for
        logical names no ``logical_axis_rules`` entry maps (else Flax replicates
        them).
      **init_kwargs: passed to ``model.init`` (``method=``, ``train=``).

    Raises:
      ValueError / TypeError: before anything compiles, for unmatched patterns,
        specs that name missing axes or do not divide, logical names that no
        ``logical_axis_rules`` entry maps (all listed in one error), or malformed
        rules.

    Example:
      >>> import flax.linen as nn
      >>> from jax.sharding import PartitionSpec as P
      >>> from flaxinit.sharding import init_sharded
      >>> mesh = jax.make_mesh((2, 4), ("data", "model"))
      >>> variables = init_sharded(
      ...     nn.Dense(64), jax.random.key(0), jnp.ones((1, 16)), mesh=mesh,
      ...     rules=[("kernel", fi.normal(0.02))],
      ...     partition_rules=[("kernel", P("data", "model"))])
      >>> variables["params"]["kernel"].sharding.spec == P("data", "model")
      True
    """
    return plan_init(
        model,
        key,
        *args,
        mesh=mesh,
        rules=rules,
        rules_key=rules_key,
        partition_rules=partition_rules,
        logical_axis_rules=logical_axis_rules,
        context=context,
        num_layers=num_layers,
        layer_of=layer_of,
        strict=strict,
        **init_kwargs,
    )()


def plan_nnx_init(
    make_model: Callable[[], nnx.Module],
    *,
    mesh: jax.sharding.Mesh,
    rules: Sequence[tuple[Any, Any]] | None = None,
    key: Any = None,
    partition_rules: Sequence[tuple[Any, Any]] | None = None,
    logical_axis_rules: Any = None,
    context: Any = None,
    num_layers: int | None = None,
    layer_of: Callable[[str], int | None] | None = None,
    strict: bool = True,
) -> ShardedInit:
    """Plans ``make_model()`` (then ``apply_rules``) sharded on ``mesh``.

    ``.abstract`` is the model's ``nnx.State`` with abstract leaves; calling the
    plan returns the module. See :func:`nnx_init_sharded`.

    Example:
      >>> from flax import nnx
      >>> from jax.sharding import PartitionSpec as P
      >>> from flaxinit.sharding import plan_nnx_init
      >>> mesh = jax.make_mesh((8,), ("model",))
      >>> plan = plan_nnx_init(lambda: nnx.Linear(16, 64, rngs=nnx.Rngs(0)), mesh=mesh,
      ...                      partition_rules=[("kernel", P(None, "model"))])
      >>> plan.specs["kernel"] == P(None, "model")
      True
    """
    if not callable(make_model) or isinstance(make_model, nnx.Module):
        raise TypeError(
            "make_model must be a function that builds the module (lambda: Model(..., "
            f"rngs=nnx.Rngs(0))), got {type(make_model).__name__}"
        )
    enter = _context(mesh, logical_axis_rules)
    rules = None if rules is None else list(rules)

    # No mesh and no eager sharding for the abstract pass: the specs are checked
    # below, with errors that name the path (the program itself runs with both).
    with enter(with_mesh=False), nnx.use_eager_sharding(False):
        abstract_model = nnx.eval_shape(make_model)
        if not isinstance(abstract_model, nnx.Module):
            raise TypeError(
                f"make_model must return an nnx.Module, got {type(abstract_model).__name__}"
            )
        graphdef, abstract = nnx.split(abstract_model)
    _check_rules(abstract, rules, context, strict, num_layers, layer_of)
    placed = None  # the specs that path rules chose, written into the Variables' metadata
    if partition_rules is not None:
        flat = flatten_tree(abstract)
        placed = outer_tree(flat, rule_specs(flat, partition_rules, strict=False))
    specs, shardings, inner, abstract = _layout(
        abstract, mesh, partition_rules, logical_axis_rules, strict
    )

    def program(key: Any) -> Any:
        _, state = nnx.split(make_model())
        if rules is None:
            return state
        return apply_rules(
            state,
            rules,
            key=key,
            context=context,
            strict=strict,
            shardings=inner,
            num_layers=num_layers,
            layer_of=layer_of,
        )

    replicated = NamedSharding(mesh, P())
    fn = jax.jit(program, in_shardings=replicated, out_shardings=shardings)
    return ShardedInit(
        abstract=abstract,
        specs=specs,
        shardings=shardings,
        mesh=mesh,
        _fn=fn,
        _args=(key,),
        _context=enter,
        _finish=lambda state: _annotated(nnx.merge(graphdef, state), placed),
    )


def _annotated(model: nnx.Module, placed: Any) -> nnx.Module:
    """``model`` with each Variable that a path rule placed given that spec as its
    ``out_sharding`` metadata (replacing logical names the rule overrode), so that
    ``nnx.get_partition_spec`` and ``nnx.get_named_sharding`` report the layout the
    arrays have."""
    if placed is None:
        return model
    wanted = dict(nnx.to_flat_state(placed))
    for path, variable in nnx.to_flat_state(nnx.state(model)):
        spec = wanted.get(path)
        if spec is not None:
            variable.set_metadata(out_sharding=spec)
    return model


def nnx_init_sharded(
    make_model: Callable[[], nnx.Module],
    *,
    mesh: jax.sharding.Mesh,
    rules: Sequence[tuple[Any, Any]] | None = None,
    key: Any = None,
    partition_rules: Sequence[tuple[Any, Any]] | None = None,
    logical_axis_rules: Any = None,
    context: Any = None,
    num_layers: int | None = None,
    layer_of: Callable[[str], int | None] | None = None,
    strict: bool = True,
) -> nnx.Module:
    """Builds an NNX model directly sharded on ``mesh``, rules included.

    ``make_model`` builds the module (``lambda: GPT(cfg, rngs=nnx.Rngs(0))``); it
    runs once abstractly and once inside the compiled program. The result equals
    ``apply_rules(make_model(), rules, key=key)`` jitted on one device, bitwise,
    each Variable's array laid out on ``mesh`` as its spec says: the first
    ``partition_rules`` pattern matching its path (``h/0/mlp/c_fc/kernel``), else its
    ``out_sharding`` metadata (logical names mapped by ``logical_axis_rules``; a
    name that is neither mapped nor a mesh axis raises), else replicated. Under
    Explicit axes the program is traced with the axes made automatic, so NNX's
    eager sharding constrains instead of resharding a full copy; the arrays come
    back on ``mesh`` itself, where a stock model's forward pass can be refused (see
    :func:`init_sharded`; ``mesh=auto_mesh(mesh)`` avoids it).

    Args:
      make_model: a function of no arguments returning an ``nnx.Module``.
      mesh: a ``jax.sharding.Mesh`` with Auto or Explicit axes.
      rules: rules for :func:`flaxinit.apply_rules`, run in the same program.
      key: the rules' key (needed by re-draws).
      partition_rules: ``(pattern, PartitionSpec)`` pairs; first match wins.
      logical_axis_rules: ``(logical_name, mesh_axes)`` pairs for logical metadata.
      context: the rules' ``context``.
      num_layers: the rules' ``num_layers``.
      layer_of: the rules' ``layer_of``.
      strict: as in :func:`init_sharded`.

    Example:
      >>> from flax import nnx
      >>> from jax.sharding import PartitionSpec as P
      >>> from flaxinit.sharding import nnx_init_sharded
      >>> mesh = jax.make_mesh((8,), ("model",))
      >>> model = nnx_init_sharded(
      ...     lambda: nnx.Linear(16, 64, rngs=nnx.Rngs(0)), mesh=mesh,
      ...     rules=[("bias", fi.fill(0.1))], partition_rules=[("kernel", P(None, "model"))])
      >>> model.kernel[...].sharding.spec == P(None, "model")
      True
    """
    return plan_nnx_init(
        make_model,
        mesh=mesh,
        rules=rules,
        key=key,
        partition_rules=partition_rules,
        logical_axis_rules=logical_axis_rules,
        context=context,
        num_layers=num_layers,
        layer_of=layer_of,
        strict=strict,
    )()
