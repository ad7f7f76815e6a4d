"""DEVELOPMENT STAND-IN, to be removed: NumPy float64 versions of the compiled column
and plane blocks (same signatures), until the compiled ones are merged."""

import numpy as np


def column_moments(x, mean_out, m2_out, n_threads):
    x = x.astype(np.float64)
    mean_out[...] = x.mean(axis=0)
    m2_out[...] = ((x - mean_out) ** 2).sum(axis=0)


def column_grad_sums(dout, x, mean, sum_dy_out, sum_dy_xc_out, n_threads):
    dout = dout.astype(np.float64)
    sum_dy_out[...] = dout.sum(axis=0)
    sum_dy_xc_out[...] = (dout * (x - mean)).sum(axis=0)


def column_dx(dout, x, mean, inv_std, gamma, sum_dy, sum_dy_xc, count, ddof, train, dx_out, n_threads):
    scale = gamma * inv_std
    if train:
        dx_out[...] = scale * (dout - sum_dy / count - (x - mean) * inv_std ** 2 * sum_dy_xc / (count - ddof))
    else:
        dx_out[...] = scale * dout


def _t(a):  # (N, C, HW) -> (N*HW, C)
    return a.transpose(0, 2, 1).reshape(-1, a.shape[1])


def plane_moments(x, mean_out, m2_out, n_threads):
    column_moments(_t(x), mean_out, m2_out, n_threads)


def plane_grad_sums(dout, x, mean, sum_dy_out, sum_dy_xc_out, n_threads):
    column_grad_sums(_t(dout), _t(x), mean, sum_dy_out, sum_dy_xc_out, n_threads)


def plane_dx(dout, x, mean, inv_std, gamma, sum_dy, sum_dy_xc, count, ddof, train, dx_out, n_threads):
    c = (slice(None), None)
    scale = (gamma * inv_std)[c]
    if train:
        dx_out[...] = scale * (dout - (sum_dy / count)[c]
                               - (x - mean[c]) * (inv_std ** 2 * sum_dy_xc / (count - ddof))[c])
    else:
        dx_out[...] = scale * dout


def normalize(x, mean, inv_std, gamma, beta, out):
    """out = (x - mean) * gamma * inv_std + beta; x (rows, C) or (N, C, HW)."""
    c = (slice(None), None) if x.ndim == 3 else slice(None)
    out[...] = (x - mean[c]) * (gamma * inv_std)[c] + beta[c]
