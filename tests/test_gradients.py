"""Gradients and costs against independent oracles.

- ``net.gradient`` / ``net.loss_and_gradient`` against central finite
  differences of ``net.loss`` for every allowed (hidden, output, cost) combination,
  both dtypes, labels and target matrices, with and without L2;
- ``net.loss`` against DESIGN.md's formulas written naively in NumPy;
- the stable cost (computed from z) against the naive formula where that is finite,
  and against closed forms where it is not.
"""
import warnings

import numpy as np
import pytest

import fastnn
from conftest import (DTYPES, HIDDEN, OUTPUT_COST, fd_gradient, make_data, np_forward, np_gradient,
                      np_loss, rel_err)

N_SAMPLES = 7
KINK = 1e-4  # relu layers: every pre-activation must be at least this far from 0


def _kink_free(net, X):
    """True if no relu pre-activation lies within KINK of 0 (finite differences are exact there)."""
    zs, _ = np_forward(net.sizes, net.activations, net.params, X)
    for z, name in zip(zs, net.activations):
        if name == "relu":
            if np.min(np.abs(z)) < KINK:
                return False
            if not np.any(z > 0):  # a layer that is all dead would make the check trivial
                return False
    return True


def problem(sizes, hidden, output, cost, dtype="float64", kind="labels", seed=0):
    """A network and data (X, y) whose relu layers are away from their kinks."""
    for attempt in range(200):
        s = seed * 1000 + attempt
        net = fastnn.Network(sizes, hidden=hidden, output=output, cost=cost, dtype=dtype, seed=s)
        X, y = make_data(N_SAMPLES, sizes[0], sizes[-1], seed=s,
                         kind="labels" if kind == "labels" else "soft")
        if sizes[-1] == 1 and kind != "labels":
            y = np.random.default_rng(s).random((N_SAMPLES, 1))
        X = X.astype(dtype).astype(np.float64)  # representable exactly in the net's dtype
        if _kink_free(net, X):
            return net, X, y
    raise AssertionError("could not draw a kink-free problem")


def as_float64(net):
    """The float64 network with exactly the same (cast) parameters."""
    net64 = fastnn.Network(net.sizes, hidden=list(net.hidden), output=net.output, cost=net.cost,
                           dtype="float64", seed=0)
    net64.params[:] = net.params.astype(np.float64)
    return net64


def check_gradient(net, X, y, lmbda):
    net64 = net if net.dtype == np.float64 else as_float64(net)
    fd = fd_gradient(net64, X, y, lmbda, eps=1e-6)
    assert np.linalg.norm(fd) > 1e-8, "degenerate problem: zero gradient"
    g = net.gradient(X, y, lmbda)
    assert g.dtype == net.dtype and g.shape == net.params.shape
    cost, g2 = net.loss_and_gradient(X, y, lmbda)
    tol = 1e-6 if net.dtype == np.float64 else 1e-3
    err = rel_err(g, fd)
    assert err < tol, f"gradient vs finite differences: relative error {err:.3g}"
    assert rel_err(g2, fd) < tol
    np.testing.assert_array_equal(g, g2)
    assert cost == pytest.approx(net.loss(X, y, lmbda), rel=1e-14, abs=0)
    if net.dtype == np.float64:
        # element-wise too, and against an independent per-sample backprop
        np.testing.assert_allclose(g, fd, rtol=1e-5, atol=1e-7 * np.max(np.abs(fd)))
        np.testing.assert_allclose(g, np_gradient(net, X, y, lmbda), rtol=1e-10,
                                   atol=1e-13 * np.max(np.abs(fd)))
    return err


@pytest.mark.parametrize("lmbda", [0.0, 2.5])
@pytest.mark.parametrize("kind", ["labels", "targets"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("output,cost", OUTPUT_COST)
@pytest.mark.parametrize("hidden", HIDDEN)
def test_gradient_matches_finite_differences(hidden, output, cost, dtype, kind, lmbda):
    net, X, y = problem([3, 4, 3], hidden, output, cost, dtype, kind,
                        seed=HIDDEN.index(hidden) * 10 + OUTPUT_COST.index((output, cost)))
    check_gradient(net, X, y, lmbda)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("output,cost", [("sigmoid", "cross-entropy"), ("softmax", "log-likelihood"),
                                         ("tanh", "quadratic"), ("relu", "quadratic")])
@pytest.mark.parametrize("hidden", [("tanh", "relu"), ("relu", "sigmoid"), ("identity", "tanh"),
                                    ("sigmoid", "identity")])
def test_gradient_two_hidden_layers_of_different_activations(hidden, output, cost, dtype):
    net, X, y = problem([3, 5, 4, 3], list(hidden), output, cost, dtype, "labels", seed=7)
    assert net.hidden == hidden
    check_gradient(net, X, y, 0.0)
    check_gradient(net, X, y, 1.5)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", ["labels", "targets"])
@pytest.mark.parametrize("lmbda", [0.0, 1.0])
def test_gradient_single_output_cross_entropy(kind, lmbda, dtype):
    net, X, y = problem([3, 4, 1], "tanh", "sigmoid", "cross-entropy", dtype, kind, seed=3)
    if kind == "labels":
        assert set(np.unique(y)) <= {0, 1}
    else:
        assert y.shape == (N_SAMPLES, 1)
    check_gradient(net, X, y, lmbda)


def test_gradient_single_output_quadratic():
    net, X, y = problem([3, 4, 1], "relu", "identity", "quadratic", "float64", "targets", seed=5)
    check_gradient(net, X, y, 0.3)


def test_gradient_without_hidden_layer():
    net, X, y = problem([3, 4], "sigmoid", "softmax", "log-likelihood", "float64", "labels", seed=2)
    check_gradient(net, X, y, 0.5)


# --------------------------------------------------------------------------- the cost itself


@pytest.mark.parametrize("lmbda", [0.0, 3.0])
@pytest.mark.parametrize("kind", ["labels", "targets"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("output,cost", OUTPUT_COST)
@pytest.mark.parametrize("hidden", [HIDDEN, ("relu", "tanh")])
def test_loss_matches_design_formulas(hidden, output, cost, dtype, kind, lmbda):
    sizes = [3] + [4] * len(hidden) + [3]
    net = fastnn.Network(sizes, hidden=list(hidden), output=output, cost=cost, dtype=dtype, seed=4)
    X, y = make_data(11, 3, 3, seed=8, kind="labels" if kind == "labels" else "soft")
    expected = np_loss(net, X.astype(dtype), y, lmbda)  # float64 math on the net's exact params
    got = net.loss(X, y, lmbda)
    assert isinstance(got, float)
    assert got == pytest.approx(expected, rel=1e-12 if dtype == "float64" else 2e-5)
    assert net.evaluate(X, y, lmbda)["cost"] == got


def test_loss_l2_term_uses_number_of_rows_given():
    net = fastnn.Network([2, 3, 2], seed=0)
    X, y = make_data(5, 2, 2, seed=0)
    sq = sum(float(np.sum(W ** 2)) for W in net.weights)
    assert net.loss(X, y, 4.0) - net.loss(X, y, 0.0) == pytest.approx(4.0 / (2 * 5) * sq, rel=1e-12)
    # the bias is not regularized: changing it moves only C0
    d0 = net.loss(X, y, 4.0) - net.loss(X, y)
    net.biases[0][:] += 3.0
    assert net.loss(X, y, 4.0) - net.loss(X, y) == pytest.approx(d0, rel=1e-12)


def _one_layer(output, cost, z, dtype="float64"):
    """A [1, k] network whose output pre-activations are exactly z for the input x = 1."""
    z = np.asarray(z, dtype=np.float64)
    net = fastnn.Network([1, z.size], hidden=[], output=output, cost=cost, dtype=dtype)
    net.weights[0][:, 0] = z
    net.biases[0][:] = 0
    return net, np.ones((1, 1))


@pytest.mark.parametrize("dtype", DTYPES)
def test_stable_cross_entropy_equals_naive_where_finite(dtype):
    zs = np.linspace(-12, 12, 49)
    for y in (0.0, 0.3, 1.0):
        for z in zs:
            net, x = _one_layer("sigmoid", "cross-entropy", [z], dtype)
            zz = float(np.asarray(z, dtype=dtype))
            y_seen = float(np.asarray(y, dtype=dtype))  # the target the net sees
            a = 1 / (1 + np.exp(-zz))
            naive = -(y_seen * np.log(a) + (1 - y_seen) * np.log(1 - a))
            assert np.isfinite(naive)
            tol = 1e-9 if dtype == "float64" else 1e-6  # float32 rounds y * z
            assert net.loss(x, [[y]]) == pytest.approx(naive, rel=tol, abs=1e-12)


@pytest.mark.parametrize("dtype", DTYPES)
def test_stable_log_likelihood_equals_naive_where_finite(dtype):
    rng = np.random.default_rng(0)
    for scale in (0.1, 1.0, 10.0, 60.0):
        z = (rng.standard_normal(5) * scale).astype(dtype).astype(np.float64)
        e = np.exp(z - z.max())
        a = e / e.sum()
        for label in range(5):
            naive = -np.log(a[label])
            net, x = _one_layer("softmax", "log-likelihood", z, dtype)
            assert np.isfinite(naive)
            assert net.loss(x, [label]) == pytest.approx(naive, rel=1e-9, abs=1e-12)


@pytest.mark.parametrize("dtype", DTYPES)
def test_saturated_costs_stay_finite_and_exact(dtype):
    # cross-entropy: C0 = softplus(z) - y z, which is |z| for a confidently wrong output
    with np.errstate(all="ignore"):
        for z, y in ((1000.0, 0.0), (-1000.0, 1.0), (80.0, 0.0)):
            net, x = _one_layer("sigmoid", "cross-entropy", [z], dtype)
            a = 1 / (1 + np.exp(-np.float32(z) if dtype == "float32" else -z))
            naive = -(y * np.log(a) + (1 - y) * np.log(1 - a))
            assert not np.isfinite(naive)  # the naive formula breaks down here
            assert net.loss(x, [[y]]) == pytest.approx(abs(z), rel=1e-12)
        # confidently right: the cost is ~e^-|z|, not 0 and not NaN
        net, x = _one_layer("sigmoid", "cross-entropy", [-50.0], dtype)
        assert net.loss(x, [[0.0]]) == pytest.approx(np.exp(-50.0), rel=1e-6)
    # log-likelihood: logsumexp(z) - z_y
    net, x = _one_layer("softmax", "log-likelihood", [1000.0, 0.0, -5.0], dtype)
    assert net.loss(x, [1]) == pytest.approx(1000.0, rel=1e-12)
    assert net.loss(x, [2]) == pytest.approx(1005.0, rel=1e-12)
    assert net.loss(x, [0]) == pytest.approx(np.exp(-1000.0) + np.exp(-1005.0), abs=1e-300)
    # and the gradient stays finite and right: dC/dz = a - y = (1, -1, 0) for label 1
    g = net.gradient(x, [1])
    np.testing.assert_allclose(g[:3], [1.0, -1.0, 0.0], atol=1e-7)


@pytest.mark.parametrize("dtype", DTYPES)
def test_stable_single_output_cross_entropy_with_labels(dtype):
    net, x = _one_layer("sigmoid", "cross-entropy", [3.0], dtype)
    a = 1 / (1 + np.exp(-3.0))
    assert net.loss(x, [1]) == pytest.approx(-np.log(a), rel=1e-6)
    assert net.loss(x, [0]) == pytest.approx(-np.log(1 - a), rel=1e-6)


def test_loss_without_l2_ignores_an_overflowing_weight_norm():
    # W = 1e200 so ||W||^2 overflows, but the input is 0: z = 0, a = 0, C0 = 0 exactly
    net = fastnn.Network([1, 1], hidden=[], output="identity", cost="quadratic")
    net.weights[0][:] = 1e200
    net.biases[0][:] = 0.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert net.loss([[0.0]], [[0.0]], 0.0) == 0.0
