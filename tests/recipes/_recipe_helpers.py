"""Helpers for the recipe tests: scrambled zoo models, flat views, statistical checks.

Every test scrambles the model's parameters first (random values far from 0, 1 and
the recipes' stds), so exact targets (zeros, ones, forget biases) can fail, and
"untouched" means bitwise equal to the scrambled input.
"""

from __future__ import annotations

import math
import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from _helpers import sample_tolerance
from flax import nnx

from flaxinit.rules import apply_rules, explain_rules, layer_index, tree_paths

# XLA compiles a program of many threefry draws slowly (about 2x the cost with
# unsafe_rbg on this CPU); the recipes' formulas do not depend on the generator, so
# the statistical tests draw with unsafe_rbg. Stacked-vs-unrolled equality needs a
# generator whose vmapped fold_in equals the looped one (threefry, rbg; not
# unsafe_rbg): those tests use RBG and THREEFRY (jax's default).
KEY = jax.random.key(42, impl="unsafe_rbg")
RBG = jax.random.key(42, impl="rbg")
THREEFRY = jax.random.key(42)


def scramble(tree, seed: int = 7):
    """Every float leaf replaced by N(0.3, 0.7^2) draws (a Linen dict or an NNX module,
    concrete or abstract from ``jax.eval_shape``/``nnx.eval_shape``).

    numpy draws: no compilation, and the model's own initializers never run.
    """
    if isinstance(tree, nnx.Module):
        graphdef, state = nnx.split(tree)
        return nnx.merge(graphdef, scramble(state, seed))
    rng = np.random.default_rng(seed)

    def draw(x):
        if hasattr(x, "dtype") and jnp.issubdtype(x.dtype, jnp.floating):
            return jnp.asarray(0.3 + 0.7 * rng.standard_normal(x.shape), x.dtype)
        return x

    return jax.tree_util.tree_map(draw, tree)


def abstract_linen(model, *args):
    """A Linen model's variables, scrambled, without running its initializers."""
    return scramble(jax.eval_shape(model.init, jax.random.key(0), *args))


def abstract_nnx(make):
    """An NNX model from ``make()``, scrambled, without running its initializers."""
    return scramble(nnx.eval_shape(make))


def flat(tree) -> dict[str, np.ndarray]:
    """``path -> array`` for every float leaf, as the rules engine names them."""
    if isinstance(tree, nnx.Module):
        tree = nnx.state(tree)
    return {
        p: np.asarray(a)
        for p, a in tree_paths(tree)
        if np.issubdtype(np.dtype(a.dtype), np.floating)
    }


def run(tree, rules, key=KEY, **kwargs):
    """``apply_rules`` with the test key; returns (before, after, result)."""
    out = apply_rules(tree, rules, key=key, **kwargs)
    return flat(tree), flat(out), out


def assert_untouched(tree, rules, before, after, **kwargs):
    """Leaves no rule hits are bitwise the input's; at least one leaf is touched."""
    report = explain_rules(tree, rules, **kwargs)
    untouched = set(report.untouched)
    assert len(untouched) < len(before)
    for path in untouched:
        if path in before:
            np.testing.assert_array_equal(after[path], before[path], err_msg=path)
    return untouched


def select(view: dict[str, np.ndarray], pattern: str) -> dict[str, np.ndarray]:
    """The entries whose path ends with ``pattern`` (a regex over the path's tail)."""
    rx = re.compile(rf"(?:.*/)?{pattern}")
    hits = {p: a for p, a in view.items() if rx.fullmatch(p)}
    assert hits, f"no path matches {pattern!r}: {sorted(view)}"
    return hits


def per_layer(view: dict[str, np.ndarray], pattern: str, scanned: bool) -> dict[int, np.ndarray]:
    """``layer -> array`` for a block parameter, from an unrolled or a stacked model."""
    out: dict[int, np.ndarray] = {}
    for path, a in select(view, pattern).items():
        parsed = layer_index(path)
        if parsed is not None:
            assert parsed[0] not in out
            out[parsed[0]] = a
        else:
            assert scanned, f"{path} has no layer index in an unrolled model"
            for i in range(a.shape[0]):
                out[i] = a[i]
    return dict(sorted(out.items()))


def pooled(arrays) -> np.ndarray:
    return np.concatenate([np.ravel(a) for a in arrays])


def assert_std(x, std: float, mean: float = 0.0, sigmas: float = 6.0):
    """Sample std within ``sigmas`` standard errors of ``std``, mean within ``sigmas``
    standard errors of ``mean``."""
    x = np.asarray(x, np.float64).ravel()
    n = x.size
    assert n >= 30, n
    tol = sample_tolerance(n, sigmas)
    assert abs(x.std() / std - 1) < tol, f"std {x.std():.6g} vs {std:.6g} (n={n}, tol {tol:.3g})"
    assert abs(x.mean() - mean) < sigmas * std / math.sqrt(n), f"mean {x.mean():.6g} vs {mean}"


def assert_uniform(x, bound: float, sigmas: float = 6.0):
    """U(-bound, bound): every sample inside, std ``bound / sqrt(3)``."""
    x = np.asarray(x, np.float64).ravel()
    assert np.all(np.abs(x) <= bound * (1 + 1e-6)), f"max {np.abs(x).max()} > {bound}"
    # The uniform's std has a smaller standard error than the normal's; the normal
    # tolerance is conservative.
    assert_std(x, bound / math.sqrt(3), sigmas=sigmas)


def unbox(tree):
    return nn.meta.unbox(tree)
