"""Which nonlinearity a model applies to a layer's output, read from the model's jaxpr.

A bare ``nn.relu(dense(x))`` is an ordinary function call: no module sees it. The jaxpr
of the model does. The probe traces its forward pass once (per compilation) with every
recorded linear output passed through a *marker*, an identity ``jax.jit`` whose name
encodes the site (``jit[name=_flaxinit_site_3]``), and every norm output taken from one
through a norm marker (``_flaxinit_norm_3``). :func:`inferred_nonlinearities` then walks
forward from each marker's output (the norm's, when the site has one: that is the
pre-activation) to the first operation applied to it, and names it:

* ``jit[name=relu|silu|hard_tanh|...]``, any name of :mod:`flaxinit.activations` (``relu``
  is a ``custom_jvp_call`` around ``jit[name=relu]``, followed into);
* the primitives ``tanh`` and ``logistic`` (sigmoid), ``max(x, 0)`` (an inlined relu);
* the inlined ``jax.nn.gelu``: tanh-approximate (``integer_pow[y=3]``, ``tanh``) or exact
  (``erfc``).

Only operations that leave every value as it is are walked through: ``reshape``,
``broadcast_in_dim``, ``squeeze``, ``expand_dims``, ``transpose``, float
``convert_element_type``, ``copy``, and calls (``jit``, ``custom_jvp_call``,
``custom_vjp_call``, ``checkpoint``) whose body is followed. The probe applies the named
function to the recorded pre-activation, so anything that changes values on the way (a
bias added after the layer, a scale, a residual sum, attention, a concatenation) would
make the record describe an input the model never feeds to the nonlinearity: there the
site gets no inferred nonlinearity. So does an output used by more than one operation
(but gelu's own pattern), one returned by the model, and one inside ``scan``/``while``/
``cond``. The walk never guesses.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator, Sequence

import jax
import jax.numpy as jnp
from jax.extend import core

from flaxinit import activations

SITE, NORM = "_flaxinit_site_", "_flaxinit_norm_"

# Operations that hand on every element unchanged (convert_element_type: float to float only).
_VALUE_PRESERVING = frozenset(
    {"reshape", "broadcast_in_dim", "squeeze", "expand_dims", "transpose", "copy", "copy_p"}
)
# Calls whose body's inputs and outputs are the equation's, one for one.
_CALLS = frozenset(
    {"jit", "pjit", "custom_jvp_call", "custom_vjp_call", "checkpoint", "remat2", "closed_call"}
)
_PRIMITIVES: dict[str, Callable[[jax.Array], jax.Array]] = {
    "tanh": jnp.tanh,
    "logistic": jax.nn.sigmoid,
}
# How far past the output gelu's inlined pattern reaches its tanh or erfc.
_GELU_REACH = 10


@functools.cache
def marker(kind: str, index: int) -> Callable[[jax.Array], jax.Array]:
    """The identity, jitted under the name ``kind + str(index)``: it marks a value in a jaxpr.

    Example:
      >>> closed = jax.make_jaxpr(lambda x: jnp.tanh(marker(SITE, 0)(x)))(1.0)
      >>> [e.params.get("name") for e in closed.jaxpr.eqns]
      ['_flaxinit_site_0', None]
    """

    def identity(x):
        return x

    identity.__name__ = identity.__qualname__ = f"{kind}{index}"
    return jax.jit(identity)


def _subjaxpr(eqn: core.JaxprEqn) -> core.Jaxpr | None:
    """The body of a call equation whose inputs are the equation's, one for one."""
    bodies = [p for p in eqn.params.values() if isinstance(p, (core.Jaxpr, core.ClosedJaxpr))]
    if len(bodies) != 1:
        return None
    body = bodies[0].jaxpr if isinstance(bodies[0], core.ClosedJaxpr) else bodies[0]
    if len(body.invars) != len(eqn.invars) or len(body.outvars) != len(eqn.outvars):
        return None
    return body


class _Uses:
    """Per jaxpr, the positions of the equations that use each variable: built once per
    jaxpr and call, so a walk costs its own steps, not a scan of the jaxpr per step."""

    def __init__(self):
        self._by_jaxpr: dict[int, tuple[core.Jaxpr, dict[int, list[int]]]] = {}

    def positions(self, jaxpr: core.Jaxpr, var: core.Var) -> list[int]:
        """The positions in ``jaxpr.eqns`` of the equations that take ``var``, in order."""
        entry = self._by_jaxpr.get(id(jaxpr))
        if entry is None:
            index: dict[int, list[int]] = {}
            for i, eqn in enumerate(jaxpr.eqns):
                for atom in eqn.invars:
                    if isinstance(atom, core.Var):
                        at = index.setdefault(id(atom), [])
                        if not at or at[-1] != i:
                            at.append(i)
            # The jaxpr is kept with its index, so its id stays its own.
            entry = self._by_jaxpr[id(jaxpr)] = (jaxpr, index)
        return entry[1].get(id(var), [])

    def __call__(self, jaxpr: core.Jaxpr, var: core.Var) -> list[core.JaxprEqn]:
        return [jaxpr.eqns[i] for i in self.positions(jaxpr, var)]


def _is_zero(atom: object) -> bool:
    return isinstance(atom, core.Literal) and jnp.ndim(atom.val) == 0 and atom.val == 0


def _downstream(jaxpr: core.Jaxpr, var: core.Var, start: int) -> list[core.JaxprEqn]:
    """The next equations (at most ``_GELU_REACH``) from position ``start`` on that depend
    on ``var``, in order."""
    reached, found = {var}, []
    for eqn in jaxpr.eqns[start:]:
        if any(isinstance(a, core.Var) and a in reached for a in eqn.invars):
            reached.update(eqn.outvars)
            found.append(eqn)
            if len(found) >= _GELU_REACH:
                break
    return found


def _gelu(jaxpr: core.Jaxpr, var: core.Var, uses: list[core.JaxprEqn], start: int):
    """``jax.nn.gelu``'s inlined pattern on ``var``, or None.

    Approximate: ``x * 0.5 * (1 + tanh(sqrt(2/pi) * (x + 0.044715 x**3)))``, whose uses
    of ``x`` are ``integer_pow[y=3]``, ``add`` and the final ``mul``. Exact:
    ``0.5 x * erfc(-x / sqrt 2)``, whose uses are a ``mul`` and a ``neg``.
    """
    prims = sorted(e.primitive.name for e in uses)
    later = {e.primitive.name for e in _downstream(jaxpr, var, start)}
    cube = any(e.primitive.name == "integer_pow" and e.params.get("y") == 3 for e in uses)
    if prims == ["add", "integer_pow", "mul"] and cube and "tanh" in later:
        return jax.nn.gelu
    if prims == ["mul", "neg"] and "erfc" in later:
        return functools.partial(jax.nn.gelu, approximate=False)
    return None


# A walk's outcome: ("found", fn), ("none", None), or ("escape", output index).
_Outcome = tuple[str, object]


def _walk(jaxpr: core.Jaxpr, var: core.Var, index: _Uses) -> _Outcome:
    """From ``var`` in ``jaxpr`` to the first operation that changes its values."""
    while True:
        uses = index(jaxpr, var)
        returned = [i for i, v in enumerate(jaxpr.outvars) if v is var]
        if returned:
            return ("escape", returned[0]) if not uses and len(returned) == 1 else ("none", None)
        if len(uses) != 1:
            start = index.positions(jaxpr, var)[0] if uses else 0
            gelu = _gelu(jaxpr, var, uses, start) if len(uses) > 1 else None
            return ("found", gelu) if gelu is not None else ("none", None)
        (eqn,) = uses
        name = eqn.primitive.name
        if sum(a is var for a in eqn.invars) != 1:
            return "none", None  # x * x, max(x, x): not an elementwise function of x alone
        if name in _VALUE_PRESERVING or (
            name == "convert_element_type" and jnp.issubdtype(eqn.params["new_dtype"], jnp.floating)
        ):
            var = eqn.outvars[0]
            continue
        if name in _PRIMITIVES:
            return "found", _PRIMITIVES[name]
        if name == "max" and any(_is_zero(a) for a in eqn.invars):
            return "found", jax.nn.relu
        if name not in _CALLS:
            return "none", None
        called = eqn.params.get("name", "")
        if called.startswith((SITE, NORM)):
            return "none", None  # another recorded output: not a nonlinearity
        info = activations.lookup(called) if called else None
        # The name alone says which function only when the value is the call's one input:
        # leaky_relu(x, 0.5) or elu(x, alpha=2) pass their parameters as more inputs, and
        # the table's function would use its defaults instead.
        if info is not None and len(eqn.invars) == 1 and callable(getattr(jax.nn, info.name, None)):
            return "found", getattr(jax.nn, info.name)
        body = _subjaxpr(eqn)
        if body is None:
            return "none", None
        position = next(i for i, a in enumerate(eqn.invars) if a is var)
        outcome = _walk(body, body.invars[position], index)
        if outcome[0] != "escape":
            return outcome
        var = eqn.outvars[outcome[1]]


def _markers(jaxpr: core.Jaxpr, parents: tuple = ()) -> Iterator[tuple[str, core.Var, tuple]]:
    """``(name, output, parents)`` of every marker, in order, with the enclosing
    ``(jaxpr, call equation)`` frames from the outermost."""
    for eqn in jaxpr.eqns:
        called = eqn.params.get("name", "") if eqn.primitive.name in _CALLS else ""
        if isinstance(called, str) and called.startswith((SITE, NORM)):
            yield called, eqn.outvars[0], parents
            continue
        body = _subjaxpr(eqn) if eqn.primitive.name in _CALLS else None
        if body is not None:
            yield from _markers(body, (*parents, (jaxpr, eqn)))


def _walk_out(jaxpr: core.Jaxpr, var: core.Var, parents: tuple, index: _Uses):
    """:func:`_walk`, continued in the enclosing jaxprs when the value leaves a call."""
    outcome = _walk(jaxpr, var, index)
    while outcome[0] == "escape" and parents:
        (jaxpr, eqn), parents = parents[-1], parents[:-1]
        outcome = _walk(jaxpr, eqn.outvars[outcome[1]], index)
    return outcome[1] if outcome[0] == "found" else None


def inferred_nonlinearities(closed: core.ClosedJaxpr, count: int) -> tuple[Callable | None, ...]:
    """Per marked site ``0 .. count-1``, the nonlinearity applied to its pre-activation.

    The pre-activation is the output of the site's last norm marker if it has one, else
    of its site marker. ``None`` where no nonlinearity is applied to it alone, through
    value-preserving operations only (see the module's docstring).

    Example:
      >>> def model(x):
      ...     h = jax.nn.relu(marker(SITE, 0)(x).reshape(-1))
      ...     return marker(SITE, 1)(h) + 1.0
      >>> closed = jax.make_jaxpr(model)(jnp.ones((2, 3)))
      >>> [getattr(f, "__name__", None) for f in inferred_nonlinearities(closed, 2)]
      ['relu', None]
    """
    starts: dict[int, tuple] = {}
    for name, var, parents in _markers(closed.jaxpr):
        is_norm = name.startswith(NORM)
        k = int(name[len(NORM if is_norm else SITE) :])
        if is_norm or k not in starts:  # the last norm on a site is its pre-activation
            starts[k] = (var, parents)
    found: list[Callable | None] = []
    index = _Uses()
    for k in range(count):
        if k not in starts:
            found.append(None)
            continue
        var, parents = starts[k]
        found.append(_walk_out(_frame(closed.jaxpr, parents), var, parents, index))
    return tuple(found)


def _frame(top: core.Jaxpr, parents: Sequence[tuple]) -> core.Jaxpr:
    """The jaxpr a marker found under ``parents`` sits in."""
    return _subjaxpr(parents[-1][1]) if parents else top
