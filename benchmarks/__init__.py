"""fastnorm's benchmark suite, installed as ``fastnorm.benchmarks``: ``fastnorm bench``.

    timing.py        interleaved medians, copy bandwidth
    suite.py         cases (op, shape, dtype) and their contenders
    torch_anchor.py  PyTorch's ATen kernels, when torch is importable
    runner.py        runs the cells at each thread count
    targets.py       the speed targets of issues 2 and 5
    report.py        text and Markdown tables, JSON, PNG chart
    machine.py       CPU model, cores, cache size, versions
    cli.py           the `bench` subcommand

Heavy imports (matplotlib, torch) happen inside functions, only when used.
"""
