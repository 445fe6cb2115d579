"""Per-layer activation statistics: the forward signal, and the backward one given a loss."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp

from flaxinit.diagnostics import probe, records

DEFAULT_SATURATION_LEVEL = 0.99


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class ActivationRecord:
    """Statistics of one layer output (a *site*, see :mod:`flaxinit.diagnostics.probe`).

    The numbers are Python floats. Inside a user's ``jax.jit`` they are 0-d arrays: the
    record is a pytree whose static fields are the path, kind and names.

    Attributes:
      path: the module path, e.g. ``"Dense_3"`` (Linen) or ``"layers/3"`` (NNX).
      index: position in execution order among all sites (0-based).
      depth: the number of linear layers run so far, this one included (1-based). An
        activation has the depth of the linear layer it follows.
      kind: ``"linear"`` (a pre-activation) or ``"activation"``.
      module: the layer's class name.
      activation: the nonlinearity that ``dead_fraction`` and ``saturated_fraction``
        refer to. For an activation site this is its own function. For a linear site it
        is applied to this output, or to the output of the norm layer that takes it (see
        ``normalized_by``), and comes from, in this order: nothing when an
        :class:`~flaxinit.diagnostics.Activation` layer takes the output (that layer's
        own record has it); the declared ``activation=`` (every linear layer but the
        last); the nonlinearity the model's jaxpr applies to it
        (:mod:`flaxinit.diagnostics.inferred`). ``None`` when none of these gives one.
      activation_source: where ``activation`` came from: ``"layer"`` (an activation
        site), ``"declared"``, ``"inferred"``, or ``None`` without an activation.
      activated_std: for a linear site with an ``activation``, the std of that
        nonlinearity's output (what an activation site's own ``std`` is); else ``None``.
      activated_zero_fraction: likewise, the fraction of exact zeros of that output.
      shape: the output's shape.
      mean: ``mean(y)`` over every element (examples, positions, features).
      var: ``mean((y - mean)**2)``, as ``std**2``: below std ~1e-19 it underflows to 0 in
        float32, while ``std`` does not.
      std: ``sqrt(mean((y - mean)**2))``, computed with ``y - mean`` scaled by its
        largest magnitude, so a vanished signal of 1e-30 reads 1e-30, not 0.
      zero_fraction: ``mean(y == 0)``: exact zeros of the output itself.
      dead_fraction: for a rectifier (relu, relu6), the fraction of units (last axis) that
        are 0 for every example and position in the batch. A unit like that gets no
        gradient. ``None`` for other nonlinearities.
      saturated_fraction: for a bounded nonlinearity with range ``(lo, hi)``, the fraction
        of outputs with ``|a - c| > level * h``, where ``c = (lo + hi) / 2``,
        ``h = (hi - lo) / 2`` and ``level`` is ``saturation_level``. For tanh at 0.99 that
        is ``|tanh| > 0.99``, where the slope is below 0.02. ``None`` otherwise.
      grad_rms: ``sqrt(mean(g**2))`` with ``g = dLoss/dy`` (scaled like ``std``): the
        backward signal that reaches this output. ``None`` without a loss.
      embedding: the layer is an embedding (``nn.Embed``, ``nnx.Embed`` or a subclass):
        its output is its table's scale, so depth comparisons leave it out.
      normalized_by: for a linear layer whose output itself goes into a norm layer
        (``Dense -> LayerNorm -> relu``), that norm's path: the norm's output is the
        pre-activation, so a declared ``activation=`` is applied to it for
        ``dead_fraction`` and ``saturated_fraction``. ``mean``, ``var`` and ``std`` stay
        those of the layer's own output. ``None`` otherwise. See
        :mod:`flaxinit.diagnostics.probe`.
    """

    path: str = dataclasses.field(metadata={"static": True})
    index: int = dataclasses.field(metadata={"static": True})
    depth: int = dataclasses.field(metadata={"static": True})
    kind: str = dataclasses.field(metadata={"static": True})
    module: str = dataclasses.field(metadata={"static": True})
    activation: str | None = dataclasses.field(metadata={"static": True})
    shape: tuple[int, ...] = dataclasses.field(metadata={"static": True})
    mean: Any
    var: Any
    std: Any
    zero_fraction: Any
    dead_fraction: Any
    saturated_fraction: Any
    grad_rms: Any
    embedding: bool = dataclasses.field(default=False, metadata={"static": True})
    normalized_by: str | None = dataclasses.field(default=None, metadata={"static": True})
    activation_source: str | None = dataclasses.field(default=None, metadata={"static": True})
    activated_std: Any = None
    activated_zero_fraction: Any = None


def l2_norm(x: jax.Array) -> jax.Array:
    """``sqrt(sum(x**2))``, scaled by ``max|x|`` first so that tiny values do not underflow.

    In float32, ``x**2`` is 0 below ~1e-23: an unscaled sum would call a vanished
    signal of 1e-25 exactly 0.

    Example:
      >>> from flaxinit.diagnostics.activations import l2_norm
      >>> print(f"{float(l2_norm(jnp.array([3e-30, 4e-30]))):.3g}")
      5e-30
    """
    x = x.astype(jnp.float32)
    scale = jnp.max(jnp.abs(x))
    safe = jnp.where(scale > 0, scale, 1.0)
    return scale * jnp.sqrt(jnp.sum(jnp.square(x / safe)))


def _std(y: jax.Array, mean: jax.Array) -> jax.Array:
    """``sqrt(mean((y - mean)**2))`` without underflow (see :func:`l2_norm`)."""
    return l2_norm(y - mean) / jnp.sqrt(jnp.float32(y.size))


def unit_fractions(
    a: jax.Array, nl: probe.Nonlinearity | None, level: float
) -> tuple[jax.Array | None, jax.Array | None]:
    """``(dead_fraction, saturated_fraction)`` of activations ``a`` for nonlinearity ``nl``.

    Example:
      >>> from flaxinit.diagnostics.activations import unit_fractions
      >>> from flaxinit.diagnostics import nonlinearity
      >>> a = jnp.array([[0.0, 1.0], [0.0, 2.0]])
      >>> dead, sat = unit_fractions(a, nonlinearity("relu"), 0.99)
      >>> float(dead), sat
      (0.5, None)
    """
    if nl is None or nl.family is None:
        return None, None
    if nl.family == "rectifier":
        units = a.reshape(-1, a.shape[-1]) if a.ndim else a.reshape(1, 1)
        return jnp.mean(jnp.all(units == 0, axis=0)), None
    lo, hi = nl.bounds
    c, h = (lo + hi) / 2, (hi - lo) / 2
    return None, jnp.mean(jnp.abs(a - c) > level * h)


def site_row(
    site: probe.Site,
    index: int,
    depth: int,
    y: jax.Array,
    delta: jax.Array | None,
    declared: probe.Nonlinearity | None,
    level: float,
    normed: jax.Array | None = None,
    source: str | None = None,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The static and numeric fields of the :class:`ActivationRecord` of output ``y``.

    ``delta`` is dLoss/dy, or ``None``. ``normed`` is the output of the norm layer that
    takes ``y``, the pre-activation the nonlinearity ``declared`` (of a linear site,
    whichever its ``source``) is applied to, or ``None``.
    """
    y = y.astype(jnp.float32)
    mean = jnp.mean(y)
    std = _std(y, mean)
    nl = site.nonlinearity if site.kind == "activation" else declared
    if site.kind == "activation":
        source = "layer"
    pre = y if normed is None else normed.astype(jnp.float32)
    a = y if site.kind == "activation" or nl is None else nl.fn(pre).astype(jnp.float32)
    dead, saturated = unit_fractions(a, nl, level)
    activated_std = activated_zeros = None
    if site.kind == "linear" and nl is not None:
        activated_std, activated_zeros = _std(a, jnp.mean(a)), jnp.mean(a == 0)
    grad_rms = None
    if delta is not None:
        grad_rms = l2_norm(delta) / jnp.sqrt(jnp.float32(delta.size))
    static = {
        "path": site.path,
        "index": index,
        "depth": depth,
        "kind": site.kind,
        "module": site.module,
        "activation": None if nl is None else nl.name,
        "shape": tuple(y.shape),
        "embedding": site.embedding,
        "normalized_by": site.normalized_by,
        "activation_source": None if nl is None else source,
    }
    numeric = {
        "mean": mean,
        "var": jnp.square(std),
        "std": std,
        "zero_fraction": jnp.mean(y == 0),
        "dead_fraction": dead,
        "saturated_fraction": saturated,
        "grad_rms": grad_rms,
        "activated_std": activated_std,
        "activated_zero_fraction": activated_zeros,
    }
    return static, numeric


def activation_records(capture: probe.Capture, level: float) -> records.Packed:
    """The records of every site of a :class:`~flaxinit.diagnostics.probe.Capture`, packed.

    Call inside a trace; :func:`~flaxinit.diagnostics.records.unpack` gives the
    :class:`ActivationRecord` s in execution order. A linear site's nonlinearity is
    none when an activation layer takes it, else the declared one (every linear site but
    the last), else the inferred one; it is applied through the norm layer that takes
    the site if any.
    """
    linear = [k for k, s in enumerate(capture.sites) if s.kind == "linear"]
    last_linear = linear[-1] if linear else -1
    rows, depth = [], 0
    for k, (site, y) in enumerate(zip(capture.sites, capture.outputs, strict=True)):
        depth += site.kind == "linear"
        nl, source = linear_nonlinearity(capture, k, last_linear)
        delta = None if capture.deltas is None else capture.deltas[k]
        rows.append(site_row(site, k, depth, y, delta, nl, level, capture.normed[k], source))
    return records.pack(ActivationRecord, rows)


def linear_nonlinearity(
    capture: probe.Capture, k: int, last_linear: int
) -> tuple[probe.Nonlinearity | None, str | None]:
    """The nonlinearity applied to linear site ``k`` and its source, by precedence: an
    activation layer takes it (then none here), declared, inferred."""
    site = capture.sites[k]
    if site.kind != "linear" or site.activation_layer is not None:
        return None, None
    if capture.declared is not None and k != last_linear:
        return capture.declared, "declared"
    found = capture.inferred[k] if k < len(capture.inferred) else None
    return (found, "inferred") if found is not None else (None, None)


@jax.jit(static_argnums=(0, 1, 2))
def _activation_pass(spec, gradients, level, dynamic, x, labels):
    capture = probe.run(spec, dynamic, x, labels, gradients=gradients)
    return activation_records(capture, level)


def activation_stats(
    model: Any,
    x: Any,
    labels: Any = None,
    *,
    variables: Any = None,
    activation: str | Callable[[jax.Array], jax.Array] | None = None,
    loss_fn: Callable[[Any, Any], jax.Array] | None = None,
    saturation_level: float = DEFAULT_SATURATION_LEVEL,
    call_kwargs: Mapping[str, Any] | None = None,
) -> tuple[ActivationRecord, ...]:
    """Per-layer statistics of a Linen or NNX model's activations on a batch, in execution order.

    One ``jax.jit``-compiled pass, cached on the model's definition. The model is run
    as ``model.apply(variables, x, **call_kwargs)`` (Linen) or ``model(x, **call_kwargs)``
    (NNX). It is not modified.

    Each linear layer's output (the pre-activation) and each :class:`Activation` /
    :class:`NNXActivation` output gets a record with ``mean``, ``var``, ``std``, the
    fraction of exact zeros, the fraction of dead units (relu-like) and the fraction of
    saturated outputs (tanh/sigmoid-like). With ``labels`` (or ``loss_fn``) the pass also
    runs backward and fills ``grad_rms``, the RMS of dLoss/d(output).

    Args:
      model: a ``flax.linen.Module`` (with ``variables``) or a ``flax.nnx.Module``.
      x: the input batch.
      labels: targets for the loss. Integer labels give softmax cross-entropy, floats give
        mean squared error. A model that returns several arrays (``(logits, cache)``)
        is scored on the one whose shape fits the labels; when none or several fit,
        pass ``loss_fn`` (see :func:`~flaxinit.diagnostics.probe.predictions`).
      variables: the Linen variables (``model.init(...)``); ``None`` for NNX.
      activation: the nonlinearity that follows each linear layer, declared. It is
        applied to every linear output except the last (and those an activation layer
        takes); where a norm layer takes a linear output (``Dense -> LayerNorm ->
        relu``), to the norm's output (see :attr:`ActivationRecord.normalized_by`).
        Without it, each linear output gets the nonlinearity read from the model's jaxpr,
        where one is applied to it alone (``activation_source="inferred"``).
      loss_fn: ``loss_fn(outputs, labels) -> scalar`` replacing the default.
      saturation_level: see :attr:`ActivationRecord.saturated_fraction`.
      call_kwargs: extra keyword arguments of the call, e.g. ``{"train": False}``.
        Hashable values only: they are static under ``jax.jit``.

    Returns:
      A tuple of :class:`ActivationRecord`, in execution order.

    Example:
      >>> from flaxinit.diagnostics import activation_stats
      >>> from flaxinit.models import MLP
      >>> model = MLP(features=(8, 8), activation="tanh")
      >>> x = jnp.ones((4, 3))
      >>> variables = model.init(jax.random.key(0), x)
      >>> for r in activation_stats(model, x, variables=variables):
      ...     print(r.path, r.kind, r.activation, r.activation_source)
      hidden_0 linear tanh inferred
      hidden_1 linear tanh inferred
      head linear None None
    """
    spec, dynamic = probe.prepare(
        model, variables, activation=activation, loss_fn=loss_fn, call_kwargs=call_kwargs
    )
    gradients = probe.has_loss(probe.unwrap(spec), labels)
    packed = _activation_pass(spec, gradients, float(saturation_level), dynamic, x, labels)
    return records.unpack(packed)


@jax.jit(static_argnums=0)
def _values_pass(spec, dynamic, x):
    capture = probe.run(spec, dynamic, x, gradients=False, infer=False)
    return capture.outputs


def activation_values(
    model: Any,
    x: Any,
    *,
    variables: Any = None,
    call_kwargs: Mapping[str, Any] | None = None,
) -> dict[str, jax.Array]:
    """Every site's output itself, by path, in execution order: for histograms.

    A path seen again (a shared layer) gets ``#2``, ``#3``, ... appended. The pass is
    jitted. The outputs are the arrays themselves, so they can be large.

    Example:
      >>> from flaxinit.diagnostics import activation_values
      >>> from flaxinit.models import MLP
      >>> model = MLP(features=(8,))
      >>> x = jnp.ones((4, 3))
      >>> values = activation_values(model, x, variables=model.init(jax.random.key(0), x))
      >>> {k: v.shape for k, v in values.items()}
      {'hidden_0': (4, 8), 'head': (4, 10)}
    """
    spec, dynamic = probe.prepare(model, variables, call_kwargs=call_kwargs)
    outputs = _values_pass(spec, dynamic, x)
    # Site paths come from a trace, not from the (cached) compiled call: trace once, abstractly.
    sites = _site_paths(spec, dynamic, x)
    out: dict[str, jax.Array] = {}
    for path, value in zip(sites, outputs, strict=True):
        key, n = path, 1
        while key in out:
            n += 1
            key = f"{path}#{n}"
        out[key] = value
    return out


def _site_paths(spec: Any, dynamic: Any, x: Any) -> list[str]:
    paths: list[str] = []

    def trace(dynamic, x):
        capture = probe.run(spec, dynamic, x, gradients=False, infer=False)
        paths.extend(s.path for s in capture.sites)
        return capture.outputs

    jax.eval_shape(trace, dynamic, x)
    return paths
