"""The cache of LSUV's compiled programs: a second ``lsuv`` call on the same model and
shapes (a new key, a new batch of the same shape) reuses them.

An entry is keyed on everything that decides what its program computes, by value:

* the model's definition: a Linen module by its type and dataclass fields (nested
  modules the same way), an NNX module by its ``GraphDef`` and the values of its
  static attributes; the classes' own methods by the globals they read;
* the variables' (NNX: the state's) tree structure, shapes and dtypes, the batch's,
  and the key's type;
* every option of :func:`~flaxinit.lsuv.lsuv` (target, tolerance, measure,
  activation, pre-init, selection, call keyword arguments, ...).

Functions are keyed by their code, defaults, captured values and the globals they
read, as the rules engine keys its programs (:func:`flaxinit.rules.program.fingerprint`):
a ``lambda`` rebuilt on each call is the same program, a changed captured value a new
one. A value compared by identity (a plain object, an array) could change between
calls without changing its key, so it makes the call uncached (compiled anew, as
before this cache) rather than risk a stale program. Array values (the batch, the
key, the variables) are always arguments of the compiled programs, never constants
in them. Shardings and weak types need no place in the key: ``jax.jit`` itself
compiles anew for a new one, and what LSUV decides while tracing depends on shapes
and dtypes only.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import threading
import types
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import numpy as np
from flax import nnx

from flaxinit.rules.program import global_names

__all__ = ["cache_info", "clear_cache"]

MAX_ENTRIES = 32
_ENTRIES: collections.OrderedDict[Any, Any] = collections.OrderedDict()
# The pre-init draws, keyed by the pre-init, the layers and their kernels' shapes.
PRE_INIT_PROGRAMS: collections.OrderedDict[Any, Any] = collections.OrderedDict()
_LOCK = threading.Lock()
# Counted when a program is traced (``fit``: the fitting pass, ``pre_init``: the
# pre-init draws) and when an entry is found or built: exact, for tests.
COUNTS: collections.Counter[str] = collections.Counter()
_LIBRARIES = ("jax", "jaxlib", "flax", "numpy", "optax", "chex", "builtins")


def clear_cache() -> None:
    """Forgets every compiled LSUV program (the next call compiles anew)."""
    with _LOCK:
        _ENTRIES.clear()
        PRE_INIT_PROGRAMS.clear()


def cache_info() -> dict[str, int]:
    """``entries`` held, and counts since import: ``hits``, ``misses`` (built
    entries), ``uncached`` (calls whose model or options could not be keyed by value),
    ``fit_traces`` and ``pre_init_traces`` (programs traced, hence compiled)."""
    return {
        "entries": len(_ENTRIES),
        "hits": COUNTS["hits"],
        "misses": COUNTS["misses"],
        "uncached": COUNTS["uncached"],
        "fit_traces": COUNTS["fit"],
        "pre_init_traces": COUNTS["pre_init"],
    }


def lookup(signature: Any, make: Callable[[], Any]) -> tuple[Any, Callable[[], None]]:
    """The entry for ``signature`` (built by ``make`` if new) and a ``commit`` to call
    once it has run without error: a failing call never leaves an entry behind."""
    if signature is None:
        COUNTS["uncached"] += 1
        return make(), lambda: None
    with _LOCK:
        entry = _ENTRIES.get(signature)
        if entry is not None:
            _ENTRIES.move_to_end(signature)
            COUNTS["hits"] += 1
            return entry, lambda: None
    entry = make()

    def commit():
        with _LOCK:
            COUNTS["misses"] += 1
            _ENTRIES[signature] = entry
            while len(_ENTRIES) > MAX_ENTRIES:
                _ENTRIES.popitem(last=False)

    return entry, commit


def avals(tree: Any) -> tuple:
    """The tree structure and each leaf's shape and dtype."""
    leaves, treedef = jax.tree.flatten(tree)
    return treedef, tuple((np.shape(x), str(jax.numpy.result_type(x))) for x in leaves)


def signature(*parts: Any) -> Any:
    """A hashable key of ``parts`` by value, or ``None`` if some part cannot be keyed
    by value (the call then runs uncached)."""
    try:
        key = fingerprint(parts)
        hash(key)
    except TypeError:
        return None
    return key


def _library(obj: Any) -> bool:
    """A top-level function of jax, flax, numpy...: the same object is the same code."""
    module = getattr(obj, "__module__", None) or ""
    qualname = getattr(obj, "__qualname__", "") or ""
    return module.split(".")[0] in _LIBRARIES and "<locals>" not in qualname


def fingerprint(obj: Any, depth: int = 0, memo: dict | None = None) -> Any:
    """A hashable key, equal for objects that compute the same (see the module
    docstring); raises ``TypeError`` for what can only be keyed by identity."""
    if depth > 32:
        raise TypeError("too deep to fingerprint")
    if memo is None:
        memo = {}
    if obj is None or isinstance(obj, (bool, int, float, complex, str, bytes, np.dtype)):
        return (type(obj), obj)
    if isinstance(obj, (tuple, list)):
        return (type(obj), tuple(fingerprint(x, depth + 1, memo) for x in obj))
    if isinstance(obj, (frozenset, set)):
        return (type(obj), frozenset(fingerprint(x, depth + 1, memo) for x in obj))
    if isinstance(obj, dict):
        items = sorted(obj.items(), key=lambda kv: repr(kv[0]))
        return (
            dict,
            tuple(
                (fingerprint(k, depth + 1, memo), fingerprint(v, depth + 1, memo)) for k, v in items
            ),
        )
    if isinstance(obj, nn.Module):
        return _linen_module(obj, depth, memo)
    if isinstance(obj, nnx.graphlib.GraphDef):
        return _graphdef(obj, depth, memo)
    if isinstance(obj, (types.ModuleType, type, types.BuiltinFunctionType)):
        return ("object", obj)
    if isinstance(obj, types.FunctionType):
        if _library(obj):
            return ("object", obj)
        return _memo(memo, obj, lambda: _function(obj, depth, memo))
    if isinstance(obj, types.MethodType):
        return (
            "method",
            fingerprint(obj.__self__, depth + 1, memo),
            fingerprint(obj.__func__, depth + 1, memo),
        )
    if isinstance(obj, functools.partial):
        kwargs = tuple(sorted(obj.keywords.items()))
        return ("partial", fingerprint((obj.func, obj.args, kwargs), depth + 1, memo))
    if isinstance(obj, (jax.custom_jvp, jax.custom_vjp)):
        # What LSUV runs is the primal function (it never differentiates).
        return ("custom", type(obj), fingerprint(obj.fun, depth + 1, memo))
    wrapped = getattr(obj, "__wrapped__", None)
    if isinstance(wrapped, types.FunctionType) and type(obj).__module__.startswith("jax"):
        return ("wrapped", type(obj).__name__, fingerprint(wrapped, depth + 1, memo))
    if dataclasses.is_dataclass(obj):
        fields = tuple(
            (f.name, fingerprint(getattr(obj, f.name), depth + 1, memo))
            for f in dataclasses.fields(obj)
            if f.compare
        )
        return (type(obj), fields)
    if type(obj).__hash__ is None or type(obj).__hash__ is object.__hash__:
        raise TypeError(f"{type(obj).__name__} is hashed by identity")
    hash(obj)
    return (type(obj), obj)


def _memo(memo: dict, obj: Any, make: Callable[[], Any]) -> Any:
    """``make()`` once per object within one fingerprint (a model repeats the same
    initializer in every layer); ``obj`` is kept alive so its id is not reused."""
    hit = memo.get(id(obj))
    if hit is None:
        hit = memo[id(obj)] = (obj, make())
    return hit[1]


def _function(fn: types.FunctionType, depth: int, memo: dict) -> tuple:
    cells = tuple(c.cell_contents for c in fn.__closure__ or ())
    kwdefaults = tuple(sorted((fn.__kwdefaults__ or {}).items()))
    return (
        "function",
        fn.__code__,
        fingerprint(fn.__defaults__, depth + 1, memo),
        fingerprint(kwdefaults, depth + 1, memo),
        fingerprint(cells, depth + 1, memo),
        _reads(fn, depth, memo),
    )


def _reads(fn: types.FunctionType, depth: int, memo: dict) -> tuple:
    """The globals ``fn``'s code reads; a global function, class or module by
    identity (rebinding the name gives a new object), as the rules engine does."""
    out = []
    for name in sorted(global_names(fn.__code__)):
        if name not in fn.__globals__:
            continue
        value = fn.__globals__[name]
        if isinstance(
            value, (types.FunctionType, types.ModuleType, type, types.BuiltinFunctionType)
        ):
            out.append((name, "object", id(value), value))
        else:
            out.append((name, fingerprint(value, depth + 1, memo)))
    return tuple(out)


@functools.lru_cache(maxsize=256)
def _class_code(cls: type) -> tuple:
    """The code of ``cls``'s own methods (outside the libraries) and what they read.

    Cached per class: the globals a method reads are looked up again each call
    (:func:`_class_reads`), only the list of methods is kept.
    """
    methods = []
    for klass in cls.__mro__:
        if klass.__module__.split(".")[0] in _LIBRARIES:
            continue
        for name, attr in sorted(vars(klass).items()):
            fn = attr
            if isinstance(fn, (staticmethod, classmethod)):
                fn = fn.__func__
            elif isinstance(fn, property):
                fn = fn.fget
            while isinstance(getattr(fn, "__wrapped__", None), types.FunctionType):
                fn = fn.__wrapped__
            if isinstance(fn, types.FunctionType):
                methods.append((klass.__qualname__, name, fn))
    return tuple(methods)


def _class_reads(cls: type, depth: int, memo: dict) -> tuple:
    return _memo(
        memo,
        cls,
        lambda: tuple(
            (where, name, fn.__code__, _reads(fn, depth, memo))
            for where, name, fn in _class_code(cls)
        ),
    )


def _linen_module(module: nn.Module, depth: int, memo: dict) -> tuple:
    if module.scope is not None:
        raise TypeError("a bound Linen module is keyed by identity")
    fields = tuple(
        (f.name, fingerprint(getattr(module, f.name), depth + 1, memo))
        for f in dataclasses.fields(module)
        if f.name != "parent"
    )
    return ("linen", type(module), _class_reads(type(module), depth, memo), fields)


def _graphdef(graphdef: Any, depth: int, memo: dict) -> tuple:
    """An NNX GraphDef: its own equality, plus its static attributes by value and the
    node classes' methods by what they read."""
    statics = []
    for name, attr in getattr(graphdef, "attributes", ()):
        if isinstance(attr, nnx.graphlib.Static):
            statics.append((name, fingerprint(attr.value, depth + 1, memo)))
    classes = {
        node.metadata
        for node in getattr(graphdef, "nodes", ())
        if isinstance(getattr(node, "metadata", None), type)
    }
    reads = tuple(
        (c.__module__, c.__qualname__, _class_reads(c, depth, memo))
        for c in sorted(classes, key=lambda c: (c.__module__, c.__qualname__))
    )
    return ("graphdef", graphdef, tuple(statics), reads)
