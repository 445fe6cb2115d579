"""The argument checks used across flaxinit: one place, one message format.

Every check takes the value, the ``caller`` (the public function the user called, as
the user spells it: ``"normal"``, ``"gpt2"``, ``"lsuv"``) and the ``arg`` (the
argument's name), returns the value in canonical form (a Python ``float``/``int``, a
tuple), and otherwise raises, before any tracing, with the message

    ``{caller}: {arg} must be {requirement}, got {arg}={value!r}``

``TypeError`` when the value is of the wrong kind, ``ValueError`` when it is of the
right kind but out of range. The checks run in Python on static values (factory
arguments, shapes, dtypes), so they cost nothing inside ``jax.jit``.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Collection
from typing import Any, NoReturn

import jax.numpy as jnp
import numpy as np

__all__ = [
    "check_axes",
    "check_bool",
    "check_callable",
    "check_choice",
    "check_dtype",
    "check_int",
    "check_number",
    "check_shape",
    "fail",
    "format_bound",
    "normalize_axes",
]


def fail(error: type[Exception], caller: str, arg: str, requirement: str, value: Any) -> NoReturn:
    """Raises ``error`` with the one message format of every check.

    Example:
      >>> fail(ValueError, "normal", "stddev", ">= 0", -1.0)
      Traceback (most recent call last):
      ...
      ValueError: normal: stddev must be >= 0, got stddev=-1.0
    """
    shown = str(value) if isinstance(value, np.dtype) else repr(value)
    raise error(f"{caller}: {arg} must be {requirement}, got {arg}={shown}")


def format_bound(x: float) -> str:
    """A bound as an error message shows it: short (``0.1``, ``1e-05``), unless the
    short form would round it (``0.1000001`` stays whole)."""
    short = f"{x:g}"
    return short if float(short) == x else repr(float(x))


def check_number(
    value: Any,
    caller: str,
    arg: str,
    *,
    at_least: float | None = None,
    above: float | None = None,
    at_most: float | None = None,
    below: float | None = None,
    finite: bool = True,
) -> float:
    """``value`` as a Python float, within the bounds given, or raises.

    Accepts Python and NumPy reals and 0-d real arrays; rejects ``bool`` (a flag is
    not a hyper-parameter), complex values, strings and arrays of other shapes
    (``TypeError``), and NaN, infinities (unless ``finite=False``, for bounds) and
    values outside ``[at_least, at_most]``, ``(above, below)`` (``ValueError``).

    Example:
      >>> check_number(np.float32(0.5), "normal", "stddev", at_least=0)
      0.5
      >>> check_number(0.0, "trunc_normal", "std", above=0)
      Traceback (most recent call last):
      ...
      ValueError: trunc_normal: std must be > 0, got std=0.0
    """
    original = value
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        try:
            arr = np.asarray(value)
        except Exception:
            arr = None
        if (
            arr is None
            or arr.shape != ()
            or arr.dtype == np.bool_
            or not np.issubdtype(arr.dtype, np.number)
            or np.iscomplexobj(arr)
        ):
            fail(TypeError, caller, arg, "a real number", original)
        value = arr.item()
    value = float(value)
    if math.isnan(value) or (finite and math.isinf(value)):
        fail(ValueError, caller, arg, "finite" if finite else "a number, not NaN", value)
    if at_least is not None and value < at_least:
        fail(ValueError, caller, arg, f">= {format_bound(at_least)}", value)
    if above is not None and value <= above:
        fail(ValueError, caller, arg, f"> {format_bound(above)}", value)
    if at_most is not None and value > at_most:
        fail(ValueError, caller, arg, f"<= {format_bound(at_most)}", value)
    if below is not None and value >= below:
        fail(ValueError, caller, arg, f"< {format_bound(below)}", value)
    return value


def check_int(
    value: Any,
    caller: str,
    arg: str,
    *,
    at_least: int | None = None,
    at_most: int | None = None,
) -> int:
    """``value`` as a Python int in ``[at_least, at_most]``, or raises.

    Python and NumPy integers pass; ``bool`` and floats (even ``2.0``) are a
    ``TypeError``, so a misplaced flag or a computed float is not silently truncated.

    Example:
      >>> check_int(np.int64(4), "blockwise", "num_blocks", at_least=1)
      4
      >>> check_int(2.0, "gpt2", "num_layers")
      Traceback (most recent call last):
      ...
      TypeError: gpt2: num_layers must be an int, got num_layers=2.0
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        fail(TypeError, caller, arg, "an int", value)
    value = int(value)
    if at_least is not None and value < at_least:
        fail(ValueError, caller, arg, f"an int >= {at_least}", value)
    if at_most is not None and value > at_most:
        fail(ValueError, caller, arg, f"an int <= {at_most}", value)
    return value


def check_bool(value: Any, caller: str, arg: str) -> bool:
    """``value`` if it is a ``bool`` (``True``/``False`` or a NumPy bool), else raises.

    Example:
      >>> check_bool(1, "lstm", "fused")
      Traceback (most recent call last):
      ...
      TypeError: lstm: fused must be a bool, got fused=1
    """
    if not isinstance(value, (bool, np.bool_)):
        fail(TypeError, caller, arg, "a bool", value)
    return bool(value)


def check_choice(value: Any, caller: str, arg: str, choices: Collection[Any]) -> Any:
    """``value`` if it is one of ``choices``, else ``ValueError`` listing them.

    Example:
      >>> check_choice("fan_sum", "variance_scaling", "mode", ("fan_in", "fan_out"))
      Traceback (most recent call last):
      ...
      ValueError: variance_scaling: mode must be one of 'fan_in', 'fan_out', got mode='fan_sum'
    """
    try:
        known = value in choices
    except TypeError:  # an unhashable value against a set
        known = False
    if not known:
        fail(ValueError, caller, arg, "one of " + ", ".join(map(repr, choices)), value)
    return value


def check_callable(value: Any, caller: str, arg: str, what: str = "a callable") -> Any:
    """``value`` if it is callable, else ``TypeError`` saying what was expected.

    Example:
      >>> check_callable("he_normal", "scaled", "init", "an initializer (a callable)")
      Traceback (most recent call last):
      ...
      TypeError: scaled: init must be an initializer (a callable), got init='he_normal'
    """
    if not callable(value):
        fail(TypeError, caller, arg, what, value)
    return value


def check_shape(shape: Any, caller: str, arg: str = "shape") -> tuple[int, ...]:
    """``shape`` as a tuple of non-negative Python ints (an int is a 1-D shape).

    Example:
      >>> check_shape([3, np.int32(4)], "normal")
      (3, 4)
      >>> check_shape((4, -1), "normal")
      Traceback (most recent call last):
      ...
      ValueError: normal: shape must be a sequence of non-negative ints, got shape=(4, -1)
    """
    requirement = "a sequence of non-negative ints"
    if isinstance(shape, numbers.Integral) and not isinstance(shape, bool):
        dims: tuple[Any, ...] = (shape,)
    else:
        try:
            dims = tuple(shape)
        except TypeError:
            fail(TypeError, caller, arg, requirement, shape)
    for dim in dims:
        if isinstance(dim, bool) or not isinstance(dim, numbers.Integral):
            fail(TypeError, caller, arg, requirement, shape)
    if any(dim < 0 for dim in dims):
        fail(ValueError, caller, arg, requirement, shape)
    return tuple(int(dim) for dim in dims)


def check_dtype(dtype: Any, caller: str, arg: str = "dtype") -> np.dtype:
    """``dtype`` resolved by ``jnp.dtype``, or ``TypeError``; a number is refused even
    though NumPy would read some as a dtype (``normal(0.1, 0.0)`` meant a mean).

    Example:
      >>> check_dtype("bfloat16", "normal")
      dtype(bfloat16)
      >>> check_dtype(0.0, "normal")
      Traceback (most recent call last):
      ...
      TypeError: normal: dtype must be a dtype, got dtype=0.0
    """
    if isinstance(dtype, numbers.Number) and not isinstance(dtype, type):
        fail(TypeError, caller, arg, "a dtype", dtype)
    try:
        return jnp.dtype(dtype)
    except TypeError:
        fail(TypeError, caller, arg, "a dtype", dtype)


def check_axes(axes: Any, caller: str, arg: str) -> int | tuple[int, ...]:
    """An axis argument checked for type when it is given: an int, or a tuple of ints.

    Its range depends on the shape and is checked per shape by :func:`normalize_axes`.

    Example:
      >>> check_axes([0, 1], "compute_fans", "in_axis")
      (0, 1)
      >>> check_axes(1.5, "variance_scaling", "in_axis")
      Traceback (most recent call last):
      ...
      TypeError: variance_scaling: in_axis must be an int or a sequence of ints, got in_axis=1.5
    """
    requirement = "an int or a sequence of ints"
    if isinstance(axes, numbers.Integral) and not isinstance(axes, bool):
        return int(axes)
    try:
        items = tuple(axes)
    except TypeError:
        fail(TypeError, caller, arg, requirement, axes)
    for axis in items:
        if isinstance(axis, bool) or not isinstance(axis, numbers.Integral):
            fail(TypeError, caller, arg, requirement, axes)
    return tuple(int(a) for a in items)


def normalize_axes(axes: Any, ndim: int, caller: str, arg: str) -> tuple[int, ...]:
    """``axes`` (an int or a sequence of ints) as distinct non-negative indices for
    ``ndim`` dimensions, or raises.

    Example:
      >>> normalize_axes(-1, 3, "compute_fans", "out_axis")
      (2,)
      >>> normalize_axes((0, -3), 3, "compute_fans", "in_axis")
      Traceback (most recent call last):
      ...
      ValueError: compute_fans: in_axis must be distinct axes of a 3-D shape, got in_axis=(0, -3)
    """
    spec = check_axes(axes, caller, arg)
    items = (spec,) if isinstance(spec, int) else spec
    if any(not -ndim <= axis < ndim for axis in items):
        fail(ValueError, caller, arg, f"in range for a {ndim}-D shape", axes)
    out = tuple(axis % ndim for axis in items)
    if len(set(out)) != len(out):
        fail(ValueError, caller, arg, f"distinct axes of a {ndim}-D shape", axes)
    return out
