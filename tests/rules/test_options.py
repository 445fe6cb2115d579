"""context / num_layers / layer_of (flaxinit.rules.options)."""

import warnings

import jax.numpy as jnp
import pytest
from _rules_helpers import ctx_probe

from flaxinit.rules import apply_rules, explain_rules, fill
from flaxinit.rules.options import Options


def test_context_checks():
    tree = {"w": jnp.ones((2, 2))}
    with pytest.raises(ValueError, match="shadow"):
        apply_rules(tree, [("w", fill(0.0))], context={"path": 1})
    with pytest.raises(ValueError, match="shadow"):  # a property, not a field
        apply_rules(tree, [("w", fill(0.0))], context={"structural_axes": 1})
    with pytest.raises(TypeError, match="num_layers"):
        apply_rules(tree, [("w", fill(0.0))], num_layers=2.5)
    with pytest.raises(TypeError, match="num_layers"):
        apply_rules(tree, [("w", fill(0.0))], num_layers=True)
    with pytest.raises(TypeError, match="layer_of"):
        apply_rules(tree, [("w", fill(0.0))], layer_of=3)
    with pytest.raises(TypeError, match="context keys must be strings"):
        apply_rules(tree, [("w", fill(0.0))], context={1: 2})


def test_num_layers_and_layer_of_in_context_still_work_and_warn():
    z = jnp.zeros((2, 2))
    tree = {"enc": {"layers_1": {"w": z}}, "head": {"w": z}}
    layer_of = lambda path: 7 if path.startswith("head") else None
    for name, value in (("num_layers", 12), ("layer_of", layer_of)):
        new, old = {}, {}
        apply_rules(tree, [("w", ctx_probe(new))], **{name: value})
        with pytest.warns(DeprecationWarning, match=rf"apply_rules\(\.\.\., {name}=") as caught:
            apply_rules(tree, [("w", ctx_probe(old))], context={name: value, "d": 1})
        assert caught[0].filename == __file__  # the warning points at the caller
        assert {k: (c.num_layers, c.layer) for k, c in old.items()} == {
            k: (c.num_layers, c.layer) for k, c in new.items()
        }
        assert all(c.d == 1 for c in old.values())
    with pytest.warns(DeprecationWarning, match="layer_of"):
        report = explain_rules(tree, [("w", fill(0.0))], context={"layer_of": layer_of})
    assert report.by_path()["head/w"].layer == 7
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        with pytest.raises(TypeError, match="given twice"):
            apply_rules(tree, [("w", fill(0.0))], context={"num_layers": 2}, num_layers=3)


def test_options_keep_the_users_context_apart():
    context = {"d_model": 8}
    opts = Options.make(context, num_layers=4)
    assert (dict(opts.extra), opts.num_layers, opts.layer_of) == ({"d_model": 8}, 4, None)
    with pytest.raises(TypeError, match="context must be a dict"):
        Options.make([("d_model", 8)])
