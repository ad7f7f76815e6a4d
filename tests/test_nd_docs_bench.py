"""docs/nd-normalization.md's examples run as written; `fastnorm bench --nd` times
the ops it names (its contenders compute the same results)."""

import re
from pathlib import Path

import numpy as np
import pytest

from fastnorm.benchmarks import nd

PAGE = Path(__file__).resolve().parents[1] / "docs" / "nd-normalization.md"
BLOCKS = re.findall(r"```python\n(.*?)```", PAGE.read_text(), flags=re.S) if PAGE.is_file() else []


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_docs_example_runs(index):
    namespace = {}
    for block in BLOCKS[: index + 1]:
        exec(compile(block, f"nd-normalization.md example {index}", "exec"), namespace)


def test_docs_page_has_an_example_per_op():
    text = "\n".join(BLOCKS)
    for name in ("spatial_batchnorm_forward", "spatial_groupnorm_forward", "rmsnorm_forward"):
        assert name in text


def test_bench_cases_cover_the_issue_shapes():
    cases = nd.cases()
    conv = {(c.shape, c.layout) for c in cases if c.norm == "sbn"}
    for shape in ((64, 64, 32, 32), (128, 256, 8, 8), (8, 32, 112, 112)):
        assert {(shape, nd.NCHW), (shape, nd.CHANNELS_LAST)} <= conv
    seq = {(c.op, c.shape) for c in cases if c.norm in ("ln", "rms")}
    assert {(op, s) for op in ("ln_fwd", "ln_bwd", "rms_fwd", "rms_bwd") for s in ((8, 512, 768), (4096, 1024))} <= seq


def _first(result):
    return result[0] if isinstance(result, tuple) else result


@pytest.mark.parametrize("case", nd.cases(quick=True, dtypes=("float64",)), ids=lambda c: f"{c.op}-{c.layout}")
def test_bench_contenders_agree(case):
    import fastnorm
    from fastnorm import reference

    inputs = nd.make_inputs(case)
    ours = _first(nd._numpy_api(fastnorm, case, inputs)())
    theirs = _first(nd._numpy_api(reference, case, inputs)())
    np.testing.assert_allclose(ours, theirs, rtol=1e-9, atol=1e-9)
    torch = pytest.importorskip("torch")
    result = nd._torch(case, inputs)()
    t = result[0] if isinstance(result, (tuple, list)) else result
    np.testing.assert_allclose(ours, t.detach().numpy().reshape(ours.shape), rtol=1e-8, atol=1e-8)


def test_bench_cases_keep_the_ops_asked_for():
    cases = nd.cases(quick=True, dtypes=("float32",), ops=("gn_fwd", "sbn_bwd"))
    assert {c.op for c in cases} == {"gn_fwd", "sbn_bwd"}
    assert {c.layout for c in cases if c.op == "sbn_bwd"} == {nd.NCHW, nd.CHANNELS_LAST}
    assert all(c.dtype == "float32" for c in cases)


def test_nd_command_runs_only_the_ops_asked_for(tmp_path):
    import json

    from fastnorm.cli import main

    args = ["bench", "--nd", "--quick", "--repeat", "3", "--min-time", "0", "--budget", "1", "--no-torch",
            "--threads", "1", "--dtypes", "float64", "--ops", "gn_fwd,rms_bwd", "--out", str(tmp_path)]
    assert main(args) == 0
    cells = json.loads((tmp_path / "nd.json").read_text())
    assert sorted(c["op"] for c in cells) == ["gn_fwd", "rms_bwd"]


def test_an_nd_op_without_nd_is_refused(tmp_path, capsys):
    from fastnorm.cli import main

    assert main(["bench", "--ops", "gn_fwd", "--quick", "--out", str(tmp_path)]) == 2
    assert "needs --nd" in capsys.readouterr().err
    assert not tmp_path.exists() or not list(tmp_path.iterdir())
