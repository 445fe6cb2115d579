"""Timing helpers shared by the benchmarks: medians of interleaved repeats."""

from __future__ import annotations

import os
import platform
import statistics
import subprocess
import time
from collections.abc import Callable

import jax


def machine() -> str:
    """One line naming the machine: CPU model, cores, jax version and backend."""
    cpu = platform.processor() or platform.machine()
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                cpu = line.split(":", 1)[1].strip()
    except OSError:
        pass
    return (
        f"{cpu}, {os.cpu_count()} cores, jax {jax.__version__}, "
        f"backend {jax.default_backend()} ({len(jax.devices())} devices)"
    )


def time_once(fn: Callable[[], object], number: int) -> float:
    start = time.perf_counter()
    for _ in range(number):
        jax.block_until_ready(fn())
    return (time.perf_counter() - start) / number


def compare(
    ours: Callable[[], object],
    theirs: Callable[[], object],
    *,
    repeats: int,
    number: int,
) -> tuple[float, float, float]:
    """Median seconds per call of `ours` and `theirs`, and the median of per-repeat ratios.

    The two run alternately within each repeat, so slow phases of a noisy machine hit
    both; the ratio's median is steadier than the ratio of medians.
    """
    jax.block_until_ready(ours())  # compile and warm up
    jax.block_until_ready(theirs())
    times_ours, times_theirs, ratios = [], [], []
    for i in range(repeats):
        if i % 2:
            t_theirs = time_once(theirs, number)
            t_ours = time_once(ours, number)
        else:
            t_ours = time_once(ours, number)
            t_theirs = time_once(theirs, number)
        times_ours.append(t_ours)
        times_theirs.append(t_theirs)
        ratios.append(t_ours / t_theirs)
    return statistics.median(times_ours), statistics.median(times_theirs), statistics.median(ratios)


def seconds(fn: Callable[[], object]) -> float:
    """Wall seconds of one ``fn()`` call, results ready."""
    start = time.perf_counter()
    jax.block_until_ready(fn())
    return time.perf_counter() - start


def first_call(fn: Callable[[], object]) -> float:
    """Seconds of ``fn()`` as a user's first call pays them: every jit cache and LSUV's
    program cache emptied first, so trace, compile and run are all counted."""
    import flaxinit as fi

    fi.lsuv.clear_cache()
    jax.clear_caches()
    return seconds(fn)


def median_time(fn: Callable[[], object], repeats: int, *, warm: bool = False) -> float:
    """Median seconds of ``repeats`` calls of ``fn()`` (after one untimed call if ``warm``)."""
    if warm:
        jax.block_until_ready(fn())
    return statistics.median(seconds(fn) for _ in range(repeats))
