"""The contract of the N-D normalizations around their kernels: every bad
argument is refused with a message naming it and the shapes, before any
computation, and leaves the arguments as they were."""

import copy
import re

import numpy as np
import pytest

import fastnorm as fn
from fastnorm import reference as ref

APIS = [pytest.param(fn, id="compiled"), pytest.param(ref, id="reference")]


def bn_inputs(shape=(2, 3, 4, 5)):
    rng = np.random.default_rng(0)
    C = shape[1]
    return rng.standard_normal(shape), rng.standard_normal(C), rng.standard_normal(C)


def gn_inputs(shape=(2, 6, 4, 5)):
    rng = np.random.default_rng(0)
    C = shape[1]
    return rng.standard_normal(shape), rng.standard_normal((1, C, 1, 1)), rng.standard_normal((1, C, 1, 1))


def assert_rejected(call, args, exc, match):
    before = copy.deepcopy(args)
    with pytest.raises(exc, match=match):
        call(*args)
    for a, b in zip(before, args):
        if isinstance(a, np.ndarray):
            np.testing.assert_array_equal(a, b)
        elif isinstance(a, dict):
            assert a.keys() == b.keys()


# ------------------------------------------------------------- spatial batch norm
@pytest.mark.parametrize("api", APIS)
@pytest.mark.parametrize("shape", [(2, 3), (2, 3, 4), (1, 2, 3, 4, 5), ()])
def test_spatial_bn_x_not_4d(api, shape):
    _, g, b = bn_inputs()
    assert_rejected(api.spatial_batchnorm_forward, (np.ones(shape), g, b, {"mode": "train"}), ValueError,
                    r"x must be 4-D \(N, C, H, W\), got .* shape")


@pytest.mark.parametrize("api", APIS)
def test_spatial_bn_empty_x(api):
    assert_rejected(api.spatial_batchnorm_forward, (np.ones((2, 3, 0, 5)), np.ones(3), np.ones(3),
                                                    {"mode": "train"}), ValueError, r"\(2, 3, 0, 5\)")


@pytest.mark.parametrize("api", APIS)
@pytest.mark.parametrize("which, shape", [("gamma", (4,)), ("beta", (1, 3, 1, 1)), ("gamma", ())])
def test_spatial_bn_gamma_beta_shape(api, which, shape):
    x, g, b = bn_inputs()
    args = {"gamma": g, "beta": b, which: np.ones(shape)}
    assert_rejected(api.spatial_batchnorm_forward, (x, args["gamma"], args["beta"], {"mode": "train"}),
                    ValueError, rf"{which} must have shape \(C,\) = \(3,\) for x of shape \(2, 3, 4, 5\), "
                    rf"got {re.escape(str(shape))}")


@pytest.mark.parametrize("api", APIS)
@pytest.mark.parametrize("bn_param, exc, match", [
    ({}, ValueError, r"bn_param\['mode'\] is required"),
    ({"mode": "eval"}, ValueError, r"bn_param\['mode'\] must be 'train' or 'test'"),
    ({"mode": "train", "eps": float("nan")}, ValueError, r"bn_param\['eps'\] must be finite"),
    ({"mode": "train", "eps": float("inf")}, ValueError, r"bn_param\['eps'\] must be finite"),
    ({"mode": "train", "eps": -1.0}, ValueError, r"bn_param\['eps'\]"),
    ({"mode": "train", "eps": "1e-5"}, TypeError, r"bn_param\['eps'\] must be a real number"),
    ({"mode": "train", "momentum": 1.5}, ValueError, r"bn_param\['momentum'\]"),
    ({"mode": "train", "ddof": 2}, ValueError, r"bn_param\['ddof'\] must be 0 or 1"),
    ({"mode": "train", "ddof": True}, ValueError, r"bn_param\['ddof'\] must be 0 or 1"),
    ({"mode": "train", "running_mean": np.zeros(4)}, ValueError,
     r"bn_param\['running_mean'\] must have shape \(C,\) = \(3,\) for x of shape \(2, 3, 4, 5\), got \(4,\)"),
    ({"mode": "test", "running_var": np.zeros((1, 3, 1, 1))}, ValueError, r"bn_param\['running_var'\]"),
    ([("mode", "train")], TypeError, r"bn_param must be a dict"),
])
def test_spatial_bn_params(api, bn_param, exc, match):
    x, g, b = bn_inputs()
    assert_rejected(api.spatial_batchnorm_forward, (x, g, b, bn_param), exc, match)


@pytest.mark.parametrize("api", APIS)
def test_spatial_bn_ddof1_needs_two_values_per_channel(api):
    x, g, b = bn_inputs((1, 3, 1, 1))
    assert_rejected(api.spatial_batchnorm_forward, (x, g, b, {"mode": "train", "ddof": 1}), ValueError,
                    r"ddof=1 needs more than 1 value\(s\) per channel, got x of shape \(1, 3, 1, 1\)")


@pytest.mark.parametrize("api", APIS)
@pytest.mark.parametrize("bad", [np.ones((2, 3, 4, 5), complex), np.full((2, 3, 4, 5), "a")])
def test_spatial_bn_non_real_x(api, bad):
    _, g, b = bn_inputs()
    with pytest.raises(TypeError, match="x "):
        api.spatial_batchnorm_forward(bad, g, b, {"mode": "train"})


# ------------------------------------------------------------------- group norm
@pytest.mark.parametrize("api", APIS)
@pytest.mark.parametrize("shape", [(2, 6), (2, 6, 4), ()])
def test_groupnorm_x_not_4d(api, shape):
    _, g, b = gn_inputs()
    assert_rejected(api.spatial_groupnorm_forward, (np.ones(shape), g, b, 2, {}), ValueError,
                    r"x must be 4-D \(N, C, H, W\)")


@pytest.mark.parametrize("api", APIS)
@pytest.mark.parametrize("which, shape", [("gamma", (6,)), ("beta", (1, 5, 1, 1)), ("gamma", (6, 1, 1))])
def test_groupnorm_gamma_beta_shape(api, which, shape):
    x, g, b = gn_inputs()
    args = {"gamma": g, "beta": b, which: np.ones(shape)}
    assert_rejected(api.spatial_groupnorm_forward, (x, args["gamma"], args["beta"], 2, {}), ValueError,
                    rf"{which} must have shape \(1, C, 1, 1\) = \(1, 6, 1, 1\) for x of shape \(2, 6, 4, 5\)")


@pytest.mark.parametrize("api", APIS)
@pytest.mark.parametrize("G, exc, match", [
    (4, ValueError, r"G must be a positive integer dividing C = 6, got 4"),
    (0, ValueError, r"G must be a positive integer dividing C = 6, got 0"),
    (-2, ValueError, r"dividing C = 6, got -2"),
    (12, ValueError, r"dividing C = 6, got 12"),
    (2.0, TypeError, r"G must be a positive integer"),
    (True, TypeError, r"G must be a positive integer"),
    ("2", TypeError, r"G must be a positive integer"),
])
def test_groupnorm_bad_G(api, G, exc, match):
    x, g, b = gn_inputs()
    assert_rejected(api.spatial_groupnorm_forward, (x, g, b, G, {}), exc, match)


@pytest.mark.parametrize("api", APIS)
def test_groupnorm_accepts_numpy_integer_G_and_ignores_mode(api):
    x, g, b = gn_inputs()
    a, _ = api.spatial_groupnorm_forward(x, g, b, np.int64(3), {"mode": "train"})
    c, _ = api.spatial_groupnorm_forward(x, g, b, 3, {"mode": "whatever", "eps": 1e-5})
    np.testing.assert_array_equal(a, c)


@pytest.mark.parametrize("api", APIS)
@pytest.mark.parametrize("gn_param, exc, match", [
    ({"eps": float("nan")}, ValueError, r"gn_param\['eps'\] must be finite"),
    ({"eps": -1e-5}, ValueError, r"gn_param\['eps'\]"),
    (None, TypeError, r"gn_param must be a dict"),
])
def test_groupnorm_params(api, gn_param, exc, match):
    x, g, b = gn_inputs()
    assert_rejected(api.spatial_groupnorm_forward, (x, g, b, 2, gn_param), exc, match)


# --------------------------------------------------------------------- RMS norm
@pytest.mark.parametrize("api", APIS)
@pytest.mark.parametrize("shape", [(5,), ()])
def test_rmsnorm_rank_below_2(api, shape):
    assert_rejected(api.rmsnorm_forward, (np.ones(shape), np.ones(5), {}), ValueError,
                    r"x must have rank >= 2 \(\.\.\., D\), got")


@pytest.mark.parametrize("api", APIS)
@pytest.mark.parametrize("shape", [(0, 4), (3, 0), (2, 0, 4)])
def test_rmsnorm_empty_x(api, shape):
    assert_rejected(api.rmsnorm_forward, (np.ones(shape), np.ones(shape[-1]), {}), ValueError,
                    "at least one row and one feature")


@pytest.mark.parametrize("api", APIS)
@pytest.mark.parametrize("gamma_shape", [(4,), (1, 5), ()])
def test_rmsnorm_gamma_shape(api, gamma_shape):
    assert_rejected(api.rmsnorm_forward, (np.ones((2, 3, 5)), np.ones(gamma_shape), {}), ValueError,
                    r"gamma must have shape \(D,\) = \(5,\) for x of shape \(2, 3, 5\)")


@pytest.mark.parametrize("api", APIS)
@pytest.mark.parametrize("rms_param, exc, match", [
    ({"eps": float("inf")}, ValueError, r"rms_param\['eps'\] must be finite"),
    ({"eps": None}, TypeError, r"rms_param\['eps'\] must be a real number"),
    ("eps", TypeError, r"rms_param must be a dict"),
])
def test_rmsnorm_params(api, rms_param, exc, match):
    assert_rejected(api.rmsnorm_forward, (np.ones((2, 5)), np.ones(5), rms_param), exc, match)


# ---------------------------------------------------------------------- backward
def forwards(api):
    x, g, b = bn_inputs()
    xg, gg, bg = gn_inputs()
    return {
        "spatial_batchnorm": (api.spatial_batchnorm_forward(x, g, b, {"mode": "train"})[1], x.shape),
        "spatial_groupnorm": (api.spatial_groupnorm_forward(xg, gg, bg, 2, {})[1], xg.shape),
        "rmsnorm": (api.rmsnorm_forward(x, np.ones(5), {})[1], x.shape),
    }


@pytest.mark.parametrize("api", APIS)
@pytest.mark.parametrize("op", ["spatial_batchnorm", "spatial_groupnorm", "rmsnorm"])
def test_dout_of_another_shape(api, op):
    cache, shape = forwards(api)[op]
    backward = getattr(api, f"{op}_backward")
    bad = np.ones(shape[:-1] + (shape[-1] + 1,))
    with pytest.raises(ValueError, match=rf"dout must have the shape of x {re.escape(str(shape))}, got"):
        backward(bad, cache)


@pytest.mark.parametrize("api", APIS)
@pytest.mark.parametrize("op", ["spatial_batchnorm", "spatial_groupnorm", "rmsnorm"])
def test_cache_of_another_op(api, op):
    caches = forwards(api)
    backward = getattr(api, f"{op}_backward")
    for other, (cache, shape) in caches.items():
        if other != op:
            with pytest.raises(TypeError, match=rf"cache must be the one returned by .*{op}_forward"):
                backward(np.ones(shape), cache)
    with pytest.raises(TypeError, match="cache must be"):
        backward(np.ones(caches[op][1]), {"x": np.ones(caches[op][1])})

