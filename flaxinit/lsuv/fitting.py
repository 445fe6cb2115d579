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
solver reduces the output blob once (one reduction of the stacked terms giving the
sums of ``z, z^2, z b, b, b^2`` as a vector), computes ``c`` in a single scalar
expression that ends in a division (so XLA keeps it out of the elementwise rescale
instead of duplicating it there), and the program returns each layer's sums and
``c`` as they are; the report's variances and status codes are derived from them
on the host, for all layers at once, so the program carries no per-layer
bookkeeping. The per-layer function is itself jitted, so a stack of same-shaped
layers is traced once. (The layouts tried and their timings: ``benchmarks/README.md``.)
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from flaxinit import activations

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
# What each layer sows under the exact solver (``shift`` only when centring).
EXACT_FIELDS = ("sums", "scale")
FIELDS = ("scale", "shift", "var_before", "var_after", "rounds", "status")
_INTEGER_FIELDS = ("rounds", "status")


def blob_sums(z: jax.Array, bias: jax.Array | None) -> jax.Array:
    """Sums of ``z, z^2, z b, b, b^2`` over the output blob, as one vector.

    One reduction of the stacked terms (XLA fuses the stack into it), giving a
    ``(5,)`` vector, or ``(2,)`` (``z, z^2``) without a bias: one program output per
    layer, whatever the number of sums.
    """
    if bias is None:
        terms = [z, z * z]
    else:
        b = jnp.broadcast_to(bias, z.shape)
        terms = [z, z * z, z * b, b, b * b]
    # As (positions, channels) matrices whatever the layer's rank, so every layer
    # kind lowers to the same two-axis reduction.
    cols = z.shape[-1] if z.ndim and z.shape[-1] else 1
    return jnp.sum(jnp.stack([t.reshape(-1, cols) for t in terms]), axis=(1, 2))


def split_sums(sums, zero=0.0) -> tuple:
    """``(s_z, s_zz, s_zb, s_b, s_bb)`` from :func:`blob_sums`'s vectors (last axis);
    a layer without a bias gets ``zero`` for its bias terms."""
    parts = tuple(sums[..., i] for i in range(sums.shape[-1]))
    return parts if len(parts) == 5 else (*parts, zero, zero, zero)


def closed_form(sums, size: int, target: float, tol: float) -> dict[str, jax.Array]:
    """The exact solver's scale for one layer, from its output blob's sums.

    With the blob's centred moments ``a = Var(z)``, ``m = Cov(z, b)``,
    ``v = Var(b)``, the positive root of ``a c^2 + 2 m c + v = target`` is
    ``(sqrt(m^2 - a (v - target)) - m) / a``. The layer is rescaled only when it
    is off target by ``tol`` or more, ``a`` is above float32's smallest normal, and
    the root's numerator is positive and finite (a negative discriminant gives NaN,
    which fails the test); otherwise ``scale`` is exactly 1. The report recomputes
    these moments on the host in float64 (:func:`fits_from_sown`), reading the
    decision from the scale rather than repeating it: XLA contracts multiply-adds
    into FMAs, so a host copy of this test could disagree at the ``tol`` boundary.

    Few operations and no nested calls: this is compiled once per layer.
    """
    e_z, e_zz, e_zb, e_b, e_bb = (s * (1.0 / size) for s in sums)
    a = e_zz - e_z * e_z
    m = e_zb - e_b * e_z
    gap = e_bb - e_b * e_b - target
    needed = abs(a + 2.0 * m + gap) >= tol
    numerator = lax.sqrt(m * m - a * gap) - m
    rescaled = needed & (numerator > 0) & (numerator < np.inf) & (a > _TINY)
    one = jnp.ones_like(a)
    # The division comes last so that XLA computes the scale once, as a scalar,
    # rather than inside the elementwise rescale that consumes it.
    scale = lax.select(rescaled, numerator, one) / lax.select(rescaled, a, one)
    return {"scale": scale, "z_mean": e_z, "b_mean": e_b}


@functools.partial(jax.jit, static_argnames="config")
def fit_output(
    out: jax.Array, bias: jax.Array | None, config: FitConfig
) -> tuple[jax.Array, tuple[jax.Array, ...]]:
    """Fits one layer on its output; returns what the next layer sees and what to sow.

    ``bias`` is broadcast against ``out``'s trailing dims (or has its full shape).
    What is sown is :data:`EXACT_FIELDS` (plus the bias ``shift`` when centring)
    under the exact solver, :data:`FIELDS` when iterating; :func:`fold_values` and
    :func:`fits_from_sown` read it. Jitted with the settings static, so same-shaped
    layers share one trace.
    """
    z = out.astype(jnp.float32)
    b = None if bias is None else bias.astype(jnp.float32)
    if b is not None:
        z = z - b
    if uses_closed_form(config):
        sums = blob_sums(z, b)
        terms = closed_form(split_sums(sums), z.size, config.target_var, config.tol)
        fit = {"scale": terms["scale"]}
        # The scale is the fit's only scalar output: more outputs split the scalar
        # solve into several kernels per layer (each one compiled on its own).
        sown = (sums, terms["scale"])
        if config.center:
            fit["shift"] = -(terms["scale"] * terms["z_mean"] + terms["b_mean"])
            sown = (*sown, fit["shift"])
    else:
        fit = fit_layer(z, b, config)
        sown = tuple(fit[field].astype(jnp.float32) for field in FIELDS)
    return rescaled_output(z, b, fit, out.dtype), sown


def uses_closed_form(config: FitConfig) -> bool:
    """Whether layers are fitted by the closed-form solver (else by iterating)."""
    return config.activation is None and config.solver == "exact" and config.feasible


def fold_values(
    sown: Sequence[tuple[jax.Array, ...]], config: FitConfig
) -> tuple[list[jax.Array], list[jax.Array | None]]:
    """Each layer's kernel scale and bias shift (``None`` when not centring)."""
    if uses_closed_form(config):
        scale_at = EXACT_FIELDS.index("scale")
        shift_at = len(EXACT_FIELDS) if config.center else None
    else:
        scale_at, shift_at = FIELDS.index("scale"), FIELDS.index("shift")
    scales = [fields[scale_at] for fields in sown]
    shifts = [None if shift_at is None else fields[shift_at] for fields in sown]
    return scales, shifts


def fits_from_sown(
    sown: Sequence[tuple], sizes: Sequence[int], config: FitConfig
) -> list[dict[str, np.ndarray]]:
    """Per-layer fit records (numpy, with each layer's stacking shape) for the report.

    Computed on the host, for all layers at once, from what the fitting program
    returned per layer (under the exact solver: the blob's sums and the scale,
    plus the shift when centring). ``sizes[i]`` is the number of elements of one of
    layer ``i``'s output blobs. The rescale decisions are the program's own (read
    from the scales); the variances are recomputed here in float64.
    """
    exact = uses_closed_form(config)
    host = [[np.asarray(v) for v in fields] for fields in sown]
    shapes = [fields[1 if exact else 0].shape for fields in host]
    counts = [int(np.prod(shape)) for shape in shapes]
    if exact:
        host = [[*split_sums(f[0], np.zeros(f[0].shape[:-1])), *f[1:]] for f in host]
    # Every layer's numbers at once: one column per field, one row per slice.
    columns = [np.concatenate([f[i].reshape(-1) for f in host]) for i in range(len(host[0]))]
    if exact:
        packed = _exact_fit(columns, np.repeat(np.asarray(sizes, np.float64), counts), config)
    else:
        packed = dict(zip(FIELDS, columns, strict=True))
    fits, start = [], 0
    for shape, count in zip(shapes, counts, strict=True):
        fits.append(
            {
                k: v[start : start + count]
                .reshape(shape)
                .astype(np.int32 if k in _INTEGER_FIELDS else np.float32)
                for k, v in packed.items()
            }
        )
        start += count
    return fits


def _exact_fit(values, size, config: FitConfig) -> dict[str, np.ndarray]:
    e_z, e_zz, e_zb, e_b, e_bb = (v.astype(np.float64) / size for v in values[:5])
    scale = values[5].astype(np.float64)
    shift = values[6] if config.center else np.zeros_like(scale)
    a = e_zz - e_z * e_z
    m = e_zb - e_b * e_z
    v = e_bb - e_b * e_b
    # The program's decision: a rescaled layer's scale is never exactly 1 (that
    # would mean it was on target already).
    rescaled = scale != 1.0
    with np.errstate(invalid="ignore", over="ignore"):
        var_before = a + 2 * m + v
        var_after = np.where(rescaled, scale * scale * a + 2 * scale * m + v, var_before)
        gap = v - config.target_var
        numerator = np.sqrt(m * m - a * gap) - m
        off_target = np.abs(var_before - config.target_var) >= config.tol
        # Within float32 rounding of ``tol`` the program may have judged a layer on
        # target that float64 puts just outside: a solvable layer left unchanged was
        # judged on target.
        solvable = (numerator > 0) & np.isfinite(numerator) & (a > _TINY)
    status = np.where(off_target & ~rescaled & ~solvable, INFEASIBLE, OK)
    status = np.where(off_target & ~rescaled & (a <= _TINY), ZERO_VARIANCE, status)
    status = np.where(np.isfinite(var_before), status, NON_FINITE)
    return {
        "scale": scale,
        "shift": shift,
        "var_before": var_before,
        "var_after": var_after,
        "rounds": rescaled.astype(np.int32),
        "status": status,
    }


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


def rescaled_output(
    z: jax.Array, bias: jax.Array | None, fit: dict[str, jax.Array], dtype
) -> jax.Array:
    """The layer output the rest of the network sees once the fit is folded in
    (``fit`` has a ``scale`` and, when centring, a ``shift``)."""
    y = fit["scale"] * z.astype(jnp.float32)
    if "shift" in fit:
        y = y + fit["shift"]
    if bias is not None:
        y = y + bias.astype(jnp.float32)
    return y.astype(dtype)


def activation_variance_bound(activation: Callable | None, bounds=None) -> float:
    """The largest output variance ``activation`` can produce (``inf`` if unbounded).

    Known bounded activations are recognised by name in :mod:`flaxinit.activations`
    (``jax.nn.sigmoid``, ``jnp.tanh``, ``nn.hard_tanh``, ``soft_sign``, ...): the
    variance of a ``(lo, hi)``-bounded output is at most ``((hi - lo) / 2) ** 2``.
    ``bounds=(lo, hi)`` states it for others.

    Example:
      >>> import jax
      >>> activation_variance_bound(jax.nn.sigmoid), activation_variance_bound(jax.nn.relu)
      (0.25, inf)
    """
    if bounds is not None:
        lo, hi = bounds
        return ((float(hi) - float(lo)) / 2) ** 2
    if activation is None:
        return float("inf")
    info = activations.lookup(getattr(activation, "__name__", ""))
    return float("inf") if info is None else info.variance_bound
