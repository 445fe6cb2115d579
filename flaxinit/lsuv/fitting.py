"""The per-layer fixed point of LSUV, as a pure function of one layer's output.

A selected layer computes ``y = f(x; W) + b`` with ``f`` linear in ``W`` (Dense,
DenseGeneral, Conv, ConvTranspose, Einsum, Embed). Scaling ``W`` by ``c`` therefore
gives ``y(c) = c z + b`` with ``z = f(x; W)``: once ``z`` is known, every LSUV round
(``W <- W sqrt(target / Var)``) is an elementwise rescale, never another forward
pass. For the default pre-activation measurement it is cheaper still: with the
centred moments ``a = Var(z)``, ``m = Cov(z, b)``, ``v = Var(b)`` of the output
blob, ``Var(c z + b) = c^2 a + 2 c m + v``: the paper's iteration
``c <- c sqrt(target / Var(c))`` converges to the positive root of
``a c^2 + 2 m c + v = target``, which ``solver="exact"`` (the default) computes
directly (one round, exactly on target, nothing to compile but a few scalar ops),
and ``solver="iterate"`` reaches by the paper's rounds in a scalar
``lax.while_loop``. Post-activation measurement has no closed form: it always
iterates, each round an elementwise pass over the layer's cached output. Folding
``c`` into the kernel afterwards reproduces exactly the output the rest of the
network already saw.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp

# Status codes carried through jit as int32 and decoded in the report.
OK, NOT_CONVERGED, ZERO_VARIANCE, INFEASIBLE, NON_FINITE = 0, 1, 2, 3, 4
STATUS_NAMES = {
    OK: "ok",
    NOT_CONVERGED: "not converged",
    ZERO_VARIANCE: "zero variance: left unchanged",
    INFEASIBLE: "target unreachable: left unchanged",
    NON_FINITE: "non-finite output: left unchanged",
}


@dataclasses.dataclass(frozen=True)
class FitConfig:
    """Static settings of the per-layer fit (hashable, fixed at trace time)."""

    target_var: float
    tol: float
    max_iters: int
    center: bool
    activation: Callable[[jax.Array], jax.Array] | None
    feasible: bool
    solver: str = "exact"


def _stats(y: jax.Array) -> tuple[jax.Array, jax.Array]:
    # Variance over the whole output blob (batch, positions and channels), as the paper.
    y = y.astype(jnp.float32)
    mean = jnp.mean(y)
    return mean, jnp.mean(jnp.square(y - mean))


def _moments(z: jax.Array, b: jax.Array):
    """Var(z), Cov(z, b), Var(b), mean(z), mean(b) over the output blob.

    Two reductions per layer, whatever its size: per-channel means of ``z`` and
    ``z^2`` in one pass over the output, then one small reduction of the stacked
    channel-level terms. A bias that broadcasts along the trailing axes is constant
    across positions, so its terms only need ``z``'s per-channel means.
    """
    if b.ndim and b.shape == z.shape:
        z_mean, z_var = _stats(z)
        b_mean, b_var = _stats(b)
        return z_var, jnp.mean((z - z_mean) * (b - b_mean)), b_var, z_mean, b_mean
    channel_axes = max(b.ndim, 1)
    lead = tuple(range(1, z.ndim - channel_axes + 1))
    channel_mean, channel_square = jnp.mean(jnp.stack([z, jnp.square(z)]), axis=lead)
    b_full = jnp.broadcast_to(b, channel_mean.shape)
    terms = jnp.stack(
        [channel_mean, channel_square, b_full, jnp.square(b_full), channel_mean * b_full]
    )
    z_mean, z_square, b_mean, b_square, zb = jnp.mean(terms.reshape(5, -1), axis=1)
    z_var = jnp.maximum(z_square - z_mean * z_mean, 0.0)
    b_var = jnp.maximum(b_square - b_mean * b_mean, 0.0)
    return z_var, zb - z_mean * b_mean, b_var, z_mean, b_mean


def fit_layer(z: jax.Array, bias: jax.Array | None, config: FitConfig) -> dict[str, jax.Array]:
    """Finds the kernel scale ``c`` (and bias shift ``d``) for one layer.

    Args:
      z: the layer's output without its bias, ``f(x; W)``.
      bias: the bias broadcast against ``z``'s trailing dims, or ``None``.
      config: the fit's static settings.

    Returns:
      A dict of scalars: ``scale`` (multiply the kernel), ``shift`` (add to the bias),
      ``var_before``, ``var_after``, ``rounds``, ``status``.
    """
    z = z.astype(jnp.float32)
    b = jnp.zeros((), jnp.float32) if bias is None else bias.astype(jnp.float32)
    target = jnp.float32(config.target_var)
    tol = jnp.float32(config.tol)

    if config.activation is None:
        # Scalar iteration on the centred moments of (z, b).
        z_var, cov, b_var, z_mean, b_mean = _moments(z, b)

        def variance(c, d):
            return c * c * z_var + 2 * c * cov + b_var

        def mean(c, d):
            return c * z_mean + b_mean + d

    else:
        act = config.activation

        def moments(c, d):
            return _stats(act(c * z + b + d))

        def variance(c, d):
            return moments(c, d)[1]

        def mean(c, d):
            return moments(c, d)[0]

    def centred(c, d):
        # fastai's variant: move the (post-)activation mean to 0 through the bias.
        if not config.center:
            return d
        if config.activation is None:
            return -(c * z_mean + b_mean)
        return d - mean(c, d)

    def done(c, d, var, rounds):
        bad = ~jnp.isfinite(var) | (var <= 0)
        close = jnp.abs(var - target) < tol
        if config.center:
            close = close & (jnp.abs(mean(c, d)) < jnp.sqrt(tol))
        return bad | close | (rounds >= config.max_iters)

    def cond(carry):
        c, d, var, rounds = carry
        return ~done(c, d, var, rounds)

    def body(carry):
        c, d, var, rounds = carry
        c = c * jnp.sqrt(target / var)
        d = centred(c, d)
        return c, d, variance(c, d), rounds + 1

    one, zero = jnp.float32(1.0), jnp.float32(0.0)
    var_before = variance(one, zero)
    if not config.feasible:
        status = jnp.int32(INFEASIBLE)
        return _result(one, zero, var_before, var_before, jnp.int32(0), status)
    if config.activation is None and config.solver == "exact":
        return _solve(z_var, cov, b_var, var_before, target, tol, centred)
    d0 = centred(one, zero)
    c, d, var, rounds = jax.lax.while_loop(cond, body, (one, d0, variance(one, d0), jnp.int32(0)))
    converged = jnp.abs(var - target) < tol
    status = jnp.where(converged, OK, NOT_CONVERGED)
    status = jnp.where(var_before <= 0, ZERO_VARIANCE, status)
    status = jnp.where(~jnp.isfinite(var) | ~jnp.isfinite(var_before), NON_FINITE, status)
    keep = (status == ZERO_VARIANCE) | (status == NON_FINITE)
    c = jnp.where(keep, one, c)
    d = jnp.where(keep, zero, d)
    var = jnp.where(keep, var_before, var)
    rounds = jnp.where(keep, 0, rounds)
    return _result(c, d, var_before, var, rounds, status.astype(jnp.int32))


def _solve(z_var, cov, b_var, var_before, target, tol, centred):
    """The fixed point of the paper's iteration in closed form (pre-activation).

    ``a c^2 + 2 m c + v = target`` has a positive root ``(-m + sqrt(m^2 - a (v -
    target))) / a`` unless the bias alone carries more variance than the target
    allows (``target < v - m^2 / a``): then the target is unreachable and the layer
    is left unchanged, as is a layer whose bias-free output is constant (``a = 0``).
    """
    one = jnp.float32(1.0)
    disc = cov * cov - z_var * (b_var - target)
    root = (-cov + jnp.sqrt(jnp.maximum(disc, 0.0))) / jnp.where(z_var > 0, z_var, one)
    needed = jnp.abs(var_before - target) >= tol
    finite = jnp.isfinite(var_before) & jnp.isfinite(root)
    zero_var = z_var <= 0
    reachable = (disc >= 0) & (root > 0)
    status = jnp.where(needed & ~reachable, INFEASIBLE, OK)
    status = jnp.where(needed & zero_var, ZERO_VARIANCE, status)
    status = jnp.where(~finite, NON_FINITE, status)
    rescale = needed & reachable & ~zero_var & finite
    c = jnp.where(rescale, root, one)
    var_after = c * c * z_var + 2 * c * cov + b_var
    return _result(
        c,
        centred(c, jnp.float32(0.0)),
        var_before,
        jnp.where(rescale, var_after, var_before),
        rescale.astype(jnp.int32),
        status.astype(jnp.int32),
    )


def _result(scale, shift, var_before, var_after, rounds, status):
    return {
        "scale": scale,
        "shift": shift,
        "var_before": var_before,
        "var_after": var_after,
        "rounds": rounds,
        "status": status,
    }


FIELDS = ("scale", "shift", "var_before", "var_after", "rounds", "status")
_INTEGER_FIELDS = ("rounds", "status")


def pack(fit: dict[str, jax.Array]) -> jax.Array:
    """The fit as one float32 vector (one value to carry out of the forward pass)."""
    return jnp.stack([fit[field].astype(jnp.float32) for field in FIELDS], axis=-1)


def unpack(packed: jax.Array) -> dict[str, jax.Array]:
    """Inverse of :func:`pack`; works on stacked fits (leading layer axes)."""
    out = {}
    for i, field in enumerate(FIELDS):
        value = packed[..., i]
        out[field] = value.astype(jnp.int32) if field in _INTEGER_FIELDS else value
    return out


def rescaled_output(
    z: jax.Array, bias: jax.Array | None, fit: dict[str, jax.Array], dtype
) -> jax.Array:
    """The layer output the rest of the network sees once the fit is folded in."""
    y = fit["scale"] * z.astype(jnp.float32) + fit["shift"]
    if bias is not None:
        y = y + bias.astype(jnp.float32)
    return y.astype(dtype)


# Supremum of the output variance of bounded activations: ((hi - lo) / 2)^2.
_BOUNDED = {
    "sigmoid": 0.25,
    "tanh": 1.0,
    "hard_tanh": 1.0,
    "hard_sigmoid": 0.25,
    "soft_sign": 1.0,
    "softsign": 1.0,
}


def activation_variance_bound(activation: Callable | None, bounds=None) -> float:
    """The largest output variance ``activation`` can produce (``inf`` if unbounded).

    Known bounded activations are recognised by name (``jax.nn.sigmoid``,
    ``jnp.tanh``, ``nn.hard_tanh``, ...); ``bounds=(lo, hi)`` states it for others.
    """
    if bounds is not None:
        lo, hi = bounds
        return ((float(hi) - float(lo)) / 2) ** 2
    if activation is None:
        return float("inf")
    name = getattr(activation, "__name__", "")
    return _BOUNDED.get(name, float("inf"))
