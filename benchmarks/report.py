"""A run's results as a text table, a Markdown table, JSON and a PNG chart."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from . import machine
from .suite import OP_LABELS
from .targets import GRAPH_SPEEDUP_VS_TORCH

MISS_MARK = "✗"
JSON_NAME = "{kind}.json"
CHART_NAME = "{kind}.png"
TABLE_NAME = "{kind}.txt"
MARKDOWN_NAME = "{kind}.md"


@dataclass
class Run:
    """Everything one `fastnorm bench` invocation measured."""

    kind: str  # "bench" or "vs-torch"
    info: dict  # machine.describe()
    settings: dict
    copy_gbps: float
    copy_samples_s: list[float]
    copy_bytes: int
    cells: list  # runner.Cell
    verdicts: list  # targets.Verdict

    def as_dict(self) -> dict:
        return {
            "kind": self.kind,
            "machine": self.info,
            "settings": self.settings,
            "copy": {"gbps": self.copy_gbps, "bytes": self.copy_bytes, "samples_s": self.copy_samples_s},
            "cells": [cell.as_dict(self.copy_gbps) for cell in self.cells],
            "targets": [v.as_dict() for v in self.verdicts],
        }


# -- formatting of single values ------------------------------------------------------------

def seconds_text(seconds: float | None) -> str:
    """Time with a unit that keeps 3-4 significant digits: '812 ns', '12.3 µs', '4.56 ms'."""
    if seconds is None:
        return "-"
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("µs", 1e-6)):
        if seconds >= scale:
            return f"{seconds / scale:.3g} {unit}"
    return f"{seconds / 1e-9:.3g} ns"


def speedup_text(speedup: float | None, missed: bool = False) -> str:
    if speedup is None:
        return "-"
    return f"{speedup:.2f}x" + (f" {MISS_MARK}" if missed else "")


def gbps_text(cell, copy_gbps: float) -> str:
    """'12.3 (71%)' for large arrays, where GB/s means memory traffic; '-' for cached ones."""
    if not cell.case.is_large:
        return "-"
    mark = f" {MISS_MARK}" if "bandwidth" in cell.misses else ""
    return f"{cell.gbps:.1f} ({cell.gbps / copy_gbps:.0%}){mark}"


def format_table(headers: Sequence[str], rows: Sequence[Sequence[str]], markdown: bool = False) -> str:
    """Aligned plain text, or a Markdown pipe table."""
    if markdown:
        lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
        lines += ["| " + " | ".join(row) + " |" for row in rows]
        return "\n".join(lines)
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]

    def render(cols) -> str:
        return "  ".join(c.ljust(w) for c, w in zip(cols, widths)).rstrip()

    return "\n".join([render(headers), render(["-" * w for w in widths])] + [render(r) for r in rows])


# -- the two layouts --------------------------------------------------------------------------

def _case_columns(case) -> list[str]:
    return [OP_LABELS[case.op], case.shape_text, case.dtype]


def bench_rows(run: Run) -> tuple[list[str], list[list[str]]]:
    """One row per cell: fastnorm against each anchor, and its GB/s."""
    headers = ["op", "shape", "dtype", "thr", "fastnorm", "numpy", "vs numpy", "graph", "vs graph",
               "torch", "vs torch", "GB/s (of copy)"]
    rows = []
    for cell in run.cells:
        row = _case_columns(cell.case) + [str(cell.threads), seconds_text(cell.seconds("fastnorm"))]
        for role, tag in (("numpy", ("numpy", "simplified")), ("graph", ("graph",)), ("torch", ("torch",))):
            missed = any(t in cell.misses for t in tag)
            row += [seconds_text(cell.seconds(role)), speedup_text(cell.speedup(role), missed)]
        rows.append(row + [gbps_text(cell, run.copy_gbps)])
    return headers, rows


def _by_case(cells) -> dict:
    """Cells grouped by case, in run order: {case: {threads: cell}}."""
    grouped: dict = {}
    for cell in cells:
        grouped.setdefault(cell.case, {})[cell.threads] = cell
    return grouped


def matrix_rows(run: Run) -> tuple[list[str], list[list[str]]]:
    """One row per case, a group of columns per thread count: fastnorm, torch, the
    speedup over torch, GB/s for large arrays."""
    thread_counts = sorted({cell.threads for cell in run.cells})
    headers = ["op", "shape", "dtype"]
    for t in thread_counts:
        headers += [f"fastnorm {t}t", f"torch {t}t", f"vs torch {t}t", f"GB/s {t}t"]
    rows = []
    for case, by_threads in _by_case(run.cells).items():
        row = _case_columns(case)
        for t in thread_counts:
            cell = by_threads.get(t)
            if cell is None:
                row += ["-"] * 4
                continue
            missed = "torch" in cell.misses or "overhead" in cell.misses
            row += [seconds_text(cell.seconds("fastnorm")), seconds_text(cell.seconds("torch")),
                    speedup_text(cell.speedup("torch"), missed), gbps_text(cell, run.copy_gbps)]
        rows.append(row)
    return headers, rows


def _graph_lines(run: Run) -> list[str]:
    """The graph-backward speedups, which have no column in the matrix."""
    return [f"{OP_LABELS[c.case.op]} {c.case.shape_text} {c.case.dtype} {c.threads}t: the graph backward "
            f"takes {speedup_text(c.speedup('graph'), 'graph' in c.misses)} fastnorm's time "
            f"(target >= {GRAPH_SPEEDUP_VS_TORCH:g}x)"
            for c in run.cells if "graph" in c.timings and run.kind == "vs-torch"]


def _rounds_text(run: Run) -> str:
    """'5', or '3-5' when the time budget cut the rounds of slow cells."""
    counts = {len(t.samples) for cell in run.cells for t in cell.timings.values()}
    low, high = min(counts, default=0), max(counts, default=0)
    return str(high) if low == high else f"{low}-{high}"


ALLOCATION_LINE = ("Calls without out= allocate their outputs: fastnorm's of 1 MiB and more reuse "
                   "blocks freed before (its output cache); NumPy's and torch's come from malloc, "
                   "which maps blocks of 32 MiB and more afresh on every call.")


def _clock_line(run: Run) -> str:
    if run.settings["clock"] == "wall":
        return "Times are wall time."
    return ("Times: CPU time of the process for 1-thread cells (steady when other processes share "
            "the cores), wall time for more threads.")


def text_report(run: Run) -> str:
    """The table, the copy bandwidth, and a line per target."""
    headers, rows = matrix_rows(run) if run.kind == "vs-torch" else bench_rows(run)
    parts = [
        f"fastnorm {run.kind}: {machine.one_line(run.info)}",
        f"median of {_rounds_text(run)} interleaved runs per contender; 'vs X' = X's time / "
        f"fastnorm's (>1: fastnorm faster); {MISS_MARK} marks a missed target",
        f"copy bandwidth (np.copyto of {run.copy_bytes / 2**20:.0f} MiB, one thread, before and after "
        f"the cells): {run.copy_gbps:.1f} GB/s; "
        f"GB/s of arrays >= 16 MiB: minimum traffic (fwd 2x, bwd 3x the array) of the call with out= "
        f"buffers, which like the copy writes into existing memory",
        _clock_line(run),
        ALLOCATION_LINE,
        *filter(None, [machine.load_note(run.info)]),
        "",
        format_table(headers, rows),
        "",
        *_graph_lines(run),
        "targets:",
    ]
    for verdict in run.verdicts:
        parts += ["  " + verdict.line()] + [f"    missed: {where}" for where in verdict.missed]
    return "\n".join(parts)


def markdown_report(run: Run) -> str:
    """The table for the README, with the machine named."""
    headers, rows = matrix_rows(run) if run.kind == "vs-torch" else bench_rows(run)
    return "\n".join([
        f"Machine: {machine.one_line(run.info)}. Copy bandwidth (np.copyto, one thread) "
        f"{run.copy_gbps:.1f} GB/s; GB/s: minimum traffic of the out= call, arrays >= 16 MiB.",
        f"Median of {_rounds_text(run)} interleaved runs; 'vs X' = X's time / fastnorm's; "
        f"{MISS_MARK} = target missed. {_clock_line(run)}",
        *filter(None, [machine.load_note(run.info)]),
        "",
        format_table(headers, rows, markdown=True),
        "",
        *_graph_lines(run),
    ]).rstrip()


# -- files ------------------------------------------------------------------------------------

def write_json(run: Run, path: Path) -> None:
    path.write_text(json.dumps(run.as_dict(), indent=1) + "\n")


def _chart_panels(run: Run) -> list[str]:
    """The anchors fastnorm is held against, a panel each: torch for --vs-torch, all for bench."""
    roles = ("torch",) if run.kind == "vs-torch" else ("numpy", "graph", "torch")
    return [r for r in roles if any(r in c.timings for c in run.cells)]


CHART_MAX_SPEEDUP = 100.0  # the axis ends here; a noisy outlier would squash every other point
ANCHOR_NAMES = {"torch": "PyTorch", "numpy": "NumPy (simplified backward)", "graph": "NumPy graph backward"}


def _label_ratio(value, _position) -> str:
    return f"{value:g}x"


def write_chart(run: Run, path: Path) -> None:
    """fastnorm's speedup over each anchor (log scale), a panel per anchor: one line per op
    and thread count across the cases (shape, dtype), and the anchor itself as the line at 1x."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from matplotlib.ticker import FixedLocator, FuncFormatter, LogLocator, NullFormatter

    panels = _chart_panels(run) or ["torch"]
    # x positions: the (shape, dtype) pairs in run order; a line per (op, threads) joins its cases
    columns = list(dict.fromkeys((c.case.shape_text, c.case.dtype) for c in run.cells))
    lines = list(dict.fromkeys((c.case.op, c.threads) for c in run.cells))
    fig, axes = plt.subplots(len(panels), 1, figsize=(max(8, 0.55 * len(columns) + 3), 3.6 * len(panels)),
                             squeeze=False)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    ops = list(dict.fromkeys(op for op, _ in lines))
    values_seen = [1.0]
    for ax, role in zip(axes[:, 0], panels):
        for op, threads in lines:
            points = [(columns.index((c.case.shape_text, c.case.dtype)), c.speedup(role)) for c in run.cells
                      if c.case.op == op and c.threads == threads and c.speedup(role)]
            if not points:
                continue
            xs, ys = zip(*points)
            values_seen += ys
            ax.plot(xs, [min(y, CHART_MAX_SPEEDUP) for y in ys], marker="o", markersize=3, linewidth=1,
                    linestyle="-" if threads == 1 else "--", color=colors[ops.index(op) % len(colors)],
                    label=f"{OP_LABELS.get(op, op)}, {threads} thread{'s' * (threads > 1)}")
            for x, y in points:  # a point cut at the axis's end says its value
                if y > CHART_MAX_SPEEDUP:
                    ax.annotate(f"{y:.0f}x", (x, CHART_MAX_SPEEDUP), fontsize=6, ha="center", va="bottom")
        ax.axhline(1.0, color="black", linewidth=1.5)
        ax.text(len(columns) - 0.5, 1.0, f" {ANCHOR_NAMES.get(role, role)} = 1x", va="bottom", ha="right",
                fontsize=7)
        ax.set_yscale("log")
        low = min(values_seen) / 1.3
        high = min(max(values_seen), CHART_MAX_SPEEDUP) * 1.3
        ax.set_ylim(min(low, 0.5), max(high, 2.0))
        # every decade and 1x labelled, with 2x and 5x between them
        ax.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0,)))
        ax.yaxis.set_minor_locator(LogLocator(base=10, subs=(2.0, 5.0)))
        ax.yaxis.set_major_formatter(FuncFormatter(_label_ratio))
        ax.yaxis.set_minor_formatter(FuncFormatter(_label_ratio))
        ax.tick_params(axis="y", which="minor", labelsize=6)
        ax.grid(axis="y", which="both", linewidth=0.3, alpha=0.5)
        ax.xaxis.set_major_locator(FixedLocator(range(len(columns))))
        ax.set_xticklabels([f"{shape} f{dtype[5:]}" for shape, dtype in columns], rotation=45, ha="right",
                           fontsize=7)
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlim(-0.5, len(columns) - 0.5)
        ax.set_ylabel(f"speedup vs {role}\n({role}'s time / fastnorm's)", fontsize=8)
        ax.legend(fontsize=6, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    axes[0, 0].set_title(f"fastnorm {run.kind}: {run.info['cpu']}, {run.info['cores']} cores", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_all(run: Run, out_dir: Path) -> dict[str, Path]:
    """Table, Markdown, JSON and chart into out_dir; returns the paths by kind."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {name: out_dir / pattern.format(kind=run.kind) for name, pattern in
             (("table", TABLE_NAME), ("markdown", MARKDOWN_NAME), ("json", JSON_NAME), ("chart", CHART_NAME))}
    paths["table"].write_text(text_report(run) + "\n")
    paths["markdown"].write_text(markdown_report(run) + "\n")
    write_json(run, paths["json"])
    write_chart(run, paths["chart"])
    return paths
