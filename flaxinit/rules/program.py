"""The compiled program that runs a plan's array work, and its cache.

One jitted program runs the rules of every touched leaf, also when called eagerly:
XLA reassociates chained constant multiplications (a re-draw's std, then a scale)
inside a program, so op-by-op execution would round differently. Under an outer
``jax.jit`` this inner jit is inlined: the same program, the same bits. The program
closes over leaf descriptions and rules, never over the tree's arrays.

Programs are cached by :func:`fingerprint` of what they compute, so calling a recipe
again (new closures, the same code and captured values) reuses the compiled program.

Invariants: each rule works on the materialized result of the previous one (an
optimization barrier between steps), so a stacked leaf and its unrolled layers round
alike; every key comes from :mod:`flaxinit.rules.keys`.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import types
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from flaxinit.rules.actions import check_result
from flaxinit.rules.keys import derive_keys, key_chain
from flaxinit.rules.layout import in_layout
from flaxinit.rules.matching import Rule
from flaxinit.rules.paths import LeafInfo
from flaxinit.rules.planning import LayerContexts, Plan, layer_axis

__all__ = ["fingerprint", "global_names", "program"]


@dataclasses.dataclass(frozen=True)
class _Step:
    """One rule on one leaf: the axis it runs along layer by layer (or None), the
    action to run, and how it is named in errors."""

    rule: Rule
    axis: int | None
    action: Any
    what: str


def _steps(info: LeafInfo, hits: Sequence[Rule]) -> tuple[_Step, ...]:
    out = []
    for rule in hits:
        axis, action = layer_axis(info, rule.value)
        what = f"rule {rule.index} ({rule.pattern.source!r}, {rule.value!r})"
        out.append(_Step(rule, axis, action, what))
    return tuple(out)


def _leaf_keys(key: Any, leaves: Sequence[tuple[int, LeafInfo, tuple[_Step, ...]]]) -> dict:
    """``{(leaf position, step): keys}`` for every step that draws: one key for a step
    on the whole leaf, one per layer (stacked) for a step run layer by layer."""
    if key is None:
        return {}
    where, requests = [], []
    for i, (_, info, steps) in enumerate(leaves):
        for s, step in enumerate(steps):
            if not step.action.needs_key:
                continue
            tag = step.rule.tag
            if step.axis is None:
                requests.append([key_chain(info, tag)])
            else:
                length = info.shape[step.axis]
                requests.append([key_chain(info, tag, layer) for layer in range(length)])
            where.append((i, s))
    derived = derive_keys(key, requests)
    return {
        (i, s): keys[0] if leaves[i][2][s].axis is None else keys
        for (i, s), keys in zip(where, derived, strict=True)
    }


def _run_leaf(
    contexts: LayerContexts,
    n: int,
    info: LeafInfo,
    steps: Sequence[_Step],
    x: Any,
    keys: Callable[[int], Any],
    layout: Any = None,
) -> Any:
    x = jnp.asarray(x)
    for s, step in enumerate(steps):
        if s:
            # Each rule works on the materialized result of the previous one: XLA
            # would otherwise fold a re-draw's std and a later scale into one
            # constant, which rounds differently for a stacked (vector of factors)
            # and an unrolled (scalar factor) leaf.
            x = jax.lax.optimization_barrier(x)
        if step.axis is None:
            ctx = contexts.context(n, info)

            def run_step(x, k, action=step.action, ctx=ctx):
                return action(k, x, ctx)
        else:
            ctxs = contexts.slices(n, info, step.axis)

            def run_step(x, keys, action=step.action, ctxs=ctxs, axis=step.axis, what=step.what):
                if not ctxs:  # a stack of no layers: nothing to draw or rewrite
                    return x
                xs = jnp.moveaxis(x, axis, 0)
                out = action.call_stacked(keys, xs, ctxs)
                return jnp.moveaxis(check_result(info.path, what, xs, out), 0, axis)

        try:
            out = in_layout(run_step, x, keys(s), layout)
        except (TypeError, ValueError) as e:
            raise _naming_the_leaf(e, step.what, info) from e
        x = check_result(info.path, step.what, x, out)
    return x


def _naming_the_leaf(error: Exception, what: str, info: LeafInfo) -> Exception:
    """``error`` with the rule and the leaf named, unless it names the leaf already
    (an initializer failing on a 1-D leaf only says it needs two axes)."""
    text = str(error)
    where = f"{what} failed on the leaf at {info.path!r} of shape {info.shape}"
    if info.path in text:
        return error
    if type(error) not in (TypeError, ValueError):
        error.add_note(where)  # a subclass may not take a message: keep it, add ours
        return error
    renamed = type(error)(f"{where}: {text}")
    for note in getattr(error, "__notes__", ()):
        renamed.add_note(note)
    return renamed


def fingerprint(obj: Any, depth: int = 0) -> Any:
    """A hashable key equal for value-equal rule sets, so that calling a recipe again
    (new closures, the same code and captured values) reuses the compiled program.

    Functions are keyed by their code, defaults, captured values and the globals
    their code reads (a ``lambda ctx: FACTOR`` sees a changed ``FACTOR``);
    dataclasses by type and fields; other objects only if they compare by value.
    An object hashed by identity could change between calls without changing its
    key, so it, like anything unhashable, raises ``TypeError``: the caller then
    compiles without the cache, as for an unhashable context value.

    Example:
      >>> make = lambda factor: (lambda ctx: factor)
      >>> fingerprint(make(0.5)) == fingerprint(make(0.5)), fingerprint(make(0.5)) == fingerprint(
      ...     make(2.0))
      (True, False)
    """
    if depth > 24:
        raise TypeError("too deep to fingerprint")
    if obj is None or isinstance(obj, (bool, int, float, complex, str, bytes, np.dtype)):
        return obj
    if isinstance(obj, tuple):
        return tuple(fingerprint(x, depth + 1) for x in obj)
    if isinstance(obj, frozenset):
        return frozenset(fingerprint(x, depth + 1) for x in obj)
    if isinstance(obj, types.FunctionType):
        cells = tuple(c.cell_contents for c in obj.__closure__ or ())
        kwdefaults = tuple(sorted((obj.__kwdefaults__ or {}).items()))
        names = global_names(obj.__code__)
        # A global function, class or module is the same code while it is the same
        # object (rebinding the name gives a new one): keyed by identity, not followed.
        reads = tuple(
            (name, _global_key(obj.__globals__[name], depth))
            for name in sorted(names)
            if name in obj.__globals__
        )
        return (
            "function",
            obj.__code__,
            fingerprint(obj.__defaults__, depth + 1),
            fingerprint(kwdefaults, depth + 1),
            fingerprint(cells, depth + 1),
            reads,
        )
    if isinstance(obj, (types.ModuleType, type, types.BuiltinFunctionType)):
        return obj  # modules, classes and builtins: the same object is the same code
    if isinstance(obj, functools.partial):
        kwargs = tuple(sorted(obj.keywords.items()))
        return ("partial", *fingerprint((obj.func, obj.args, kwargs), depth + 1))
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        fields = tuple(getattr(obj, f.name) for f in dataclasses.fields(obj) if f.compare)
        return (type(obj), fingerprint(fields, depth + 1))
    if type(obj).__hash__ is object.__hash__:
        raise TypeError(f"{type(obj).__name__} is hashed by identity")
    hash(obj)
    return (type(obj), obj)


def _global_key(value: Any, depth: int) -> Any:
    if isinstance(value, (types.FunctionType, types.ModuleType, type, types.BuiltinFunctionType)):
        return ("object", id(value), value)
    return fingerprint(value, depth + 1)


def global_names(code: types.CodeType) -> set[str]:
    """The global names ``code`` and the functions defined in it may read.

    Example:
      >>> def f():
      ...     return lambda: math.pi + OTHER
      >>> sorted(global_names(f.__code__))
      ['OTHER', 'math', 'pi']
    """
    names = set(code.co_names)
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            names |= global_names(const)
    return names


_PROGRAMS: collections.OrderedDict[Any, Any] = collections.OrderedDict()
_MAX_PROGRAMS = 32


def program(
    plan: Plan, touched: Sequence[int], shardings: Any, layouts: Sequence[Any] | None = None
) -> Callable[..., Any]:
    """The jitted array work of ``plan`` on its ``touched`` leaves, cached by what it
    computes: ``program(...)(xs, key)`` gives the new values of those leaves.

    Called eagerly on jax arrays, each new leaf is placed by ``shardings`` (one
    sharding or None per touched leaf, or None). ``layouts`` (one NamedSharding or
    None per touched leaf) are the layouts each rule's result is produced in, inside
    the program (see :func:`~flaxinit.rules.layout.in_layout`).

    Example:
      >>> import jax.numpy as jnp
      >>> from flaxinit.rules import fill
      >>> from flaxinit.rules.planning import make_plan
      >>> plan = make_plan({"a": jnp.zeros(2), "b": jnp.zeros(2)}, [("b", fill(3.0))])
      >>> [x.tolist() for x in program(plan, [1], None)([jnp.zeros(2)], None)]
      [[3.0, 3.0]]
    """
    leaves = [(n, plan.flat.infos[n], _steps(plan.flat.infos[n], plan.hits[n])) for n in touched]
    contexts = plan.contexts
    layouts = tuple(layouts) if layouts is not None else (None,) * len(leaves)

    def run(xs: list[Any], key: Any) -> list[Any]:
        keys = _leaf_keys(key, leaves)
        return [
            _run_leaf(contexts, n, info, steps, x, lambda s, i=i: keys.get((i, s)), layout)
            for i, ((n, info, steps), x, layout) in enumerate(zip(leaves, xs, layouts, strict=True))
        ]

    make = lambda: jax.jit(run, out_shardings=shardings)
    try:
        described = tuple(
            (info, tuple(plan.hits[n]), contexts.layer_indices[n], contexts.leaf_signature(n))
            for n, info, _ in leaves
        )
        signature = fingerprint(
            (described, contexts.signature(), shardings and tuple(shardings), layouts)
        )
        hash(signature)
    except TypeError:  # an unhashable action argument or context value: no cache
        return make()
    fn = _PROGRAMS.get(signature)
    if fn is None:
        fn = _PROGRAMS[signature] = make()
        if len(_PROGRAMS) > _MAX_PROGRAMS:
            _PROGRAMS.popitem(last=False)
    else:
        _PROGRAMS.move_to_end(signature)
    return fn
