"""The notebook's finite-difference helpers."""

import numpy as np

from fastnorm.gradient_check import eval_numerical_gradient, eval_numerical_gradient_array


def test_scalar_gradient_matches_calculus_and_restores_x(capsys):
    x = np.array([[1.0, -2.0], [0.5, 3.0]])
    before = x.copy()
    grad = eval_numerical_gradient(lambda v: np.sum(v ** 3), x, verbose=True)
    np.testing.assert_allclose(grad, 3 * before ** 2, rtol=1e-8)
    np.testing.assert_array_equal(x, before)
    printed = capsys.readouterr().out.splitlines()
    assert len(printed) == 4 and printed[0].startswith("(0, 0) 3.0")


def test_silent_when_not_verbose(capsys):
    eval_numerical_gradient(lambda v: float(v @ v), np.ones(3), verbose=False)
    assert capsys.readouterr().out == ""


def test_array_gradient_contracts_with_df():
    rng = np.random.default_rng(0)
    A = rng.standard_normal((4, 3))
    x = rng.standard_normal(3)
    df = rng.standard_normal(4)
    grad = eval_numerical_gradient_array(lambda v: A @ v, x, df)
    np.testing.assert_allclose(grad, A.T @ df, rtol=1e-8)


def test_array_gradient_copies_a_reused_output_buffer():
    buf = np.empty(2)

    def f(v):  # writes into the same buffer on every call
        np.multiply(v, 2.0, out=buf)
        return buf

    grad = eval_numerical_gradient_array(f, np.array([1.0, 2.0]), np.ones(2))
    np.testing.assert_allclose(grad, [2.0, 2.0])
