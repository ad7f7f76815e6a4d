"""Centered finite differences, with the notebook's signatures."""

from __future__ import annotations

import numpy as np

from ._validate import real_in_range


def _centered_differences(f, x, h, reduce, report=None):
    """For each index i of x: reduce(f(x + h e_i) - f(x - h e_i)) / (2h).

    x is perturbed in place and restored after each index; f's results are
    copied, since f may return a view of a buffer it reuses.
    """
    if not isinstance(x, np.ndarray) or x.dtype.kind != "f":
        # an integer x would store old + h truncated: a silently wrong gradient
        raise TypeError("x must be a float numpy array (it is perturbed in place by h), "
                        f"got {type(x).__name__}{' of dtype ' + str(x.dtype) if isinstance(x, np.ndarray) else ''}")
    if not x.flags.writeable:
        raise ValueError("x must be writeable: it is perturbed in place by h (and restored)")
    h = real_in_range("h", h, 0.0, low_open=True)
    grad = np.zeros_like(x)
    it = np.nditer(x, flags=["multi_index"], op_flags=["readwrite"])
    while not it.finished:
        ix = it.multi_index
        old = x[ix]
        x[ix] = old + h
        pos = np.array(f(x), copy=True)
        x[ix] = old - h
        neg = np.array(f(x), copy=True)
        x[ix] = old
        grad[ix] = reduce(pos - neg) / (2 * h)
        if report is not None:
            report(ix, grad[ix])
        it.iternext()
    return grad


def eval_numerical_gradient(f, x, verbose=True, h=1e-5):
    """Gradient of the scalar f(x) at x; with verbose, each index and its gradient is printed."""
    return _centered_differences(f, x, h, reduce=lambda diff: diff, report=print if verbose else None)


def eval_numerical_gradient_array(f, x, df, h=1e-5):
    """Gradient of sum(f(x) * df) at x, for an array-valued f and upstream gradient df."""
    return _centered_differences(f, x, h, reduce=lambda diff: np.sum(diff * df))
