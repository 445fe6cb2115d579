"""Constant and elementwise-random initializers: zeros, ones, constant, normal, uniform
(jax's one-sided and absolute bounds), truncated normal (bounds in stds and absolute)."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from flaxinit._checks import check_dtype as check_any_dtype
from flaxinit._checks import check_number, check_shape, fail, format_bound
from flaxinit.initializers._core import (
    DTypeLike,
    Initializer,
    OutSharding,
    Shape,
    check_dtype,
    default_dtype,
    empty,
    named_factory,
    sampling_dtype,
)


def _ndtr(x: float) -> float:
    """The standard normal CDF, accurate in both tails."""
    if x < 0:
        return 0.5 * math.erfc(-x / math.sqrt(2.0))
    return 1.0 - 0.5 * math.erfc(x / math.sqrt(2.0))


def _constant_dtype(dtype: DTypeLike, name: str) -> np.dtype:
    # Constant initializers may fill integer or boolean variables (counters, masks).
    if dtype is None:
        return default_dtype()
    return check_any_dtype(dtype, name)


def zeros(
    key: jax.Array,
    shape: Shape,
    dtype: DTypeLike = None,
    out_sharding: OutSharding = None,
) -> jax.Array:
    """An array of zeros; the key is ignored. Same as ``jax.nn.initializers.zeros``.

    An initializer itself, not a factory: ``bias_init=fi.zeros``. With no ``dtype``,
    float32 (float64 under ``jax_enable_x64``), as every initializer here.

    Example:
      >>> zeros(jax.random.key(0), (2, 3))
      Array([[0., 0., 0.],
             [0., 0., 0.]], dtype=float32)
    """
    del key
    shape = check_shape(shape, "zeros")
    return jnp.zeros(shape, _constant_dtype(dtype, "zeros"), out_sharding=out_sharding)


def ones(
    key: jax.Array,
    shape: Shape,
    dtype: DTypeLike = None,
    out_sharding: OutSharding = None,
) -> jax.Array:
    """An array of ones; the key is ignored. Same as ``jax.nn.initializers.ones``.

    An initializer itself, not a factory: ``scale_init=fi.ones``.

    Example:
      >>> ones(jax.random.key(0), (2,))
      Array([1., 1.], dtype=float32)
    """
    del key
    shape = check_shape(shape, "ones")
    return jnp.ones(shape, _constant_dtype(dtype, "ones"), out_sharding=out_sharding)


@named_factory(value_first=True)
def constant(value, dtype: DTypeLike = None) -> Initializer:
    """An initializer that fills with ``value`` (a scalar, or an array that broadcasts).

    Same as ``jax.nn.initializers.constant``. A NaN ``value`` raises when the
    initializer is built.

    Args:
      value: the fill value.
      dtype: the default dtype when the caller passes none.

    Example:
      >>> constant(-0.5)(jax.random.key(0), (2,))
      Array([-0.5, -0.5], dtype=float32)
    """
    array = np.asarray(value)
    if np.issubdtype(array.dtype, np.number) and np.isnan(array).any():
        raise ValueError(f"constant: value must be a number, not NaN, got value={value!r}")
    default = None if dtype is None else _constant_dtype(dtype, "constant")

    def init(key, shape, dtype=default, out_sharding=None):
        del key
        shape = check_shape(shape, "constant")
        dtype = _constant_dtype(dtype, "constant")
        try:
            np.broadcast_shapes(array.shape, shape)
        except ValueError:
            raise ValueError(
                f"constant: value of shape {array.shape} does not broadcast to shape={shape}"
            ) from None
        return jnp.full(shape, value, dtype=dtype, out_sharding=out_sharding)

    return init


@named_factory
def normal(stddev: float = 1e-2, dtype: DTypeLike = None, *, mean: float = 0.0) -> Initializer:
    """Draws from N(mean, stddev^2).

    The ``jax.nn.initializers.normal`` twin (same values in float32 for the same key
    when ``mean=0``); ``mean`` is an addition (``torch.nn.init.normal_(mean, std)``).
    Complex dtypes get E|z - mean|^2 = stddev^2 with circularly symmetric samples.
    Below 32 bits the draw is in float32 and cast once.

    Args:
      stddev: the standard deviation, >= 0.
      dtype: the default dtype when the caller passes none.
      mean: the mean.

    Example:
      >>> w = normal(0.02)(jax.random.key(0), (768, 768))
      >>> w.shape, w.dtype, round(float(w.std()), 3)
      ((768, 768), dtype('float32'), 0.02)
    """
    stddev = check_number(stddev, "normal", "stddev", at_least=0)
    mean = check_number(mean, "normal", "mean")
    default = None if dtype is None else check_dtype(dtype, "normal")

    def init(key, shape, dtype=default, out_sharding=None):
        shape = check_shape(shape, "normal")
        dtype = check_dtype(dtype, "normal")
        if math.prod(shape) == 0:
            return empty(shape, dtype, out_sharding)
        draw = sampling_dtype(dtype)
        x = jax.random.normal(key, shape, draw, out_sharding=out_sharding) * jnp.array(stddev, draw)
        if mean != 0.0:
            x = x + jnp.array(mean, draw)
        return x.astype(dtype)

    return init


@named_factory
def uniform(scale: float = 1e-2, dtype: DTypeLike = None) -> Initializer:
    """Draws from U[0, scale): jax's one-sided convention.

    The ``jax.nn.initializers.uniform`` twin (same values in float32). For a
    symmetric or arbitrary range use :func:`uniform_between`. Real dtypes only.

    Args:
      scale: the upper end of the range, >= 0.
      dtype: the default dtype when the caller passes none.

    Example:
      >>> w = uniform(0.1)(jax.random.key(0), (100, 100))
      >>> bool(w.min() >= 0.0 and w.max() < 0.1)
      True
    """
    scale = check_number(scale, "uniform", "scale", at_least=0)
    default = None if dtype is None else check_dtype(dtype, "uniform")

    def init(key, shape, dtype=default, out_sharding=None):
        shape = check_shape(shape, "uniform")
        dtype = check_dtype(dtype, "uniform", allow_complex=False)
        if math.prod(shape) == 0:
            return empty(shape, dtype, out_sharding)
        draw = sampling_dtype(dtype)
        x = jax.random.uniform(key, shape, draw, out_sharding=out_sharding)
        return (x * jnp.array(scale, draw)).astype(dtype)

    return init


@named_factory
def uniform_between(
    minval: float = -1.0, maxval: float = 1.0, dtype: DTypeLike = None
) -> Initializer:
    """Draws from U[minval, maxval), absolute bounds: PyTorch's ``uniform_(a, b)``.

    ``uniform_between(-1 / sqrt(fan_in), 1 / sqrt(fan_in))`` is PyTorch's default for
    ``nn.Linear`` biases. :func:`uniform` is jax's one-sided U[0, scale). Real dtypes
    only. Formerly ``uniform_range`` (deprecated alias for one release).

    Args:
      minval: the lower end (inclusive).
      maxval: the upper end (exclusive), > minval.
      dtype: the default dtype when the caller passes none.

    Example:
      >>> b = uniform_between(-0.05, 0.05)(jax.random.key(0), (1000,))
      >>> bool(b.min() >= -0.05 and b.max() < 0.05), round(float(b.mean()), 2)
      (True, 0.0)
    """
    name = "uniform_between"
    minval = check_number(minval, name, "minval")
    maxval = check_number(maxval, name, "maxval")
    if not maxval > minval:
        fail(ValueError, name, "maxval", f"> minval={format_bound(minval)}", maxval)
    default = None if dtype is None else check_dtype(dtype, name)

    def init(key, shape, dtype=default, out_sharding=None):
        shape = check_shape(shape, name)
        dtype = check_dtype(dtype, name, allow_complex=False)
        if math.prod(shape) == 0:
            return empty(shape, dtype, out_sharding)
        draw = sampling_dtype(dtype)
        x = jax.random.uniform(key, shape, draw, minval, maxval, out_sharding=out_sharding)
        return x.astype(dtype)

    return init


def truncated_normal_std(lower: float, upper: float) -> float:
    """The std of a standard normal truncated to ``(lower, upper)``.

    ``sqrt(1 + (a phi(a) - b phi(b)) / Z - ((phi(a) - phi(b)) / Z)^2)`` with
    ``a, b = lower, upper``, ``phi``/``Phi`` the standard normal density and CDF and
    ``Z = Phi(b) - Phi(a)``; 0.8796256610342398 for (-2, 2). Infinite bounds are
    allowed. Formerly ``truncated_std`` (deprecated alias for one release).

    Example:
      >>> round(truncated_normal_std(-2.0, 2.0), 10)
      0.879625661
      >>> truncated_normal_std(-math.inf, math.inf)
      1.0
    """
    a = check_number(lower, "truncated_normal_std", "lower", finite=False)
    b = check_number(upper, "truncated_normal_std", "upper", finite=False)
    if not b > a:
        fail(ValueError, "truncated_normal_std", "upper", f"> lower={format_bound(a)}", b)
    pdf = lambda t: math.exp(-0.5 * t * t) / math.sqrt(2 * math.pi) if math.isfinite(t) else 0.0
    mass = float(_ndtr(b) - _ndtr(a))
    ta = a * pdf(a) if math.isfinite(a) else 0.0
    tb = b * pdf(b) if math.isfinite(b) else 0.0
    mean = (pdf(a) - pdf(b)) / mass
    return math.sqrt(1.0 + (ta - tb) / mass - mean * mean)


def _check_bounds(
    lower: float, upper: float, name: str, args: tuple[str, str] = ("lower", "upper")
) -> tuple[float, float]:
    """Bounds in units of std: numbers (infinite allowed), ``upper > lower``, and an
    interval holding enough mass for the inverse-CDF sampler."""
    lower = check_number(lower, name, args[0], finite=False)
    upper = check_number(upper, name, args[1], finite=False)
    if not upper > lower:
        fail(ValueError, name, args[1], f"> {args[0]}={format_bound(lower)}", upper)
    if float(_ndtr(upper) - _ndtr(lower)) < 1e-6:
        raise ValueError(
            f"{name}: the interval ({lower}, {upper}) holds less than 1e-6 of the normal's "
            "mass; the inverse-CDF sampler cannot draw from it accurately"
        )
    return lower, upper


# Below this bound (in std units) erf(bound / sqrt 2) stays off +-1 in float32 (it
# reaches 1 near 5.5), so jax's sampler has no spike there.
_ERF_RESOLVED = 5.0


def truncated_standard_normal(key, lower, upper, shape, dtype, out_sharding=None):
    """``jax.random.truncated_normal``, without its spike at far bounds.

    jax draws ``u`` uniform in ``[erf(lower / sqrt 2), erf(upper / sqrt 2))`` and returns
    ``sqrt 2 erfinv(u)`` clamped into the bounds. A bound beyond about 5.9 in float32
    has ``erf`` rounding to exactly -1 or 1, so ``u`` can be -1, ``erfinv`` is -inf,
    and the sample lands on the bound itself: at ``truncated_normal_between(std=0.02)``'s bounds
    of +-100 std, about 1 draw in 6 million is exactly -2.0. Here the uniform range is
    kept inside (-1, 1), so no sample goes beyond what the float inverse CDF resolves
    (about 5.3 std in float32; the normal mass beyond is 1e-7). Bounds that ``erf``
    resolves are left to jax (the same program, so the same values bit for bit).
    """
    if abs(float(lower)) < _ERF_RESOLVED and abs(float(upper)) < _ERF_RESOLVED:
        return jax.random.truncated_normal(
            key, lower, upper, shape, dtype, out_sharding=out_sharding
        )
    lower = jnp.asarray(lower, dtype)
    upper = jnp.asarray(upper, dtype)
    sqrt2 = np.array(np.sqrt(2), dtype)
    one = np.array(1, dtype)
    a = jnp.maximum(jax.lax.erf(lower / sqrt2), jnp.nextafter(-one, one))
    b = jnp.minimum(jax.lax.erf(upper / sqrt2), jnp.nextafter(one, -one))
    u = jax.random.uniform(key, shape, dtype, minval=a, maxval=b, out_sharding=out_sharding)
    out = sqrt2 * jax.lax.erf_inv(u)
    return jnp.clip(
        out, jnp.nextafter(lower, np.array(np.inf, dtype)), jnp.nextafter(upper, -np.inf)
    )


@named_factory
def truncated_normal(
    stddev: float = 1e-2,
    dtype: DTypeLike = None,
    lower: float = -2.0,
    upper: float = 2.0,
    *,
    mean: float = 0.0,
    correct_std: bool = False,
) -> Initializer:
    """Draws N(0, 1) truncated to (lower, upper), times ``stddev``, plus ``mean``.

    The ``jax.nn.initializers.truncated_normal`` twin (same values in float32 when
    ``mean=0``). Bounds are in units of ``stddev`` (jax, Haiku, TF and timm's
    ``trunc_normal_tf_``), and ``stddev`` is the std *before* truncation: with the
    default bounds the samples' std is ``0.8796 * stddev``. Pass
    ``correct_std=True`` to divide by :func:`truncated_normal_std` so the std is
    exactly ``stddev`` (the bounds then scale with it). PyTorch's ``trunc_normal_``
    takes absolute bounds instead: see :func:`truncated_normal_between`.

    Args:
      stddev: the scale, >= 0.
      dtype: the default dtype when the caller passes none.
      lower: the lower bound, in units of ``stddev``.
      upper: the upper bound, in units of ``stddev``.
      mean: added after scaling.
      correct_std: make the samples' std equal ``stddev``.

    Example:
      >>> w = truncated_normal(0.02)(jax.random.key(0), (768, 768))
      >>> round(float(w.std()), 4), bool(abs(w).max() <= 2 * 0.02)
      (0.0176, True)
      >>> w = truncated_normal(0.02, correct_std=True)(jax.random.key(0), (768, 768))
      >>> round(float(w.std()), 4)
      0.02
    """
    name = "truncated_normal"
    stddev = check_number(stddev, name, "stddev", at_least=0)
    mean = check_number(mean, name, "mean")
    lower, upper = _check_bounds(lower, upper, name)
    scale = stddev / truncated_normal_std(lower, upper) if correct_std else stddev
    default = None if dtype is None else check_dtype(dtype, name)

    def init(key, shape, dtype=default, out_sharding=None):
        shape = check_shape(shape, name)
        dtype = check_dtype(dtype, name, allow_complex=False)
        if math.prod(shape) == 0:
            return empty(shape, dtype, out_sharding)
        draw = sampling_dtype(dtype)
        x = truncated_standard_normal(key, lower, upper, shape, draw, out_sharding) * jnp.array(
            scale, draw
        )
        if mean != 0.0:
            x = x + jnp.array(mean, draw)
        return x.astype(dtype)

    return init


@named_factory
def truncated_normal_between(
    mean: float = 0.0,
    std: float = 1.0,
    minval: float = -2.0,
    maxval: float = 2.0,
    dtype: DTypeLike = None,
) -> Initializer:
    """N(mean, std^2) cut to the absolute interval [minval, maxval]: PyTorch's
    ``torch.nn.init.trunc_normal_(mean, std, a=minval, b=maxval)``.

    The bounds are absolute values, not multiples of ``std``, and ``std`` is the std
    before truncation. So ``truncated_normal_between(std=0.02)`` (timm's ViT init) is
    practically untruncated (the bounds sit at 100 sigma), while
    ``truncated_normal(0.02)`` (jax's, bounds in units of ``stddev``) cuts at 2 sigma.
    Every sample lies in [minval, maxval]. Formerly ``trunc_normal(mean, std, a, b)``
    (deprecated alias for one release).

    Args:
      mean: the mean of the normal before truncation.
      std: its std, > 0.
      minval: the absolute lower bound.
      maxval: the absolute upper bound, > minval.
      dtype: the default dtype when the caller passes none.

    Example:
      >>> w = truncated_normal_between(std=0.02)(jax.random.key(0), (768, 3072))
      >>> round(float(w.std()), 3)
      0.02
      >>> w = truncated_normal_between(0.0, 1.0, -0.5, 0.5)(jax.random.key(0), (1000,))
      >>> bool(w.min() >= -0.5 and w.max() <= 0.5)
      True
    """
    name = "truncated_normal_between"
    mean = check_number(mean, name, "mean")
    std = check_number(std, name, "std", above=0)
    minval = check_number(minval, name, "minval")
    maxval = check_number(maxval, name, "maxval")
    if not maxval > minval:
        fail(ValueError, name, "maxval", f"> minval={format_bound(minval)}", maxval)
    lower, upper = _check_bounds((minval - mean) / std, (maxval - mean) / std, name)
    default = None if dtype is None else check_dtype(dtype, name)

    def init(key, shape, dtype=default, out_sharding=None):
        shape = check_shape(shape, name)
        dtype = check_dtype(dtype, name, allow_complex=False)
        if math.prod(shape) == 0:
            return empty(shape, dtype, out_sharding)
        draw = sampling_dtype(dtype)
        z = truncated_standard_normal(key, lower, upper, shape, draw, out_sharding)
        x = z * jnp.array(std, draw) + jnp.array(mean, draw)
        # Rounding of z * std + mean (and of the cast) may step past a bound by an ulp;
        # the bounds are hard, as in PyTorch, in the output dtype.
        x = x.astype(dtype)
        return jnp.clip(x, jnp.array(minval, dtype), jnp.array(maxval, dtype))

    return init


@named_factory
def trunc_normal(
    mean: float = 0.0,
    std: float = 1.0,
    a: float = -2.0,
    b: float = 2.0,
    dtype: DTypeLike = None,
) -> Initializer:
    """Deprecated: :func:`truncated_normal_between` with ``a``, ``b`` for ``minval``,
    ``maxval``; the same draws. Reached only through the deprecated public names
    ``flaxinit.trunc_normal``/``flaxinit.initializers.trunc_normal``, which warn.

    Example:
      >>> old = trunc_normal(std=0.5, a=-1.0, b=1.0)(jax.random.key(0), (4,))
      >>> new = truncated_normal_between(std=0.5, minval=-1.0, maxval=1.0)(jax.random.key(0), (4,))
      >>> bool((old == new).all())
      True
    """
    if not check_number(b, "trunc_normal", "b") > check_number(a, "trunc_normal", "a"):
        fail(ValueError, "trunc_normal", "b", f"> a={format_bound(a)}", b)
    return truncated_normal_between(mean, std, a, b, dtype)
