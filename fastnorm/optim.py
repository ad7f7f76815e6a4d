"""First-order update rules, with the notebook's interface:

    next_w, config = rule(w, dw, config=None)

w and dw are arrays of one shape; config is a dict of hyperparameters and the
rule's state (velocity, moments, step count). A missing key gets its default,
written into the dict, and the same dict is returned with the new state, so
pass it back on the next step. Inputs are not modified: next_w is a new array
of w's dtype (float32 stays float32).

Defaults: sgd learning_rate 1e-2; sgd_momentum learning_rate 1e-2, momentum 0.9;
rmsprop learning_rate 1e-2, decay_rate 0.99, epsilon 1e-8; adam learning_rate
1e-3, beta1 0.9, beta2 0.999, epsilon 1e-8, t 0 (incremented before each step).
"""

from __future__ import annotations

import math
import numbers

import numpy as np

from ._build import by_dtype, load_kernels
from ._validate import _F32, _F64, as_real_array, finite_float

__all__ = ["sgd", "sgd_momentum", "rmsprop", "adam", "UPDATE_RULES"]

_UNIT_OPEN = (0.0, 1.0)  # [0, 1) for momentum and decay rates
_F32_MAX = float(np.finfo(np.float32).max)
_ADAM = by_dtype(load_kernels().adam_update)


def _check(w, dw, config, defaults: dict, state: tuple = ()):
    """Validated (w, dw, config); config gets the defaults only after all checks pass."""
    w = as_real_array("w", w)
    dw = as_real_array("dw", dw)
    if w.shape != dw.shape:
        raise ValueError(f"w and dw must have the same shape, got {w.shape} and {dw.shape}")
    if config is None:
        config = {}
    if not isinstance(config, dict):
        raise TypeError(f"config must be a dict or None, got {type(config).__name__}")
    for key, default in defaults.items():
        value = config.get(key, default)
        # a plain float is the usual case: one type test and math.isfinite, not ABC checks
        if not (type(value) is float and math.isfinite(value)) and finite_float(value) is None:
            raise ValueError(f"config['{key}'] must be a finite number, got {value!r}")
        if key in ("momentum", "decay_rate", "beta1", "beta2") and not _UNIT_OPEN[0] <= value < _UNIT_OPEN[1]:
            raise ValueError(f"config['{key}'] must be in [0, 1), got {value!r}")
        if key in ("learning_rate", "epsilon") and value < 0:
            raise ValueError(f"config['{key}'] must be >= 0, got {value!r}")
    given = {}  # state the caller passed, as arrays (a list would multiply as a sequence)
    for key in state:
        if key in config:
            held = config[key]
            if type(held) is not np.ndarray:
                held = as_real_array(f"config['{key}']", held)
            if held.shape != w.shape:
                raise ValueError(f"config['{key}'] has shape {held.shape}, w has {w.shape}")
            given[key] = held
    config.update(given)
    for key, default in defaults.items():
        config.setdefault(key, default)
    for key in state:
        if key not in config:
            config[key] = np.zeros_like(w)
    return w, dw, config


def sgd(w, dw, config=None):
    """Vanilla SGD: next_w = w - learning_rate * dw."""
    w, dw, config = _check(w, dw, config, {"learning_rate": 1e-2})
    return w - config["learning_rate"] * dw, config


def sgd_momentum(w, dw, config=None):
    """SGD with momentum: v = momentum * v - learning_rate * dw; next_w = w + v.

    config: learning_rate, momentum, velocity (zeros of w's shape at first).
    """
    w, dw, config = _check(w, dw, config, {"learning_rate": 1e-2, "momentum": 0.9}, ("velocity",))
    v = config["momentum"] * config["velocity"] - config["learning_rate"] * dw
    config["velocity"] = v
    return w + v, config


def rmsprop(w, dw, config=None):
    """RMSProp: cache = decay_rate * cache + (1 - decay_rate) * dw**2;
    next_w = w - learning_rate * dw / (sqrt(cache) + epsilon).
    """
    defaults = {"learning_rate": 1e-2, "decay_rate": 0.99, "epsilon": 1e-8}
    w, dw, config = _check(w, dw, config, defaults, ("cache",))
    decay = config["decay_rate"]
    cache = decay * config["cache"] + (1 - decay) * dw * dw
    config["cache"] = cache
    return w - config["learning_rate"] * dw / (np.sqrt(cache) + config["epsilon"]), config


def adam(w, dw, config=None):
    """Adam with bias correction; t counts steps from 0 and is incremented first.

    m = beta1 * m + (1 - beta1) * dw;  v = beta2 * v + (1 - beta2) * dw**2
    next_w = w - learning_rate * (m / (1 - beta1**t)) / (sqrt(v / (1 - beta2**t)) + epsilon)
    """
    defaults = {"learning_rate": 1e-3, "beta1": 0.9, "beta2": 0.999, "epsilon": 1e-8}
    t = 0 if config is None or not isinstance(config, dict) else config.get("t", 0)
    if type(t) is not int and (isinstance(t, (bool, np.bool_)) or not isinstance(t, numbers.Integral)) or t < 0:
        raise ValueError(f"config['t'] must be a non-negative integer, got {t!r}")
    w, dw, config = _check(w, dw, config, defaults, ("m", "v"))
    b1, b2 = config["beta1"], config["beta2"]
    lr, eps = config["learning_rate"], config["epsilon"]
    t = int(t) + 1
    m, v = config["m"], config["v"]
    if _adam_compiles(w, dw, m, v, lr, b1, b2, eps):
        next_w, next_m, next_v = np.empty_like(w), np.empty_like(w), np.empty_like(w)
        _ADAM[w.dtype](w.reshape(-1), dw.reshape(-1), m.reshape(-1), v.reshape(-1),
                       lr, b1, b2, 1 - b1**t, 1 - b2**t, eps,
                       next_w.reshape(-1), next_m.reshape(-1), next_v.reshape(-1))
    else:
        next_m = b1 * m + (1 - b1) * dw
        next_v = b2 * v + (1 - b2) * (dw * dw)
        m_hat = next_m / (1 - b1**t)
        v_hat = next_v / (1 - b2**t)
        next_w = w - lr * m_hat / (np.sqrt(v_hat) + eps)
    config.update(t=t, m=next_m, v=next_v)
    return next_w, config


def _adam_compiles(w, dw, m, v, *hyper) -> bool:
    """Whether the compiled update gives what the NumPy expressions would: exact
    C-contiguous ndarrays of one float dtype, plain float hyperparameters that
    float32 can hold (NumPy would promote a NumPy scalar, warn on an overflow)."""
    dtype = w.dtype
    if dtype is not _F32 and dtype is not _F64:
        return False
    for a in (w, dw, m, v):
        if type(a) is not np.ndarray or a.dtype is not dtype or not a.flags.c_contiguous:
            return False
    for value in hyper:
        if type(value) is not float or (dtype is _F32 and value > _F32_MAX):
            return False
    return True


UPDATE_RULES = {"sgd": sgd, "sgd_momentum": sgd_momentum, "rmsprop": rmsprop, "adam": adam}
