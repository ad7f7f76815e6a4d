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
