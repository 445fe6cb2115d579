"""Root pytest set-up, shared by tests/ and the doctests in flaxinit/.

8 simulated CPU devices, configured before jax is first imported, and the names
docstring examples use.
"""

import os

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import flaxinit


@pytest.fixture(autouse=True)
def _doctest_names(doctest_namespace):
    doctest_namespace.update({"jax": jax, "jnp": jnp, "np": np, "fi": flaxinit})
    doctest_namespace.update({name: getattr(flaxinit, name) for name in flaxinit.__all__})
