"""`fastnorm bench`: how much faster the compiled kernels are.

    fastnorm bench                 against NumPy (graph and simplified backward) and PyTorch,
                                   over a sweep of shapes, float32 and float64, one thread
    fastnorm bench --vs-torch      against PyTorch's kernels: six shapes and a 2x3 call-overhead
                                   case, float32 and float64, 1 and 2 threads, with a Markdown table
    fastnorm bench --convnet       one training step of fastnorm's ConvNet: compiled kernels,
                                   NumPy reference and torch eager, each normalization
    fastnorm bench --train-step    one training step of the notebook's model (5x100, batch
                                   norm, Adam): fastnorm against its NumPy kernels and torch eager
    fastnorm bench --quick         fewer, shorter samples
    fastnorm bench --nd            the N-D normalizations (spatial batch norm NCHW and channels-last,
                                   group norm, layer and RMS norm on (..., D)) against NumPy and
                                   PyTorch; with --vs-torch against PyTorch only, at 1 and 2 threads

Prints a table with the targets met or missed, and writes it with JSON and a
PNG chart to --out.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

DEFAULT_OUT = "bench-out"
REPEAT, QUICK_REPEAT = 5, 3
MIN_TIME_MS, QUICK_MIN_TIME_MS = 5.0, 1.0
BUDGET_S, QUICK_BUDGET_S = 3.0, 1.0  # per cell: slow NumPy contenders on big arrays get fewer rounds
COPY_MIN_BYTES = 64 * 2**20


def _thread_list(text: str) -> list[int]:
    from fastnorm._threads import MAX_THREADS

    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values or min(values) < 1 or max(values) > MAX_THREADS:
        raise argparse.ArgumentTypeError(f"expected thread counts from 1 to {MAX_THREADS}, got {text!r}")
    return values


def _number(kind, zero_ok=False):
    """A finite number > 0 (>= 0 with zero_ok) of the given kind."""
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if not (math.isfinite(value) and (value >= 0 if zero_ok else value > 0)):
            raise argparse.ArgumentTypeError(f"expected a finite number {'>=' if zero_ok else '>'} 0, "
                                             f"got {text!r}")
        return value
    return parse


def _shape_list(text: str) -> list[tuple[int, int]]:
    """'100x500,8x65536' -> [(100, 500), (8, 65536)]."""
    shapes = []
    for item in text.split(","):
        try:
            n, d = (int(v) for v in item.lower().split("x"))
        except ValueError:
            raise argparse.ArgumentTypeError(f"a shape is NxD, like 100x500; got {item!r}") from None
        if n < 2 or d < 1:  # batch norm in train mode needs two rows
            raise argparse.ArgumentTypeError(f"shape {item!r}: need N >= 2 and D >= 1")
        shapes.append((n, d))
    return shapes


def _choice_list(choices):
    def parse(text: str) -> list[str]:
        values = [v.strip() for v in text.split(",") if v.strip()]
        unknown = [v for v in values if v not in choices]
        if unknown or not values:
            raise argparse.ArgumentTypeError(f"choose from {', '.join(choices)}; got {text!r}")
        return values
    return parse


def add_parser(subparsers) -> None:
    from .nd import OPS as ND_OPS
    from .suite import DTYPES, OPS

    parser = subparsers.add_parser(
        "bench", help="time the compiled kernels against NumPy and PyTorch",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vs-torch", action="store_true",
                        help="the matrix against PyTorch's kernels at 1 and 2 threads")
    parser.add_argument("--convnet", action="store_true",
                        help="time one training step of fastnorm.ConvNet (compiled, reference, torch eager) "
                             "instead of the kernels")
    parser.add_argument("--nd", action="store_true",
                        help="the N-D normalizations on convnet and transformer shapes (benchmarks/nd.py)")
    parser.add_argument("--quick", action="store_true",
                        help=f"{QUICK_REPEAT} runs of >= {QUICK_MIN_TIME_MS:g} ms per contender")
    parser.add_argument("--repeat", type=_number(int),
                        help=f"interleaved runs per contender (default {REPEAT}, at least 3 within --budget)")
    parser.add_argument("--budget", type=_number(float, zero_ok=True), metavar="SECONDS",
                        help=f"time per cell past which runs are cut (default {BUDGET_S:g} s; 0: no limit)")
    parser.add_argument("--min-time", type=_number(float, zero_ok=True), metavar="MS",
                        help=f"least duration of one timed sample (default {MIN_TIME_MS:g} ms)")
    parser.add_argument("--threads", type=_thread_list, metavar="N[,N...]",
                        help="thread counts (default: 1 for bench, where NumPy is single-threaded; "
                             "1,2 for --vs-torch)")
    parser.add_argument("--shapes", type=_shape_list, metavar="NxD[,NxD...]", help="replace the shapes")
    parser.add_argument("--dtypes", type=_choice_list(DTYPES), metavar="DTYPE[,...]",
                        help=f"subset of {','.join(DTYPES)}")
    parser.add_argument("--ops", type=_choice_list(OPS + tuple(op for op in ND_OPS if op not in OPS)),
                        metavar="OP[,...]",
                        help=f"subset of {','.join(OPS)}; with --nd of {','.join(ND_OPS)}")
    parser.add_argument("--clock", choices=("auto", "wall"), default="auto",
                        help="auto (default): the process's CPU time for 1-thread cells, steady on a "
                             "shared machine, wall time for more threads; wall: wall time everywhere")
    parser.add_argument("--no-torch", action="store_true", help="leave PyTorch out even if installed")
    parser.add_argument("--out", type=Path, default=Path(DEFAULT_OUT),
                        help=f"folder for the table, JSON and PNG (default {DEFAULT_OUT}/)")
    parser.add_argument("--no-progress", action="store_true",
                        help="no progress bar (there is none either when stderr is not a terminal)")
    parser.add_argument("--train-step", action="store_true",
                        help="time one training step of the notebook's model instead of the kernels")
    parser.add_argument("--check", action="store_true", help="exit with 1 when a target is missed")
    parser.set_defaults(func=run)


def _settings(args) -> dict:
    """The run's parameters, defaults filled in."""
    from . import suite

    vs_torch = args.vs_torch
    budget = args.budget if args.budget is not None else QUICK_BUDGET_S if args.quick else BUDGET_S
    default_shapes = (suite.MATRIX_SHAPES + (suite.OVERHEAD_SHAPE,)) if vs_torch else suite.sweep_shapes()
    return {
        "repeat": args.repeat or (QUICK_REPEAT if args.quick else REPEAT),
        "min_time_s": (args.min_time if args.min_time is not None
                       else QUICK_MIN_TIME_MS if args.quick else MIN_TIME_MS) / 1e3,
        "budget_s": budget or None,
        "threads": args.threads or ([1, 2] if vs_torch else [1]),
        "shapes": [list(s) for s in (args.shapes or default_shapes)],
        "dtypes": args.dtypes or list(suite.DTYPES),
        "ops": args.ops or list(suite.OPS),
        "torch": not args.no_torch,
        "clock": args.clock,
    }


def _roles_of(vs_torch: bool, with_torch: bool):
    """Which contenders a case gets: all anchors for bench; torch (and the graph
    backward at the notebook's cell) for --vs-torch."""
    from . import suite

    def roles(case) -> tuple[str, ...]:
        own = ("fastnorm", "fastnorm_out") if case.is_large else ("fastnorm",)  # out=: for GB/s
        torch = ("torch",) if with_torch else ()
        if not vs_torch:
            return own + ("numpy", "graph") + torch
        notebook = case.shape == suite.NOTEBOOK_SHAPE and case.dtype == "float64"
        return own + torch + (("graph",) if notebook else ())

    return roles


def _copy_bandwidth(repeat: int, clock_mode: str):
    """Seconds per copy of an array larger than the last-level cache: (bytes, samples).
    The copy runs on one thread, so it takes that clock: with 'auto' the CPU
    time, which other processes inflate least (a conservative yardstick)."""
    from . import machine, timing

    nbytes = max(COPY_MIN_BYTES, 2 * machine.last_level_cache_bytes())
    clock = timing.CLOCKS[timing.clock_for(clock_mode, 1)]
    _, copies = timing.copy_bandwidth(nbytes, repeat, clock=clock)
    return nbytes, list(copies.samples)


def measure(args):
    import statistics

    from . import machine, report, runner, suite, targets, timing, torch_anchor

    load_before = machine.load_average()
    timing.settle_allocator()  # the same allocator state with or without torch
    settings = _settings(args)
    with_torch = settings["torch"] and torch_anchor.available()
    kind = "vs-torch" if args.vs_torch else "bench"
    cases = suite.cases([tuple(s) for s in settings["shapes"]], settings["dtypes"], settings["ops"])
    # copy bandwidth before and after the cells, pooled: drift over the run shows in both
    copy_bytes, copy_samples = _copy_bandwidth(settings["repeat"], args.clock)
    plan = runner.Plan(settings["repeat"], settings["min_time_s"], settings["budget_s"], args.clock)
    cells = runner.run_cells(cases, settings["threads"], _roles_of(args.vs_torch, with_torch), plan,
                             progress=not args.no_progress and sys.stderr.isatty())
    copy_samples += _copy_bandwidth(settings["repeat"], args.clock)[1]
    copy_gbps = timing.gb_per_s(2 * copy_bytes, statistics.median(copy_samples))
    verdicts = (targets.check_vs_torch(cells, copy_gbps) if args.vs_torch else targets.check_bench(cells))
    info = machine.describe(torch_anchor.version() if with_torch else None, load_before)
    return report.Run(kind, info, settings, copy_gbps, copy_samples, copy_bytes, cells, verdicts)


def run(args) -> int:
    from . import report, torch_anchor

    if args.convnet:
        return _run_convnet(args)
    if args.vs_torch and args.no_torch:
        print("fastnorm bench: --vs-torch and --no-torch exclude each other", file=sys.stderr)
        return 2
    if args.vs_torch and not torch_anchor.available():
        print("fastnorm bench --vs-torch needs PyTorch: pip install torch==2.13.0", file=sys.stderr)
        return 2
    started = time.perf_counter()
    if args.nd:
        return _run_nd(args, started)
    from .suite import OPS
    if args.ops and not set(args.ops) <= set(OPS):
        print(f"fastnorm bench: --ops {','.join(sorted(set(args.ops) - set(OPS)))} needs --nd", file=sys.stderr)
        return 2
    if args.train_step:
        return _run_train_step(args, started)
    result = measure(args)
    paths = report.write_all(result, args.out)
    print(report.text_report(result))
    if args.vs_torch:
        print("\nMarkdown (for the README):\n")
        print(report.markdown_report(result))
    print(f"\nwrote {', '.join(str(p) for p in paths.values())} "
          f"in {time.perf_counter() - started:.0f} s")
    missed = any(v.checked and not v.passed for v in result.verdicts)
    return 1 if args.check and missed else 0


def _run_convnet(args) -> int:
    from . import convnet_step, torch_anchor

    if args.vs_torch or args.nd or args.shapes or args.dtypes or args.ops or args.check:
        print("fastnorm bench --convnet takes --quick, --repeat, --min-time, --threads, --clock, "
              "--no-torch, --out and --no-progress only", file=sys.stderr)
        return 2
    started = time.perf_counter()
    min_time_ms = args.min_time if args.min_time is not None else QUICK_MIN_TIME_MS if args.quick else MIN_TIME_MS
    result = convnet_step.measure(
        args.threads or [1], args.repeat or (QUICK_REPEAT if args.quick else REPEAT), min_time_ms / 1e3,
        args.clock, with_torch=not args.no_torch and torch_anchor.available(),
        progress=not args.no_progress and sys.stderr.isatty())
    paths = convnet_step.write(result, args.out)
    print(convnet_step.text_report(result))
    print(f"\nwrote {', '.join(str(p) for p in paths)} in {time.perf_counter() - started:.0f} s")
    return 0


def _run_nd(args, started: float) -> int:
    """`fastnorm bench --nd`: the table, also written as nd.txt, nd.md and nd.json under --out."""
    import json

    from . import nd, timing, torch_anchor

    timing.settle_allocator()
    with_torch = not args.no_torch and torch_anchor.available()
    budget = args.budget if args.budget is not None else QUICK_BUDGET_S if args.quick else BUDGET_S
    min_time = args.min_time if args.min_time is not None else QUICK_MIN_TIME_MS if args.quick else MIN_TIME_MS
    threads = args.threads or ([1, 2] if args.vs_torch else [1])
    dtypes = [d for d in (args.dtypes or nd.DTYPES) if d in nd.DTYPES]
    cells = nd.run(nd.cases(args.quick, dtypes, args.ops or nd.OPS), threads, args.repeat or (QUICK_REPEAT if args.quick else REPEAT),
                   min_time / 1e3, budget or None, with_torch, with_numpy=not args.vs_torch, clock_mode=args.clock)
    text, markdown = nd.report(cells), nd.report(cells, markdown=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "nd.txt").write_text(text + "\n")
    (args.out / "nd.md").write_text(markdown + "\n")
    (args.out / "nd.json").write_text(json.dumps(
        [{"op": c.case.op, "shape": list(c.case.shape), "layout": c.case.layout, "dtype": c.case.dtype,
          "threads": c.threads, "times": {r: t.as_dict() for r, t in c.timings.items()},
          "speedup": {r: c.speedup(r) for r in c.timings if r != "fastnorm"}} for c in cells], indent=1))
    print(text)
    print(f"\nwrote nd.txt, nd.md, nd.json to {args.out} in {time.perf_counter() - started:.0f} s")
    behind = any(c.speedup("torch") is not None and c.speedup("torch") < 1.0 for c in cells)
    return 1 if args.check and behind else 0
def _run_train_step(args, started: float) -> int:
    """`fastnorm bench --train-step`: the table on screen, and train-step.{txt,md,json} in --out."""
    import json

    from . import machine, torch_anchor, train_step
    from .report import format_table

    settings = _settings(args)
    with_torch = settings["torch"] and torch_anchor.available()
    threads = args.threads or [1, 2]
    rows = train_step.measure(train_step.cases(threads=threads, dtypes=settings["dtypes"]),
                              settings["repeat"], settings["min_time_s"], args.clock, with_torch,
                              settings["budget_s"])
    info = machine.describe(torch_anchor.version() if with_torch else None, machine.load_average())
    headers, body = train_step.table(rows)
    title = f"fastnorm train step: {machine.one_line(info)}; median of interleaved runs, 'vs X' = X's time / fastnorm's"
    verdict = train_step.summary(rows)
    text = "\n".join([title, "", format_table(headers, body), "", verdict])
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "train-step.txt").write_text(text + "\n")
    (args.out / "train-step.md").write_text("\n".join([title, "", format_table(headers, body, markdown=True),
                                                       "", verdict]) + "\n")
    (args.out / "train-step.json").write_text(json.dumps({"machine": info, "rows": rows}, indent=1) + "\n")
    print(text)
    print(f"\nwrote {args.out / 'train-step.txt'}, .md, .json in {time.perf_counter() - started:.0f} s")
    return 1 if args.check and verdict.startswith("[MISS]") else 0
