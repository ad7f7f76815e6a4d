"""The `fastnorm` command: `fastnorm bench`, `fastnorm experiment`, `fastnorm data`.

Each subcommand lives beside the code it runs and provides
``add_parser(subparsers)``, which registers its parser with ``func=run``.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# subcommand modules, in the order `fastnorm --help` lists them
SUBCOMMANDS = (
    "fastnorm.benchmarks.cli",
    "fastnorm.experiments.cli",
    "fastnorm.data.cli",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fastnorm",
        description="Compiled batch/layer normalization: benchmarks and the notebook's experiments.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in SUBCOMMANDS:
        importlib.import_module(name).add_parser(subparsers)
    return parser


def _version() -> str:
    from . import __version__

    return __version__


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
