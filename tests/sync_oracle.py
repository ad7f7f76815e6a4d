"""An independent float64 NumPy batch norm over (N, C) or (N, C, H, W), the oracle of
the synchronized batch norm tests (single-process and under mpiexec)."""

import numpy as np


def batchnorm_oracle(x, gamma, beta, dout, eps=1e-5, ddof=0):
    """out, dx, dgamma, dbeta, mean, var of train-mode batch norm on the whole batch x."""
    x, dout = np.asarray(x, np.float64), np.asarray(dout, np.float64)
    axes = (0,) if x.ndim == 2 else (0, 2, 3)
    per_channel = (1, -1) + (1,) * (x.ndim - 2)
    gamma = np.asarray(gamma, np.float64).reshape(per_channel)
    beta = np.asarray(beta, np.float64).reshape(per_channel)
    n = x.size // x.shape[1]
    mean = x.mean(axis=axes, keepdims=True)
    xc = x - mean
    var = (xc * xc).sum(axis=axes, keepdims=True) / (n - ddof)
    inv_std = 1.0 / np.sqrt(var + eps)
    out = gamma * xc * inv_std + beta
    dbeta = dout.sum(axis=axes)
    sum_dy_xc = (dout * xc).sum(axis=axes, keepdims=True)
    dgamma = (sum_dy_xc * inv_std).reshape(-1)
    dx = gamma * inv_std * (dout - dbeta.reshape(per_channel) / n - xc * inv_std ** 2 * sum_dy_xc / (n - ddof))
    return out, dx, dgamma, dbeta, mean.reshape(-1), var.reshape(-1)


def shard_bounds(sizes, rank):
    """The slice of the global batch that `rank` holds, shards in rank order."""
    start = sum(sizes[:rank])
    return slice(start, start + sizes[rank])
