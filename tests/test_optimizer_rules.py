"""Adam, scikit-learn's per-batch L2 scale and the running training loss of train_steps,
checked against equations written here and against the NumPy reference."""
import numpy as np
import pytest

import fastnn
from fastnn import _core
from fastnn.training import Trainer


def _data(n=53, n_in=7, n_out=4, dtype="float64", seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, n_in)).astype(dtype)
    y = rng.integers(0, n_out, n).astype(np.intp)
    return X, y


def _net(dtype="float64", sizes=(7, 9, 4)):
    return fastnn.Network(list(sizes), hidden="tanh", output="softmax", cost="log-likelihood",
                          dtype=dtype, seed=1)


def test_adam_step_matches_the_equations():
    net = _net()
    rng = np.random.default_rng(3)
    p0 = net.params.copy()
    g = rng.normal(size=p0.shape)
    m = rng.normal(size=p0.shape) * 0.1
    s = rng.random(p0.shape) * 0.1
    eta, b1, b2, eps, l2, t = 0.01, 0.9, 0.999, 1e-8, 0.05, 7
    m0, s0 = m.copy(), s.copy()
    assert _core.adam_step(net._sizes_c, net._acts_c, net._cost_c, net.params, g, m, s,
                           eta, b1, b2, eps, l2, t)
    G = g + l2 * p0 * net._weight_mask          # L2 on weights only
    m_ref = b1 * m0 + (1 - b1) * G
    s_ref = b2 * s0 + (1 - b2) * G ** 2
    lr_t = eta * np.sqrt(1 - b2 ** t) / (1 - b1 ** t)
    np.testing.assert_allclose(m, m_ref, rtol=1e-14)
    np.testing.assert_allclose(s, s_ref, rtol=1e-14)
    np.testing.assert_allclose(net.params, p0 - lr_t * m_ref / (np.sqrt(s_ref) + eps), rtol=1e-13,
                               atol=1e-16)


@pytest.mark.parametrize("dtype,tol", [("float64", 1e-11), ("float32", 2e-4)])
@pytest.mark.parametrize("l2_scale", ["n", "batch"])
def test_adam_cython_equals_reference_over_epochs(dtype, tol, l2_scale, update_path):
    """Parameters, moments and the running loss (its ||W||^2 taken from the previous step's
    update pass) against the NumPy engine, on every kernel path."""
    X, y = _data(dtype=dtype)
    nets, opts, losses = [], [], []
    for engine in ("cython", "numpy"):
        net, opt = _net(dtype), fastnn.Adam(eta=0.01)
        tr = Trainer(net, X, np.empty((0, 4), dtype), y, batch_size=8, optimizer=opt,
                     lmbda=0.3, engine=engine, l2_scale=l2_scale)
        perm_rng = np.random.default_rng(5)
        ls = [tr.run_epoch(perm_rng.permutation(len(X)), want_loss=True) for _ in range(4)]
        nets.append(net), opts.append(opt), losses.append(ls)
    assert opts[0].t == opts[1].t == 4 * 7          # 53 rows in batches of 8: 7 steps an epoch
    scale = np.abs(nets[1].params).max()
    assert np.abs(nets[0].params - nets[1].params).max() / scale < tol
    np.testing.assert_allclose(losses[0], losses[1], rtol=tol)
    for a, b in zip(opts[0]._buffers, opts[1]._buffers):
        assert np.abs(a - b).max() / max(np.abs(b).max(), 1e-30) < tol * 10


def test_adam_state_continues_across_fits():
    X, y = _data()
    net_a, opt_a = _net(), fastnn.Adam(eta=0.01)
    net_a.fit(X, y, epochs=2, batch_size=10, optimizer=opt_a, shuffle=False, monitor_training=False)
    net_b, opt_b = _net(), fastnn.Adam(eta=0.01)
    net_b.fit(X, y, epochs=1, batch_size=10, optimizer=opt_b, shuffle=False, monitor_training=False)
    net_b.fit(X, y, epochs=1, batch_size=10, optimizer=opt_b, shuffle=False, monitor_training=False)
    assert opt_b.t == opt_a.t == 12
    np.testing.assert_allclose(net_b.params, net_a.params, rtol=1e-13)


@pytest.mark.parametrize("l2_scale", ["n", "batch"])
@pytest.mark.parametrize("n_in", [7, 45])
@pytest.mark.parametrize("mu,nesterov", [(0.0, False), (0.5, False), (0.5, True)],
                         ids=["plain", "momentum", "nesterov"])
@pytest.mark.parametrize("dtype,tol", [("float64", 1e-12), ("float32", 1e-5)])
def test_running_loss_is_the_pre_update_batch_cost(l2_scale, n_in, mu, nesterov, dtype, tol,
                                                   update_path):
    """loss_sum = sum over batches of m_b (C0_b + l2_b/2 ||W||^2) before each update (the
    kernels take ||W||^2 from the previous step's update pass), over two calls of an epoch
    split in two (the second call starts without a known ||W||^2)."""
    X, y = _data(n=23, n_in=n_in, dtype=dtype)
    lmbda, bs = 0.7, 5
    net = _net(dtype, sizes=(n_in, 9, 4))
    shadow = _net("float64", sizes=(n_in, 9, 4))
    shadow.params[:] = net.params
    opt = fastnn.SGD(eta=0.1, momentum=mu, nesterov=nesterov)
    perm = np.random.default_rng(2).permutation(len(X))
    tr = Trainer(net, X, np.empty((0, 4), dtype), y, batch_size=bs, optimizer=opt, lmbda=lmbda,
                 l2_scale=l2_scale)
    got = [tr.run_epoch(perm, want_loss=True), tr.run_epoch(perm, want_loss=True, chunk=10)]
    X64 = X.astype(np.float64)
    expected, v = [], np.zeros_like(shadow.params)
    for epoch in range(2):
        total = 0.0
        for s in range(0, len(X), bs):
            idx = perm[s:s + bs]
            m = len(idx)
            l2 = lmbda / m if l2_scale == "batch" else lmbda / len(X)
            # mean cost with L2 by the network's own loss (l2 = lmbda_eff / m)
            total += m * shadow.loss(X64[idx], y[idx], lmbda=l2 * m)
            g = shadow.gradient(X64[idx], y[idx]) + l2 * shadow.params * shadow._weight_mask
            v = mu * v - 0.1 * g
            shadow.params += (mu * v - 0.1 * g) if nesterov else v
        expected.append(total)
    assert got == pytest.approx(expected, rel=tol)
    np.testing.assert_allclose(net.params, shadow.params, rtol=tol * 10, atol=tol)


def test_adam_bad_hyper_parameters():
    with pytest.raises(ValueError, match="'eta' parameter of Adam"):
        fastnn.Adam(eta=0)
    with pytest.raises(ValueError, match="'beta1' parameter of Adam"):
        fastnn.Adam(beta1=1.0)
    with pytest.raises(ValueError, match="'epsilon' parameter of Adam"):
        fastnn.Adam(epsilon=-1e-8)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("rule", ["plain", "momentum", "nesterov", "adam"])
def test_vectorized_update_is_bitwise_the_scalar_one(dtype, rule):
    """update_segment's AVX2 twin (used where the CPU has AVX2) rounds exactly as the scalar
    loop, on segments with partial vectors at the end, and flags a non-finite result."""
    from fastnn import _core
    if not _core.SMALL_KERNELS_AVAILABLE:
        pytest.skip("this CPU or build has no AVX2 kernels")
    sizes = np.array([13, 7, 3], dtype=np.intc)  # segments of 91, 7, 21, 3 parameters
    acts = np.array([1, 4], dtype=np.intc)
    rng = np.random.default_rng(5)
    n = 13 * 7 + 7 + 7 * 3 + 3
    p0, g = (rng.standard_normal(n).astype(dtype) for _ in range(2))
    v0, s0 = rng.standard_normal(n).astype(dtype), rng.random(n).astype(dtype)
    results = []
    for vector in (False, True):
        old = _core.set_vector_update(vector)
        try:
            p, v, s = p0.copy(), v0.copy(), s0.copy()
            if rule == "adam":
                ok = _core.adam_step(sizes, acts, 2, p, g, v, s, 0.01, 0.9, 0.999, 1e-8, 0.3, 4)
            else:
                ok = _core.sgd_step(sizes, acts, 2, p, g, v, 0.1, 0.0 if rule == "plain" else 0.9,
                                    0.3, rule == "nesterov")
            bad_p = p0.copy()
            bad_p[-2] = np.finfo(dtype).max  # overflows in the update
            bad_g = g.copy()
            bad_g[-2] = -np.finfo(dtype).max
            vb, sb = v0.copy(), s0.copy()
            if rule == "adam":
                bad_g[-2] = np.nan
                bad_ok = _core.adam_step(sizes, acts, 2, bad_p, bad_g, vb, sb, 0.01, 0.9, 0.999, 1e-8, 0.3, 4)
            else:
                bad_ok = _core.sgd_step(sizes, acts, 2, bad_p, bad_g, vb, 10.0,
                                        0.0 if rule == "plain" else 0.9, 0.3, rule == "nesterov")
        finally:
            _core.set_vector_update(old)
        assert ok and not bad_ok
        results.append((p, v, s))
    for a, b in zip(*results):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(results[0][0], p0)


@pytest.mark.parametrize("dtype,tol", [("float64", 1e-12), ("float32", 2e-5)])
@pytest.mark.parametrize("n_in", [45, 28, 13])
@pytest.mark.parametrize("batch", [1, 7, 64])
def test_fused_adam_equals_blas_adam(dtype, tol, n_in, batch):
    """Adam's gradient formed and applied in one pass (the fused kernel: strips of 3, 2 and 1
    vectors of columns, the scalar tail, 4-row blocks of W and the rows left over) against
    BLAS's gradient followed by the one-pass update, over every step of two epochs."""
    if not _core.SMALL_KERNELS_AVAILABLE:
        pytest.skip("this CPU or build has no AVX2+FMA kernels")
    X, y = _data(n=3 * batch + 2, n_in=n_in, n_out=6, dtype=dtype, seed=n_in)
    results = []
    for fused in (True, False):
        old = _core.set_fused_adam(fused), _core.set_fused_max_rows(1 << 20)
        try:
            net = _net(dtype, sizes=(n_in, 13, 6))
            opt = fastnn.Adam(eta=0.01)
            tr = Trainer(net, X, np.empty((0, 6), dtype), y, batch_size=batch, optimizer=opt,
                         lmbda=0.3)
            perm_rng = np.random.default_rng(5)
            losses = [tr.run_epoch(perm_rng.permutation(len(X)), want_loss=True) for _ in range(2)]
            results.append((net.params.copy(), [b.copy() for b in opt._buffers], losses))
        finally:
            _core.set_fused_adam(old[0])
            _core.set_fused_max_rows(old[1])
    (p_f, b_f, l_f), (p_b, b_b, l_b) = results
    assert np.abs(p_f - p_b).max() / np.abs(p_b).max() < tol
    for a, b in zip(b_f, b_b):
        assert np.abs(a - b).max() / max(np.abs(b).max(), 1e-30) < tol * 10
    np.testing.assert_allclose(l_f, l_b, rtol=tol)
    assert np.abs(p_f - _net(dtype, sizes=(n_in, 13, 6)).params).max() > 1e-3   # it trained
