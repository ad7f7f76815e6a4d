"""Interleaved timing: medians of repeated runs, and a copy-bandwidth figure.

Each contender of a cell is timed once per round, and the order rotates from
round to round, so slow drift of the machine (other processes, frequency,
thermal) hits every contender alike; the median per contender then drops the
outliers. A sample runs the callable `number` times, with `number` chosen
per contender so that a sample lasts at least `min_time` seconds (the clock's
resolution and the loop's overhead then stay small).
"""

from __future__ import annotations

import contextlib
import gc
import statistics
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np

Clock = Callable[[], float]

# Wall time is what a caller waits. On a shared machine it also counts the time
# other processes hold the core; CPU time of the process does not, which makes
# it the steadier clock for single-threaded work (it would count the spinning
# of idle OpenMP workers, and double-count parallel work, so never for threads > 1).
CLOCKS: dict[str, Clock] = {"wall": time.perf_counter, "cpu": time.process_time}


def clock_for(mode: str, threads: int) -> str:
    """The clock a cell uses: mode 'wall', or 'auto' (CPU time on one thread, else wall)."""
    if mode not in ("auto", "wall"):
        raise ValueError(f"clock mode must be 'auto' or 'wall', got {mode!r}")
    return "cpu" if mode == "auto" and threads == 1 else "wall"

MAX_NUMBER = 1_000_000  # calls per sample: a cap for callables faster than the clock
MIN_ROUNDS = 3  # a time budget never cuts a median below this many samples


@dataclass(frozen=True)
class Timing:
    """Seconds per call of one contender: every sample, and their median."""

    samples: tuple[float, ...]
    number: int  # calls per sample

    @property
    def median(self) -> float:
        return statistics.median(self.samples)

    def as_dict(self) -> dict:
        return {"median_s": self.median, "min_s": min(self.samples), "max_s": max(self.samples),
                "samples_s": list(self.samples), "calls_per_sample": self.number}


@contextlib.contextmanager
def gc_paused():
    """The garbage collector off while timing (as timeit does), back on after."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def time_calls(func: Callable[[], object], number: int, clock: Clock = time.perf_counter) -> float:
    """Total seconds for `number` back-to-back calls of func."""
    start = clock()
    for _ in range(number):
        func()
    return clock() - start


def calibrate(func: Callable[[], object], min_time: float,
              clock: Clock = time.perf_counter) -> tuple[int, float]:
    """The number of calls that makes one sample last at least min_time seconds,
    and the seconds per call seen on the way."""
    number = 1
    while True:
        elapsed = time_calls(func, number, clock)
        if elapsed >= min_time or number >= MAX_NUMBER:
            return number, elapsed / number
        # grow toward the target in one step when the estimate is usable, else double
        estimate = int(number * min_time / elapsed * 1.1) + 1 if elapsed > 0 else 0
        number = min(MAX_NUMBER, max(2 * number, estimate))


def rounds_within(repeat: int, budget: float | None, round_seconds: float) -> int:
    """Rounds to run: `repeat`, or fewer (never under MIN_ROUNDS) when that many
    rounds would take longer than `budget` seconds."""
    if budget is None or round_seconds <= 0:
        return repeat
    return min(repeat, max(MIN_ROUNDS, int(budget / round_seconds)))


def rotated(names: list[str], round_index: int) -> list[str]:
    """The contenders' order in a round: shifted by one each round, so each
    contender runs first, second, ... equally often."""
    shift = round_index % len(names) if names else 0
    return names[shift:] + names[:shift]


def interleaved(
    funcs: Mapping[str, Callable[[], object]],
    repeat: int,
    min_time: float,
    clock: Clock = time.perf_counter,
    budget: float | None = None,
) -> dict[str, Timing]:
    """Time every contender in rounds, one sample of each per round, in a
    rotating order; returns seconds per call for each. `repeat` rounds, or
    fewer when they would overrun `budget` seconds (see rounds_within)."""
    if repeat < 1:
        raise ValueError(f"repeat must be at least 1, got {repeat}")
    names = list(funcs)
    with gc_paused():
        for func in funcs.values():  # warm up: first-call costs (imports, page faults) stay out
            func()
        calibrated = {name: calibrate(funcs[name], min_time, clock) for name in names}
        numbers = {name: number for name, (number, _) in calibrated.items()}
        round_seconds = sum(number * per_call for number, per_call in calibrated.values())
        samples: dict[str, list[float]] = {name: [] for name in names}
        for round_index in range(rounds_within(repeat, budget, round_seconds)):
            for name in rotated(names, round_index):
                elapsed = time_calls(funcs[name], numbers[name], clock)
                samples[name].append(elapsed / numbers[name])
    return {name: Timing(tuple(samples[name]), numbers[name]) for name in names}


SETTLE_BYTES = 30 * 2**20  # below glibc's 32 MiB cap on its dynamic mmap threshold


def settle_allocator() -> None:
    """Put glibc's malloc in the steady state of a long-running process before timing.

    Freeing one large mapped block raises malloc's mmap threshold to its size
    (and the trim threshold to twice that), so later temporaries below it are
    reused from the heap instead of being mapped and page-faulted in anew on
    every call. Without this the state depends on what ran before (importing
    torch does the same), and NumPy's many-temporary reference was 3-4x slower
    at (100, 500) without torch than with it. Other allocators ignore it.
    """
    block = np.empty(SETTLE_BYTES // 8)
    del block


def gb_per_s(traffic_bytes: int, seconds: float) -> float:
    """Throughput in GB/s (10**9 bytes) of the given traffic."""
    return traffic_bytes / seconds / 1e9 if seconds > 0 else float("inf")


def copy_bandwidth(nbytes: int, repeat: int, min_time: float = 0.0,
                   clock: Clock = time.perf_counter) -> tuple[float, Timing]:
    """GB/s of np.copyto between two arrays of nbytes each (traffic: read one,
    write the other, 2·nbytes), the yardstick for the kernels' GB/s."""
    src = np.ones(nbytes // 8)
    dst = np.zeros_like(src)  # both touched before timing, so no first-touch page faults
    timing = interleaved({"copy": lambda: np.copyto(dst, src)}, repeat, min_time, clock)["copy"]
    return gb_per_s(2 * src.nbytes, timing.median), timing
