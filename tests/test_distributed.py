"""fastnorm.distributed in one process (MPI.COMM_SELF): no mpiexec needed.

The tests on several ranks are in tests/mpi (run by .ci/run under mpiexec).
"""

import pickle
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from sync_oracle import batchnorm_oracle

import fastnorm as fn

MPI = pytest.importorskip("mpi4py.MPI", reason="fastnorm.distributed needs mpi4py: pip install '.[mpi]'")

from fastnorm import distributed as dist  # noqa: E402
from fastnorm.gradient_check import eval_numerical_gradient_array  # noqa: E402

SELF = MPI.COMM_SELF
# the folder holding the fastnorm under test (an installed copy, or the source tree with an in-place build)
ROOT = Path(fn.__file__).resolve().parents[1]


def _data(shape, dtype=np.float64, seed=3):
    rng = np.random.default_rng(seed)
    C = shape[1]
    return ((5.0 + rng.standard_normal(shape)).astype(dtype), rng.standard_normal(shape).astype(dtype),
            rng.standard_normal(C).astype(dtype), rng.standard_normal(C).astype(dtype))


@pytest.mark.parametrize("shape", [(9, 5), (4, 3, 2, 5)])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("ddof", [0, 1])
def test_one_rank_is_batch_norm(shape, dtype, ddof):
    x, dout, gamma, beta = _data(shape, dtype)
    bn_param = {"mode": "train", "ddof": ddof}
    out, cache = dist.sync_batchnorm_forward(x, gamma, beta, bn_param, SELF)
    dx, dgamma, dbeta = dist.sync_batchnorm_backward(dout, cache)
    want = batchnorm_oracle(x, gamma, beta, dout, ddof=ddof)
    tol = 1e-12 if dtype == np.float64 else 3e-5
    for got, expected in zip((out, dx, dgamma, dbeta), want):
        assert got.dtype == dtype
        np.testing.assert_allclose(got, expected, rtol=tol, atol=tol)
    np.testing.assert_allclose(bn_param["running_mean"], 0.1 * want[4], rtol=tol)
    np.testing.assert_allclose(bn_param["running_var"], 0.1 * want[5], rtol=tol)


def test_one_rank_matches_the_compiled_batch_norm():
    x, dout, gamma, beta = _data((64, 33))
    mine, theirs = {"mode": "train"}, {"mode": "train"}
    out, cache = dist.sync_batchnorm_forward(x, gamma, beta, mine, SELF)
    want, want_cache = fn.batchnorm_forward(x, gamma, beta, theirs)
    np.testing.assert_allclose(out, want, rtol=1e-14, atol=1e-14)
    for got, expected in zip(dist.sync_batchnorm_backward(dout, cache), fn.batchnorm_backward(dout, want_cache)):
        np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(mine["running_var"], theirs["running_var"], rtol=1e-14)


@pytest.mark.parametrize("channels_last", [False, True])
def test_numeric_gradients(channels_last):
    x, dout, gamma, beta = _data((3, 2, 2, 3))
    if channels_last:
        x = np.ascontiguousarray(x.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)

    def forward(x_, gamma_, beta_):
        return dist.sync_batchnorm_forward(x_, gamma_, beta_, {"mode": "train", "ddof": 1}, SELF)[0]

    _, cache = dist.sync_batchnorm_forward(x, gamma, beta, {"mode": "train", "ddof": 1}, SELF)
    dx, dgamma, dbeta = dist.sync_batchnorm_backward(dout, cache)
    x_copy = np.array(x)  # the gradient check perturbs its argument in place
    np.testing.assert_allclose(dx, eval_numerical_gradient_array(lambda v: forward(v, gamma, beta), x_copy, dout),
                               rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(dgamma, eval_numerical_gradient_array(lambda v: forward(x, v, beta), gamma.copy(),
                                                                     dout), rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(dbeta, eval_numerical_gradient_array(lambda v: forward(x, gamma, v), beta.copy(),
                                                                    dout), rtol=1e-6, atol=1e-8)


def test_test_mode_and_an_empty_shard():
    x, dout, gamma, beta = _data((5, 4))
    bn_param = {"mode": "test", "running_mean": np.full(4, 5.0), "running_var": np.full(4, 0.5)}
    out, cache = dist.sync_batchnorm_forward(x, gamma, beta, bn_param, SELF)
    np.testing.assert_allclose(out, (x - 5.0) / np.sqrt(0.5 + 1e-5) * gamma + beta, rtol=1e-13)
    dx, dgamma, dbeta = dist.sync_batchnorm_backward(dout, cache)
    np.testing.assert_allclose(dx, dout * gamma / np.sqrt(0.5 + 1e-5), rtol=1e-13)
    np.testing.assert_allclose(dgamma, (dout * (x - 5.0)).sum(0) / np.sqrt(0.5 + 1e-5), rtol=1e-12)
    empty, _ = dist.sync_batchnorm_forward(x[:0], gamma, beta, bn_param, SELF)
    assert empty.shape == (0, 4)
    with pytest.raises(ValueError, match="got 0"):  # an empty global batch has no statistics
        dist.sync_batchnorm_forward(x[:0], gamma, beta, {"mode": "train"}, SELF)


def test_inputs_are_not_modified_and_the_cache_keeps_x():
    x, dout, gamma, beta = _data((6, 3))
    before = [a.copy() for a in (x, dout, gamma, beta)]
    _, cache = dist.sync_batchnorm_forward(x, gamma, beta, {"mode": "train"}, SELF)
    dist.sync_batchnorm_backward(dout, cache)
    assert all((a == b).all() for a, b in zip((x, dout, gamma, beta), before))
    assert cache.view is x


@pytest.mark.parametrize("bad, error, words", [
    ({"x": np.zeros((2, 3, 4))}, ValueError, "x must be (N, D) or (N, C, H, W)"),
    ({"gamma": np.ones(2)}, ValueError, "gamma must have shape (3,)"),
    ({"bn_param": {"mode": "eval"}}, ValueError, "bn_param['mode'] must be 'train' or 'test'"),
    ({"comm": "world"}, TypeError, "comm must be an mpi4py communicator"),
])
def test_bad_arguments(bad, error, words):
    args = {"x": np.ones((2, 3)), "gamma": np.ones(3), "beta": np.zeros(3), "bn_param": {"mode": "train"},
            "comm": SELF, **bad}
    with pytest.raises(error) as info:
        dist.sync_batchnorm_forward(**args)
    assert words in str(info.value)


def test_backward_needs_a_sync_cache():
    _, cache = fn.batchnorm_forward(np.ones((2, 3)), np.ones(3), np.zeros(3), {"mode": "train"})
    with pytest.raises(TypeError, match="sync_batchnorm_forward"):
        dist.sync_batchnorm_backward(np.ones((2, 3)), cache)


BLOCK_MPI4PY = """
import sys
class _NoMPI:
    def find_spec(self, name, path=None, target=None):
        if name == "mpi4py" or name.startswith("mpi4py."):
            raise ImportError("No module named 'mpi4py' (blocked for the test)")
sys.meta_path.insert(0, _NoMPI())
"""


def test_without_mpi4py_fastnorm_imports_and_distributed_says_how_to_install(tmp_path):
    (tmp_path / "sitecustomize.py").write_text(BLOCK_MPI4PY)
    code = textwrap.dedent("""
        import fastnorm
        fastnorm.batchnorm_forward([[1.0], [2.0]], [1.0], [0.0], {"mode": "train"})
        try:
            import fastnorm.distributed
        except ImportError as exc:
            print("ImportError:", exc)
        try:
            fastnorm.FullyConnectedNet([3], comm=object())
        except ImportError as exc:
            print("model:", exc)
    """)
    env = {"PYTHONPATH": f"{tmp_path}:{ROOT}", "PATH": "/usr/bin:/bin"}
    done = subprocess.run([sys.executable, "-c", code], env=env, cwd=tmp_path, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert 'ImportError: fastnorm.distributed needs mpi4py' in done.stdout
    assert 'pip install "fastnorm[mpi]"' in done.stdout
    assert 'model: fastnorm.distributed needs mpi4py' in done.stdout


def _classes(seed=5):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 4, 150)
    X = rng.standard_normal((4, 10))[y] * 2 + rng.standard_normal((150, 10))
    return {"X_train": X[:120], "y_train": y[:120], "X_val": X[120:], "y_val": y[120:]}


def _solver(comm, keep=1.0):
    np.random.seed(1)
    model = fn.FullyConnectedNet([12, 7], input_dim=10, num_classes=4, normalization="batchnorm", reg=0.1,
                                 weight_scale=0.2, dropout_keep_ratio=keep, dtype=np.float64, comm=comm)
    kwargs = {} if comm is None else {"comm": comm}
    solver = fn.Solver(model, _classes(), update_rule="sgd_momentum", batch_size=16, num_epochs=2,
                       verbose=False, **kwargs)
    solver.train()
    return solver


@pytest.mark.parametrize("keep", [1.0, 0.6])
def test_one_rank_trains_as_without_comm(keep):
    plain, one = _solver(None, keep), _solver(SELF, keep)
    np.testing.assert_allclose(one.loss_history, plain.loss_history, rtol=1e-12)
    assert one.val_acc_history == plain.val_acc_history
    for k, w in plain.model.params.items():
        np.testing.assert_allclose(one.model.params[k], w, rtol=1e-10, atol=1e-12, err_msg=k)


def test_the_model_on_a_communicator():
    np.random.seed(2)
    model = fn.FullyConnectedNet([5], input_dim=10, num_classes=4, normalization="batchnorm", reg=0.3,
                                 dtype=np.float64, comm=SELF)
    data = _classes()
    X, y = data["X_train"][:9], data["y_train"][:9]
    loss, grads = model.loss(X, y)
    model.comm = None
    want_loss, want_grads = model.loss(X, y)
    assert loss == pytest.approx(want_loss, rel=1e-13)
    for k in want_grads:
        np.testing.assert_allclose(grads[k], want_grads[k], rtol=1e-10, atol=1e-13, err_msg=k)
    model.comm = SELF
    assert model.loss(X[:0]).shape == (0, 4)  # a rank's empty share of an accuracy check
    with pytest.raises(ValueError, match="the global batch is empty"):
        model.loss(X[:0], y[:0])
    assert pickle.loads(pickle.dumps(model)).comm is None  # checkpoints hold no communicator


def test_comm_arguments_are_checked():
    with pytest.raises(TypeError, match="comm must be an mpi4py communicator"):
        fn.FullyConnectedNet([3], input_dim=10, num_classes=4, comm=0)
    with pytest.raises(ValueError, match="kernels='fast'"):
        fn.FullyConnectedNet([3], input_dim=10, num_classes=4, kernels="reference", comm=SELF)
    model = fn.FullyConnectedNet([3], input_dim=10, num_classes=4, normalization="batchnorm")
    with pytest.raises(ValueError, match=r"FullyConnectedNet\(\.\.\., comm=comm\)"):
        fn.Solver(model, _classes(), comm=SELF)


def test_the_distributed_benchmark_prints_its_table(capsys):
    from fastnorm.benchmarks import distributed as bench

    assert bench.main(["--quick"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "| case | no comm: ms | 1 rank: ms (MPI share) |"
    assert len(lines) == 2 + len(bench.QUICK_CASES)
    assert all(line.startswith("| sync BN") or line.startswith("| train step") for line in lines[2:])


DOCS = Path(__file__).resolve().parents[1] / "docs" / "distributed.md"
DOC_BLOCKS = re.findall(r"```python\n(.*?)```", DOCS.read_text(), flags=re.S) if DOCS.is_file() else []


@pytest.mark.parametrize("index", range(len(DOC_BLOCKS)))
def test_the_docs_examples_run_in_one_process(index, capsys):
    exec(compile(DOC_BLOCKS[index], f"distributed.md example {index}", "exec"), {})


def test_the_docs_have_the_training_script():
    assert len(DOC_BLOCKS) == 2 and "Solver(" in DOC_BLOCKS[0] and "comm=comm" in DOC_BLOCKS[0]


def _one_rank_case(layout, shape, dtype, seed):
    """x and dout in `layout` ("(N, D)", "NCHW" or "channels-last"), gamma, beta."""
    x, dout, gamma, beta = _data(shape, dtype, seed)
    if layout == "channels-last":  # the same values, channels-last memory
        x, dout = (np.ascontiguousarray(a.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2) for a in (x, dout))
    return x, dout, gamma, beta


@pytest.mark.parametrize("layout, shape", [("(N, D)", (64, 33)), ("(N, D)", (1100, 40)),
                                           ("NCHW", (4, 5, 6, 7)), ("NCHW", (8, 16, 16, 20)),
                                           ("channels-last", (4, 5, 6, 7)), ("channels-last", (8, 16, 16, 20))])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("ddof", [0, 1])
@pytest.mark.parametrize("threads", [1, 2])
def test_one_rank_is_bitwise_the_one_process_kernels(layout, shape, dtype, ddof, threads):
    """On one rank the synchronized batch norm is the one-process kernel's: the same
    moments, the same backward sums and dx, the same running statistics, bit for bit
    (the second shape of each layout is past the kernels' one-thread threshold), and
    in test mode, with the running statistics the train step wrote, the same output."""
    x, dout, gamma, beta = _one_rank_case(layout, shape, dtype, seed=threads + 2 * ddof)
    forward, backward = ((fn.batchnorm_forward, fn.batchnorm_backward) if layout == "(N, D)"
                         else (fn.spatial_batchnorm_forward, fn.spatial_batchnorm_backward))
    mine, theirs = {"mode": "train", "ddof": ddof}, {"mode": "train", "ddof": ddof}
    with fn.num_threads(threads):
        out, cache = dist.sync_batchnorm_forward(x, gamma, beta, mine, SELF)
        want, want_cache = forward(x, gamma, beta, theirs)
        grads, want_grads = dist.sync_batchnorm_backward(dout, cache), backward(dout, want_cache)
    assert out.dtype == want.dtype == dtype and out.strides == want.strides
    assert out.tobytes() == want.tobytes()
    for key in ("running_mean", "running_var"):
        assert mine[key].tobytes() == theirs[key].tobytes(), key
    for got, expected in zip(grads, want_grads):
        assert got.dtype == expected.dtype and got.shape == expected.shape and got.strides == expected.strides
        assert got.tobytes() == expected.tobytes()
    mine["mode"] = theirs["mode"] = "test"
    with fn.num_threads(threads):
        out, _ = dist.sync_batchnorm_forward(x, gamma, beta, mine, SELF)
        want, _ = forward(x, gamma, beta, theirs)
    assert out.tobytes() == want.tobytes()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_one_rank_nchw_is_bitwise_spatial_batch_norm(dtype):
    x, dout, gamma, beta = _data((6, 5, 4, 3), dtype)
    mine, theirs = {"mode": "train", "ddof": 1}, {"mode": "train", "ddof": 1}
    out, cache = dist.sync_batchnorm_forward(x, gamma, beta, mine, SELF)
    want, want_cache = fn.spatial_batchnorm_forward(x, gamma, beta, theirs)
    assert np.array_equal(out, want)
    assert np.array_equal(mine["running_var"], theirs["running_var"])
    for got, expected in zip(dist.sync_batchnorm_backward(dout, cache), fn.spatial_batchnorm_backward(dout, want_cache)):
        assert np.array_equal(got, expected)
