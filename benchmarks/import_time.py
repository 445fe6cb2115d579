"""`import flaxinit` against its floor, `import jax, flax`: wall and CPU time medians.

Each command runs in a fresh interpreter, once per round (interleaved, so load changes
on a shared machine hit every command alike). CPU time is the child's user + sys.

    ../.venv/bin/python import_time.py [--rounds 7]
"""

from __future__ import annotations

import argparse
import resource
import statistics
import subprocess
import sys
import time

COMMANDS = {
    "import jax": "import jax",
    "import jax, flax.linen, flax.nnx": "import jax, flax.linen, flax.nnx",
    "import flaxinit": "import flaxinit",
    "import flaxinit + the lazy subpackages": (
        "import flaxinit, flaxinit.diagnostics, flaxinit.diagnostics.doctor, flaxinit.mup, "
        "flaxinit.recipes, flaxinit.sharding, flaxinit.models"
    ),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--quick", action="store_true", help="2 rounds")
    args = parser.parse_args()
    rounds = 2 if args.quick else args.rounds
    wall: dict[str, list[float]] = {name: [] for name in COMMANDS}
    cpu: dict[str, list[float]] = {name: [] for name in COMMANDS}
    for _ in range(rounds):
        for name, code in COMMANDS.items():
            before = resource.getrusage(resource.RUSAGE_CHILDREN)
            start = time.perf_counter()
            subprocess.run([sys.executable, "-c", code], check=True)
            wall[name].append(time.perf_counter() - start)
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            cpu[name].append(after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime)
    for name in COMMANDS:
        print(
            f"{name:42s} wall median {statistics.median(wall[name]):.2f} s, "
            f"CPU median {statistics.median(cpu[name]):.2f} s ({rounds} rounds)"
        )


if __name__ == "__main__":
    main()
