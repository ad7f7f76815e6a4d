import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import fastnorm as fn
from fastnorm import optim

from kernel_builds import RUNNABLE

W = np.array([1.0, -2.0])
DW = np.array([0.5, 0.25])


def test_sgd_default_and_given_rate():
    next_w, config = optim.sgd(W, DW)
    np.testing.assert_allclose(next_w, [0.995, -2.0025], rtol=1e-15)
    assert config == {"learning_rate": 1e-2}
    next_w, _ = optim.sgd(W, DW, {"learning_rate": 0.1})
    np.testing.assert_allclose(next_w, [0.95, -2.025], rtol=1e-15)


def test_sgd_momentum_two_steps():
    w1, config = optim.sgd_momentum(W, DW)
    assert config["momentum"] == 0.9 and config["learning_rate"] == 1e-2
    np.testing.assert_allclose(config["velocity"], [-0.005, -0.0025], rtol=1e-15)
    np.testing.assert_allclose(w1, [0.995, -2.0025], rtol=1e-15)
    w2, config = optim.sgd_momentum(w1, DW, config)
    # v = 0.9 * v - 0.01 * dw
    np.testing.assert_allclose(config["velocity"], [-0.0095, -0.00475], rtol=1e-14)
    np.testing.assert_allclose(w2, [0.9855, -2.00725], rtol=1e-14)


def test_rmsprop_first_step():
    next_w, config = optim.rmsprop(W, DW)
    assert (config["decay_rate"], config["epsilon"], config["learning_rate"]) == (0.99, 1e-8, 1e-2)
    np.testing.assert_allclose(config["cache"], [0.0025, 0.000625], rtol=1e-14)   # 0.01 * dw**2
    expected = [1.0 - 0.01 * 0.5 / (0.05 + 1e-8), -2.0 - 0.01 * 0.25 / (0.025 + 1e-8)]
    np.testing.assert_allclose(next_w, expected, rtol=1e-14)


def test_adam_two_steps_with_bias_correction():
    w = np.array([1.0])
    w1, config = optim.adam(w, np.array([0.5]))
    assert config["t"] == 1
    assert (config["beta1"], config["beta2"], config["learning_rate"], config["epsilon"]) == (0.9, 0.999, 1e-3, 1e-8)
    # first step: m_hat = dw, v_hat = dw**2
    np.testing.assert_allclose(w1, [1.0 - 1e-3 * 0.5 / (0.5 + 1e-8)], rtol=1e-14)
    w2, config = optim.adam(w1, np.array([-0.3]), config)
    assert config["t"] == 2
    # m = 0.9*0.05 + 0.1*(-0.3) = 0.015;  v = 0.999*0.00025 + 0.001*0.09 = 0.00033975
    np.testing.assert_allclose(config["m"], [0.015], rtol=1e-14)
    np.testing.assert_allclose(config["v"], [0.00033975], rtol=1e-14)
    expected = w1[0] - 1e-3 * (0.015 / 0.19) / (np.sqrt(0.00033975 / 0.001999) + 1e-8)
    np.testing.assert_allclose(w2, [expected], rtol=1e-13)


def test_adam_continues_from_given_t():
    _, config = optim.adam(W, DW, {"t": 5})
    assert config["t"] == 6


@pytest.mark.parametrize("rule", sorted(optim.UPDATE_RULES))
def test_inputs_unchanged_and_float32_kept(rule):
    w = np.array([[0.5, -1.5], [2.0, 0.25]], dtype=np.float32)
    dw = np.array([[0.1, 0.2], [-0.3, 0.4]], dtype=np.float32)
    w0, dw0 = w.copy(), dw.copy()
    update = optim.UPDATE_RULES[rule]
    next_w, config = update(w, dw)
    next_w, config = update(next_w, dw, config)
    assert next_w.dtype == np.float32
    assert all(v.dtype == np.float32 for v in config.values() if isinstance(v, np.ndarray))
    np.testing.assert_array_equal(w, w0)
    np.testing.assert_array_equal(dw, dw0)


@pytest.mark.parametrize("rule", sorted(optim.UPDATE_RULES))
def test_bad_input_raises_and_leaves_config(rule):
    update = optim.UPDATE_RULES[rule]
    config = {"learning_rate": 0.1}
    with pytest.raises(ValueError, match=r"\(2,\).*\(3,\)"):
        update(np.zeros(2), np.zeros(3), config)
    assert config == {"learning_rate": 0.1}
    with pytest.raises(ValueError, match="learning_rate"):
        update(np.zeros(2), np.zeros(2), {"learning_rate": float("nan")})
    with pytest.raises(TypeError, match="config"):
        update(np.zeros(2), np.zeros(2), [("learning_rate", 1)])


@pytest.mark.parametrize("rule, key", [("sgd_momentum", "velocity"), ("rmsprop", "cache"), ("adam", "m"), ("adam", "v")])
def test_state_given_as_a_list_is_read_as_an_array(rule, key):
    # adam with m as a list raised "can't multiply sequence by non-int of type 'float'"
    update = optim.UPDATE_RULES[rule]
    state = np.full(W.shape, 0.5)
    expected, _ = update(W, DW, {key: state.copy()})
    next_w, config = update(W, DW, {key: state.tolist()})
    np.testing.assert_array_equal(next_w, expected)
    with pytest.raises(TypeError, match=rf"config\['{key}'\] must hold real numbers"):
        update(W, DW, {key: ["a"] * W.size})


def test_bad_hyperparameters():
    with pytest.raises(ValueError, match="momentum"):
        optim.sgd_momentum(W, DW, {"momentum": 1.0})
    with pytest.raises(ValueError, match="beta2"):
        optim.adam(W, DW, {"beta2": -0.1})
    with pytest.raises(ValueError, match="t"):
        optim.adam(W, DW, {"t": -1})
    with pytest.raises(ValueError, match="velocity"):
        optim.sgd_momentum(W, DW, {"velocity": np.zeros(3)})


@pytest.mark.parametrize("value", [float("inf"), -float("inf"), np.float64("nan"), True, np.bool_(False), "0.1", None,
                                   10**400])  # too large for a float: was NumPy's isfinite TypeError
def test_non_finite_or_non_number_hyperparameters_raise(value):
    config = {"learning_rate": value}
    with pytest.raises(ValueError, match="learning_rate"):
        optim.adam(W, DW, config)
    assert config == {"learning_rate": value}


@pytest.mark.parametrize("value", [0.01, np.float32(0.01), np.float64(0.01), 1, np.int64(1)])
def test_real_hyperparameters_of_any_type_give_the_float_result(value):
    by_type, _ = optim.sgd(W, DW, {"learning_rate": value})
    as_float, _ = optim.sgd(W, DW, {"learning_rate": float(value)})
    np.testing.assert_array_equal(by_type, as_float)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_adam_matches_its_formula_bitwise_over_steps(dtype):
    rng = np.random.default_rng(3)
    w = rng.standard_normal((7, 5)).astype(dtype)
    config, m, v = {}, np.zeros_like(w), np.zeros_like(w)
    for t in range(1, 6):
        dw = rng.standard_normal(w.shape).astype(dtype)
        m = 0.9 * m + (1 - 0.9) * dw
        v = 0.999 * v + (1 - 0.999) * (dw * dw)
        expected = w - 1e-3 * (m / (1 - 0.9**t)) / (np.sqrt(v / (1 - 0.999**t)) + 1e-8)
        w, config = optim.adam(w, dw, config)
        assert w.dtype == dtype and config["m"].dtype == dtype
        np.testing.assert_array_equal(w, expected)
        np.testing.assert_array_equal(config["m"], m)
        np.testing.assert_array_equal(config["v"], v)


def test_adam_with_state_of_another_dtype_follows_numpy_promotion():
    w, dw = np.ones(4, np.float32), np.full(4, 0.5, np.float32)
    config = {"m": np.zeros(4), "v": np.zeros(4)}  # float64 state
    next_w, config = optim.adam(w, dw, config)
    assert next_w.dtype == np.float64 and config["m"].dtype == np.float64
    np.testing.assert_allclose(next_w, 1 - 1e-3, rtol=1e-6)


@settings(max_examples=40, deadline=None)
@given(lr=st.floats(1e-5, 1.0), g=st.floats(-1e3, 1e3).filter(lambda v: abs(v) > 1e-3))
def test_every_rule_moves_against_the_gradient(lr, g):
    for update in optim.UPDATE_RULES.values():
        next_w, _ = update(np.array([0.0]), np.array([g]), {"learning_rate": lr})
        assert np.sign(next_w[0]) == -np.sign(g)


def test_exported():
    assert fn.optim.adam is optim.adam


# ---------------------------------------------------------------- Adam's compiled sweep

def adam_expressions(w, dw, m, v, lr, b1, b2, eps, t):
    """Adam as NumPy evaluates it, written out here independently of fastnorm."""
    m = b1 * m + (1 - b1) * dw
    v = b2 * v + (1 - b2) * (dw * dw)
    return w - lr * (m / (1 - b1**t)) / (np.sqrt(v / (1 - b2**t)) + eps), m, v


finite_or_not = st.one_of(st.floats(width=32, allow_nan=False, allow_infinity=False), st.sampled_from([np.inf, -np.inf, np.nan, 0.0, -0.0]))


@settings(max_examples=60, deadline=None)
@given(dtype=st.sampled_from([np.float32, np.float64]),
       shape=st.sampled_from([(), (0,), (1,), (7,), (33,), (4, 9), (2, 3, 5)]),
       lr=st.floats(0, 10), b1=st.floats(0, 1, exclude_max=True), b2=st.floats(0, 1, exclude_max=True),
       eps=st.floats(0, 1), t=st.integers(1, 10**6), seed=st.integers(0, 2**16), odd=finite_or_not)
def test_compiled_adam_is_bitwise_the_numpy_expressions_on_every_build(dtype, shape, lr, b1, b2, eps, t, seed, odd):
    rng = np.random.default_rng(seed)
    w, dw, m = ((rng.standard_normal(shape) * 10.0 ** rng.integers(-20, 20)).astype(dtype) for _ in range(3))
    v = np.abs(rng.standard_normal(shape)).astype(dtype)
    if dw.size:
        dw.flat[rng.integers(dw.size)] = odd  # an extreme, zero or non-finite gradient somewhere
    with np.errstate(all="ignore"):  # overflow, 0/0 and inf/inf are part of the test
        expected = adam_expressions(w, dw, m, v, lr, b1, b2, eps, t)
    for build in RUNNABLE:
        got = [np.full(shape, 7, dtype) for _ in range(3)]
        build.adam_update(w.reshape(-1), dw.reshape(-1), m.reshape(-1), v.reshape(-1), lr, b1, b2,
                              1 - b1**t, 1 - b2**t, eps, *(a.reshape(-1) for a in got))
        for a, b in zip(got, expected):
            np.testing.assert_array_equal(a, b, strict=True)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_adam_kernel_and_numpy_fallback_agree_through_the_public_rule(dtype):
    rng = np.random.default_rng(11)
    w = rng.standard_normal((6, 8)).astype(dtype)
    contiguous, strided = {}, {}
    wide = np.zeros((6, 16), dtype)
    for _ in range(4):
        dw = rng.standard_normal(w.shape).astype(dtype)
        wide[:, ::2] = w  # a strided view of the same values takes the NumPy path
        next_w, contiguous = optim.adam(w, dw, contiguous)
        next_strided, strided = optim.adam(wide[:, ::2], dw, strided)
        np.testing.assert_array_equal(next_w, next_strided, strict=True)
        np.testing.assert_array_equal(contiguous["m"], strided["m"], strict=True)
        np.testing.assert_array_equal(contiguous["v"], strided["v"], strict=True)
        w = next_w


def test_adam_keeps_numpy_promotion_and_warnings_off_the_kernel_path():
    w, dw = np.ones(3, np.float32), np.full(3, 0.5, np.float32)
    by_numpy_scalar, _ = optim.adam(w, dw, {"learning_rate": np.float64(1e-3)})
    assert by_numpy_scalar.dtype == np.float64  # a NumPy float64 scalar promotes, as in NumPy
    with pytest.warns(RuntimeWarning, match="overflow"):  # float32 cannot hold this rate
        huge, _ = optim.adam(w, dw, {"learning_rate": 1e39})
    assert huge.dtype == np.float32 and np.all(np.isneginf(huge))
