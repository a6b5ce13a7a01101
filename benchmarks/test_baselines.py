"""Self-checks of the baselines: the NumPy MLP's gradient against central finite
differences, its update rules against the equations of DESIGN.md, and the PyTorch
baseline against the NumPy one (same parameters -> same trajectory).

Run with ``pytest benchmarks/`` (not part of the default ``pytest`` run).
"""
import importlib.util
import pathlib
import sys

import numpy as np
import pytest

HERE = pathlib.Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

import numpy_mlp  # noqa: E402

COMBOS = [
    ("sigmoid", "sigmoid", "cross-entropy"),
    ("relu", "softmax", "log-likelihood"),
    ("tanh", "sigmoid", "quadratic"),
    ("tanh", "identity", "quadratic"),
    ("sigmoid", "softmax", "quadratic"),
    ("identity", "tanh", "quadratic"),
    ("relu", "relu", "quadratic"),
]


def _data(n, n_in, n_out, seed=1):
    rng = np.random.default_rng(seed)
    X = rng.random((n, n_in))
    y = rng.integers(0, n_out, n)
    Y = np.eye(n_out)[y]
    return X, y, Y


@pytest.mark.parametrize("hidden,output,cost", COMBOS)
@pytest.mark.parametrize("lmbda", [0.0, 3.0])
def test_gradient_matches_central_differences(hidden, output, cost, lmbda):
    X, _, Y = _data(7, 5, 3)
    net = numpy_mlp.make_state([5, 4, 4, 3], hidden=hidden, output=output, cost=cost,
                               dtype="float64", seed=2)
    if hidden == "relu" or output == "relu":
        # keep pre-activations away from the kink so that differences are smooth
        net.biases[0][...] += 0.5
    g = net.gradient(X, Y, lmbda=lmbda)
    p0 = net.params.copy()
    num = np.empty_like(p0)
    h = 1e-6
    for i in range(p0.size):
        net.params[...] = p0
        net.params[i] += h
        fp = net.loss(X, Y, lmbda)
        net.params[i] -= 2 * h
        fm = net.loss(X, Y, lmbda)
        num[i] = (fp - fm) / (2 * h)
    net.params[...] = p0
    np.testing.assert_allclose(g, num, rtol=1e-5, atol=1e-7)


def _manual_epoch(net, v, X, Y, perm, bs, eta, mu, nesterov, lmbda):
    """Reference: the equations of DESIGN.md with allocating NumPy, one batch at a time."""
    n = X.shape[0]
    for s in range(0, n, bs):
        idx = perm[s:s + bs]
        g = net.gradient(X[idx], Y[idx], lmbda=0.0)
        g[net.is_weight] += lmbda / n * net.params[net.is_weight]
        v = mu * v - eta * g
        if nesterov:
            net.params[...] += mu * v - eta * g
        else:
            net.params[...] += v
    return v


@pytest.mark.parametrize("nesterov,mu", [(False, 0.0), (False, 0.9), (True, 0.9)])
@pytest.mark.parametrize("lmbda", [0.0, 5.0])
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_train_epoch_follows_update_equations(nesterov, mu, lmbda, dtype):
    X, _, Y = _data(23, 6, 3)  # 23 rows, batch 5: the last partial batch (3 rows) is trained
    X, Y = X.astype(dtype), Y.astype(dtype)
    kw = dict(hidden="relu", output="softmax", cost="log-likelihood", dtype=dtype, seed=3)
    fast = numpy_mlp.make_state([6, 5, 3], **kw)
    ref = numpy_mlp.make_state([6, 5, 3], **kw)
    v = np.zeros_like(ref.params)
    for epoch in range(2):
        perm = np.random.default_rng(epoch).permutation(23)
        numpy_mlp.train_epoch(fast, X, Y, perm, 5, 0.1, mu, nesterov, lmbda)
        v = _manual_epoch(ref, v, X, Y, perm, 5, 0.1, mu, nesterov, lmbda)
    tol = 1e-12 if dtype == "float64" else 1e-5
    np.testing.assert_allclose(fast.params, ref.params, rtol=tol, atol=tol)
    if mu > 0:  # plain SGD keeps no velocity
        np.testing.assert_allclose(fast.vel, v, rtol=tol, atol=tol)
    assert not np.array_equal(fast.params, numpy_mlp.make_state([6, 5, 3], **kw).params)


def test_float32_runs_and_learns():
    rng = np.random.default_rng(0)
    centers = rng.random((3, 8))
    y = rng.integers(0, 3, 600)
    X = np.clip(centers[y] + 0.1 * rng.standard_normal((600, 8)), 0, 1).astype(np.float32)
    Y = np.eye(3, dtype=np.float32)[y]
    net = numpy_mlp.make_state([8, 16, 3], hidden="sigmoid", output="sigmoid",
                               cost="cross-entropy", dtype="float32", seed=0)
    before = net.loss(X, Y)
    for e in range(5):
        perm = np.random.default_rng(e).permutation(600)
        numpy_mlp.train_epoch(net, X, Y, perm, 10, 0.5, 0.5, False, 0.0)
    assert net.params.dtype == np.float32
    assert net.loss(X, Y) < 0.5 * before
    acc = np.mean(np.argmax(net.feedforward(X), axis=1) == y)
    assert acc > 0.9


torch_available = importlib.util.find_spec("torch") is not None


@pytest.mark.skipif(not torch_available, reason="torch not installed")
@pytest.mark.parametrize("hidden,output,cost,nesterov,lmbda", [
    ("sigmoid", "sigmoid", "cross-entropy", False, 5.0),
    ("relu", "softmax", "log-likelihood", True, 0.0),
    ("tanh", "identity", "quadratic", False, 2.0),
])
def test_torch_baseline_matches_numpy(hidden, output, cost, nesterov, lmbda):
    import torch_mlp

    X, y, Y = _data(23, 6, 3)
    perm = np.random.default_rng(0).permutation(23)
    net = numpy_mlp.make_state([6, 5, 4, 3], hidden=hidden, output=output, cost=cost, seed=4)
    tnet = torch_mlp.TorchMLP([6, 5, 4, 3], hidden=hidden, output=output, cost=cost,
                              dtype="float64", eta=0.1, mu=0.9, nesterov=nesterov,
                              lmbda=lmbda, n=23, threads=1)
    tnet.set_params(net.weights, net.biases)
    Xt, Tt = tnet.prepare(X, y if cost == "log-likelihood" else Y)
    for _ in range(2):
        numpy_mlp.train_epoch(net, X, Y, perm, 5, 0.1, 0.9, nesterov, lmbda)
        tnet.train_epoch(Xt, Tt, tnet.as_index(perm), 5)
    for W, Wt in zip(net.weights, tnet.get_weights()):
        np.testing.assert_allclose(W, Wt, rtol=1e-10, atol=1e-12)
