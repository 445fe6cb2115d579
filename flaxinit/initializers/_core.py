"""Shared plumbing for the initializers: the protocol, the draw dtype, factory naming.

The argument checks are :mod:`flaxinit._checks`; :func:`check_dtype` adds the
initializers' own rule (random draws are floating or complex).
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Sequence
from typing import Any, Protocol, runtime_checkable

import jax
import jax.numpy as jnp
import numpy as np

from flaxinit import _checks

Shape = Sequence[int]
DTypeLike = Any
OutSharding = jax.sharding.NamedSharding | jax.sharding.PartitionSpec | None
AxisSpec = int | Sequence[int]


@runtime_checkable
class Initializer(Protocol):
    """``(key, shape, dtype=None, out_sharding=None) -> jax.Array``.

    The protocol of ``jax.nn.initializers``: ``key`` is a typed key
    (``jax.random.key``) or a legacy ``uint32[2]`` key (``jax.random.PRNGKey``).
    ``dtype=None`` means the initializer's default: its factory's ``dtype=`` if one
    was given, else :func:`default_dtype` (float32, float64 under
    ``jax_enable_x64``), read at call time, as ``jax.nn.initializers`` does.
    """

    def __call__(
        self,
        key: jax.Array,
        shape: Shape,
        dtype: DTypeLike = None,
        out_sharding: OutSharding = None,
    ) -> jax.Array: ...


def default_dtype() -> np.dtype:
    """float32, or float64 under ``jax_enable_x64``: jax's default float, which
    ``jax.nn.initializers`` use for ``dtype=None`` (``dtypes.default_float_dtype()``).

    Every initializer and combinator in the catalogue resolves a missing dtype
    with this, when it is called (not when it is built), so one initializer gives
    float64 inside ``jax.enable_x64(True)`` and float32 outside.
    """
    return np.dtype(jnp.zeros((), dtype=float).dtype)


def check_dtype(dtype: DTypeLike, name: str, *, allow_complex: bool = True) -> np.dtype:
    """The dtype a random initializer draws in: ``None`` is :func:`default_dtype`; any
    other must be floating (or complex, with ``allow_complex``)."""
    if dtype is None:
        return default_dtype()
    resolved = _checks.check_dtype(dtype, name)
    if jnp.issubdtype(resolved, jnp.complexfloating):
        if not allow_complex:
            _checks.fail(
                TypeError, name, "dtype", f"real ({name} draws real values only)", resolved
            )
        return resolved
    if not jnp.issubdtype(resolved, jnp.floating):
        _checks.fail(
            TypeError,
            name,
            "dtype",
            "a floating or complex dtype (random initializers cannot produce integer or "
            "boolean parameters)",
            resolved,
        )
    return resolved


def sampling_dtype(dtype: np.dtype) -> np.dtype:
    """The dtype to draw in: below 32 bits we draw float32 and cast once.

    Drawing directly in bfloat16 gives about 128 distinct values and no mass beyond
    2.9 sigma; drawing in float32 and casting keeps the tails and the resolution.
    """
    if jnp.issubdtype(dtype, jnp.floating) and dtype.itemsize < 4:
        return np.dtype(jnp.float32)
    return dtype


def with_out_sharding(compute: Callable[[], jax.Array], out_sharding: OutSharding) -> jax.Array:
    """Runs ``compute`` and lays its result out as ``out_sharding``.

    Used by the initializers that are not a single ``jax.random`` draw (QR, masks,
    scatters). The computation runs with the mesh's explicit axes made automatic, as
    ``jax.random`` samplers do, so the partitioner is free to place intermediates;
    values do not depend on the sharding.
    """
    if out_sharding is None:
        return compute()
    if isinstance(out_sharding, jax.sharding.PartitionSpec):
        mesh = jax.sharding.get_abstract_mesh()
        if mesh.empty:
            raise ValueError(
                f"out_sharding={out_sharding} is a PartitionSpec but no mesh is set; "
                "use `with jax.set_mesh(mesh):` or pass a NamedSharding"
            )
        out_sharding = jax.sharding.NamedSharding(mesh, out_sharding)
    explicit = tuple(out_sharding.mesh.explicit_axes)
    if explicit:
        return jax.sharding.auto_axes(compute, axes=explicit, out_sharding=out_sharding)()
    result = compute()
    if isinstance(result, jax.core.Tracer):
        return jax.lax.with_sharding_constraint(result, out_sharding)
    return jax.device_put(result, out_sharding)


def empty(shape: tuple[int, ...], dtype: np.dtype, out_sharding: OutSharding) -> jax.Array:
    """The result for a shape with a 0-sized dim: an empty array, never a division by 0."""
    return with_out_sharding(lambda: jnp.zeros(shape, dtype), out_sharding)


def _short(value: Any) -> str:
    if callable(value) and hasattr(value, "__name__"):
        return value.__name__
    if isinstance(value, float):
        return f"{value:g}"
    return repr(value)


def is_prng_key(x: Any, *, legacy: bool = True) -> bool:
    """Whether ``x`` is a PRNG key: a typed key array (any shape), or with ``legacy``
    a raw ``uint32`` array of shape ``(2,)`` (threefry ``PRNGKey``) or ``(4,)`` (rbg)."""
    dtype = getattr(x, "dtype", None)
    shape = getattr(x, "shape", None)
    if dtype is None or shape is None:
        return False
    try:
        if jnp.issubdtype(dtype, jax.dtypes.prng_key):
            return True
    except TypeError:
        return False
    return legacy and np.dtype(dtype) == np.uint32 and tuple(shape) in ((2,), (4,))


def _is_rule_context(x: Any) -> bool:
    # Duck-typed: flaxinit.rules imports this package, not the other way round.
    cls = type(x)
    return cls.__name__ == "RuleContext" and cls.__module__.startswith("flaxinit.rules")


def _misused_as_initializer(args: tuple[Any, ...], value_first: bool) -> bool:
    """Whether a factory was called the way an initializer is: by Flax as
    ``init(key, shape, dtype)`` or by the rules engine as ``fn(key, leaf, ctx)``."""
    if not args:
        return False
    if len(args) >= 3 and _is_rule_context(args[2]):
        return True  # the rules engine, with or without a key
    # A lone uint32 pair may be a constant's fill value; with more positional
    # arguments after it (Flax passes shape and dtype) it is a key.
    return is_prng_key(args[0], legacy=not value_first or len(args) >= 2)


def _uncalled_factory_error(name: str, required: bool, args: tuple[Any, ...]) -> TypeError:
    call = _factory_call(name, required)
    first = args[0]
    if is_prng_key(first):
        try:
            what = f"a PRNG key ({jax.typeof(first)})"
        except TypeError:
            what = "a PRNG key"
    else:
        what = "the rules engine's (key, leaf, ctx)"
    return TypeError(
        f"{name} was called with {what} as if it were an initializer, but {name} is a "
        f"factory that builds one: did you mean {call}? Call it first: "
        f'kernel_init={call} in a Flax module, ("kernel", {call}) in rules'
    )


def check_not_factory(obj: Any, where: str) -> None:
    """Raises ``TypeError`` if ``obj`` is a catalogue factory handed over uncalled
    (``fi.he_normal`` for ``fi.he_normal()``), where an initializer is expected.

    Example:
      >>> from flaxinit.initializers import he_normal
      >>> check_not_factory(he_normal(), "a rule")
      >>> check_not_factory(he_normal, "a rule")
      Traceback (most recent call last):
      ...
      TypeError: he_normal is a factory that builds an initializer, given to a rule uncalled: did you mean fi.he_normal()? Call it first: kernel_init=fi.he_normal() in a Flax module, ("kernel", fi.he_normal()) in rules
    """  # noqa: E501
    # The marker names the factory itself: functools.wraps copies __dict__, so a user's
    # initializer wrapping a factory carries the marker too, naming another object.
    spec = getattr(obj, "__flaxinit_factory__", None)
    if spec is None or spec[2] is not obj:
        return
    name, required, _ = spec
    call = _factory_call(name, required)
    raise TypeError(
        f"{name} is a factory that builds an initializer, given to {where} uncalled: did "
        f"you mean {call}? Call it first: kernel_init={call} in a Flax module, "
        f'("kernel", {call}) in rules'
    )


def _factory_call(name: str, required: bool) -> str:
    import flaxinit  # loaded by now: a factory is being used

    # The name as the user reaches it: the combinators live in fi.initializers only.
    where = "fi." if name in flaxinit.__all__ else "fi.initializers."
    return f"{where}{name}(...)" if required else f"{where}{name}()"


def named_factory(
    factory: Callable[..., Initializer] | None = None,
    /,
    *,
    value_first: bool = False,
    positional_hint: str | None = None,
) -> Any:
    """Names the initializers a factory builds after the call, e.g. ``he_normal()``,
    and rejects calls that are mistakes.

    The name is what reports (``explain_rules``, LSUV, diagnostics) print. Before the
    factory runs, the decorator raises ``TypeError``:

    * when the factory is called the way an initializer is, with a PRNG key first
      (``kernel_init=fi.he_normal`` without the parentheses: Flax then calls
      ``he_normal(key, shape, dtype)``) or by the rules engine (``("kernel",
      fi.he_normal)``: ``he_normal(key, leaf, ctx)``), naming the factory and the
      fix instead of blaming the argument the key lands in. With ``value_first``
      (``constant``) a lone legacy ``uint32[2]`` key is taken for a fill value;
    * for more positional arguments than the factory takes, naming what it takes
      (``positional_hint`` adds why, for keyword-only factories).
    """
    if factory is None:
        return functools.partial(
            named_factory, value_first=value_first, positional_hint=positional_hint
        )
    signature = inspect.signature(factory)
    name = factory.__name__
    positional = [
        p
        for p in signature.parameters.values()
        if p.kind in (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    ]
    keywords = [p.name for p in signature.parameters.values() if p not in positional]
    required = any(p.default is inspect.Parameter.empty for p in positional)

    @functools.wraps(factory)
    def build(*args, **kwargs):
        if _misused_as_initializer(args, value_first):
            raise _uncalled_factory_error(name, required, args)
        if len(args) > len(positional):
            if positional:
                names = ", ".join(p.name for p in positional)
                text = (
                    f"{name}() takes {len(positional)} positional argument"
                    f"{'s' if len(positional) != 1 else ''} ({names}) but {len(args)} were "
                    f"given; pass the others by keyword ({', '.join(keywords)})"
                )
            else:
                text = (
                    f"{name}() takes keyword arguments only "
                    f"({', '.join(k + '=' for k in keywords)}), got {len(args)} positional: "
                    f"{name}({', '.join(_short(a) for a in args)})"
                )
            if positional_hint:
                text += f". {positional_hint}"
            raise TypeError(text)
        init = factory(*args, **kwargs)
        bound = signature.bind(*args, **kwargs)
        text = ", ".join(f"{k}={_short(v)}" for k, v in bound.arguments.items())
        init.__name__ = init.__qualname__ = f"{name}({text})"
        return init

    build.__flaxinit_factory__ = (name, required, build)  # read by check_not_factory
    return build
