"""flaxinit doctor: which initialization keeps the signal alive? Per-layer health before training.

Run ``python -m flaxinit.doctor`` for the comparison: a 30-layer ReLU MLP on
scikit-learn's digits (bundled with scikit-learn, nothing is downloaded), initialized with
each scheme in :data:`SCHEMES`. For each scheme it prints a table and a verdict, and it
writes plots of activation std and gradient RMS against depth. Options pick another
built-in model (``--model cnn|gpt``), another initializer (``--init he_normal``,
``--init normal:0.01``, ``--init orthogonal:1.414``, repeatable), the depth, width and
activation. With one ``--init`` it prints that scheme's full per-layer table.

Your own model: ``--model MODULE:NAME``, where ``NAME`` is a Linen or NNX model in the
importable module ``MODULE`` or a zero-argument callable returning one (a class with
defaults, a factory function)::

    python -m flaxinit.doctor --model mypkg.models:ResNet18 --input-shape 8,32,32,3 \\
        --call-kwargs train=False
    python -m flaxinit.doctor --model mypkg.lm:make_model --input-shape 4,128 \\
        --input-dtype int32 --vocab 32000

Its inputs are random (``--data random``: N(0, 1) floats, or integers in
``[0, --vocab)``), the digits (``--data digits``) or the first ``--batch`` rows of an
array (``--data FILE.npy``); its labels random integers in ``[0, outputs)``, an array
(``--labels FILE.npy``) or none (``--labels none``: no gradients). Every scheme
re-draws the kernels of the model's linear layers (Dense, Conv, attention, Einsum: the
``@kernel`` role of :func:`flaxinit.model_structure`, on their true fan axes) and keeps
the rest as the model initializes it; the row ``own_init`` is the model's own
initialization. In Python, :func:`doctor` returns the comparison as a
:class:`DoctorReport`.
"""

from __future__ import annotations

import argparse
import ast
import collections
import dataclasses
import functools
import importlib
import math
import pathlib
import sys
import textwrap
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

import flaxinit as fi
from flaxinit._deprecation import warn_renamed
from flaxinit.diagnostics import (
    HealthReport,
    Thresholds,
    activation_values,
    digit_tokens,
    digits,
    health_report,
    nonlinearity,
    plot_activation_histograms,
    plot_depth_profiles,
)
from flaxinit.diagnostics.probe import blas_single_threaded
from flaxinit.models import GPT, MLP, ConvNet
from flaxinit.tables import format_table

Batch = tuple[Any, Any]


class DoctorError(ValueError):
    """The doctor cannot run on this model or batch; the message says why, in one line."""

    def __init__(self, message: str):
        super().__init__(message if message.startswith("doctor: ") else f"doctor: {message}")


def _first_line(error: BaseException) -> str:
    """The error's first line; its type first unless it is a ValueError or TypeError."""
    lines = str(error).strip().splitlines()
    line = lines[0].strip() if lines else ""
    if isinstance(error, (ValueError, TypeError)) and line:
        return line
    return f"{type(error).__name__}: {line}" if line else type(error).__name__


def _framework(model: Any) -> str:
    if isinstance(model, nn.Module):
        return "linen"
    if isinstance(model, nnx.Module):
        return "nnx"
    raise TypeError(f"doctor: expected a flax.linen or flax.nnx Module, got {type(model).__name__}")


@dataclasses.dataclass(frozen=True, eq=False)
class Case:
    """What a scheme re-initializes: the model, its own initialization and the batch.

    Attributes:
      model: the Linen or NNX module.
      variables: its own initialization: Linen ``model.init(key, x)``; NNX the state
        of the model as given (``nnx.state(model)``).
      x: the batch's inputs (the first positional argument of ``__call__``).
      labels: the batch's labels, or None.
      call_kwargs: keyword arguments of ``__call__`` (``train=False``); for Linen
        with ``mutable`` added when the model has collections other than ``params``.
      activation: the model's nonlinearity (a name or function) if known, else None.
    """

    model: Any
    variables: Any
    x: Any
    labels: Any = None
    call_kwargs: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    activation: Any = None

    @property
    def framework(self) -> str:
        """``"linen"`` or ``"nnx"``."""
        return _framework(self.model)

    @property
    def init_kwargs(self) -> dict[str, Any]:
        """``call_kwargs`` without ``mutable``: for ``init``, ``lsuv`` and the structure."""
        return {k: v for k, v in self.call_kwargs.items() if k != "mutable"}

    @functools.cached_property
    def structure(self) -> fi.structure.ModelStructure:
        """The model's structure (roles and fan axes), read once from its computation."""
        variables = self.variables if self.framework == "linen" else None
        extra = {"variables": variables} if variables is not None else {}
        return fi.model_structure(self.model, self.x, **extra, **self.init_kwargs)


# A scheme maps a case and a key to new variables: Linen a variable dict, NNX an
# nnx.State of the whole model.
Scheme = Callable[[Case, jax.Array], Any]

# The built-in models: the zoo's, with bare nonlinearities (the probe reads them from the
# jaxpr) and a kernel_init attribute a scheme sets.
_BUILTIN = (MLP, ConvNet, GPT)


def redraw_kernels(case: Case, init: fi.Initializer, key: jax.Array) -> Any:
    """The case's own variables with every linear kernel re-drawn by ``init``.

    The kernels are the leaves of the ``@kernel`` role (Dense, Conv, attention
    projections, Einsum, the readout; not embeddings) that
    :func:`flaxinit.model_structure` reads from the model's computation; each is drawn
    on its true fan axes, so a ``(d, heads, head_dim)`` attention kernel gets fan_in
    ``d``. Biases, norms, embeddings and buffers stay as the model initialized them.
    """
    try:
        structure = case.structure
    except Exception as error:
        raise DoctorError(
            "cannot read the model's structure to re-draw its kernels: " + _first_line(error)
        ) from error
    if not structure.select("kernel"):
        raise DoctorError(
            "the model has no linear layer (Dense, Conv, attention, Einsum) whose kernel "
            "a scheme could re-draw"
        )
    rules = [("@kernel", fi.reinit(init))]
    return fi.apply_rules(case.variables, rules, key=key, structure=structure)


def from_initializer(init: fi.Initializer) -> Scheme:
    """A scheme that re-initializes the model's kernels with ``init``.

    A built-in model (:class:`flaxinit.models.MLP`, ``ConvNet``, ``GPT``) is
    initialized afresh with ``kernel_init=init`` (biases zero), so Flax hands the
    initializer the shapes it expects (attention kernels flattened to 2-D). Any other
    model keeps its own initialization except the kernels, re-drawn by
    :func:`redraw_kernels`.

    Example:
      >>> from flaxinit.diagnostics.doctor import Case, from_initializer
      >>> from flaxinit.models import MLP
      >>> model, x = MLP(features=(4,)), jnp.ones((2, 3))
      >>> case = Case(model, model.init(jax.random.key(0), x), x)
      >>> variables = from_initializer(zeros)(case, jax.random.key(0))
      >>> float(abs(variables["params"]["hidden_0"]["kernel"]).max())
      0.0
    """

    def scheme(case: Case, key: jax.Array) -> Any:
        if isinstance(case.model, _BUILTIN):
            return case.model.clone(kernel_init=init).init(key, case.x)
        return redraw_kernels(case, init, key)

    return scheme


def own_init(case: Case, key: jax.Array) -> Any:
    """The model's own initialization, unchanged: the baseline row of a user model."""
    del key
    return case.variables


def _gain(activation: Any) -> float:
    """``fi.calculate_gain`` of a nonlinearity (a name or function), or 1 where that table
    has no entry (gelu) or none is known."""
    if activation is None:
        return 1.0
    try:
        return fi.calculate_gain(nonlinearity(activation).name)
    except (ValueError, TypeError):
        return 1.0


def orthogonal_with_gain(case: Case, key: jax.Array) -> Any:
    """Orthogonal weights scaled by the gain of the model's activation (sqrt(2) for ReLU).

    The gain is ``fi.calculate_gain(case.activation)``, or 1 where that table has no
    entry (e.g. gelu) or the nonlinearity is unknown.
    """
    return from_initializer(fi.orthogonal(_gain(case.activation)))(case, key)


def lsuv_scheme(case: Case, key: jax.Array) -> Any:
    """LSUV (Mishkin & Matas 2016): orthonormal kernels, then each linear layer rescaled
    in one compiled pass so its output has unit variance on the batch (:func:`flaxinit.lsuv`)."""
    init_key, lsuv_key = jax.random.split(key)
    kwargs = case.init_kwargs
    if case.framework == "nnx":
        graphdef, state = nnx.split(case.model)
        copy = nnx.merge(graphdef, state, copy=True)  # lsuv updates in place
        fi.lsuv(copy, None, case.x, key=lsuv_key, call_kwargs=kwargs)
        return nnx.state(copy)
    fresh = case.model.init(init_key, case.x, **kwargs)
    new, _ = fi.lsuv(case.model, fresh, case.x, key=lsuv_key, call_kwargs=kwargs)
    return new


# The comparison run with no arguments. Adding a scheme takes one entry.
SCHEMES: dict[str, Scheme] = {
    "glorot_uniform": from_initializer(fi.glorot_uniform()),  # Xavier
    "lecun_normal": from_initializer(fi.lecun_normal()),  # Flax's default
    "normal:0.01": from_initializer(fi.normal(0.01)),  # N(0, 0.01^2)
    "he_normal": from_initializer(fi.he_normal()),
    "orthogonal": orthogonal_with_gain,
    "lsuv": lsuv_scheme,
}

# Catalogue names that are initializers themselves rather than factories.
_DIRECT = {"zeros": fi.zeros, "ones": fi.ones}
_NOT_FACTORIES = {
    "Initializer",
    "calculate_gain",
    "compute_fans",
    "truncated_normal_std",
    "scaled",
    "layerwise",
    "blockwise",
}


def _arg(text: str) -> Any:
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        return text


def parse_initializer(spec: str) -> fi.Initializer:
    """An initializer from ``name`` or ``name:arg,arg,...``, using the catalogue's names.

    Arguments are positional and parsed as int, then float, else kept as strings:
    ``normal:0.01``, ``orthogonal:1.414``, ``variance_scaling:2,fan_in,normal``,
    ``kaiming_normal:0,fan_out,relu``.

    Example:
      >>> from flaxinit.diagnostics.doctor import parse_initializer
      >>> w = parse_initializer("normal:0.5")(jax.random.key(0), (1000, 10))
      >>> round(float(w.std()), 1)
      0.5
    """
    name, _, rest = spec.partition(":")
    args = [_arg(a) for a in rest.split(",")] if rest else []
    if name in _DIRECT:
        if args:
            raise ValueError(f"{name} takes no arguments, got {spec!r}")
        return _DIRECT[name]
    if name in fi.initializers.RENAMED:  # an old spelling: same arguments, new name
        new = fi.initializers.RENAMED[name][0].rsplit(".", 1)[1]
        warn_renamed(f"the initializer name {name!r}", repr(new), stacklevel=2)
        name = new
    if name not in fi.initializers.__all__ or name in _NOT_FACTORIES:
        known = sorted(set(fi.initializers.__all__) - _NOT_FACTORIES)
        raise ValueError(f"unknown initializer {name!r}; known: {', '.join(known)}")
    return getattr(fi, name)(*args)


def resolve_scheme(spec: str) -> Scheme:
    """A scheme from :data:`SCHEMES` by name (or ``own_init``), else from
    :func:`parse_initializer`."""
    if spec in SCHEMES:
        return SCHEMES[spec]
    if spec == "own_init":
        return own_init
    return from_initializer(parse_initializer(spec))


MODELS = ("mlp", "cnn", "gpt")
_DEFAULTS = {  # depth, width, activation
    "mlp": (30, 256, "relu"),
    "cnn": (8, 32, "relu"),
    "gpt": (4, 64, "gelu"),
}


def build(
    kind: str, depth: int, width: int, activation: str, batch: int, seed: int
) -> tuple[nn.Module, Batch, str]:
    """The built-in model, its batch ``(x, labels)`` from the digits, and a description."""
    if kind == "gpt":
        tokens = digit_tokens(batch, seed=seed)
        x, y = tokens[:, :-1], tokens[:, 1:]
        heads = 4 if width % 4 == 0 else 1
        model = GPT(
            vocab_size=17,
            max_len=x.shape[1],
            d_model=width,
            num_layers=depth,
            num_heads=heads,
            activation=activation,
        )
        what = (
            f"a {depth}-block GPT (width {width}, {heads} heads, {activation}) predicting the "
            f"next pixel of {batch} scikit-learn digits (63 tokens each, 17 intensities)"
        )
        return model, (x, y), what
    x, y = digits(batch, seed=seed)
    data = f"{batch} scikit-learn digits (8x8 pixels, standardized; 10 classes)"
    if kind == "cnn":
        model = ConvNet((width,) * depth, 10, activation)
        return model, (x, y), f"a {depth}-layer {activation} CNN ({width} channels) on {data}"
    model = MLP((width,) * depth, 10, activation=activation)
    return model, (x, y), f"a {depth}-layer {activation} MLP (width {width}) on {data}"


def _g(x: float | None) -> str:
    return "-" if x is None else f"{x:.2g}"


def _profile(report: HealthReport) -> dict[str, Any]:
    layers = report.profile
    first, mid, last = layers[0], layers[len(layers) // 2], layers[-1]
    fwd = last.std / first.std if first.std > 0 else None
    bwd = None
    if last.grad_rms and first.grad_rms is not None:
        bwd = first.grad_rms / last.grad_rms
    return {"first": first, "mid": mid, "last": last, "fwd": fwd, "bwd": bwd}


def _label(status: str) -> str:
    return {"ok": "OK", "warning": "WARN", "error": "FAIL"}[status]


def comparison_table(reports: Mapping[str, HealthReport]) -> str:
    """One row per scheme: std and gradient RMS at the first, middle and last layer."""
    p0 = _profile(next(iter(reports.values())))
    n0, nm, n1 = p0["first"].depth, p0["mid"].depth, p0["last"].depth
    headers = [
        "scheme",
        f"std@{n0}",
        f"std@{nm}",
        f"std@{n1}",
        f"{n1}/{n0}",
        f"grad@{n0}",
        f"grad@{nm}",
        f"grad@{n1}",
        f"{n0}/{n1}",
        "status",
    ]
    rows = []
    for name, report in reports.items():
        p = _profile(report)
        rows.append(
            [
                name,
                _g(p["first"].std),
                _g(p["mid"].std),
                _g(p["last"].std),
                _g(p["fwd"]),
                _g(p["first"].grad_rms),
                _g(p["mid"].grad_rms),
                _g(p["last"].grad_rms),
                _g(p["bwd"]),
                _label(report.status),
            ]
        )
    return format_table(headers, rows, right=range(1, len(headers) - 1))


def verdict(name: str, report: HealthReport, width: int) -> str:
    """``name  OK  ...`` with the problems and the first fix, or the kept ratios."""
    head = f"  {name.ljust(width)}  {_label(report.status).ljust(4)}  "
    problems = [f for f in report.findings if f.severity != "info"]
    if not problems:
        p = _profile(report)
        n0, n1 = p["first"].depth, p["last"].depth
        kept = f"std x{_g(p['fwd'])}"
        kept += f", gradient x{_g(p['bwd'])}" if p["bwd"] is not None else ""
        return head + f"signal kept alive ({kept} between layers {n0} and {n1})"
    pad = " " * len(head)
    fix = textwrap.fill(
        "fix: " + problems[0].fix, width=100, initial_indent=pad, subsequent_indent=pad + "     "
    )
    return head + report.verdict() + "\n" + fix


def _score(report: HealthReport) -> float:
    """How far the forward and backward ratios are from 1, in decades (lower is better)."""
    p = _profile(report)
    total = 0.0
    for ratio in (p["fwd"], p["bwd"]):
        if ratio is None:
            continue
        total += abs(math.log10(ratio)) if ratio > 0 and math.isfinite(ratio) else math.inf
    return total


@dataclasses.dataclass(frozen=True, eq=False)
class DoctorReport:
    """The doctor's comparison of initialization schemes on one model and batch.

    ``str(report)`` is the comparison the command line prints: the table, one verdict
    per scheme and, with several schemes, which keep the signal alive.

    Attributes:
      model: the model diagnosed (Linen or NNX).
      reports: per scheme, in order, its :class:`~flaxinit.diagnostics.HealthReport`.
      variables: per scheme, what it initialized: Linen a variable dict, NNX an
        ``nnx.State`` of the model (see :meth:`initialized`).
      call_kwargs: the keyword arguments the model was called with.
      notes: remarks on how the schemes were applied (e.g. the orthogonal gain).
    """

    model: Any
    reports: Mapping[str, HealthReport]
    variables: Mapping[str, Any]
    call_kwargs: Mapping[str, Any]
    notes: tuple[str, ...] = ()

    @property
    def alive(self) -> tuple[str, ...]:
        """The schemes whose report has no warning or error."""
        return tuple(n for n, r in self.reports.items() if r.status == "ok")

    @property
    def lost(self) -> tuple[str, ...]:
        """The schemes with a warning or an error."""
        return tuple(n for n, r in self.reports.items() if r.status != "ok")

    @property
    def best(self) -> str | None:
        """Of the schemes in :attr:`alive`, the one whose forward ratio (last/first std)
        and backward ratio (first/last gradient RMS) are nearest 1 (the sum of
        ``|log10 ratio|``; the first listed on a tie); None if no scheme is alive."""
        if not self.alive:
            return None
        return min(self.alive, key=lambda n: _score(self.reports[n]))

    def verdicts(self) -> dict[str, str]:
        """Per scheme, its verdict: ``"OK  signal kept alive (...)"`` or ``"FAIL  ..."``."""
        width = max(map(len, self.reports))
        return {n: verdict(n, r, width).strip() for n, r in self.reports.items()}

    def table(self) -> str:
        """The comparison table: one row per scheme (see :func:`comparison_table`)."""
        return comparison_table(self.reports)

    def initialized(self, name: str) -> Any:
        """A scheme's initialization, ready to use: Linen its variables, NNX a new model
        holding its state (the model given to :func:`doctor` is left unchanged)."""
        if name not in self.variables:
            raise KeyError(f"no scheme {name!r}; schemes: {', '.join(self.variables)}")
        if isinstance(self.model, nnx.Module):
            return nnx.merge(nnx.graphdef(self.model), self.variables[name], copy=True)
        return self.variables[name]

    def __str__(self) -> str:
        width = max(map(len, self.reports))
        lines = [self.table(), "", "Verdict:"]
        lines += [verdict(n, r, width) for n, r in self.reports.items()]
        if len(self.reports) > 1:
            lines += ["", f"Keeps the signal alive: {', '.join(self.alive) or 'none'}."]
            lines += [f"Loses it or has problems: {', '.join(self.lost) or 'none'}."]
            if self.best is not None:
                lines += [f"Best: {self.best} (forward and backward ratios nearest 1)."]
        return "\n".join(lines)


def _split_batch(batch: Any) -> Batch:
    if isinstance(batch, (tuple, list)):
        if len(batch) != 2:
            raise TypeError(
                f"doctor: batch must be x or (x, labels), got a sequence of {len(batch)} items"
            )
        return batch[0], batch[1]
    if not hasattr(batch, "shape"):
        raise TypeError(f"doctor: batch must be x or (x, labels), got {type(batch).__name__}")
    return batch, None


def _describe(x: Any) -> str:
    shape = getattr(x, "shape", None)
    if shape is None:
        return f"an input of type {type(x).__name__}"
    return f"an input of shape {tuple(shape)} dtype {np.dtype(x.dtype).name}"


def _jitted_init(model: nn.Module, init_kwargs: Mapping[str, Any]) -> Callable:
    """``model.init(key, x, **init_kwargs)`` under ``jax.jit``, one compiled program per
    hashable model and keyword arguments (the command line initializes the model once to
    read its outputs, then again in :func:`doctor`)."""
    items = tuple(sorted(init_kwargs.items()))
    try:
        hash((model, items))
    except TypeError:  # an unhashable field: compile for this call only
        return jax.jit(lambda k, x: model.init(k, x, **init_kwargs))
    return functools.partial(_init_program, model, items)


@functools.partial(jax.jit, static_argnums=(0, 1))
def _init_program(model: nn.Module, items: tuple, key: jax.Array, x: Any) -> Any:
    return model.init(key, x, **dict(items))


def model_outputs(
    model: Any, x: Any, *, call_kwargs: Mapping[str, Any] | None = None, key: Any = None
) -> tuple[Any, Any, dict[str, Any]]:
    """Initializes the model (Linen) and traces one call on ``x``, abstractly.

    Returns ``(variables, outputs, call_kwargs)``: the model's own variables (Linen
    ``model.init(key, x)``; NNX ``nnx.state(model)``), the outputs as
    ``jax.ShapeDtypeStruct``s, and the keyword arguments to call it with (for a Linen
    model with collections besides ``params``, ``mutable`` lists them unless given).
    Anything the model raises becomes a :class:`DoctorError`:
    ``the model rejected an input of shape (..) dtype ..: <first line of the error>``.

    Example:
      >>> import flax.linen as nn
      >>> from flaxinit.diagnostics.doctor import model_outputs
      >>> variables, out, kwargs = model_outputs(nn.Dense(3), jnp.ones((2, 4)))
      >>> out.shape, kwargs
      ((2, 3), {})
    """
    kwargs = dict(call_kwargs or {})
    key = jax.random.key(0) if key is None else key
    init_kwargs = {k: v for k, v in kwargs.items() if k != "mutable"}
    try:
        if _framework(model) == "nnx":
            graphdef, state = nnx.split(model)
            variables = nnx.state(model)
            outputs = jax.eval_shape(
                lambda s: nnx.merge(graphdef, s, copy=True)(x, **kwargs), state
            )
            return variables, outputs, kwargs
        with blas_single_threaded():
            if isinstance(model, _BUILTIN):
                variables = model.init(key, x)  # as before: eager, bit for bit
            else:  # one program, not one per layer
                variables = _jitted_init(model, init_kwargs)(key, x)
        extra = tuple(sorted(c for c in variables if c != "params"))
        if extra and "mutable" not in kwargs:
            kwargs["mutable"] = extra
        outputs = jax.eval_shape(lambda v: model.apply(v, x, **kwargs), variables)
        if "mutable" in kwargs:
            outputs = outputs[0]
    except TypeError as error:
        if "expected a flax.linen or flax.nnx Module" in str(error):
            raise
        raise DoctorError(f"the model rejected {_describe(x)}: {_first_line(error)}") from error
    except Exception as error:
        raise DoctorError(f"the model rejected {_describe(x)}: {_first_line(error)}") from error
    return variables, outputs, kwargs


def _activation_of(model: Any, declared: Any, own: HealthReport | None) -> Any:
    """The nonlinearity for gains: declared, else the model's ``activation`` attribute,
    else the one its records name most (activation layers, or inferred from the jaxpr)."""
    if declared is not None:
        return declared
    attr = getattr(model, "activation", None)
    if isinstance(attr, str) or callable(attr):
        return attr
    if own is not None:
        names = [r.activation for r in own.activations if r.activation is not None]
        if names:
            return collections.Counter(names).most_common(1)[0][0]
    return None


def doctor(
    model: Any,
    batch: Any,
    *,
    schemes: Mapping[str, Scheme] | Sequence[str] | None = None,
    loss_fn: Callable[[Any, Any], jax.Array] | None = None,
    call_kwargs: Mapping[str, Any] | None = None,
    key: jax.Array | None = None,
    activation: str | Callable[[jax.Array], jax.Array] | None = None,
    thresholds: Thresholds | None = None,
) -> DoctorReport:
    """Compares initialization schemes on a Linen or NNX model: a health report each.

    Each scheme initializes the model (see :data:`SCHEMES`; the default runs
    ``own_init``, the model's own initialization, then every scheme in
    :data:`SCHEMES`). Then :func:`flaxinit.health_report` measures, per linear layer,
    the forward signal (output std) and the backward signal (gradient RMS) on the
    batch, and turns them into findings. On a model other than the built-in MLP,
    ConvNet and GPT, a scheme re-draws the kernels of the linear layers only (by role, on their
    true fan axes; :func:`redraw_kernels`): biases, norms, embeddings and buffers stay
    as the model initializes them.

    Args:
      model: a ``flax.linen`` Module (initialized here with ``key``) or a ``flax.nnx``
        Module (its state is the starting point; it is left unchanged).
      batch: ``(x, labels)``, or ``x`` alone (no gradients unless ``loss_fn`` needs no
        labels). ``x`` is the first positional argument of the model's ``__call__``.
      schemes: names (of :data:`SCHEMES`, ``own_init`` or ``--init`` specs such as
        ``"normal:0.02"``) or a mapping name -> scheme ``(case, key) -> variables``.
      loss_fn: ``(outputs, labels) -> scalar``; the default is
        :func:`~flaxinit.diagnostics.default_loss` on the output that fits the labels.
      call_kwargs: keyword arguments of ``__call__`` (``{"train": False}``). A Linen
        model with collections besides ``params`` (``batch_stats``) is called with
        them mutable, so ``train=True`` works; its updates are discarded.
      key: the key of the initializations (default ``jax.random.key(0)``).
      activation: the nonlinearity, declared: applied to every linear output but the
        last, before the one the diagnostics read from the model's jaxpr; see
        :func:`flaxinit.health_report`. It also sets the orthogonal scheme's gain.
      thresholds: the findings' :class:`~flaxinit.diagnostics.Thresholds`.

    Returns:
      A :class:`DoctorReport`; ``print(report)`` shows the comparison.

    Raises:
      DoctorError: the model rejects the batch, the diagnostics refuse it (layers
        inside ``nn.scan``, outputs that do not fit the labels), or it has no linear
        layer; the message is one line.

    Example:
      >>> import flax.linen as nn
      >>> from flaxinit.diagnostics.doctor import doctor
      >>> class Net(nn.Module):
      ...     @nn.compact
      ...     def __call__(self, x):
      ...         for _ in range(8):
      ...             x = nn.relu(nn.Dense(32)(x))
      ...         return nn.Dense(10)(x)
      >>> x = jax.random.normal(jax.random.key(1), (128, 32))
      >>> y = jax.random.randint(jax.random.key(2), (128,), 0, 10)
      >>> report = doctor(Net(), (x, y), schemes=["own_init", "normal:0.01", "he_normal"],
      ...                 activation="relu")
      >>> report.alive, report.best
      (('he_normal',), 'he_normal')
      >>> sorted(report.reports["normal:0.01"].codes)
      ['vanishing_activations', 'vanishing_gradients']
      >>> print(report)  # doctest: +ELLIPSIS
      scheme       std@1    std@5    std@8    8/1   grad@1   grad@5   grad@8      1/8  status
      -----------  -----  -------  -------  -----  -------  -------  -------  -------  ------
      own_init         1     0.27     0.12   0.12  8.2e-05  0.00033  0.00097    0.085  WARN
      normal:0.01  0.055  9.4e-08  5.6e-12  1e-10  8.1e-15  3.6e-09  5.2e-05  1.6e-10  FAIL
      he_normal      1.4     0.94     0.94   0.68   0.0019   0.0018   0.0015      1.3  OK
      <BLANKLINE>
      Verdict:
        own_init     WARN  gradients vanish (x0.085)
                           fix: weights have std*sqrt(fan_in) = 1 (Xavier/LeCun scale) (layers:
      ...
        he_normal    OK    signal kept alive (std x0.68, gradient x1.3 between layers 1 and 8)
      <BLANKLINE>
      Keeps the signal alive: he_normal.
      Loses it or has problems: own_init, normal:0.01.
      Best: he_normal (forward and backward ratios nearest 1).
    """
    framework = _framework(model)
    x, labels = _split_batch(batch)
    key = jax.random.key(0) if key is None else key
    if schemes is None:
        schemes = {"own_init": own_init, **SCHEMES}
    elif not isinstance(schemes, Mapping):
        if isinstance(schemes, str):
            raise TypeError("doctor: schemes must be a sequence of names, not one string")
        schemes = {s: resolve_scheme(s) for s in schemes}
    if not schemes:
        raise ValueError("doctor: schemes is empty")
    own, _, kwargs = model_outputs(model, x, call_kwargs=call_kwargs, key=key)

    def evaluate(variables: Any) -> HealthReport:
        if framework == "nnx":
            target, linen_variables = nnx.merge(nnx.graphdef(model), variables, copy=True), None
        else:
            target, linen_variables = model, variables
        try:
            report = health_report(
                target,
                x,
                labels,
                variables=linen_variables,
                activation=activation,
                loss_fn=loss_fn,
                thresholds=thresholds,
                call_kwargs=kwargs,
            )
        except Exception as error:
            raise DoctorError(
                f"health_report cannot diagnose this model: {_first_line(error)}"
            ) from error
        if not report.profile:
            raise DoctorError(
                "the diagnostics see no linear layer in this model (Dense, Conv, Einsum, "
                "attention projections, outside nn.scan): there is no signal to follow"
            )
        return report

    reports: dict[str, HealthReport] = {}
    own_report = None
    has_own = scheme_is(schemes.get("own_init"), own_init)
    need_gain = any(scheme_is(s, orthogonal_with_gain) for s in schemes.values())
    if has_own or (need_gain and _activation_of(model, activation, None) is None):
        own_report = evaluate(own)  # its records name the nonlinearity for the gain
    act = _activation_of(model, activation, own_report)
    case = Case(model, own, x, labels, kwargs, act)
    variables: dict[str, Any] = {}
    # QR/SVD-based inits call LAPACK eagerly: keep OpenBLAS from fighting XLA's threads.
    with blas_single_threaded():
        for name, scheme in schemes.items():
            try:
                variables[name] = scheme(case, key)
            except DoctorError:
                raise
            except Exception as error:
                raise DoctorError(f"the scheme {name} failed: {_first_line(error)}") from error
    for name, v in variables.items():
        if name == "own_init" and has_own and own_report is not None:
            reports[name] = own_report
        else:
            reports[name] = evaluate(v)
    notes = []
    if need_gain:
        gain = _gain(act)
        where = "no nonlinearity declared or seen" if act is None else f"for {_act_name(act)}"
        notes.append(f"orthogonal: gain {gain:.4g} ({where})")
    return DoctorReport(model, reports, variables, kwargs, tuple(notes))


def scheme_is(scheme: Any, target: Any) -> bool:
    """Whether ``scheme`` is ``target`` (a function), also through ``functools.partial``."""
    while isinstance(scheme, functools.partial):
        scheme = scheme.func
    return scheme is target


def _act_name(act: Any) -> str:
    try:
        return nonlinearity(act).name
    except (ValueError, TypeError):
        return str(act)


def _histogram_samples(report: DoctorReport, name: str, x: Any) -> dict[str, np.ndarray]:
    """The first, middle and last activation layers' outputs; without activation layers,
    those of the linear layers with the nonlinearity their record names applied (declared
    or inferred; through no norm), else the linear outputs themselves."""
    health = report.reports[name]
    sites = [r for r in health.activations if r.kind == "activation"] or list(health.profile)
    chosen = list(dict.fromkeys([sites[0], sites[len(sites) // 2], sites[-1]]))
    if isinstance(report.model, nnx.Module):
        model, variables = report.initialized(name), None
    else:
        model, variables = report.model, report.variables[name]
    values = activation_values(model, x, variables=variables, call_kwargs=report.call_kwargs)
    samples = {}
    for r in chosen:
        value, label = values[r.path], f"layer {r.depth} ({r.path})"
        if r.kind == "linear" and r.activation is not None and r.normalized_by is None:
            value, label = nonlinearity(r.activation).fn(value), f"{label[:-1]}, {r.activation})"
        samples[label] = np.asarray(value)
    return samples


def write_plots(
    report: DoctorReport, x: Any, out: pathlib.Path, fmt: str, title: str
) -> list[pathlib.Path]:
    """Depth profiles and activation histograms of every scheme, into ``out``."""
    depth = plot_depth_profiles(report.reports, out / f"depth_profile.{fmt}", title=title)
    samples = {name: _histogram_samples(report, name, x) for name in report.reports}
    hist = plot_activation_histograms(samples, out / f"histograms.{fmt}", title=title)
    return [depth, hist]


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


# ----------------------------------------------------------------------- command line


def load_model(spec: str) -> Any:
    """The model named by ``MODULE:NAME``: an instance, or what a zero-argument callable
    returns. ``NAME`` may be dotted (``models:Factory.small``).

    Raises :class:`DoctorError` when the module cannot be imported, has no ``NAME``, or
    ``NAME`` is neither a Linen or NNX model nor a callable returning one.

    Example:
      >>> from flaxinit.diagnostics.doctor import load_model
      >>> type(load_model("flaxinit.models:MLP")).__name__
      'MLP'
    """
    module_name, sep, name = spec.partition(":")
    if not sep or not module_name or not name:
        raise DoctorError(
            f"--model must be {', '.join(MODELS)} or MODULE:NAME (e.g. mypkg.models:ResNet18), "
            f"got {spec!r}"
        )
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        if error.name and module_name.startswith(error.name):
            raise DoctorError(
                f"cannot import module {module_name!r} (--model {spec}): no module named "
                f"{error.name!r}; is it on sys.path (run from its folder, or set PYTHONPATH)?"
            ) from error
        raise DoctorError(
            f"importing module {module_name!r} (--model {spec}) failed: {_first_line(error)}"
        ) from error
    except Exception as error:
        raise DoctorError(
            f"importing module {module_name!r} (--model {spec}) failed: {_first_line(error)}"
        ) from error
    obj: Any = module
    for part in name.split("."):
        if not hasattr(obj, part):
            raise DoctorError(f"module {module_name!r} has no attribute {name!r} (--model {spec})")
        obj = getattr(obj, part)
    if isinstance(obj, (nn.Module, nnx.Module)):
        return obj
    if not callable(obj):
        raise DoctorError(
            f"{spec} is an object of type {type(obj).__name__}, not a Linen or NNX model nor "
            "a zero-argument callable returning one"
        )
    try:
        made = obj()
    except Exception as error:
        raise DoctorError(
            f"{spec} is not a model, and calling it with no arguments failed: {_first_line(error)}"
        ) from error
    if not isinstance(made, (nn.Module, nnx.Module)):
        raise DoctorError(
            f"{spec}() returned an object of type {type(made).__name__}, not a Linen or NNX model"
        )
    return made


def parse_shape(text: str) -> tuple[int, ...]:
    """``(8, 224, 224, 3)`` from ``"8,224,224,3"`` (brackets and spaces allowed).

    Example:
      >>> from flaxinit.diagnostics.doctor import parse_shape
      >>> parse_shape("8,224,224,3"), parse_shape("(4, 16)")
      ((8, 224, 224, 3), (4, 16))
    """
    body = text.strip().strip("()[]").strip()
    parts = [p.strip() for p in body.split(",")]
    if parts and parts[-1] == "" and len(parts) > 1:
        parts.pop()  # "8," is a 1-tuple
    try:
        shape = tuple(int(p) for p in parts)
    except ValueError:
        shape = ()
    if not shape or any(n < 1 for n in shape):
        raise DoctorError(
            f"--input-shape must be positive integers separated by commas, the batch first "
            f"(e.g. 8,224,224,3), got {text!r}"
        )
    return shape


def parse_call_kwargs(text: str) -> dict[str, Any]:
    """``{"train": False, "mutable": ["batch_stats"]}`` from
    ``"train=False,mutable=['batch_stats']"``: Python keyword syntax, literal values.

    Example:
      >>> from flaxinit.diagnostics.doctor import parse_call_kwargs
      >>> parse_call_kwargs("train=False, dropout_rate=0.1, mutable=['batch_stats']")
      {'train': False, 'dropout_rate': 0.1, 'mutable': ['batch_stats']}
    """
    bad = (
        "--call-kwargs must be NAME=VALUE pairs separated by commas, each VALUE a Python "
        f"literal (e.g. train=False,deterministic=True), got {text!r}"
    )
    try:
        call = ast.parse(f"f({text})", mode="eval").body
    except SyntaxError:
        raise DoctorError(bad) from None
    if not isinstance(call, ast.Call) or call.args or any(k.arg is None for k in call.keywords):
        raise DoctorError(bad)
    out = {}
    for keyword in call.keywords:
        try:
            out[keyword.arg] = ast.literal_eval(keyword.value)
        except (ValueError, TypeError, SyntaxError):
            raise DoctorError(
                f"--call-kwargs: the value of {keyword.arg} is not a Python literal: "
                f"{ast.unparse(keyword.value)} (strings need quotes: name='x')"
            ) from None
    return out


def _load_array(path: str, flag: str) -> np.ndarray:
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError) as error:
        raise DoctorError(f"{flag}: cannot load {path!r}: {_first_line(error)}") from error


_USER_ONLY = ("input_shape", "input_dtype", "vocab", "call_kwargs", "data", "labels")
_BUILTIN_ONLY = ("depth", "width")


def _flag(dest: str) -> str:
    return "--" + dest.replace("_", "-")


def user_batch(args: argparse.Namespace, key: jax.Array) -> tuple[Any, Any, str]:
    """The inputs, the labels spec (an array, ``"random"`` or None) and a description of
    the data for a ``MODULE:NAME`` model, from the command line's arguments."""
    shape = parse_shape(args.input_shape) if args.input_shape is not None else None
    dtype = args.input_dtype
    data = args.data or "random"
    if data == "random":
        if shape is None:
            raise DoctorError(
                f"--input-shape is needed for --model {args.model} with random data "
                "(the batch first, e.g. --input-shape 8,224,224,3)"
            )
        if args.batch is not None and args.batch != shape[0]:
            raise DoctorError(
                f"--batch {args.batch} differs from the batch of --input-shape {shape}"
            )
        if dtype == "int32":
            if args.vocab is None:
                raise DoctorError("--input-dtype int32 needs --vocab (inputs in [0, vocab))")
            x = jax.random.randint(jax.random.fold_in(key, 1), shape, 0, args.vocab, jnp.int32)
            what = f"random integers in [0, {args.vocab}) of shape {shape}"
        else:
            x = jax.random.normal(jax.random.fold_in(key, 1), shape, jnp.float32)
            what = f"random N(0, 1) inputs of shape {shape}"
        return x, args.labels or "random", what
    if data == "digits":
        batch = shape[0] if shape is not None else (args.batch or 512)
        x, y = digits(batch, seed=args.seed)
        if shape is not None:
            if math.prod(shape[1:]) != x.shape[1]:
                raise DoctorError(
                    f"--input-shape {shape}: a digit has 64 pixels, which cannot take the "
                    f"shape {shape[1:]}"
                )
            x = x.reshape(shape)
        if dtype == "int32":
            raise DoctorError("--input-dtype int32 does not apply to --data digits (floats)")
        what = f"{batch} scikit-learn digits (standardized, shape {tuple(x.shape)})"
        return x, args.labels or y, what
    array = _load_array(data, "--data")
    if array.ndim < 1 or len(array) < 2:
        raise DoctorError(f"--data {data}: need an array of at least 2 rows, got {array.shape}")
    rows = min(len(array), args.batch or 512)
    x = array[:rows]
    if shape is not None and tuple(x.shape) != shape:
        raise DoctorError(
            f"--input-shape {shape} differs from the batch of --data {data}: "
            f"{tuple(x.shape)} (its first {rows} rows)"
        )
    if dtype is not None:
        x = x.astype(dtype)
    what = f"the first {rows} rows of {data} (shape {tuple(x.shape)} {x.dtype})"
    return jnp.asarray(x), args.labels or "random", what


def make_labels(labels: Any, outputs: Any, rows: int, key: jax.Array) -> tuple[Any, str]:
    """Labels for the loss, and a description: an array as given (``FILE.npy``: its
    first ``rows`` rows), ``"none"``, or ``"random"``: integers in ``[0, classes)`` for
    the first floating output ``(..., classes)`` (tree order: ``logits`` of
    ``(logits, cache)``), N(0, 1) floats if it has a single class."""
    if labels is None or (isinstance(labels, str) and labels == "none"):
        return None, "no labels (no gradients)"
    if isinstance(labels, str) and labels != "random":
        array = _load_array(labels, "--labels")
        if array.ndim < 1 or len(array) < rows:
            raise DoctorError(
                f"--labels {labels}: need at least {rows} rows (the batch), got shape {array.shape}"
            )
        return jnp.asarray(array[:rows]), f"labels from {labels}"
    if not isinstance(labels, str):
        return jnp.asarray(labels), "their classes as labels"
    leaves = jax.tree_util.tree_flatten_with_path(outputs)[0]
    floats = [
        (kp, leaf)
        for kp, leaf in leaves
        if jnp.issubdtype(leaf.dtype, jnp.floating) and len(leaf.shape) >= 1
    ]
    if not floats:
        raise DoctorError(
            "--labels random: the model returns no floating array to draw labels for; "
            "give --labels FILE.npy or --labels none"
        )
    kp, out = floats[0]
    where = f"output{jax.tree_util.keystr(kp)}" if len(leaves) > 1 else "output"
    if out.shape[-1] == 1 or len(out.shape) == 1:
        y = jax.random.normal(jax.random.fold_in(key, 2), out.shape, jnp.float32)
        return y, f"random N(0, 1) targets for the {where} {tuple(out.shape)} (squared error)"
    classes = out.shape[-1]
    y = jax.random.randint(jax.random.fold_in(key, 2), out.shape[:-1], 0, classes, jnp.int32)
    return y, (
        f"random labels in [0, {classes}) for the {where} {tuple(out.shape)} (cross-entropy)"
    )


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line on stderr (exit status 2)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        print(f"doctor: {message} (see --help)", file=sys.stderr)
        raise SystemExit(2)


def parser() -> argparse.ArgumentParser:
    """The command line's argument parser."""
    p = _Parser(
        prog="python -m flaxinit.doctor",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=(
            "examples:\n"
            "  python -m flaxinit.doctor                  # compare the schemes, write plots\n"
            "  python -m flaxinit.doctor --init he_normal # one scheme's per-layer table\n"
            "  python -m flaxinit.doctor --model cnn --activation tanh --init orthogonal:1.67\n"
            "  python -m flaxinit.doctor --model mypkg.models:ResNet18 --input-shape 8,32,32,3 "
            "--call-kwargs train=False\n"
            "  python -m flaxinit.doctor --model mypkg.lm:make_model --input-shape 4,128 "
            "--input-dtype int32 --vocab 32000"
        ),
    )
    p.add_argument(
        "--model",
        default="mlp",
        metavar="MODEL",
        help="a built-in model (mlp, cnn, gpt; default mlp) or yours as MODULE:NAME: a Linen "
        "or NNX model, or a zero-argument callable returning one",
    )
    p.add_argument(
        "--init",
        action="append",
        metavar="SPEC",
        help="a scheme (" + ", ".join(["own_init", *SCHEMES]) + ") or a catalogue initializer, "
        "e.g. he_normal, normal:0.01, orthogonal:1.414; repeatable (default: all schemes; "
        "with MODULE:NAME own_init first)",
    )
    p.add_argument(
        "--depth", type=_positive, help="built-in: layers (mlp 30, cnn 8), blocks (gpt 4)"
    )
    p.add_argument("--width", type=_positive, help="built-in: units, channels, width (256/32/64)")
    p.add_argument(
        "--activation",
        help="a jax.nn name: relu, tanh, gelu, ... (built-in: its nonlinearity, relu; gpt "
        "gelu. MODULE:NAME: declared for every linear layer but the last, before the "
        "one read from the model's computation)",
    )
    p.add_argument(
        "--batch",
        type=_positive,
        help="examples in the batch (512): digits, or rows of --data FILE.npy",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the weights and the batch (0)")
    group = p.add_argument_group("your model (--model MODULE:NAME)")
    group.add_argument(
        "--input-shape", metavar="SHAPE", help="the input's shape, batch first: 8,224,224,3"
    )
    group.add_argument(
        "--input-dtype",
        metavar="DTYPE",
        help="float32 (default: N(0, 1) inputs) or int32 (integers in [0, --vocab))",
    )
    group.add_argument("--vocab", type=_positive, help="with --input-dtype int32: the range")
    group.add_argument(
        "--call-kwargs",
        metavar="KW",
        help="keyword arguments of __call__ as Python literals: train=False,deterministic=True",
    )
    group.add_argument(
        "--data",
        metavar="DATA",
        help="random (default), digits (512x64 floats), or FILE.npy (its first --batch rows)",
    )
    group.add_argument(
        "--labels",
        metavar="LABELS",
        help="random (default: integers in [0, outputs)), FILE.npy (its first rows), or none "
        "(no gradients); with --data digits, their classes",
    )
    p.add_argument(
        "--out",
        type=pathlib.Path,
        default=pathlib.Path("results/doctor"),
        help="folder for the plots (results/doctor)",
    )
    p.add_argument("--format", choices=("png", "svg"), default="png", help="plot format")
    p.add_argument("--no-plots", action="store_true", help="skip the plots")
    p.add_argument("--details", action="store_true", help="per-layer table for every scheme")
    return p


def _check_flags(args: argparse.Namespace, user: bool) -> None:
    if args.input_dtype is not None and args.input_dtype not in ("float32", "int32"):
        raise DoctorError(f"--input-dtype must be float32 or int32, got {args.input_dtype!r}")
    wrong = _BUILTIN_ONLY if user else _USER_ONLY
    given = [_flag(d) for d in wrong if getattr(args, d) is not None]
    verb = "applies" if len(given) == 1 else "apply"
    if given and user:
        raise DoctorError(
            f"{', '.join(given)} {verb} to the built-in models only, not to --model {args.model}"
        )
    if given:
        raise DoctorError(
            f"{', '.join(given)} {verb} to a model given as MODULE:NAME, not to the built-in "
            f"{args.model!r}"
        )


def _setup(args: argparse.Namespace, key: jax.Array) -> tuple[Any, Batch, str, dict]:
    """The model, its batch, a description and the call's keyword arguments."""
    user = args.model not in MODELS
    _check_flags(args, user)
    if not user:
        depth, width, activation = _DEFAULTS[args.model]
        depth, width = args.depth or depth, args.width or width
        activation = args.activation or activation
        nonlinearity(activation)  # an unknown name fails here, not deep inside init
        model, batch, what = build(
            args.model, depth, width, activation, args.batch or 512, args.seed
        )
        return model, batch, what, {}
    if args.activation is not None:
        nonlinearity(args.activation)
    kwargs = parse_call_kwargs(args.call_kwargs) if args.call_kwargs is not None else {}
    model = load_model(args.model)
    x, labels, data = user_batch(args, key)
    _, outputs, _ = model_outputs(model, x, call_kwargs=kwargs, key=key)
    y, labelled = make_labels(labels, outputs, x.shape[0], key)
    kind = "a Linen" if isinstance(model, nn.Module) else "an NNX"
    what = f"{args.model} ({kind} {type(model).__name__}) on {data}; {labelled}"
    if kwargs:
        what += "; called with " + ", ".join(f"{k}={v!r}" for k, v in kwargs.items())
    return model, (x, y), what, kwargs


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the doctor; returns the exit code (0, or 2 for bad arguments or a model it
    cannot diagnose, with one line on stderr saying why)."""
    start = time.perf_counter()
    try:
        args = parser().parse_args(argv)
    except SystemExit as exit_:
        return exit_.code if isinstance(exit_.code, int) else 2
    key = jax.random.key(args.seed)
    try:
        model, (x, y), what, kwargs = _setup(args, key)
        user = args.model not in MODELS
        if args.init:
            schemes = {s: resolve_scheme(s) for s in args.init}
        else:
            schemes = {"own_init": own_init, **SCHEMES} if user else dict(SCHEMES)
        activation = args.activation if user else None
        report = doctor(
            model, (x, y), schemes=schemes, call_kwargs=kwargs, key=key, activation=activation
        )
    except (ValueError, TypeError) as error:
        message = str(error).strip().splitlines()[0] if str(error).strip() else repr(error)
        print(f"doctor: {message.removeprefix('doctor: ')}", file=sys.stderr)
        return 2

    print(f"flaxinit doctor: {what}.")
    print(
        "Before any training: the std of each linear layer's output (forward signal) and the "
        "RMS of the loss gradient reaching it (backward signal), at the first, middle and last "
        "hidden layer. A ratio near 1 keeps the signal; below 0.01 or above 100 it is lost.\n"
    )
    for note in report.notes if user else ():
        print(f"Note: {note}.")
    if user and report.notes:
        print()
    if len(report.reports) == 1 or args.details:
        for name, health in report.reports.items():
            print(f"== {name} ==\n{health}\n")
    print(report)
    if not args.no_plots:
        title = what[0].upper() + what[1:]
        if user:
            title = title.split(";")[0]
        paths = write_plots(report, x, args.out, args.format, title)
        print("\nPlots: " + ", ".join(str(p) for p in paths))
    if len(report.reports) > 1 and not args.details:
        print("Per-layer tables: add --details, or pick one scheme: --init he_normal")
    print(f"({time.perf_counter() - start:.1f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
