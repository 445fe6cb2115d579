"""Inspection: run a model once and see, or replace, chosen layers' outputs in execution order.

:func:`tap` is the one place where flaxinit looks inside a model. It runs a Linen or an
NNX model once, in the caller's trace (inside ``jax.jit`` it is traced once with the
rest), and calls ``callback(call)`` on the output of every selected layer. The callback
returns ``(output, record)``: ``output`` flows on through the model in place of the
layer's own (LSUV rescales outputs as they flow), and ``record`` (a pytree of arrays, or
``None`` for no site) comes back with the layer's :class:`Site`. The default callback,
:func:`observe`, passes the output on unchanged and records it.

Example:
  >>> import flax.linen as nn
  >>> from flaxinit import inspection
  >>> model = nn.Sequential([nn.Dense(4), nn.relu, nn.Dense(2)])
  >>> x = jnp.ones((3, 5))
  >>> variables = model.init(jax.random.key(0), x)
  >>> tapped = inspection.tap(model, x, variables=variables)
  >>> [(s.path, s.module, s.kind) for s in tapped.sites], [r.shape for r in tapped.records]
  ([('layers_0', 'Dense', 'linear'), ('layers_2', 'Dense', 'linear')], [(3, 4), (3, 2)])
  >>> def halve(call):  # replaces each output, records its std
  ...     return call.output / 2, call.output.std()
  >>> halved = inspection.tap(model, x, variables=variables, callback=halve)
  >>> bool(jnp.allclose(halved.output, tapped.output / 4))  # (y/2 ...) then /2 again
  True

Selection is a predicate ``select(module, path) -> bool`` on the module and its path
(``"blocks/2/mlp/fc1"``). The default, :func:`default_select`, takes the linear layers
(:data:`LINEAR`: Linen ``Dense``, ``DenseGeneral``, ``Conv``, ``ConvLocal``,
``ConvTranspose``, ``Einsum``, ``Embed``; NNX ``Linear``, ``LinearGeneral``, ``Conv``,
``ConvTranspose``, ``Einsum``, ``Embed``; subclasses included) and the :class:`Activation`
/ :class:`NNXActivation` layers that make a nonlinearity a layer (a bare ``nn.relu(x)`` is
a function call, not a layer: the tap does not see it; the diagnostics read it from the
model's jaxpr, :mod:`flaxinit.diagnostics.inferred`). Only ``__call__`` gives sites; a
module that calls ``super().__call__`` gives one site per call, the outermost.

How layers are seen:

* Linen: ``flax.linen.intercept_methods``.
* NNX has no interceptor (flax 0.12), so ``__call__`` of the model's module classes is
  wrapped while a tap runs: one wrapper per class, shared by every tap that needs it
  (counted under a lock) and removed when the last of them returns, raising or not. The
  wrapper hands a call to the taps active in the calling thread (a context variable):
  nested taps stack, and a model run meanwhile in another thread, tapped or not, sees
  only its own. Calls made from inside a tap's own callback are not seen by that tap.

Layers inside lifted transforms (``nn.scan``, ``nn.vmap``, ``nn.remat``, ``nnx.scan``,
``nnx.vmap``, ...): the callback gets the transform's tracers (``call.site.transformed``
is true) and its output flows on inside the transform. The record leaves through the
model's own variables, stacked by the transform (one slice per scan step, in front): in
Linen beside the layer's parameters in ``params``, or in ``intermediates`` where the
transform maps that collection; in NNX in a capture slot like ``nnx.capture``'s. A Linen
transform that broadcasts ``params`` and does not map ``intermediates`` cannot carry a
record out: the tap raises, naming the layers. So does a record that does not come back.
A transform that traces its body twice (``nn.scan`` does) keeps the sites of the trace
that ran.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import functools
import itertools
import re
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import flax.errors
import flax.linen as nn
import jax
from flax import nnx
from flax.core import scope as core_scope
from flax.core import tracers

__all__ = [
    "ACTIVATIONS",
    "EMBEDDINGS",
    "LINEAR",
    "NORMS",
    "Activation",
    "Call",
    "NNXActivation",
    "Site",
    "Tapped",
    "default_select",
    "kind_of",
    "observe",
    "tap",
]

LINEAR: tuple[type, ...] = (
    nn.Dense,
    nn.DenseGeneral,
    nn.Conv,
    nn.ConvLocal,
    nn.ConvTranspose,
    nn.Einsum,
    nn.Embed,
    nnx.Linear,
    nnx.LinearGeneral,
    nnx.Conv,
    nnx.ConvTranspose,
    nnx.Einsum,
    nnx.Embed,
)
"""The linear layers, Linen and NNX: the one list every part of flaxinit selects from."""

EMBEDDINGS: tuple[type, ...] = (nn.Embed, nnx.Embed)
"""The linear layers that are lookups (no kernel, no depth)."""

NORMS: tuple[type, ...] = (
    nn.LayerNorm,
    nn.BatchNorm,
    nn.RMSNorm,
    nn.GroupNorm,
    nn.InstanceNorm,
    nnx.LayerNorm,
    nnx.BatchNorm,
    nnx.RMSNorm,
    nnx.GroupNorm,
    nnx.InstanceNorm,
)
"""The normalization layers, Linen and NNX."""


class Activation(nn.Module):
    """A Linen layer that applies ``fn``: a nonlinearity that inspection can see.

    Example:
      >>> import flax.linen as nn
      >>> from flaxinit.diagnostics import Activation
      >>> net = nn.Sequential([nn.Dense(4), Activation(jax.nn.relu), nn.Dense(2)])
      >>> x = jnp.ones((1, 3))
      >>> calls = tap(net, x, variables=net.init(jax.random.key(0), x))
      >>> [site.kind for site in calls.sites]
      ['linear', 'activation', 'linear']
    """

    fn: Callable[[jax.Array], jax.Array] = jax.nn.relu

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        return self.fn(x)


class NNXActivation(nnx.Module):
    """An NNX layer that applies ``fn``: a nonlinearity that inspection can see.

    Example:
      >>> from flaxinit.diagnostics import NNXActivation
      >>> act = NNXActivation(jnp.tanh)
      >>> float(act(jnp.array(0.5))) == float(jnp.tanh(0.5)), kind_of(act)
      (True, 'activation')
    """

    def __init__(self, fn: Callable[[jax.Array], jax.Array] = jax.nn.relu):
        self.fn = fn

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.fn(x)


ACTIVATIONS: tuple[type, ...] = (Activation, NNXActivation)
"""The layers that wrap a nonlinearity."""


def kind_of(module: Any) -> str:
    """``"linear"``, ``"activation"``, ``"norm"`` or ``"other"``, by the module's class.

    Example:
      >>> from flax import nnx
      >>> kind_of(nnx.Linear(2, 3, rngs=nnx.Rngs(0))), kind_of(NNXActivation())
      ('linear', 'activation')
    """
    if isinstance(module, ACTIVATIONS):
        return "activation"
    if isinstance(module, LINEAR):
        return "linear"
    if isinstance(module, NORMS):
        return "norm"
    return "other"


def default_select(module: Any, path: str) -> bool:
    """The default selection: the linear layers and the activation layers."""
    del path
    return isinstance(module, LINEAR + ACTIVATIONS)


@dataclasses.dataclass(frozen=True)
class Site:
    """One call of a selected layer.

    Attributes:
      path: the module's path, ``/``-joined (``""`` for the model itself).
      module: the module's class name.
      kind: :func:`kind_of` the module.
      transformed: whether the layer ran inside a lifted transform of the model
        (``nn.scan``, ``nnx.vmap``, ...): its record is then stacked by the transform.
    """

    path: str
    module: str
    kind: str
    transformed: bool = False


@dataclasses.dataclass(frozen=True)
class Call:
    """What a callback gets: the site, the module, its inputs and output.

    ``layer(*args, **kwargs)`` calls the layer again (below this tap, which does not see
    it), e.g. at a zero input to read its bias as broadcast onto the output.
    """

    site: Site
    module: Any
    args: tuple[Any, ...]
    kwargs: Mapping[str, Any]
    output: Any
    layer: Callable[..., Any]


def observe(call: Call) -> tuple[Any, Any]:
    """The default callback: the output flows on unchanged and is recorded."""
    return call.output, call.output


@dataclasses.dataclass(frozen=True)
class Tapped:
    """What :func:`tap` saw.

    Attributes:
      output: what the model returned (for Linen, what ``apply`` returns with the
        ``mutable`` the caller passed).
      sites: the sites with a record, in execution order.
      records: ``records[k]`` is the record of ``sites[k]``.
      modules: the path of every module called, in first-call order (for NNX, those
        outside transforms).
    """

    output: Any
    sites: tuple[Site, ...]
    records: tuple[Any, ...]
    modules: tuple[str, ...]


jax.tree_util.register_dataclass(
    Tapped, data_fields=["output", "records"], meta_fields=["sites", "modules"]
)

_SERIAL = itertools.count()
_PREFIX = "__flaxinit_tap_"


class _Tap:
    """The trace-time state of one :func:`tap` run."""

    def __init__(self, select: Callable[[Any, str], bool], callback: Callable[[Call], Any]):
        self.select, self.callback = select, callback
        # The trace the model runs in: a call seen under another one is inside a transform.
        self.trace = tracers.current_trace()
        self.prefix = f"{_PREFIX}{next(_SERIAL)}_"
        self.entries: list[tuple[Site, Any, str | None]] = []  # (site, record, carry key)
        self.modules: list[str] = []
        self._seen: set[str] = set()
        self._active: set[int] = set()  # modules whose __call__ is running (super() calls)
        self.busy = False  # while the callback runs, its own calls pass by
        self.paths: dict[int, str] = {}  # NNX: id(module) -> path
        self.path_attr = self.prefix + "path"  # NNX: the path as a static attribute
        self.carry: Callable[..., None] = _carry_linen
        self.carried: dict[str, tuple[str, tuple[str, ...]]] = {}  # Linen: key -> where

    def saw(self, path: str) -> None:
        if path not in self._seen:
            self._seen.add(path)
            self.modules.append(path)

    def call(self, module: Any, path: str, layer: Callable, args: tuple, kwargs: dict) -> Any:
        """One call of ``module.__call__``; ``layer`` runs it (and the taps below)."""
        if not self.select(module, path) or id(module) in self._active:
            return layer(*args, **kwargs)
        self._active.add(id(module))
        try:
            out = layer(*args, **kwargs)
        finally:
            self._active.discard(id(module))
        transformed = tracers.current_trace() != self.trace
        site = Site(path, type(module).__name__, kind_of(module), transformed)
        self.busy = True
        try:
            result = self.callback(Call(site, module, args, kwargs, out, layer))
        finally:
            self.busy = False
        if not (isinstance(result, tuple) and len(result) == 2):
            raise TypeError(
                f"inspection: the callback must return (output, record) for layer "
                f"{path!r}, got {type(result).__name__}"
            )
        output, record = result
        if record is None:
            return output
        key = None
        if transformed:
            key = f"{self.prefix}{len(self.entries)}"
            self.carry(self, module, path, key, record)
            record = None
        self.entries.append((site, record, key))
        return output

    def linen(self, next_fun: Callable, args: tuple, kwargs: dict, ctx: Any) -> Any:
        """The ``nn.intercept_methods`` interceptor."""
        name = ctx.method_name
        if self.busy or name == "setup" or (name.startswith("_") and name != "__call__"):
            return next_fun(*args, **kwargs)
        path = "/".join(ctx.module.path)
        self.saw(path)
        if name != "__call__":
            return next_fun(*args, **kwargs)
        return self.call(ctx.module, path, _linen_layer(ctx.module, next_fun), args, kwargs)

    def nnx(self, module: Any, layer: Callable, *args: Any, **kwargs: Any) -> Any:
        """A call dispatched by the class-level NNX wrapper."""
        if self.busy:
            return layer(*args, **kwargs)
        path = self.paths.get(id(module))
        if path is not None:
            self.saw(path)
        else:  # a copy made by a transform carries its path as a static attribute
            path = getattr(module, self.path_attr, None)
            if path is None:
                path = type(module).__name__
        return self.call(module, path, layer, args, kwargs)

    def result(self, output: Any, found: Mapping[str, Any]) -> Tapped:
        """The sites with their records; carried ones looked up in ``found``."""
        sites, records, lost, kept = [], [], set(), set()
        for site, record, key in self.entries:
            if key is not None:
                if key not in found:  # a trace the transform discarded, or lost
                    lost.add(site.path)
                    continue
                record = found[key]
                kept.add(site.path)
            sites.append(site)
            records.append(record)
        if lost - kept:
            raise self.not_carried(sorted(lost - kept))
        return Tapped(output, tuple(sites), tuple(records), tuple(self.modules))

    def not_carried(self, paths: Sequence[str]) -> ValueError:
        return ValueError(
            f"inspection: the record of layer(s) {list(paths)} did not come back from "
            "the transform they run in (a transform that drops or broadcasts the "
            "model's state, e.g. nnx.vmap with the module at in_axes None); leave them "
            "out of the selection or tap an unrolled model"
        )

    def carried_paths(self, message: str) -> list[str]:
        """The layers whose carry keys an error message names."""
        found = re.findall(re.escape(self.prefix) + r"(\d+)", message)
        return sorted({self.entries[int(n)][0].path for n in found if int(n) < len(self.entries)})


# ---------------------------------------------------------------------------------------
# Linen
# ---------------------------------------------------------------------------------------


def _linen_layer(module: nn.Module, next_fun: Callable) -> Callable:
    """``next_fun``, callable again within the same call: a compact method reserves its
    variable names in the scope, which Flax rewinds only after the call, so a second
    run rewinds it first, as Flax does between two calls."""
    calls = 0

    def layer(*args, **kwargs):
        nonlocal calls
        calls += 1
        if calls > 1 and module.scope is not None:
            object.__setattr__(module, "scope", module.scope.rewound())
            module._state.autoname_cursor = {}
        return next_fun(*args, **kwargs)

    return layer


def _carry_linen(tap: _Tap, module: nn.Module, path: str, key: str, record: Any) -> None:
    """Stores a record made inside a lifted transform where the transform stacks it."""
    for col in ("intermediates", "params"):
        if module.is_mutable_collection(col):
            module.put_variable(col, key, record)
            tap.carried[key] = (col, tuple(module.path))
            return
    raise ValueError(
        f"inspection: layer {path!r} runs inside a lifted transform that maps neither "
        "'params' nor 'intermediates': its record cannot be carried out. Map one of them "
        "(variable_axes={'params': 0} or {'intermediates': 0})"
    )


def _strip(tree: Any, prefix: str) -> Any:
    """``tree`` without the keys that start with ``prefix`` (and dicts left empty)."""
    if not isinstance(tree, Mapping):
        return tree
    out = {}
    for k, v in tree.items():
        if isinstance(k, str) and k.startswith(prefix):
            continue
        v = _strip(v, prefix)
        if isinstance(v, Mapping) and not v and isinstance(tree[k], Mapping) and tree[k]:
            continue  # held only carried records
        out[k] = v
    return out


def _tap_linen(model: nn.Module, variables: Any, args: tuple, kwargs: dict, tap: _Tap) -> Tapped:
    kwargs = dict(kwargs)
    asked = kwargs.pop("mutable", False)
    # Carried records go to params or intermediates (see _carry_linen).
    mutable = core_scope.union_filters(asked, ["params", "intermediates"])
    if isinstance(mutable, set):
        mutable = sorted(mutable)
    with nn.intercept_methods(tap.linen):
        try:
            out, state = model.apply(variables, *args, mutable=mutable, **kwargs)
        except ValueError as err:
            if tap.carried and "broadcasted variable" in str(err):
                paths = sorted({"/".join(p) for _, p in tap.carried.values()})
                raise ValueError(
                    f"inspection: layer(s) {paths} run inside a lifted transform that "
                    "broadcasts 'params' and does not map 'intermediates': their records "
                    "cannot be carried out. Map 'intermediates' (variable_axes="
                    "{'intermediates': 0}) or tap an unrolled model"
                ) from err
            raise
    found = {}
    for key, (col, path) in tap.carried.items():
        node = state.get(col, {})
        for part in (*path, key):
            node = node.get(part) if isinstance(node, Mapping) else None
        if node is not None:
            found[key] = node
    if asked is False:
        return tap.result(out, found)
    state = {
        col: _strip(value, tap.prefix)
        for col, value in state.items()
        if core_scope.in_filter(asked, col)
    }
    return tap.result((out, {k: v for k, v in state.items() if v or k in variables}), found)


# ---------------------------------------------------------------------------------------
# NNX: one wrapper per class, dispatching to the calling thread's taps
# ---------------------------------------------------------------------------------------

_ACTIVE: contextvars.ContextVar[tuple[_Tap, ...]] = contextvars.ContextVar(
    "flaxinit_inspection_taps", default=()
)
_LOCK = threading.Lock()


@dataclasses.dataclass
class _Hook:
    original: Callable
    wrapper: Callable
    count: int = 0


_HOOKS: dict[type, _Hook] = {}


def _wrap(original: Callable) -> Callable:
    # updated=(): copying original.__dict__ would copy nnx.capture's own wrapper mark.
    @functools.wraps(original, updated=())
    def __call__(self, *args, **kwargs):
        taps = _ACTIVE.get()
        if not taps:
            return original(self, *args, **kwargs)
        fun = functools.partial(original, self)
        for tap in taps:  # the first entered sees the layer's own output, as in Linen
            fun = functools.partial(tap.nnx, self, fun)
        return fun(*args, **kwargs)

    return __call__


def _reaches(fn: Any, target: Callable) -> bool:
    """Whether ``target`` is ``fn`` or wrapped by it (another patch on top of ours)."""
    for _ in range(64):
        if fn is target:
            return True
        fn = getattr(fn, "__wrapped__", None)
        if fn is None:
            return False
    return False


def _acquire(cls: type) -> _Hook:
    current = cls.__dict__["__call__"]
    hook = _HOOKS.get(cls)
    if hook is None or not _reaches(current, hook.wrapper):
        hook = _Hook(current, _wrap(current))
        cls.__call__ = hook.wrapper
        _HOOKS[cls] = hook
    hook.count += 1
    return hook


def _release(cls: type, hook: _Hook) -> bool:
    """Drops one use of ``hook``; whether it was still in place."""
    hook.count -= 1
    current = cls.__dict__.get("__call__")
    in_place = _reaches(current, hook.wrapper)
    if hook.count == 0:
        if current is hook.wrapper:
            cls.__call__ = hook.original
        if _HOOKS.get(cls) is hook and (current is hook.wrapper or not in_place):
            del _HOOKS[cls]
        # else: someone patched on top of ours; it stays, inert, until they unpatch
    return in_place


@contextlib.contextmanager
def _hooked(classes: Sequence[type]):
    """``__call__`` of ``classes`` dispatches to the taps of the calling thread."""
    with _LOCK:
        hooks = [(cls, _acquire(cls)) for cls in classes]
    failed = True
    try:
        yield
        failed = False
    finally:
        with _LOCK:
            lost = [cls.__name__ for cls, hook in hooks if not _release(cls, hook)]
    if lost and not failed:
        raise RuntimeError(
            f"inspection: __call__ of {lost} was replaced while a tap ran (another patch "
            "undone out of order); the tap may have missed calls"
        )


class _Carried(nnx.Variable):
    """The capture slot of records made inside NNX transforms."""


def _carry_nnx(tap: _Tap, module: nnx.Module, path: str, key: str, record: Any) -> None:
    slots = getattr(module, "__captures__", ())
    if not any(type(v) is _Carried for v in slots) or getattr(module, tap.path_attr, None) is None:
        raise ValueError(
            f"inspection: layer {path!r} runs inside an NNX transform (nnx.scan, nnx.vmap, "
            "...) and its record cannot be carried out: the model was not reachable or "
            "could not be marked when the tap started (e.g. an NNX model closed over by "
            "jax.jit: pass it through nnx.jit, or split it and merge it inside)"
        )
    module.sow(_Carried, key, record)


@contextlib.contextmanager
def _marked(modules: Sequence[tuple[str, nnx.Module]], tap: _Tap):
    """Marks each module with its path (static, so transforms' copies keep it) and opens
    a capture slot for carried records; undoes both and collects the records."""
    marked, opened = [], []
    found: dict[str, Any] = {}
    try:
        for path, module in modules:
            if isinstance(module, nnx.List):
                # Its graph keys are ints: a str attribute would make them unsortable,
                # and a list is never called as a layer.
                continue
            try:
                setattr(module, tap.path_attr, path)
            except flax.errors.TraceContextError:
                break  # a model from another trace: no transform can carry records out
            marked.append(module)
            slots = getattr(module, "__captures__", None)
            if slots is None:
                module.__captures__ = nnx.data((_Carried({}),))
                opened.append((module, False))
            elif not any(type(v) is _Carried for v in slots):
                module.__captures__ = nnx.data((*slots, _Carried({})))
                opened.append((module, True))
        yield found
    finally:
        for module in marked:
            for slot in getattr(module, "__captures__", ()):
                if type(slot) is _Carried:
                    values = dict(slot.get_value())
                    for k in [k for k in values if k.startswith(tap.prefix)]:
                        found[k] = values.pop(k)[0]  # sow keeps a tuple of values
                    slot.set_value(values)
            delattr(module, tap.path_attr)
        for module, had in opened:
            if had:
                rest = tuple(v for v in module.__captures__ if type(v) is not _Carried)
                module.__captures__ = nnx.data(rest)
            else:
                delattr(module, "__captures__")


def _tap_nnx(model: nnx.Module, args: tuple, kwargs: dict, tap: _Tap) -> Tapped:
    modules = [("/".join(map(str, p)), m) for p, m in nnx.iter_modules(model)]
    tap.paths = {id(m): p for p, m in modules}
    tap.carry = _carry_nnx
    owners = {
        cls
        for _, m in modules
        for cls in type(m).__mro__
        if "__call__" in cls.__dict__ and issubclass(cls, nnx.Module)
    }
    with _marked(modules, tap) as found, _hooked(list(owners)):
        token = _ACTIVE.set((*_ACTIVE.get(), tap))
        try:
            out = model(*args, **kwargs)
        except ValueError as err:  # a transform that refuses to carry a record out
            paths = tap.carried_paths(str(err))
            if paths:
                raise tap.not_carried(paths) from err
            raise
        finally:
            _ACTIVE.reset(token)
    return tap.result(out, found)


# ---------------------------------------------------------------------------------------


def tap(
    model: Any,
    *args: Any,
    variables: Any = None,
    select: Callable[[Any, str], bool] | None = None,
    callback: Callable[[Call], tuple[Any, Any]] | None = None,
    call_kwargs: Mapping[str, Any] | None = None,
) -> Tapped:
    """Runs ``model`` once on ``args``, calling ``callback`` on each selected layer's output.

    Args:
      model: a ``flax.linen`` Module (with ``variables``) or a ``flax.nnx`` Module.
      *args: the model's positional arguments.
      variables: the Linen variables; ``None`` for NNX.
      select: ``select(module, path) -> bool``; default :func:`default_select`.
      callback: ``callback(call) -> (output, record)``; default :func:`observe`.
      call_kwargs: keyword arguments of ``model.apply`` (Linen: ``mutable``, ``rngs``,
        ``method`` and the model's own) or of the NNX model's call.

    Returns:
      A :class:`Tapped`: the model's output, the sites in execution order and their
      records.

    Example:
      >>> from flax import nnx
      >>> from flaxinit.inspection import tap
      >>> net = nnx.Sequential(nnx.Linear(3, 4, rngs=nnx.Rngs(0)), NNXActivation(jnp.tanh))
      >>> [(s.path, s.module, s.kind) for s in tap(net, jnp.ones((2, 3))).sites]
      [('layers/0', 'Linear', 'linear'), ('layers/1', 'NNXActivation', 'activation')]
    """
    run = _Tap(select or default_select, callback or observe)
    kwargs = dict(call_kwargs or {})
    if isinstance(model, nn.Module):
        if variables is None:
            raise ValueError("inspection: a Linen model needs its variables=")
        return _tap_linen(model, variables, args, kwargs, run)
    if isinstance(model, nnx.Module):
        if variables is not None:
            raise ValueError("inspection: an NNX model carries its own state: no variables=")
        return _tap_nnx(model, args, kwargs, run)
    raise TypeError(f"inspection: expected a flax.linen or flax.nnx Module, got {type(model)}")
