"""flaxinit._checks: what each shared check accepts, what it refuses, and the one message
format ``{caller}: {arg} must be {requirement}, got {arg}={value!r}``."""

from __future__ import annotations

import math
import re

import jax.numpy as jnp
import numpy as np
import pytest

from flaxinit import _checks

FORMAT = re.compile(r"^caller: arg must be .+, got arg=.+$")


@pytest.mark.parametrize(
    ("value", "expected"),
    [(1, 1.0), (np.float32(0.5), 0.5), (np.array(2.0), 2.0), (jnp.float32(3.0), 3.0)],
)
def test_check_number_accepts_reals(value, expected):
    out = _checks.check_number(value, "caller", "arg")
    assert out == expected
    assert type(out) is float


@pytest.mark.parametrize(
    ("value", "kwargs", "error"),
    [
        (True, {}, TypeError),
        (np.bool_(True), {}, TypeError),
        (1 + 2j, {}, TypeError),
        ("0.1", {}, TypeError),
        (np.ones(2), {}, TypeError),
        (None, {}, TypeError),
        (math.nan, {}, ValueError),
        (math.inf, {}, ValueError),
        (math.nan, {"finite": False}, ValueError),
        (-1e-9, {"at_least": 0}, ValueError),
        (0.0, {"above": 0}, ValueError),
        (1.0, {"below": 1}, ValueError),
        (2.0, {"at_most": 1}, ValueError),
    ],
)
def test_check_number_refuses(value, kwargs, error):
    with pytest.raises(error) as info:
        _checks.check_number(value, "caller", "arg", **kwargs)
    assert FORMAT.match(str(info.value)), str(info.value)


def test_check_number_keeps_infinite_bounds_when_asked():
    assert _checks.check_number(-math.inf, "caller", "arg", finite=False) == -math.inf


@pytest.mark.parametrize(
    ("call", "error"),
    [
        (lambda: _checks.check_int(True, "caller", "arg"), TypeError),
        (lambda: _checks.check_int(2.0, "caller", "arg"), TypeError),
        (lambda: _checks.check_int(0, "caller", "arg", at_least=1), ValueError),
        (lambda: _checks.check_int(5, "caller", "arg", at_most=4), ValueError),
        (lambda: _checks.check_bool(0, "caller", "arg"), TypeError),
        (lambda: _checks.check_choice("c", "caller", "arg", ("a", "b")), ValueError),
        (lambda: _checks.check_choice([1], "caller", "arg", {"a"}), ValueError),
        (lambda: _checks.check_callable(3, "caller", "arg"), TypeError),
        (lambda: _checks.check_shape((2, 2.0), "caller", "arg"), TypeError),
        (lambda: _checks.check_shape((2, -1), "caller", "arg"), ValueError),
        (lambda: _checks.check_shape(None, "caller", "arg"), TypeError),
        (lambda: _checks.check_dtype(1.0, "caller", "arg"), TypeError),
        (lambda: _checks.check_dtype("not-a-dtype", "caller", "arg"), TypeError),
        (lambda: _checks.check_axes((0, True), "caller", "arg"), TypeError),
        (lambda: _checks.normalize_axes(2, 2, "caller", "arg"), ValueError),
        (lambda: _checks.normalize_axes((1, -1), 2, "caller", "arg"), ValueError),
    ],
)
def test_every_check_raises_in_the_one_format(call, error):
    with pytest.raises(error) as info:
        call()
    assert FORMAT.match(str(info.value)), str(info.value)


def test_canonical_forms():
    assert _checks.check_int(np.int64(3), "c", "a") == 3
    assert type(_checks.check_int(np.int64(3), "c", "a")) is int
    assert _checks.check_bool(np.bool_(True), "c", "a") is True
    assert _checks.check_shape(5, "c") == (5,)
    assert _checks.check_axes(np.int32(-1), "c", "a") == -1
    assert _checks.normalize_axes((-1, 0), 3, "c", "a") == (2, 0)
    assert _checks.check_dtype(jnp.bfloat16, "c") == jnp.dtype(jnp.bfloat16)
