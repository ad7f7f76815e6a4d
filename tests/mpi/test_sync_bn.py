"""Synchronized batch norm on several ranks against batch norm of the whole batch.

Every rank builds the same global batch (same seed) and passes its shard.
"""

import numpy as np
import pytest
from conftest import shard_sizes
from sync_oracle import batchnorm_oracle, shard_bounds

import fastnorm as fn
from fastnorm import distributed as dist

PATTERNS = ["equal", "unequal", "empty"]
TOL = {np.float64: 1e-12, np.float32: 2e-5}


def _global_batch(shape, dtype, seed=7, offset=3.0):
    rng = np.random.default_rng(seed)
    C = shape[1]
    x = (offset + 2.0 * rng.standard_normal(shape)).astype(dtype)
    dout = rng.standard_normal(shape).astype(dtype)
    gamma = rng.standard_normal(C).astype(dtype)
    beta = rng.standard_normal(C).astype(dtype)
    return x, dout, gamma, beta


def _same_on_every_rank(comm, *arrays):
    mine = b"".join(np.ascontiguousarray(a).tobytes() for a in arrays)
    return all(other == mine for other in comm.allgather(mine))


def _close(got, want, dtype):
    tol = TOL[dtype]
    np.testing.assert_allclose(got, want, rtol=tol, atol=tol * (1 + np.abs(want).max(initial=0)))


@pytest.mark.parametrize("pattern", PATTERNS)
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("ddof", [0, 1])
def test_columns_match_batch_norm_of_the_whole_batch(comm, pattern, dtype, ddof):
    sizes = shard_sizes(pattern, comm.size)
    x, dout, gamma, beta = _global_batch((sum(sizes), 37), dtype)
    mine = shard_bounds(sizes, comm.rank)
    running = np.linspace(-1, 1, 37).astype(dtype)
    bn_param = {"mode": "train", "ddof": ddof, "momentum": 0.8, "running_mean": running.copy(),
                "running_var": running ** 2}
    out, cache = dist.sync_batchnorm_forward(x[mine], gamma, beta, bn_param, comm)
    dx, dgamma, dbeta = dist.sync_batchnorm_backward(dout[mine], cache)

    want_out, want_dx, want_dgamma, want_dbeta, mean, var = batchnorm_oracle(x, gamma, beta, dout, ddof=ddof)
    assert out.shape == dx.shape == (sizes[comm.rank], 37) and out.dtype == dx.dtype == dtype
    _close(out, want_out[mine], dtype)
    _close(dx, want_dx[mine], dtype)
    # dgamma, dbeta are the shard's terms: they sum to the global gradient
    _close(comm.allreduce(dgamma.astype(np.float64)), want_dgamma, dtype)
    _close(comm.allreduce(dbeta.astype(np.float64)), want_dbeta, dtype)
    _close(dbeta, dout[mine].astype(np.float64).sum(axis=0), dtype)
    _close(bn_param["running_mean"], 0.8 * running + 0.2 * mean, dtype)
    _close(bn_param["running_var"], 0.8 * running ** 2 + 0.2 * var, dtype)
    assert bn_param["running_mean"].dtype == dtype
    assert _same_on_every_rank(comm, bn_param["running_mean"], bn_param["running_var"])


@pytest.mark.parametrize("pattern", PATTERNS)
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_images_match_spatial_batch_norm_of_the_whole_batch(comm, pattern, channels_last, dtype):
    sizes = shard_sizes(pattern, comm.size)
    x, dout, gamma, beta = _global_batch((sum(sizes), 5, 3, 4), dtype)
    mine = shard_bounds(sizes, comm.rank)
    x_local = x[mine]
    if channels_last:  # NHWC memory seen as NCHW
        x_local = np.ascontiguousarray(x_local.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)
    bn_param = {"mode": "train"}
    out, cache = dist.sync_batchnorm_forward(x_local, gamma, beta, bn_param, comm)
    dx, dgamma, dbeta = dist.sync_batchnorm_backward(dout[mine], cache)

    want_out, want_dx, want_dgamma, want_dbeta, mean, var = batchnorm_oracle(x, gamma, beta, dout)
    _close(out, want_out[mine], dtype)
    _close(dx, want_dx[mine], dtype)
    _close(comm.allreduce(dgamma.astype(np.float64)), want_dgamma, dtype)
    _close(comm.allreduce(dbeta.astype(np.float64)), want_dbeta, dtype)
    _close(bn_param["running_var"], 0.1 * var, dtype)
    if sizes[comm.rank]:  # answered in x's layout (an empty array is both)
        assert out.transpose(0, 2, 3, 1).flags.c_contiguous == channels_last
        assert out.flags.c_contiguous == (not channels_last)
    assert _same_on_every_rank(comm, bn_param["running_mean"], bn_param["running_var"])


def _page_distance(out, near, aliased=256, page=4096):
    """How far out's data starts, around the page, from `aliased` bytes past near's."""
    d = (out.ctypes.data - near.ctypes.data - aliased) % page
    return min(d, page - d)


def test_outputs_are_placed_in_their_page_as_the_one_process_ones_are(comm):
    """out and dx come from fastnorm's output cache: in their page away from what the
    kernels read (4 KiB aliasing; tests/test_output_cache.py), on a cache line."""
    x, dout, gamma, beta = _global_batch((comm.size * 64, 40), np.float64)
    mine = shard_bounds([64] * comm.size, comm.rank)
    x_local, dout_local = x[mine].copy(), dout[mine].copy()
    out, cache = dist.sync_batchnorm_forward(x_local, gamma, beta, {"mode": "train"}, comm)
    dx, _, _ = dist.sync_batchnorm_backward(dout_local, cache)
    assert out.ctypes.data % 64 == 0 and dx.ctypes.data % 64 == 0
    assert _page_distance(out, x_local) >= 2048 - 64
    assert min(_page_distance(dx, dout_local), _page_distance(dx, x_local)) >= 1024 - 64


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_a_constant_channel_gives_exactly_beta_on_every_rank(comm, dtype):
    sizes = shard_sizes("unequal", comm.size)
    x, _, gamma, beta = _global_batch((sum(sizes), 6), dtype)
    x[:, 2] = dtype(1.0e7 + 3)  # the same value on every rank's rows
    mine = shard_bounds(sizes, comm.rank)
    out, _ = dist.sync_batchnorm_forward(x[mine], gamma, beta, {"mode": "train"}, comm)
    assert (out[:, 2] == beta[2]).all()


def test_test_mode_uses_the_running_statistics_without_communicating(comm):
    x, dout, gamma, beta = _global_batch((6, 4), np.float64)
    bn_param = {"mode": "test", "running_mean": np.arange(4.0), "running_var": np.full(4, 2.0)}
    want, want_cache = fn.batchnorm_forward(x, gamma, beta, dict(bn_param))
    want_dx, want_dgamma, want_dbeta = fn.batchnorm_backward(dout, want_cache)
    if comm.rank == comm.size - 1:  # one rank alone: any collective would hang
        out, cache = dist.sync_batchnorm_forward(x, gamma, beta, bn_param, comm)
        dx, dgamma, dbeta = dist.sync_batchnorm_backward(dout, cache)
        np.testing.assert_allclose(out, want, rtol=1e-14, atol=1e-14)
        np.testing.assert_allclose(dx, want_dx, rtol=1e-14, atol=1e-14)
        np.testing.assert_allclose(dgamma, want_dgamma, rtol=1e-13)
        np.testing.assert_allclose(dbeta, want_dbeta, rtol=1e-13)
    comm.Barrier()


def _error_on_every_rank(comm, call):
    """Run call on every rank; the exception raised, checked to be the same everywhere."""
    with pytest.raises((ValueError, TypeError)) as info:
        call()
    seen = comm.allgather((type(info.value).__name__, str(info.value)))
    assert all(s == seen[0] for s in seen), seen
    return info.value


def _then_a_correct_call_works(comm):
    x, dout, gamma, beta = _global_batch((3 * comm.size, 4), np.float64)
    mine = shard_bounds([3] * comm.size, comm.rank)
    out, cache = dist.sync_batchnorm_forward(x[mine], gamma, beta, {"mode": "train"}, comm)
    dx, _, _ = dist.sync_batchnorm_backward(dout[mine], cache)
    want_out, want_dx, *_ = batchnorm_oracle(x, gamma, beta, dout)
    np.testing.assert_allclose(out, want_out[mine], rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(dx, want_dx[mine], rtol=1e-12, atol=1e-12)


DISAGREEMENTS = {
    # setting: (what the last rank changes, words of the message)
    "features": (lambda a: dict(a, x=a["x"][:, :3], gamma=a["gamma"][:3], beta=a["beta"][:3]),
                 "number of features/channels: 4 on"),
    "dtype": (lambda a: dict(a, **{k: a[k].astype(np.float32) for k in ("x", "gamma", "beta")}), "dtype"),
    "eps": (lambda a: dict(a, bn_param={"mode": "train", "eps": 1e-3}), "eps"),
    "ddof": (lambda a: dict(a, bn_param={"mode": "train", "ddof": 1}), "ddof"),
    "momentum": (lambda a: dict(a, bn_param={"mode": "train", "momentum": 0.5}), "momentum"),
    "ndim": (lambda a: dict(a, x=a["x"].reshape(3, 4, 1, 1)), "number of dimensions"),
}


@pytest.mark.parametrize("setting", list(DISAGREEMENTS))
def test_ranks_that_disagree_all_raise_the_same_error(comm, setting):
    x, _, gamma, beta = _global_batch((3, 4), np.float64)
    args = {"x": x, "gamma": gamma, "beta": beta, "bn_param": {"mode": "train"}}
    change, words = DISAGREEMENTS[setting]
    if comm.rank == comm.size - 1:
        args = change(args)
    error = _error_on_every_rank(comm, lambda: dist.sync_batchnorm_forward(
        args["x"], args["gamma"], args["beta"], args["bn_param"], comm))
    assert isinstance(error, ValueError) and "disagree" in str(error) and words in str(error)
    assert f"rank {comm.size - 1}" in str(error)
    _then_a_correct_call_works(comm)


@pytest.mark.parametrize("problem", ["gamma shape", "mode", "complex x"])
def test_invalid_arguments_on_one_rank_raise_on_every_rank(comm, problem):
    x, _, gamma, beta = _global_batch((3, 4), np.float64)
    bn_param = {"mode": "train"}
    if comm.rank == 0:
        if problem == "gamma shape":
            gamma = gamma[:2]
        elif problem == "mode":
            bn_param = {"mode": "trian"}
        else:
            x = x + 0j
    error = _error_on_every_rank(comm, lambda: dist.sync_batchnorm_forward(x, gamma, beta, bn_param, comm))
    assert str(error).startswith("sync_batchnorm_forward on rank 0: ")
    assert isinstance(error, TypeError if problem == "complex x" else ValueError)
    _then_a_correct_call_works(comm)


def test_a_bad_dout_on_one_rank_raises_on_every_rank(comm):
    x, dout, gamma, beta = _global_batch((3, 4), np.float64)
    _, cache = dist.sync_batchnorm_forward(x, gamma, beta, {"mode": "train"}, comm)
    if comm.rank == comm.size - 1:
        dout = dout[:, :2]
    error = _error_on_every_rank(comm, lambda: dist.sync_batchnorm_backward(dout, cache))
    assert f"sync_batchnorm_backward on rank {comm.size - 1}: dout must have the shape" in str(error)
    _then_a_correct_call_works(comm)


def test_too_few_values_in_the_global_batch_raise_on_every_rank(comm):
    x, _, gamma, beta = _global_batch((1, 4), np.float64)
    mine = x if comm.rank == 0 else x[:0]  # one row in all
    error = _error_on_every_rank(comm, lambda: dist.sync_batchnorm_forward(
        mine, gamma, beta, {"mode": "train", "ddof": 1}, comm))
    assert "needs more than 1 value(s) per channel over all ranks, got 1" in str(error)
    _then_a_correct_call_works(comm)
