"""Per-parameter gradient statistics of the loss on a batch."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp

from flaxinit.diagnostics import probe, records
from flaxinit.diagnostics.activations import l2_norm


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class GradientRecord:
    """The loss gradient ``g`` of one parameter leaf ``p``.

    Attributes:
      path: the leaf's path in the params tree, e.g. ``"Dense_3/kernel"``.
      index: position in the returned tuple. Leaves are ordered by when their module was
        first called, then by path.
      layer: the module path (``path`` without its last part).
      shape: the leaf's shape.
      grad_norm: ``||g||_2 = sqrt(sum(g**2))``, computed with ``g`` scaled by ``max|g|``
        so that tiny gradients do not underflow to 0.
      grad_mean_abs: ``mean(|g|)``.
      param_norm: ``||p||_2``.
      ratio: ``grad_norm / param_norm``, the relative size of a unit-learning-rate SGD
        step. IEEE division: ``inf`` for a zero parameter with a nonzero gradient, ``nan``
        when both are zero.
    """

    path: str = dataclasses.field(metadata={"static": True})
    index: int = dataclasses.field(metadata={"static": True})
    layer: str = dataclasses.field(metadata={"static": True})
    shape: tuple[int, ...] = dataclasses.field(metadata={"static": True})
    grad_norm: Any
    grad_mean_abs: Any
    param_norm: Any
    ratio: Any


def gradient_records(capture: probe.Capture) -> records.Packed:
    """The records of every floating parameter leaf of a capture with gradients, packed.

    Call inside a trace; :func:`~flaxinit.diagnostics.records.unpack` gives the
    :class:`GradientRecord` s.
    """
    params = jax.tree_util.tree_flatten_with_path(capture.params)[0]
    grads = jax.tree.leaves(capture.grads)
    leaves = [
        (probe.path_str(kp), p, g)
        for (kp, p), g in zip(params, grads, strict=True)
        if jnp.issubdtype(p.dtype, jnp.inexact)
    ]
    leaves.sort(key=lambda t: (probe.module_rank(t[0], capture.modules), probe.natural_key(t[0])))
    rows = []
    for i, (path, p, g) in enumerate(leaves):
        g = g.astype(jnp.float32)
        grad_norm, param_norm = l2_norm(g), l2_norm(p)
        static = {"path": path, "index": i, "layer": path.rpartition("/")[0], "shape": p.shape}
        numeric = {
            "grad_norm": grad_norm,
            "grad_mean_abs": jnp.mean(jnp.abs(g)),
            "param_norm": param_norm,
            "ratio": grad_norm / param_norm,
        }
        rows.append((static, numeric))
    return records.pack(GradientRecord, rows)


@jax.jit(static_argnums=0)
def _gradient_pass(spec, dynamic, x, labels):
    return gradient_records(probe.run(spec, dynamic, x, labels, gradients=True, infer=False))


def gradient_stats(
    model: Any,
    x: Any,
    labels: Any = None,
    *,
    variables: Any = None,
    loss_fn: Callable[[Any, Any], jax.Array] | None = None,
    call_kwargs: Mapping[str, Any] | None = None,
) -> tuple[GradientRecord, ...]:
    """Per parameter leaf: the L2 norm and mean ``|g|`` of the loss gradient, and ``||g|| / ||p||``.

    One ``jax.jit``-compiled forward and backward pass. The loss is
    ``loss_fn(outputs, labels)``. The default is softmax cross-entropy for integer labels
    and mean squared error otherwise, on the output that fits the labels (see
    :func:`~flaxinit.diagnostics.probe.predictions`). Needs ``labels`` or ``loss_fn``.
    The model and its arguments are as in :func:`~flaxinit.diagnostics.activation_stats`.

    Returns:
      A tuple of :class:`GradientRecord`, ordered by when each leaf's module first ran.

    Example:
      >>> from flaxinit.diagnostics import gradient_stats
      >>> from flaxinit.models import MLP
      >>> model = MLP(features=(8,))
      >>> x, y = jnp.ones((4, 3)), jnp.array([0, 1, 2, 3])
      >>> variables = model.init(jax.random.key(0), x)
      >>> [r.path for r in gradient_stats(model, x, y, variables=variables)]
      ['hidden_0/bias', 'hidden_0/kernel', 'head/bias', 'head/kernel']
    """
    spec, dynamic = probe.prepare(model, variables, loss_fn=loss_fn, call_kwargs=call_kwargs)
    if not probe.has_loss(probe.unwrap(spec), labels):
        raise ValueError("gradient_stats needs labels or a loss_fn")
    return records.unpack(_gradient_pass(spec, dynamic, x, labels))
