"""ConvNet: gradients, initialisation, the two kernel sets, errors, and training with the Solver."""

import numpy as np
import pytest

import fastnorm as fn
from fastnorm import ConvNet, Solver
from fastnorm.gradient_check import eval_numerical_gradient

from conftest import assert_loss_checks_once, rel_error

NORMS = [None, "spatial_batchnorm", "groupnorm"]


def groups(normalization):
    return 2 if normalization == "groupnorm" else None


def small_net(normalization, kernels="fast", dtype=np.float64, **kwargs):
    settings = dict(input_dim=(2, 8, 8), num_filters=[4, 6], filter_size=3, hidden_dim=10, num_classes=5,
                    normalization=normalization, G=groups(normalization), weight_scale=0.3, dtype=dtype,
                    kernels=kernels)
    return ConvNet(**{**settings, **kwargs})


def batch(n=6, shape=(2, 8, 8), classes=5, seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, *shape)), rng.integers(classes, size=n)


@pytest.fixture(scope="module")
def digits():
    return fn.data.get_digits_data()


# ---------------------------------------------------------------- gradients

def scaled_error(num, grad):
    """Error relative to the array's largest gradient: elementwise relative errors of
    entries near 1e-5 are bound by the float64 rounding of the loss itself."""
    return np.max(np.abs(num - grad)) / np.max(np.abs(num) + np.abs(grad))


@pytest.mark.parametrize("normalization", NORMS)
def test_gradient_check_whole_model(normalization):
    X, y = batch()
    np.random.seed(3)
    model = small_net(normalization, reg=0.1)
    loss, grads = model.loss(X, y)
    assert sorted(grads) == sorted(model.params)
    for name in sorted(grads):
        num = eval_numerical_gradient(lambda _: model.loss(X, y)[0], model.params[name], verbose=False)
        assert grads[name].shape == model.params[name].shape
        if normalization == "spatial_batchnorm" and name in ("b1", "b2", "b3"):
            # batch norm subtracts a bias before it again: the gradient is zero
            assert np.max(np.abs(grads[name])) < 1e-12 and np.max(np.abs(num)) < 1e-9, name
        else:
            assert scaled_error(num, grads[name]) < 1e-6, name


@pytest.mark.parametrize("normalization", NORMS)
def test_fast_and_reference_agree(normalization):
    X, y = batch(8)
    models = []
    for kernels in ("fast", "reference"):
        np.random.seed(5)
        models.append(small_net(normalization, kernels))
    (loss_f, grads_f), (loss_r, grads_r) = (m.loss(X, y) for m in models)
    assert loss_f == pytest.approx(loss_r, rel=1e-12)
    for name in grads_f:
        np.testing.assert_allclose(grads_f[name], grads_r[name], rtol=1e-9, atol=1e-12, err_msg=name)
    np.testing.assert_allclose(models[0].loss(X), models[1].loss(X), rtol=1e-10, atol=1e-12)
    for p_f, p_r in zip(models[0].bn_params, models[1].bn_params):
        for key in ("running_mean", "running_var"):
            if key in p_f:
                np.testing.assert_allclose(p_f[key], p_r[key], rtol=1e-12, atol=1e-14)


# ---------------------------------------------------------------- construction

def test_initialisation_order_shapes_and_dtype():
    np.random.seed(7)
    model = ConvNet(input_dim=(3, 8, 8), num_filters=[4, 6], filter_size=5, hidden_dim=9, num_classes=3,
                    weight_scale=0.01, normalization="groupnorm", G=2)
    np.random.seed(7)
    expected = [0.01 * np.random.randn(*s) for s in [(4, 3, 5, 5), (6, 4, 5, 5), (6 * 2 * 2, 9), (9, 3)]]
    for i, w in enumerate(expected, start=1):
        assert model.params[f"W{i}"].dtype == np.float32
        np.testing.assert_array_equal(model.params[f"W{i}"], w.astype(np.float32))
        np.testing.assert_array_equal(model.params[f"b{i}"], np.zeros(w.shape[0] if i <= 2 else w.shape[1]))
    assert model.params["gamma1"].shape == (1, 4, 1, 1) and model.params["gamma2"].shape == (1, 6, 1, 1)
    assert model.params["gamma3"].shape == (9,) and np.all(model.params["beta3"] == 0)
    assert "gamma4" not in model.params and len(model.bn_params) == 3
    assert model.input_dim == 3 * 8 * 8 and model.input_shape == (3, 8, 8)
    assert model.conv_param == {"stride": 1, "pad": 2}
    bn = ConvNet(input_dim=(3, 8, 8), num_filters=4, normalization="spatial_batchnorm")
    assert bn.params["gamma1"].shape == (4,) and bn.num_layers == 3
    assert sorted(bn.params) == ["W1", "W2", "W3", "b1", "b2", "b3", "beta1", "beta2", "gamma1", "gamma2"]


def test_seed_gives_the_seeded_global_draws_and_leaves_the_generator():
    np.random.seed(11)
    global_drawn = ConvNet(input_dim=(1, 8, 8), num_filters=3)
    np.random.seed(0)
    state = np.random.get_state()[1].copy()
    seeded = ConvNet(input_dim=(1, 8, 8), num_filters=3, seed=11)
    np.testing.assert_array_equal(np.random.get_state()[1], state)
    for name in global_drawn.params:
        np.testing.assert_array_equal(seeded.params[name], global_drawn.params[name])


@pytest.mark.parametrize("kwargs, error, message", [
    (dict(input_dim=(3, 32)), ValueError, r"input_dim must have 3 entries"),
    (dict(input_dim=(3, 0, 32)), ValueError, r"input_dim\[1\] must be a positive integer"),
    (dict(input_dim=3072), TypeError, r"input_dim must be a sequence"),
    (dict(input_dim=(1, 8, 8), num_filters=[4, 4, 4, 4]), ValueError,
     r"\(1, 8, 8\) with 4 stages: the 2x2 pool of stage 4 gets H x W = 1 x 1"),
    (dict(input_dim=(1, 6, 8), num_filters=[4, 4]), ValueError, r"stage 2 gets H x W = 3 x 4"),
    (dict(num_filters=[]), ValueError, r"num_filters must not be empty"),
    (dict(num_filters=[8, 0]), ValueError, r"num_filters\[1\] must be a positive integer"),
    (dict(filter_size=4), ValueError, r"filter_size must be odd"),
    (dict(normalization="batchnorm"), ValueError, r"normalization must be one of"),
    (dict(normalization="groupnorm"), ValueError, r"needs G"),
    (dict(normalization="groupnorm", G=3, num_filters=[6, 8]), ValueError,
     r"G=3 must divide every filter count; num_filters \[6, 8\] has \[8\]"),
    (dict(normalization="spatial_batchnorm", G=2), ValueError, r"G applies only to normalization='groupnorm'"),
    (dict(G=2), ValueError, r"G applies only"),
    (dict(kernels="gpu"), ValueError, r"kernels must be one of"),
    (dict(dtype=np.float16), TypeError, r"dtype must be float32 or float64"),
    (dict(dtype=None), TypeError, r"dtype must be float32 or float64"),
    (dict(reg=-1), ValueError, r"reg must be finite"),
    (dict(weight_scale=float("nan")), ValueError, r"weight_scale must be finite"),
    (dict(seed=-1), ValueError, r"seed must be None or an integer"),
    (dict(hidden_dim=0), ValueError, r"hidden_dim must be a positive integer"),
])
def test_bad_constructor_arguments(kwargs, error, message):
    with pytest.raises(error, match=message):
        ConvNet(**kwargs)


def test_bad_loss_inputs_name_the_shapes():
    model = ConvNet(input_dim=(3, 4, 4), num_filters=2, hidden_dim=3)
    with pytest.raises(ValueError, match=r"\(N, \*\(3, 4, 4\)\).*\(2, 4, 4, 3\).*transpose\(0, 3, 1, 2\)"):
        model.loss(np.zeros((2, 4, 4, 3)))
    with pytest.raises(ValueError, match=r"got shape \(2, 48\); reshape it"):
        model.loss(np.zeros((2, 48)))
    with pytest.raises(ValueError, match=r"y must have shape \(2,\)"):
        model.loss(np.zeros((2, 3, 4, 4)), np.zeros(3, dtype=int))
    with pytest.raises(ValueError, match=r"labels outside \[0, 10\)"):
        model.loss(np.zeros((2, 3, 4, 4)), np.array([0, 10]))


# ---------------------------------------------------------------- behaviour

def test_small_weights_give_chance_loss_and_reg_adds_its_term():
    X, y = batch(10, (3, 8, 8), 10)
    np.random.seed(0)
    model = ConvNet(input_dim=(3, 8, 8), num_filters=4, hidden_dim=20, weight_scale=1e-4, dtype=np.float64)
    loss, _ = model.loss(X, y)
    assert loss == pytest.approx(np.log(10), abs=1e-3)
    model.reg = 0.5
    weights = sum(float(np.sum(model.params[f"W{i}"] ** 2)) for i in range(1, 4))
    assert model.loss(X, y)[0] == pytest.approx(loss + 0.25 * weights, rel=1e-12)


@pytest.mark.parametrize("normalization", NORMS)
def test_float32_model_stays_float32(normalization):
    X, y = batch()
    model = small_net(normalization, dtype=np.float32)
    loss, grads = model.loss(X, y)
    assert isinstance(loss, float) and np.isfinite(loss)
    for name, g in grads.items():
        assert g.dtype == np.float32 and g.shape == model.params[name].shape, name
    assert model.loss(X).dtype == np.float32


def test_test_mode_uses_running_statistics():
    X, y = batch(8)
    model = small_net("spatial_batchnorm")
    model.loss(X, y)
    assert all("running_mean" in p for p in model.bn_params)
    assert model.bn_params[0]["running_mean"].shape == (4,) and model.bn_params[2]["running_var"].shape == (10,)
    # test mode: a sample's scores do not depend on the rest of the batch
    np.testing.assert_allclose(model.loss(X)[:2], model.loss(X[:2]), rtol=1e-12)
    assert all(p["mode"] == "test" for p in model.bn_params)


def test_bn_params_are_independent_dicts():
    model = small_net("groupnorm")
    assert len(model.bn_params) == 3 and len({id(p) for p in model.bn_params}) == 3


def test_exported_from_package():
    assert fn.ConvNet is ConvNet
    for name in ("conv_forward", "conv_backward", "max_pool_forward", "max_pool_backward",
                 "conv_norm_relu_pool_forward", "conv_norm_relu_pool_backward"):
        assert name in fn.layers.__all__ and callable(getattr(fn.layers, name))


@pytest.mark.parametrize("normalization", NORMS)
def test_loss_checks_x_and_y_once(normalization, monkeypatch):
    """check_inputs is the only check of X and y in a loss call: the layers the model
    calls on its own arrays (convolutions, pools, sandwiches, affine, relu, softmax)
    do not re-check them, and the loss and gradients are those of the checked path."""
    from fastnorm import conv_layers, convnet, layers

    model = small_net(normalization)
    X, y = batch()
    assert_loss_checks_once(model, X, y, convnet, [layers, conv_layers], monkeypatch)
    with pytest.raises(pytest.fail.Exception, match="re-checked"):
        conv_layers.conv_forward(X, model.params["W1"], model.params["b1"], model.conv_param)


def test_checked_sandwich_matches_the_layers_it_is_made_of():
    """The public sandwich (checked) gives what conv, norm, pool and relu give in turn."""
    rng = np.random.default_rng(4)
    x, w, b = rng.standard_normal((3, 2, 6, 6)), rng.standard_normal((4, 2, 3, 3)), rng.standard_normal(4)
    gamma, beta = rng.standard_normal((1, 4, 1, 1)), rng.standard_normal((1, 4, 1, 1))
    conv, pool = {"stride": 1, "pad": 1}, {"pool_height": 2, "pool_width": 2, "stride": 2}
    out, cache = fn.layers.conv_norm_relu_pool_forward(x, w, b, conv, pool, norm="groupnorm", gamma=gamma,
                                                        beta=beta, norm_param={}, G=2)
    h, c_conv = fn.layers.conv_forward(x, w, b, conv)
    h, c_norm = fn.spatial_groupnorm_forward(h, gamma, beta, 2, {})
    h, c_relu = fn.layers.relu_forward(h)
    expected, c_pool = fn.layers.max_pool_forward(h, pool)
    np.testing.assert_allclose(out, expected, rtol=0, atol=0)
    dout = rng.standard_normal(out.shape)
    dx, dw, db, dgamma, dbeta = fn.layers.conv_norm_relu_pool_backward(dout, cache)
    dh = fn.layers.relu_backward(fn.layers.max_pool_backward(dout, c_pool), c_relu)
    dh, dg, dbt = fn.spatial_groupnorm_backward(dh, c_norm)
    ex, ew, eb = fn.layers.conv_backward(dh, c_conv)
    for got, want in ((dx, ex), (dw, ew), (db, eb), (dgamma, dg), (dbeta, dbt)):
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match=r"dout must have the layer's output shape \(3, 4, 3, 3\)"):
        fn.layers.conv_norm_relu_pool_backward(dout[:, :, :2], cache)


# ---------------------------------------------------------------- training

@pytest.mark.parametrize("normalization", NORMS)
def test_learns_digits_to_95_percent(digits, normalization):
    np.random.seed(0)
    model = ConvNet(input_dim=(1, 8, 8), num_filters=8, hidden_dim=64, weight_scale=0.1,
                    normalization=normalization, G=groups(normalization))
    solver = Solver(model, digits, update_rule="adam", optim_config={"learning_rate": 3e-3},
                    num_epochs=8, batch_size=50, verbose=False)
    solver.train()
    assert solver.best_val_acc >= 0.95
    assert solver.check_accuracy(digits["X_val"], digits["y_val"]) == pytest.approx(solver.best_val_acc)


def test_checkpoint_resume_is_bit_for_bit(digits, tmp_path):
    data = {k: v[:200] for k, v in digits.items()}

    def run(name):
        np.random.seed(2)
        model = ConvNet(input_dim=(1, 8, 8), num_filters=4, hidden_dim=16, weight_scale=0.1,
                        normalization="spatial_batchnorm")
        return Solver(model, data, update_rule="adam", num_epochs=3, batch_size=50, verbose=False,
                      checkpoint_name=str(tmp_path / name))

    full = run("a")
    full.train()
    np.random.seed(99)
    resumed = Solver.from_checkpoint(tmp_path / "a_epoch_1.pkl", data, checkpoint_name=str(tmp_path / "b"))
    resumed.train()
    assert resumed.loss_history == full.loss_history
    for name in full.model.params:
        np.testing.assert_array_equal(resumed.model.params[name], full.model.params[name])
    for p_full, p_res in zip(full.model.bn_params, resumed.model.bn_params):
        np.testing.assert_array_equal(p_full["running_mean"], p_res["running_mean"])


def test_checkpoint_of_other_groups_is_refused(digits, tmp_path):
    """Group norm's G changes no parameter shape: the architecture check compares it."""
    data = {k: v[:100] for k, v in digits.items()}

    def solver(G, **kwargs):
        model = ConvNet(input_dim=(1, 8, 8), num_filters=4, hidden_dim=8, normalization="groupnorm", G=G)
        return Solver(model, data, num_epochs=1, batch_size=50, verbose=False, **kwargs)

    solver(2, checkpoint_name=str(tmp_path / "g2")).train()
    with pytest.raises(ValueError, match="the checkpoint's model has G 2, this model has G 4"):
        solver(4).restore(str(tmp_path / "g2_epoch_1.pkl"))
    solver(2).restore(str(tmp_path / "g2_epoch_1.pkl"))  # the same G still loads


# ---------------------------------------------------------------- against torch

@pytest.mark.parametrize("normalization", NORMS)
def test_loss_and_gradients_match_torch(normalization):
    torch = pytest.importorskip("torch")
    from fastnorm.benchmarks.convnet_step import torch_grads, torch_twin

    X, y = batch(8)
    np.random.seed(4)
    model = small_net(normalization)
    loss, grads = model.loss(X, y)
    net = torch_twin(model)
    t_loss = torch.nn.functional.cross_entropy(net(torch.from_numpy(X)), torch.from_numpy(y))
    t_loss.backward()
    assert t_loss.item() == pytest.approx(loss, rel=1e-12)
    expected = torch_grads(net, model)
    assert sorted(expected) == sorted(grads)
    for name, g in expected.items():
        np.testing.assert_allclose(grads[name], g, rtol=1e-9, atol=1e-12, err_msg=name)


def test_defaults_are_a_cifar10_sized_net_at_chance():
    # the notebook's sanity check: with tiny weights the loss is log(10)
    X, y = batch(4, (3, 32, 32), 10)
    np.random.seed(0)
    model = ConvNet()
    assert {k: v.shape for k, v in model.params.items() if k.startswith("W")} == {
        "W1": (32, 3, 3, 3), "W2": (32 * 16 * 16, 100), "W3": (100, 10)}
    loss, grads = model.loss(X, y)
    assert loss == pytest.approx(np.log(10), abs=1e-3)
    assert model.loss(X).shape == (4, 10) and not model.bn_params
