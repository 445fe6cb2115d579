"""The experiments' command line.

    python -m experiments list
    python -m experiments run NAME [NAME ...] [--quick | --tiny] [--seeds N] [--devices N]
    python -m experiments run --all --quick

``--quick`` runs every experiment in under 10 minutes on 2 CPU cores; the default (full)
mode is sized for a GPU; ``--tiny`` is the smoke test's configuration (seconds, numbers
meaningless). Results land in ``--out`` (default ``results/``), one folder per experiment.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence

from experiments import EXPERIMENTS


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m experiments",
        description="Reproduce the literature's initialization claims with flaxinit.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="list the experiments with their claims")
    run = sub.add_parser("run", help="run experiments and write results/<name>/")
    run.add_argument("names", nargs="*", metavar="NAME", help="experiments to run")
    run.add_argument("--all", action="store_true", help="run every experiment")
    mode = run.add_mutually_exclusive_group()
    mode.add_argument(
        "--quick", action="store_true", help="2-CPU configuration (all in < 10 minutes)"
    )
    mode.add_argument("--tiny", action="store_true", help="smoke-test configuration")
    run.add_argument("--seeds", type=int, default=None, help="seeds per setting")
    run.add_argument(
        "--devices",
        type=int,
        default=8,
        help="CPU only: simulate this many host devices (default 8; sets XLA_FLAGS before "
        "JAX starts; GPUs and TPUs are used as they are)",
    )
    run.add_argument("--out", default="results", help="output folder (default: results/)")
    run.add_argument(
        "--no-progress", action="store_true", help="no progress bars even on a terminal"
    )
    return parser


def _set_devices(n: int | None) -> None:
    """Simulated host devices must be configured before JAX is imported."""
    if n is None:
        return
    if "jax" in sys.modules:
        print("warning: JAX is already imported; --devices has no effect", file=sys.stderr)
        return
    flags = os.environ.get("XLA_FLAGS", "")
    flags = " ".join(f for f in flags.split() if "xla_force_host_platform_device_count" not in f)
    os.environ["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={n}".strip()


def _list() -> int:
    from experiments._common import load

    for name in EXPERIMENTS:
        module = load(name)
        first = module.CLAIM.split(". ")[0].rstrip(".")
        print(f"{name:20s} {first}.")
        print(f"{'':20s} source: {module.SOURCE}")
    return 0


def _run(args: argparse.Namespace) -> int:
    names = list(EXPERIMENTS) if args.all else args.names
    unknown = [n for n in names if n not in EXPERIMENTS]
    if not names or unknown:
        print(
            f"error: name experiments or pass --all (unknown: {unknown}); "
            f"known: {', '.join(EXPERIMENTS)}",
            file=sys.stderr,
        )
        return 2
    _set_devices(args.devices)
    from experiments import _common

    mode = "tiny" if args.tiny else "quick" if args.quick else "full"
    progress = sys.stderr.isatty() and not args.no_progress
    results, start = [], time.perf_counter()
    for name in names:
        config = _common.make_config(name, mode, args.out, seeds=args.seeds, progress=progress)
        print(f"[{name}] running ({mode}, {config.seeds} seed(s)) ...", flush=True)
        res = _common.run_experiment(config)
        print(f"[{name}] {res.verdict} in {res.wall_s:.1f} s: {res.headline}", flush=True)
        print(f"[{name}] wrote {config.out_dir}/", flush=True)
        results.append(res)
    total = time.perf_counter() - start
    print()
    print(_common.results_table(results))
    print(
        f"\n{len(results)} experiment(s), {mode} mode, total {total:.1f} s; results in {args.out}/"
    )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """The command line; returns the exit status."""
    args = _parser().parse_args(argv)
    if args.command == "list":
        return _list()
    return _run(args)


if __name__ == "__main__":
    sys.exit(main())
