"""The probe: run a Linen or NNX model once and record, in execution order, every layer's output.

Every diagnostic is computed from one traced run of the model (:func:`run`), inside a single
``jax.jit``. The run records two kinds of *sites*:

* ``"linear"``: the output of every linear layer, i.e. the pre-activation. These are the
  types in :data:`flaxinit.inspection.LINEAR`: Linen ``Dense``, ``DenseGeneral``,
  ``Conv``, ``ConvLocal``, ``ConvTranspose``, ``Einsum``, ``Embed`` and NNX ``Linear``,
  ``LinearGeneral``, ``Conv``, ``ConvTranspose``, ``Einsum``, ``Embed``, subclasses
  included.
* ``"activation"``: the output of an :class:`Activation` (Linen) or :class:`NNXActivation`
  (NNX) layer, which wraps a nonlinearity.

A bare ``jax.nn.relu(x)`` call in a model's ``__call__`` is an ordinary function call
that no module sees. The probe reads it from the model's jaxpr instead
(:mod:`flaxinit.diagnostics.inferred`): each linear output gets the nonlinearity the
model applies to it, when one is applied to it alone (not to a residual sum, not inside
attention). A linear output's nonlinearity comes, in this order, from an activation
layer that takes it (recorded at that layer's own site), the ``activation=`` argument of
the diagnostics (applied to every linear output except the last: right for plain MLP and
CNN stacks, wrong inside attention blocks and where a residual is added before the
nonlinearity), or the jaxpr; the records say which (``activation_source``).

A normalization layer between a linear layer and its nonlinearity (``Dense -> LayerNorm
-> relu``, ``Conv -> BatchNorm -> relu``): the nonlinearity sees the norm's output, not
the linear one, and the two can differ completely (a norm re-centres and rescales every
example or channel, so ``relu(Dense)`` may be dead where ``relu(LayerNorm(Dense))`` is
not). So when a norm layer (:data:`flaxinit.inspection.NORMS`, subclasses included)
is called on a linear layer's output itself, that output's record takes the norm's
output as its pre-activation: the declared or inferred nonlinearity is applied to the
norm's output (the jaxpr walk starts there), and the record names the norm in
``normalized_by``. A chain of norms (``LayerNorm ->
BatchNorm``) takes the last one's output. The record's ``std`` and ``mean`` stay those of
the linear layer's own output, which is what the depth profile compares. A norm applied
to anything else (a residual sum, an activation: ``Dense -> relu -> LayerNorm``, pre-norm
transformer blocks) changes nothing. The alternative, refusing ``activation=`` on such
models, would turn away the stock ``Conv -> BatchNorm -> relu`` networks that this
measures exactly; only the residual case above stays approximate, as it is without norms.

How the values are taken: with :func:`flaxinit.inspection.tap`, the one inspection layer
of flaxinit (``nn.intercept_methods`` for Linen, a thread-safe class-level hook for NNX
that leaves nothing patched); the probe's recorder is the tap's callback.

Other behaviour:

* When a layer subclass calls ``super().__call__``, only the outermost call of a module
  instance is recorded.
* A layer called twice (shared weights) gives two sites with the same path.
* Layers inside ``nn.scan`` / ``nnx.scan`` / ``remat`` bodies are traced separately by those
  transforms. They cannot be probed this way: the run raises a ``ValueError`` naming the
  first such layer. Unroll them for diagnosis.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import re
from collections.abc import Callable, Hashable, Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from flax import nnx

from flaxinit import activations, inspection
from flaxinit.diagnostics import inferred

# Re-exported: the activation layers live with the selection they belong to.
from flaxinit.inspection import Activation as Activation
from flaxinit.inspection import NNXActivation as NNXActivation
from flaxinit.rules import paths


@dataclasses.dataclass(frozen=True)
class Nonlinearity:
    """A nonlinearity and its family.

    Attributes:
      name: the function's name, e.g. ``"relu"``.
      fn: the function.
      family: ``"rectifier"`` (exact zeros: relu, relu6), ``"saturating"`` (bounded: tanh,
        sigmoid, hard_tanh, soft_sign, hard_sigmoid) or ``None`` (gelu, silu, elu, ...:
        neither dead units nor saturation are defined for them).
      bounds: the output range ``(low, high)`` of a saturating nonlinearity.
    """

    name: str
    fn: Callable[[jax.Array], jax.Array]
    family: str | None
    bounds: tuple[float, float] | None = None


def nonlinearity(fn: str | Callable[[jax.Array], jax.Array]) -> Nonlinearity:
    """Classifies a nonlinearity given as a function or as a ``jax.nn`` / ``jax.numpy`` name.

    Classification is by name, in :mod:`flaxinit.activations` (aliases such as
    ``"swish"`` give the canonical name): ``functools.partial`` objects are unwrapped, and
    unknown names get family ``None``.

    Example:
      >>> from flaxinit.diagnostics import nonlinearity
      >>> nonlinearity("relu").family, nonlinearity(jnp.tanh).bounds
      ('rectifier', (-1.0, 1.0))
    """
    if isinstance(fn, str):
        try:
            found = activations.function(fn)
        except ValueError:
            raise ValueError(
                f"nonlinearity: no jax.nn or jax.numpy function named {fn!r}"
            ) from None
        info = activations.lookup(fn)
        name, fn = (fn if info is None else info.name), found
    elif callable(fn):
        inner = fn
        while isinstance(inner, functools.partial):
            inner = inner.func
        name = getattr(inner, "__name__", type(inner).__name__)
    else:
        raise TypeError(f"nonlinearity: expected a function or a name, got {fn!r}")
    info = activations.lookup(name)
    if info is None:
        return Nonlinearity(name, fn, None)
    return Nonlinearity(info.name, fn, info.family, info.bounds)


@dataclasses.dataclass(frozen=True)
class Site:
    """One recorded layer output: the module's path, its kind, its class and nonlinearity.

    ``normalized_by`` is the path of the norm layer called on this (linear) output, whose
    output is then the pre-activation; ``None`` when there is none. ``activation_layer``
    is the path of the :class:`Activation` / :class:`NNXActivation` layer called on this
    linear output (or on its norm's output), ``None`` when there is none.
    """

    path: str
    kind: str  # "linear" | "activation"
    module: str
    nonlinearity: Nonlinearity | None
    embedding: bool = False
    normalized_by: str | None = None
    activation_layer: str | None = None


def _site(module: Any, path: str) -> Site | None:
    name = type(module).__name__
    kind = inspection.kind_of(module)
    if kind == "activation":
        return Site(path or name, "activation", name, nonlinearity(module.fn))
    if kind == "linear":
        # Any Embed subclass (a Gemma-style Embedder) is a lookup, not a layer of depth.
        embedding = isinstance(module, inspection.EMBEDDINGS)
        return Site(path or name, "linear", name, None, embedding)
    return None


def _probed(module: Any, path: str) -> bool:
    """The probe's selection: linear and activation layers, and the norm layers that may
    sit between them."""
    del path
    return isinstance(module, inspection.LINEAR + inspection.ACTIVATIONS + inspection.NORMS)


class _Recorder:
    """The callback on the tap: a trace-time log of sites and their outputs."""

    def __init__(self, perturbations: Sequence[jax.Array] | None, mark: bool = False):
        self.perturbations = perturbations
        # mark: pass each linear output (and norm output taken from one) through a named
        # identity, so that inferred.inferred_nonlinearities finds it in the jaxpr.
        self.mark = mark
        self.sites: list[Site] = []
        self.outputs: list[jax.Array] = []
        # normed[k]: the output of the norm layer called on linear output k, or None.
        self.normed: list[jax.Array | None] = []
        # id of a linear output, or of a norm output taken from one -> (the array, k).
        self._feeds: dict[int, tuple[jax.Array, int]] = {}
        self.modules: tuple[str, ...] = ()  # set from the tap after the run

    def __call__(self, call: inspection.Call) -> tuple[Any, None]:
        module, path, out = call.module, call.site.path, call.output
        if call.site.kind == "norm":
            if not call.site.transformed:
                out = self._norm(path, call.args, call.kwargs, out)
            return out, None
        site = _site(module, path)
        if site is None or not isinstance(out, jax.Array):
            return out, None
        if not jnp.issubdtype(out.dtype, jnp.floating):
            return out, None
        if call.site.transformed:
            raise ValueError(
                f"diagnostics: layer {path!r} runs inside a JAX transform of the model "
                "(nn.scan, nnx.scan, nn.remat, vmap): its output cannot be recorded from "
                "outside that transform. Diagnose an unrolled copy of the model (e.g. the "
                "zoo's scan=False); weight_stats(..., layer_stacks=...) reads stacked weights "
                "per layer"
            )
        if self.perturbations is not None:
            # A zero added here: its gradient is dLoss/d(output) of this site.
            out = out + self.perturbations[len(self.outputs)]
        if site.kind == "activation":
            fed = self._fed(call.args, call.kwargs)
            if fed is not None and self.sites[fed].activation_layer is None:
                self.sites[fed] = dataclasses.replace(self.sites[fed], activation_layer=path)
        elif self.mark:
            out = inferred.marker(inferred.SITE, len(self.outputs))(out)
        self.sites.append(site)
        self.outputs.append(out)
        self.normed.append(None)
        if site.kind == "linear":
            self._feeds[id(out)] = (out, len(self.outputs) - 1)
        return out, None

    def _fed(self, args, kwargs) -> int | None:
        """The linear site whose output (or norm output taken from it) is the call's input."""
        x = args[0] if args else kwargs.get("x", kwargs.get("inputs"))
        fed = self._feeds.get(id(x))
        return None if fed is None or fed[0] is not x else fed[1]

    def _norm(self, path: str, args, kwargs, out: Any) -> Any:
        """Records a norm layer's output as the pre-activation of the linear output it
        takes, when it takes one (the very array, or a norm output taken from one).
        Returns the output, marked when marking."""
        k = self._fed(args, kwargs)
        if k is None or not isinstance(out, jax.Array):
            return out
        x = args[0] if args else kwargs.get("x", kwargs.get("inputs"))
        if self.normed[k] is not None and x is self.outputs[k]:
            return out  # a second norm on the same linear output: the first one is kept
        if self.mark:
            out = inferred.marker(inferred.NORM, k)(out)
        self.normed[k] = out
        self.sites[k] = dataclasses.replace(self.sites[k], normalized_by=path)
        self._feeds[id(out)] = (out, k)
        return out


@dataclasses.dataclass(frozen=True)
class Spec:
    """The static half of a probed model: hashable, so jitted passes are cached on it."""

    framework: str  # "linen" | "nnx"
    definition: Any  # the Linen module, or the NNX GraphDef
    activation: Nonlinearity | None
    loss_fn: Callable[[Any, Any], jax.Array] | None
    call_kwargs: tuple[tuple[str, Any], ...]


class _ByIdentity:
    """Hashes an unhashable spec by identity: no caching across calls, still one compile."""

    def __init__(self, spec: Spec):
        self.spec = spec


def prepare(
    model: Any,
    variables: Any = None,
    *,
    activation: str | Callable | None = None,
    loss_fn: Callable[[Any, Any], jax.Array] | None = None,
    call_kwargs: Mapping[str, Any] | None = None,
) -> tuple[Hashable, Any]:
    """Splits a model into a static spec and its dynamic state (Linen variables or NNX states).

    Linen models need ``variables`` (as returned by ``model.init``; a dict without a
    ``"params"`` key is taken to be the params). NNX models carry their own state and
    must not get ``variables``.
    """
    declared = None if activation is None else nonlinearity(activation)
    kwargs = tuple(sorted((call_kwargs or {}).items()))
    if isinstance(model, nn.Module):
        if variables is None:
            raise ValueError("a Linen model needs its variables: pass variables=model.init(...)")
        variables = dict(variables)
        if "params" not in variables:
            variables = {"params": variables}
        spec = Spec("linen", model, declared, loss_fn, kwargs)
        dynamic = variables
    elif isinstance(model, nnx.Module):
        if variables is not None:
            raise ValueError("an NNX model carries its own state: do not pass variables")
        graphdef, params, rest = nnx.split(model, nnx.Param, ...)
        spec = Spec("nnx", graphdef, declared, loss_fn, kwargs)
        dynamic = (params, rest)
    else:
        raise TypeError(f"expected a flax.linen or flax.nnx Module, got {type(model).__name__}")
    try:
        hash(spec)
    except TypeError:
        return _ByIdentity(spec), dynamic
    return spec, dynamic


def unwrap(spec: Hashable) -> Spec:
    """The :class:`Spec` behind :func:`prepare`'s first result."""
    return spec.spec if isinstance(spec, _ByIdentity) else spec


def params_of(spec: Spec, dynamic: Any) -> Any:
    """The trainable parameters: Linen ``variables["params"]``, or the NNX ``Param`` state."""
    return dynamic["params"] if spec.framework == "linen" else dynamic[0]


def _forward(spec: Spec, dynamic: Any, params: Any, x: Any, rec: _Recorder) -> Any:
    kwargs = dict(spec.call_kwargs)
    if spec.framework == "linen":
        tapped = inspection.tap(
            spec.definition,
            x,
            variables={**dynamic, "params": params},
            select=_probed,
            callback=rec,
            call_kwargs=kwargs,
        )
        rec.modules = tapped.modules
        return tapped.output[0] if "mutable" in kwargs else tapped.output
    # copy=True: Variables of this trace. The state in ``dynamic`` belongs to the trace
    # that received it; a nested one (eval_shape, grad) could neither update it (BatchNorm
    # statistics, dropout RNG counts) nor hand it to nnx.scan.
    model = nnx.merge(spec.definition, params, dynamic[1], copy=True)
    tapped = inspection.tap(model, x, select=_probed, callback=rec, call_kwargs=kwargs)
    rec.modules = tapped.modules
    return tapped.output


def _fits(output: Any, labels: jax.Array) -> bool:
    """Whether ``output`` can be the predictions for ``labels`` under the default loss."""
    if not isinstance(output, jax.Array) or not jnp.issubdtype(output.dtype, jnp.floating):
        return False
    if jnp.issubdtype(labels.dtype, jnp.integer):
        return output.ndim == labels.ndim + 1 and output.shape[:-1] == labels.shape
    return output.shape == labels.shape


def predictions(outputs: Any, labels: Any) -> jax.Array:
    """The output the default loss compares with ``labels``: the one that fits them.

    A model may return one array or several (``(logits, cache)``, a dict, ...). An
    output *fits* integer labels when it has their shape plus one class axis
    (``labels.shape + (classes,)``), and float labels when it has their shape. Exactly
    one floating array of ``outputs`` must fit. None fitting, or several (a
    ``(logits, hidden)`` pair whose shapes both fit), raises a ``ValueError`` that lists
    the outputs and asks for ``loss_fn=``: shapes alone cannot tell logits from
    features, and a float output of another shape would silently broadcast against the
    labels in the squared error.

    Example:
      >>> from flaxinit.diagnostics.probe import predictions
      >>> logits, cache = jnp.zeros((2, 5, 9)), jnp.zeros((2, 5, 4, 8))
      >>> predictions((logits, {"k": cache}), jnp.zeros((2, 5), jnp.int32)).shape
      (2, 5, 9)
    """
    labels = jnp.asarray(labels)
    leaves = jax.tree_util.tree_flatten_with_path(outputs)[0]
    fitting = [(kp, leaf) for kp, leaf in leaves if _fits(leaf, labels)]
    if len(fitting) == 1:
        return fitting[0][1]
    kind = "integer" if jnp.issubdtype(labels.dtype, jnp.integer) else "float"
    want = (
        f"their shape plus a class axis, ({''.join(f'{n}, ' for n in labels.shape)}classes)"
        if kind == "integer"
        else f"their own shape {labels.shape} (another would broadcast in the squared error)"
    )

    def describe(kp, leaf) -> str:
        where = jax.tree_util.keystr(kp)
        shape = getattr(leaf, "shape", None)
        what = f"{tuple(shape)} {leaf.dtype}" if shape is not None else type(leaf).__name__
        return f"{where} {what}" if where else what

    target = f"the labels {labels.shape} {labels.dtype}"
    if fitting:
        problem = (
            f"{len(fitting)} outputs fit {target}: "
            f"{', '.join(describe(kp, leaf) for kp, leaf in fitting)}; the default loss "
            "cannot tell which one holds the predictions"
        )
    elif len(leaves) == 1:
        problem = (
            f"the model's output {describe(*leaves[0])} does not fit {target}: {kind} labels "
            f"need an output of {want}"
        )
    else:
        listed = "; ".join(describe(kp, leaf) for kp, leaf in leaves[:8])
        more = f"; and {len(leaves) - 8} more" if len(leaves) > 8 else ""
        problem = (
            f"no output of the model fits {target} ({kind} labels need an output of "
            f"{want}); it returns {listed}{more}"
        )
    example = ""
    if len(leaves) > 1:
        pick = jax.tree_util.keystr((fitting or leaves)[0][0])
        example = (
            ", e.g. loss_fn=lambda outputs, labels: "
            f"flaxinit.diagnostics.default_loss(outputs{pick}, labels)"
        )
    raise ValueError(f"diagnostics: {problem}. Pass loss_fn=(outputs, labels) -> scalar{example}")


def default_loss(outputs: Any, labels: jax.Array) -> jax.Array:
    """Softmax cross-entropy for integer labels (mean over examples), else mean squared error.

    ``mean(-log softmax(outputs)[labels])`` or ``mean((outputs - labels)**2)``. The
    outputs may be several arrays (``(logits, cache)``): the one that fits the labels is
    used, see :func:`predictions`, which also refuses outputs that do not fit.
    """
    outputs = predictions(outputs, labels)
    if jnp.issubdtype(jnp.asarray(labels).dtype, jnp.integer):
        return optax.softmax_cross_entropy_with_integer_labels(outputs, labels).mean()
    return jnp.mean(jnp.square(outputs - labels))


@dataclasses.dataclass
class Capture:
    """What one probed run saw. Lives only inside a trace (its arrays may be tracers).

    ``deltas[k]`` is dLoss/d(outputs[k]); ``grads`` is dLoss/d(params). Both are ``None``
    without a loss. ``modules`` lists module paths in first-call order. ``normed[k]`` is
    the output of the norm layer called on linear output ``k`` (its pre-activation), or
    ``None``. ``inferred[k]`` is the nonlinearity the model's jaxpr applies to site
    ``k``'s pre-activation (see :mod:`flaxinit.diagnostics.inferred`), or ``None``.
    """

    sites: tuple[Site, ...]
    outputs: list[jax.Array]
    normed: list[jax.Array | None]
    deltas: list[jax.Array] | None
    params: Any
    grads: Any
    modules: tuple[str, ...]
    declared: Nonlinearity | None
    inferred: tuple[Nonlinearity | None, ...] = ()


def has_loss(spec: Spec, labels: Any) -> bool:
    """Whether a loss (hence gradients) is defined: labels were given, or a loss function."""
    return labels is not None or spec.loss_fn is not None


def run(
    spec: Hashable,
    dynamic: Any,
    x: Any,
    labels: Any = None,
    *,
    gradients: bool,
    infer: bool = True,
) -> Capture:
    """Runs the model once on ``x``, recording every site; with ``gradients``, also backward.

    The loss is ``loss_fn(outputs, labels)``, default :func:`default_loss`. Gradients with
    respect to each site's output come from zero perturbations added to it, which leaves
    the forward values unchanged. With ``infer``, each site's nonlinearity is read from
    the jaxpr (``Capture.inferred``); passes that need only the outputs skip it. Call this
    inside ``jax.jit``.
    """
    spec = unwrap(spec)
    params = params_of(spec, dynamic)
    if infer:
        shapes, found = _marked_trace(spec, dynamic, params, x)
    else:
        found = ()
        if gradients:
            shapes = jax.eval_shape(lambda p: _recorded_outputs(spec, dynamic, p, x), params)
    if not gradients:
        rec = _Recorder(None)
        _forward(spec, dynamic, params, x, rec)
        return Capture(
            tuple(rec.sites),
            rec.outputs,
            rec.normed,
            None,
            params,
            None,
            tuple(rec.modules),
            spec.activation,
            found,
        )
    loss_fn = spec.loss_fn or default_loss
    zeros = [jnp.zeros(s.shape, s.dtype) for s in shapes]
    recs: list[_Recorder] = []

    def loss(p, perturbations):
        rec = _Recorder(perturbations)
        recs.append(rec)
        out = _forward(spec, dynamic, p, x, rec)
        return loss_fn(out, labels), (rec.outputs, rec.normed)

    (_, (outputs, normed)), (grads, deltas) = jax.value_and_grad(
        loss, argnums=(0, 1), has_aux=True
    )(params, zeros)
    rec = recs[-1]
    return Capture(
        tuple(rec.sites),
        outputs,
        normed,
        deltas,
        params,
        grads,
        tuple(rec.modules),
        spec.activation,
        found,
    )


def _recorded_outputs(spec: Spec, dynamic: Any, params: Any, x: Any) -> list[jax.Array]:
    rec = _Recorder(None)
    _forward(spec, dynamic, params, x, rec)
    return rec.outputs


def _marked_trace(
    spec: Spec, dynamic: Any, params: Any, x: Any
) -> tuple[list[jax.ShapeDtypeStruct], tuple[Nonlinearity | None, ...]]:
    """One abstract trace of the forward pass with every linear output marked: the
    outputs' shapes, and per site the nonlinearity read from the jaxpr.

    Runs once per trace of the caller (the probe's passes are jitted, so once per
    compilation); it compiles nothing and costs nothing per call.
    """
    rec = _Recorder(None, mark=True)
    shapes: list[jax.ShapeDtypeStruct] = []

    def forward(dynamic, params, x):
        out = _forward(spec, dynamic, params, x, rec)
        # Shapes only: returning the outputs themselves would make every site an output
        # of the jaxpr, which the walk reads as "used elsewhere".
        shapes.extend(jax.ShapeDtypeStruct(o.shape, o.dtype) for o in rec.outputs)
        return out

    closed = jax.make_jaxpr(forward)(dynamic, params, x)
    found = inferred.inferred_nonlinearities(closed, len(rec.sites))
    return shapes, tuple(None if fn is None else nonlinearity(fn) for fn in found)


def blas_single_threaded() -> contextlib.AbstractContextManager:
    """Limits OpenBLAS to one thread while a pass runs, when ``threadpoolctl`` is installed.

    On CPU, jax's SVD calls LAPACK through scipy's multi-threaded OpenBLAS, whose threads
    busy-wait against XLA's own thread pool (the measurement is in
    ``benchmarks/README.md``, "Diagnostics"). ``threadpoolctl`` comes with scikit-learn;
    without it, this does nothing.
    """
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - depends on the environment
        return contextlib.nullcontext()
    return threadpool_limits(1, user_api="blas")


def path_str(keypath: Sequence[Any]) -> str:
    """``a/b/0/kernel`` from a jax key path; a trailing ``.value`` (NNX, boxes) is dropped."""
    return paths.path_str(keypath, drop_value=True)


def natural_key(path: str) -> tuple:
    """Sort key that puts ``layers/2`` before ``layers/10``."""
    return tuple(int(t) if t.isdigit() else t for t in re.split(r"(\d+)", path))


def module_rank(path: str, modules: Sequence[str]) -> int:
    """Position of a parameter's module (its path minus the last part) in first-call order.

    Parameters of modules that were never called rank after all called ones.
    """
    module = path.rpartition("/")[0]
    try:
        return modules.index(module)
    except ValueError:
        return len(modules)
