"""The random key of every rule on every leaf: one derivation, used everywhere.

With ``k`` the ``key`` given to ``apply_rules``, ``h(s) = zlib.crc32(s.encode())`` (a
stable 32-bit hash; never Python's salted ``hash``) and ``fold = jax.random.fold_in``,
the key rule ``r`` draws with on a leaf folds these constants (its *chain*) into ``k``,
in order:

* a leaf without a layer index: ``h(path)``, then ``tag(r)``;
* a leaf with one (``.../layers_3/...``, ``.../blocks/3/...``): ``h(canonical)``, the
  index, ``tag(r)``; ``canonical`` is the path with the index removed
  (``.../layers/...``, ``.../blocks/...``);
* slice ``i`` of a stacked leaf: ``h(path)``, ``i``, ``tag(r)``. A stacked leaf's path
  *is* the canonical path of its layers, so slice ``i`` gets the key (and the values)
  layer ``i`` gets in the unrolled model;
* ``tag(r) = h(f"{pattern}#{n}")``, ``n`` counting earlier rules with the same pattern:
  two rules on one leaf draw independently, and adding or removing a rule with another
  pattern does not change this rule's draws.

Invariants: a key depends on ``k`` and the path string only (never on other leaves, the
tree's order, the layout or jit), and :func:`derive_keys` gives every chain the same bits
whether it folds them one by one or vectorized.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from flaxinit.rules.actions import vmap_matches_loop
from flaxinit.rules.paths import LeafInfo

__all__ = ["check_key", "derive_keys", "key_chain", "stable_hash"]


def stable_hash(text: str) -> int:
    """A 32-bit hash of ``text`` that is the same in every process (CRC-32).

    Python's ``hash`` of a string is salted per process, so it cannot key draws.

    Example:
      >>> stable_hash("params/dense/kernel") == zlib.crc32(b"params/dense/kernel")
      True
      >>> stable_hash("params/dense/kernel") == stable_hash("params/dense/bias")
      False
    """
    return zlib.crc32(text.encode("utf-8"))


def check_key(key: Any) -> Any:
    """``key`` if it is None, one typed key or one legacy ``uint32`` key; else raises.

    Raises:
      TypeError: ``key`` is not a key.
      ValueError: ``key`` is an array of several keys.

    Example:
      >>> check_key(jax.random.key(0)).shape
      ()
      >>> check_key(jax.numpy.zeros(3))
      Traceback (most recent call last):
      ...
      TypeError: key must be a typed key (jax.random.key) or a legacy uint32 key (jax.random.PRNGKey), got an array of dtype float32 and shape (3,)
    """  # noqa: E501
    if key is None:
        return None
    if not hasattr(key, "dtype") or not hasattr(key, "shape"):
        raise TypeError(f"key must be a jax.random.key or PRNGKey, got {key!r}")
    if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        if key.shape != ():
            raise ValueError(f"key must be a single key, got a key array of shape {key.shape}")
        return key
    if key.dtype != jnp.uint32 or len(key.shape) != 1:
        raise TypeError(
            "key must be a typed key (jax.random.key) or a legacy uint32 key "
            f"(jax.random.PRNGKey), got an array of dtype {key.dtype} and shape {key.shape}"
        )
    return key


def key_chain(info: LeafInfo, tag: int, layer_slice: int | None = None) -> tuple[int, ...]:
    """The constants folded into the key for the rule with ``tag`` on ``info``'s leaf,
    or on its slice ``layer_slice`` when the rule runs layer by layer (module docstring).

    Example:
      >>> from flaxinit.rules.paths import flatten_tree
      >>> info = flatten_tree({"layers_3": {"w": np.zeros(2)}}).infos[0]
      >>> key_chain(info, tag=7) == (stable_hash("layers/w"), 3, 7)
      True
      >>> key_chain(info, tag=7, layer_slice=1) == (stable_hash("layers_3/w"), 1, 7)
      True
    """
    if layer_slice is not None:
        return (stable_hash(info.path), layer_slice, tag)
    if info.layer is not None:
        return (stable_hash(info.canonical), info.layer, tag)
    return (stable_hash(info.path), tag)


def _fold_chain(key: Any, chain: Sequence[Any]) -> Any:
    for constant in chain:
        key = jax.random.fold_in(key, constant)
    return key


def derive_keys(key: Any, requests: Sequence[Sequence[tuple[int, ...]]]) -> list[Any]:
    """Per request (a sequence of chains), ``key`` with each of its chains folded in, in
    order, stacked: an array of ``len(request)`` keys.

    Chains of one length are folded in one vectorized computation, so a program with
    many rules and leaves holds a few fold-in chains instead of one per draw (XLA
    compiles each unrolled threefry chain on its own). Where ``vmap`` would draw
    differently from a loop (rbg keys) each chain is folded on its own.

    Example:
      >>> k = jax.random.key(0)
      >>> one, layers = derive_keys(k, [[(5, 9)], [(5, 0, 9), (5, 1, 9)]])
      >>> one.shape, layers.shape
      ((1,), (2,))
      >>> same = lambda a, b: bool((jax.random.key_data(a) == jax.random.key_data(b)).all())
      >>> fold = jax.random.fold_in
      >>> same(layers[1], fold(fold(fold(k, 5), 1), 9)), same(one[0], fold(fold(k, 5), 9))
      (True, True)
    """
    if not vmap_matches_loop(key):
        return [
            jnp.stack([_fold_chain(key, [np.uint32(c) for c in chain]) for chain in request])
            if request
            else jax.random.split(key, 0)
            for request in requests
        ]
    by_length: dict[int, list[tuple[int, ...]]] = {}
    spans: list[tuple[int, int, int] | None] = []
    for request in requests:
        if not request:  # a stack of no layers: no keys
            spans.append(None)
            continue
        lengths = {len(chain) for chain in request}
        if len(lengths) != 1:
            raise ValueError(f"derive_keys: a request mixes chain lengths {sorted(lengths)}")
        group = by_length.setdefault(lengths.pop(), [])
        spans.append((len(request[0]), len(group), len(group) + len(request)))
        group.extend(request)
    derived = {
        length: jax.vmap(lambda row: _fold_chain(key, list(row)))(np.asarray(group, np.uint32))
        for length, group in by_length.items()
    }
    return [
        jax.random.split(key, 0) if span is None else derived[span[0]][span[1] : span[2]]
        for span in spans
    ]
