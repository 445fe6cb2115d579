"""Shared fixtures: the digits batch and the 30-layer ReLU MLP of the issue's known answers.

The MLP matches the doctor's default model (same definition, so the jitted pass compiles
once per test session).
"""

import jax
import pytest

from flaxinit.diagnostics import digits
from flaxinit.models import MLP


@pytest.fixture(scope="session")
def batch():
    """512 standardized digits and their labels, the doctor's default batch."""
    return digits(512)


@pytest.fixture(scope="session")
def deep_mlp():
    """The doctor's default model: 30 hidden ReLU layers of width 256, then 10 outputs."""
    return MLP((256,) * 30, 10, activation="relu")


@pytest.fixture(scope="session")
def init_with(deep_mlp, batch):
    """``init_with(initializer)``: the deep MLP's variables with that kernel init, key 0."""

    def init(kernel_init):
        return deep_mlp.clone(kernel_init=kernel_init).init(jax.random.key(0), batch[0])

    return init
