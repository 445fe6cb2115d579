"""Variance scaling and its presets: Glorot/Xavier, He/Kaiming, LeCun.

Two naming conventions live here side by side:

* jax's names (``glorot_*``, ``he_*``, ``lecun_*``, ``variance_scaling``) take jax's
  arguments and draw jax's distributions: their ``*_normal`` is a truncated normal
  whose std is corrected to the target. In float32 they return jax's exact values.
* PyTorch's names (``xavier_*``, ``kaiming_*``) take ``torch.nn.init``'s arguments
  (``gain``, ``a``, ``mode``, ``nonlinearity``) and draw its distributions: their
  ``*_normal`` is a plain, untruncated normal. Fans follow Flax's ``(..., in, out)``
  layout, not PyTorch's ``(out, in, ...)``. jax has these names too, as aliases of
  ``glorot_*``/``he_*`` taking ``in_axis`` first, so ours take keyword arguments
  only: a jax-style positional call raises instead of silently meaning ``gain``.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from flaxinit._checks import check_axes, check_bool, check_choice, check_number, check_shape
from flaxinit.initializers._core import (
    AxisSpec,
    DTypeLike,
    Initializer,
    check_dtype,
    empty,
    named_factory,
    sampling_dtype,
)
from flaxinit.initializers.fans import calculate_gain, compute_fans

MODES = ("fan_in", "fan_out", "fan_avg", "fan_geo_avg")
DISTRIBUTIONS = ("truncated_normal", "normal", "uniform")

# Std of N(0, 1) truncated to (-2, 2).
_TRUNCATED_STD = 0.87962566103423978
# sqrt(E|z|^2) of the radial complex sampler below, |z|^2 ~ Exp(1) truncated at 4:
# E|z|^2 = 1 - 4 e^-4 / (1 - e^-4). jax uses 0.95311..., which overshoots by 1.85%.
_COMPLEX_TRUNCATED_STD = math.sqrt(1.0 - 4.0 * math.exp(-4.0) / (1.0 - math.exp(-4.0)))


def _real_dtype(dtype: np.dtype) -> np.dtype:
    return np.dtype(jnp.finfo(dtype).dtype)


def _complex_uniform(key, shape, dtype, out_sharding):
    """Uniform on the disk of radius sqrt(2): E|z|^2 = 1, uniform phase."""
    real = _real_dtype(dtype)
    key_r, key_theta = jax.random.split(key)
    r = jnp.sqrt(2 * jax.random.uniform(key_r, shape, real, out_sharding=out_sharding))
    theta = (2 * np.pi) * jax.random.uniform(key_theta, shape, real, out_sharding=out_sharding)
    return jax.lax.complex(r * jnp.cos(theta), r * jnp.sin(theta)).astype(dtype)


def _complex_truncated_normal(key, shape, dtype, out_sharding):
    """Circular complex normal with |z| < 2, rescaled to E|z|^2 = 1."""
    real = _real_dtype(dtype)
    key_r, key_theta = jax.random.split(key)
    # Inverse CDF of |z|^2 ~ Exp(1) truncated to [0, 4).
    u = jax.random.uniform(key_r, shape, real, out_sharding=out_sharding)
    r = jnp.sqrt(-jnp.log1p(-(1 - jnp.exp(jnp.array(-4.0, real))) * u))
    r = r / jnp.array(_COMPLEX_TRUNCATED_STD, real)
    theta = (2 * np.pi) * jax.random.uniform(key_theta, shape, real, out_sharding=out_sharding)
    return jax.lax.complex(r * jnp.cos(theta), r * jnp.sin(theta)).astype(dtype)


@named_factory
def variance_scaling(
    scale: float,
    mode: str,
    distribution: str,
    in_axis: AxisSpec = -2,
    out_axis: AxisSpec = -1,
    batch_axis: AxisSpec = (),
    dtype: DTypeLike = None,
) -> Initializer:
    """Draws with variance ``scale / n``, ``n`` a fan of the weight's shape.

    ``n`` is ``fan_in``, ``fan_out``, ``(fan_in + fan_out) / 2`` (``fan_avg``) or
    ``sqrt(fan_in * fan_out)`` (``fan_geo_avg``), from :func:`compute_fans` with the
    given axes. Distributions, each with variance exactly ``scale / n``:

    * ``truncated_normal``: N(0, 1) truncated to (-2, 2), divided by its std
      0.87962566103423978, times ``sqrt(scale / n)``.
    * ``normal``: N(0, scale / n).
    * ``uniform``: U(-limit, limit) with ``limit = sqrt(3 scale / n)``.

    Complex dtypes get E|z|^2 = scale / n with circular symmetry (uniform phase):
    complex normal, uniform on a disk, and a radially truncated normal (|z| < 2
    before rescaling; jax's divisor for it is 1.85% off, ours is exact).

    This is ``jax.nn.initializers.variance_scaling``, and returns its exact values in
    float32. Unlike jax it checks ``scale``, ``mode`` and ``distribution`` when the
    initializer is built, draws 16-bit dtypes in float32 before casting, and returns an
    empty array for a 0-sized shape.

    References: Glorot & Bengio 2010; He et al. 2015 (arXiv:1502.01852);
    LeCun et al. 1998, "Efficient BackProp"; Trabelsi et al. 2018 (complex).

    Args:
      scale: the variance multiplier, >= 0 (2.0 for ReLU, see :func:`calculate_gain`).
      mode: one of ``fan_in``, ``fan_out``, ``fan_avg``, ``fan_geo_avg``.
      distribution: one of ``truncated_normal``, ``normal``, ``uniform``.
      in_axis: the input axis or axes.
      out_axis: the output axis or axes.
      batch_axis: axes of independent weights excluded from the fans.
      dtype: the default dtype when the caller passes none.

    Example:
      >>> init = variance_scaling(2.0, "fan_in", "normal")
      >>> w = init(jax.random.key(0), (256, 512))
      >>> round(float(w.std() / math.sqrt(2 / 256)), 2)
      1.0
    """
    name = "variance_scaling"
    scale = check_number(scale, name, "scale", at_least=0)
    check_choice(mode, name, "mode", MODES)
    check_choice(distribution, name, "distribution", DISTRIBUTIONS)
    in_axis = check_axes(in_axis, name, "in_axis")
    out_axis = check_axes(out_axis, name, "out_axis")
    batch_axis = check_axes(batch_axis, name, "batch_axis")
    default = None if dtype is None else check_dtype(dtype, name)

    def init(key, shape, dtype=default, out_sharding=None):
        shape = check_shape(shape, name)
        dtype = check_dtype(dtype, name)
        fan_in, fan_out = compute_fans(shape, in_axis, out_axis, batch_axis)
        if math.prod(shape) == 0:
            return empty(shape, dtype, out_sharding)
        if mode == "fan_in":
            denominator = fan_in
        elif mode == "fan_out":
            denominator = fan_out
        elif mode == "fan_avg":
            denominator = (fan_in + fan_out) / 2
        else:
            denominator = (fan_in * fan_out) ** 0.5
        draw = sampling_dtype(dtype)
        if jnp.issubdtype(draw, jnp.complexfloating):
            std = jnp.sqrt(jnp.array(scale / denominator, _real_dtype(draw)))
            if distribution == "truncated_normal":
                z = _complex_truncated_normal(key, shape, draw, out_sharding)
            elif distribution == "normal":
                z = jax.random.normal(key, shape, draw, out_sharding=out_sharding)
            else:
                z = _complex_uniform(key, shape, draw, out_sharding)
            return (z * std.astype(draw)).astype(dtype)
        # The operations below are jax's, in jax's order, so float32 values match it.
        variance = jnp.array(scale / denominator, dtype=draw)
        if distribution == "truncated_normal":
            stddev = jnp.sqrt(variance) / jnp.array(_TRUNCATED_STD, draw)
            x = jax.random.truncated_normal(key, -2, 2, shape, draw, out_sharding=out_sharding)
            x = x * stddev
        elif distribution == "normal":
            x = jax.random.normal(key, shape, draw, out_sharding=out_sharding)
            x = x * jnp.sqrt(variance)
        else:
            x = jax.random.uniform(key, shape, draw, -1, out_sharding=out_sharding)
            x = x * jnp.sqrt(3 * variance)
        return x.astype(dtype)

    return init


@named_factory
def glorot_uniform(
    in_axis: AxisSpec = -2, out_axis: AxisSpec = -1, batch_axis: AxisSpec = (), dtype=None
) -> Initializer:
    """Glorot/Xavier uniform: U(-limit, limit), ``limit = sqrt(6 / (fan_in + fan_out))``.

    ``variance_scaling(1.0, "fan_avg", "uniform")``; jax's twin (Glorot & Bengio 2010).

    Example:
      >>> w = glorot_uniform()(jax.random.key(0), (256, 512))
      >>> limit = math.sqrt(6 / (256 + 512))
      >>> bool(abs(w).max() <= limit), round(float(abs(w).max() / limit), 2)
      (True, 1.0)
    """
    return variance_scaling(1.0, "fan_avg", "uniform", in_axis, out_axis, batch_axis, dtype)


@named_factory
def glorot_normal(
    in_axis: AxisSpec = -2, out_axis: AxisSpec = -1, batch_axis: AxisSpec = (), dtype=None
) -> Initializer:
    """Glorot/Xavier normal, jax's flavour: a truncated normal with variance 2 / (fan_in + fan_out).

    ``variance_scaling(1.0, "fan_avg", "truncated_normal")``; jax's twin. PyTorch's
    ``xavier_normal_`` is untruncated: see :func:`xavier_normal`.

    Example:
      >>> w = glorot_normal()(jax.random.key(0), (256, 512))
      >>> std = math.sqrt(2 / (256 + 512))
      >>> round(float(w.std() / std), 2), bool(abs(w).max() <= 2 * std / 0.8796)
      (1.0, True)
    """
    return variance_scaling(
        1.0, "fan_avg", "truncated_normal", in_axis, out_axis, batch_axis, dtype
    )


@named_factory
def lecun_uniform(
    in_axis: AxisSpec = -2, out_axis: AxisSpec = -1, batch_axis: AxisSpec = (), dtype=None
) -> Initializer:
    """LeCun uniform: U(-limit, limit), ``limit = sqrt(3 / fan_in)``; jax's twin.

    Example:
      >>> w = lecun_uniform()(jax.random.key(0), (256, 512))
      >>> round(float(abs(w).max() / math.sqrt(3 / 256)), 2)
      1.0
    """
    return variance_scaling(1.0, "fan_in", "uniform", in_axis, out_axis, batch_axis, dtype)


@named_factory
def lecun_normal(
    in_axis: AxisSpec = -2, out_axis: AxisSpec = -1, batch_axis: AxisSpec = (), dtype=None
) -> Initializer:
    """LeCun normal: a truncated normal with variance 1 / fan_in; jax's twin, Flax's default.

    LeCun et al. 1998; Klambauer et al. 2017 (SELU). Example:
      >>> w = lecun_normal()(jax.random.key(0), (256, 512))
      >>> round(float(w.std() * math.sqrt(256)), 2)
      1.0
    """
    return variance_scaling(1.0, "fan_in", "truncated_normal", in_axis, out_axis, batch_axis, dtype)


@named_factory
def he_uniform(
    in_axis: AxisSpec = -2, out_axis: AxisSpec = -1, batch_axis: AxisSpec = (), dtype=None
) -> Initializer:
    """He/Kaiming uniform: U(-limit, limit), ``limit = sqrt(6 / fan_in)``; jax's twin.

    He et al. 2015, "Delving Deep into Rectifiers". Example:
      >>> w = he_uniform()(jax.random.key(0), (3, 3, 64, 64))
      >>> round(float(abs(w).max() / math.sqrt(6 / (3 * 3 * 64))), 2)
      1.0
    """
    return variance_scaling(2.0, "fan_in", "uniform", in_axis, out_axis, batch_axis, dtype)


@named_factory
def he_normal(
    in_axis: AxisSpec = -2, out_axis: AxisSpec = -1, batch_axis: AxisSpec = (), dtype=None
) -> Initializer:
    """He/Kaiming normal, jax's flavour: a truncated normal with variance 2 / fan_in.

    ``variance_scaling(2.0, "fan_in", "truncated_normal")``; jax's twin (He et al.
    2015). PyTorch's ``kaiming_normal_`` is untruncated: see :func:`kaiming_normal`.

    Example:
      >>> w = he_normal()(jax.random.key(0), (3, 3, 64, 64))
      >>> round(float(w.std() / math.sqrt(2 / (3 * 3 * 64))), 2)
      1.0
    """
    return variance_scaling(2.0, "fan_in", "truncated_normal", in_axis, out_axis, batch_axis, dtype)


# jax.nn.initializers.xavier_* and kaiming_* are glorot_*/he_* and take
# (in_axis, out_axis, batch_axis, dtype) positionally; ours follow torch.nn.init, so a
# positional argument would silently mean something else (xavier_uniform(0) would be
# gain=0, all zeros). They take keywords only, and say why when given positionals.
def _torch_hint(name: str, twin: str, torch_args: str) -> str:
    return (
        f"jax.nn.initializers.{name} is {twin} and takes (in_axis, out_axis, batch_axis, "
        f"dtype) positionally, while fi.{name} follows torch.nn.init ({torch_args}), so a "
        f"positional argument would mean something else; write fi.{name}(in_axis=...) for "
        f"jax's meaning (fi.{twin} takes jax's arguments positionally), or "
        f"fi.{name}({torch_args.split(', ')[0]}=...)"
    )


def _check_gain(gain: float, allow_zero: bool, name: str) -> float:
    """``gain`` checked: finite, >= 0, and not 0 unless ``allow_zero``."""
    gain = check_number(gain, name, "gain", at_least=0)
    allow_zero = check_bool(allow_zero, name, "allow_zero")
    if gain == 0.0 and not allow_zero:
        raise ValueError(
            f"{name}: gain=0 makes every weight 0 (no signal forward, no gradient to the "
            "layer's input); if that is what you want, say so with allow_zero=True "
            f"({name}(gain=0.0, allow_zero=True)), or use fi.zeros"
        )
    return abs(gain)


@named_factory(positional_hint=_torch_hint("xavier_uniform", "glorot_uniform", "gain"))
def xavier_uniform(
    *,
    gain: float = 1.0,
    allow_zero: bool = False,
    in_axis: AxisSpec = -2,
    out_axis: AxisSpec = -1,
    batch_axis: AxisSpec = (),
    dtype: DTypeLike = None,
) -> Initializer:
    """PyTorch's ``xavier_uniform_``: U(-a, a), ``a = gain * sqrt(6 / (fan_in + fan_out))``.

    Fans in Flax layout. With ``gain=1`` this equals :func:`glorot_uniform`.
    Glorot & Bengio 2010.

    Keyword arguments only: jax's ``xavier_uniform`` is ``glorot_uniform``, whose
    first positional argument is ``in_axis``, so ``xavier_uniform(0)`` raises rather
    than mean ``gain=0``. ``gain=0`` (every weight 0) raises ``ValueError`` unless
    ``allow_zero=True``; ``in_axis``/``out_axis``/``batch_axis``/``dtype`` are as in
    :func:`variance_scaling`.

    Example:
      >>> w = xavier_uniform(gain=calculate_gain("tanh"))(jax.random.key(0), (256, 256))
      >>> round(float(abs(w).max() / (5 / 3 * math.sqrt(6 / 512))), 2)
      1.0
    """
    gain = _check_gain(gain, allow_zero, "xavier_uniform")
    return variance_scaling(gain**2, "fan_avg", "uniform", in_axis, out_axis, batch_axis, dtype)


@named_factory(positional_hint=_torch_hint("xavier_normal", "glorot_normal", "gain"))
def xavier_normal(
    *,
    gain: float = 1.0,
    allow_zero: bool = False,
    in_axis: AxisSpec = -2,
    out_axis: AxisSpec = -1,
    batch_axis: AxisSpec = (),
    dtype: DTypeLike = None,
) -> Initializer:
    """PyTorch's ``xavier_normal_``: N(0, std^2), ``std = gain * sqrt(2 / (fan_in + fan_out))``.

    A plain normal, not truncated (unlike jax's ``glorot_normal``). Fans in Flax layout.
    Keyword arguments only, and ``gain=0`` needs ``allow_zero=True``, as in
    :func:`xavier_uniform`.

    Example:
      >>> w = xavier_normal()(jax.random.key(0), (256, 256))
      >>> std = math.sqrt(2 / 512)
      >>> round(float(w.std() / std), 2), bool(abs(w).max() > 3 * std)  # untruncated
      (1.0, True)
    """
    gain = _check_gain(gain, allow_zero, "xavier_normal")
    return variance_scaling(gain**2, "fan_avg", "normal", in_axis, out_axis, batch_axis, dtype)


def _kaiming_scale(name: str, a: float, mode: str, nonlinearity: str) -> float:
    check_choice(mode, name, "mode", ("fan_in", "fan_out"))
    a = check_number(a, name, "a")
    try:
        gain = calculate_gain(nonlinearity, a)
    except ValueError as error:
        raise ValueError(f"{name}: {error}") from None
    return gain**2


@named_factory(
    positional_hint=_torch_hint("kaiming_uniform", "he_uniform", "a, mode, nonlinearity")
)
def kaiming_uniform(
    *,
    a: float = 0.0,
    mode: str = "fan_in",
    nonlinearity: str = "leaky_relu",
    in_axis: AxisSpec = -2,
    out_axis: AxisSpec = -1,
    batch_axis: AxisSpec = (),
    dtype: DTypeLike = None,
) -> Initializer:
    """PyTorch's ``kaiming_uniform_``: U(-bound, bound), ``bound = gain * sqrt(3 / fan)``.

    ``gain = calculate_gain(nonlinearity, a)`` and ``fan`` is ``fan_in`` or
    ``fan_out`` in Flax layout. The defaults give gain sqrt(2) (He uniform).
    ``kaiming_uniform(a=math.sqrt(5))`` is PyTorch's ``nn.Linear``/``nn.Conv``
    default, U(-1/sqrt(fan_in), 1/sqrt(fan_in)). He et al. 2015.

    Keyword arguments only: jax's ``kaiming_uniform`` is ``he_uniform``, whose
    positional arguments are ``(in_axis, out_axis, batch_axis, dtype)``, so a
    positional call raises rather than mean ``a``, ``mode``, ``nonlinearity``.

    Example:
      >>> torch_linear_default = kaiming_uniform(a=math.sqrt(5))
      >>> w = torch_linear_default(jax.random.key(0), (256, 64))
      >>> round(float(abs(w).max() * math.sqrt(256)), 2)  # U(-1/sqrt(fan_in), 1/sqrt(fan_in))
      1.0
    """
    scale = _kaiming_scale("kaiming_uniform", a, mode, nonlinearity)
    return variance_scaling(scale, mode, "uniform", in_axis, out_axis, batch_axis, dtype)


@named_factory(positional_hint=_torch_hint("kaiming_normal", "he_normal", "a, mode, nonlinearity"))
def kaiming_normal(
    *,
    a: float = 0.0,
    mode: str = "fan_in",
    nonlinearity: str = "leaky_relu",
    in_axis: AxisSpec = -2,
    out_axis: AxisSpec = -1,
    batch_axis: AxisSpec = (),
    dtype: DTypeLike = None,
) -> Initializer:
    """PyTorch's ``kaiming_normal_``: N(0, std^2), ``std = gain / sqrt(fan)``, untruncated.

    ``gain = calculate_gain(nonlinearity, a)``; jax's ``he_normal`` is truncated, this
    is not. He et al. 2015. Keyword arguments only, as :func:`kaiming_uniform`.

    Example:
      >>> init = kaiming_normal(mode="fan_out", nonlinearity="relu")
      >>> w = init(jax.random.key(0), (3, 3, 64, 128))
      >>> round(float(w.std() / math.sqrt(2 / (3 * 3 * 128))), 2)
      1.0
    """
    scale = _kaiming_scale("kaiming_normal", a, mode, nonlinearity)
    return variance_scaling(scale, mode, "normal", in_axis, out_axis, batch_axis, dtype)
