"""explain_rules and its report (flaxinit.rules.report)."""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _rules_helpers import DEPTH_RULES, LINEN_RULES, Scanned

from flaxinit.initializers import he_normal, normal
from flaxinit.rules import (
    LeafReport,
    RulesReport,
    UnmatchedRule,
    apply_rules,
    explain_rules,
    fill,
    scale,
)
from flaxinit.tables import RecordTable


def test_explain_rules_report(linen_vars):
    rules = [*LINEN_RULES, ("attn/**/kernel", scale(2.0)), ("nothing/here", fill(0.0))]
    report = explain_rules(linen_vars, rules)
    assert isinstance(report, RulesReport)
    assert len(report) == len(jax.tree.leaves(nn.unbox(linen_vars)))
    rec = report.by_path()["params/attn/out/kernel"]
    assert isinstance(rec, LeafReport)
    assert rec.shape == (2, 2, 4)
    assert rec.dtype == np.float32
    assert rec.rules == (2, 5)
    assert rec.patterns == ("attn/out/kernel", "attn/**/kernel")
    assert rec.actions == ("scale(0.5)", "scale(2.0)")
    assert report.by_path()["params/Conv_0/kernel"].actions == ("reinit(he_normal)",)
    assert "params/Conv_0/bias" in report.untouched
    assert "params/Conv_0/kernel" not in report.untouched
    assert [(m.index, m.pattern) for m in report.unmatched_rules] == [(6, "nothing/here")]
    text = str(report)
    lines = text.splitlines()
    assert lines[0].split() == ["path", "shape", "dtype", "layer", "rules"]
    # Aligned: every row starts its second column where the header does.
    col = lines[0].index("shape")
    rows = [line for line in lines[2:] if line.startswith("params/")]
    assert len(rows) == len(report)
    assert all(line[col - 2 : col] == "  " and line[col] != " " for line in rows)
    assert "#2 scale(0.5) -> #5 scale(2.0)" in text
    assert "unmatched rules:" in text
    assert "'nothing/here'" in text
    assert "RulesReport(" in repr(report)
    assert isinstance(report, RecordTable)
    with pytest.raises(dataclasses.FrozenInstanceError):
        report.problems = ()
    assert str(RulesReport((), (UnmatchedRule(0, "w", ()),))) == (
        "(no leaves)\nunmatched rules:\n  #0 'w'; closest: -"
    )


def test_explain_on_abstract_and_stacked_trees():
    abstract = jax.eval_shape(Scanned().init, jax.random.key(0), jnp.ones((1, 4)))
    report = explain_rules(abstract, DEPTH_RULES)
    rec = report.by_path()["params/layers/out/kernel"]
    assert rec.layer_axis == 0
    with pytest.warns(DeprecationWarning, match="LeafReport.layer_axis"):
        assert rec.stacked_axis == 0
    assert rec.actions[0].startswith("per layer(axis 0, 3 layers): reinit(normal(stddev=0.02))")
    assert report.by_path()["params/layers/fc/bias"].actions[0].startswith("per layer")
    assert report.unmatched_rules == ()
    assert "stack@0" in str(report)


def test_fan_based_redraw_of_a_vector_names_rule_and_leaf_and_is_explained():

    tree = {"dense": {"kernel": jnp.zeros((4, 3)), "bias": jnp.zeros((3,))}}
    rules = [("*", he_normal())]
    with pytest.raises(ValueError, match=r"rule 0 \('\*'.*'dense/bias' of shape \(3,\)"):
        apply_rules(tree, rules, key=jax.random.key(0))
    report = explain_rules(tree, rules)
    assert any("cannot draw 'dense/bias'" in p for p in report.problems)
    assert "problems:" in str(report)


def test_explain_has_a_legend_and_flags_a_scale_a_later_redraw_overwrites():

    tree = {"w": jnp.zeros((4, 4))}
    rules = [("w", scale(0.5)), ("w", normal(0.02))]
    report = explain_rules(tree, rules)
    redraw = "reinit(normal(stddev=0.02))"
    assert report.legend == ((0, "w", "scale(0.5)"), (1, "w", redraw))
    assert report.problems == (f"#0 scale(0.5) on 'w' is overwritten by #1 {redraw}",)
    text = str(report)
    assert "#0 'w' -> scale(0.5)" in text
    # A re-draw then a scale is the intended order: nothing to flag.
    assert explain_rules(tree, rules[::-1]).problems == ()
