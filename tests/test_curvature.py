"""Exact curvature: Hessian-vector products (R-operator), Gauss-Newton products, full Hessians.

The oracles are independent of fastnn.curvature: central differences of exact gradients
(``net.gradient``, itself checked against per-sample backprop in test_gradients.py), a
Hessian assembled column by column from such differences, the closed form of a linear
least-squares Hessian, and J^T H_L J formed explicitly from finite-difference Jacobians of
the network's output (written with conftest's float64 forward pass).
"""
import numpy as np
import pytest

import fastnn
from fastnn import curvature
from conftest import HIDDEN, OUTPUT_COST, act, np_forward, onehot, rel_err

ALL_PAIRS = [(h, o, c) for h in HIDDEN for (o, c) in OUTPUT_COST]


def _net(sizes, hidden, output, cost, dtype="float64", seed=0, scale=0.4):
    net = fastnn.Network(sizes, hidden=hidden, output=output, cost=cost, dtype=dtype, seed=seed)
    # move away from the initialization's symmetric, small weights so that every
    # second-order term (f'' of saturating units, the output's curvature) is non-trivial
    rng = np.random.default_rng(seed + 100)
    net.params[:] += scale * rng.standard_normal(net.n_params)
    return net


def _data(n, n_in, n_out, kind, seed=1):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, n_in))
    if kind == "labels":
        y = rng.integers(0, max(n_out, 2), n)
    else:  # rows of positive targets (valid for every cost; not normalized)
        y = rng.random((n, n_out)) * 0.9 + 0.05
    return X, y


def _fd_hv(net, X, y, v, lmbda, eps=1e-5):
    """(g(w + eps v) - g(w - eps v)) / (2 eps) with exact gradients."""
    p0 = net.params.copy()
    try:
        net.params[:] = p0 + eps * v
        gp = net.gradient(X, y, lmbda)
        net.params[:] = p0 - eps * v
        gm = net.gradient(X, y, lmbda)
    finally:
        net.params[:] = p0
    return (gp - gm) / (2 * eps)


def _min_abs_hidden_z(net, X):
    zs, _ = np_forward(net.sizes, net.activations, net.params, X)
    return min(np.min(np.abs(z)) for z in zs[:-1])


# --------------------------------------------------------------------------- H v


@pytest.mark.parametrize("hidden,output,cost", ALL_PAIRS)
@pytest.mark.parametrize("kind", ["labels", "targets"])
def test_hvp_equals_central_difference_of_gradients(hidden, output, cost, kind):
    net = _net([5, 6, 4, 3], hidden, output, cost)
    X, y = _data(31, 5, 3, kind)
    if hidden == "relu":  # keep every hidden pre-activation off relu's kink
        assert _min_abs_hidden_z(net, X) > 1e-4
    v = np.random.default_rng(7).standard_normal(net.n_params)
    for lmbda in (0.0, 3.0):
        hv = net.hessian_vector_product(X, y, v, lmbda)
        fd = _fd_hv(net, X, y, v, lmbda)
        assert hv.shape == (net.n_params,) and hv.dtype == np.float64
        assert rel_err(hv, fd) < 1e-7, (hidden, output, cost, kind, lmbda, rel_err(hv, fd))


@pytest.mark.parametrize("output,cost", [("sigmoid", "cross-entropy"), ("sigmoid", "quadratic"),
                                         ("identity", "quadratic")])
def test_hvp_single_output_neuron(output, cost):
    net = _net([4, 5, 1], "tanh", output, cost)
    X, y = _data(19, 4, 1, "labels")
    v = np.random.default_rng(3).standard_normal(net.n_params)
    assert rel_err(net.hessian_vector_product(X, y, v, 1.0), _fd_hv(net, X, y, v, 1.0)) < 1e-7


def test_hvp_no_hidden_layer_and_deep_network():
    for sizes, hidden in (([4, 3], "sigmoid"), ([4, 5, 4, 4, 3], ["tanh", "sigmoid", "identity"])):
        net = _net(sizes, hidden, "softmax", "log-likelihood")
        X, y = _data(17, 4, 3, "labels")
        v = np.random.default_rng(5).standard_normal(net.n_params)
        assert rel_err(net.hessian_vector_product(X, y, v), _fd_hv(net, X, y, v, 0.0)) < 1e-7


@pytest.mark.parametrize("hidden,output,cost", ALL_PAIRS)
def test_hvp_is_symmetric(hidden, output, cost):
    """u.Hv = v.Hu to 1e-10: a finite-difference product (or a product missing a
    second-order term of one side) fails this."""
    net = _net([5, 6, 4, 3], hidden, output, cost, seed=2)
    X, y = _data(29, 5, 3, "targets", seed=4)
    rng = np.random.default_rng(11)
    u, v = rng.standard_normal((2, net.n_params))
    for lmbda in (0.0, 2.0):
        uHv = u @ net.hessian_vector_product(X, y, v, lmbda)
        vHu = v @ net.hessian_vector_product(X, y, u, lmbda)
        scale = max(np.linalg.norm(u) * np.linalg.norm(net.hessian_vector_product(X, y, v, lmbda)),
                    1e-300)
        assert abs(uHv - vHu) <= 1e-10 * scale, (uHv, vHu)


def test_hvp_labels_equal_one_hot_targets():
    net = _net([5, 6, 3], "sigmoid", "softmax", "log-likelihood")
    X, y = _data(23, 5, 3, "labels")
    v = np.random.default_rng(0).standard_normal(net.n_params)
    a = net.hessian_vector_product(X, y, v, 0.5)
    b = net.hessian_vector_product(X, onehot(y, 3), v, 0.5)
    np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14)


def test_hvp_is_linear_in_v_and_l2_term_exact():
    net = _net([4, 5, 3], "tanh", "sigmoid", "cross-entropy")
    X, y = _data(21, 4, 3, "labels")
    rng = np.random.default_rng(1)
    u, v = rng.standard_normal((2, net.n_params))
    H = lambda w, lm=0.0: net.hessian_vector_product(X, y, w, lm)  # noqa: E731
    np.testing.assert_allclose(H(2 * u - 3 * v), 2 * H(u) - 3 * H(v), rtol=1e-11, atol=1e-12)
    lm, n = 4.0, X.shape[0]
    mask = net._weight_mask
    np.testing.assert_allclose(H(v, lm) - H(v), np.where(mask, lm / n * v, 0.0), atol=1e-13)


def test_chunking_gives_the_same_product(monkeypatch):
    net = _net([6, 7, 4], "sigmoid", "softmax", "quadratic")
    X, y = _data(53, 6, 4, "labels")
    v = np.random.default_rng(2).standard_normal(net.n_params)
    whole = net.hessian_vector_product(X, y, v, 1.0)
    whole_g = net.gauss_newton_vector_product(X, y, v, 1.0)
    monkeypatch.setattr(curvature, "CHUNK_ROWS", 8)
    np.testing.assert_allclose(net.hessian_vector_product(X, y, v, 1.0), whole, rtol=1e-12,
                               atol=1e-14)
    np.testing.assert_allclose(net.gauss_newton_vector_product(X, y, v, 1.0), whole_g,
                               rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("hidden,output,cost", [("sigmoid", "sigmoid", "cross-entropy"),
                                                ("tanh", "softmax", "log-likelihood"),
                                                ("relu", "tanh", "quadratic"),
                                                ("sigmoid", "softmax", "quadratic")])
def test_float32_close_to_float64(hidden, output, cost):
    net64 = _net([6, 8, 3], hidden, output, cost)
    net32 = fastnn.Network(net64.sizes, hidden=hidden, output=output, cost=cost, dtype="float32")
    net32.params[:] = net64.params
    X, y = _data(40, 6, 3, "labels")
    v = np.random.default_rng(9).standard_normal(net64.n_params)
    h64 = net64.hessian_vector_product(X, y, v, 1.0)
    h32 = net32.hessian_vector_product(X, y, v, 1.0)
    assert h32.dtype == np.float32
    assert rel_err(h32, h64) < 1e-4
    g64 = net64.gauss_newton_vector_product(X, y, v, 1.0)
    g32 = net32.gauss_newton_vector_product(X, y, v, 1.0)
    assert g32.dtype == np.float32
    assert rel_err(g32, g64) < 1e-4
    H32 = net32.hessian(X, y)
    assert H32.dtype == np.float32
    assert rel_err(H32, net64.hessian(X, y)) < 1e-4


def test_network_methods_delegate_to_curvature():
    net = _net([4, 5, 3], "tanh", "softmax", "log-likelihood")
    X, y = _data(12, 4, 3, "labels")
    v = np.random.default_rng(4).standard_normal(net.n_params)
    np.testing.assert_array_equal(net.hessian_vector_product(X, y, v, 1.0),
                                  curvature.hessian_vector_product(net, X, y, v, 1.0))
    np.testing.assert_array_equal(net.gauss_newton_vector_product(X, y, v),
                                  curvature.gauss_newton_vector_product(net, X, y, v))
    np.testing.assert_array_equal(net.hessian(X, y), curvature.hessian(net, X, y))


def test_products_do_not_change_the_network():
    net = _net([4, 5, 3], "sigmoid", "sigmoid", "cross-entropy")
    X, y = _data(12, 4, 3, "labels")
    before = net.params.copy()
    v = np.ones(net.n_params)
    net.hessian_vector_product(X, y, v, 1.0)
    net.gauss_newton_vector_product(X, y, v, 1.0)
    net.hessian(X, y, 1.0)
    np.testing.assert_array_equal(net.params, before)


# --------------------------------------------------------------------------- full Hessian


def _fd_hessian(net, X, y, lmbda, eps=1e-5):
    """Column j = central difference of exact gradients along e_j (independent of R-ops)."""
    P = net.n_params
    H = np.empty((P, P))
    for j in range(P):
        e = np.zeros(P)
        e[j] = 1.0
        H[:, j] = _fd_hv(net, X, y, e, lmbda, eps)
    return H


@pytest.mark.parametrize("hidden,output,cost,kind", [
    ("sigmoid", "softmax", "log-likelihood", "labels"),
    ("tanh", "sigmoid", "cross-entropy", "targets"),
    ("tanh", "tanh", "quadratic", "targets"),
    ("sigmoid", "softmax", "quadratic", "labels"),
    ("relu", "identity", "quadratic", "targets"),
])
def test_full_hessian_equals_finite_difference_assembly(hidden, output, cost, kind):
    net = _net([4, 5, 3], hidden, output, cost, seed=3)
    X, y = _data(25, 4, 3, kind, seed=5)
    H = net.hessian(X, y, 2.0)
    P = net.n_params
    assert H.shape == (P, P) and H.dtype == np.float64
    np.testing.assert_array_equal(H, H.T)
    fd = _fd_hessian(net, X, y, 2.0)
    assert np.max(np.abs(H - fd)) <= 1e-6 * max(1.0, np.max(np.abs(fd)))


def test_full_hessian_columns_are_hessian_vector_products():
    net = _net([3, 4, 4, 2], ["tanh", "sigmoid"], "softmax", "log-likelihood", seed=4)
    X, y = _data(15, 3, 2, "labels")
    H = net.hessian(X, y, 1.0)
    rng = np.random.default_rng(0)
    v = rng.standard_normal(net.n_params)
    np.testing.assert_allclose(H @ v, net.hessian_vector_product(X, y, v, 1.0), rtol=1e-10,
                               atol=1e-12)


def _linear_least_squares_hessian(X, n_out, lmbda):
    """Closed form for one identity layer and quadratic cost.

    C = (1/2n) sum_x ||W x + b - y||^2 + lmbda/(2n) ||W||^2. Output unit i depends only on
    its row theta_i = (W_i., b_i), through x~ = (x, 1): C is a sum over i of
    (1/2n) ||X~ theta_i - Y_:i||^2, so the Hessian is block-diagonal over the units, each block
    A = X~^T X~ / n: in the order (theta_0, theta_1, ...) it is kron(I_k, A). fastnn's layout
    lists all of W (row-major: W_ij at i*d + j) and then b (b_i at k*d + i); L2 adds lmbda/n on
    the weights."""
    n, d = X.shape
    Xt = np.hstack([X, np.ones((n, 1))])
    A = Xt.T @ Xt / n
    H_units = np.kron(np.eye(n_out), A)           # index i*(d+1) + j, j = d for the bias
    order = [i * (d + 1) + j for i in range(n_out) for j in range(d)] + \
            [i * (d + 1) + d for i in range(n_out)]
    H = H_units[np.ix_(order, order)]
    H[np.arange(n_out * d), np.arange(n_out * d)] += lmbda / n
    return H


@pytest.mark.parametrize("kind", ["labels", "targets"])
def test_full_hessian_closed_form_linear_least_squares(kind):
    net = _net([5, 3], "identity", "identity", "quadratic")
    X, y = _data(40, 5, 3, kind)
    for lmbda in (0.0, 3.0):
        H = net.hessian(X, y, lmbda)
        expected = _linear_least_squares_hessian(X, 3, lmbda)
        np.testing.assert_allclose(H, expected, rtol=1e-12, atol=1e-13)
    # it does not depend on the parameters or the targets (the cost is quadratic)
    net.params[:] = 7.0
    np.testing.assert_allclose(net.hessian(X, np.zeros((40, 3))), _linear_least_squares_hessian(
        X, 3, 0.0), rtol=1e-12, atol=1e-13)


def test_full_hessian_first_layer_groups_and_chunks(monkeypatch):
    """The first layer's columns are built in groups of hidden units and pieces of rows:
    any grouping gives the same matrix, and it equals the column-by-column products."""
    net = _net([5, 6, 4, 3], ["sigmoid", "tanh"], "softmax", "quadratic", seed=8)
    X, y = _data(45, 5, 3, "labels")
    H = net.hessian(X, y, 1.5)
    P = net.n_params
    cols = np.stack([net.hessian_vector_product(X, y, e, 1.5) for e in np.eye(P)], axis=1)
    assert np.max(np.abs(H - cols)) <= 1e-12 * np.max(np.abs(cols))
    monkeypatch.setattr(curvature, "_FIRST_LAYER_BYTES", 1)   # one hidden unit per group
    monkeypatch.setattr(curvature, "CHUNK_ROWS", 8)
    monkeypatch.setattr(curvature, "_HESSIAN_BLOCK", 5)
    np.testing.assert_allclose(net.hessian(X, y, 1.5), H, rtol=1e-12, atol=1e-14)


def test_full_hessian_deep_linear_network_matches_finite_differences():
    """Identity activations with hidden layers: the cost is no longer quadratic in the
    parameters (products of weight matrices), so the Hessian has cross terms."""
    net = _net([3, 4, 2], "identity", "identity", "quadratic")
    X, y = _data(20, 3, 2, "targets")
    H = net.hessian(X, y)
    assert np.max(np.abs(H - _fd_hessian(net, X, y, 0.0))) < 1e-6


def test_hessian_refuses_what_does_not_fit():
    net = fastnn.Network([784, 1000, 10], dtype="float32", seed=0)  # P = 795 010
    X = np.zeros((3, 784))
    with pytest.raises(MemoryError) as info:
        net.hessian(X, [0, 1, 2])
    msg = str(info.value)
    assert "795010" in msg.replace(",", "") and "TiB" in msg
    assert "HessianFree" in msg and "hessian_vector_product" in msg
    assert isinstance(info.value, ValueError)
    assert isinstance(info.value, curvature.CurvatureMemoryError)
    small = _net([4, 5, 3], "sigmoid", "sigmoid", "cross-entropy")
    with pytest.raises(curvature.CurvatureMemoryError, match="allowed"):
        curvature.hessian(small, np.zeros((3, 4)), [0, 1, 2], max_bytes=1000)


def test_memory_limit_reads_meminfo_or_falls_back(monkeypatch):
    limit = curvature.memory_limit()
    assert limit > 0
    monkeypatch.setattr(curvature, "_available_bytes", lambda: None)
    assert curvature.memory_limit() == 2 << 30
    monkeypatch.setattr(curvature, "_available_bytes", lambda: 16 << 30)
    assert curvature.memory_limit() == 4 << 30


# --------------------------------------------------------------------------- Gauss-Newton


def _outputs(net, params, X, which):
    zs, As = np_forward(net.sizes, net.activations, params, X)
    return zs[-1] if which == "z" else As[-1]


def _explicit_gauss_newton(net, X, y, lmbda, eps=1e-6):
    """(1/n) sum_x J_x^T H_L J_x + (lmbda/n) mask, with J from central differences of the
    network's output and H_L written from the loss (independent of fastnn.curvature)."""
    matching = net.cost != "quadratic" or net.output == "identity"
    which = "z" if matching else "a"
    p0 = net.params.astype(np.float64)
    n, k = X.shape[0], net.sizes[-1]
    P = p0.shape[0]
    J = np.empty((n, k, P))
    for j in range(P):
        e = np.zeros(P)
        e[j] = eps
        J[:, :, j] = (_outputs(net, p0 + e, X, which) - _outputs(net, p0 - e, X, which)) / (2 * eps)
    y = np.asarray(y)
    T = onehot(y, k) if y.ndim == 1 else y.astype(np.float64)
    z = _outputs(net, p0, X, "z")
    G = np.zeros((P, P))
    for x in range(n):
        if net.cost == "cross-entropy":
            a = act("sigmoid", z[x])
            HL = np.diag(a * (1 - a))
        elif net.cost == "log-likelihood":
            a = act("softmax", z[x][None])[0]
            HL = T[x].sum() * (np.diag(a) - np.outer(a, a))
        else:
            HL = np.eye(k)  # quadratic: on z for identity, on a otherwise
        G += J[x].T @ HL @ J[x]
    G /= n
    mask = net._weight_mask
    G[np.arange(P), np.arange(P)] += np.where(mask, lmbda / n, 0.0)
    return G


@pytest.mark.parametrize("output,cost", OUTPUT_COST)
@pytest.mark.parametrize("hidden", ["tanh", "sigmoid"])
def test_gauss_newton_equals_explicit_jt_hl_j(hidden, output, cost):
    net = _net([3, 4, 3], hidden, output, cost, seed=6)
    X, y = _data(9, 3, 3, "targets" if hidden == "tanh" else "labels", seed=2)
    G = _explicit_gauss_newton(net, X, y, 1.5)
    rng = np.random.default_rng(8)
    for _ in range(3):
        v = rng.standard_normal(net.n_params)
        gv = net.gauss_newton_vector_product(X, y, v, 1.5)
        assert rel_err(gv, G @ v) < 1e-7, rel_err(gv, G @ v)


@pytest.mark.parametrize("hidden,output,cost", ALL_PAIRS)
def test_gauss_newton_is_positive_semidefinite_and_symmetric(hidden, output, cost):
    net = _net([5, 6, 3], hidden, output, cost, seed=1, scale=1.0)
    X, y = _data(30, 5, 3, "targets")
    rng = np.random.default_rng(12)
    for _ in range(5):
        u, v = rng.standard_normal((2, net.n_params))
        gv = net.gauss_newton_vector_product(X, y, v)
        assert v @ gv >= -1e-12 * (v @ v)
        gu = net.gauss_newton_vector_product(X, y, u)
        assert abs(u @ gv - v @ gu) <= 1e-10 * max(np.linalg.norm(u) * np.linalg.norm(gv), 1e-300)
    # the smallest eigenvalue of the assembled G is >= 0 (to rounding) while H's is not
    G = curvature._hessian(curvature.Linearization(net, *net._check_Xy(X, y), exact=False),
                           np.float64, gn=True)
    assert np.linalg.eigvalsh(G).min() >= -1e-10 * np.abs(G).max()


def test_gauss_newton_equals_hessian_where_the_model_is_linear():
    """One layer (a generalized linear model) with a matching loss: no network curvature,
    so G = H exactly (sigmoid + cross-entropy, softmax + log-likelihood, least squares)."""
    for output, cost in (("sigmoid", "cross-entropy"), ("softmax", "log-likelihood"),
                         ("identity", "quadratic")):
        net = _net([5, 3], "sigmoid", output, cost)
        X, y = _data(33, 5, 3, "labels")
        v = np.random.default_rng(1).standard_normal(net.n_params)
        np.testing.assert_allclose(net.gauss_newton_vector_product(X, y, v, 1.0),
                                   net.hessian_vector_product(X, y, v, 1.0), rtol=1e-11,
                                   atol=1e-13)


def test_gauss_newton_differs_from_indefinite_hessian():
    net = _net([4, 6, 3], "tanh", "tanh", "quadratic", scale=1.0)
    X, y = _data(30, 4, 3, "targets")
    H = net.hessian(X, y)
    assert np.linalg.eigvalsh(H).min() < -1e-6   # this network is at a non-convex point
    v = np.random.default_rng(0).standard_normal(net.n_params)
    assert rel_err(net.gauss_newton_vector_product(X, y, v), H @ v) > 1e-3


# --------------------------------------------------------------------------- validation


def test_v_is_validated():
    net = _net([4, 5, 3], "sigmoid", "sigmoid", "cross-entropy")
    X, y = _data(6, 4, 3, "labels")
    P = net.n_params
    for fn in (net.hessian_vector_product, net.gauss_newton_vector_product):
        with pytest.raises(ValueError, match=rf"shape \({P},\).*\(3,\)"):
            fn(X, y, np.ones(3))
        with pytest.raises(ValueError, match="shape"):
            fn(X, y, np.ones((P, 1)))
        bad = np.ones(P)
        bad[5] = np.nan
        with pytest.raises(ValueError, match="finite.*index 5"):
            fn(X, y, bad)
        with pytest.raises(TypeError, match="real numbers"):
            fn(X, y, np.ones(P, dtype=complex))
        with pytest.raises(TypeError, match="real numbers"):
            fn(X, y, ["a"] * P)
        with pytest.raises(ValueError, match="lmbda"):
            fn(X, y, np.ones(P), -1.0)
        with pytest.raises(ValueError, match="'X'"):
            fn(np.ones((6, 3)), y, np.ones(P))
    assert net.hessian_vector_product(X, y, [0.0] * P).shape == (P,)  # lists are fine
