"""Test set-up. The 8 simulated CPU devices are configured in the root conftest.py,
which pytest loads first, before jax is imported."""

import os
import sys

# Shared test helpers live beside this file (`import _helpers`).
sys.path.insert(0, os.path.dirname(__file__))

import hypothesis

hypothesis.settings.register_profile("default", deadline=None, max_examples=40, derandomize=True)
hypothesis.settings.load_profile("default")
