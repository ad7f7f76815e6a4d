"""Data-parallel fastnorm over MPI (mpi4py): synchronized batch norm.

    from fastnorm import distributed as dist
    out, cache = dist.sync_batchnorm_forward(x_local, gamma, beta, bn_param, comm=None)
    dx_local, dgamma_local, dbeta_local = dist.sync_batchnorm_backward(dout_local, cache)

Each rank passes its shard of the batch; the statistics are those of the global
batch (the shards concatenated in rank order). ``comm`` defaults to
``MPI.COMM_WORLD``. Needs the optional extra: ``pip install "fastnorm[mpi]"``.
"""

try:
    from mpi4py import MPI  # noqa: F401  (initializes MPI)
except ImportError as exc:
    raise ImportError(
        "fastnorm.distributed needs mpi4py and an MPI library, which fastnorm does not install "
        "by default: pip install \"fastnorm[mpi]\" (or, from the repository, pip install \".[mpi]\"), "
        f"which brings mpi4py and the mpich wheel ({exc})"
    ) from exc

from .sync_bn import SyncBatchNormCache, sync_batchnorm_backward, sync_batchnorm_forward  # noqa: E402

__all__ = ["sync_batchnorm_forward", "sync_batchnorm_backward", "SyncBatchNormCache"]
