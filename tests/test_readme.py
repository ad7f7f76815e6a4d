"""The README's Python examples run as written."""

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S) if README.is_file() else []


@pytest.mark.skipif(not README.is_file(), reason="needs the source tree")
def test_readme_has_python_examples():
    assert len(BLOCKS) >= 2


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_readme_example_runs(index, capsys):
    namespace = {}
    for block in BLOCKS[: index + 1]:  # later examples may use names of earlier ones
        exec(compile(block, f"README.md example {index}", "exec"), namespace)
