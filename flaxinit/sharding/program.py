"""``ShardedInit``: a planned sharded initialization, and per-device memory stats."""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable
from typing import Any

import jax
from jax.sharding import AxisType, Mesh

__all__ = ["MemoryStats", "ShardedInit", "auto_mesh", "memory_stats"]


@dataclasses.dataclass(frozen=True)
class MemoryStats:
    """Per-device bytes of a compiled program (``compiled.memory_analysis()``).

    Attributes:
      argument: bytes of the inputs on one device.
      output: bytes of the outputs on one device.
      temp: bytes of temporaries on one device.
      alias: bytes of outputs that reuse input buffers (counted once).
    """

    argument: int
    output: int
    temp: int
    alias: int = 0

    @property
    def total(self) -> int:
        """argument + output + temp - alias: the program's live bytes on one device."""
        return self.argument + self.output + self.temp - self.alias

    def __str__(self) -> str:
        mib = lambda b: f"{b / 2**20:.2f} MiB"
        return (
            f"per device: total {mib(self.total)} (arguments {mib(self.argument)}, "
            f"outputs {mib(self.output)}, temporaries {mib(self.temp)})"
        )


def memory_stats(compiled: Any) -> MemoryStats:
    """The per-device memory of a compiled program (``jax.jit(f).lower(...).compile()``).

    Example:
      >>> from flaxinit.sharding import memory_stats
      >>> stats = memory_stats(jax.jit(lambda: jnp.zeros((256, 256))).lower().compile())
      >>> stats.output
      262144
    """
    m = compiled.memory_analysis()
    return MemoryStats(
        argument=int(m.argument_size_in_bytes),
        output=int(m.output_size_in_bytes),
        temp=int(m.temp_size_in_bytes),
        alias=int(m.alias_size_in_bytes),
    )


def auto_mesh(mesh: Mesh) -> Mesh:
    """``mesh`` with every axis ``AxisType.Auto`` (same devices, names, order).

    Example:
      >>> from flaxinit.sharding import auto_mesh
      >>> auto_mesh(jax.make_mesh((8,), ("model",))).axis_types == (jax.sharding.AxisType.Auto,)
      True
    """
    if not isinstance(mesh, Mesh):
        raise TypeError(
            f"mesh must be a jax.sharding.Mesh (jax.make_mesh), got {type(mesh).__name__}"
        )
    if all(t == AxisType.Auto for t in mesh.axis_types):
        return mesh
    return Mesh(mesh.devices, mesh.axis_names, axis_types=(AxisType.Auto,) * len(mesh.axis_names))


@dataclasses.dataclass(frozen=True)
class ShardedInit:
    """A sharded initialization, planned (shapes and layout known) but not run.

    ``plan()()`` runs it; ``lower()``/``compile()``/``memory()`` inspect the
    program without running it.

    Attributes:
      abstract: the result's tree with ``jax.ShapeDtypeStruct`` leaves carrying
        their ``NamedSharding`` (Linen: the variable dict; NNX: the ``nnx.State``).
      specs: the ``PartitionSpec`` of each leaf (a prefix tree of the result).
      shardings: the ``NamedSharding`` of each leaf on ``mesh``.
      mesh: the mesh.
    """

    abstract: Any
    specs: Any
    shardings: Any
    mesh: Mesh
    # The program and how to call it: internal (built by plan_init / plan_nnx_init).
    _fn: Callable[..., Any] = dataclasses.field(repr=False)
    _args: tuple[Any, ...] = dataclasses.field(repr=False)
    _context: Callable[[], contextlib.AbstractContextManager[Any]] = dataclasses.field(repr=False)
    _finish: Callable[[Any], Any] = dataclasses.field(repr=False)

    def lower(self) -> jax.stages.Lowered:
        """The lowered program (traced under the plan's mesh and axis rules)."""
        with self._context():
            return self._fn.lower(*self._args)

    def compile(self) -> jax.stages.Compiled:
        """The compiled program."""
        return self.lower().compile()

    def memory(self) -> MemoryStats:
        """Per-device memory of the compiled program, without running it."""
        return memory_stats(self.compile())

    def __call__(self) -> Any:
        """Runs the program: the initialized, sharded variables (or NNX module)."""
        with self._context():
            out = self._fn(*self._args)
        return self._finish(out)
