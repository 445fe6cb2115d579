"""How records leave a jitted pass: packed into one float32 matrix per record type.

A record's numbers are scalars. Returning each one from ``jax.jit`` as its own output
costs the compiler one kernel per scalar: hundreds for a deep model, and seconds of
compile time on CPU. So every pass stacks the numbers of all its records of one type
into a matrix. The names, paths and shapes travel as static pytree data. The matrix is
unpacked on the host, or sliced inside a trace when called under a user's ``jax.jit``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


def numeric_fields(cls: type) -> tuple[str, ...]:
    """The non-static fields of a record dataclass, in order."""
    return tuple(f.name for f in dataclasses.fields(cls) if not f.metadata.get("static"))


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Packed:
    """Records of one type: static fields per record, and an ``(n, k)`` float32 matrix.

    ``present[i][j]`` is False where record ``i``'s numeric field ``j`` is ``None``.
    Integer fields (``cls.INT_FIELDS``) are stored as float32: exact below 2**24.
    """

    cls: type = dataclasses.field(metadata={"static": True})
    statics: tuple[tuple[tuple[str, Any], ...], ...] = dataclasses.field(metadata={"static": True})
    present: tuple[tuple[bool, ...], ...] = dataclasses.field(metadata={"static": True})
    values: Any


def pack(cls: type, rows: Sequence[tuple[Mapping[str, Any], Mapping[str, Any]]]) -> Packed:
    """Packs ``(static fields, numeric fields)`` pairs of records of type ``cls``."""
    names = numeric_fields(cls)
    present = tuple(tuple(num[n] is not None for n in names) for _, num in rows)
    cells = [
        jnp.asarray(0.0 if num[n] is None else num[n], jnp.float32)
        for _, num in rows
        for n in names
    ]
    values = (
        jnp.stack(cells).reshape(len(rows), len(names)) if cells else jnp.zeros((0, len(names)))
    )
    statics = tuple(tuple(static.items()) for static, _ in rows)
    return Packed(cls, statics, present, values)


def unpack(packed: Packed) -> tuple[Any, ...]:
    """The records, with Python numbers, or with 0-d arrays when ``values`` is traced."""
    values = packed.values
    traced = isinstance(values, jax.core.Tracer)
    if not traced:
        values = np.asarray(values)
    names = numeric_fields(packed.cls)
    ints = set(getattr(packed.cls, "INT_FIELDS", ()))
    out = []
    for i, (static, present) in enumerate(zip(packed.statics, packed.present, strict=True)):
        kwargs = dict(static)
        for j, (name, here) in enumerate(zip(names, present, strict=True)):
            if not here:
                kwargs[name] = None
            elif traced:
                v = values[i, j]
                kwargs[name] = v.astype(jnp.int32) if name in ints else v
            else:
                v = values[i, j].item()
                kwargs[name] = int(v) if name in ints else v
        out.append(packed.cls(**kwargs))
    return tuple(out)
