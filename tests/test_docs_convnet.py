"""docs/convnet.md's Python examples run as written and say what they print."""

import re
from pathlib import Path

import pytest

PAGE = Path(__file__).resolve().parents[1] / "docs" / "convnet.md"
BLOCKS = re.findall(r"```python\n(.*?)```", PAGE.read_text(), flags=re.S) if PAGE.is_file() else []


@pytest.mark.skipif(not PAGE.is_file(), reason="needs the source tree")
def test_page_has_the_layer_and_training_examples():
    assert len(BLOCKS) == 2


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_example_runs(index, capsys):
    exec(compile(BLOCKS[index], f"docs/convnet.md example {index}", "exec"), {})
    if "best validation accuracy" in BLOCKS[index]:
        printed = capsys.readouterr().out
        assert float(printed.split()[-1]) >= 0.95
        assert f"{float(printed.split()[-1]):.3f}" in PAGE.read_text()  # the figure the page states
