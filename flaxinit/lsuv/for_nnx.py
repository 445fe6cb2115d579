"""LSUV for ``flax.nnx`` modules.

A :func:`flaxinit.inspection.tap` (its thread-safe NNX hook) fits and rescales each
selected layer's output as it flows; the fits come back stacked per layer through
``nnx.scan``/``nnx.vmap``.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

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
DEFAULT_TYPES = tuple(t for t in default_types() if issubclass(t, nnx.Module))


def _as_tuple(x) -> tuple:
    if x is None:
        return ()
    if isinstance(x, int):
        return (x,)
    if isinstance(x, dict):
        return tuple(x)
    return tuple(x)


def _per_layer_ndim(module) -> int | None:
    if isinstance(module, nnx.Linear):
        return 2
    if isinstance(module, (nnx.Conv, nnx.ConvTranspose)):
        return len(_as_tuple(module.kernel_size)) + 2
    if isinstance(module, nnx.LinearGeneral):
        batch = _as_tuple(getattr(module, "batch_axis", None))
        return len(batch) + len(_as_tuple(module.in_features)) + len(_as_tuple(module.out_features))
    if isinstance(module, nnx.Einsum):
        return len(module.kernel_shape)
    return None


def _layout(module, ndim: int):
    if isinstance(module, nnx.LinearGeneral):
        n_batch = len(_as_tuple(getattr(module, "batch_axis", None)))
        n_out = len(_as_tuple(module.out_features))
        return tuple(range(n_batch)), tuple(range(ndim - n_out, ndim))
    return (), (ndim - 1,)


def _module_at(root, path):
    for part in path:
        root = root[part] if isinstance(part, int) else getattr(root, part)
    return root


def discover(model, select) -> tuple[list[tuple[tuple, Any, LayerInfo]], list[str]]:
    """The selected layers (path, module, info) and every layer with a kernel."""
    selected, candidates = [], []
    for path, module in nnx.iter_modules(model):
        name = "/".join(map(str, path))
        kernel = getattr(module, "kernel", None)
        if isinstance(kernel, nnx.Variable):
            candidates.append(name)
        if not select(module, name):
            continue
        if not isinstance(kernel, nnx.Variable):
            raise ValueError(
                f"lsuv: selected module {name!r} ({type(module).__name__}) has no kernel "
                "Param; LSUV rescales kernels of linear layers"
            )
        shape = tuple(kernel[...].shape)
        per = _per_layer_ndim(module) or len(shape)
        kernel_shape = shape[len(shape) - per :]
        batch_axes, out_axes = _layout(module, len(kernel_shape))
        bias = getattr(module, "bias", None)
        info = LayerInfo(
            name=name,
            kind=type(module).__name__,
            kernel_path=(*path, "kernel"),
            bias_path=(*path, "bias") if isinstance(bias, nnx.Variable) else None,
            kernel_shape=kernel_shape,
            batch_axes=batch_axes,
            out_axes=out_axes,
        )
        selected.append((path, module, info))
    return selected, candidates


def _fitter(config: FitConfig, sizes: dict[str, int]):
    """The tap's callback: fits a layer on its output; the rescaled output flows on."""

    def fit(call: inspection.Call):
        out, name = call.output, call.site.path
        bias = getattr(call.module, "bias", None)
        bias = bias[...] if isinstance(bias, nnx.Variable) else None
        if bias is not None and out.shape[out.ndim - bias.ndim :] != bias.shape:
            # The layer at a zero input is exactly its broadcast bias.
            bias = call.layer(jnp.zeros_like(call.args[0]), *call.args[1:], **call.kwargs)
        sizes[name] = out.size
        return fit_output(out, bias, config)

    return fit


def build_program(model, *, layers, config, call_kwargs):
    """Finds the selected layers of ``model`` and returns ``(run, infos, paths, order)``.

    ``run(model, batch, key, pre_init, signature)`` draws the pre-init kernels (if
    ``pre_init``; a program of their own, cached by ``signature``), runs the jitted
    fitting pass (the graph definition static, the state, batch and kernels its
    arguments), folds the scales into ``model``'s kernels and returns the fits.
    ``model`` is any module with this one's graph definition (``run`` is reused
    across calls); the tap selects its layers by path. ``order`` fills with the
    layers' execution order when the program is traced.
    """
    select, patterns = make_selector(layers, DEFAULT_TYPES)
    selected, candidates = discover(model, select)
    check_patterns_used(patterns, candidates)
    if not selected:
        raise ValueError(
            f"lsuv: no layer selected; layers with a kernel: {candidates[:10]} "
            "(default selection: Linear, LinearGeneral, Conv, ConvTranspose, Einsum)"
        )
    infos = [info for _, _, info in selected]
    paths = [path for path, _, _ in selected]
    names = {info.name for info in infos}
    order: list[str] = []
    layer_sizes: list[int] = []  # each layer's output size, recorded when the program is traced

    def program(graphdef, state, batch, kernels):
        COUNTS["fit"] += 1
        module = nnx.merge(graphdef, state)
        if kernels is not None:
            for path, kernel in zip(paths, kernels, strict=True):
                _module_at(module, path).kernel[...] = kernel
        sizes: dict[str, int] = {}
        tapped = inspection.tap(
            module,
            batch,
            select=lambda _, name: name in names,
            callback=_fitter(config, sizes),
            call_kwargs=call_kwargs,
        )
        fits: dict[str, list] = {}
        for site, sown in zip(tapped.sites, tapped.records, strict=True):
            fits.setdefault(site.path, []).append(tuple(sown))
        order[:] = list(fits)
        measured = []
        for info in infos:
            sown = fits.get(info.name)
            if sown is None:
                raise ValueError(f"lsuv: layer {info.name!r} was not called by the model")
            if len(sown) != 1:
                raise ValueError(
                    f"lsuv: module {info.name!r} ran {len(sown)} times in one forward "
                    "pass (shared weights); LSUV scales each kernel once: leave it out with layers="
                )
            measured.append(sown[0])
        layer_sizes[:] = [sizes[i.name] for i in infos]
        return measured

    jitted = jax.jit(program, static_argnums=0)

    def run(model, batch, key, pre_init, signature=None):
        """Pre-init, the fitting pass, then the fold into ``model`` (one small program
        per kernel shape)."""
        layers = [_module_at(model, path) for path in paths]
        kernels = None
        if pre_init is not None:
            kernels = pre_initialize_kernels(
                pre_init, key, infos, [layer.kernel[...] for layer in layers], signature
            )
        graphdef, state = nnx.split(model)
        measured = jitted(graphdef, state, batch, kernels)
        scales, shifts = fold_values(measured, config)
        for i, (layer, info) in enumerate(zip(layers, infos, strict=True)):
            kernel = kernels[i] if kernels is not None else layer.kernel[...]
            stack = kernel.ndim - len(info.kernel_shape)
            layer.kernel[...] = scale_kernel(kernel, scales[i], stack)
            if config.center and info.bias_path is not None:
                layer.bias[...] = shift_bias(layer.bias[...], shifts[i], stack)
        return fits_from_sown(measured, layer_sizes, config)

    run.jitted = jitted
    return run, infos, paths, order
