"""Pure-NumPy N-D normalizations, written as the ConvolutionalNetworks notebook would:
the oracle beside the compiled kernels (re-exported by fastnorm.reference).

Spatial batch norm is the vanilla batch norm on the (N*H*W, C) matrix of the
transposed x (the notebook's hint); group norm reshapes to (N, G, C/G, H, W);
RMS norm normalizes the last axis by its root mean square. The caches hold
full-size intermediates, which is what the compiled kernels avoid.
"""

from __future__ import annotations

import numpy as np

from . import _validate, _validate_nd
from .reference import ReferenceCache, batchnorm_backward_alt, batchnorm_forward

__all__ = list(_validate_nd.OPS)


def _checked(dout, cache, kind: str) -> np.ndarray:
    if not isinstance(cache, ReferenceCache) or cache.kind != kind:
        raise TypeError(
            f"cache must be the one returned by fastnorm.reference.{kind}_forward, "
            f"got {type(cache).__name__}"
        )
    x = cache["x"]
    dout, dtype = _validate.check_dout(dout, x.shape, x.dtype)
    return dout.astype(dtype, copy=False)


def spatial_batchnorm_forward(x, gamma, beta, bn_param):
    """Spatial batch norm in NumPy: x (N, C, H, W), gamma and beta (C,), statistics per
    channel over (N, H, W); bn_param as batchnorm_forward's (running stats (C,))."""
    call = _validate_nd.spatial_batchnorm_call(x, gamma, beta, bn_param)
    x = call.x
    N, C, H, W = x.shape
    flat = x.transpose(0, 2, 3, 1).reshape(-1, C)
    out, inner = batchnorm_forward(flat, call.gamma, call.beta, bn_param)
    return (out.reshape(N, H, W, C).transpose(0, 3, 1, 2),
            ReferenceCache("spatial_batchnorm", x=x, inner=inner))


def spatial_batchnorm_backward(dout, cache):
    """dx (N, C, H, W), dgamma (C,), dbeta (C,) through the vanilla simplified backward."""
    dout = _checked(dout, cache, "spatial_batchnorm")
    N, C, H, W = dout.shape
    dx, dgamma, dbeta = batchnorm_backward_alt(dout.transpose(0, 2, 3, 1).reshape(-1, C), cache["inner"])
    return dx.reshape(N, H, W, C).transpose(0, 3, 1, 2), dgamma, dbeta


def spatial_groupnorm_forward(x, gamma, beta, G, gn_param):
    """Group norm in NumPy: statistics per (sample, group) over (C/G, H, W); gamma and
    beta (1, C, 1, 1); gn_param['eps'] (1e-5), other keys ignored."""
    call = _validate_nd.spatial_groupnorm_call(x, gamma, beta, G, gn_param)
    x, G, eps = call.x, call.G, call.eps
    N, C, H, W = x.shape
    gamma = call.gamma.reshape(1, C, 1, 1)
    beta = call.beta.reshape(1, C, 1, 1)
    xg = x.reshape(N, G, -1)
    mu = xg.mean(axis=2, keepdims=True)
    xmu = xg - mu
    var = (xmu ** 2).mean(axis=2, keepdims=True)
    ivar = 1.0 / np.sqrt(var + eps)
    xhat = (xmu * ivar).reshape(N, C, H, W)
    out = gamma * xhat + beta
    return out, ReferenceCache("spatial_groupnorm", x=x, gamma=gamma, xhat=xhat, ivar=ivar, G=G, eps=eps)


def spatial_groupnorm_backward(dout, cache):
    """dx (N, C, H, W), dgamma and dbeta (1, C, 1, 1): the simplified form per group."""
    dout = _checked(dout, cache, "spatial_groupnorm")
    N, G = dout.shape[0], cache["G"]
    xhat, ivar = cache["xhat"], cache["ivar"]
    dbeta = dout.sum(axis=(0, 2, 3), keepdims=True)
    dgamma = (dout * xhat).sum(axis=(0, 2, 3), keepdims=True)
    g = (dout * cache["gamma"]).reshape(N, G, -1)
    xhat_g = xhat.reshape(N, G, -1)
    dx = ivar * (g - g.mean(axis=2, keepdims=True)
                 - xhat_g * (g * xhat_g).mean(axis=2, keepdims=True))
    return dx.reshape(dout.shape), dgamma, dbeta


def rmsnorm_forward(x, gamma, rms_param):
    """RMS norm in NumPy: y = x / sqrt(mean(x**2, last axis) + eps) * gamma; x of any
    rank >= 2, gamma (D,), rms_param['eps'] (1e-5)."""
    call = _validate_nd.rmsnorm_call(x, gamma, rms_param)
    x, gamma = call.x, call.gamma
    rstd = 1.0 / np.sqrt((x * x).mean(axis=-1, keepdims=True) + call.eps)
    xhat = x * rstd
    return xhat * gamma, ReferenceCache("rmsnorm", x=x, gamma=gamma, rstd=rstd, xhat=xhat)


def rmsnorm_backward(dout, cache):
    """dx (x's shape) and dgamma (D,)."""
    dout = _checked(dout, cache, "rmsnorm")
    xhat, D = cache["xhat"], dout.shape[-1]
    g = dout * cache["gamma"]
    dx = cache["rstd"] * (g - xhat * (g * xhat).mean(axis=-1, keepdims=True))
    dgamma = (dout * xhat).reshape(-1, D).sum(axis=0)
    return dx, dgamma
