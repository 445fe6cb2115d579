"""Benchmark of ``flaxinit.structure.model_structure`` against tracing the forward pass.

``model_structure(model, tokens, variables=variables)`` traces the model once
(``jax.make_jaxpr`` on abstract shapes) and walks the jaxpr to classify every leaf.
What a user pays is measured against what the trace alone costs, side by side in
one run: ``jax.make_jaxpr(lambda v, x: model.apply(v, x))(variables, tokens)`` on
the abstract variables (``jax.eval_shape(model.init, ...)``); for NNX,
``nnx.split(model)`` then ``jax.make_jaxpr`` of ``nnx.merge(graphdef, state)(tokens)``
over the state: what a user runs to see an NNX forward's jaxpr.

Models: the zoo GPT (:class:`flaxinit.models.GPT`, Linen, and
:class:`flaxinit.models.NNXGPT`), 100 blocks (16 leaves each, 1,606 leaves in all),
unrolled and with ``scan=True``; narrow (d_model 64, 4 heads), since only tracing
is timed. Goal: model_structure / make_jaxpr <= 2 unrolled, <= 1.2 scanned.

Each repeat times both (several calls each when one call is under 0.3 s),
alternating which goes first; times are medians,
the ratio is the median of the per-repeat ratios. model_structure is also split into
its parts: the pass over the jaxpr (``dataflow.analyze``) and the role classification
(``roles.classify``), timed on the arguments model_structure gave them (captured
once); "trace + rest" is the total minus those two.

Run: ``python benchmarks/structure.py`` (``--quick`` for a smoke run: 12 layers).
"""

from __future__ import annotations

import argparse
import math
import statistics
import time

import jax
import jax.numpy as jnp
from _timing import machine, time_once
from flax import nnx

import flaxinit.structure as fs
from flaxinit.models import GPT, NNXGPT
from flaxinit.structure import model_structure

GOALS = {False: 2.0, True: 1.2}  # scan -> goal on model_structure / make_jaxpr
MIN_SECONDS = 0.3
CONFIG = {"vocab_size": 256, "max_len": 16, "d_model": 64, "num_heads": 4}


def _linen(num_layers, scan, tokens):
    model = GPT(num_layers=num_layers, scan=scan, **CONFIG)
    variables = jax.eval_shape(model.init, jax.random.key(0), tokens)

    def baseline():
        return jax.make_jaxpr(lambda v, x: model.apply(v, x))(variables, tokens)

    def ours():
        return model_structure(model, tokens, variables=variables)

    return baseline, ours, len(jax.tree.leaves(variables))


def _nnx(num_layers, scan, tokens):
    model = nnx.eval_shape(
        lambda: NNXGPT(num_layers=num_layers, scan=scan, rngs=nnx.Rngs(0), **CONFIG)
    )

    def baseline():
        # What a user runs to get an NNX forward's jaxpr: split, then trace the merge.
        graphdef, state = nnx.split(model)
        return jax.make_jaxpr(lambda s, x: nnx.merge(graphdef, s)(x))(state, tokens)

    def ours():
        return model_structure(model, tokens)

    return baseline, ours, len(jax.tree.leaves(nnx.state(model)))


def _capture(ours):
    """The arguments model_structure passes to analyze and classify, from one call."""
    seen = {}
    analyze, classify = fs.analyze, fs.classify

    def spy_analyze(*args):
        seen["analyze"] = args
        return analyze(*args)

    def spy_classify(*args):
        seen["classify"] = args
        return classify(*args)

    fs.analyze, fs.classify = spy_analyze, spy_classify
    try:
        structure = ours()
    finally:
        fs.analyze, fs.classify = analyze, classify
    return structure, seen["analyze"], seen["classify"]


def bench(name, build, num_layers, scan, tokens, repeats):
    baseline, ours, leaves = build(num_layers, scan, tokens)
    baseline()  # warm up both (jax's caches of jnp helpers, flax's module setup)
    structure, analyze_args, classify_args = _capture(ours)
    start = time.perf_counter()
    baseline()
    # Calls per measurement: enough for ~0.3 s, so the scanned models' short traces
    # are not one timer tick of a noisy machine.
    number = max(1, math.ceil(MIN_SECONDS / (time.perf_counter() - start)))
    analyze = lambda: fs.analyze(*analyze_args)
    classify = lambda: fs.classify(*classify_args)
    times = {"make_jaxpr": [], "model_structure": [], "analyze": [], "classify": []}
    ratios = []
    for i in range(repeats):
        if i % 2:
            t_ours = time_once(ours, number)
            t_base = time_once(baseline, number)
        else:
            t_base = time_once(baseline, number)
            t_ours = time_once(ours, number)
        times["make_jaxpr"].append(t_base)
        times["model_structure"].append(t_ours)
        times["analyze"].append(time_once(analyze, number))
        times["classify"].append(time_once(classify, number))
        ratios.append(t_ours / t_base)
    med = {k: statistics.median(v) for k, v in times.items()}
    eqns = len(analyze_args[0].jaxpr.eqns)
    row = {
        "model": name,
        "layers": num_layers,
        "calls": number,
        "leaves": leaves,
        "eqns": eqns,
        "make_jaxpr ms": med["make_jaxpr"] * 1e3,
        "model_structure ms": med["model_structure"] * 1e3,
        "analyze ms": med["analyze"] * 1e3,
        "classify ms": med["classify"] * 1e3,
        "trace + rest ms": (med["model_structure"] - med["analyze"] - med["classify"]) * 1e3,
        "ratio": statistics.median(ratios),
        "ratios": ratios,
        "goal": GOALS[scan],
        "num_layers found": structure.num_layers,
        "roles": repr(structure),
    }
    print(
        f"  {name:24s} {leaves:5d} leaves x{number:<3d} make_jaxpr {row['make_jaxpr ms']:8.1f} ms  "
        f"model_structure {row['model_structure ms']:8.1f} ms  ratio {row['ratio']:.2f} "
        f"(runs {', '.join(f'{r:.2f}' for r in ratios)})",
        flush=True,
    )
    return row


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="12 layers, 5 repeats")
    parser.add_argument("--layers", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--no-nnx", action="store_true", help="Linen models only")
    args = parser.parse_args()
    num_layers = args.layers or (12 if args.quick else 100)
    repeats = args.repeats or (5 if args.quick else 7)
    tokens = jnp.zeros((1, CONFIG["max_len"]), jnp.int32)

    print(f"machine: {machine()}")
    print(
        f"GPT {CONFIG}, {num_layers} layers, tokens {tokens.shape}; median of {repeats} "
        "alternating repeats, ratio = median of per-repeat ratios\n"
    )
    cases = [("GPT (Linen), unrolled", _linen, False), ("GPT (Linen), scan=True", _linen, True)]
    if not args.no_nnx:
        cases += [("NNXGPT, unrolled", _nnx, False), ("NNXGPT, scan=True", _nnx, True)]
    rows = [bench(name, build, num_layers, scan, tokens, repeats) for name, build, scan in cases]

    columns = [
        ("model", "{}"),
        ("leaves", "{}"),
        ("eqns", "{}"),
        ("calls", "{}"),
        ("make_jaxpr ms", "{:.1f}"),
        ("model_structure ms", "{:.1f}"),
        ("analyze ms", "{:.1f}"),
        ("classify ms", "{:.1f}"),
        ("trace + rest ms", "{:.1f}"),
        ("ratio", "{:.2f}"),
        ("goal", "<= {}"),
    ]
    print("\n| " + " | ".join(c for c, _ in columns) + " | holds |")
    print("|" + "---|" * (len(columns) + 1))
    for row in rows:
        holds = "yes" if row["ratio"] <= row["goal"] else "no"
        print("| " + " | ".join(f.format(row[c]) for c, f in columns) + f" | {holds} |")
    print(
        "\n'eqns': top-level equations of the jaxpr model_structure analyzes; 'calls': "
        "calls per timed measurement (times are per call)."
    )
    for row in rows:
        print(f"{row['model']}: {row['roles']}")


if __name__ == "__main__":
    main()
