"""The Cython kernels against NumPy: BLAS wrapper, fused SGD update, forward pass,
chunked evaluation, and the 'cython' engine against the 'numpy' engine."""
import contextlib

import numpy as np
import pytest

import fastnn
import fastnn.network
from fastnn import _blas, _core
from conftest import (DTYPES, HIDDEN, OUTPUT_COST, make_data, np_forward, np_gradient, np_loss,
                      sgd_oracle, unpack, weight_mask)

RTOL = {"float64": 1e-12, "float32": 2e-5}


# --------------------------------------------------------------------------- BLAS


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("ta", ["n", "t"])
@pytest.mark.parametrize("tb", ["n", "t"])
@pytest.mark.parametrize("m,n,k", [(1, 1, 1), (3, 5, 7), (17, 4, 33), (64, 65, 9)])
def test_gemm_memview_matches_numpy(ta, tb, m, n, k, dtype):
    rng = np.random.default_rng(m * 1000 + n * 10 + k)
    A = rng.standard_normal((m, k) if ta == "n" else (k, m)).astype(dtype)
    B = rng.standard_normal((k, n) if tb == "n" else (n, k)).astype(dtype)
    C0 = rng.standard_normal((m, n)).astype(dtype)
    opA = A if ta == "n" else A.T
    opB = B if tb == "n" else B.T
    for alpha, beta in ((1.0, 0.0), (0.5, 2.0), (-1.5, 1.0)):
        C = C0.copy()
        out = _blas.gemm_memview(ta, tb, alpha, A, B, beta, C)
        expected = alpha * (opA.astype(np.float64) @ opB.astype(np.float64)) + beta * C0.astype(np.float64)
        assert out.dtype == np.dtype(dtype)
        np.testing.assert_allclose(C, expected, rtol=RTOL[dtype], atol=RTOL[dtype] * k * 10)
        np.testing.assert_array_equal(out, C)  # in place


def test_gemm_memview_beta_zero_ignores_garbage_in_c():
    A = np.ones((2, 3))
    B = np.ones((3, 4))
    C = np.full((2, 4), np.nan)
    _blas.gemm_memview("n", "n", 1.0, A, B, 0.0, C)
    np.testing.assert_array_equal(C, np.full((2, 4), 3.0))


def test_gemm_memview_rejects_mismatched_shapes():
    with pytest.raises(ValueError):
        _blas.gemm_memview("n", "n", 1.0, np.ones((2, 3)), np.ones((4, 2)), 0.0, np.ones((2, 2)))
    with pytest.raises(ValueError):
        _blas.gemm_memview("t", "n", 1.0, np.ones((2, 3)), np.ones((3, 2)), 0.0, np.ones((2, 2)))


# --------------------------------------------------------------------------- fused update


def _step_problem(sizes, dtype, seed=0):
    net = fastnn.Network(sizes, dtype=dtype, seed=seed)
    rng = np.random.default_rng(seed + 1)
    params = rng.standard_normal(net.n_params).astype(dtype)
    grad = rng.standard_normal(net.n_params).astype(dtype)
    vel = rng.standard_normal(net.n_params).astype(dtype)
    return net, params, grad, vel


def _sgd_step(net, params, grad, vel, eta, mu, l2, nesterov):
    return _core.sgd_step(net._sizes_c, net._acts_c, net._cost_c, params, grad, vel,
                          eta, mu, l2, nesterov)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("mu,nesterov", [(0.0, False), (0.0, True), (0.9, False), (0.5, True),
                                         (0.9, True)])
@pytest.mark.parametrize("l2", [0.0, 0.03])
def test_sgd_step_matches_the_equations(mu, nesterov, l2, dtype):
    sizes = [5, 4, 3, 2]
    net, params, grad, vel = _step_problem(sizes, dtype)
    eta = 0.7
    mask = weight_mask(sizes)
    exp_p, exp_v = sgd_oracle(params, grad, vel, mask, eta, mu, l2, nesterov)
    vel0 = vel.copy()
    assert _sgd_step(net, params, grad, vel, eta, mu, l2, nesterov) is True
    tol = 1e-14 if dtype == "float64" else 1e-6
    np.testing.assert_allclose(params, exp_p, rtol=tol, atol=tol)
    if mu == 0:
        np.testing.assert_array_equal(vel, vel0)  # plain SGD keeps no velocity
    else:
        np.testing.assert_allclose(vel, exp_v, rtol=tol, atol=tol)


def test_sgd_step_written_out_for_one_weight_and_one_bias():
    """The update of a [1, 1] net by hand: W is regularized, b is not."""
    net = fastnn.Network([1, 1], hidden=[], output="identity", cost="quadratic")
    eta, mu, l2 = 0.5, 0.9, 0.1
    # plain: W <- (1 - eta l2) W - eta g ; b <- b - eta g
    p = np.array([2.0, 3.0]); g = np.array([0.4, -0.6]); v = np.array([0.0, 0.0])
    _sgd_step(net, p, g, v, eta, 0.0, l2, False)
    np.testing.assert_allclose(p, [(1 - 0.05) * 2.0 - 0.2, 3.0 + 0.3], rtol=1e-15)
    # momentum: v <- mu v - eta (g + l2 W); W <- W + v
    p = np.array([2.0, 3.0]); v = np.array([1.0, -1.0])
    _sgd_step(net, p, g, v, eta, mu, l2, False)
    vw, vb = 0.9 * 1.0 - 0.5 * (0.4 + 0.1 * 2.0), 0.9 * -1.0 - 0.5 * -0.6
    np.testing.assert_allclose(v, [vw, vb], rtol=1e-15)
    np.testing.assert_allclose(p, [2.0 + vw, 3.0 + vb], rtol=1e-15)
    # Nesterov: v <- mu v - eta g'; W <- W + mu v - eta g'  (g' = g + l2 W on weights)
    p = np.array([2.0, 3.0]); v = np.array([1.0, -1.0])
    _sgd_step(net, p, g, v, eta, mu, l2, True)
    gw, gb = 0.4 + 0.1 * 2.0, -0.6
    vw, vb = 0.9 * 1.0 - 0.5 * gw, 0.9 * -1.0 - 0.5 * gb
    np.testing.assert_allclose(v, [vw, vb], rtol=1e-15)
    np.testing.assert_allclose(p, [2.0 + 0.9 * vw - 0.5 * gw, 3.0 + 0.9 * vb - 0.5 * gb], rtol=1e-15)


@pytest.mark.parametrize("dtype", DTYPES)
def test_sgd_step_l2_never_touches_biases(dtype):
    sizes = [3, 4, 2]
    net, params, _, vel = _step_problem(sizes, dtype)
    grad = np.zeros_like(params)
    before = params.copy()
    for mu, nesterov in ((0.0, False), (0.8, False), (0.8, True)):
        p, v = params.copy(), np.zeros_like(vel)
        _sgd_step(net, p, grad, v, 0.5, mu, 0.2, nesterov)
        bias = ~weight_mask(sizes)
        np.testing.assert_array_equal(p[bias], before[bias])
        assert np.all(np.abs(p[~bias]) < np.abs(before[~bias]))  # weights decay


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("mu,nesterov", [(0.0, False), (0.9, False), (0.9, True)])
def test_sgd_step_reports_non_finite(mu, nesterov, dtype):
    sizes = [3, 4, 2]
    big = np.finfo(dtype).max
    for where in (0, 13, -1):  # a weight of layer 0, a bias of layer 0, the last bias
        net, params, grad, vel = _step_problem(sizes, dtype)
        grad[where] = big  # eta * big overflows to +-inf
        assert _sgd_step(net, params, grad, vel, 10.0, mu, 0.0, nesterov) is False
        assert not np.isfinite(params[where])
    net, params, grad, vel = _step_problem(sizes, dtype)
    grad[5] = np.nan
    assert _sgd_step(net, params, grad, vel, 0.1, mu, 0.01, nesterov) is False
    net, params, grad, vel = _step_problem(sizes, dtype)
    params[7] = np.inf
    assert _sgd_step(net, params, grad, vel, 0.1, mu, 0.0, nesterov) is False
    net, params, grad, vel = _step_problem(sizes, dtype)
    assert _sgd_step(net, params, grad, vel, 0.1, mu, 0.01, nesterov) is True


# --------------------------------------------------------------------------- forward


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("output,cost", OUTPUT_COST)
@pytest.mark.parametrize("hidden", [*HIDDEN, ["relu", "tanh"], ["identity", "sigmoid", "relu"]])
def test_feedforward_matches_numpy(hidden, output, cost, dtype):
    n_hidden = 1 if isinstance(hidden, str) else len(hidden)
    sizes = [6] + [5, 7, 4][:n_hidden] + [3]
    net = fastnn.Network(sizes, hidden=hidden, output=output, cost=cost, dtype=dtype, seed=2)
    X = np.random.default_rng(3).standard_normal((19, 6)).astype(dtype)
    out = net.feedforward(X)
    assert out.shape == (19, 3) and out.dtype == np.dtype(dtype)
    _, As = np_forward(sizes, net.activations, net.params, X)
    np.testing.assert_allclose(out, As[-1], rtol=RTOL[dtype], atol=RTOL[dtype])
    np.testing.assert_allclose(net.feedforward(X, engine="numpy"), As[-1], rtol=RTOL[dtype],
                               atol=RTOL[dtype])
    # one sample as a 1-D vector gives a 1-D output, the same row
    np.testing.assert_allclose(net.feedforward(X[4]), out[4], rtol=RTOL[dtype], atol=RTOL[dtype])
    assert net.feedforward(X[4]).shape == (3,)


def test_feedforward_kernel_directly_matches_numpy():
    sizes = [4, 6, 3]
    net = fastnn.Network(sizes, hidden="tanh", output="softmax", cost="log-likelihood", seed=0)
    X = np.random.default_rng(0).standard_normal((10, 4))
    out = np.empty((10, 3))
    work = np.empty(_core.workspace_size(net._sizes_c, 4))
    _core.feedforward(net._sizes_c, net._acts_c, net._cost_c, net.params, X, out, work, 4)
    _, As = np_forward(sizes, net.activations, net.params, X)
    np.testing.assert_allclose(out, As[-1], rtol=1e-12)
    np.testing.assert_allclose(out.sum(axis=1), 1.0, rtol=1e-12)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("small", ["tiled", "row-blocks", "default", "blas"])
def test_forward_kernel_every_batch_size_and_odd_widths(dtype, small):
    """Chunks of 1..30 rows through layers whose widths are not multiples of the kernels'
    blocks (4 or 6 rows, 2, 3 or 4 columns, vectors of 4 or 8, tiles of 256 inputs), with the
    small forward kernel's k-tiled variant for every chunk up to 16 rows, its row-block
    variant from 1 row up, the default choice, or BLAS."""
    tiled = {"tiled": (16, 16), "row-blocks": (0, 0)}.get(small)
    old_tiled = _core.set_tiled_max_rows(*tiled) if tiled else None
    try:
        _forward_every_batch_size(dtype, small != "blas")
    finally:
        if old_tiled:
            _core.set_tiled_max_rows(*old_tiled)


def _forward_every_batch_size(dtype, small):
    sizes = [301, 37, 23, 5]
    net = fastnn.Network(sizes, hidden=["sigmoid", "relu"], output="softmax", cost="log-likelihood",
                         dtype=dtype, seed=3)
    X = np.random.default_rng(4).standard_normal((30, 301)).astype(dtype)
    _, As = np_forward(sizes, net.activations, net.params.astype(np.float64), X.astype(np.float64))
    old = _core.set_small_max_rows(1 << 30 if small else 0)
    try:
        for m in range(1, 31):
            out = np.empty((30, 5), dtype=dtype)
            work = np.empty(_core.workspace_size(net._sizes_c, m), dtype=dtype)
            _core.feedforward(net._sizes_c, net._acts_c, net._cost_c, net.params, X, out, work, m)
            np.testing.assert_allclose(out, As[-1], rtol=RTOL[dtype], atol=RTOL[dtype],
                                       err_msg=f"chunks of {m} rows")
    finally:
        _core.set_small_max_rows(old)


def _chunked_feedforward(net, X, m):
    """The kernels' feedforward of X, m rows per call."""
    out = np.empty((X.shape[0], net.sizes[-1]), dtype=net.dtype)
    work = np.empty(_core.workspace_size(net._sizes_c, m), dtype=net.dtype)
    _core.feedforward(net._sizes_c, net._acts_c, net._cost_c, net.params, X, out, work, m)
    return out


@contextlib.contextmanager
def _row_block_kernel(tiling=True, tiles_outer=True):
    """Every batch size in the small forward kernel's row-block variant, the fan-in cut into
    tiles where it is wide (tiling) or not, the tiles taken outermost or inside each block."""
    old_tiled = _core.set_tiled_max_rows(0, 0)
    old = _core.set_small_max_rows(1 << 30)
    old_tiling = _core.set_forward_tiling(tiling)
    old_outer = _core.set_forward_tiles_outer(tiles_outer)
    try:
        yield
    finally:
        _core.set_forward_tiles_outer(old_outer)
        _core.set_forward_tiling(old_tiling)
        _core.set_small_max_rows(old)
        _core.set_tiled_max_rows(*old_tiled)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_forward_row_blocks_give_the_same_bits_whatever_the_block(dtype):
    """The row-block kernel takes 6-row blocks (against 2 rows of W) while an even number of
    them leaves a multiple of 4 rows, then 4-row blocks (against 3, 2, 1): every entry is the
    same full-length dot product either way. So a row's output is the same bits in chunks of
    4 (4-row blocks only), 12, 24 and 28 rows (6-row blocks, then 4-row ones)."""
    sizes = [301, 37, 23, 5]
    net = fastnn.Network(sizes, hidden=["relu", "tanh"], output="softmax", cost="log-likelihood",
                         dtype=dtype, seed=5)
    X = np.random.default_rng(6).standard_normal((168, 301)).astype(dtype)
    with _row_block_kernel():
        outs = {m: _chunked_feedforward(net, X, m) for m in (4, 12, 24, 28)}
    for m in (12, 24, 28):
        np.testing.assert_array_equal(outs[m], outs[4], err_msg=f"chunks of {m} rows")


# fan-ins whose 4 rows outgrow 16 KiB, so that the row-block kernel cuts them into 2 tiles:
# float64 701 (tiles of 352 and 349 columns: the last vector of the last tile is partial)
# and float32 1100 (552 and 548)
WIDE_FAN_IN = {"float64": 701, "float32": 1100}


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("tiling, tiles_outer", [(True, True), (True, False), (False, True)])
def test_forward_tiled_row_blocks_match_the_reference(dtype, tiling, tiles_outer):
    """With a fan-in cut into tiles (each output the sum of its tiles' dot products), the
    row-block kernel's outputs equal the float64 reference, tiled or not, the tiles outermost
    or inside each block, for every chunk size (4-row blocks and the last m % 4 rows)."""
    k = WIDE_FAN_IN[dtype]
    sizes = [k, 43, 7]
    net = fastnn.Network(sizes, hidden="tanh", output="softmax", cost="log-likelihood",
                         dtype=dtype, seed=11)
    X = np.random.default_rng(12).standard_normal((45, k)).astype(dtype)
    _, As = np_forward(sizes, net.activations, net.params.astype(np.float64), X.astype(np.float64))
    with _row_block_kernel(tiling, tiles_outer):
        for m in (4, 9, 16, 45):
            np.testing.assert_allclose(_chunked_feedforward(net, X, m), As[-1], rtol=RTOL[dtype],
                                       atol=RTOL[dtype], err_msg=f"chunks of {m} rows")


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_forward_tiled_row_blocks_give_the_same_bits_whatever_the_block(dtype):
    """Tiled, every entry of a 4-row block is the same sum of the same tile dot products
    whichever block (4 x 3, 4 x 2 or 1 x 4 against W's rows) computes it and whichever rows
    share the block: a row's output is the same bits in chunks of 4, 8, 24 and 44 rows, and
    in a different order of the batch."""
    k = WIDE_FAN_IN[dtype]
    sizes = [k, 41, 5]
    net = fastnn.Network(sizes, hidden="relu", output="sigmoid", cost="cross-entropy",
                         dtype=dtype, seed=13)
    X = np.random.default_rng(14).standard_normal((88, k)).astype(dtype)
    perm = np.random.default_rng(15).permutation(88)
    with _row_block_kernel():
        outs = {m: _chunked_feedforward(net, X, m) for m in (4, 8, 24, 44)}
        out = _chunked_feedforward(net, np.ascontiguousarray(X[perm]), 44)
    for m in (8, 24, 44):
        np.testing.assert_array_equal(outs[m], outs[4], err_msg=f"chunks of {m} rows")
    np.testing.assert_array_equal(out, outs[4][perm], err_msg="rows in another order")


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_forward_tiles_outermost_give_the_same_bits_as_tiles_inside_blocks(dtype):
    """Every block of rows through tile 0, then tile 1 (the default), or each block through
    both tiles in turn: each entry is the same sum of the same tile dot products, so the
    outputs are the same bits, for 4-row blocks and the last m % 4 rows alike; and training
    through that kernel follows the same trajectory bit for bit."""
    k = WIDE_FAN_IN[dtype]
    sizes = [k, 29, 6]
    X = np.random.default_rng(16).standard_normal((90, k)).astype(dtype)
    y = np.random.default_rng(17).integers(0, 6, 90)
    outs, params = {}, {}
    for outer in (True, False):
        net = fastnn.Network(sizes, hidden="relu", output="softmax", cost="log-likelihood",
                             dtype=dtype, seed=18)
        with _row_block_kernel(tiles_outer=outer):
            outs[outer] = {m: _chunked_feedforward(net, X, m) for m in (7, 45, 90)}
            net.fit(X, y, epochs=2, batch_size=43, optimizer=fastnn.SGD(0.05, momentum=0.9),
                    seed=19, monitor_training=False)
        params[outer] = net.params.copy()
    for m in (7, 45, 90):
        np.testing.assert_array_equal(outs[True][m], outs[False][m], err_msg=f"chunks of {m}")
    np.testing.assert_array_equal(params[True], params[False])
    # the two orders do differ from the untiled kernel (the tiles are really taken)
    net = fastnn.Network(sizes, hidden="relu", output="softmax", cost="log-likelihood",
                         dtype=dtype, seed=18)
    with _row_block_kernel(tiling=False):
        assert not np.array_equal(_chunked_feedforward(net, X, 90), outs[True][90])


def test_predict_is_argmax_and_threshold():
    net = fastnn.Network([3, 4, 5], seed=0)
    X = np.random.default_rng(1).standard_normal((30, 3))
    _, As = np_forward(net.sizes, net.activations, net.params, X)
    np.testing.assert_array_equal(net.predict(X), np.argmax(As[-1], axis=1))
    net1 = fastnn.Network([3, 4, 1], seed=0)
    _, As = np_forward(net1.sizes, net1.activations, net1.params, X)
    np.testing.assert_array_equal(net1.predict(X), (As[-1][:, 0] > 0.5).astype(int))


def test_softmax_output_is_stable_for_huge_pre_activations():
    net = fastnn.Network([1, 3], hidden=[], output="softmax", cost="log-likelihood")
    net.weights[0][:, 0] = [1000.0, 999.0, -1000.0]
    net.biases[0][:] = 0
    out = net.feedforward([[1.0]])
    e = np.exp([0.0, -1.0, -2000.0])
    np.testing.assert_allclose(out[0], e / e.sum(), rtol=1e-14)


# --------------------------------------------------------------------------- chunking


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", ["labels", "soft"])
def test_chunked_evaluation_equals_unchunked(monkeypatch, dtype, kind):
    sizes = [7, 9, 4]
    net = fastnn.Network(sizes, hidden="relu", output="softmax", cost="log-likelihood", dtype=dtype,
                         seed=1)
    n = 200  # more rows than one chunk (chunks are at least 64 rows): 64 + 64 + 64 + 8
    X, y = make_data(n, 7, 4, seed=2, kind=kind)
    full_out = net.feedforward(X)
    full_loss, full_grad = net.loss_and_gradient(X, y, 0.5)
    full_eval = net.evaluate(X, y)
    assert net._chunk(n) == n
    monkeypatch.setattr(fastnn.network, "_WORKSPACE_BYTES", 1)
    assert net._chunk(n) == 64
    out = net.feedforward(X)
    loss, grad = net.loss_and_gradient(X, y, 0.5)
    tol = RTOL[dtype]
    np.testing.assert_allclose(out, full_out, rtol=tol, atol=tol)
    assert loss == pytest.approx(full_loss, rel=tol)
    np.testing.assert_allclose(grad, full_grad, rtol=10 * tol, atol=10 * tol * np.abs(full_grad).max())
    assert net.evaluate(X, y)["accuracy"] == full_eval["accuracy"]
    # and against the independent oracle
    if dtype == "float64":
        _, As = np_forward(sizes, net.activations, net.params, X)
        np.testing.assert_allclose(out, As[-1], rtol=1e-12, atol=1e-15)
        assert loss == pytest.approx(np_loss(net, X, y, 0.5), rel=1e-12)
        np.testing.assert_allclose(grad, np_gradient(net, X, y, 0.5), rtol=1e-9, atol=1e-14)


# --------------------------------------------------------------------------- engines


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("output,cost", OUTPUT_COST)
@pytest.mark.parametrize("hidden", [*HIDDEN, ["tanh", "relu"]])
def test_cython_engine_equals_numpy_engine(hidden, output, cost, dtype):
    n_hidden = 1 if isinstance(hidden, str) else len(hidden)
    sizes = [5] + [6, 4][:n_hidden] + [3]
    net = fastnn.Network(sizes, hidden=hidden, output=output, cost=cost, dtype=dtype, seed=5)
    for kind in ("labels", "soft"):
        X, y = make_data(31, 5, 3, seed=6, kind=kind)
        tol = RTOL[dtype]
        np.testing.assert_allclose(net.feedforward(X), net.feedforward(X, engine="numpy"),
                                   rtol=tol, atol=tol)
        for lmbda in (0.0, 1.3):
            c1, g1 = net.loss_and_gradient(X, y, lmbda)
            c2, g2 = net.loss_and_gradient(X, y, lmbda, engine="numpy")
            assert g1.dtype == g2.dtype == np.dtype(dtype)
            assert c1 == pytest.approx(c2, rel=tol)
            scale = np.abs(g2).max()
            np.testing.assert_allclose(g1, g2, rtol=10 * tol, atol=10 * tol * scale)
            np.testing.assert_allclose(net.gradient(X, y, lmbda, engine="numpy"), g2, rtol=0, atol=0)


def test_params_layout_is_w0_b0_w1_b1():
    sizes = [3, 4, 2]
    net = fastnn.Network(sizes, seed=0)
    assert net.n_params == 4 * 3 + 4 + 2 * 4 + 2
    for (W, b), (W2, b2) in zip(zip(net.weights, net.biases), unpack(sizes, net.params)):
        assert np.shares_memory(W, net.params) and np.shares_memory(b, net.params)
        np.testing.assert_array_equal(W, W2)
        np.testing.assert_array_equal(b, b2)
    net.params[:] = np.arange(net.n_params)
    np.testing.assert_array_equal(net.weights[0], np.arange(12).reshape(4, 3))
    np.testing.assert_array_equal(net.biases[0], np.arange(12, 16))
    np.testing.assert_array_equal(net.weights[1], np.arange(16, 24).reshape(2, 4))
    np.testing.assert_array_equal(net.biases[1], np.arange(24, 26))
    # the forward pass reads the same layout: z_1 = W_0 x + b_0 with W_0 of shape (out, in)
    net2 = fastnn.Network([2, 1], hidden=[], output="identity", cost="quadratic")
    net2.params[:] = [2.0, -3.0, 0.5]
    assert net2.feedforward([[1.0, 1.0]])[0, 0] == 2.0 - 3.0 + 0.5


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("shift", [1, 3, 5])
def test_vector_exp_gives_each_element_the_same_bits_wherever_it_lies(dtype, shift):
    """The AVX2 exp's result for an element depends on its value only: not on whether it
    falls in a whole vector or the last partial one, nor on an out-of-range neighbour in its
    vector (which alone takes libm). So sigmoid outputs moved along by `shift` columns (W's
    rows and b rolled) are the same outputs, rolled, bit for bit; a thread's block of
    columns may then start anywhere."""
    net = fastnn.Network([3, 37], hidden="identity", output="sigmoid", cost="cross-entropy",
                         dtype=dtype, seed=0)
    rolled = net.copy()
    W, b = net.weights[0], net.biases[0]
    rolled.weights[0][...] = np.roll(W, shift, axis=0)
    rolled.biases[0][...] = np.roll(b, shift)
    rng = np.random.default_rng(2)
    X = np.concatenate([rng.standard_normal((40, 3)) * s for s in (0.1, 3.0, 30.0, 300.0)])
    X = np.concatenate([X, [[1e4, 0, 0], [-1e4, 0, 0], [np.nan, 0, 0]]]).astype(dtype)
    outs = []
    for n in (net, rolled):
        out = np.empty((X.shape[0], 37), dtype=dtype)
        work = np.empty(_core.workspace_size(n._sizes_c, X.shape[0]), dtype=dtype)
        _core.feedforward(n._sizes_c, n._acts_c, n._cost_c, n.params, X, out, work, X.shape[0])
        outs.append(out)
    np.testing.assert_array_equal(np.roll(outs[0], shift, axis=1), outs[1])


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("output", ["sigmoid", "softmax"])
def test_vector_exp_agrees_with_libm_and_keeps_nan_and_extremes(dtype, output):
    """sigmoid and softmax through the AVX2 exp: within a few ulp of the libm path, exact
    saturation far out, NaN kept (so divergence still shows)."""
    if not _core.SMALL_KERNELS_AVAILABLE:
        pytest.skip("this CPU or build has no AVX2 kernels")
    net = fastnn.Network([3, 37], hidden="identity", output=output,
                         cost="cross-entropy" if output == "sigmoid" else "log-likelihood",
                         dtype=dtype, seed=0)
    rng = np.random.default_rng(1)
    X = np.concatenate([rng.standard_normal((50, 3)) * s for s in (0.1, 3.0, 30.0, 300.0)])
    X = np.concatenate([X, [[1e4, 0, 0], [-1e4, 0, 0], [np.nan, 0, 0]]]).astype(dtype)
    outs = {}
    for vector in (False, True):
        old = _core.set_vector_exp(vector)
        try:
            out = np.empty((X.shape[0], 37), dtype=dtype)
            work = np.empty(_core.workspace_size(net._sizes_c, X.shape[0]), dtype=dtype)
            _core.feedforward(net._sizes_c, net._acts_c, net._cost_c, net.params, X, out, work,
                              X.shape[0])
            outs[vector] = out
        finally:
            _core.set_vector_exp(old)
    a, b = outs[True], outs[False]
    assert np.isnan(a[-1]).all() and np.isnan(b[-1]).all()
    ok = np.isfinite(b)
    np.testing.assert_array_equal(np.isfinite(a), ok)
    eps = np.finfo(dtype).eps
    tiny = np.finfo(dtype).tiny
    rel = np.abs(a[ok] - b[ok]) / np.maximum(np.abs(b[ok]), tiny)
    assert rel.max() <= 8 * eps
    assert ((a[:-1] >= 0) & (a[:-1] <= 1)).all()
    if output == "softmax":
        np.testing.assert_allclose(a[:-1].sum(axis=1), 1, rtol=8 * eps)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("threads", [1, 3])
def test_weights_norm2_is_the_sum_of_squares_of_the_weights_only(dtype, threads):
    """sum_l ||W_l||^2 in double over the weights (never the biases), any thread count."""
    old = fastnn.get_num_threads(), _core.set_split_thresholds(0, 1)
    try:
        fastnn.set_num_threads(threads)
        net = fastnn.Network([300, 170, 9, 4], dtype=dtype, seed=5)
        net.biases[0][:] = 1e6  # would dominate if biases were counted
        want = sum(float(np.sum(W.astype(np.float64) ** 2)) for W in net.weights)
        got = _core.weights_norm2(net._sizes_c, net._acts_c, net._cost_c, net.params)
        assert abs(got - want) <= 1e-13 * want
        assert net._l2_norm2() == got
    finally:
        fastnn.set_num_threads(old[0])
        _core.set_split_thresholds(*old[1])
