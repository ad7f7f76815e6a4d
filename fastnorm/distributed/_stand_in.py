"""DEVELOPMENT STAND-IN, to be removed: NumPy float64 versions of the compiled column
blocks (same signatures), until the compiled ones are merged."""

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
