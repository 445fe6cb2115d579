"""muP's cost as a user pays it, side by side with what they run today.

On the zoo GPT (Linen, scanned and unrolled blocks):

* train step: a jitted Adam step with ``fi.mup.scale_updates`` chained after it, against
  the plain Adam step (goal <= 1.05x): first call (trace + compile + run), then the
  repeated step, medians of interleaved repeats and the median ratio;
* init: ``fi.apply_rules(params, fi.mup.rules(params, base))`` first and repeated call
  (rules built each time, as a seed sweep does), beside the model's own jitted ``init``.

    python benchmarks/mup.py [--quick]
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import jax.numpy as jnp
import optax
from _timing import compare, first_call, machine, seconds

import flaxinit as fi
from flaxinit.models import GPT


def bench(d_model: int, num_layers: int, scan: bool, repeats: int, number: int) -> dict:
    model = GPT(vocab_size=256, max_len=64, d_model=d_model, num_layers=num_layers, scan=scan)
    base_model = GPT(vocab_size=256, max_len=64, d_model=64, num_layers=num_layers, scan=scan)
    tokens = (jnp.arange(16 * 64).reshape(16, 64) * 7) % 256
    labels = (tokens + 1) % 256
    init = jax.jit(model.init)
    start = time.perf_counter()
    variables = jax.block_until_ready(init(jax.random.key(0), tokens))
    init_first = time.perf_counter() - start
    params = variables["params"]
    base = jax.jit(base_model.init)(jax.random.key(1), tokens)
    structure = fi.model_structure(model, tokens, variables=variables)

    def loss(p):
        logits = model.apply({"params": p}, tokens)
        return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

    def make_step(tx):
        @jax.jit
        def step(p, state):
            updates, state = tx.update(jax.grad(loss)(p), state, p)
            return optax.apply_updates(p, updates), state

        return step

    plain_tx = optax.adam(1e-3)
    mup_tx = optax.chain(
        optax.adam(1e-3), fi.mup.scale_updates(params, base["params"], structure=structure)
    )
    plain, mup = make_step(plain_tx), make_step(mup_tx)
    plain_state, mup_state = plain_tx.init(params), mup_tx.init(params)
    out = {
        "first_plain": first_call(lambda: plain(params, plain_state)),
        "first_mup": first_call(lambda: mup(params, mup_state)),
    }
    out["step_mup"], out["step_plain"], out["step_ratio"] = compare(
        lambda: mup(params, mup_state),
        lambda: plain(params, plain_state),
        repeats=repeats,
        number=number,
    )

    def apply_mup(key):
        rules = fi.mup.rules(variables, base, structure=structure)
        return fi.apply_rules(variables, rules, key=key, structure=structure)

    out["rules_first"] = first_call(lambda: apply_mup(jax.random.key(2)))
    repeat = [seconds(lambda i=i: apply_mup(jax.random.key(3 + i))) for i in range(repeats)]
    out["rules_repeat"] = statistics.median(repeat)
    out["init_first"] = init_first
    jax.block_until_ready(init(jax.random.key(4), tokens))  # recompiled: caches were emptied
    out["init_repeat"] = statistics.median(
        seconds(lambda i=i: init(jax.random.key(5 + i), tokens)) for i in range(repeats)
    )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    repeats, number = (5, 3) if args.quick else (9, 5)
    configs = [(256, 4, False), (256, 4, True)] if args.quick else [(512, 8, False), (512, 8, True)]
    print(machine())
    print(
        "| model | Adam step first call | muP step first call | Adam step | muP step "
        "| muP / Adam step | muP rules + apply first / repeat | jitted init first / repeat |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for d_model, num_layers, scan in configs:
        r = bench(d_model, num_layers, scan, repeats, number)
        name = f"GPT d={d_model} L={num_layers}{' scan' if scan else ''}"
        print(
            f"| {name} | {r['first_plain']:.2f} s | {r['first_mup']:.2f} s "
            f"| {r['step_plain'] * 1e3:.1f} ms | {r['step_mup'] * 1e3:.1f} ms "
            f"| {r['step_ratio']:.3f}x | {r['rules_first']:.2f} s / {r['rules_repeat']:.3f} s "
            f"| {r['init_first']:.2f} s / {r['init_repeat']:.3f} s |"
        )


if __name__ == "__main__":
    main()
