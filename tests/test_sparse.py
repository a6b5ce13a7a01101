"""Layer 0's sparse-input kernels (src/fastnn/_sparse.h) against the dense path and the
NumPy oracle: evaluate (loss, accuracy, gradient) and feedforward on inputs with many exact
zeros, for every shape class the kernels distinguish (fan-in not a multiple of the vector
length or of the 8-column panel, fan-out of 1 to 75 vectors, i.e. one to six register
slices and the two-chain path of short slices), rows and columns that are all zero, chunks
that accumulate, and every product split between threads."""
import numpy as np
import pytest

import fastnn
from fastnn import _core
from conftest import DTYPES, np_gradient, np_loss

pytestmark = pytest.mark.skipif(not _core.SPARSE_KERNELS_AVAILABLE,
                                reason="this CPU or build has no AVX2+FMA sparse kernels")

TOL = {"float64": 1e-12, "float32": 2e-5}
# fan-in, fan-out: vector counts 1, 2, 4 (two chains), 13 (one slice of 13 in float32),
# 25-26 (two slices), 75 (six slices of float64), odd fan-ins
SHAPES = [(13, 1), (7, 5), (20, 8), (33, 13), (16, 30), (61, 100), (9, 200), (24, 300)]


def _sparse_data(n, n_in, n_out, density, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.random((n, n_in)) * (rng.random((n, n_in)) < density)
    X[0] = 0                      # a row with no non-zero at all
    X[:, n_in // 2] = 0           # a column with none
    return X, rng.integers(0, max(n_out, 2), n)


def _both(fn):
    """fn() with both products dense, then both sparse (restoring the thresholds)."""
    out = []
    for t in ((-1.0, -1.0), (1.0, 1.0)):
        old = _core.set_sparse_thresholds(*t)
        try:
            out.append(fn())
        finally:
            _core.set_sparse_thresholds(*old)
    return out


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n_in,n_hidden", SHAPES)
def test_sparse_loss_and_gradient_match_dense_and_oracle(dtype, n_in, n_hidden):
    sizes = [n_in, n_hidden, 3]
    net = fastnn.Network(sizes, hidden="tanh", output="softmax", cost="log-likelihood",
                         dtype=dtype, seed=n_in + n_hidden)
    X, y = _sparse_data(150, n_in, 3, 0.4, seed=n_hidden)
    (c0, g0), (c1, g1) = _both(lambda: net.loss_and_gradient(X, y, lmbda=0.5))
    tol = TOL[dtype]
    assert abs(c1 - c0) <= tol * abs(c0)
    assert np.max(np.abs(g1 - g0)) <= tol * np.max(np.abs(g0))
    g_ref = np_gradient(net, X.astype(dtype).astype(np.float64), y, lmbda=0.5)
    assert np.max(np.abs(g1 - g_ref)) <= 10 * tol * np.max(np.abs(g_ref))
    c_ref = np_loss(net, X.astype(dtype).astype(np.float64), y, lmbda=0.5)
    assert abs(c1 - c_ref) <= 10 * tol * abs(c_ref)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n_in,n_hidden", [(13, 1), (33, 13), (24, 300)])
def test_sparse_feedforward_and_evaluate_match_dense(dtype, n_in, n_hidden):
    net = fastnn.Network([n_in, n_hidden, 4], hidden="relu", output="sigmoid",
                         cost="cross-entropy", dtype=dtype, seed=1)
    X, y = _sparse_data(97, n_in, 4, 0.3, seed=2)
    (a0, e0), (a1, e1) = _both(lambda: (net.feedforward(X), net.evaluate(X, y)))
    np.testing.assert_allclose(a1, a0, rtol=0, atol=TOL[dtype])
    assert e1["accuracy"] == e0["accuracy"]
    assert abs(e1["cost"] - e0["cost"]) <= TOL[dtype] * abs(e0["cost"])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("threads", [1, 3])
def test_sparse_gradient_accumulates_over_chunks_and_splits_over_threads(dtype, threads):
    """Many chunks (the transposed gradient accumulates across them), every product split
    into blocks of 8 input columns over three threads even when tiny (the last block
    shorter than a panel), against the unsplit dense path."""
    if threads > 1 and not _core.POOL_AVAILABLE:
        pytest.skip("this build has no thread pool")
    sizes = [37, 20, 5]
    net = fastnn.Network(sizes, hidden="sigmoid", output="softmax", cost="log-likelihood",
                         dtype=dtype, seed=3)
    X, y = _sparse_data(1000, 37, 5, 0.5, seed=4)
    X = X.astype(dtype)
    c0, g0 = _both(lambda: net.loss_and_gradient(X, y))[0]   # dense, one chunk per call
    old_t = fastnn.set_num_threads(threads)
    old_split = _core.set_split_thresholds(0, 1)
    old_sp = _core.set_sparse_thresholds(1.0, 1.0)
    try:
        grad = np.empty_like(net.params)
        work = np.empty(_core.workspace_size(net._sizes_c, 64), dtype=net.dtype)
        Y = np.empty((0, 5), dtype=net.dtype)
        total, _ = _core.evaluate(net._sizes_c, net._acts_c, net._cost_c, net.params, X, Y,
                                  y.astype(np.intp), grad, work, 64, True, True)
    finally:
        _core.set_sparse_thresholds(*old_sp)
        _core.set_split_thresholds(*old_split)
        fastnn.set_num_threads(old_t)
    assert abs(total / len(X) - c0) <= TOL[dtype] * abs(c0)
    assert np.max(np.abs(grad - g0)) <= TOL[dtype] * np.max(np.abs(g0))


@pytest.mark.parametrize("dtype", DTYPES)
def test_all_zero_input_gives_the_bias_only_network(dtype):
    net = fastnn.Network([10, 6, 2], hidden="relu", output="softmax", cost="log-likelihood",
                         dtype=dtype, seed=5)
    X = np.zeros((40, 10))
    y = np.arange(40) % 2
    (c0, g0), (c1, g1) = _both(lambda: net.loss_and_gradient(X, y))
    assert abs(c1 - c0) <= TOL[dtype] * abs(c0)
    np.testing.assert_allclose(g1, g0, rtol=0, atol=TOL[dtype])
    np.testing.assert_array_equal(g1[:60], 0)   # dC/dW_0 = D^T X = 0


def test_density_decides_the_path():
    """Dense inputs keep the dense kernels; sparse ones take the sparse kernels. The paths
    differ only in rounding, so the choice is observed through float32 bit patterns."""
    net = fastnn.Network([64, 40, 3], hidden="relu", output="softmax", cost="log-likelihood",
                         dtype="float32", seed=6)
    rng = np.random.default_rng(7)
    Xd = rng.random((300, 64)) + 0.1
    Xs = Xd * (rng.random((300, 64)) < 0.4)
    y = rng.integers(0, 3, 300)

    def grads(thresholds):
        old = _core.set_sparse_thresholds(*thresholds)
        try:
            return net.gradient(Xd, y), net.gradient(Xs, y)
        finally:
            _core.set_sparse_thresholds(*old)

    auto_d, auto_s = grads((0.3, 0.7))
    dense_d, dense_s = grads((-1.0, -1.0))
    np.testing.assert_array_equal(auto_d, dense_d)
    assert not np.array_equal(auto_s, dense_s)
    np.testing.assert_allclose(auto_s, dense_s, rtol=0, atol=2e-5 * np.abs(dense_s).max())


def test_thresholds_round_trip():
    old = _core.set_sparse_thresholds(0.25, (0.5, 0.75))
    try:
        assert _core.set_sparse_thresholds(*old) == ((0.25, 0.25), (0.5, 0.75))
    finally:
        _core.set_sparse_thresholds(*old)


@pytest.mark.parametrize("dtype", DTYPES)
def test_single_layer_network(dtype):
    """Layer 0 is the output layer (softmax over the sparse product, its pre-activations
    kept for the loss): sparse and dense agree, and feedforward over many chunks too."""
    net = fastnn.Network([29, 7], output="softmax", cost="log-likelihood", dtype=dtype, seed=8)
    X, y = _sparse_data(300, 29, 7, 0.3, seed=9)
    (c0, g0, a0), (c1, g1, a1) = _both(lambda: (*net.loss_and_gradient(X, y), net.feedforward(X)))
    assert abs(c1 - c0) <= TOL[dtype] * abs(c0)
    assert np.max(np.abs(g1 - g0)) <= TOL[dtype] * np.max(np.abs(g0))
    np.testing.assert_allclose(a1, a0, rtol=0, atol=TOL[dtype])
    out = np.empty((300, 7), dtype=dtype)
    work = np.empty(_core.workspace_size(net._sizes_c, 16), dtype=dtype)
    old = _core.set_sparse_thresholds(1.0, 1.0)
    try:
        _core.feedforward(net._sizes_c, net._acts_c, net._cost_c, net.params,
                          X.astype(dtype), out, work, 16)
    finally:
        _core.set_sparse_thresholds(*old)
    np.testing.assert_allclose(out, a0, rtol=0, atol=TOL[dtype])


def test_zero_inputs_skip_their_weights_even_when_infinite():
    """The documented difference: a zero input times an infinite weight is NaN in a dense
    product, and skipped (0) in the sparse one; non-zero inputs propagate inf/NaN alike."""
    net = fastnn.Network([16, 5, 3], hidden="relu", output="softmax", cost="log-likelihood",
                         seed=10)
    X, y = _sparse_data(50, 16, 3, 0.3, seed=11)
    X[:, 3] = 0
    net.weights[0][2, 3] = np.inf
    dense, sparse = _both(lambda: net.loss(X, y))
    assert np.isnan(dense) and np.isfinite(sparse)
    X[5, 3] = 1.0
    dense, sparse = _both(lambda: net.loss(X, y))
    assert not np.isfinite(dense) and not np.isfinite(sparse)
