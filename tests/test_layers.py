import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import fastnorm as fn
from fastnorm import layers
from fastnorm.gradient_check import eval_numerical_gradient, eval_numerical_gradient_array


def rel_error(x, y):
    return np.max(np.abs(x - y) / np.maximum(1e-8, np.abs(x) + np.abs(y)))


# ---------------------------------------------------------------- affine

def test_affine_forward_hand_computed():
    x = np.array([[[1.0, 2.0], [3.0, 4.0]]])          # (1, 2, 2) -> one row [1, 2, 3, 4]
    w = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [2.0, -1.0]])
    b = np.array([0.5, -0.5])
    out, _ = layers.affine_forward(x, w, b)
    # [1 + 3 + 8 + 0.5, 2 + 3 - 4 - 0.5]
    np.testing.assert_array_equal(out, [[12.5, 0.5]])


def test_affine_backward_numerical():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4, 2, 3))
    w = rng.standard_normal((6, 5))
    b = rng.standard_normal(5)
    dout = rng.standard_normal((4, 5))
    _, cache = layers.affine_forward(x, w, b)
    dx, dw, db = layers.affine_backward(dout, cache)
    assert dx.shape == x.shape
    assert rel_error(dx, eval_numerical_gradient_array(lambda v: layers.affine_forward(v, w, b)[0], x, dout)) < 1e-7
    assert rel_error(dw, eval_numerical_gradient_array(lambda v: layers.affine_forward(x, v, b)[0], w, dout)) < 1e-7
    assert rel_error(db, eval_numerical_gradient_array(lambda v: layers.affine_forward(x, w, v)[0], b, dout)) < 1e-7


def test_affine_shape_mismatch_names_shapes():
    x, w, b = np.zeros((2, 3, 4)), np.zeros((10, 5)), np.zeros(5)
    with pytest.raises(ValueError, match=r"\(2, 3, 4\).*12.*\(10, 5\)"):
        layers.affine_forward(x, w, b)
    with pytest.raises(ValueError, match="b"):
        layers.affine_forward(np.zeros((2, 10)), w, np.zeros(4))


def test_gradient_check_refuses_an_x_it_cannot_perturb():
    f = lambda v: float(np.sum(v * v))  # noqa: E731
    # an int x gave [49999, 150000, 249999] for the gradient [2, 4, 6], without a word
    with pytest.raises(TypeError, match="float numpy array .* got ndarray of dtype int64"):
        eval_numerical_gradient(f, np.array([1, 2, 3]), verbose=False)
    with pytest.raises(TypeError, match="got list"):
        eval_numerical_gradient(f, [1.0, 2.0], verbose=False)
    frozen = np.array([1.0, 2.0])
    frozen.flags.writeable = False
    with pytest.raises(ValueError, match="x must be writeable"):
        eval_numerical_gradient_array(lambda v: 2 * v, frozen, np.ones(2))
    with pytest.raises(ValueError, match=r"h must be finite and in \(0.0, inf\]"):  # h=0 gave NaN
        eval_numerical_gradient(f, np.array([1.0, 2.0]), verbose=False, h=0)


def test_backward_with_a_cache_from_elsewhere_names_it():
    # were "not enough values to unpack", "'list' object has no attribute 'shape'", ...
    x = np.ones((2, 3))
    _, relu_cache = layers.relu_forward(x)
    with pytest.raises(TypeError, match=r"cache must be the \(x, w, b\) returned by affine_forward, got ndarray"):
        layers.affine_backward(np.ones((2, 3)), relu_cache)
    with pytest.raises(TypeError, match=r"affine_forward, got tuple of length 2"):
        layers.affine_backward(np.ones((2, 3)), (x, x))
    with pytest.raises(TypeError, match="the x returned by relu_forward, got list"):
        layers.relu_backward(np.ones(2), [1.0, -1.0])
    with pytest.raises(TypeError, match=r"\(dropout_param, mask\) returned by dropout_forward, got NoneType"):
        layers.dropout_backward(x, None)


def test_affine_on_an_empty_batch():
    # reshape(0, -1) raised "cannot reshape array of size 0 into shape (0,newaxis)"
    w, b = np.ones((6, 5)), np.arange(5.0)
    out, cache = layers.affine_forward(np.zeros((0, 2, 3)), w, b)
    assert out.shape == (0, 5)
    dx, dw, db = layers.affine_backward(np.zeros((0, 5)), cache)
    assert dx.shape == (0, 2, 3)
    np.testing.assert_array_equal(dw, np.zeros((6, 5)))
    np.testing.assert_array_equal(db, np.zeros(5))


# ---------------------------------------------------------------- relu

def test_relu_forward_and_backward():
    x = np.array([[-1.0, 0.0, 2.0], [3.0, -0.5, 0.25]])
    out, cache = layers.relu_forward(x)
    np.testing.assert_array_equal(out, [[0, 0, 2], [3, 0, 0.25]])
    dout = np.array([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    np.testing.assert_array_equal(layers.relu_backward(dout, cache), [[0, 0, 3], [4, 0, 6]])


def test_relu_backward_numerical():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((5, 6)) + 0.05  # keep clear of the kink
    x[np.abs(x) < 1e-3] = 0.5
    dout = rng.standard_normal(x.shape)
    _, cache = layers.relu_forward(x)
    dx_num = eval_numerical_gradient_array(lambda v: layers.relu_forward(v)[0], x, dout)
    assert rel_error(layers.relu_backward(dout, cache), dx_num) < 1e-9


# ---------------------------------------------------------------- dropout

def test_dropout_test_mode_is_identity():
    x = np.arange(12.0).reshape(3, 4)
    out, _ = layers.dropout_forward(x, {"mode": "test", "p": 0.3})
    np.testing.assert_array_equal(out, x)


def test_dropout_train_keeps_fraction_and_scales():
    x = np.ones((500, 400))
    p = 0.3
    out, _ = layers.dropout_forward(x, {"mode": "train", "p": p, "seed": 0})
    kept = out != 0
    assert abs(kept.mean() - p) < 0.01
    np.testing.assert_allclose(out[kept], 1 / p)
    assert abs(out.mean() - 1) < 0.05  # inverted dropout keeps the expectation


def test_dropout_seed_repeatable_and_leaves_global_rng_alone():
    x = np.random.default_rng(2).standard_normal((20, 30))
    np.random.seed(5)
    before = np.random.get_state()[1].copy()
    a, _ = layers.dropout_forward(x, {"mode": "train", "p": 0.5, "seed": 7})
    b, _ = layers.dropout_forward(x, {"mode": "train", "p": 0.5, "seed": 7})
    c, _ = layers.dropout_forward(x, {"mode": "train", "p": 0.5, "seed": 8})
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    np.testing.assert_array_equal(np.random.get_state()[1], before)


def test_dropout_backward_numerical():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((6, 7))
    dout = rng.standard_normal(x.shape)
    param = {"mode": "train", "p": 0.6, "seed": 11}
    _, cache = layers.dropout_forward(x, param)
    dx_num = eval_numerical_gradient_array(lambda v: layers.dropout_forward(v, param)[0], x, dout)
    assert rel_error(layers.dropout_backward(dout, cache), dx_num) < 1e-9


@pytest.mark.parametrize("p", [0, -0.1, 1.5, None, True])
def test_dropout_bad_keep_probability(p):
    with pytest.raises(ValueError, match="keep probability"):
        layers.dropout_forward(np.ones((2, 2)), {"mode": "train", "p": p})


@pytest.mark.parametrize("seed", [-1, 1.5, "abc", True])
def test_dropout_bad_seed_is_named(seed):
    # were NumPy's SeedSequence messages ("expected non-negative integer") without the key
    with pytest.raises(ValueError, match=r"dropout_param\['seed'\] must be None or a non-negative integer"):
        layers.dropout_forward(np.ones((2, 2)), {"mode": "train", "p": 0.5, "seed": seed})


def test_dropout_bad_mode():
    with pytest.raises(ValueError, match="mode"):
        layers.dropout_forward(np.ones((2, 2)), {"mode": "eval", "p": 0.5})


# ---------------------------------------------------------------- softmax

def test_softmax_loss_hand_computed():
    # probabilities [1/4, 3/4]: loss of label 1 is -log(3/4); dx = (p - onehot) / N
    x = np.array([[0.0, np.log(3.0)]])
    loss, dx = layers.softmax_loss(x, np.array([1]))
    assert loss == pytest.approx(-np.log(0.75), rel=1e-15)
    np.testing.assert_allclose(dx, [[0.25, -0.25]], rtol=1e-14)


def test_softmax_loss_uniform_scores_is_log_c():
    loss, _ = layers.softmax_loss(np.full((7, 10), 3.5), np.arange(7))
    assert loss == pytest.approx(np.log(10), rel=1e-14)


def test_softmax_loss_large_scores_no_overflow():
    x = np.array([[1000.0, 0.0, -1000.0], [5000.0, 5001.0, 4999.0]])
    loss, dx = layers.softmax_loss(x, np.array([2, 1]))  # first row: log-prob -2000
    assert np.isfinite(loss) and np.all(np.isfinite(dx))
    assert loss == pytest.approx((2000.0 + np.log1p(np.exp(-1) + np.exp(-2))) / 2, rel=1e-12)


def test_softmax_loss_numerical_gradient():
    rng = np.random.default_rng(4)
    x = rng.standard_normal((9, 6))
    y = rng.integers(6, size=9)
    dx = layers.softmax_loss(x, y)[1]
    dx_num = eval_numerical_gradient(lambda v: layers.softmax_loss(v, y)[0], x, verbose=False)
    assert rel_error(dx, dx_num) < 1e-7


def test_softmax_loss_bad_labels():
    x = np.zeros((3, 4))
    with pytest.raises(ValueError, match=r"outside \[0, 4\).*max 4"):
        layers.softmax_loss(x, np.array([0, 1, 4]))
    with pytest.raises(ValueError, match=r"\(3,\)"):
        layers.softmax_loss(x, np.array([0, 1]))
    with pytest.raises(TypeError, match="integer"):
        layers.softmax_loss(x, np.array([0.5, 1, 2]))
    # a whole float beyond int64 was cast first (a RuntimeWarning) and reported as min -2**63
    with pytest.raises(ValueError, match=r"outside \[0, 4\): min 0.0, max 1e\+300"):
        layers.softmax_loss(x, np.array([0.0, 1.0, 1e300]))
    loss, _ = layers.softmax_loss(x, np.array([0.0, 1.0, 3.0]))  # whole floats are labels
    assert loss == pytest.approx(np.log(4))


@settings(max_examples=30, deadline=None)
@given(n=st.integers(1, 6), c=st.integers(2, 8), seed=st.integers(0, 2**31 - 1),
       scale=st.floats(0.01, 100.0))
def test_softmax_properties(n, c, seed, scale):
    rng = np.random.default_rng(seed)
    x = scale * rng.standard_normal((n, c))
    y = rng.integers(c, size=n)
    loss, dx = layers.softmax_loss(x, y)
    assert loss >= 0
    np.testing.assert_allclose(dx.sum(axis=1), 0, atol=1e-12)   # probabilities minus a one-hot
    assert np.all(dx[np.arange(n), y] <= 0)


# ---------------------------------------------------------------- dtype and re-exports

@settings(max_examples=20, deadline=None)
@given(dtype=st.sampled_from([np.float32, np.float64]), n=st.integers(1, 5), d=st.integers(1, 6),
       m=st.integers(2, 5))
def test_dtype_preserved_through_layers(dtype, n, d, m):
    rng = np.random.default_rng(n * 100 + d * 10 + m)
    x = rng.standard_normal((n, d)).astype(dtype)
    w = rng.standard_normal((d, m)).astype(dtype)
    b = np.zeros(m, dtype)
    h, c_aff = layers.affine_forward(x, w, b)
    r, c_relu = layers.relu_forward(h)
    o, c_drop = layers.dropout_forward(r, {"mode": "train", "p": 0.5, "seed": 0})
    loss, dscores = layers.softmax_loss(o, np.zeros(n, dtype=int))
    assert {h.dtype, r.dtype, o.dtype, dscores.dtype} == {np.dtype(dtype)}
    dr = layers.dropout_backward(dscores, c_drop)
    dh = layers.relu_backward(dr, c_relu)
    dx, dw, db = layers.affine_backward(dh, c_aff)
    assert {dr.dtype, dh.dtype, dx.dtype, dw.dtype, db.dtype} == {np.dtype(dtype)}


def test_norms_reexported_are_the_compiled_ones():
    assert layers.batchnorm_forward is fn.batchnorm_forward
    assert layers.batchnorm_backward is fn.batchnorm_backward
    assert layers.layernorm_forward is fn.layernorm_forward
    assert layers.layernorm_backward is fn.layernorm_backward


def test_inputs_not_modified():
    rng = np.random.default_rng(6)
    x = rng.standard_normal((3, 4))
    w = rng.standard_normal((4, 2))
    b = rng.standard_normal(2)
    copies = [a.copy() for a in (x, w, b)]
    out, cache = layers.affine_forward(x, w, b)
    layers.affine_backward(np.ones_like(out), cache)
    layers.relu_forward(x)
    layers.dropout_forward(x, {"mode": "train", "p": 0.5, "seed": 1})
    layers.softmax_loss(x, np.array([0, 1, 3]))
    for a, c in zip((x, w, b), copies):
        np.testing.assert_array_equal(a, c)
