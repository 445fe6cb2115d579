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
directly (one round, exactly on target), and ``solver="iterate"`` reaches by the
paper's rounds in a scalar ``lax.while_loop``. Post-activation measurement has no
closed form: it always iterates, each round an elementwise pass over the layer's
cached output. Folding ``c`` into the kernel afterwards reproduces exactly the
output the rest of the network already saw.

What runs per layer is kept small because it is compiled once per layer: the exact
solver reduces the output blob once (one variadic reduction giving the sums of
``z, z^2, z b, b, b^2``), computes ``c`` in a single scalar expression that ends
in a division (so XLA keeps it out of the elementwise rescale instead of
duplicating it there), and carries the raw sums out; the report's variances and
status codes are derived from those sums for all layers at once, after the pass.
The per-layer function is itself jitted, so a stack of same-shaped layers is traced
once.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

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


def _result(scale, shift, var_before, var_after, rounds, status):
    return {
        "scale": scale,
        "shift": shift,
        "var_before": var_before,
        "var_after": var_after,
        "rounds": rounds,
        "status": status,
    }


# Below this variance a layer's bias-free output counts as constant (and c = 1 / a
# could overflow float32).
_TINY = float(np.finfo(np.float32).tiny)
EXACT_FIELDS = ("sum_z", "sum_zz", "sum_zb", "sum_b", "sum_bb", "scale", "shift")


def _add(xs, ys):
    return tuple(x + y for x, y in zip(xs, ys, strict=True))


def blob_sums(z: jax.Array, bias: jax.Array | None) -> tuple[jax.Array, ...]:
    """Sums of ``z, z^2, z b, b, b^2`` over the output blob, in one variadic reduction."""
    axes = tuple(range(z.ndim))
    zero = jnp.float32(0.0)
    if bias is None:
        return (*lax.reduce((z, z * z), (zero, zero), _add, axes), zero, zero, zero)
    b = jnp.broadcast_to(bias, z.shape)
    return lax.reduce((z, z * z, z * b, b, b * b), (zero,) * 5, _add, axes)


def closed_form(sums, size, target: float, tol: float) -> dict[str, jax.Array]:
    """The exact solver's quantities from a blob's sums (elementwise: stacked sums work).

    With ``a = Var(z)``, ``m = Cov(z, b)``, ``v = Var(b)``, the positive root of
    ``a c^2 + 2 m c + v = target`` is ``(sqrt(m^2 - a (v - target)) - m) / a``. The
    layer is rescaled only when it is off target by ``tol`` or more and the root
    exists, is positive and finite; otherwise ``scale`` is exactly 1.
    """
    inv = 1.0 / size
    ez, ezz, ezb, eb, ebb = (s * inv for s in sums)
    a = ezz - ez * ez
    m = ezb - ez * eb
    v = ebb - eb * eb
    var_before = a + 2 * m + v
    disc = m * m - a * (v - target)
    numerator = jnp.sqrt(jnp.maximum(disc, 0.0)) - m
    needed = jnp.abs(var_before - target) >= tol
    zero_var = a <= _TINY
    reachable = (disc >= 0) & (numerator > 0)
    finite = jnp.isfinite(var_before) & jnp.isfinite(numerator)
    rescale = needed & reachable & ~zero_var & finite
    # The division comes last so that XLA computes the scale once, as a scalar.
    scale = jnp.where(rescale, numerator, 1.0) / jnp.where(rescale, a, 1.0)
    return {
        "a": a,
        "m": m,
        "v": v,
        "z_mean": ez,
        "b_mean": eb,
        "var_before": var_before,
        "needed": needed,
        "zero_var": zero_var,
        "reachable": reachable,
        "finite": finite,
        "rescale": rescale,
        "scale": scale,
    }


@functools.partial(jax.jit, static_argnames="config")
def fit_output(
    out: jax.Array, bias: jax.Array | None, config: FitConfig
) -> tuple[jax.Array, tuple[jax.Array, ...]]:
    """Fits one layer on its output; returns what the next layer sees and what to sow.

    ``bias`` is broadcast against ``out``'s trailing dims (or has its full shape).
    Jitted with the settings static, so same-shaped layers share one trace.
    """
    z = out.astype(jnp.float32)
    b = None if bias is None else bias.astype(jnp.float32)
    if b is not None:
        z = z - b
    if uses_closed_form(config):
        sums = blob_sums(z, b)
        terms = closed_form(sums, z.size, config.target_var, config.tol)
        scale = terms["scale"]
        shift = -(scale * terms["z_mean"] + terms["b_mean"]) if config.center else jnp.float32(0)
        fit = {"scale": scale, "shift": shift}
        sown = (*sums, scale, shift)
    else:
        fit = fit_layer(z, b, config)
        sown = tuple(fit[field].astype(jnp.float32) for field in FIELDS)
    return rescaled_output(z, b, fit, out.dtype), sown


def uses_closed_form(config: FitConfig) -> bool:
    """Whether layers are fitted by the closed-form solver (else by iterating)."""
    return config.activation is None and config.solver == "exact" and config.feasible


def summarize(
    sown: Sequence[tuple[jax.Array, ...]], sizes: Sequence[int], config: FitConfig
) -> tuple[list[jax.Array], list[jax.Array], jax.Array]:
    """Per-layer scales and shifts (for the fold) and every layer's fit as one array.

    ``sown[i]`` is what :func:`fit_output` returned for layer ``i`` (each entry with
    the layer's stacking shape), ``sizes[i]`` the number of elements of one of its
    output blobs. Returns ``(scales, shifts, packed)`` with ``packed`` of shape
    ``(total slices, len(FIELDS))``: the report's numbers for all layers, computed
    at once.
    """
    if uses_closed_form(config):
        scale_at, shift_at = EXACT_FIELDS.index("scale"), EXACT_FIELDS.index("shift")
    else:
        scale_at, shift_at = FIELDS.index("scale"), FIELDS.index("shift")
    scales = [fields[scale_at] for fields in sown]
    shifts = [fields[shift_at] for fields in sown]
    flat = [[lax.reshape(x, (x.size,)) for x in fields] for fields in sown]
    columns = [lax.concatenate([f[i] for f in flat], 0) for i in range(len(flat[0]))]
    if not uses_closed_form(config):
        return scales, shifts, jnp.stack(columns, axis=-1)
    counts = [f[0].shape[0] for f in flat]
    size = np.repeat(np.asarray(sizes, np.float32), counts)
    *sums, scale, shift = columns
    terms = closed_form(sums, size, config.target_var, config.tol)
    a, m, v, var_before = terms["a"], terms["m"], terms["v"], terms["var_before"]
    rescale = terms["rescale"]
    needed = terms["needed"]
    status = jnp.where(needed & ~terms["reachable"], INFEASIBLE, OK)
    status = jnp.where(needed & terms["zero_var"], ZERO_VARIANCE, status)
    status = jnp.where(~terms["finite"], NON_FINITE, status)
    var_after = jnp.where(rescale, scale * scale * a + 2 * scale * m + v, var_before)
    fit = {
        "scale": scale,
        "shift": shift,
        "var_before": var_before,
        "var_after": var_after,
        "rounds": rescale.astype(jnp.float32),
        "status": status.astype(jnp.float32),
    }
    return scales, shifts, jnp.stack([fit[field] for field in FIELDS], axis=-1)


@functools.partial(jax.jit, static_argnames="stack")
def scale_kernel(kernel: jax.Array, scale: jax.Array, stack: int) -> jax.Array:
    """``kernel`` times ``scale`` (one per slice of its ``stack`` leading axes).

    Jitted on its own, outside the fitting pass: it is compiled once per distinct
    kernel shape rather than once per layer, which keeps the fitting program's
    size (and compile time) close to the forward pass's.
    """
    factor = jnp.reshape(scale, jnp.shape(scale) + (1,) * (kernel.ndim - stack))
    return (kernel * factor.astype(kernel.dtype)).astype(kernel.dtype)


@functools.partial(jax.jit, static_argnames="stack")
def shift_bias(bias: jax.Array, shift: jax.Array, stack: int) -> jax.Array:
    """``bias`` plus ``shift`` (one per slice of its ``stack`` leading axes)."""
    offset = jnp.reshape(shift, jnp.shape(shift) + (1,) * (bias.ndim - stack))
    return (bias + offset.astype(bias.dtype)).astype(bias.dtype)


def split_packed(packed, shapes: Sequence[tuple[int, ...]]) -> list[dict[str, np.ndarray]]:
    """Per-layer fit dicts (numpy, with each layer's stacking shape) from ``packed``."""
    packed = np.asarray(packed)
    fits, start = [], 0
    for shape in shapes:
        count = int(np.prod(shape))
        rows = packed[start : start + count].reshape((*shape, len(FIELDS)))
        start += count
        fits.append(
            {
                field: rows[..., i].astype(np.int32) if field in _INTEGER_FIELDS else rows[..., i]
                for i, field in enumerate(FIELDS)
            }
        )
    return fits


FIELDS = ("scale", "shift", "var_before", "var_after", "rounds", "status")
_INTEGER_FIELDS = ("rounds", "status")


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
