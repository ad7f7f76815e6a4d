"""Expand the Tempita templates of src/ (`*.pxd.tp`, `*.pyx.tp`) into a build folder.

setup.py loads this file by path and calls `expand_all` before cythonize; the
expanded `.pxd` files are found there through Cython's include path. Only the
templates are tracked. Every template sees the same namespace: the tiling
constants (the C enums of _parallel.pxd are generated from them, so a literal
`range` step and its enum cannot disagree), the summands of the reductions and
`tasks`, the one-thread/many-thread loop over independent tasks.
"""

import textwrap
from pathlib import Path

from Cython.Tempita import Template

ROW_BLOCK = 64    # rows in one reduction tile
COL_TILE = 512    # columns in one reduction tile: 64 x 512 doubles = 256 KiB, L2-resident
LANES = 16        # independent accumulators of a row sum (vectorizable, fixed order)
STRIP = 16        # columns whose sums a tile reduction keeps in registers
ROW_CHUNK = 8     # rows a strip pass takes at once: 8 lines per cache set, any row stride

# The summands f of the plain reductions, as expressions of an element {x} and
# a shift {s}: sums of f over a row (sums.pxd) or down the columns of a tile.
SUMMANDS = [
    ("sum", "{x}"),
    ("dev_sum", "{x} - {s}"),
    ("dev_sq", "({x} - {s}) * ({x} - {s})"),
]

_INDENT = "\x01"  # marks a line that takes the indentation of the line the helper was called on


def tasks(var, count, n_threads, call):
    """`for var in range(count): call`, as a plain loop when n_threads == 1 (opening
    even a one-thread OpenMP region costs ~0.5-1 us, much of a small call), else as a
    static prange. Each task is the same one call in both loops, so both compute the
    same bits. `call` may span lines; place the helper alone on its line."""
    body = textwrap.dedent(call).strip("\n").split("\n")
    lines = [f"if {n_threads} == 1:   # no OpenMP team (see threads_for)",
             f"    for {var} in range({count}):"]
    lines += ["        " + line for line in body]
    lines += ["else:",
              f"    for {var} in prange({count}, num_threads={n_threads}, schedule='static'):"]
    lines += ["        " + line for line in body]
    return lines[0] + "".join("\n" + _INDENT + line for line in lines[1:])


def _indent_helpers(text):
    out, host = [], ""
    for line in text.split("\n"):
        if line.startswith(_INDENT):
            line = host + line[len(_INDENT):]
        else:
            host = line[: len(line) - len(line.lstrip())]
        out.append(line)
    return "\n".join(out)


NAMESPACE = {
    "ROW_BLOCK": ROW_BLOCK, "COL_TILE": COL_TILE, "LANES": LANES, "STRIP": STRIP,
    "ROW_CHUNK": ROW_CHUNK, "SUMMANDS": SUMMANDS, "tasks": tasks,
}


def expand(template: Path) -> str:
    """The Cython source a template expands to, headed by where it comes from."""
    text = Template(template.read_text(), name=template.name).substitute(NAMESPACE)
    return (f"# Generated from src/{template.name} by src/codegen.py: edit the template.\n"
            + _indent_helpers(text))


def expand_all(src: Path, out: Path) -> list:
    """Expand every template of src into out (files rewritten only when changed, so
    that cythonize's timestamps stay meaningful); returns the expanded paths."""
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for template in sorted(src.glob("*.p[yx][xd].tp")):
        target = out / template.name[: -len(".tp")]
        text = expand(template)
        if not target.is_file() or target.read_text() != text:
            target.write_text(text)
        written.append(target)
    return written
