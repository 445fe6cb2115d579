"""Rules compiled and matched (flaxinit.rules.matching): malformed and unmatched rules."""

import jax.numpy as jnp
import pytest

from flaxinit.rules import (
    apply_rules,
    fill,
)


def test_strict_unmatched_names_pattern_and_closest_paths(linen_vars):
    with pytest.raises(ValueError, match="matched no leaf") as info:
        apply_rules(linen_vars, [("kernel", fill(0.0)), ("*/atn/out/kernel", fill(0.0))])
    msg = str(info.value)
    assert "rule 1 pattern '*/atn/out/kernel'" in msg
    assert "'params/attn/out/kernel'" in msg
    closest = msg.split("closest paths: ")[1].split("\n")[0].split(", ")
    assert len(closest) == 3
    assert "rule 0" not in msg


def test_strict_reports_every_unmatched_rule():
    tree = {"params": {"dense": {"kernel": jnp.ones((2, 2))}}}
    with pytest.raises(ValueError, match="matched no leaf") as info:
        apply_rules(tree, [("kernal", fill(0.0)), ("re:bias", fill(0.0))])
    msg = str(info.value)
    assert "'kernal'" in msg
    assert "'re:bias'" in msg
    assert "'params/dense/kernel'" in msg


@pytest.mark.parametrize(
    "rules",
    [[("kernel",)], ["kernel"], [("kernel", fill(0.0), 1)], "kernel", {"kernel": fill(0.0)}, 3],
)
def test_malformed_rules_are_type_errors(rules):
    with pytest.raises(TypeError):
        apply_rules({"kernel": jnp.ones(2)}, rules)


def test_bad_pattern_or_action_raise_before_any_work():
    with pytest.raises(ValueError, match="unbalanced"):
        apply_rules({"kernel": jnp.ones(2)}, [("kernel", fill(0.0)), ("ker[nel", fill(0.0))])
    with pytest.raises(TypeError, match="action must be"):
        apply_rules({"kernel": jnp.ones(2)}, [("kernel", 0.0)])
