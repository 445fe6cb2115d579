"""LSUV for ``flax.linen`` modules: a :func:`flaxinit.inspection.tap` rescales each
selected layer's output while the batch flows, and the scales are folded into the kernels.

Where the measurements travel. Inside a lifted transform (``nn.scan``, ``nn.vmap``) the
tap carries each layer's fit out through the model's variables, stacked by the
transform: one slice per layer of a stacked kernel. A layer inside a transform that
shares one kernel across its iterations (``variable_broadcast='params'``) has nothing
to scale per iteration: LSUV says so and asks to leave it out.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax.core import meta

from flaxinit import inspection
from flaxinit.lsuv.cache import COUNTS
from flaxinit.lsuv.fitting import (
    FitConfig,
    fit_output,
    fits_from_sown,
    fold_values,
    scale_kernel,
    shift_bias,
)
from flaxinit.lsuv.layers import (
    LayerInfo,
    check_patterns_used,
    default_types,
    make_selector,
    pre_initialize_kernels,
)

# The linear layers of flaxinit.inspection that have a kernel (not the Embed lookups).
DEFAULT_TYPES = tuple(t for t in default_types() if issubclass(t, nn.Module))


def _layout(module: nn.Module, kernel_shape: tuple[int, ...]):
    ndim = len(kernel_shape)
    if isinstance(module, nn.ConvLocal):  # one matrix per output position
        return tuple(range(ndim - 2)), (ndim - 1,)
    if isinstance(module, nn.DenseGeneral):
        features = module.features if isinstance(module.features, tuple) else (module.features,)
        batch_dims = module.batch_dims
        n_batch = 1 if isinstance(batch_dims, int) else len(batch_dims)
        return tuple(range(n_batch)), tuple(range(ndim - len(features), ndim))
    return (), (ndim - 1,)


def _module_name(module: nn.Module) -> str:
    return "/".join(module.path)


def _get(tree: Mapping, path: tuple) -> Any:
    for key in path:
        tree = tree[key]
    return tree


def _set(tree: Mapping, path: tuple, value: Any) -> dict:
    head, *rest = path
    new = dict(tree)
    new[head] = _set(tree[head], tuple(rest), value) if rest else value
    return new


def _update_leaf(tree, path, fn):
    leaf = _get(tree, path)
    if isinstance(leaf, meta.AxisMetadata):
        return _set(tree, path, leaf.replace_boxed(fn(leaf.unbox())))
    return _set(tree, path, fn(leaf))


def _stack_ndim(info: LayerInfo, leaf: jax.Array) -> int:
    stack = leaf.ndim - len(info.kernel_shape)
    if stack < 0 or tuple(leaf.shape[stack:]) != info.kernel_shape:
        raise ValueError(
            f"lsuv: kernel of {info.name!r} has shape {tuple(leaf.shape)} in the tree but "
            f"{info.kernel_shape} inside the layer; stacked layers must stack on leading axes"
        )
    return stack


def _record(module, name: str, found: dict[str, LayerInfo]) -> None:
    """Describes a selected layer (its kernel's path, shape and axes) in ``found``."""
    params = module.variables.get("params", {})
    if "kernel" not in params:
        raise ValueError(
            f"lsuv: selected module {name!r} ({type(module).__name__}) has no "
            "'kernel' parameter; LSUV rescales kernels of linear layers"
        )
    kernel_shape = tuple(meta.unbox(params["kernel"]).shape)
    batch_axes, out_axes = _layout(module, kernel_shape)
    path = ("params", *module.path)
    found[name] = LayerInfo(
        name=name,
        kind=type(module).__name__,
        kernel_path=(*path, "kernel"),
        bias_path=(*path, "bias") if "bias" in params else None,
        kernel_shape=kernel_shape,
        batch_axes=batch_axes,
        out_axes=out_axes,
    )


def _shared_kernel(name: str) -> ValueError:
    return ValueError(
        f"lsuv: no measurement came back from {name!r}: it runs inside a "
        "lifted transform (nn.scan, nn.vmap) that shares one kernel across its "
        "iterations (params broadcast, not stacked), and LSUV scales each kernel "
        "once: leave it out with layers=, or stack its params "
        "(variable_axes={'params': 0})"
    )


def measure_and_fit(
    model, variables, batch, call_kwargs, select, patterns, config: FitConfig
) -> tuple[list[LayerInfo], list[tuple], list[int]]:
    """One forward pass: each selected layer is found and fitted on its own output,
    in execution order (the layers are found in this same trace, not a separate one).

    Returns the selected layers, what each sowed (see
    :func:`~flaxinit.lsuv.fitting.fit_output`) and the size of its output blob.
    """
    found: dict[str, LayerInfo] = {}
    candidates: list[str] = []
    sizes: dict[str, int] = {}
    # Layers fitted inside a transform while their kernel is not stacked, with the
    # shapes of their fit there: a fit that comes back stacked was shared by iterations.
    unstacked: dict[str, list[tuple[int, ...]]] = {}

    def chosen(module, name: str) -> bool:
        if module.is_initializing():
            return False
        if "kernel" in module.variables.get("params", {}) and name not in candidates:
            candidates.append(name)
        if name not in found and select(module, name):
            _record(module, name, found)
        return name in found

    def fit(call: inspection.Call):
        module, out, name = call.module, call.output, call.site.path
        bias = module.variables["params"].get("bias")
        bias = None if bias is None else meta.unbox(bias)
        if bias is not None and out.shape[out.ndim - bias.ndim :] != bias.shape:
            # Bias laid out against non-trailing output axes (DenseGeneral batch dims,
            # Einsum): the layer at a zero input is exactly its broadcast bias.
            bias = call.layer(jnp.zeros_like(call.args[0]), *call.args[1:], **call.kwargs)
        sizes[name] = out.size
        rescaled, sown = fit_output(out, bias, config)
        info = found[name]
        if call.site.transformed and _stack_ndim(info, _kernel(variables, info)) == 0:
            unstacked[name] = [jnp.shape(v) for v in sown]
        return rescaled, sown

    kwargs = {**call_kwargs, "mutable": True}
    try:
        tapped = inspection.tap(
            model, batch, variables=variables, select=chosen, callback=fit, call_kwargs=kwargs
        )
    except ValueError as err:
        if unstacked and "broadcasts 'params'" in str(err):
            raise _shared_kernel(next(iter(unstacked))) from err
        raise
    check_patterns_used(patterns, candidates)
    layers = list(found.values())
    if not layers:
        raise ValueError(
            f"lsuv: no layer selected; layers with a kernel: {candidates[:10]} "
            "(default selection: Dense, DenseGeneral, Conv, ConvLocal, ConvTranspose, Einsum)"
        )
    fits: dict[str, list] = {}
    for site, sown in zip(tapped.sites, tapped.records, strict=True):
        fits.setdefault(site.path, []).append(tuple(sown))
    measured = []
    for info in layers:
        sown = fits.get(info.name, [])
        if len(sown) != 1:
            raise ValueError(
                f"lsuv: module {info.name!r} ran {len(sown)} times in one forward pass "
                "(shared weights); LSUV scales each kernel once: leave it out with layers="
            )
        if info.name in unstacked and [jnp.shape(v) for v in sown[0]] != unstacked[info.name]:
            raise _shared_kernel(info.name)
        measured.append(sown[0])
    return layers, measured, [sizes[info.name] for info in layers]


def _kernel(variables, info: LayerInfo) -> jax.Array:
    return meta.unbox(_get(variables, info.kernel_path))


def fold(variables, layers: list[LayerInfo], scales, shifts, center: bool) -> dict:
    """Each kernel times its scale (per slice when stacked), each bias plus its shift
    when centring; ``{path: array}`` of the leaves that change."""
    updates = {}
    for info, scale, shift in zip(layers, scales, shifts, strict=True):
        kernel = meta.unbox(_get(variables, info.kernel_path))
        stack = _stack_ndim(info, kernel)
        updates[info.kernel_path] = scale_kernel(kernel, scale, stack)
        if center and info.bias_path is not None:
            bias = meta.unbox(_get(variables, info.bias_path))
            updates[info.bias_path] = shift_bias(bias, shift, stack)
    return updates


def apply_updates(variables, updates: Mapping[tuple, Any]) -> dict:
    """``variables`` with the leaves at ``updates``' paths replaced (boxes kept)."""
    for path, value in updates.items():
        variables = _update_leaf(variables, path, lambda _, v=value: v)
    return variables


def build_program(model, *, layers, config, call_kwargs):
    """The fitting pass of ``model`` as a reusable ``run(variables, batch, key, pre_init)``.

    The jitted program takes the variables and the batch as arguments and finds the
    selected layers while it is traced (so a call that reuses it traces nothing).
    ``run`` draws the pre-init kernels (if ``pre_init``; a program of their own,
    cached by shape), executes the fitting pass, folds the scales into the kernels
    (one small program per kernel shape) and returns ``(new_variables, fits)``;
    ``run.infos`` holds the selected layers once the program is traced.
    """
    select, patterns = make_selector(layers, DEFAULT_TYPES)
    traced: dict[str, Any] = {}  # the selected layers and their output sizes, from the trace

    def program(variables, batch):
        COUNTS["fit"] += 1
        infos, sown, sizes = measure_and_fit(
            model, variables, batch, call_kwargs, select, patterns, config
        )
        traced.update(infos=infos, sizes=sizes)
        return sown

    jitted = jax.jit(program)

    def run(variables, batch, key, pre_init, signature=None):
        variables = dict(variables)
        if pre_init is not None:
            if "infos" not in traced:
                jitted.trace(variables, batch)  # finds the layers; the call below reuses it
            infos = traced["infos"]
            leaves = [meta.unbox(_get(variables, info.kernel_path)) for info in infos]
            for info, leaf in zip(infos, leaves, strict=True):
                _stack_ndim(info, leaf)
            kernels = pre_initialize_kernels(pre_init, key, infos, leaves, signature)
            variables = apply_updates(
                variables, {i.kernel_path: k for i, k in zip(infos, kernels, strict=True)}
            )
        sown = jitted(variables, batch)
        infos = traced["infos"]
        scales, shifts = fold_values(sown, config)
        variables = apply_updates(variables, fold(variables, infos, scales, shifts, config.center))
        return variables, fits_from_sown(sown, traced["sizes"], config)

    run.jitted = jitted
    run.traced = traced
    return run
