"""The rules tests share `_rules_helpers` (beside this file) and the Linen model's variables."""

import os
import sys

import jax
import jax.numpy as jnp
import pytest

sys.path.insert(0, os.path.dirname(__file__))

from _rules_helpers import LinenNet


@pytest.fixture(scope="session")
def linen_vars():
    return LinenNet().init(jax.random.key(0), jnp.ones((1, 3, 4)))
