"""The benchmark's machinery: timing helpers on a fake clock, the target marks,
and tiny runs through the real `fastnorm` command. No assertion here is about
speed: the targets live in the benchmark's output."""

import importlib.util
import json
import platform
import resource

import pytest

from fastnorm.benchmarks import runner, suite, targets, timing, torch_anchor
from fastnorm.cli import main

HAS_TORCH = importlib.util.find_spec("torch") is not None
TINY = ["--shapes", "4x5", "--repeat", "1", "--min-time", "0", "--no-progress"]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


class FakeClock:
    """A clock that only moves when a fake callable says it spent time."""

    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def fake_callable(clock, cost, log=None, name=None):
    def call():
        clock.now += cost() if callable(cost) else cost
        if log is not None:
            log.append(name)
    return call


# -- timing helpers -----------------------------------------------------------------------------

def test_time_calls_sums_the_calls():
    clock = FakeClock()
    assert timing.time_calls(fake_callable(clock, 0.25), 4, clock) == pytest.approx(1.0)


@pytest.mark.parametrize("cost, min_time", [(1e-6, 1e-2), (3e-4, 1e-2), (0.5, 1e-2), (1e-3, 0.0)])
def test_calibrate_reaches_min_time_without_overshooting(cost, min_time):
    clock = FakeClock()
    number, per_call = timing.calibrate(fake_callable(clock, cost), min_time, clock)
    assert per_call == pytest.approx(cost)
    assert number * cost >= min_time
    assert number == 1 or (number / 2.5) * cost < min_time  # within the growth step


def test_calibrate_caps_a_callable_faster_than_the_clock(monkeypatch):
    monkeypatch.setattr(timing, "MAX_NUMBER", 1000)
    clock = FakeClock()
    assert timing.calibrate(fake_callable(clock, 0.0), 1e-3, clock) == (timing.MAX_NUMBER, 0.0)


def test_rotated_puts_each_contender_in_each_position_equally():
    names = ["a", "b", "c"]
    orders = [timing.rotated(names, r) for r in range(6)]
    for position in range(3):
        column = [order[position] for order in orders]
        assert sorted(column) == sorted(names * 2)
    assert all(sorted(order) == names for order in orders)


def test_interleaved_alternates_contenders_and_reports_per_call_seconds():
    clock, log = FakeClock(), []
    funcs = {"fast": fake_callable(clock, 1e-3, log, "fast"), "slow": fake_callable(clock, 4e-3, log, "slow")}
    result = timing.interleaved(funcs, repeat=4, min_time=0.0, clock=clock)
    assert result["fast"].samples == pytest.approx((1e-3,) * 4)
    assert result["slow"].median == pytest.approx(4e-3)
    # after warm-up and calibration (2 calls each), one call per contender per round, rotating
    assert log[4:] == ["fast", "slow", "slow", "fast", "fast", "slow", "slow", "fast"]


def test_interleaving_spreads_drift_over_every_contender():
    """The machine slows down steadily: both contenders see the same drift, so
    their ratio holds, unlike timing one after the other."""
    clock = FakeClock()
    drift = lambda base: lambda: base * (1 + clock.now)  # noqa: E731
    funcs = {"a": fake_callable(clock, drift(1e-2)), "b": fake_callable(clock, drift(2e-2))}
    result = timing.interleaved(funcs, repeat=50, min_time=0.0, clock=clock)
    assert result["b"].median / result["a"].median == pytest.approx(2.0, rel=0.05)


def test_a_budget_cuts_rounds_but_keeps_a_median():
    assert timing.rounds_within(7, None, 10.0) == 7
    assert timing.rounds_within(7, 3.0, 0.1) == 7
    assert timing.rounds_within(7, 3.0, 0.6) == 5
    assert timing.rounds_within(7, 3.0, 100.0) == timing.MIN_ROUNDS
    assert timing.rounds_within(2, 3.0, 100.0) == 2  # never more than asked
    clock = FakeClock()
    funcs = {"a": fake_callable(clock, 1.0), "b": fake_callable(clock, 2.0)}
    result = timing.interleaved(funcs, repeat=9, min_time=0.0, clock=clock, budget=15.0)
    assert [len(t.samples) for t in result.values()] == [5, 5]  # 15 s / (1 s + 2 s) per round


def test_median_drops_an_outlier():
    assert timing.Timing((1.0, 2.0, 100.0), number=1).median == 2.0


def test_interleaved_needs_a_round():
    with pytest.raises(ValueError, match="repeat"):
        timing.interleaved({"a": lambda: None}, repeat=0, min_time=0.0)


def test_one_thread_cells_take_the_cpu_clock_unless_wall_is_asked():
    assert timing.clock_for("auto", 1) == "cpu"
    assert timing.clock_for("auto", 2) == "wall"
    assert timing.clock_for("wall", 1) == "wall"
    with pytest.raises(ValueError, match="clock mode"):
        timing.clock_for("cpu", 2)


def test_gb_per_s_and_copy_bandwidth():
    assert timing.gb_per_s(3_000_000_000, 1.5) == pytest.approx(2.0)
    gbps, t = timing.copy_bandwidth(2**20, repeat=2)
    assert gbps > 0 and len(t.samples) == 2


# -- cases and targets -----------------------------------------------------------------------------

def test_traffic_is_the_minimum_bytes():
    forward = suite.Case("bn_fwd", (4, 5), "float32")
    backward = suite.Case("ln_bwd", (4, 5), "float64")
    assert forward.traffic == 2 * 20 * 4
    assert backward.traffic == 3 * 20 * 8


def test_sweep_has_a_shape_larger_than_the_last_level_cache():
    from fastnorm.benchmarks.machine import last_level_cache_bytes

    shapes = suite.sweep_shapes()
    assert suite.NOTEBOOK_SHAPE in shapes
    assert max(n * d * 4 for n, d in shapes) > last_level_cache_bytes()


def test_gbps_of_large_arrays_come_from_the_out_call():
    case = suite.Case("bn_fwd", (4096, 1024), "float32")  # 16 MiB
    assert case.is_large and not suite.Case("bn_fwd", (4095, 1024), "float32").is_large
    cell = runner.Cell(case, 1, {"fastnorm": timing.Timing((2e-3,), 1), "fastnorm_out": timing.Timing((1e-3,), 1)})
    assert cell.gbps == pytest.approx(case.traffic / 1e-3 / 1e9)
    assert set(cell.as_dict(copy_gbps=10.0)["speedup"]) == set()  # no anchor: out= is not one


def test_large_cases_get_an_out_contender():
    from fastnorm.benchmarks.cli import _roles_of

    large, small = suite.Case("ln_bwd", (4096, 1024), "float64"), suite.Case("ln_bwd", (8, 16), "float64")
    for vs_torch in (False, True):
        roles = _roles_of(vs_torch, with_torch=True)
        assert "fastnorm_out" in roles(large) and "fastnorm_out" not in roles(small)


def _cell(op, shape, dtype, **seconds):
    timings = {role: timing.Timing((s,), 1) for role, s in seconds.items()}
    return runner.Cell(suite.Case(op, shape, dtype), 1, timings)


def test_bench_targets_mark_the_cells_that_miss():
    good = _cell("bn_bwd", (100, 500), "float64", fastnorm=1.0, numpy=5.0, graph=25.0)
    slow = _cell("ln_fwd", (8, 16), "float32", fastnorm=2.0, numpy=1.0)
    verdicts = targets.check_bench([good, slow])
    assert [v.passed for v in verdicts] == [True, True, False]
    assert good.misses == [] and slow.misses == ["numpy"]


def test_vs_torch_targets_mark_the_cells_that_miss():
    notebook = _cell("bn_bwd", (100, 500), "float64", fastnorm=1.0, torch=2.0, graph=20.0)
    overhead = _cell("ln_fwd", suite.OVERHEAD_SHAPE, "float64", fastnorm=2e-6, torch=1e-6)
    verdicts = targets.check_vs_torch([notebook, overhead], copy_gbps=10.0)
    assert {v.target.split(":")[0]: v.passed for v in verdicts} == {
        "every cell": True,
        "forwards on arrays >= 16 MiB": False,  # not measured: no large array
        "per-call overhead at 2x3": False,
        "bn backward (100, 500) float64": False,
    }
    assert notebook.misses == ["graph"] and overhead.misses == ["overhead"]


def test_bandwidth_target_holds_forwards_only():
    big = (4096, 1024)  # float64: 32 MiB
    nbytes = 4096 * 1024 * 8
    # 1 GB/s against a 10 GB/s copy: far below the target, forward or backward
    fwd = _cell("ln_fwd", big, "float64", fastnorm=1.0, fastnorm_out=2 * nbytes / 1e9, torch=2.0)
    bwd = _cell("ln_bwd", big, "float64", fastnorm=1.0, fastnorm_out=3 * nbytes / 1e9, torch=2.0)
    verdicts = {v.target.split(":")[0]: v for v in targets.check_vs_torch([fwd, bwd], copy_gbps=10.0)}
    bandwidth = verdicts["forwards on arrays >= 16 MiB"]
    assert bandwidth.checked == 1 and bandwidth.missed == ["ln_fwd 4096x1024 float64 1t"]
    assert "bandwidth" in fwd.misses and "bandwidth" not in bwd.misses


# -- the command ----------------------------------------------------------------------------------

def _read_run(out_dir, kind):
    files = {suffix: out_dir / f"{kind}.{suffix}" for suffix in ("txt", "md", "json", "png")}
    assert all(path.is_file() for path in files.values())
    assert files["png"].read_bytes().startswith(PNG_SIGNATURE)
    return json.loads(files["json"].read_text()), files["txt"].read_text()


def test_bench_command_writes_table_json_and_chart(tmp_path, capsys):
    assert main(["bench", *TINY, "--threads", "1,2", "--dtypes", "float64", "--out", str(tmp_path)]) == 0
    data, table = _read_run(tmp_path, "bench")
    assert data["kind"] == "bench"
    assert {"cpu", "cores", "numpy", "torch", "openmp"} <= set(data["machine"])
    assert data["copy"]["gbps"] > 0
    assert len(data["cells"]) == len(suite.OPS) * 2  # ops x thread counts
    for cell in data["cells"]:
        assert cell["shape"] == [4, 5] and cell["threads"] in (1, 2)
        assert cell["clock"] == ("cpu" if cell["threads"] == 1 else "wall")
        assert {"fastnorm", "numpy"} <= set(cell["times"])
        assert ("graph" in cell["times"]) == (cell["op"] == "bn_bwd")
        assert ("torch" in cell["times"]) == HAS_TORCH
        assert cell["speedup"]["numpy"] > 0 and cell["times"]["fastnorm"]["median_s"] > 0
    assert len(data["targets"]) == 3
    printed = capsys.readouterr().out
    assert "bn backward" in printed and "targets:" in printed and "copy bandwidth" in printed
    assert table.strip() in printed


def test_bench_without_torch_has_no_torch_column_values(tmp_path):
    args = ["bench", *TINY, "--ops", "ln_bwd", "--no-torch", "--clock", "wall", "--threads", "1"]
    assert main([*args, "--out", str(tmp_path)]) == 0
    data, _ = _read_run(tmp_path, "bench")
    assert data["machine"]["torch"] is None and data["settings"]["clock"] == "wall"
    assert [cell["clock"] for cell in data["cells"]] == ["wall", "wall"]
    assert all(set(cell["times"]) == {"fastnorm", "numpy"} for cell in data["cells"])


@pytest.mark.skipif(not HAS_TORCH, reason="PyTorch is not installed (a benchmark-only option)")
def test_vs_torch_command_prints_the_matrix_and_markdown(tmp_path, capsys):
    args = ["bench", "--vs-torch", *TINY[2:], "--shapes", "2x3,100x500", "--dtypes", "float64",
            "--ops", "bn_bwd,ln_fwd"]
    assert main([*args, "--out", str(tmp_path)]) == 0
    data, _ = _read_run(tmp_path, "vs-torch")
    assert len(data["cells"]) == 2 * 2 * 2  # shapes x ops x {1, 2} threads
    assert all("torch" in cell["times"] for cell in data["cells"])
    graph_cells = [c for c in data["cells"] if "graph" in c["times"]]
    assert [(c["op"], c["shape"]) for c in graph_cells] == [("bn_bwd", [100, 500])] * 2
    assert len(data["targets"]) == 4
    printed = capsys.readouterr().out
    assert "| op | shape | dtype |" in printed and "Machine:" in printed
    assert "vs torch 1t" in printed and "vs torch 2t" in printed


def test_vs_torch_with_no_torch_says_they_conflict(tmp_path, capsys):
    assert main(["bench", "--vs-torch", "--no-torch", *TINY, "--out", str(tmp_path)]) == 2
    assert "exclude each other" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


def test_vs_torch_without_torch_says_how_to_get_it(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(torch_anchor, "available", lambda: False)
    assert main(["bench", "--vs-torch", *TINY, "--out", str(tmp_path)]) == 2
    assert "pip install torch" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("bad", [["--shapes", "4by5"], ["--shapes", "1x5"], ["--threads", "0"],
                                 ["--threads", "100000"], ["--repeat", "-1"], ["--repeat", "0"],
                                 ["--min-time", "nan"], ["--min-time", "-1"], ["--budget", "-2"],
                                 ["--dtypes", "float16"], ["--ops", "bn_fwd,softmax"], ["--clock", "cpu"]])
def test_bad_options_are_rejected(bad, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["bench", *bad])
    assert exit_info.value.code == 2


@pytest.mark.parametrize("op", suite.OPS)
@pytest.mark.parametrize("dtype", suite.DTYPES)
def test_contenders_compute_the_same_thing(op, dtype):
    """Every anchor times the same computation as fastnorm (same outputs)."""
    import numpy as np

    case = suite.Case(op, (16, 7), dtype)
    funcs = suite.contenders(case, suite.make_inputs(case.shape, dtype), suite.CONTENDERS)
    assert ("graph" in funcs) == (op == "bn_bwd") and ("torch" in funcs) == HAS_TORCH
    expected = funcs.pop("fastnorm")()
    tol = 1e-4 if dtype == "float32" else 1e-10
    for role, func in funcs.items():
        result = [np.asarray(r) for r in func()]
        count = 1 if op.endswith("fwd") else 3  # out; or dx, dgamma, dbeta
        for got, want in zip(result[:count], expected[:count]):
            np.testing.assert_allclose(got, want, rtol=tol, atol=tol, err_msg=role)


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's malloc thresholds")
def test_settled_allocator_reuses_temporaries_without_page_faults():
    """Like NumPy's graph backward: several (100, 500) float64 temporaries alive at
    once. Unsettled, glibc gives them back to the OS and faults them in again on
    every call (~750 faults a call); settled, the heap keeps them."""
    import numpy as np

    def graph_like():
        return [np.ones(50_000) for _ in range(8)]

    timing.settle_allocator()
    graph_like()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(20):
        graph_like()
    assert resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before < 100
