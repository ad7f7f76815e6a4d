"""fastnorm's speed targets, checked on a run's cells.

Each check appends a short tag to the `misses` of every cell that misses it
and returns a Verdict for the summary. Targets live here, in the benchmark's
output; the tests never assert on speed.
"""

from __future__ import annotations

from dataclasses import dataclass

from .suite import NOTEBOOK_SHAPE, OVERHEAD_SHAPE

# fastnorm bench
GRAPH_SPEEDUP_BENCH = 20.0
SIMPLIFIED_SPEEDUP = 3.0
# fastnorm bench --vs-torch
GRAPH_SPEEDUP_VS_TORCH = 30.0
COPY_FRACTION = 0.50  # of a forward on arrays >= 16 MiB (a two-sweep forward's ceiling: 67%)


@dataclass(frozen=True)
class Verdict:
    target: str
    checked: int  # cells the target applies to
    missed: list[str]  # one line per missing cell

    @property
    def passed(self) -> bool:
        return self.checked > 0 and not self.missed

    def line(self) -> str:
        if self.checked == 0:
            return f"[ -- ] {self.target}: not measured in this run"
        state = "PASS" if self.passed else "MISS"
        count = f"{len(self.missed)} of {self.checked} cells miss" if self.missed else f"{self.checked} cells"
        return f"[{state}] {self.target} ({count})"

    def as_dict(self) -> dict:
        return {"target": self.target, "checked": self.checked, "passed": self.passed,
                "missed": list(self.missed)}


def _where(cell) -> str:
    c = cell.case
    return f"{c.op} {c.shape_text} {c.dtype} {cell.threads}t"


def _check(cells, target: str, tag: str, applies, holds) -> Verdict:
    """Mark the cells where applies(cell) and not holds(cell)."""
    checked, missed = 0, []
    for cell in cells:
        if not applies(cell):
            continue
        checked += 1
        if not holds(cell):
            cell.misses.append(tag)
            missed.append(_where(cell))
    return Verdict(target, checked, missed)


def _is_notebook_bn_backward(cell) -> bool:
    c = cell.case
    return c.op == "bn_bwd" and c.shape == NOTEBOOK_SHAPE and c.dtype == "float64"


def _is_overhead(cell) -> bool:
    return cell.case.shape == OVERHEAD_SHAPE


def _against(role: str, only=None):
    """Applies to the cells timed against role (and passing `only`, if given)."""
    return lambda cell: role in cell.timings and (only is None or only(cell))


def _at_least(role: str, factor: float):
    """Holds where fastnorm is at least factor times faster than role."""
    def holds(cell) -> bool:
        speedup = cell.speedup(role)
        return speedup is not None and speedup >= factor
    return holds


def check_bench(cells) -> list[Verdict]:
    """The targets of `fastnorm bench` (against the NumPy reference)."""
    notebook = f"bn backward {NOTEBOOK_SHAPE} float64: fused >="
    return [
        _check(cells, f"{notebook} {GRAPH_SPEEDUP_BENCH:g}x faster than the graph backward", "graph",
               _against("graph", _is_notebook_bn_backward), _at_least("graph", GRAPH_SPEEDUP_BENCH)),
        _check(cells, f"{notebook} {SIMPLIFIED_SPEEDUP:g}x faster than the NumPy simplified backward",
               "simplified", _against("numpy", _is_notebook_bn_backward),
               _at_least("numpy", SIMPLIFIED_SPEEDUP)),
        _check(cells, "every cell: fastnorm faster than the NumPy reference", "numpy",
               _against("numpy"), _at_least("numpy", 1.0)),
    ]


def check_vs_torch(cells, copy_gbps: float) -> list[Verdict]:
    """The targets of `fastnorm bench --vs-torch`."""
    def large_forward(cell) -> bool:
        return cell.case.is_large and cell.case.op.endswith("fwd")

    def near_copy(cell) -> bool:
        return cell.gbps >= COPY_FRACTION * copy_gbps

    overhead = f"{OVERHEAD_SHAPE[0]}x{OVERHEAD_SHAPE[1]}"
    return [
        _check(cells, "every cell: fastnorm time <= torch", "torch",
               _against("torch", lambda c: not _is_overhead(c)), _at_least("torch", 1.0)),
        _check(cells, f"forwards on arrays >= 16 MiB: >= {COPY_FRACTION:.0%} of the copy bandwidth",
               "bandwidth", large_forward, near_copy),
        _check(cells, f"per-call overhead at {overhead}: fastnorm <= torch's op call", "overhead",
               _against("torch", _is_overhead), _at_least("torch", 1.0)),
        _check(cells, f"bn backward {NOTEBOOK_SHAPE} float64: fused >= {GRAPH_SPEEDUP_VS_TORCH:g}x "
               "faster than the graph backward", "graph",
               _against("graph", _is_notebook_bn_backward), _at_least("graph", GRAPH_SPEEDUP_VS_TORCH)),
    ]
