"""Pure-NumPy batch and layer normalization: the oracle beside the kernels.

Same names, call shapes, conventions and validation as the compiled API.
``batchnorm_backward`` backpropagates through the forward's computation graph
node by node (as the notebook asks); ``batchnorm_backward_alt`` is the
simplified closed form. The caches hold the graph's full-size intermediates,
which is what the compiled kernels avoid.
"""

from __future__ import annotations

import numpy as np

from . import _validate

__all__ = list(_validate.OPS)


class ReferenceCache(dict):
    """The forward graph's nodes, by name; `kind` says which forward made it."""

    def __init__(self, kind: str, **nodes):
        super().__init__(nodes)
        self.kind = kind


def _graph_forward(x, gamma, beta, eps, ddof, axis):
    """The notebook's graph: mu, xmu, sq, var, sqrtvar, ivar, xhat, out.
    axis 0 normalizes features over rows (batch norm), axis -1 rows over features
    (layer norm, x of any rank >= 2)."""
    n = x.shape[axis]
    mu = x.mean(axis=axis, keepdims=True)
    xmu = x - mu
    sq = xmu ** 2
    var = sq.sum(axis=axis, keepdims=True) / (n - ddof)
    sqrtvar = np.sqrt(var + eps)
    ivar = 1.0 / sqrtvar
    xhat = xmu * ivar
    out = gamma * xhat + beta
    nodes = dict(x=x, gamma=gamma, mu=mu, xmu=xmu, var=var, sqrtvar=sqrtvar, ivar=ivar,
                 xhat=xhat, eps=eps, ddof=ddof, axis=axis, batch_stats=True)
    return out, nodes


def batchnorm_forward(x, gamma, beta, bn_param):
    """Batch normalization forward in NumPy; see fastnorm.batchnorm_forward."""
    x, gamma, beta, eps, ddof, train, m, running_mean, running_var = _validate.batchnorm_args(
        x, gamma, beta, bn_param)
    if train:
        out, nodes = _graph_forward(x, gamma, beta, eps, ddof, axis=0)
        running_mean = m * running_mean + (1 - m) * nodes["mu"][0]
        running_var = m * running_var + (1 - m) * nodes["var"][0]
    else:
        running_mean, running_var = running_mean.copy(), running_var.copy()
        mu = running_mean[None, :]
        sqrtvar = np.sqrt(running_var[None, :] + eps)
        ivar = 1.0 / sqrtvar
        xmu = x - mu
        xhat = xmu * ivar
        out = gamma * xhat + beta
        nodes = dict(x=x, gamma=gamma, mu=mu, xmu=xmu, var=running_var[None, :], sqrtvar=sqrtvar,
                     ivar=ivar, xhat=xhat, eps=eps, ddof=ddof, axis=0, batch_stats=False)
    bn_param["running_mean"] = running_mean.astype(x.dtype)
    bn_param["running_var"] = running_var.astype(x.dtype)
    return out, ReferenceCache("batchnorm", **nodes)


def _checked(dout, cache, kind: str):
    if not isinstance(cache, ReferenceCache) or cache.kind != kind:
        raise TypeError(
            f"cache must be the one returned by fastnorm.reference.{kind}_forward, "
            f"got {type(cache).__name__}"
        )
    dout, dtype = _validate.check_dout(dout, cache["x"].shape, cache["x"].dtype)
    return dout.astype(dtype, copy=False)


def _graph_backward(dout, c):
    """Backprop through each node of the forward graph, summing the branches."""
    axis, xmu, ivar, sqrtvar = c["axis"], c["xmu"], c["ivar"], c["sqrtvar"]
    n = dout.shape[axis]
    features = tuple(range(dout.ndim - 1))  # gamma and beta are per feature in both norms
    dbeta = dout.sum(axis=features)
    dgamma = (dout * c["xhat"]).sum(axis=features)
    dxhat = dout * c["gamma"]
    if not c["batch_stats"]:  # test mode: mu and var are constants
        return dxhat * ivar, dgamma, dbeta
    divar = (dxhat * xmu).sum(axis=axis, keepdims=True)
    dxmu1 = dxhat * ivar
    dsqrtvar = -1.0 / sqrtvar ** 2 * divar
    dvar = 0.5 / np.sqrt(c["var"] + c["eps"]) * dsqrtvar
    dsq = np.ones_like(dout) / (n - c["ddof"]) * dvar
    dxmu2 = 2 * xmu * dsq
    dx1 = dxmu1 + dxmu2
    dmu = -dx1.sum(axis=axis, keepdims=True)
    dx2 = np.ones_like(dout) / n * dmu
    return dx1 + dx2, dgamma, dbeta


def _simplified_backward(dout, c):
    """dx = gamma*ivar * (dout - mean(dout) - xhat * sum(dout*xhat)/(n - ddof)) along the axis."""
    axis, xhat, ivar = c["axis"], c["xhat"], c["ivar"]
    features = tuple(range(dout.ndim - 1))
    dbeta = dout.sum(axis=features)
    dgamma = (dout * xhat).sum(axis=features)
    g = dout * c["gamma"]
    if not c["batch_stats"]:
        return g * ivar, dgamma, dbeta
    n = dout.shape[axis]
    sum_g = g.sum(axis=axis, keepdims=True)
    sum_g_xhat = (g * xhat).sum(axis=axis, keepdims=True)
    dx = ivar * (g - sum_g / n - xhat * sum_g_xhat / (n - c["ddof"]))
    return dx, dgamma, dbeta


def batchnorm_backward(dout, cache):
    """Batch normalization backward through the computation graph, node by node."""
    return _graph_backward(_checked(dout, cache, "batchnorm"), cache)


def batchnorm_backward_alt(dout, cache):
    """Batch normalization backward in the simplified closed form."""
    return _simplified_backward(_checked(dout, cache, "batchnorm"), cache)


def layernorm_forward(x, gamma, beta, ln_param):
    """Layer normalization forward in NumPy; see fastnorm.layernorm_forward."""
    x, gamma, beta, eps, ddof = _validate.layernorm_args(x, gamma, beta, ln_param)
    out, nodes = _graph_forward(x, gamma, beta, eps, ddof, axis=-1)
    return out, ReferenceCache("layernorm", **nodes)


def layernorm_backward(dout, cache):
    """Layer normalization backward (simplified form, along the last axis)."""
    return _simplified_backward(_checked(dout, cache, "layernorm"), cache)


# the N-D normalizations (spatial batch norm, group norm, RMS norm) live in their own file
from .reference_nd import *  # noqa: E402,F401,F403  (its __all__: _validate_nd.OPS)
from . import reference_nd as _reference_nd  # noqa: E402

__all__ += _reference_nd.__all__
