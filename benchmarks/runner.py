"""Run the cases: each (case, thread count) is one cell of interleaved timings."""

from __future__ import annotations

import contextlib
import itertools
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from . import suite, timing, torch_anchor


@dataclass
class Cell:
    """The timings of one case at one thread count, and the targets it misses."""

    case: suite.Case
    threads: int
    timings: dict[str, timing.Timing]
    clock: str = "wall"  # a key of timing.CLOCKS
    misses: list[str] = field(default_factory=list)

    def seconds(self, role: str) -> float | None:
        t = self.timings.get(role)
        return t.median if t else None

    def speedup(self, role: str) -> float | None:
        """How many times faster fastnorm is than `role` (its time / fastnorm's)."""
        other, own = self.seconds(role), self.seconds("fastnorm")
        return other / own if other is not None and own else None

    @property
    def gbps(self) -> float:
        """fastnorm's throughput of the minimum traffic: of the call with out=
        buffers when timed (no fresh pages to fault in, as for the copy)."""
        role = "fastnorm_out" if "fastnorm_out" in self.timings else "fastnorm"
        return timing.gb_per_s(self.case.traffic, self.seconds(role))

    def as_dict(self, copy_gbps: float) -> dict:
        case = self.case
        return {
            "op": case.op,
            "shape": list(case.shape),
            "dtype": case.dtype,
            "threads": self.threads,
            "clock": self.clock,
            "bytes": case.nbytes,
            "traffic_bytes": case.traffic,
            "large": case.is_large,
            "times": {role: t.as_dict() for role, t in self.timings.items()},
            "speedup": {role: self.speedup(role) for role in self.timings if not role.startswith("fastnorm")},
            "gbps": self.gbps,
            "fraction_of_copy": self.gbps / copy_gbps,
            "misses": list(self.misses),
        }


@contextlib.contextmanager
def thread_count(n: int, with_torch: bool):
    """fastnorm, and torch when it runs, both on n threads."""
    import fastnorm

    with contextlib.ExitStack() as stack:
        stack.enter_context(fastnorm.num_threads(n))
        if with_torch:
            stack.enter_context(torch_anchor.threads(n))
        yield


@dataclass(frozen=True)
class Plan:
    """How each cell is timed (see timing.interleaved)."""

    repeat: int
    min_time: float  # seconds per sample, at least
    budget: float | None = None  # seconds per cell, past which rounds are cut
    clock_mode: str = "auto"  # see timing.clock_for


def run_cell(case, inputs, roles, threads: int, plan: Plan) -> Cell:
    funcs = suite.contenders(case, inputs, roles)
    clock = timing.clock_for(plan.clock_mode, threads)
    with thread_count(threads, "torch" in funcs):
        timings = timing.interleaved(funcs, plan.repeat, plan.min_time, timing.CLOCKS[clock], plan.budget)
    return Cell(case, threads, timings, clock)


def _progress(total: int, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, unit="cell", disable=not enabled, file=sys.stderr, leave=False,
                dynamic_ncols=True)


def run_cells(
    cases: list[suite.Case],
    thread_counts: Iterable[int],
    roles_of: Callable[[suite.Case], tuple[str, ...]],
    plan: Plan,
    progress: bool = True,
) -> list[Cell]:
    """Every case at every thread count; inputs are built once per (shape, dtype)."""
    thread_counts = list(thread_counts)
    cells = []
    with _progress(len(cases) * len(thread_counts), progress) as bar:
        for (shape, dtype), group in itertools.groupby(cases, key=lambda c: (c.shape, c.dtype)):
            inputs = suite.make_inputs(shape, dtype)
            for case, threads in itertools.product(list(group), thread_counts):
                bar.set_description(f"{case.op} {case.shape_text} {dtype} {threads}t")
                cells.append(run_cell(case, inputs, roles_of(case), threads, plan))
                bar.update()
            del inputs  # free the big arrays before the next shape
    return cells
