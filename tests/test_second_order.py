"""Second-order and full-batch optimizers through net.fit: Newton, HessianFree, CG, BFGS, L-BFGS."""
import time

import numpy as np
import pytest

import fastnn
from fastnn import curvature
from fastnn.datasets import load_digits
from fastnn.second_order import BFGS, LBFGS, ConjugateGradient, HessianFree, Newton
from fastnn.training import TrainingDiverged

EXTRA = ("grad_norm", "n_fev", "n_grad", "n_hvp")


@pytest.fixture(scope="module")
def digits():
    X, y = load_digits()
    rng = np.random.default_rng(0)
    idx = rng.permutation(X.shape[0])
    return X[idx[:600]], y[idx[:600]], X[idx[600:900]], y[idx[600:900]]


def _least_squares(n=40, d=5, k=3, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, d))
    Y = X @ rng.standard_normal((d, k)) + 0.3 * rng.standard_normal((n, k)) + 0.5
    return X, Y


def _solution(X, Y, lmbda):
    """argmin (1/2n)||X~ theta - Y||^2 + lmbda/(2n)||W||^2 by the normal equations
    (X~^T X~ + lmbda D) theta = X~^T Y, D = diag(1, ..., 1, 0); and (W, b)."""
    n, d = X.shape
    Xt = np.hstack([X, np.ones((n, 1))])
    D = np.diag(np.r_[np.ones(d), 0.0])
    theta = np.linalg.solve(Xt.T @ Xt + lmbda * D, Xt.T @ Y)
    if lmbda == 0:
        theta_ls = np.linalg.lstsq(Xt, Y, rcond=None)[0]
        np.testing.assert_allclose(theta, theta_ls, rtol=1e-10, atol=1e-12)
    return theta[:d].T, theta[d]


# --------------------------------------------------------------------------- Newton


@pytest.mark.parametrize("lmbda", [0.0, 4.0])
def test_newton_one_step_solves_linear_least_squares(lmbda):
    X, Y = _least_squares()
    net = fastnn.Network([5, 3], hidden=[], output="identity", cost="quadratic", seed=1)
    hist = net.fit(X, Y, epochs=1, optimizer=Newton(eta=1.0, damping=0.0), lmbda=lmbda)
    W, b = _solution(X, Y, lmbda)
    np.testing.assert_allclose(net.weights[0], W, rtol=1e-9, atol=1e-11)
    np.testing.assert_allclose(net.biases[0], b, rtol=1e-9, atol=1e-11)
    assert np.linalg.norm(net.gradient(X, Y, lmbda)) < 1e-11
    assert len(hist) == 1 and hist.solve == ["cholesky"] and hist.n_hvp == [net.n_params]
    assert hist.grad_norm[0] < 1e-11


def test_newton_default_damping_is_close_to_the_exact_step():
    X, Y = _least_squares()
    net = fastnn.Network([5, 3], hidden=[], output="identity", cost="quadratic", seed=1)
    net.fit(X, Y, epochs=1, optimizer=Newton())
    W, b = _solution(X, Y, 0.0)
    np.testing.assert_allclose(net.weights[0], W, rtol=1e-3, atol=1e-3)
    net.fit(X, Y, epochs=3, optimizer=Newton())
    np.testing.assert_allclose(net.weights[0], W, rtol=1e-8, atol=1e-9)


def _indefinite_problem():
    rng = np.random.default_rng(3)
    net = fastnn.Network([4, 6, 3], hidden="tanh", output="tanh", cost="quadratic", seed=0)
    net.params[:] += rng.standard_normal(net.n_params)
    X = rng.standard_normal((30, 4))
    Y = rng.random((30, 3)) * 1.8 - 0.9
    H = net.hessian(X, Y)
    assert np.linalg.eigvalsh(H).min() < -1e-3  # precondition: H is indefinite here
    return net, X, Y, H


def test_newton_saddle_free_fallback():
    net, X, Y, H = _indefinite_problem()
    g = net.gradient(X, Y)
    opt = Newton(damping=1e-3, fallback="saddle-free")
    dw, solve, floor = opt.direction(H.copy(), g)
    assert solve == "saddle-free" and floor == 1e-3
    lam, Q = np.linalg.eigh(H)
    np.testing.assert_allclose(dw, -Q @ ((Q.T @ g) / np.maximum(np.abs(lam), 1e-3)), rtol=1e-8,
                               atol=1e-12)
    assert g @ dw < 0  # |H| is positive definite: a descent direction
    c0 = net.loss(X, Y)
    hist = net.fit(X, Y, epochs=3, optimizer=Newton(damping=1e-3, line_search=True))
    assert hist.solve[0] == "saddle-free"
    assert np.all(np.isfinite(net.params))
    assert hist.train_cost[-1] < c0 and all(np.diff([c0] + hist.train_cost) <= 1e-15)


def test_newton_damping_fallback_and_raise():
    net, X, Y, H = _indefinite_problem()
    g = net.gradient(X, Y)
    dw, solve, mu = Newton(damping=1e-4, fallback="damping").direction(H.copy(), g)
    assert solve == "damping" and mu > 1e-4
    assert np.linalg.eigvalsh(H + mu * np.eye(H.shape[0])).min() > 0
    np.testing.assert_allclose((H + mu * np.eye(H.shape[0])) @ dw, -g, rtol=1e-8, atol=1e-10)
    from scipy.linalg import LinAlgError
    with pytest.raises(LinAlgError, match="positive definite"):
        net.fit(X, Y, epochs=1, optimizer=Newton(fallback="raise"))


def test_newton_never_takes_a_non_finite_step():
    X, Y = _least_squares()
    net = fastnn.Network([5, 3], hidden=[], output="identity", cost="quadratic", seed=1)
    before = net.params.copy()
    with pytest.raises(TrainingDiverged) as info:
        net.fit(X, Y, epochs=2, optimizer=Newton(eta=1e300, damping=0.0))
    np.testing.assert_array_equal(net.params, before)
    assert info.value.epoch == 0 and len(info.value.history) == 0


def test_newton_large_batch_hessian_and_memory_refusal(digits):
    X, y, Xv, yv = digits
    net = fastnn.Network([64, 8, 10], output="softmax", cost="log-likelihood", seed=0)
    c0 = net.loss(X, y)
    hist = net.fit(X, y, epochs=3, optimizer=Newton(damping=1e-2, batch_size=200, seed=0,
                                                    line_search=True), validation_data=(Xv, yv))
    assert hist.train_cost[-1] < c0
    assert hist.n_hvp[-1] == 3 * net.n_params and hist.n_grad[0] == 2
    with pytest.raises(curvature.CurvatureMemoryError, match="HessianFree"):
        net.fit(X, y, epochs=1, optimizer=Newton(max_bytes=1000))


def test_newton_parameters_are_validated():
    with pytest.raises(ValueError, match="'fallback'"):
        Newton(fallback="nope")
    with pytest.raises(ValueError, match="'eta'"):
        Newton(eta=0)
    with pytest.raises(ValueError, match="'damping'"):
        Newton(damping=-1)
    with pytest.raises(TypeError, match="'line_search'"):
        Newton(line_search="yes")


# --------------------------------------------------------------------------- Hessian-free


def test_hessian_free_trains_and_records_history(digits):
    X, y, Xv, yv = digits
    net = fastnn.Network([64, 16, 10], output="softmax", cost="log-likelihood", seed=0)
    c0 = net.loss(X, y, 1.0)
    opt = HessianFree(seed=0)
    hist = net.fit(X, y, epochs=15, optimizer=opt, lmbda=1.0, validation_data=(Xv, yv))
    assert len(hist) == 15
    for key in EXTRA + ("damping", "cg_iter", "rho", "step"):
        assert len(hist[key]) == 15
    for key in ("n_fev", "n_grad", "n_hvp"):
        assert all(np.diff(hist[key]) >= 0)
    # (with lmbda = 1 on 600 rows the L2 term alone keeps the cost near 0.5)
    assert hist.train_cost[-1] < 0.7 < c0
    assert hist.train_accuracy[-1] > 0.94 and hist.val_accuracy[-1] > 0.9
    assert all(np.diff(hist.train_cost) <= 1e-12)  # the line search only accepts decreases
    np.testing.assert_allclose(hist.train_cost[-1], net.loss(X, y, 1.0), rtol=1e-10)
    np.testing.assert_allclose(hist.grad_norm[-1], np.linalg.norm(net.gradient(X, y, 1.0)),
                               rtol=1e-8)
    assert opt.lambda_ is not None and opt.lambda_ > 0
    assert all(s > 0 for s in hist.seconds)


def test_hessian_free_minibatch_and_float32(digits):
    X, y, Xv, yv = digits
    net = fastnn.Network([64, 16, 10], output="softmax", cost="log-likelihood", dtype="float32",
                         seed=0)
    c0 = net.loss(X, y)
    hist = net.fit(X, y, epochs=8, optimizer=HessianFree(batch_size=300, curvature_batch_size=100,
                                                         seed=1))
    assert hist.train_cost[-1] < 0.6 * c0
    assert net.params.dtype == np.float32 and np.all(np.isfinite(net.params))


def test_hessian_free_regression_targets_minibatches():
    """Quadratic cost with a tanh hidden layer and real-valued targets, mini-batch gradients
    and a smaller curvature batch: the loss falls, the network stays finite."""
    X, Y = _least_squares(n=300, d=6, k=2, seed=4)
    Y = np.tanh(Y / 4)
    net = fastnn.Network([6, 12, 2], hidden="tanh", output="identity", cost="quadratic", seed=0)
    c0 = net.loss(X, Y, 0.5)
    hist = net.fit(X, Y, epochs=10, optimizer=HessianFree(batch_size=150, curvature_batch_size=50,
                                                          seed=2), lmbda=0.5)
    assert net.loss(X, Y, 0.5) < 0.3 * c0
    assert len(hist) == 10 and hist.n_grad[-1] == 10 and np.all(np.isfinite(net.params))


def test_hessian_free_cg_solves_the_damped_system():
    """Martens' CG, run to convergence on a small system, solves (G + lambda I) p = -g."""
    rng = np.random.default_rng(0)
    M = rng.standard_normal((20, 20))
    A = M @ M.T + np.eye(20)
    b = rng.standard_normal(20)

    class Counter:
        n_hvp = 0
    counter = Counter()
    saved, x, iters = HessianFree._cg(lambda v: A @ v, b, np.zeros(20), 200, 1e-12, counter)
    np.testing.assert_allclose(A @ x, b, rtol=1e-6, atol=1e-8)
    # saved iterates at ceil(1.3^j), and phi decreases along them
    its = [i for i, _, _ in saved]
    expected = sorted({int(np.ceil(1.3 ** j)) for j in range(40)} & set(range(1, iters + 1)))
    assert its[:6] == [1, 2, 3, 4, 5, 7]
    assert its == expected + ([iters] if iters not in expected else [])
    phis = [p for _, _, p in saved]
    assert all(np.diff(phis) <= 1e-12)
    assert counter.n_hvp == iters


# --------------------------------------------------------------------------- scipy methods


@pytest.mark.parametrize("opt,target", [(ConjugateGradient(), 0.5), (BFGS(), 0.5),
                                        (LBFGS(), 0.5)])
def test_full_batch_methods_reduce_the_cost(digits, opt, target):
    X, y, Xv, yv = digits
    net = fastnn.Network([64, 10, 10], output="softmax", cost="log-likelihood", seed=0)
    params = net.params
    c0 = net.loss(X, y, 0.5)
    hist = net.fit(X, y, epochs=40, optimizer=opt, lmbda=0.5, validation_data=(Xv, yv))
    assert net.params is params  # written in place, views intact
    assert 1 <= len(hist) <= 40
    assert hist.train_cost[-1] < target < c0
    assert hist.val_accuracy[-1] > 0.8
    np.testing.assert_allclose(hist.train_cost[-1], net.loss(X, y, 0.5), rtol=1e-10)
    np.testing.assert_allclose(hist.grad_norm[-1], np.linalg.norm(net.gradient(X, y, 0.5)),
                               rtol=1e-8)
    assert hist.n_fev[-1] >= len(hist) and hist.n_grad == hist.n_fev
    assert all(h == 0 for h in hist.n_hvp)


def test_full_batch_methods_float32_and_targets(digits):
    X, y, _, _ = digits
    T = np.eye(10)[y]
    net = fastnn.Network([64, 10, 10], output="sigmoid", cost="cross-entropy", dtype="float32",
                         seed=0)
    c0 = net.loss(X, T)
    hist = net.fit(X, T, epochs=20, optimizer=LBFGS(m=5))
    assert hist.train_cost[-1] < 0.5 * c0 and net.params.dtype == np.float32


@pytest.mark.parametrize("make", [ConjugateGradient, BFGS, LBFGS,
                                  lambda: HessianFree(seed=0), lambda: Newton(damping=1e-2)])
def test_callback_stops_and_epochs_zero(digits, make):
    X, y, _, _ = digits
    net = fastnn.Network([64, 6, 10], output="softmax", cost="log-likelihood", seed=0)
    hist = net.fit(X[:200], y[:200], epochs=30, optimizer=make(),
                   callbacks=[lambda h: len(h) >= 3])
    assert len(hist) == 3 and hist.stopped_early
    np.testing.assert_allclose(hist.train_cost[-1], net.loss(X[:200], y[:200]), rtol=1e-10)
    before = net.params.copy()
    assert len(net.fit(X[:200], y[:200], epochs=0, optimizer=make())) == 0
    np.testing.assert_array_equal(net.params, before)


def test_bfgs_refuses_networks_too_large_for_its_matrix():
    net = fastnn.Network([784, 1000, 10], dtype="float32", seed=0)
    with pytest.raises(MemoryError, match="LBFGS") as info:
        net.fit(np.zeros((4, 784)), [0, 1, 0, 1], epochs=1, optimizer=BFGS())
    assert "795010" in str(info.value) and isinstance(info.value, ValueError)
    small = fastnn.Network([4, 3, 2], seed=0)
    with pytest.raises(curvature.CurvatureMemoryError, match="LBFGS"):
        small.fit(np.zeros((4, 4)), [0, 1, 0, 1], epochs=1, optimizer=BFGS(max_bytes=100))


def test_exported_names_if_present():
    """fastnn's top level re-exports the optimizers (once fastnn/__init__.py lists them)."""
    for name, cls in (("Newton", Newton), ("HessianFree", HessianFree),
                      ("ConjugateGradient", ConjugateGradient), ("BFGS", BFGS), ("LBFGS", LBFGS)):
        if hasattr(fastnn, name):
            assert getattr(fastnn, name) is cls


# --------------------------------------------------------------------------- Fashion-MNIST


@pytest.mark.slow
def test_hessian_free_fashion_mnist_784_100_10():
    """The issue's bar: [784, 100, 10] on Fashion-MNIST to >= 85 % test accuracy in a few
    minutes (on the 2-core machine: ~25 iterations, about a minute)."""
    from fastnn.datasets import load_fashion_mnist
    try:
        (X, y), (Xt, yt) = load_fashion_mnist(dtype="float32")
    except (FileNotFoundError, OSError) as exc:
        pytest.skip(f"Fashion-MNIST not available: {exc}")
    net = fastnn.Network([784, 100, 10], hidden="sigmoid", output="softmax",
                         cost="log-likelihood", dtype="float32", seed=0)
    t0 = time.perf_counter()
    hist = net.fit(X, y, epochs=30, optimizer=HessianFree(seed=0), monitor_training=False)
    seconds = time.perf_counter() - t0
    acc = net.evaluate(Xt, yt)["accuracy"]
    assert acc >= 0.85, f"test accuracy {acc:.4f} after {len(hist)} iterations, {seconds:.0f} s"
    assert seconds < 600, f"{seconds:.0f} s"
