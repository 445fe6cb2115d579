r"""Sharded initialization: models initialized directly on a device mesh.

Initialize a Linen or NNX model so that every parameter is generated shard by shard
on its devices, a flaxinit rule set applied in the same compiled program, with
bitwise the values of the same init on one device::

    from jax.sharding import PartitionSpec as P
    from flaxinit.sharding import init_sharded, nnx_init_sharded

    mesh = jax.make_mesh((2, 4), ("data", "model"))          # Explicit axes by default
    rules = [("kernel", fi.normal(0.02)),
             ("**/c_proj/kernel", fi.scale(1 / math.sqrt(2 * n_layers)))]
    layout = [("wte/embedding", P("model", "data")),          # path rules, first match wins
              ("attn/c_attn/kernel", P("data", "model")),
              ("mlp/c_fc/kernel", P("data", "model")),
              ("**/c_proj/kernel", P("model", "data"))]
    variables = init_sharded(GPT(cfg), key, tokens, mesh=mesh, rules=rules,
                             partition_rules=layout)           # Linen
    model = nnx_init_sharded(lambda: GPT(cfg, rngs=nnx.Rngs(0)), mesh=mesh, rules=rules,
                             key=key, logical_axis_rules=[("embed", "data"), ("mlp", "model")])

Layout. A leaf's ``PartitionSpec`` is that of the first ``partition_rules`` pattern
matching its path (the glob language of :mod:`flaxinit.rules`), else the one its
partitioning metadata declares (Linen ``nn.with_partitioning`` /
``nn.with_logical_partitioning``; NNX ``out_sharding`` Variable metadata, logical names
mapped by ``logical_axis_rules`` or the active ``nn.logical_axis_rules``), else
replicated. Patterns that place nothing, axes the mesh lacks, specs that do not
divide a shape and logical names no ``logical_axis_rules`` entry maps raise
``ValueError`` naming the pattern or the path, shape, spec and mesh axis sizes, before
anything compiles (``strict=False`` replicates a dimension that does not divide, and a
Linen logical name without a rule). :func:`partition_specs` shows the layout of any tree.

How. An abstract init (``jax.eval_shape`` / ``nnx.eval_shape``) gives shapes and
metadata; then ``jax.jit(init + apply_rules, out_shardings=...)`` is traced under the
mesh with its axes made automatic, so the partitioner generates each parameter and
each rule's re-draw in its shards (``apply_rules(..., shardings=...)`` puts a sharding
constraint on every rewritten leaf). The arrays come back on the caller's mesh,
Explicit axis types included. This sidesteps the traps of the installed JAX/Flax
under Explicit axes: Linen's ``Partitioned.unbox`` asserts, and NNX's jit-init draws
each parameter replicated and then reshards it (a full copy per device). Both
:class:`ShardedInit` plans (:func:`plan_init`, :func:`plan_nnx_init`) report the
program's per-device memory (``plan.memory()``) without running it.

Values. ``jax_threefry_partitionable`` is True by default in JAX 0.10: a sharded
``jax.random`` draw computes, on each device, exactly the bits of its slice of the
unsharded draw, so every initializer and every rule gives bitwise the values of
the single-device program, ``jax.jit(model.init)(key, x)`` then ``apply_rules``
(tested for the whole catalogue and a GPT in Linen and NNX on meshes (8,), (2, 4),
(4, 2), Auto and Explicit). Eager (op-by-op) init can differ from any jitted one in
the last bit, as XLA folds constants inside a program (``normal(0.02)``).
Switching ``jax_threefry_partitionable`` off changes the random stream itself.

Forward passes. Under Explicit axes JAX refuses operations whose output sharding
is ambiguous, and a stock Flax model passes no ``out_sharding``: its forward pass on
arrays of an Explicit mesh can fail (``nn.Embed``'s gather of a sharded table raises
``ShardingTypeError``). For such models initialize on Auto axes,
``mesh=auto_mesh(mesh)``, and run the model under that mesh.

Memory. For a GPT whose matrices are split 8 ways, each device's init program
holds about 1/8 of the unsharded one, plus the LayerNorm parameters and biases that
stay whole (measurements: ``benchmarks/README.md``). Two exceptions, both exact in
value:

* ``orthogonal`` (and ``delta_orthogonal``, and re-draws with them) needs a QR of
  the whole matrix: every device draws the full Gaussian matrix in float32 and
  factors it, then keeps its shard. Per device that costs what the unsharded init
  costs (the Gaussian draw, its QR factors and the result: a few float32 copies of
  the matrix). Budget for one such matrix at a time on every device, or give the
  largest matrices (embeddings, LM heads) another initializer.
* ``at[index](action)`` on a dimension that is sharded may let the partitioner
  gather the leaf; use it on small leaves (biases, gates).

On CPU, jaxlib 0.10.2's batched LAPACK kernels can deadlock when several
simulated devices run a batched QR at once (``stacked``/``blockwise`` of
``orthogonal``, ``orthogonal(batch_axis=...)``, ``per_layer(orthogonal())`` on a
stacked leaf); GPUs and TPUs are unaffected and jaxlib 0.11 fixes it.

Multi-host. Every process runs the same program: ``jax.distributed.initialize()``,
then a global mesh over ``jax.devices()`` (e.g. ``jax.make_mesh((n_hosts, 8),
("data", "model"))``), then the same ``init_sharded``/``nnx_init_sharded`` call with
the same key, rules and example inputs (host-local arrays with identical values on
every process; they are replicated). Each process gets global ``jax.Array``\ s of
which it holds only its addressable shards; no process ever holds a whole sharded
parameter. ``jax.make_array_from_process_local_data`` is not needed: nothing is
loaded, everything is generated where it lives. Save and restore with orbax
(``ocp.StandardCheckpointer``), which writes each process's shards and restores
onto the same shardings (``plan.abstract`` is the target tree).

Example:
  >>> import flax.linen as nn
  >>> from jax.sharding import PartitionSpec as P
  >>> from flaxinit.sharding import init_sharded
  >>> mesh = jax.make_mesh((8,), ("model",))
  >>> v = init_sharded(nn.Dense(64), jax.random.key(0), jnp.ones((1, 16)), mesh=mesh,
  ...                  partition_rules=[("kernel", P(None, "model"))])
  >>> v["params"]["kernel"].addressable_shards[0].data.shape
  (16, 8)
"""

from flaxinit.sharding.init import init_sharded, nnx_init_sharded, plan_init, plan_nnx_init
from flaxinit.sharding.program import MemoryStats, ShardedInit, auto_mesh, memory_stats
from flaxinit.sharding.specs import check_spec, partition_specs

__all__ = [
    "MemoryStats",
    "ShardedInit",
    "auto_mesh",
    "check_spec",
    "init_sharded",
    "memory_stats",
    "nnx_init_sharded",
    "partition_specs",
    "plan_init",
    "plan_nnx_init",
]
