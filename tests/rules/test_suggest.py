"""Closest paths for a pattern that matched nothing (flaxinit.rules.suggest)."""

import jax.numpy as jnp
import pytest

from flaxinit.rules import (
    apply_rules,
    fill,
)


def test_closest_paths_are_ranked_by_segments():
    tree = {
        "encoderdecoderblock_0": {
            "MultiHeadDotProductAttention_0": {"out": {"kernel": jnp.zeros((2, 2))}},
            "MlpBlock_0": {
                "Dense_0": {"kernel": jnp.zeros((2, 2))},
                "Dense_1": {"kernel": jnp.zeros((2, 2))},
            },
        }
    }
    with pytest.raises(
        ValueError, match=r"closest paths: 'encoderdecoderblock_0/MlpBlock_0/Dense_1"
    ):
        apply_rules(tree, [("fc2/kernel", fill(0.0))])
