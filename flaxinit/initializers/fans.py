"""Fan computation and nonlinearity gains."""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence

from flaxinit import activations
from flaxinit._checks import check_shape, normalize_axes
from flaxinit.initializers._core import AxisSpec


def compute_fans(
    shape: Sequence[int],
    in_axis: AxisSpec = -2,
    out_axis: AxisSpec = -1,
    batch_axis: AxisSpec = (),
) -> tuple[int, int]:
    """Returns ``(fan_in, fan_out)`` of a weight of ``shape`` in Flax layout.

    ``fan_in = in_size * receptive_field`` and ``fan_out = out_size * receptive_field``,
    where ``in_size`` (``out_size``) is the product of the ``in_axis`` (``out_axis``)
    dims and the receptive field is the product of every axis that is neither in,
    out nor batch (the spatial taps of a convolution). ``batch_axis`` names axes of
    independent weights (stacked layers from ``nn.scan``/``nnx.vmap``, heads of an
    ``Einsum``) that count for neither fan.

    The defaults give Flax's kernel layouts: ``(in, out)`` for Dense and
    ``(*window, in, out)`` for Conv. Multi-axis kernels (``DenseGeneral``, attention
    projections of shape ``(in, heads, head_dim)``) take tuples:
    ``compute_fans((512, 8, 64), in_axis=0, out_axis=(1, 2)) == (512, 512)``.

    Unlike ``jax.nn.initializers``, the sizes are computed by multiplication, so a
    0-sized dim gives a fan of 0 rather than a ``ZeroDivisionError``, and bad axes
    raise ``ValueError`` rather than ``IndexError``.

    Args:
      shape: the weight's shape, at least 2-D.
      in_axis: the input axis or axes.
      out_axis: the output axis or axes.
      batch_axis: axes of independent weights, excluded from both fans.

    Returns:
      ``(fan_in, fan_out)`` as Python ints.

    Example:
      >>> compute_fans((3, 3, 16, 32))
      (144, 288)
      >>> compute_fans((4, 16, 32), batch_axis=0)
      (16, 32)
    """
    name = "compute_fans"
    shape = check_shape(shape, name)
    if len(shape) < 2:
        raise ValueError(
            f"{name}: fans need a shape with at least 2 dimensions, got shape={shape} "
            "(a bias or a norm scale has no fan; initialize it with zeros/ones/constant)"
        )
    ndim = len(shape)
    ins = normalize_axes(in_axis, ndim, name, "in_axis")
    outs = normalize_axes(out_axis, ndim, name, "out_axis")
    batch = normalize_axes(batch_axis, ndim, name, "batch_axis")
    for first, second, a, b in (
        ("in_axis", "out_axis", ins, outs),
        ("in_axis", "batch_axis", ins, batch),
        ("out_axis", "batch_axis", outs, batch),
    ):
        if set(a) & set(b):
            raise ValueError(f"{name}: {first}={a} and {second}={b} overlap for shape={shape}")
    named = set(ins) | set(outs) | set(batch)
    receptive_field = math.prod(d for i, d in enumerate(shape) if i not in named)
    in_size = math.prod(shape[i] for i in ins)
    out_size = math.prod(shape[i] for i in outs)
    return in_size * receptive_field, out_size * receptive_field


# PyTorch's `torch.nn.init.calculate_gain` table, value for value.
_UNIT_GAIN = (
    "linear",
    "conv1d",
    "conv2d",
    "conv3d",
    "conv_transpose1d",
    "conv_transpose2d",
    "conv_transpose3d",
)
# The nonlinearities' gains (sigmoid, tanh, relu, selu; leaky_relu's depends on its slope)
# are in flaxinit.activations, the one table of nonlinearities.


def calculate_gain(nonlinearity: str, param: float | None = None) -> float:
    """The recommended gain for a nonlinearity, PyTorch's table exactly.

    ================================  =============================
    nonlinearity                      gain
    ================================  =============================
    linear, conv*, conv_transpose*    1
    sigmoid                           1
    tanh                              5/3
    relu                              sqrt(2)
    leaky_relu                        sqrt(2 / (1 + slope^2))
    selu                              3/4
    ================================  =============================

    ``param`` is the negative slope of ``leaky_relu`` (default 0.01). The selu gain is
    empirical (pytorch#24991); self-normalizing nets want ``linear`` instead.

    Args:
      nonlinearity: the name of the nonlinearity.
      param: the leaky-ReLU negative slope.

    Returns:
      The gain, a Python float.

    Example:
      >>> calculate_gain("relu")
      1.4142135623730951
      >>> calculate_gain("leaky_relu", 0.2)
      1.3867504905630728
    """
    if not isinstance(nonlinearity, str):
        raise ValueError(f"calculate_gain: nonlinearity must be a string, got {nonlinearity!r}")
    if nonlinearity in _UNIT_GAIN:
        return 1.0
    info = activations.lookup(nonlinearity)
    # Canonical names only: PyTorch's table has no aliases.
    if info is not None and info.name == nonlinearity and info.gain is not None:
        return info.gain
    if nonlinearity == "leaky_relu":
        if param is None:
            slope = 0.01
        elif isinstance(param, bool) or not isinstance(param, numbers.Real):
            raise ValueError(
                f"calculate_gain: negative_slope param={param!r} is not a valid number"
            )
        else:
            slope = float(param)
            if not math.isfinite(slope):
                raise ValueError(f"calculate_gain: negative_slope param={param!r} is not finite")
        return math.sqrt(2.0 / (1 + slope**2))
    gains = [a.name for a in activations.ACTIVATIONS if a.gain is not None]
    raise ValueError(
        f"calculate_gain: unsupported nonlinearity {nonlinearity!r}; known: "
        f"{', '.join((*_UNIT_GAIN, *gains, 'leaky_relu'))}"
    )
