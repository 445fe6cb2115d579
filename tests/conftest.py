"""Test set-up: 8 simulated CPU devices, made before jax is first imported."""

import os
import sys

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

# Shared test helpers live beside this file (`import _helpers`).
sys.path.insert(0, os.path.dirname(__file__))

import hypothesis

hypothesis.settings.register_profile("default", deadline=None, max_examples=40, derandomize=True)
hypothesis.settings.load_profile("default")
