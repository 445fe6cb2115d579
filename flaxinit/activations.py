"""The one table of known nonlinearities: names, aliases, family, output bounds and gain.

Every part of flaxinit that reasons about a nonlinearity by name reads this table:

* the diagnostics (:func:`flaxinit.diagnostics.nonlinearity`): the family decides whether
  dead units (``"rectifier"``) or saturation (``"saturating"``, within ``bounds``) are
  measured;
* the activations the diagnostics infer from a model's jaxpr
  (:mod:`flaxinit.diagnostics.inferred`): a ``jax.nn`` function shows up there under its
  canonical name (``jit[name=silu]``) or as a primitive (``tanh``, ``logistic``);
* LSUV's bound on the output variance (:func:`flaxinit.lsuv.activation_variance_bound`):
  ``((high - low) / 2) ** 2`` of the bounds;
* :func:`flaxinit.calculate_gain`'s nonlinearity gains (PyTorch's values).

A record is looked up by its canonical name or any alias (:func:`lookup`).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import jax
import jax.numpy as jnp

__all__ = ["ACTIVATIONS", "ActivationInfo", "function", "lookup"]


@dataclasses.dataclass(frozen=True)
class ActivationInfo:
    """One known nonlinearity.

    Attributes:
      name: the canonical name, the ``jax.nn`` function's ``__name__`` (``"silu"``).
      aliases: other names of the same function (``"swish"``; ``"softsign"`` for
        ``soft_sign``; ``"logistic"``, the primitive of ``sigmoid``).
      family: ``"rectifier"`` (exactly 0 on half the line, so a unit can die),
        ``"saturating"`` (bounded: a unit can saturate at either end) or ``None``
        (neither is defined: gelu, silu, elu, ...).
      bounds: the output range ``(low, high)`` of a saturating nonlinearity, else None.
      gain: PyTorch's ``calculate_gain`` value, where its table has one; ``leaky_relu``'s
        depends on the slope and is computed by :func:`flaxinit.calculate_gain`.
    """

    name: str
    aliases: tuple[str, ...] = ()
    family: str | None = None
    bounds: tuple[float, float] | None = None
    gain: float | None = None

    @property
    def names(self) -> tuple[str, ...]:
        """The canonical name and the aliases."""
        return (self.name, *self.aliases)

    @property
    def variance_bound(self) -> float:
        """The largest variance the output can have: ``((high - low) / 2) ** 2`` for a
        bounded nonlinearity, ``inf`` otherwise.

        Example:
          >>> lookup("sigmoid").variance_bound, lookup("gelu").variance_bound
          (0.25, inf)
        """
        if self.bounds is None:
            return math.inf
        low, high = self.bounds
        return ((high - low) / 2) ** 2


ACTIVATIONS: tuple[ActivationInfo, ...] = (
    ActivationInfo("relu", family="rectifier", gain=math.sqrt(2.0)),
    # relu6 can die like relu; its upper bound is not a saturation the findings report.
    ActivationInfo("relu6", family="rectifier"),
    ActivationInfo("tanh", family="saturating", bounds=(-1.0, 1.0), gain=5.0 / 3),
    ActivationInfo("hard_tanh", family="saturating", bounds=(-1.0, 1.0)),
    ActivationInfo("soft_sign", ("softsign",), family="saturating", bounds=(-1.0, 1.0)),
    ActivationInfo("sigmoid", ("logistic",), family="saturating", bounds=(0.0, 1.0), gain=1.0),
    ActivationInfo("hard_sigmoid", family="saturating", bounds=(0.0, 1.0)),
    ActivationInfo("leaky_relu"),
    ActivationInfo("selu", gain=3.0 / 4),
    ActivationInfo("elu"),
    ActivationInfo("celu"),
    ActivationInfo("gelu"),
    ActivationInfo("silu", ("swish",)),
    ActivationInfo("hard_silu", ("hard_swish",)),
    ActivationInfo("softplus"),
    ActivationInfo("mish"),
    ActivationInfo("log_sigmoid"),
    ActivationInfo("sparse_plus"),
    ActivationInfo("squareplus"),
)

_BY_NAME = {name: info for info in ACTIVATIONS for name in info.names}


def lookup(name: str) -> ActivationInfo | None:
    """The record of the nonlinearity called ``name`` (canonical or alias), or None.

    Example:
      >>> lookup("softsign").name, lookup("soft_sign").bounds, lookup("swish").name
      ('soft_sign', (-1.0, 1.0), 'silu')
      >>> lookup("no_such") is None
      True
    """
    return _BY_NAME.get(name)


def function(
    activation: str | Callable[[jax.Array], jax.Array],
) -> Callable[[jax.Array], jax.Array]:
    """The nonlinearity named ``activation`` (a ``jax.nn`` or ``jax.numpy`` function, by
    canonical name or alias), or ``activation`` itself when it is a function.

    Example:
      >>> function("swish") is jax.nn.silu, function("tanh") is jnp.tanh
      (True, True)
    """
    if callable(activation):
        return activation
    if not isinstance(activation, str):
        raise TypeError(f"activation: expected a function or a name, got {activation!r}")
    info = lookup(activation)
    name = activation if info is None else info.name
    found = getattr(jax.nn, name, None) or getattr(jnp, name, None)
    if not callable(found):
        raise ValueError(f"activation: no jax.nn or jax.numpy function named {activation!r}")
    return found
