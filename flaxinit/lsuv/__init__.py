"""LSUV: layer-sequential unit-variance initialization as one jitted program.

Mishkin & Matas 2016, "All you need is a good init" (arXiv:1511.06422):
orthonormal pre-init, then, from the input to the output, rescale each layer's
kernel until the variance of its output on a real batch is within ``tol`` of the
target (``W <- W sqrt(target / Var)``, at most ``max_iters`` rounds).

flaxinit runs the whole procedure as one compiled forward pass: each selected
layer's output is fitted as the batch flows through it, the rescaled output is what
the next layer sees (so later layers see the already rescaled earlier ones, as in
the paper), and the scales are folded into the kernels at the end. A layer's rounds
never re-run the network: its output is linear in its kernel, ``y(c) = c f(x; W) + b``,
so each round is a rescale of that layer's cached output, and for the default
pre-activation measurement a scalar ``lax.while_loop`` on the output's moments.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import flax.linen as nn
import jax
from flax import nnx

from flaxinit._checks import check_choice, check_int, check_number
from flaxinit.lsuv import cache as _cache
from flaxinit.lsuv import for_linen as _linen
from flaxinit.lsuv import for_nnx as _nnx
from flaxinit.lsuv.cache import cache_info, clear_cache
from flaxinit.lsuv.fitting import FitConfig, activation_variance_bound
from flaxinit.lsuv.layers import LayerInfo, check_batch, orthonormal_kernel
from flaxinit.lsuv.report import LayerFit, LSUVReport, build_report

__all__ = ["LSUVReport", "LayerFit", "cache_info", "clear_cache", "lsuv"]


def _pre_init_fn(pre_init) -> Callable | None:
    if pre_init is None:
        return None
    if pre_init == "orthogonal":
        return orthonormal_kernel
    if callable(pre_init):

        def apply(key, info: LayerInfo, leaf):
            stack_shape = leaf.shape[: leaf.ndim - len(info.kernel_shape)]
            keys = jax.random.split(key, math.prod(stack_shape)) if stack_shape else key
            if not stack_shape:
                return pre_init(key, info.kernel_shape, leaf.dtype)
            draws = jax.vmap(lambda k: pre_init(k, info.kernel_shape, leaf.dtype))(keys)
            return draws.reshape(leaf.shape)

        return apply
    raise ValueError(
        f"lsuv: pre_init must be 'orthogonal', None or an initializer, got pre_init={pre_init!r}"
    )


def _config(
    target_var, tol, max_iters, measure, activation, activation_bounds, center, solver="exact"
):
    target_var = check_number(target_var, "lsuv", "target_var", above=0)
    tol = check_number(tol, "lsuv", "tol", above=0)
    max_iters = check_int(max_iters, "lsuv", "max_iters", at_least=1)
    check_choice(solver, "lsuv", "solver", ("exact", "iterate"))
    check_choice(measure, "lsuv", "measure", ("output", "activation"))
    if measure == "activation" and not callable(activation):
        raise ValueError(
            "lsuv: measure='activation' needs activation= (the function that follows each "
            "selected layer, e.g. jax.nn.tanh)"
        )
    if measure == "output" and activation is not None:
        raise ValueError("lsuv: activation= is only used with measure='activation'")
    bound = activation_variance_bound(
        activation if measure == "activation" else None, activation_bounds
    )
    feasible = target_var < bound
    return FitConfig(
        target_var=float(target_var),
        tol=float(tol),
        max_iters=int(max_iters),
        center=bool(center),
        activation=activation if measure == "activation" else None,
        feasible=feasible,
        solver=solver,
    )


def lsuv(
    model: nn.Module | nnx.Module,
    variables: Mapping[str, Any] | None,
    batch: Any,
    *,
    key: jax.Array | None = None,
    target_var: float = 1.0,
    tol: float = 0.1,
    max_iters: int = 10,
    layers=None,
    measure: str = "output",
    activation: Callable | None = None,
    activation_bounds: tuple[float, float] | None = None,
    pre_init: str | Callable | None = "orthogonal",
    center: bool = False,
    solver: str = "exact",
    call_kwargs: Mapping[str, Any] | None = None,
):
    """Layer-sequential unit-variance initialization of a Linen or NNX model.

    For each selected layer, in execution order, the kernel is multiplied by ``c``
    so that the variance of the layer's output over the whole batch (examples,
    positions and channels) is within ``tol`` of ``target_var``: starting from
    ``c = 1``, ``c <- c sqrt(target_var / Var)`` for at most ``max_iters`` rounds.
    Biases are not scaled (the paper leaves them alone); with a bias the variance is
    ``c^2 Var(z) + 2c Cov(z, b) + Var(b)``, which is why rounds can exceed one.

    * ``solver="exact"`` (default) solves ``Var(c) = target_var`` for ``c`` in closed
      form from the output's moments: the fixed point the paper's iteration converges
      to, reached in one round and exactly on target. ``solver="iterate"`` runs the
      paper's rounds (a scalar ``lax.while_loop``); ``measure="activation"`` always
      iterates. A target that scaling cannot reach (the bias alone has more variance)
      is reported and the layer left unchanged.
    * ``measure="output"`` (default, the paper's choice) fits each layer's own output,
      before the nonlinearity that follows it. ``measure="activation"`` fits
      ``activation(output)`` instead; a target the activation cannot reach (a
      sigmoid's variance is at most 0.25, tanh's below 1; others via
      ``activation_bounds=(lo, hi)``) is detected, reported, and the layer is left
      unchanged rather than blown up.
    * ``center=True`` (fastai's variant) also moves the measured mean to 0 through the
      bias. Layers without a bias only get scaled.
    * A layer whose output variance is 0 (dead ReLUs, constant input) or non-finite is
      left unchanged and flagged; non-convergence is reported per layer.
    * Normalization layers (LayerNorm, BatchNorm) are not selected and pass through;
      a layer followed by one gets its kernel rescaled, which the norm then undoes in
      the forward pass, so LSUV on such a layer changes only its effective learning
      rate. BatchNorm runs with the flags in ``call_kwargs`` (e.g.
      ``{"use_running_average": False}`` in Linen to normalize with batch stats); its
      running statistics are not updated.
    * ``nn.scan``/``nn.vmap``/``nnx.vmap`` stacks get one scale per layer of the
      stack, as the same layers unrolled would. A Linen stack needs only its params
      stacked (``variable_axes={'params': 0}``): each measurement travels next to its
      kernel, so ``'intermediates'`` need not be listed. A transform that shares one
      kernel across its iterations (``variable_broadcast='params'``) is refused: leave
      that layer out with ``layers=``.
    * A batch sharded over a mesh (data parallel) gives the global variance: the same
      result as on one device, up to float rounding of the reductions.

    Args:
      model: a ``flax.linen`` Module or a ``flax.nnx`` Module.
      variables: Linen: the variables from ``model.init``, or ``None`` to initialize
        with ``key``. NNX: ``None`` (the model holds its parameters).
      batch: a real batch of inputs (at least 2 examples, no NaN/Inf), the first
        positional argument of the model's ``__call__``.
      key: for the orthonormal pre-init (per layer, from the layer's path) and the
        Linen init when ``variables`` is ``None``; defaults to ``jax.random.key(0)``.
      target_var: the output variance to reach.
      tol: the tolerance on the variance.
      max_iters: the most rescaling rounds per layer.
      layers: which layers take part: ``None`` for every Dense/DenseGeneral/Conv/
        ConvLocal/ConvTranspose/Einsum (Linen) or Linear/LinearGeneral/Conv/ConvTranspose/Einsum
        (NNX); else a sequence of module types and glob patterns over module paths
        (``"Dense_*"``, ``"blocks/*/mlp/*"``, ``"re:.*attn.*"``). A pattern that
        selects nothing raises.
      measure: ``"output"`` or ``"activation"``.
      activation: the function applied to each layer's output when
        ``measure="activation"``.
      activation_bounds: ``(lo, hi)``, the activation's range, for feasibility.
      pre_init: ``"orthogonal"`` (each kernel orthonormal from its inputs to its
        outputs, per stacked slice), an initializer, or ``None`` to keep the kernels.
      center: also shift the bias so the measured mean is 0.
      solver: ``"exact"`` or ``"iterate"`` (pre-activation measurement only).
      call_kwargs: extra keyword arguments of the model's ``__call__``.

    Returns:
      Linen: ``(new_variables, report)``. NNX: ``(model, report)``; the model is
      updated in place (its Params; other state untouched) and returned.

    Example:
      >>> import flax.linen as nn
      >>> mlp = nn.Sequential([nn.Dense(64), nn.relu, nn.Dense(64), nn.relu, nn.Dense(10)])
      >>> x = jax.random.normal(jax.random.key(1), (128, 32))
      >>> variables, report = lsuv(mlp, None, x, key=jax.random.key(0))
      >>> report.converged
      True
    """
    config = _config(
        target_var, tol, max_iters, measure, activation, activation_bounds, center, solver
    )
    pre = _pre_init_fn(pre_init)
    check_batch(batch)
    key = jax.random.key(0) if key is None else key
    call_kwargs = dict(call_kwargs or {})
    measure_name = "output" if config.activation is None else "activation"
    # What decides the fitting program besides the model and the shapes; the pre-init
    # keys its own program (cached apart, so that calls with and without it share
    # the fitting pass).
    options = (config, layers, call_kwargs)
    pre_signature = _cache.signature("pre_init", pre_init) if pre is not None else None

    if isinstance(model, nnx.Module):
        if variables is not None:
            raise ValueError("lsuv: an NNX model holds its parameters; pass variables=None")
        graphdef, state = nnx.split(model)
        signature = _cache.signature(
            "nnx", graphdef, _cache.avals(state), _cache.avals(batch), options
        )
        entry, commit = _cache.lookup(
            signature,
            lambda: _nnx.build_program(
                model, layers=layers, config=config, call_kwargs=call_kwargs
            ),
        )
        run, infos, _, order = entry
        fits = run(model, batch, key, pre, pre_signature)
        commit()
        rank = {name: i for i, name in enumerate(order)}
        ranked = sorted(zip(infos, fits, strict=True), key=lambda p: rank.get(p[0].name, len(rank)))
        infos, fits = [p[0] for p in ranked], [p[1] for p in ranked]
        report = build_report(infos, fits, config.target_var, config.tol, measure_name)
        return model, report

    if isinstance(model, nn.Module):
        if variables is None:
            init_key, key = jax.random.split(key)
            variables = model.init(init_key, batch, **call_kwargs)
        signature = _cache.signature(
            "linen", model, _cache.avals(variables), _cache.avals(batch), options
        )
        run, commit = _cache.lookup(
            signature,
            lambda: _linen.build_program(
                model, layers=layers, config=config, call_kwargs=call_kwargs
            ),
        )
        new_variables, fits = run(variables, batch, key, pre, pre_signature)
        commit()
        report = build_report(
            run.traced["infos"], fits, config.target_var, config.tol, measure_name
        )
        return new_variables, report

    raise TypeError(
        f"lsuv: model must be a flax.linen or flax.nnx Module, got {type(model).__name__}"
    )


# ``fi.lsuv`` is this function: the cache's controls travel with it.
lsuv.clear_cache = clear_cache
lsuv.cache_info = cache_info
