"""What data-parallel training does beyond one process: shard, all-reduce, broadcast.

Used by FullyConnectedNet(..., comm=comm) and Solver(..., comm=comm). The model's
train-mode loss on a shard gives that shard's terms of the global batch's loss and
gradients (the BN backward already mixes the shards, so the global mean must be
built into dscores: weighting each rank's gradient after the fact would not give
the global gradient); their sum over the ranks, one Allreduce of every gradient and
the loss in one buffer, is the global one, the same on every rank.
"""

from __future__ import annotations

import numpy as np
from mpi4py import MPI

__all__ = ["check_comm", "shard_rows", "on_root", "DataParallel"]


def check_comm(comm):
    if not isinstance(comm, MPI.Comm) or comm == MPI.COMM_NULL:
        raise TypeError(f"comm must be an mpi4py communicator (MPI.Comm) or None, got {type(comm).__name__}")
    if comm.Is_inter():
        raise TypeError("comm must be an intracommunicator")
    return comm


def shard_rows(comm, n_local: int) -> tuple[int, int]:
    """(start, total): where this rank's rows start in the global batch, and its size."""
    counts = np.empty(comm.Get_size(), np.int64)
    comm.Allgather(np.array([n_local], np.int64), counts)
    total = int(counts.sum())
    if total == 0:
        raise ValueError("the global batch is empty: every rank passed X with no rows")
    return int(counts[:comm.Get_rank()].sum()), total


def on_root(comm, action):
    """action() on rank 0, its result on every rank; its exception raised on every rank
    (rank 0 alone writing checkpoints must not leave the others waiting in a collective)."""
    result = error = None
    if comm.Get_rank() == 0:
        try:
            result = action()
        except Exception as exc:  # re-raised below, on every rank
            error = exc
    result, error = comm.bcast((result, error))
    if error is not None:
        raise error
    return result


class DataParallel:
    """A Solver's communicator and what it does with it."""

    def __init__(self, comm, model):
        self.comm = check_comm(comm)
        model_comm = getattr(model, "comm", None)
        if model_comm is None or model_comm != comm:
            raise ValueError("Solver(comm=comm) trains data-parallel: build the model on the same "
                             "communicator, FullyConnectedNet(..., comm=comm), so that its loss gives "
                             "each shard's terms of the global batch's")
        self.rank, self.size = comm.Get_rank(), comm.Get_size()
        self.is_root = self.rank == 0

    def on_root(self, action):
        return on_root(self.comm, action)

    def broadcast_model(self, model):
        """Rank 0's parameters and batch-norm statistics on every rank (as DDP does at start)."""
        params, bn_params = self.comm.bcast((model.params, getattr(model, "bn_params", None))
                                            if self.is_root else None)
        if not self.is_root:
            model.params = params
            if bn_params is not None:
                model.bn_params = bn_params

    def broadcast_rng(self):
        """Rank 0's state of NumPy's global generator on every rank: the same minibatches."""
        state = self.comm.bcast(np.random.get_state() if self.is_root else None)
        if not self.is_root:
            np.random.set_state(state)

    def shard(self, indices):
        """This rank's contiguous part of the global batch (np.array_split order)."""
        return np.array_split(indices, self.size)[self.rank]

    def loss(self, model, X, y, batch):
        """The global batch's loss and gradients: the shards' terms summed over the ranks."""
        mine = self.shard(batch)
        loss, grads = model.loss(X[mine], y[mine])
        names = list(model.params)
        missing = [p for p in names if p not in grads]
        if missing:
            raise KeyError(f"the model's loss returned no gradient for {', '.join(missing)}")
        sizes = [np.size(grads[p]) for p in names]
        buffer = np.empty(sum(sizes) + 1)
        np.concatenate([np.ravel(grads[p]) for p in names], out=buffer[:-1])
        buffer[-1] = loss
        self.comm.Allreduce(MPI.IN_PLACE, buffer)
        total, start = {}, 0
        for p, n in zip(names, sizes):
            w = model.params[p]
            total[p] = buffer[start:start + n].reshape(np.shape(w)).astype(np.asarray(w).dtype, copy=False)
            start += n
        return float(buffer[-1]), total

    def count_correct(self, predict, X, y, batch_size):
        """Correct predictions over all of X: each rank predicts its contiguous part."""
        mine = self.shard(np.arange(X.shape[0]))
        start, stop = (int(mine[0]), int(mine[-1]) + 1) if mine.size else (0, 0)
        correct = 0
        for i in range(start, stop, batch_size):
            end = min(i + batch_size, stop)
            correct += int(np.count_nonzero(predict(X[i:end]) == y[i:end]))
        return self.comm.allreduce(correct)
