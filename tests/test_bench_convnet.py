"""`fastnorm bench --convnet`: tiny runs through the real command. No assertion is about speed."""

import importlib.util
import json

import pytest

from fastnorm.benchmarks import convnet_step
from fastnorm.cli import main

HAS_TORCH = importlib.util.find_spec("torch") is not None
TINY_SHAPES = (convnet_step.Shape("tiny", (2, 8, 8), 6, num_filters=(4,), hidden_dim=8, G=2),)


@pytest.fixture
def tiny(monkeypatch):
    monkeypatch.setattr(convnet_step, "SHAPES", TINY_SHAPES)


def test_measure_times_every_contender_and_torch_agrees():
    result = convnet_step.measure([1], repeat=1, min_time=0.0, clock_mode="auto", with_torch=HAS_TORCH,
                                  shapes=TINY_SHAPES)
    cells = result["cells"]
    assert [c["normalization"] for c in cells] == list(convnet_step.NORMS)
    for cell in cells:
        assert set(cell["times"]) == ({"fast", "reference", "torch"} if HAS_TORCH else {"fast", "reference"})
        assert all(t["median_s"] > 0 for t in cell["times"].values())
        if HAS_TORCH:  # the same float32 network from the same weights: the same loss
            assert cell["torch_loss_gap"] < 1e-5
    assert [c["G"] for c in cells] == [None, None, 2]
    text = convnet_step.text_report(result)
    assert "(6, 2, 8, 8)" in text and "groupnorm (G=2)" in text


def test_cli_writes_table_markdown_and_json(tiny, tmp_path, capsys):
    out = tmp_path / "bench"
    assert main(["bench", "--convnet", "--quick", "--repeat", "1", "--min-time", "0", "--no-torch",
                 "--no-progress", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "fastnorm bench --convnet" in printed and "ref / fast" in printed
    record = json.loads((out / "convnet.json").read_text())
    assert record["kind"] == "convnet" and len(record["cells"]) == 3
    assert all(c["torch_loss_gap"] is None and "torch" not in c["times"] for c in record["cells"])
    assert (out / "convnet.md").read_text().count("\n| ") == 4  # header and three rows


@pytest.mark.parametrize("extra", [["--vs-torch"], ["--nd"], ["--shapes", "4x5"], ["--check"]])
def test_cli_refuses_options_of_the_kernel_benchmark(extra, tmp_path, capsys):
    assert main(["bench", "--convnet", *extra, "--out", str(tmp_path)]) == 2
    assert "--convnet takes" in capsys.readouterr().err
