"""merge_pretrained: transfer learning with a new head."""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from flaxinit.rules import MergeReport, merge_pretrained
from flaxinit.tables import RecordTable


class Classifier(nn.Module):
    classes: int
    adapter: bool = False

    @nn.compact
    def __call__(self, x):
        boxed = nn.with_logical_partitioning(nn.initializers.lecun_normal(), ("embed", "mlp"))
        x = nn.Dense(4, kernel_init=boxed, name="body")(x)
        if self.adapter:
            x = nn.Dense(4, name="adapter")(x)
        return nn.Dense(self.classes, name="head")(x)


X = jnp.ones((1, 3))


@pytest.fixture(scope="module")
def pretrained():
    return Classifier(10).init(jax.random.key(0), X)


@pytest.fixture(scope="module")
def fresh():
    return Classifier(5, adapter=True).init(jax.random.key(1), X)


def test_new_head_and_new_layer(pretrained, fresh):
    merged, report = merge_pretrained(fresh, pretrained, reinit=["/params/head/*"])
    m, p, f = merged["params"], pretrained["params"], fresh["params"]
    body = m["body"]["kernel"]
    assert type(body) is nn.LogicallyPartitioned
    assert body.names == ("embed", "mlp")
    np.testing.assert_array_equal(body.value, p["body"]["kernel"].value)
    np.testing.assert_array_equal(m["body"]["bias"], p["body"]["bias"])
    np.testing.assert_array_equal(m["head"]["kernel"], f["head"]["kernel"])
    np.testing.assert_array_equal(m["adapter"]["kernel"], f["adapter"]["kernel"])
    assert isinstance(report, MergeReport)
    assert report.loaded == ("params/body/bias", "params/body/kernel")
    assert report.reinitialized == ("params/head/bias", "params/head/kernel")
    assert report.fresh == ("params/adapter/bias", "params/adapter/kernel")
    assert report.unused == ()
    assert len(report) == 6
    rec = {r.path: r for r in report}["params/head/kernel"]
    assert (rec.source, rec.shape, rec.pretrained_shape) == ("reinit", (4, 5), (4, 10))
    text = str(report)
    assert text.splitlines()[0].split() == ["path", "source", "shape", "pretrained", "shape"]
    assert "params/head/kernel" in text
    assert "reinit" in text
    # A frozen record table: the one table renderer, no mutation after the fact.
    assert isinstance(report, RecordTable)
    with pytest.raises(dataclasses.FrozenInstanceError):
        report.unused = ("x",)
    empty = MergeReport((), ("params/old",))
    assert str(empty).splitlines()[-1] == "unused pretrained leaves: params/old"


def test_shape_mismatch_raises_naming_paths(pretrained, fresh):
    with pytest.raises(ValueError, match="shape mismatch") as info:
        merge_pretrained(fresh, pretrained)
    msg = str(info.value)
    assert "'params/head/kernel': fresh (4, 5) vs pretrained (4, 10)" in msg
    assert "'params/head/bias': fresh (5,) vs pretrained (10,)" in msg
    assert "reinit=" in msg


def test_many_mismatches_show_the_first_five_and_a_count():
    # A width change touches every layer: the message must stay readable.
    def tree(width):
        return {
            "params": {f"layer_{i:02d}": {"kernel": jnp.zeros((width, width))} for i in range(48)}
        }

    with pytest.raises(ValueError, match="shape mismatch") as info:
        merge_pretrained(tree(4), tree(8))
    msg = str(info.value)
    assert msg.count("fresh (4, 4) vs pretrained (8, 8)") == 5, msg
    for i in range(5):
        assert f"'params/layer_{i:02d}/kernel'" in msg
    assert "'params/layer_05/kernel'" not in msg
    assert "and 43 more" in msg
    assert "48 leaves" in msg
    assert "reinit=" in msg
    assert len(msg) < 800, len(msg)


def test_reinit_keeps_fresh_even_when_shapes_agree_and_unused_is_reported(pretrained):
    same = Classifier(10).init(jax.random.key(2), X)
    merged, report = merge_pretrained(same, pretrained, reinit="body/bias")
    np.testing.assert_array_equal(merged["params"]["body"]["bias"], same["params"]["body"]["bias"])
    np.testing.assert_array_equal(
        merged["params"]["head"]["kernel"], pretrained["params"]["head"]["kernel"]
    )
    assert report.reinitialized == ("params/body/bias",)
    smaller = {"params": {"body": same["params"]["body"]}}
    _, report = merge_pretrained(smaller, pretrained)
    assert report.unused == ("params/head/bias", "params/head/kernel")


def test_dtype_cast_is_recorded(pretrained):
    fresh16 = jax.tree.map(lambda x: x.astype(jnp.bfloat16), nn.unbox(pretrained))
    merged, report = merge_pretrained(fresh16, nn.unbox(pretrained))
    assert merged["params"]["body"]["kernel"].dtype == jnp.bfloat16
    np.testing.assert_array_equal(
        merged["params"]["body"]["kernel"],
        pretrained["params"]["body"]["kernel"].value.astype(jnp.bfloat16),
    )
    assert {r.cast_from for r in report} == {np.dtype(np.float32)}
    assert "cast from float32" in str(report)


def test_errors(pretrained, fresh):
    with pytest.raises(ValueError, match=r"share no path.*'params'"):
        merge_pretrained(fresh, pretrained["params"])
    with pytest.raises(ValueError, match="reinit pattern 0 pattern 'haed/\\*'"):
        merge_pretrained(fresh, pretrained, reinit=["haed/*"])
    with pytest.raises(ValueError, match="shape mismatch"):
        merge_pretrained(fresh, pretrained, reinit=["haed/*"], strict=False)


def test_nnx_module_from_a_pure_dict_checkpoint():
    class Net(nnx.Module):
        def __init__(self, classes, rngs):
            self.body = nnx.Linear(3, 4, rngs=rngs)
            self.head = nnx.Linear(4, classes, rngs=rngs)

    old, new = Net(10, nnx.Rngs(0)), Net(5, nnx.Rngs(1))
    checkpoint = nnx.to_pure_dict(nnx.state(old))
    merged, report = merge_pretrained(new, checkpoint, reinit=["head/*"])
    assert type(merged) is Net
    assert type(merged.body.kernel) is nnx.Param
    np.testing.assert_array_equal(merged.body.kernel[...], old.body.kernel[...])
    np.testing.assert_array_equal(merged.head.kernel[...], new.head.kernel[...])
    assert report.loaded == ("body/bias", "body/kernel")
