"""flaxinit's LSUV: what a user pays, then the one-pass program against a
straightforward per-layer LSUV, side by side.

User-paid first (ReLU MLPs of depth 20, 50 and 100 at width 256 and batch 256, the
conv net, the zoo's ResNet and GPT):

* `fi.lsuv`'s first call (trace, compile, run; every cache emptied) over a jitted
  forward pass's first call, without and with the orthonormal pre-init;
* a repeated call with a new key (the compiled programs reused), in forward passes.

Then the in-program figures (ReLU MLPs of depth 20, 50 and 100 and a small conv net):

* forward: one jitted forward pass (the unit of cost);
* flaxinit: `lsuv(..., pre_init=None)`'s compiled program (variance fitting only),
  in forward passes;
* straightforward: per layer, re-run a jitted forward pass that captures that layer's
  output, rescale, repeat until |Var - 1| < tol (what a port of the PyTorch hooks
  does), in forward passes;
* compile time of each, and the orthonormal pre-init lsuv runs (same-shape layers
  share one decomposition) against jax's orthogonal initializer over the same
  layers, run time and compile time.

    python benchmarks/lsuv.py [--quick] [--only-user-paid]
"""

from __future__ import annotations

import argparse
import statistics
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
from _timing import first_call, machine, median_time

import flaxinit as fi
from flaxinit.lsuv import _config
from flaxinit.lsuv import for_linen as lsuv_linen
from flaxinit.lsuv.fitting import scale_kernel
from flaxinit.lsuv.layers import _split_groups, orthonormal_groups
from flaxinit.models import GPT, ResNet


class MLP(nn.Module):
    depth: int
    width: int = 256

    @nn.compact
    def __call__(self, x):
        for _ in range(self.depth):
            x = nn.relu(nn.Dense(self.width)(x))
        return x


class ConvNet(nn.Module):
    @nn.compact
    def __call__(self, x):
        for features in (32, 32, 64, 64):
            x = nn.relu(nn.Conv(features, (3, 3))(x))
        return x


def timed(fn, repeats):
    return median_time(fn, repeats)


def compile_time(jitted, *args, **kwargs):
    start = time.perf_counter()
    compiled = jitted.lower(*args, **kwargs).compile()
    return time.perf_counter() - start, compiled


def make_probe(model):
    """A jitted forward pass returning every Dense/Conv output's variance."""

    @jax.jit
    def probe(variables, x):
        _, state = model.apply(
            variables,
            x,
            capture_intermediates=lambda m, n: isinstance(m, (nn.Dense, nn.Conv)),
            mutable=["intermediates"],
        )
        return {k: jnp.var(v["__call__"][0]) for k, v in state["intermediates"].items()}

    return probe


def straightforward_lsuv(probe, variables, x, names, tol=0.1, max_iters=10):
    """Per layer: forward pass, read the layer's output variance, rescale, repeat."""
    passes = 0
    params = dict(variables["params"])
    for name in names:
        for _ in range(max_iters + 1):
            var = float(probe({"params": params}, x)[name])
            passes += 1
            if abs(var - 1.0) < tol or passes > 10_000:
                break
            layer = dict(params[name])
            layer["kernel"] = layer["kernel"] / jnp.sqrt(var)
            params[name] = layer
    return {"params": params}, passes


def compile_times(model, variables, x, key, config, repeats):
    """Medians over ``repeats`` fresh compilations (new closures, so no cache hits):
    the forward pass, and flaxinit's fitting program plus its fold programs (one
    per distinct kernel shape); and the median of the paired ratios."""
    forward, ours, ratios = [], [], []
    for _ in range(repeats):
        t_forward = compile_time(jax.jit(lambda v, x: model.apply(v, x)), variables, x)[0]
        run = lsuv_linen.build_program(model, layers=None, config=config, call_kwargs={})
        t_ours = compile_time(run.jitted, variables, x)[0]
        infos = run.traced["infos"]
        fold = jax.jit(scale_kernel.__wrapped__, static_argnames="stack")
        for shape in {info.kernel_shape for info in infos}:
            t_ours += compile_time(fold, jnp.zeros(shape), jnp.float32(1), stack=0)[0]
        forward.append(t_forward)
        ours.append(t_ours)
        ratios.append(t_ours / t_forward)
    return statistics.median(forward), statistics.median(ours), statistics.median(ratios)


def user_paid(label, model, x, repeats, call_kwargs=None):
    """What a user pays: ``fi.lsuv``'s first call and a repeated call with a new key,
    against a jitted forward pass's first call and a forward pass. First calls are
    measured in alternation (forward, lsuv without pre-init, lsuv with it) after
    emptying every cache, and each ratio is the median of the paired ratios."""
    call_kwargs = call_kwargs or {}
    variables = jax.jit(lambda k, x: model.init(k, x, **call_kwargs))(jax.random.key(0), x)
    jax.block_until_ready(variables)

    def forward_first():
        return jax.jit(lambda v, x: model.apply(v, x, **call_kwargs))(variables, x)

    def lsuv_call(key, pre_init):
        out, _ = fi.lsuv(model, variables, x, key=key, pre_init=pre_init, call_kwargs=call_kwargs)
        return out

    fwd, plain, ortho, r_plain, r_ortho = [], [], [], [], []
    for n in range(repeats):
        t_fwd = first_call(forward_first)
        t_plain = first_call(lambda n=n: lsuv_call(jax.random.key(n), None))
        t_ortho = first_call(lambda n=n: lsuv_call(jax.random.key(n), "orthogonal"))
        fwd.append(t_fwd)
        plain.append(t_plain)
        ortho.append(t_ortho)
        r_plain.append(t_plain / t_fwd)
        r_ortho.append(t_ortho / t_fwd)
    forward = jax.jit(lambda v, x: model.apply(v, x, **call_kwargs))
    jax.block_until_ready(forward(variables, x))
    t_pass = timed(lambda: forward(variables, x), max(5, repeats))
    keys = iter(range(1000, 2000))
    lsuv_call(jax.random.key(0), None)  # the programs compiled once, as after a first call
    lsuv_call(jax.random.key(0), "orthogonal")
    t_again = timed(lambda: lsuv_call(jax.random.key(next(keys)), None), max(5, repeats))
    t_again_ortho = timed(
        lambda: lsuv_call(jax.random.key(next(keys)), "orthogonal"), max(5, repeats)
    )
    fits = fi.lsuv(model, variables, x, pre_init=None, call_kwargs=call_kwargs)[1]
    row = {
        "net": label,
        "layers": len(fits),
        "fwd first s": statistics.median(fwd),
        "lsuv first s": statistics.median(plain),
        "first / fwd first": statistics.median(r_plain),
        "lsuv+ortho first s": statistics.median(ortho),
        "ortho first / fwd first": statistics.median(r_ortho),
        "fwd ms": t_pass * 1e3,
        "again (fwd)": t_again / t_pass,
        "again+ortho (fwd)": t_again_ortho / t_pass,
    }
    print(
        "  "
        + ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()),
        flush=True,
    )
    return row


def bench(label, model, x, repeats):
    key = jax.random.key(0)
    variables = jax.jit(model.init)(key, x)
    forward_compiled = jax.jit(model.apply).lower(variables, x).compile()
    t_forward = timed(lambda: forward_compiled(variables, x), repeats)

    config = _config(1.0, 0.1, 10, "output", None, None, False)
    forward_compile, lsuv_compile, compile_ratio = compile_times(
        model, variables, x, key, config, max(5, repeats // 2)
    )
    run = lsuv_linen.build_program(model, layers=None, config=config, call_kwargs={})
    lsuv_compiled = run.jitted.lower(variables, x).compile()
    infos = run.traced["infos"]
    t_lsuv = timed(lambda: lsuv_compiled(variables, x), repeats)
    jax.block_until_ready(run(variables, x, key, None))  # fold programs compiled and cached
    t_lsuv_total = timed(lambda: run(variables, x, key, None)[0], repeats)

    # Pre-init: what lsuv runs (orthonormal kernels, same-shape layers grouped into
    # one decomposition) against jax's orthogonal initializer layer by layer.
    kernels = [lsuv_linen._get(variables, i.kernel_path) for i in infos]

    def ours(key):
        return orthonormal_groups(key, infos, kernels)

    def theirs(key):
        init = jax.nn.initializers.orthogonal()
        return [init(jax.random.fold_in(key, n), k.shape) for n, k in enumerate(kernels)]

    pre_compile_ours, ours_j = compile_time(jax.jit(ours), key)
    pre_compile_theirs, theirs_j = compile_time(jax.jit(theirs), key)
    # What lsuv runs: the grouped draws, then each layer's kernel sliced out of its group.
    t_pre_ours = timed(lambda: _split_groups(ours_j(key), infos, kernels), max(3, repeats // 2))
    t_pre_theirs = timed(lambda: theirs_j(key), max(3, repeats // 2))

    names = [info.name for info in infos]
    probe = make_probe(model)
    probe_compile, _ = compile_time(probe, variables, x)
    jax.block_until_ready(probe(variables, x))  # warm the jit cache
    straight = []
    for _ in range(max(1, repeats // 4)):
        start = time.perf_counter()
        _, passes = straightforward_lsuv(probe, variables, x, names)
        straight.append(time.perf_counter() - start)
    t_straight = statistics.median(straight)

    row = {
        "net": label,
        "layers": len(infos),
        "forward ms": t_forward * 1e3,
        "flaxinit (fwd)": t_lsuv / t_forward,
        "flaxinit + fold (fwd)": t_lsuv_total / t_forward,
        "straightforward (fwd)": t_straight / t_forward,
        "straightforward passes": passes,
        "compile fwd s": forward_compile,
        "compile flaxinit s": lsuv_compile,
        "compile ratio": compile_ratio,
        "compile straightforward s": probe_compile,
        "pre-init ms": t_pre_ours * 1e3,
        "jax orthogonal ms": t_pre_theirs * 1e3,
        "pre-init ratio": t_pre_ours / t_pre_theirs,
        "pre-init compile s": pre_compile_ours,
        "jax orthogonal compile s": pre_compile_theirs,
    }
    print(
        "  "
        + ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()),
        flush=True,
    )
    return row


def print_table(rows, columns):
    print("\n| " + " | ".join(c for c, _ in columns) + " |")
    print("|" + "---|" * len(columns))
    for row in rows:
        print("| " + " | ".join(f.format(row[c]) for c, f in columns) + " |")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument(
        "--only-user-paid", action="store_true", help="skip the in-program comparison"
    )
    args = parser.parse_args()
    repeats = args.repeats or (5 if args.quick else 11)
    first_repeats = 3 if args.quick else 5
    width, batch = (64, 64) if args.quick else (256, 256)
    x = jax.random.normal(jax.random.key(1), (batch, width)) * 2 + 0.5
    image = jax.random.normal(jax.random.key(2), (32 if args.quick else 64, 16, 16, 3))

    print(f"machine: {machine()}")
    # What a user pays, first: always at width 256, batch 256.
    x256 = jax.random.normal(jax.random.key(1), (256, 256)) * 2 + 0.5
    print(f"\nuser-paid: medians of {first_repeats} first calls (caches emptied each time)")
    paid = [
        user_paid(f"relu MLP depth {d}", MLP(d, 256), x256, first_repeats) for d in (20, 50, 100)
    ]
    paid.append(user_paid("conv net (4 convs)", ConvNet(), image, first_repeats))
    resnet_x = jax.random.normal(jax.random.key(3), (32, 32, 32, 3))
    paid.append(
        user_paid(
            "zoo ResNet (8 blocks, width 32)",
            ResNet(num_blocks=8, width=32),
            resnet_x,
            first_repeats,
        )
    )
    tokens = jax.random.randint(jax.random.key(4), (32, 64), 0, 512)
    gpt = GPT(vocab_size=512, max_len=64, d_model=128, num_layers=4, num_heads=4)
    paid.append(user_paid("zoo GPT (4 blocks, d_model 128)", gpt, tokens, first_repeats))
    print_table(
        paid,
        [
            ("net", "{}"),
            ("layers", "{}"),
            ("fwd first s", "{:.3f}"),
            ("lsuv first s", "{:.3f}"),
            ("first / fwd first", "{:.2f}"),
            ("lsuv+ortho first s", "{:.3f}"),
            ("ortho first / fwd first", "{:.2f}"),
            ("fwd ms", "{:.2f}"),
            ("again (fwd)", "{:.2f}"),
            ("again+ortho (fwd)", "{:.2f}"),
        ],
    )
    if args.only_user_paid:
        return

    print(f"\nin-program: median of {repeats} runs; MLP width {width}, batch {batch}\n")
    rows = [bench(f"relu MLP depth {d}", MLP(d, width), x, repeats) for d in (20, 50, 100)]
    rows.append(bench("conv net (4 convs)", ConvNet(), image, repeats))

    columns = [
        ("net", "{}"),
        ("forward ms", "{:.2f}"),
        ("flaxinit (fwd)", "{:.2f}"),
        ("flaxinit + fold (fwd)", "{:.2f}"),
        ("straightforward (fwd)", "{:.1f}"),
        ("straightforward passes", "{}"),
        ("compile fwd s", "{:.2f}"),
        ("compile flaxinit s", "{:.2f}"),
        ("compile ratio", "{:.2f}"),
        ("compile straightforward s", "{:.2f}"),
        ("pre-init ms", "{:.1f}"),
        ("jax orthogonal ms", "{:.1f}"),
        ("pre-init ratio", "{:.2f}"),
        ("pre-init compile s", "{:.2f}"),
        ("jax orthogonal compile s", "{:.2f}"),
    ]
    print_table(rows, columns)


if __name__ == "__main__":
    main()
