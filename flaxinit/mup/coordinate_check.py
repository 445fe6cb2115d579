"""The coordinate check: does each layer's activation size stay flat as width grows?

microsoft/mup's test of a muP implementation (Yang et al. 2022, arXiv:2203.03466,
App. D.1): train a few steps at several widths on one fixed batch, record the mean
absolute value of every layer's output at each step, and plot it against width on
log-log axes. Under muP the lines are flat at every step; under the standard
parametrization with Adam they grow with width from the first update on (logits
roughly in proportion to width).

Each width runs as one jitted program: the forward and backward passes of every
step, with each layer's output taken through the diagnostics' inspection layer
(:mod:`flaxinit.diagnostics.probe`), in a ``lax.scan`` over steps.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import pathlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from flaxinit.diagnostics import probe
from flaxinit.mup import parametrization as _mup
from flaxinit.rules import apply_rules
from flaxinit.tables import format_table

__all__ = ["CoordCheck", "coord_check"]

PARAMETRIZATIONS = ("mup", "sp")


@dataclasses.dataclass(frozen=True)
class CoordCheck:
    """A coordinate check's data.

    Attributes:
      parametrization: ``"mup"`` or ``"sp"``.
      widths: the widths, ascending.
      sites: the layer outputs recorded, by module path, in execution order.
      values: mean absolute output, shape ``(widths, steps + 1, sites)``; step 0 is
        the init, step ``t`` the forward pass after ``t`` updates.
      changes: mean absolute change of the output since step 0, same shape.
      slopes: the least-squares slope of ``log(value)`` against ``log(width)``,
        shape ``(steps + 1, sites)``; NaN where a width's value is exactly 0 (a
        zero-initialized readout at step 0), which the verdict skips.
      tolerance: the largest slope (in absolute value) called flat.
      may_shrink: the sites allowed to shrink with width: the network output and the
        attention queries (which carry muP's moved 1/d_head), as microsoft/mup's coord
        check allows for the output and the attention logits.
    """

    parametrization: str
    widths: tuple[int, ...]
    sites: tuple[str, ...]
    values: np.ndarray
    changes: np.ndarray
    slopes: np.ndarray
    tolerance: float
    may_shrink: tuple[str, ...] = ()

    @property
    def steps(self) -> int:
        return self.values.shape[1] - 1

    @property
    def growing(self) -> tuple[str, ...]:
        """The sites whose size grows with width (slope above the tolerance) at some step."""
        grows = np.nan_to_num(self.slopes, nan=0.0, posinf=np.inf) > self.tolerance
        return tuple(s for i, s in enumerate(self.sites) if grows[:, i].any())

    @property
    def shrinking(self) -> tuple[str, ...]:
        """The sites whose size shrinks with width at some step (allowed by muP for
        the network output and attention logits at step 1, see microsoft/mup)."""
        shrinks = np.nan_to_num(self.slopes, nan=0.0, neginf=-np.inf) < -self.tolerance
        return tuple(s for i, s in enumerate(self.sites) if shrinks[:, i].any())

    @property
    def diverged(self) -> tuple[str, ...]:
        """The sites with a non-finite value at some width and step."""
        bad = ~np.isfinite(self.values).all(axis=(0, 1))
        return tuple(s for i, s in enumerate(self.sites) if bad[i])

    @property
    def flat(self) -> bool:
        """No site grows with width, none diverges, and none shrinks but the output and
        the attention queries."""
        unexpected = set(self.shrinking) - set(self.may_shrink)
        return not self.growing and not self.diverged and not unexpected

    @property
    def verdict(self) -> str:
        if self.flat:
            return (
                f"flat: no layer's activation size grows with width over {self.steps} steps "
                f"(every slope <= {self.tolerance:g})"
            )
        parts = []
        if self.diverged:
            parts.append("diverged (non-finite values): " + ", ".join(self.diverged[:6]))
        if self.growing:
            worst = np.nanmax(self.slopes, axis=0)
            named = ", ".join(
                f"{s} (slope {worst[self.sites.index(s)]:.2f})"
                for s in self.growing[:6]
                if s not in self.diverged
            )
            more = f" and {len(self.growing) - 6} more" if len(self.growing) > 6 else ""
            if named:
                parts.append(f"grows with width: {named}{more}")
        unexpected = [s for s in self.shrinking if s not in self.may_shrink]
        if unexpected:
            least = np.nanmin(self.slopes, axis=0)
            parts.append(
                "shrinks with width: "
                + ", ".join(f"{s} (slope {least[self.sites.index(s)]:.2f})" for s in unexpected[:6])
            )
        return "; ".join(parts)

    def __str__(self) -> str:
        steps = range(self.steps + 1)
        rows = [
            [
                site,
                *(
                    "-" if math.isnan(self.slopes[t, i]) else f"{self.slopes[t, i]:+.2f}"
                    for t in steps
                ),
            ]
            for i, site in enumerate(self.sites)
        ]
        head = (
            f"coordinate check ({self.parametrization}), widths {list(self.widths)}: "
            "slope of log mean|x| against log width"
        )
        table = format_table(["layer", *(f"t={t}" for t in steps)], rows)
        return f"{head}\n{table}\n{self.verdict}"

    def plot(self, path: str | pathlib.Path) -> pathlib.Path:
        """microsoft/mup's coord-check figure: one panel per step, mean |x| against
        width on log-log axes, one line per layer. The format follows the suffix."""
        from flaxinit.diagnostics.plots import new_figure, save_figure

        n = self.steps + 1
        fig = new_figure(3.0 * n, 3.2)
        axes = fig.subplots(1, n, sharey=True, squeeze=False)[0]
        for t, ax in enumerate(axes):
            for i, site in enumerate(self.sites):
                v = self.values[:, t, i]
                v = np.where(v > 0, v, np.nan)
                ax.plot(self.widths, v, marker="o", markersize=3, label=site)
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_title(f"{self.parametrization}, t={t}")
            ax.set_xlabel("width")
        axes[0].set_ylabel("mean |activation|")
        if len(self.sites) <= 12:
            axes[-1].legend(fontsize=6, loc="best")
        return save_figure(fig, path)


def _slopes(widths: Sequence[int], values: np.ndarray) -> np.ndarray:
    """Least-squares slope of log value against log width per (step, site).

    NaN where every width's value is 0 (nothing to fit, e.g. a zero readout at step 0);
    +inf where a value is not finite (diverged) or where the value is 0 at the narrowest
    width only (it appears as width grows), -inf the other way round.
    """
    logw = np.log(np.asarray(widths, np.float64))
    logw = logw - logw.mean()
    out = np.empty(values.shape[1:], np.float64)
    for index in np.ndindex(*values.shape[1:]):
        v = values[(slice(None), *index)].astype(np.float64)
        if not np.isfinite(v).all():
            out[index] = np.inf
        elif (v <= 0).all():
            out[index] = np.nan
        elif (v <= 0).any():
            out[index] = np.inf if v[-1] > v[0] else -np.inf
        else:
            logv = np.log(v)
            out[index] = float(np.dot(logw, logv - logv.mean()) / np.sum(logw**2))
    return out


def _variables(model: Any, x: Any, key: Any, call_kwargs: Mapping[str, Any]) -> Any:
    if isinstance(model, nn.Module):
        # One compiled init instead of one small program per initializer and shape.
        return jax.jit(lambda key, x: model.init(key, x, **call_kwargs))(key, x)
    if isinstance(model, nnx.Module):
        return nnx.state(model, nnx.Param)
    raise TypeError(
        f"coord_check: make_model(width) must return a flax.linen or flax.nnx Module, "
        f"got {type(model).__name__}"
    )


def _params(model: Any, variables: Any) -> Any:
    return variables["params"] if isinstance(model, nn.Module) else variables


def _abstract(make_model: Callable, width: int, x: Any, key: Any, call_kwargs: Mapping) -> Any:
    """The variables of ``make_model(width)``, shapes only."""
    model = make_model(width)
    if isinstance(model, nn.Module):
        return jax.eval_shape(lambda: model.init(key, x, **call_kwargs))
    return nnx.state(nnx.eval_shape(lambda: make_model(width)), nnx.Param)


def _run_width(
    model: Any,
    variables: Any,
    tx: optax.GradientTransformation,
    x: Any,
    labels: Any,
    steps: int,
    loss_fn: Any,
    call_kwargs: Mapping[str, Any],
) -> tuple[tuple[str, ...], np.ndarray, np.ndarray]:
    if isinstance(model, nn.Module):
        spec, dynamic = probe.prepare(model, variables, loss_fn=loss_fn, call_kwargs=call_kwargs)
    else:
        nnx.update(model, variables)
        spec, dynamic = probe.prepare(model, loss_fn=loss_fn, call_kwargs=call_kwargs)
    framework = probe.unwrap(spec).framework
    sites: list[str] = []

    def with_params(dynamic, params):
        if framework == "linen":
            return {**dynamic, "params": params}
        return (params, dynamic[1])

    def program(dynamic, x, labels):
        params = probe.params_of(probe.unwrap(spec), dynamic)
        opt_state = tx.init(params)
        # Layer outputs and parameter gradients only: no nonlinearity to read from the jaxpr.
        first = probe.run(spec, dynamic, x, labels, gradients=False, infer=False)
        sites[:] = [s.path for s in first.sites]
        start = first.outputs

        def step(carry, _):
            params, opt_state = carry
            capture = probe.run(
                spec, with_params(dynamic, params), x, labels, gradients=True, infer=False
            )
            size = jnp.stack([jnp.mean(jnp.abs(o.astype(jnp.float32))) for o in capture.outputs])
            change = jnp.stack(
                [
                    jnp.mean(jnp.abs(o.astype(jnp.float32) - s.astype(jnp.float32)))
                    for o, s in zip(capture.outputs, start, strict=True)
                ]
            )
            updates, opt_state = tx.update(capture.grads, opt_state, params)
            return (optax.apply_updates(params, updates), opt_state), (size, change)

        _, (sizes, changes) = jax.lax.scan(step, (params, opt_state), None, length=steps + 1)
        return sizes, changes

    sizes, changes = jax.jit(program)(dynamic, x, labels)
    return tuple(sites), np.asarray(sizes), np.asarray(changes)


def coord_check(
    make_model: Callable[[int], Any],
    widths: Sequence[int],
    batch: tuple[Any, Any],
    *,
    optimizer: str = "adam",
    learning_rate: float = 1e-2,
    steps: int = 5,
    loss_fn: Callable[[Any, Any], jax.Array] | None = None,
    parametrization: str = "mup",
    base_width: int | None = None,
    structure: bool = False,
    readout: str = "zero",
    call_kwargs: Mapping[str, Any] | None = None,
    key: Any = None,
    tolerance: float = 0.2,
) -> CoordCheck:
    """Trains ``make_model(width)`` for a few steps at each width and records how big
    each layer's output is (microsoft/mup's coordinate check).

    With ``parametrization="mup"`` each width's init gets :func:`rules` and its
    optimizer :func:`scale_updates`, relative to ``make_model(base_width)`` (default:
    the smallest width); ``"sp"`` trains the model as it is, for comparison.

    Args:
      make_model: ``width -> model``, a Linen module or an NNX module (built with
        its own ``rngs``).
      widths: at least 3 distinct widths.
      batch: ``(inputs, labels)``, one fixed batch used at every step.
      optimizer: ``"adam"`` or ``"sgd"`` (optax's, with muP's multipliers for it).
      learning_rate: the base learning rate.
      steps: updates to take (the check records steps 0..steps).
      loss_fn: ``(outputs, labels) -> scalar``; default softmax cross-entropy for
        integer labels, else squared error (see
        :func:`flaxinit.diagnostics.default_loss`).
      parametrization: ``"mup"`` or ``"sp"``.
      base_width: the width muP is relative to (default ``min(widths)``).
      structure: read each width's :func:`flaxinit.model_structure` (needed for
        Einsum layouts and attention's ``1/d_head``).
      readout: muP's readout init, ``"zero"`` or ``"scaled"``.
      call_kwargs: extra keyword arguments of the model's call.
      key: a ``jax.random.key`` for Linen inits and the rules (default key 0).
      tolerance: the largest absolute slope called flat.

    Returns:
      :class:`CoordCheck`: values, slopes, a verdict, ``.plot(path)``.

    Example:
      >>> import flax.linen as nn
      >>> def mlp(width):
      ...     layers = [nn.Dense(width), nn.relu, nn.Dense(width), nn.relu, nn.Dense(4)]
      ...     return nn.Sequential(layers)
      >>> x = jax.random.normal(jax.random.key(0), (32, 8))
      >>> y = jnp.arange(32) % 4
      >>> check = coord_check(mlp, [64, 128, 256], (x, y), steps=2)
      >>> check.flat  # the same with parametrization="sp" is False (the muP guide plots both)
      True
    """
    if parametrization not in PARAMETRIZATIONS:
        raise ValueError(
            f"coord_check: parametrization must be 'mup' or 'sp', got {parametrization!r}"
        )
    if optimizer not in _mup.OPTIMIZERS:
        raise ValueError(f"coord_check: optimizer must be 'adam' or 'sgd', got {optimizer!r}")
    widths = tuple(widths)
    if len(set(widths)) < 3 or any(
        isinstance(w, bool) or not isinstance(w, numbers.Integral) or w < 1 for w in widths
    ):
        raise ValueError(f"coord_check: widths must be >= 3 distinct positive ints, got {widths}")
    if isinstance(steps, bool) or not isinstance(steps, numbers.Integral) or steps < 1:
        raise ValueError(f"coord_check: steps must be an int >= 1, got steps={steps!r}")
    if not isinstance(batch, (tuple, list)) or len(batch) != 2:
        raise TypeError("coord_check: batch must be an (inputs, labels) pair")
    widths = tuple(sorted(int(w) for w in widths))
    base_width = widths[0] if base_width is None else int(base_width)
    key = jax.random.key(0) if key is None else key
    call_kwargs = dict(call_kwargs or {})
    x, labels = batch
    base_model = make_model(base_width) if parametrization == "mup" else None
    base = None if base_model is None else _variables(base_model, x, key, call_kwargs)
    # At the base width itself, a third width says which axes grow (microsoft/mup's delta).
    other = next(w for w in widths if w != base_width)
    delta = (
        None
        if base_model is None
        else _params(make_model(other), _abstract(make_model, other, x, key, call_kwargs))
    )
    make_tx = optax.adam if optimizer == "adam" else optax.sgd
    results = []
    queries: set[str] = set()
    for width in widths:
        model = make_model(width)
        variables = _variables(model, x, key, call_kwargs)
        tx = make_tx(learning_rate)
        if parametrization == "mup":
            s = None
            if structure:
                from flaxinit.structure import model_structure

                s = (
                    model_structure(model, x, variables=variables, **call_kwargs)
                    if isinstance(model, nn.Module)
                    else model_structure(model, x, **call_kwargs)
                )
                queries |= {
                    leaf.path.removeprefix("params/").rpartition("/")[0]
                    for leaf in s.values()
                    if "attention_query" in leaf.roles
                }
            params, base_params = _params(model, variables), _params(model, base)
            kwargs = {"structure": s, "optimizer": optimizer}
            if width == base_width:
                kwargs["delta"] = delta
            rules = _mup.rules(params, base_params, readout=readout, **kwargs)
            new = apply_rules(params, rules, key=jax.random.fold_in(key, 1), structure=s)
            variables = {**variables, "params": new} if isinstance(model, nn.Module) else new
            tx = optax.chain(tx, _mup.scale_updates(params, base_params, **kwargs))
        results.append(_run_width(model, variables, tx, x, labels, steps, loss_fn, call_kwargs))
    sites = results[0][0]
    for width, (s, _, _) in zip(widths, results, strict=True):
        if s != sites:
            raise ValueError(
                f"coord_check: the model at width {width} records other layers ({len(s)}) "
                f"than at width {widths[0]} ({len(sites)}): make_model must change widths only"
            )
    values = np.stack([r[1] for r in results])
    changes = np.stack([r[2] for r in results])
    queries |= {site for site in sites if _mup._QUERY_NAMES.search(site.lower())}
    return CoordCheck(
        parametrization,
        widths,
        sites,
        values,
        changes,
        _slopes(widths, values),
        float(tolerance),
        may_shrink=tuple(s for i, s in enumerate(sites) if i == len(sites) - 1 or s in queries),
    )
