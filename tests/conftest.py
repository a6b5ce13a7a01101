"""Shared fixtures and independent NumPy oracles for the fastnn test suite.

Everything here is written from DESIGN.md's equations, without importing
fastnn's own reference (``fastnn.reference``), so the tests compare the package
with code that shares none of its implementation.
"""
import os
import sys

# The tests exercise the *installed* fastnn (with its compiled kernels). ``python -m pytest``
# run from the repository root puts the root on sys.path, where the source package
# ``fastnn/`` (without the built extensions) would shadow the installed one: drop it.
_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _ROOT]
for _name in [m for m in sys.modules if m == "fastnn" or m.startswith("fastnn.")]:
    if os.path.abspath(getattr(sys.modules[_name], "__file__", None) or "").startswith(_ROOT + os.sep):
        del sys.modules[_name]

import numpy as np  # noqa: E402
import pytest  # noqa: E402

import fastnn  # noqa: E402

# Test modules import these helpers with ``from conftest import ...`` (pytest runs
# with --import-mode=importlib, which does not put tests/ on sys.path itself).
_HERE = os.path.dirname(os.path.abspath(__file__))
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)

HIDDEN = ("sigmoid", "tanh", "relu", "identity")
# (output, cost): every pair the design allows
OUTPUT_COST = (
    ("sigmoid", "cross-entropy"),
    ("softmax", "log-likelihood"),
    ("identity", "quadratic"),
    ("sigmoid", "quadratic"),
    ("tanh", "quadratic"),
    ("relu", "quadratic"),
    ("softmax", "quadratic"),
)
DTYPES = ("float64", "float32")


# --------------------------------------------------------------------------- layout


def unpack(sizes, params):
    """[(W_l, b_l)] views of a flat buffer laid out W_0, b_0, W_1, b_1, ..."""
    out, off = [], 0
    for n_in, n_out in zip(sizes[:-1], sizes[1:]):
        W = params[off:off + n_out * n_in].reshape(n_out, n_in)
        off += n_out * n_in
        b = params[off:off + n_out]
        off += n_out
        out.append((W, b))
    assert off == params.shape[0]
    return out


def weight_mask(sizes):
    """True on the entries of the flat buffer that are weights (L2 applies), False on biases."""
    parts = []
    for n_in, n_out in zip(sizes[:-1], sizes[1:]):
        parts.append(np.ones(n_out * n_in, dtype=bool))
        parts.append(np.zeros(n_out, dtype=bool))
    return np.concatenate(parts)


def onehot(labels, n_out):
    labels = np.asarray(labels)
    if n_out == 1:
        return labels.astype(np.float64).reshape(-1, 1)
    T = np.zeros((labels.shape[0], n_out))
    T[np.arange(labels.shape[0]), labels] = 1.0
    return T


def targets(y, n_out):
    """The (n, n_out) float64 target matrix of labels or targets ``y``."""
    y = np.asarray(y)
    if y.ndim == 2:
        return y.astype(np.float64)
    return onehot(y, n_out)


# --------------------------------------------------------------------------- activations


def act(name, z):
    if name == "sigmoid":
        return 1.0 / (1.0 + np.exp(-z))
    if name == "tanh":
        return np.tanh(z)
    if name == "relu":
        return np.where(z > 0, z, 0.0)
    if name == "identity":
        return z.copy()
    if name == "softmax":
        e = np.exp(z - z.max(axis=-1, keepdims=True))
        return e / e.sum(axis=-1, keepdims=True)
    raise AssertionError(name)


def act_prime(name, z):
    """f'(z) for element-wise activations (from z, unlike the kernels)."""
    if name == "sigmoid":
        s = 1.0 / (1.0 + np.exp(-z))
        return s * (1 - s)
    if name == "tanh":
        return 1 - np.tanh(z) ** 2
    if name == "relu":
        return (z > 0).astype(np.float64)
    if name == "identity":
        return np.ones_like(z)
    raise AssertionError(name)


# --------------------------------------------------------------------------- forward / cost


def np_forward(sizes, activations, params, X):
    """(zs, as) of every layer for the rows of X, in float64; as[0] = X."""
    params = np.asarray(params, dtype=np.float64)
    a = np.asarray(X, dtype=np.float64)
    zs, As = [], [a]
    for (W, b), name in zip(unpack(sizes, params), activations):
        z = a @ W.T + b
        a = act(name, z)
        zs.append(z)
        As.append(a)
    return zs, As


def naive_c0(cost, a, T):
    """DESIGN.md's C0 formulas, written naively from the outputs a (mean over rows)."""
    m = a.shape[0]
    if cost == "quadratic":
        return np.sum(0.5 * np.sum((a - T) ** 2, axis=1)) / m
    if cost == "cross-entropy":
        return -np.sum(T * np.log(a) + (1 - T) * np.log(1 - a)) / m
    if cost == "log-likelihood":
        # -ln a_{y(x)}; for a target matrix the natural extension -sum_j y_j ln a_j
        return -np.sum(T * np.log(a)) / m
    raise AssertionError(cost)


def np_loss(net, X, y, lmbda=0.0, params=None):
    """C = C0 + lmbda/(2n) sum ||W||^2, from DESIGN.md, in float64."""
    params = net.params if params is None else params
    sizes = net.sizes
    _, As = np_forward(sizes, net.activations, params, X)
    T = targets(y, sizes[-1])
    n = As[0].shape[0]
    l2 = sum(np.sum(W.astype(np.float64) ** 2) for W, _ in unpack(sizes, np.asarray(params, np.float64)))
    return naive_c0(net.cost, As[-1], T) + lmbda / (2 * n) * l2


# --------------------------------------------------------------------------- backprop


def per_sample_gradients(sizes, activations, cost, params, X, T):
    """List of flat dC0_x/dparams, one per row, network2-style with column vectors."""
    params = np.asarray(params, dtype=np.float64)
    layers = unpack(sizes, params)
    out = []
    for x, t in zip(np.asarray(X, np.float64), np.asarray(T, np.float64)):
        a = x.reshape(-1, 1)
        t = t.reshape(-1, 1)
        As, Zs = [a], []
        for (W, b), name in zip(layers, activations):
            z = W @ a + b.reshape(-1, 1)
            a = act(name, z.T).T
            Zs.append(z)
            As.append(a)
        out_name = activations[-1]
        if cost in ("cross-entropy", "log-likelihood"):
            delta = As[-1] - t
        elif out_name == "softmax":
            s = As[-1]
            J = np.diagflat(s) - s @ s.T  # softmax Jacobian
            delta = J @ (s - t)
        else:
            delta = (As[-1] - t) * act_prime(out_name, Zs[-1])
        gW = [None] * len(layers)
        gb = [None] * len(layers)
        for l in range(len(layers) - 1, -1, -1):
            gW[l] = delta @ As[l].T
            gb[l] = delta.ravel()
            if l > 0:
                delta = (layers[l][0].T @ delta) * act_prime(activations[l - 1], Zs[l - 1])
        out.append(np.concatenate([np.concatenate([w.ravel(), bb]) for w, bb in zip(gW, gb)]))
    return out


def np_gradient(net, X, y, lmbda=0.0, params=None):
    """Mean gradient of C over the rows (with L2 on weights), from per-sample gradients."""
    params = net.params if params is None else params
    T = targets(y, net.sizes[-1])
    gs = per_sample_gradients(net.sizes, net.activations, net.cost, params, X, T)
    g = np.mean(gs, axis=0)
    n = np.asarray(X).shape[0]
    return g + np.where(weight_mask(net.sizes), lmbda / n * np.asarray(params, np.float64), 0.0)


def fd_gradient(net64, X, y, lmbda=0.0, eps=1e-6):
    """Central finite differences of net64.loss over every parameter (float64 net)."""
    assert net64.dtype == np.float64
    p = net64.params
    g = np.empty(p.shape[0])
    for i in range(p.shape[0]):
        old = p[i]
        p[i] = old + eps
        fp = net64.loss(X, y, lmbda)
        p[i] = old - eps
        fm = net64.loss(X, y, lmbda)
        p[i] = old
        g[i] = (fp - fm) / (2 * eps)
    return g


def rel_err(a, b):
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    den = max(np.linalg.norm(a), np.linalg.norm(b), 1e-300)
    return float(np.linalg.norm(a - b) / den)


def max_rel(a, b, floor=1e-300):
    """Largest element-wise |a - b| relative to the largest |b| (a scale-aware max error)."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), floor))


# --------------------------------------------------------------------------- SGD


def sgd_oracle(params, grad, vel, mask, eta, mu, l2, nesterov):
    """DESIGN.md's updates, element by element: returns (new params, new velocity).

    ``grad`` is the mean gradient of C0 over the batch; L2 (``l2 = lmbda/n``)
    applies where ``mask`` is True (weights) only.
    """
    params = np.asarray(params, dtype=np.float64)
    grad = np.asarray(grad, dtype=np.float64)
    vel = np.asarray(vel, dtype=np.float64)
    g = grad + np.where(mask, l2 * params, 0.0)
    if mu == 0:
        return params - eta * g, vel.copy()
    v = mu * vel - eta * g
    if nesterov:
        return params + mu * v - eta * g, v
    return params + v, v


def epoch_perms(seed, n, epochs, shuffle=True):
    """The permutations fit draws: one ``default_rng(seed)`` per fit call."""
    rng = np.random.default_rng(seed)
    return [rng.permutation(n) if shuffle else np.arange(n) for _ in range(epochs)]


# --------------------------------------------------------------------------- data


def make_data(n, n_in, n_out, seed=0, kind="labels"):
    """Small random classification data: X (n, n_in) and labels or targets."""
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, n_in))
    if kind == "labels":
        y = rng.integers(0, max(n_out, 2), n)
    elif kind == "onehot":
        y = onehot(rng.integers(0, max(n_out, 2), n), n_out)
    elif kind == "soft":  # rows of probabilities (valid for every cost)
        y = rng.random((n, n_out)) + 0.05
        y /= y.sum(axis=1, keepdims=True)
    else:
        raise AssertionError(kind)
    return X, y


@pytest.fixture
def rng():
    return np.random.default_rng(12345)


@pytest.fixture
def small_net():
    return fastnn.Network([4, 5, 3], seed=0)


@pytest.fixture
def small_data():
    return make_data(23, 4, 3, seed=1)


# --------------------------------------------------------------------------- kernel paths


@pytest.fixture(params=["blas-update", "fused-update", "blas-update-split", "fused-update-split"])
def update_path(request):
    """Run a training test with the kernels' BLAS-gradient-then-update path and with the AVX2
    small-batch path (forward product, and gradient fused with the update;
    ``fastnn._core.set_small_max_rows``), each on one thread and split into blocks over three
    threads even for tiny products (``_core.set_split_thresholds(0, 1)``), restoring the
    settings after."""
    from fastnn import _core
    split = request.param.endswith("-split")
    if split and not _core.POOL_AVAILABLE:
        pytest.skip("this build has no thread pool")
    old_threads = fastnn.set_num_threads(3 if split else 1)
    old_split = _core.set_split_thresholds(0, 1) if split else None
    fused = request.param.startswith("fused")
    try:
        if not _core.SMALL_KERNELS_AVAILABLE:
            if fused:
                pytest.skip("this CPU or build has no AVX2+FMA small-batch kernels")
            yield request.param
            return
        rows = 1 << 30 if fused else 0
        old = _core.set_small_max_rows(rows), _core.set_fused_max_rows(rows)
        try:
            yield request.param
        finally:
            _core.set_small_max_rows(old[0])
            _core.set_fused_max_rows(old[1])
    finally:
        fastnn.set_num_threads(old_threads)
        if old_split is not None:
            _core.set_split_thresholds(*old_split)
