"""The README's Python examples run as written, and so do those of the docs/ pages
that took over the README's longer examples."""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S) if README.is_file() else []
USAGE = ROOT / "docs" / "usage.md"  # the full usage examples, moved from the README
USAGE_BLOCKS = re.findall(r"```python\n(.*?)```", USAGE.read_text(), flags=re.S) if USAGE.is_file() else []


@pytest.mark.skipif(not README.is_file(), reason="needs the source tree")
def test_readme_has_python_examples():
    assert len(BLOCKS) >= 2


def run_examples(blocks, index: int, page: str) -> None:
    """Examples 0..index of a page in one namespace: later ones may use names of earlier ones."""
    namespace = {}
    for block in blocks[: index + 1]:
        exec(compile(block, f"{page} example {index}", "exec"), namespace)


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_readme_example_runs(index, capsys):
    run_examples(BLOCKS, index, "README.md")


@pytest.mark.skipif(not USAGE.is_file(), reason="needs the source tree")
def test_usage_page_has_python_examples():
    assert len(USAGE_BLOCKS) >= 3


@pytest.mark.parametrize("index", range(len(USAGE_BLOCKS)))
def test_usage_example_runs(index, capsys):
    run_examples(USAGE_BLOCKS, index, "docs/usage.md")


@pytest.mark.skipif(not README.is_file(), reason="needs the source tree")
def test_readme_is_a_front_page():
    """At most 150 lines, with the Quickstart's two commands as written, and every
    docs/ page it links present."""
    text = README.read_text()
    assert len(text.splitlines()) <= 150
    assert "pip install . && fastnorm bench && fastnorm experiment all --quick\n" in text
    assert 'pip install ".[test]" && pytest\n' in text
    for page in re.findall(r"\]\((docs/[^)#]+)", text):
        assert (ROOT / page).is_file(), page
