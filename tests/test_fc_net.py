import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import fastnorm as fn
from fastnorm import FullyConnectedNet
from fastnorm.gradient_check import eval_numerical_gradient

from conftest import assert_loss_checks_once

NORMS = [None, "batchnorm", "layernorm"]
KERNELS = ["fast", "reference"]


def rel_error(x, y, floor=1e-8):
    return np.max(np.abs(x - y) / np.maximum(floor, np.abs(x) + np.abs(y)))


def notebook_cell():
    """The notebook's gradient-check setup: np.random.seed(231), then X and y."""
    np.random.seed(231)
    N, D, C = 2, 15, 10
    X = np.random.randn(N, D)
    y = np.random.randint(C, size=(N,))
    return X, y


def notebook_model(reg, normalization=None, kernels="fast"):
    return FullyConnectedNet([20, 30], input_dim=15, num_classes=10, reg=reg, weight_scale=5e-2,
                             dtype=np.float64, normalization=normalization, kernels=kernels)


# ---------------------------------------------------------------- the notebook's numbers

@pytest.mark.parametrize("kernels", KERNELS)
def test_initial_losses_without_normalization(kernels):
    # the notebook builds the reg=0 model, then the reg=3.14 one, from the same seeded stream
    X, y = notebook_cell()
    first = notebook_model(0, kernels=kernels).loss(X, y)[0]
    second = notebook_model(3.14, kernels=kernels).loss(X, y)[0]
    assert first == pytest.approx(2.300479089768492, rel=1e-15, abs=0)
    assert second == pytest.approx(7.052114776533016, rel=1e-15, abs=0)


@pytest.mark.parametrize("kernels", KERNELS)
@pytest.mark.parametrize("ddof, expected", [(0, 2.2611955101340957), (1, 2.2621133407844862)])
def test_initial_loss_batchnorm(kernels, ddof, expected):
    X, y = notebook_cell()
    model = notebook_model(0, "batchnorm", kernels)
    for bn_param in model.bn_params:
        bn_param["ddof"] = ddof
    assert model.loss(X, y)[0] == pytest.approx(expected, rel=1e-15, abs=0)


@pytest.mark.parametrize("normalization", [None, "batchnorm"])  # layernorm: the check below
def test_notebook_gradient_check(normalization):
    # N = 2 makes batch norm ill-conditioned for finite differences (the notebook
    # itself expects W errors up to 1e-4), so W gets a looser bound than the rest
    X, y = notebook_cell()
    for reg in (0, 3.14):
        model = notebook_model(reg, normalization)
        _, grads = model.loss(X, y)
        assert sorted(grads) == sorted(model.params)
        for name in sorted(grads):
            num = eval_numerical_gradient(lambda _: model.loss(X, y)[0], model.params[name], verbose=False)
            if name.startswith("b") and not name.startswith("beta"):
                assert np.max(np.abs(num - grads[name])) < 1e-9, name
            else:
                assert rel_error(num, grads[name]) < (1e-3 if name.startswith("W") else 1e-5), name


@pytest.mark.parametrize("kernels", KERNELS)
@pytest.mark.parametrize("normalization", NORMS)
@pytest.mark.parametrize("keep", [1, 0.6])
def test_gradient_check_well_conditioned(normalization, kernels, keep):
    rng = np.random.default_rng(0)
    X = rng.standard_normal((8, 2, 3))
    y = rng.integers(4, size=8)
    np.random.seed(1)
    model = FullyConnectedNet([7, 5], input_dim=6, num_classes=4, reg=0.3, weight_scale=0.5,
                              dtype=np.float64, normalization=normalization, kernels=kernels,
                              dropout_keep_ratio=keep, seed=3)
    _, grads = model.loss(X, y)
    for name in sorted(grads):
        num = eval_numerical_gradient(lambda _: model.loss(X, y)[0], model.params[name], verbose=False)
        assert rel_error(num, grads[name], floor=1e-6) < 1e-5, name


@pytest.mark.parametrize("normalization", ["batchnorm", "layernorm"])
def test_fast_and_reference_agree(normalization):
    rng = np.random.default_rng(5)
    X = rng.standard_normal((64, 30))
    y = rng.integers(10, size=64)
    np.random.seed(7)
    fast = FullyConnectedNet([40, 20], input_dim=30, reg=0.1, weight_scale=0.1, dtype=np.float64,
                             normalization=normalization)
    np.random.seed(7)
    ref = FullyConnectedNet([40, 20], input_dim=30, reg=0.1, weight_scale=0.1, dtype=np.float64,
                            normalization=normalization, kernels="reference")
    loss_f, grads_f = fast.loss(X, y)
    loss_r, grads_r = ref.loss(X, y)
    assert loss_f == pytest.approx(loss_r, rel=1e-13)
    for name in grads_f:
        np.testing.assert_allclose(grads_f[name], grads_r[name], rtol=1e-10, atol=1e-13, err_msg=name)
    for pf, pr in zip(fast.bn_params, ref.bn_params):
        for key in set(pf) & {"running_mean", "running_var"}:
            np.testing.assert_allclose(pf[key], pr[key], rtol=1e-12)
    np.testing.assert_allclose(fast.loss(X), ref.loss(X), rtol=1e-10, atol=1e-13)


@settings(max_examples=25, deadline=None)
@given(hidden=st.lists(st.integers(1, 9), max_size=3), n=st.integers(2, 7), d=st.integers(1, 8),
       c=st.integers(2, 6), normalization=st.sampled_from(NORMS), keep=st.sampled_from([1, 0.7]),
       dtype=st.sampled_from([np.float32, np.float64]), seed=st.integers(0, 1000))
def test_any_architecture_fast_matches_reference(hidden, n, d, c, normalization, keep, dtype, seed):
    rng = np.random.default_rng(seed)
    X, y = rng.standard_normal((n, d)), rng.integers(c, size=n)
    models = []
    for kernels in KERNELS:
        np.random.seed(seed)
        models.append(FullyConnectedNet(hidden, input_dim=d, num_classes=c, normalization=normalization,
                                        dropout_keep_ratio=keep, seed=seed, reg=0.1, weight_scale=0.3,
                                        dtype=dtype, kernels=kernels))
    (loss_f, grads_f), (loss_r, grads_r) = (m.loss(X, y) for m in models)
    tol = 1e-4 if dtype == np.float32 else 1e-10
    assert np.isfinite(loss_f) and loss_f == pytest.approx(loss_r, rel=tol)
    assert sorted(grads_f) == sorted(models[0].params)
    for name, g in grads_f.items():
        assert g.shape == models[0].params[name].shape and g.dtype == np.dtype(dtype)
        np.testing.assert_allclose(g, grads_r[name], rtol=tol * 10, atol=tol, err_msg=name)


# ---------------------------------------------------------------- construction

def test_initialisation_order_and_dtype():
    np.random.seed(3)
    model = FullyConnectedNet([4, 3], input_dim=5, num_classes=2, normalization="batchnorm",
                              weight_scale=0.2, dtype=np.float32)
    np.random.seed(3)
    W1 = 0.2 * np.random.randn(5, 4)
    W2 = 0.2 * np.random.randn(4, 3)
    W3 = 0.2 * np.random.randn(3, 2)
    assert sorted(model.params) == ["W1", "W2", "W3", "b1", "b2", "b3", "beta1", "beta2", "gamma1", "gamma2"]
    for name, expected in (("W1", W1), ("W2", W2), ("W3", W3)):
        np.testing.assert_array_equal(model.params[name], expected.astype(np.float32))
    assert all(p.dtype == np.float32 for p in model.params.values())
    np.testing.assert_array_equal(model.params["gamma2"], np.ones(3))
    np.testing.assert_array_equal(model.params["beta1"], np.zeros(4))
    np.testing.assert_array_equal(model.params["b3"], np.zeros(2))


def test_no_hidden_layers_is_softmax_classifier():
    model = FullyConnectedNet([], input_dim=4, num_classes=3, normalization="batchnorm")
    assert sorted(model.params) == ["W1", "b1"] and model.bn_params == []
    loss, grads = model.loss(np.ones((2, 4)), np.array([0, 2]))
    assert grads["W1"].shape == (4, 3)


def test_bn_params_are_independent_dicts():
    model = FullyConnectedNet([6, 5, 4], input_dim=3, normalization="batchnorm", dtype=np.float64)
    assert len(model.bn_params) == 3
    assert len({id(p) for p in model.bn_params}) == 3
    model.loss(np.random.default_rng(0).standard_normal((10, 3)), np.arange(10) % 10)
    means = [p["running_mean"] for p in model.bn_params]
    assert [m.shape for m in means] == [(6,), (5,), (4,)]


# ---------------------------------------------------------------- modes and dtypes

def test_test_mode_uses_running_stats_and_returns_scores():
    rng = np.random.default_rng(1)
    X = rng.standard_normal((20, 6)) * 3 + 1
    y = rng.integers(4, size=20)
    model = FullyConnectedNet([8], input_dim=6, num_classes=4, normalization="batchnorm",
                              dropout_keep_ratio=0.5, dtype=np.float64, weight_scale=0.3)
    model.loss(X, y)
    scores = model.loss(X)
    assert scores.shape == (20, 4)
    assert model.bn_params[0]["mode"] == "test"
    # by hand: test-mode batch norm with the running stats, no dropout
    p, bn = model.params, model.bn_params[0]
    h = X @ p["W1"] + p["b1"]
    h = (h - bn["running_mean"]) / np.sqrt(bn["running_var"] + 1e-5) * p["gamma1"] + p["beta1"]
    expected = np.maximum(h, 0) @ p["W2"] + p["b2"]
    np.testing.assert_allclose(scores, expected, rtol=1e-12, atol=1e-12)
    np.testing.assert_array_equal(model.loss(X), scores)  # test mode is deterministic


@pytest.mark.parametrize("normalization", NORMS)
def test_float32_model_stays_float32(normalization):
    model = FullyConnectedNet([10, 7], input_dim=12, normalization=normalization, dtype=np.float32,
                              dropout_keep_ratio=0.8)
    X = np.random.default_rng(2).standard_normal((6, 3, 4))  # float64 in, cast once
    loss, grads = model.loss(X, np.arange(6))
    assert isinstance(loss, float)
    assert all(grads[k].dtype == np.float32 and grads[k].shape == model.params[k].shape for k in grads)
    assert model.loss(X).dtype == np.float32
    for bn in model.bn_params:
        assert all(bn[k].dtype == np.float32 for k in ("running_mean", "running_var") if k in bn)


def test_dropout_seed_repeats_masks_without_seed_not():
    rng = np.random.default_rng(3)
    X, y = rng.standard_normal((30, 10)), rng.integers(10, size=30)
    seeded = FullyConnectedNet([50], input_dim=10, dropout_keep_ratio=0.5, seed=1, dtype=np.float64)
    assert seeded.loss(X, y)[0] == seeded.loss(X, y)[0]
    unseeded = FullyConnectedNet([50], input_dim=10, dropout_keep_ratio=0.5, dtype=np.float64)
    assert unseeded.loss(X, y)[0] != unseeded.loss(X, y)[0]


def test_regularization_adds_half_reg_sum_of_squared_weights():
    X, y = np.random.default_rng(4).standard_normal((5, 4)), np.array([0, 1, 2, 1, 0])
    np.random.seed(0)
    plain = FullyConnectedNet([3], input_dim=4, num_classes=3, dtype=np.float64, normalization="layernorm")
    np.random.seed(0)
    reg = FullyConnectedNet([3], input_dim=4, num_classes=3, dtype=np.float64, normalization="layernorm", reg=2.5)
    penalty = 0.5 * 2.5 * (np.sum(plain.params["W1"] ** 2) + np.sum(plain.params["W2"] ** 2))
    (l0, g0), (l1, g1) = plain.loss(X, y), reg.loss(X, y)
    assert l1 - l0 == pytest.approx(penalty, rel=1e-12)
    np.testing.assert_allclose(g1["W2"] - g0["W2"], 2.5 * plain.params["W2"], rtol=1e-12)
    np.testing.assert_array_equal(g1["gamma1"], g0["gamma1"])  # W only


# ---------------------------------------------------------------- bad input

def test_bad_constructor_arguments():
    with pytest.raises(ValueError, match="batchnorm.*layernorm.*groupnorm"):
        FullyConnectedNet([5], normalization="groupnorm")
    with pytest.raises(ValueError, match="kernels"):
        FullyConnectedNet([5], kernels="gpu")
    with pytest.raises(ValueError, match=r"hidden_dims\[1\]"):
        FullyConnectedNet([5, 0])
    with pytest.raises(ValueError, match="dropout_keep_ratio"):
        FullyConnectedNet([5], dropout_keep_ratio=0)
    with pytest.raises(TypeError, match="dtype"):
        FullyConnectedNet([5], dtype=np.int32)
    # None was float64 silently, "banana" NumPy's "data type 'banana' not understood"
    for bad in (None, "banana"):
        with pytest.raises(TypeError, match=f"dtype must be float32 or float64, got {bad!r}"):
            FullyConnectedNet([5], dtype=bad)
    with pytest.raises(ValueError, match="reg"):
        FullyConnectedNet([5], reg=-1)
    with pytest.raises(ValueError, match="reg must be finite"):  # was an unnamed OverflowError
        FullyConnectedNet([5], reg=10**400)


def test_bad_loss_inputs_name_shapes_and_change_nothing():
    model = FullyConnectedNet([5], input_dim=6, num_classes=3, normalization="batchnorm")
    before = {k: v.copy() for k, v in model.params.items()}
    X = np.ones((4, 7))
    with pytest.raises(ValueError, match=r"\(4, 7\).*7 values.*input_dim is 6"):
        model.loss(X, np.zeros(4, int))
    with pytest.raises(ValueError, match=r"outside \[0, 3\)"):
        model.loss(np.ones((4, 6)), np.array([0, 1, 2, 3]))
    with pytest.raises(ValueError, match=r"\(4,\)"):
        model.loss(np.ones((4, 6)), np.array([0, 1]))
    assert all(np.array_equal(before[k], model.params[k]) for k in before)
    assert "running_mean" not in model.bn_params[0]


def test_exported_from_package():
    assert fn.FullyConnectedNet is FullyConnectedNet


@pytest.mark.parametrize("normalization", NORMS)
def test_loss_checks_x_and_y_once(normalization, monkeypatch):
    """check_inputs is the only check of X and y in a loss call: the layers the model
    calls on its own arrays do not convert or re-check them (their public forms do)."""
    from fastnorm import fc_net, layers

    model = FullyConnectedNet([7, 6], input_dim=12, num_classes=4, normalization=normalization,
                              dropout_keep_ratio=0.5, dtype=np.float64, seed=1)
    X = np.random.default_rng(2).standard_normal((5, 3, 4))
    y = np.array([0, 1, 2, 3, 1])
    assert_loss_checks_once(model, X, y, fc_net, [layers], monkeypatch)
    with pytest.raises(pytest.fail.Exception, match="re-checked"):
        layers.affine_forward(X, model.params["W1"], model.params["b1"])  # the public layer checks
