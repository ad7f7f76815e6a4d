"""Synchronized batch norm: statistics of the global batch, over MPI.

    out, cache = sync_batchnorm_forward(x, gamma, beta, bn_param, comm=None)
    dx, dgamma, dbeta = sync_batchnorm_backward(dout, cache)

x is this rank's shard, (N, D) or (N, C, H, W) (C-contiguous NCHW or channels-last
memory, answered in x's layout); N may differ between ranks and may be 0. The
global batch is the concatenation of the shards in rank order; out and dx equal
single-process batch norm on it (to round-off), the running statistics are
bitwise the same on every rank, and dgamma, dbeta are this shard's terms (their
sum over the ranks is the global gradient).

Communication, train mode: the forward makes two Allgathers, one of each rank's
settings (so that ranks which disagree all raise the same ValueError: it cannot
be folded into the next, whose size depends on the channel count being checked)
and one of the per-rank (mean, M2) per channel, merged (Chan) in rank order on
every rank; the backward one Allreduce of (sum dy, sum dy*(x - mean)) per
channel with the rows and an error count. Test mode uses the running
statistics and does not communicate at all: every rank must make the same
sequence of train-mode calls, as with any collective.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from mpi4py import MPI

from .. import _validate
from .._validate_nd import BATCHNORM_SETTINGS
from .._build import load_kernels
from .._output_cache import new_output
from .._threads import get_num_threads

_kernels = load_kernels()


class _Blocks(NamedTuple):
    """The compiled building blocks of one memory layout: per-rank moments, the
    normalize sweep, backward sums, and dx from the global sums."""

    moments: object
    normalize: object
    grad_sums: object
    dx: object


_PLANES = _Blocks(_kernels.plane_moments, _kernels.plane_normalize, _kernels.plane_grad_sums,
                  _kernels.plane_dx)
_COLUMNS = _Blocks(_kernels.column_moments, _kernels.column_normalize, _kernels.column_grad_sums,
                   _kernels.column_dx)

__all__ = ["sync_batchnorm_forward", "sync_batchnorm_backward", "SyncBatchNormCache"]

# the settings every rank sends before its moments: a fixed-size float64 row
_STATUS, _COUNT, _CHANNELS, _ITEMSIZE, _NDIM, _H, _W, _EPS, _DDOF, _MOMENTUM = range(10)
_HEADER = 10
_ERRORS = {1: ValueError, 2: TypeError}
_SETTINGS = ((_CHANNELS, "number of features/channels"), (_ITEMSIZE, "dtype (bytes per value)"),
             (_NDIM, "number of dimensions of x"), (_H, "height H"), (_W, "width W"),
             (_EPS, "eps"), (_DDOF, "ddof"), (_MOMENTUM, "momentum"))


_CALL_FIELDS = [("view", np.ndarray), ("planes", bool), ("shape", tuple), ("channels_last", bool),
                *BATCHNORM_SETTINGS]


class _Call(NamedTuple("_Call", _CALL_FIELDS)):
    """A validated call: x as the kernels read it (columns (rows, C) or planes (N, C, HW)),
    x's shape as given and its layout, then the settings of any batch norm call."""

    __slots__ = ()

    @property
    def count(self) -> int:
        v = self.view
        return v.shape[0] * v.shape[2] if self.planes else v.shape[0]


class SyncBatchNormCache:
    """What sync_batchnorm_backward needs: x's kernel view (a reference), the global
    mean and inverse std (float64), gamma, the conventions, the communicator and
    the global count of the forward."""

    __slots__ = ("view", "planes", "shape", "channels_last", "mean", "inv_std", "gamma",
                 "eps", "ddof", "mode", "comm", "count")

    def __init__(self, call, mean, inv_std, comm, count):
        self.view, self.planes, self.shape, self.channels_last = (
            call.view, call.planes, call.shape, call.channels_last)
        self.mean, self.inv_std, self.gamma = mean, inv_std, call.gamma
        self.eps, self.ddof = call.eps, call.ddof
        self.mode = "train" if call.train else "test"
        self.comm, self.count = comm, count

    def __repr__(self):
        return (f"SyncBatchNormCache(x: {self.shape} {self.view.dtype}, mode={self.mode!r}, "
                f"global count={self.count}, ranks={self.comm.Get_size()})")


def _comm(comm):
    if comm is None:
        return MPI.COMM_WORLD
    if not isinstance(comm, MPI.Comm) or comm == MPI.COMM_NULL:
        raise TypeError(f"comm must be an mpi4py communicator (MPI.Comm), got {type(comm).__name__}")
    return comm


def _kernel_view(x: np.ndarray) -> tuple[np.ndarray, bool, bool]:
    """(view, planes, channels_last): (N, D) as columns; NCHW memory as planes
    (N, C, H*W); channels-last memory as the columns (N*H*W, C); others copied to NCHW."""
    if x.ndim == 2:
        return _validate.as_contiguous(x, x.dtype), False, False
    N, C, H, W = x.shape
    nhwc = x.transpose(0, 2, 3, 1)
    if not x.flags.c_contiguous and nhwc.flags.c_contiguous:
        return nhwc.reshape(N * H * W, C), False, True
    return np.ascontiguousarray(x).reshape(N, C, H * W), True, False


def _check(x, gamma, beta, bn_param) -> _Call:
    bn_param = _validate._param_dict(bn_param, "bn_param")
    mode = _validate._mode(bn_param)
    eps = _validate._real_param(bn_param, "bn_param", "eps", _validate.DEFAULT_EPS, np.inf)
    momentum = _validate._real_param(bn_param, "bn_param", "momentum", _validate.DEFAULT_MOMENTUM, 1.0)
    ddof = _validate._ddof(bn_param, "bn_param")
    x = _validate.as_real_array("x", x)
    gamma = _validate.as_real_array("gamma", gamma)
    beta = _validate.as_real_array("beta", beta)
    if x.ndim not in (2, 4) or any(n == 0 for n in x.shape[1:]):
        raise ValueError(f"x must be (N, D) or (N, C, H, W) with N >= 0 and the other sizes "
                         f"positive, got shape {x.shape}")
    C = x.shape[1]
    for name, arr in (("gamma", gamma), ("beta", beta)):
        if arr.shape != (C,):
            raise ValueError(f"{name} must have shape ({C},) for x of shape {x.shape}, got {arr.shape}")
    dtype = _validate.compute_dtype(x, gamma, beta)
    x = x.astype(dtype, order="K", copy=False)  # keeps channels-last memory channels-last
    running_mean, running_var = (_validate._running(bn_param, key, x) for key in ("running_mean", "running_var"))
    view, planes, channels_last = _kernel_view(x)
    return _Call(view, planes, x.shape, channels_last, _validate.as_contiguous(gamma, dtype),
                 _validate.as_contiguous(beta, dtype), eps, ddof, mode == "train", momentum,
                 running_mean, running_var)


def _header(call: _Call | None, error: Exception | None) -> np.ndarray:
    header = np.zeros(_HEADER)
    if error is not None:
        header[_STATUS] = 2 if isinstance(error, TypeError) else 1
        return header
    shape = call.shape
    header[_COUNT] = call.count
    header[_CHANNELS] = shape[1]
    header[_ITEMSIZE] = call.view.dtype.itemsize
    header[_NDIM] = len(shape)
    header[_H], header[_W] = shape[2:] if len(shape) == 4 else (1, 1)
    header[_EPS], header[_DDOF], header[_MOMENTUM] = call.eps, call.ddof, call.momentum
    return header


def _ranks(ranks) -> str:
    ranks = [str(r) for r in ranks]
    return f"rank {ranks[0]}" if len(ranks) == 1 else f"ranks {', '.join(ranks)}"


def _disagreement(headers: np.ndarray) -> str | None:
    """The same message on every rank when the ranks' settings differ, else None."""
    for column, what in _SETTINGS:
        values = headers[:, column]
        if (values != values[0]).any():
            groups = {}
            for rank, value in enumerate(values):
                groups.setdefault(value, []).append(rank)
            shown = "; ".join(f"{v:g} on {_ranks(r)}" for v, r in groups.items())
            return f"the ranks disagree on the {what}: {shown}"
    return None


def _raise_shared(comm, name, error):
    """Every rank raises the same exception: the first failing rank's kind and message.
    The messages travel in one more collective, on this error path only."""
    code = 2 if isinstance(error, TypeError) else 1
    reports = comm.allgather(None if error is None else (code, str(error)))
    failed = [r for r, report in enumerate(reports) if report is not None]
    code, message = reports[failed[0]]
    text = f"{name} on {_ranks(failed[:1])}: {message}"
    if len(failed) > 1:
        text += f" (and invalid arguments on {_ranks(failed[1:])})"
    raise _ERRORS[code](text) from error


def _moments(call: _Call, n_threads: int) -> np.ndarray:
    """(2, C): this shard's mean and centered sum of squares; zeros for an empty shard."""
    moments = np.zeros((2, call.shape[1]))
    if call.count:
        (_PLANES if call.planes else _COLUMNS).moments(call.view, moments[0], moments[1], n_threads)
    return moments


def _merge(counts: np.ndarray, moments: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """Chan's merge of per-rank (count, mean, M2) in rank order, skipping empty shards."""
    n, mean, m2 = 0.0, None, None
    for n_r, (mean_r, m2_r) in zip(counts, moments):
        if n_r == 0:
            continue
        if mean is None:
            n, mean, m2 = n_r, mean_r.copy(), m2_r.copy()
            continue
        total = n + n_r
        delta = mean_r - mean
        mean += delta * (n_r / total)
        m2 += m2_r + delta * delta * (n * n_r / total)
        n = total
    return n, mean, m2


def _normalize(call: _Call, mean, inv_std) -> np.ndarray:
    """out in x's layout: (x - mean) * inv_std * gamma + beta per channel, with the
    constants and the sweep of the one-process forward."""
    out = new_output(call.view.shape, call.view.dtype, call.view)   # the one-process forward's
    if call.count:
        blocks = _PLANES if call.planes else _COLUMNS
        blocks.normalize(call.view, mean, inv_std, call.gamma, call.beta, out, get_num_threads())
    return _in_layout(out, call.shape, call.planes, call.channels_last)


def _in_layout(a, shape, planes, channels_last):
    if len(shape) == 2:
        return a
    N, C, H, W = shape
    if channels_last:
        return a.reshape(N, H, W, C).transpose(0, 3, 1, 2)
    return a.reshape(shape)


def sync_batchnorm_forward(x, gamma, beta, bn_param, comm=None):
    """Batch norm forward with the statistics of the global batch.

    x : this rank's (N, D) or (N, C, H, W) shard, N >= 0; gamma, beta : (C,)
    bn_param : as for fastnorm.batchnorm_forward ('mode' required; 'eps',
        'momentum', 'ddof', 'running_mean', 'running_var'); the running statistics
        are updated from the global statistics, the same bits on every rank.
    comm : an mpi4py communicator (default MPI.COMM_WORLD).

    Train mode is collective: every rank of comm must call it. Settings that
    differ between ranks (channels, dtype, ndim, H and W, eps, ddof, momentum) or
    invalid arguments on one rank raise the same exception on every rank; the
    communicator stays usable. Test mode is local (no communication).
    """
    comm = _comm(comm)
    if isinstance(bn_param, dict) and bn_param.get("mode") == "test":
        call = _check(x, gamma, beta, bn_param)
        mean = call.running_mean.astype(np.float64)
        var = call.running_var.astype(np.float64)
        inv_std = 1.0 / np.sqrt(var + call.eps)
        bn_param["running_mean"], bn_param["running_var"] = call.running_mean, call.running_var
        return _normalize(call, mean, inv_std), SyncBatchNormCache(call, mean, inv_std, comm, call.count)

    try:
        call, error = _check(x, gamma, beta, bn_param), None
    except (TypeError, ValueError) as exc:
        call, error = None, exc
    headers = np.empty((comm.Get_size(), _HEADER))
    comm.Allgather(_header(call, error), headers)
    if headers[:, _STATUS].any():
        _raise_shared(comm, "sync_batchnorm_forward", error)
    problem = _disagreement(headers)
    if problem is not None:
        raise ValueError(f"sync_batchnorm_forward: {problem}")
    counts = headers[:, _COUNT]
    if counts.sum() <= call.ddof:
        raise ValueError(f"train mode with ddof={call.ddof} needs more than {call.ddof} value(s) "
                         f"per channel over all ranks, got {int(counts.sum())} (shards of "
                         f"{', '.join(str(int(c)) for c in counts)})")

    n_threads = get_num_threads()
    gathered = np.empty((comm.Get_size(), 2, call.shape[1]))
    comm.Allgather(_moments(call, n_threads), gathered)
    count, mean, m2 = _merge(counts, gathered)
    var = m2 / (count - call.ddof)
    inv_std = 1.0 / np.sqrt(var + call.eps)
    m, dtype = call.momentum, call.view.dtype
    bn_param["running_mean"] = (m * call.running_mean.astype(np.float64) + (1.0 - m) * mean).astype(dtype)
    bn_param["running_var"] = (m * call.running_var.astype(np.float64) + (1.0 - m) * var).astype(dtype)
    return _normalize(call, mean, inv_std), SyncBatchNormCache(call, mean, inv_std, comm, count)


def _backward_arrays(dout, cache: SyncBatchNormCache):
    """dout, x's view and gamma in the backward's dtype (NumPy's promotion of dout's
    and x's), dout in the memory layout of the cache's view of x."""
    dout, dtype = _validate.check_dout(dout, cache.shape, cache.view.dtype)
    if cache.channels_last:
        dout = dout.transpose(0, 2, 3, 1)
    dy = np.ascontiguousarray(dout, dtype).reshape(cache.view.shape)
    return dy, _validate.as_contiguous(cache.view, dtype), _validate.as_contiguous(cache.gamma, dtype)


def sync_batchnorm_backward(dout, cache):
    """dx (this rank's rows, in x's layout), dgamma, dbeta (this shard's terms).

    Train mode is collective (one Allreduce); test mode is local. An invalid dout on
    one rank raises the same exception on every rank.
    """
    if not isinstance(cache, SyncBatchNormCache):
        raise TypeError(f"cache must be the one returned by sync_batchnorm_forward, got "
                        f"{type(cache).__name__}")
    train = cache.mode == "train"
    comm, view = cache.comm, cache.view
    C = cache.shape[1]
    try:
        (dy, view, gamma), error = _backward_arrays(dout, cache), None
    except (TypeError, ValueError) as exc:
        if not train:
            raise
        error = exc
    n_threads = get_num_threads()
    blocks = _PLANES if cache.planes else _COLUMNS
    n_local = view.shape[0] * view.shape[2] if cache.planes else view.shape[0]
    sums = np.zeros(2 * C + 2)  # sum dy, sum dy*(x - mean), rows, errors
    if error is not None:
        sums[-1] = 1
    elif n_local:
        blocks.grad_sums(dy, view, cache.mean, sums[:C], sums[C:2 * C], n_threads)
    sums[2 * C] = n_local
    total = sums
    if train:
        total = np.empty_like(sums)
        comm.Allreduce(sums, total)
        if total[-1]:
            _raise_shared(comm, "sync_batchnorm_backward", error)
        if total[2 * C] != cache.count:
            raise ValueError(f"sync_batchnorm_backward: the ranks' caches hold {int(total[2 * C])} "
                             f"values per channel in all, the forward had {int(cache.count)}: "
                             "every rank must pass the cache of the same forward call")
    dtype = view.dtype
    dx = new_output(view.shape, dtype, dy, view)
    if n_local:
        blocks.dx(dy, view, cache.mean, cache.inv_std, gamma, total[:C], total[C:2 * C],
              float(cache.count), cache.ddof, train, dx, n_threads)
    dgamma = (sums[C:2 * C] * cache.inv_std).astype(dtype)
    dbeta = sums[:C].astype(dtype)
    return _in_layout(dx, cache.shape, cache.planes, cache.channels_last), dgamma, dbeta
