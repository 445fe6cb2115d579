"""Each action's numeric effect, its repr, and its build-time checks."""

import functools
import math
import zlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flaxinit.initializers import he_normal, lecun_normal, normal, orthogonal, zeros
from flaxinit.rules import (
    RuleContext,
    action,
    apply_rules,
    at,
    explain_rules,
    fill,
    per_layer,
    reinit,
    scale,
)
from flaxinit.rules.actions import Call, Reinit, to_action

KEY = jax.random.key(42)


def rule_key(key, path, pattern, occurrence=0):
    """The documented key of a rule on a leaf without a layer index."""
    leaf = jax.random.fold_in(key, zlib.crc32(path.encode()))
    return jax.random.fold_in(leaf, zlib.crc32(f"{pattern}#{occurrence}".encode()))


def test_reinit_draws_with_the_documented_key_and_statistics():
    tree = {"enc": {"w": jnp.zeros((512, 256))}}
    out = apply_rules(tree, [("w", he_normal())], key=KEY)["enc"]["w"]
    expected = he_normal()(rule_key(KEY, "enc/w", "w"), (512, 256), jnp.float32)
    np.testing.assert_array_equal(out, expected)
    # std sqrt(2 / fan_in); the sample std's relative standard error is <= 1/sqrt(2n).
    n = out.size
    rel = abs(float(jnp.std(out)) / math.sqrt(2 / 512) - 1)
    assert rel < 5 / math.sqrt(2 * n)
    assert abs(float(jnp.mean(out))) < 5 * math.sqrt(2 / 512) / math.sqrt(n)


def test_reinit_keeps_dtype():
    tree = {"w": jnp.zeros((64, 64), jnp.bfloat16)}
    out = apply_rules(tree, [("w", reinit(normal(0.02)))], key=KEY)["w"]
    assert out.dtype == jnp.bfloat16
    # 5 standard errors of a sample std (1/sqrt(2n)) plus bf16's relative rounding.
    tolerance = 5 / math.sqrt(2 * out.size) + 2**-8
    assert float(jnp.std(out.astype(jnp.float32))) == pytest.approx(0.02, rel=tolerance)


def test_reinit_axes_draw_like_dense_general():
    # q/k/v kernel (in, heads, head_dim): Flax draws it as (in, heads*head_dim).
    tree = {"q": jnp.zeros((16, 2, 8)), "o": jnp.zeros((2, 8, 16))}
    rules = [
        ("q", reinit(lecun_normal(), in_axis=0, out_axis=(1, 2))),
        ("o", reinit(lecun_normal(), in_axis=(0, 1), out_axis=2)),
    ]
    out = apply_rules(tree, rules, key=KEY)
    q = lecun_normal()(rule_key(KEY, "q", "q"), (16, 16), jnp.float32).reshape(16, 2, 8)
    o = lecun_normal()(rule_key(KEY, "o", "o"), (16, 16), jnp.float32).reshape(2, 8, 16)
    np.testing.assert_array_equal(out["q"], q)
    np.testing.assert_array_equal(out["o"], o)


def test_reinit_axes_make_orthogonal_across_declared_axes():
    tree = {"q": jnp.zeros((8, 2, 4))}
    out = apply_rules(tree, [("q", reinit(orthogonal(), in_axis=0, out_axis=(1, 2)))], key=KEY)
    w = out["q"].reshape(8, 8)
    np.testing.assert_allclose(w @ w.T, np.eye(8), atol=1e-5)


def test_reinit_transposed_and_batch_axes():
    tree = {"t": jnp.zeros((6, 4)), "e": jnp.zeros((3, 4, 5))}
    rules = [
        ("t", reinit(he_normal(), in_axis=1, out_axis=0)),  # (out, in) layout
        ("e", reinit(he_normal(), batch_axis=0)),  # three independent experts
    ]
    out = apply_rules(tree, rules, key=KEY)
    t = he_normal()(rule_key(KEY, "t", "t"), (4, 6), jnp.float32)
    np.testing.assert_array_equal(out["t"], t.T)
    k = rule_key(KEY, "e", "e")
    for b in range(3):
        expert = he_normal()(jax.random.fold_in(k, b), (4, 5), jnp.float32)
        np.testing.assert_array_equal(out["e"][b], expert)
    assert not np.array_equal(out["e"][0], out["e"][1])


def test_reinit_bad_axes_raise():
    with pytest.raises(ValueError, match="overlap"):
        apply_rules(
            {"w": jnp.zeros((4, 4))}, [("w", reinit(zeros, in_axis=0, out_axis=0))], key=KEY
        )
    with pytest.raises(TypeError, match="in_axis"):
        reinit(zeros, in_axis="a")
    with pytest.raises(TypeError, match="initializer"):
        reinit(3)


def test_reinit_needs_a_key():
    with pytest.raises(ValueError, match="pass key="):
        apply_rules({"w": jnp.zeros((4, 4))}, [("w", normal())])


def test_scale_number_and_function():
    w = jax.random.normal(KEY, (4, 6))
    tree = {"a": {"w": w}, "b": {"w": w.astype(jnp.bfloat16)}}
    out = apply_rules(tree, [("a/w", scale(0.0625)), ("b/w", scale(lambda ctx: 1 / ctx.fan_in))])
    np.testing.assert_array_equal(out["a"]["w"], w * np.float32(0.0625))
    assert out["b"]["w"].dtype == jnp.bfloat16
    np.testing.assert_array_equal(
        out["b"]["w"], w.astype(jnp.bfloat16) * jnp.asarray(0.25, jnp.bfloat16)
    )


@pytest.mark.parametrize("bad", [float("nan"), math.inf, -math.inf, np.float32("nan")])
def test_scale_rejects_non_finite_numbers_when_built(bad):
    with pytest.raises(ValueError, match="finite"):
        scale(bad)


def test_scale_rejects_non_finite_function_results_when_applied():
    action = scale(lambda ctx: math.inf if ctx.path == "b" else 1.0)
    tree = {"a": jnp.ones(2), "b": jnp.ones(2)}
    with pytest.raises(ValueError, match=r"finite.*'b'"):
        apply_rules(tree, [("*", action)])


@pytest.mark.parametrize("bad", ["2", True, [1.0], np.ones(2)])
def test_scale_rejects_non_numbers(bad):
    with pytest.raises(TypeError):
        scale(bad)


def test_scale_integer_leaf_is_a_type_error():
    with pytest.raises(TypeError, match="floating"):
        apply_rules({"n": jnp.ones(3, jnp.int32)}, [("n", scale(2.0))])


def test_fill_number_array_and_function():
    tree = {"a": jnp.zeros((2, 3)), "b": jnp.zeros((2, 3)), "c": jnp.zeros(4, jnp.int32)}
    out = apply_rules(
        tree,
        [("a", fill(1.5)), ("b", fill(np.arange(3.0))), ("c", fill(lambda ctx: len(ctx.path)))],
    )
    np.testing.assert_array_equal(out["a"], np.full((2, 3), 1.5, np.float32))
    np.testing.assert_array_equal(out["b"], np.tile(np.arange(3.0, dtype=np.float32), (2, 1)))
    np.testing.assert_array_equal(out["c"], np.ones(4, np.int32))
    assert out["c"].dtype == jnp.int32


def test_fill_shape_mismatch_names_the_leaf():
    with pytest.raises(ValueError, match=r"shape \(3,\) does not broadcast.*'w' of shape \(2, 4\)"):
        apply_rules({"w": jnp.zeros((2, 4))}, [("w", fill(np.ones(3)))])


def test_at_static_and_function_index():
    h = 4
    bias = jnp.arange(4 * h, dtype=jnp.float32)
    forget = lambda ctx: (..., slice(ctx.shape[-1] // 4, ctx.shape[-1] // 2))
    out = apply_rules(
        {"a": bias, "b": bias}, [("a", at[..., h : 2 * h](fill(1.0))), ("b", at(forget, fill(1.0)))]
    )
    expected = np.asarray(bias).copy()
    expected[h : 2 * h] = 1.0
    np.testing.assert_array_equal(out["a"], expected)
    np.testing.assert_array_equal(out["b"], expected)


def test_at_with_reinit_uses_the_slice_shape():
    w = jnp.zeros((8, 32))
    out = apply_rules({"w": w}, [("w", at[:, 8:16](orthogonal()))], key=KEY)["w"]
    block = out[:, 8:16]
    np.testing.assert_allclose(block.T @ block, np.eye(8), atol=1e-5)
    np.testing.assert_array_equal(out[:, :8], 0.0)
    np.testing.assert_array_equal(out[:, 16:], 0.0)


def test_at_shape_change_inside_raises():
    bad = action(lambda key, leaf, ctx: leaf[:1])
    with pytest.raises(ValueError, match=r"'w'.*\(3,\) -> \(1,\)"):
        apply_rules({"w": jnp.zeros((2, 3))}, [("w", at[0](bad))])


def test_callable_action_gets_key_leaf_and_context():
    seen = []

    @action
    def perturb(key, leaf, ctx):
        seen.append(ctx)
        return leaf + jax.random.normal(key, leaf.shape, leaf.dtype)

    tree = {"params": {"layers_0": {"w": jnp.zeros((3, 5))}, "layers_1": {"w": jnp.zeros((3, 5))}}}
    out = apply_rules(tree, [("layers_1/w", perturb)], key=KEY, context={"d_model": 5})
    (ctx,) = seen
    assert isinstance(ctx, RuleContext)
    assert (ctx.path, ctx.shape, ctx.dtype) == ("params/layers_1/w", (3, 5), np.float32)
    assert (ctx.fan_in, ctx.fan_out, ctx.layer, ctx.num_layers) == (3, 5, 1, 2)
    assert ctx.d_model == 5
    assert ctx["d_model"] == 5
    assert not ctx.is_layer_slice
    with pytest.warns(DeprecationWarning, match="RuleContext.is_layer_slice"):
        assert ctx.stacked is False
    with pytest.raises(AttributeError, match="d_model"):
        ctx.nope
    assert float(jnp.std(out["params"]["layers_1"]["w"])) > 0.3
    np.testing.assert_array_equal(out["params"]["layers_0"]["w"], 0.0)


def test_to_action_classifies_by_type_not_parameter_names():
    assert isinstance(to_action(normal(0.02)), Reinit)
    assert isinstance(to_action(jax.nn.initializers.zeros), Reinit)
    assert isinstance(to_action(action(lambda key, leaf, ctx: leaf)), Call)
    with pytest.raises(TypeError, match="action must be"):
        to_action(3.0)
    # Any plain callable is an initializer (key, shape, dtype), whatever its names.
    tree = {"w": jnp.zeros((3, 4))}
    terse = lambda k, s, d: jax.random.normal(k, s, d)
    partial = functools.partial(jax.random.normal)
    want = apply_rules(tree, [("w", reinit(terse))], key=KEY)["w"]
    assert float(jnp.abs(want).sum()) > 0
    for init in (terse, partial):
        assert isinstance(to_action(init), Reinit)
        np.testing.assert_array_equal(apply_rules(tree, [("w", init)], key=KEY)["w"], want)


def test_an_impossible_initializer_signature_fails_when_the_rule_is_built():
    tree = {"params": {"w": jnp.zeros((3, 4))}}
    for bad in (lambda key, shape: 0, lambda: 0, lambda k, s, d, *, scale: 0):
        with pytest.raises(TypeError, match=r"rule 1 \('params/w'\).*\(key, shape, dtype\)"):
            explain_rules(tree, [("w", fill(0.0)), ("params/w", bad)])
    with pytest.raises(TypeError, match=r"\(key, leaf, ctx\)"):
        action(lambda key, leaf: leaf)
    with pytest.raises(TypeError, match="function"):
        action(3)


def test_a_plain_key_leaf_ctx_function_still_acts_with_a_warning():
    def double(key, leaf, ctx):
        return leaf * 2

    tree = {"w": jnp.ones(3)}
    with pytest.warns(DeprecationWarning, match=r"flaxinit.rules.action\(double\)") as caught:
        old = apply_rules(tree, [("w", double)])
    assert caught[0].filename == __file__
    new = apply_rules(tree, [("w", action(double))])
    np.testing.assert_array_equal(old["w"], new["w"])
    np.testing.assert_array_equal(new["w"], 2.0)
    with pytest.raises(TypeError, match="axis"):
        per_layer(fill(0.0), axis="x")


def test_reprs():
    assert repr(reinit(normal(0.02))) == "reinit(normal(stddev=0.02))"
    assert repr(reinit(zeros, name="he_normal")) == "reinit(he_normal)"
    assert (
        repr(reinit(zeros, in_axis=0, out_axis=(1, 2)))
        == "reinit(zeros, in_axis=0, out_axis=(1, 2))"
    )
    assert repr(reinit(lambda key, shape, dtype: None)) == "reinit(<lambda>)"
    assert repr(scale(0.0625)) == "scale(0.0625)"
    assert repr(scale(np.float32(0.5))) == "scale(0.5)"
    assert repr(fill(1.0)) == "fill(1.0)"
    assert repr(at[..., 8:16](fill(1.0))) == "at[..., 8:16](fill(1.0))"
    assert repr(at[0, ::2](scale(2.0))) == "at[0, ::2](scale(2.0))"
    assert repr(per_layer(fill(0.0))) == "per_layer(fill(0.0))"
    assert repr(per_layer(fill(0.0), axis=None)) == "per_layer(fill(0.0), axis=None)"

    def zero_last(key, leaf, ctx):
        return leaf

    assert repr(to_action(action(zero_last))) == "zero_last"


def test_at_out_of_range_or_partial_raises_naming_the_leaf():
    tree = {"b": jnp.zeros((64,))}
    for index, fragment in [
        ((Ellipsis, slice(64, 128)), "reaches outside"),
        (200, "index 200 is outside"),
        (slice(32, 96), "reaches outside"),
        (slice(10, 10), "selects nothing"),
    ]:
        with pytest.raises(ValueError, match=rf"'b' of shape \(64,\).*{fragment}"):
            apply_rules(tree, [("b", at(index, fill(1.0)))])
    out = apply_rules(tree, [("b", at[..., 16:32](fill(1.0)))])
    assert float(out["b"].sum()) == 16.0


def test_a_key_leaf_ctx_lambda_failing_as_an_initializer_says_to_wrap_it():
    from flaxinit.rules import apply_rules

    with pytest.raises(TypeError) as caught:
        apply_rules(
            {"w": jnp.ones((2, 2))},
            [("w", lambda k, x, c: jnp.zeros_like(x))],
            key=jax.random.key(0),
        )
    assert any("flaxinit.rules.action(...)" in note for note in caught.value.__notes__)
    # The catalogue's own initializers failing on a leaf get no such hint.
    with pytest.raises(ValueError, match="at least 2 dimensions") as caught:
        apply_rules({"b": jnp.ones(3)}, [("b", orthogonal())], key=jax.random.key(0))
    assert not any("rules.action" in note for note in getattr(caught.value, "__notes__", ()))


def test_an_initializer_wrapping_a_factory_is_an_initializer():
    from flaxinit.rules import apply_rules

    @functools.wraps(normal)  # copies the factory's marker and signature onto it
    def mine(key, shape, dtype=jnp.float32):
        return jnp.full(shape, 3.0, dtype)

    out = apply_rules({"w": jnp.ones((2, 2))}, [("w", mine)], key=jax.random.key(0))
    np.testing.assert_array_equal(out["w"], np.full((2, 2), 3.0, np.float32))
