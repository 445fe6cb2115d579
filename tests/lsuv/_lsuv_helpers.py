"""Shared by the LSUV tests: batches, the independent variance measurements and two MLPs."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

import flaxinit as fi

KEY = jax.random.key(0)


TOL = 0.1


def batch(shape, key=1, scale=3.0, shift=1.0):
    return jax.random.normal(jax.random.key(key), shape) * scale + shift


def linen_output_vars(model, variables, x, types=(nn.Dense, nn.DenseGeneral, nn.Conv), **kwargs):
    """Variance of every selected layer's output, measured with capture_intermediates."""
    _, state = model.apply(
        variables,
        x,
        capture_intermediates=lambda m, name: isinstance(m, types) and name == "__call__",
        mutable=["intermediates"],
        **kwargs,
    )
    out = {}
    for path, value in jax.tree_util.tree_flatten_with_path(state["intermediates"])[0]:
        keys = [getattr(k, "key", getattr(k, "idx", None)) for k in path]
        name = "/".join(
            str(k)
            for k in keys
            if k not in ("__call__", 0) or (isinstance(k, str) and k != "__call__")
        )
        out[name] = np.asarray(value)
    return out


def variance_over_blob(y, stacked=False):
    y = np.asarray(y, dtype=np.float64)
    if stacked:
        return y.reshape(y.shape[0], -1).var(axis=1)
    return y.var()


class LinenMLP(nn.Module):
    depth: int
    width: int = 64
    activation: str = "relu"

    @nn.compact
    def __call__(self, x):
        act = {"relu": nn.relu, "tanh": jnp.tanh}[self.activation]
        for _ in range(self.depth):
            x = act(nn.Dense(self.width, bias_init=fi.constant(0.1))(x))
        return nn.Dense(10)(x)


class NNXMLP(nnx.Module):
    def __init__(self, depth, width=64, activation="relu", rngs=None):
        self.act = {"relu": nnx.relu, "tanh": jnp.tanh}[activation]
        self.layers = nnx.List(
            [nnx.Linear(width, width, bias_init=fi.constant(0.1), rngs=rngs) for _ in range(depth)]
        )
        self.head = nnx.Linear(width, 10, rngs=rngs)

    def __call__(self, x):
        for layer in self.layers:
            x = self.act(layer(x))
        return self.head(x)


def nnx_output_vars(model, x, **kwargs):
    _, inter = nnx.capture(model, nnx.Intermediate, method_outputs=nnx.Intermediate)(x, **kwargs)
    return {
        "/".join(map(str, path[:-1])): v.get_value()[0]
        for path, v in nnx.to_flat_state(inter)
        if len(path) > 1
    }
