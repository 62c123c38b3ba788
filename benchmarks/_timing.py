"""Timing helpers shared by the benchmark scripts (and by their mmap_ninja 0.9.0 subprocess,
so this module imports nothing from mmap_ninja)."""

from __future__ import annotations

import gc
import random
import statistics
import time
from typing import Any, Callable, Dict, Sequence


def time_calls(fn: Callable[[Any], Any], arguments: Sequence[Any], self_timed: bool = False) -> list:
    """Seconds taken by ``fn(a)`` for each ``a`` in ``arguments`` (garbage collection off), or,
    when ``self_timed``, the seconds each call returns (measured by ``fn`` itself, e.g. in
    another process, around the work alone)."""
    times = []
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        for argument in arguments:
            start = time.perf_counter()
            result = fn(argument)
            times.append(result if self_timed else time.perf_counter() - start)
    finally:
        if gc_was_enabled:
            gc.enable()
    return times


def median_time(fn: Callable[[Any], Any], arguments: Sequence[Any], warmup: int = 3) -> float:
    """Median seconds of ``fn(a)`` over ``arguments``, after ``warmup`` untimed calls."""
    for argument in arguments[:warmup]:
        fn(argument)
    return statistics.median(time_calls(fn, arguments))


def median_per_item(fn: Callable[[Any], Any], blocks: Sequence[Sequence[Any]]) -> float:
    """Median over ``blocks`` of the seconds per item of calling ``fn(item)`` for each item of
    a block (for calls too short to time one by one)."""

    def run(block):
        for item in block:
            fn(item)

    return median_time(run, blocks) / len(blocks[0])


def interleaved_medians(fns: Dict[str, Callable[[Any], Any]], arguments: Sequence[Any], chunk: int = 10,
                        warmup: int = 3, seed: int = 0, self_timed: bool = False) -> Dict[str, float]:
    """Median seconds of each of ``fns`` over the same ``arguments`` (``self_timed``: as
    ``time_calls`` takes it).

    The functions take turns, ``chunk`` calls at a time, so that all see the same machine load;
    each goes through the arguments in its own random order, so that none reads what another
    has just brought into the CPU caches.
    """
    rng = random.Random(seed)
    orders = {name: rng.sample(range(len(arguments)), len(arguments)) for name in fns}
    for name, fn in fns.items():
        for k in orders[name][:warmup]:
            fn(arguments[k])
    times = {name: [] for name in fns}
    names = list(fns)
    for turn, start in enumerate(range(0, len(arguments), chunk)):
        for name in names[turn % len(names):] + names[:turn % len(names)]:
            part = [arguments[k] for k in orders[name][start:start + chunk]]
            times[name].extend(time_calls(fns[name], part, self_timed))
    return {name: statistics.median(values) for name, values in times.items()}
