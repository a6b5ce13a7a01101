"""Errors at the public boundary: each names the parameter and the offending value."""
import re

import numpy as np
import pytest

import fastnn
from fastnn.training import EarlyStopping


def m(*parts):
    """A regex that finds the parts, in order, anywhere in the message."""
    return ".*".join(re.escape(str(p)) for p in parts)


@pytest.fixture
def net():
    return fastnn.Network([3, 4, 2], seed=0)


@pytest.fixture
def data():
    rng = np.random.default_rng(0)
    return rng.standard_normal((6, 3)), np.array([0, 1, 0, 1, 1, 0])


# --------------------------------------------------------------------------- SGD


@pytest.mark.parametrize("momentum", [-0.1, 1.0, 1.5, 2])
def test_momentum_outside_unit_interval(momentum):
    with pytest.raises(ValueError, match=m("'momentum'", "[0.0, 1.0)", f"Got {momentum!r}")):
        fastnn.SGD(eta=0.1, momentum=momentum)


@pytest.mark.parametrize("momentum", [0.0, 0.5, 0.999, np.float32(0.9)])
def test_momentum_inside_unit_interval_is_accepted(momentum):
    assert fastnn.SGD(momentum=momentum).momentum == pytest.approx(float(momentum))


@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_momentum_non_finite(value):
    with pytest.raises(ValueError, match=m("'momentum'", "finite", repr(value))):
        fastnn.SGD(momentum=value)


@pytest.mark.parametrize("eta", [0, 0.0, -0.1, -5])
def test_eta_not_positive(eta):
    with pytest.raises(ValueError, match=m("'eta'", "> 0", f"Got {eta!r}")):
        fastnn.SGD(eta=eta)


@pytest.mark.parametrize("eta", [np.nan, np.inf, -np.inf])
def test_eta_non_finite(eta):
    with pytest.raises(ValueError, match=m("'eta'", repr(eta))):
        fastnn.SGD(eta=eta)


@pytest.mark.parametrize("name,value", [("eta", "0.1"), ("eta", None), ("eta", True), ("momentum", "0.9"),
                                        ("momentum", [0.9])])
def test_sgd_non_numbers(name, value):
    with pytest.raises(TypeError, match=m(f"'{name}'", repr(value))):
        fastnn.SGD(**{name: value})


@pytest.mark.parametrize("value", ["yes", 1, None])
def test_nesterov_must_be_bool(value):
    with pytest.raises(TypeError, match=m("'nesterov'", repr(value))):
        fastnn.SGD(momentum=0.9, nesterov=value)


def test_optimizer_must_be_sgd(net, data):
    with pytest.raises(TypeError, match=m("'optimizer'", "'sgd'")):
        net.fit(*data, optimizer="sgd")


# --------------------------------------------------------------------------- fit parameters


@pytest.mark.parametrize("lmbda", [-0.1, -1])
def test_lmbda_negative_everywhere(net, data, lmbda):
    X, y = data
    for call in (lambda: net.fit(X, y, lmbda=lmbda), lambda: net.loss(X, y, lmbda),
                 lambda: net.gradient(X, y, lmbda), lambda: net.loss_and_gradient(X, y, lmbda),
                 lambda: net.evaluate(X, y, lmbda)):
        with pytest.raises(ValueError, match=m("'lmbda'", ">= 0", f"Got {lmbda!r}")):
            call()


def test_lmbda_non_finite(net, data):
    with pytest.raises(ValueError, match=m("'lmbda'", "nan")):
        net.fit(*data, lmbda=np.nan)
    with pytest.raises(TypeError, match=m("'lmbda'", "'1'")):
        net.loss(*data, "1")


@pytest.mark.parametrize("batch_size", [0, -3])
def test_batch_size_below_one(net, data, batch_size):
    with pytest.raises(ValueError, match=m("'batch_size'", ">= 1", f"Got {batch_size}")):
        net.fit(*data, batch_size=batch_size)


@pytest.mark.parametrize("batch_size", [2.5, 10.0, "10", None, True])
def test_batch_size_not_int(net, data, batch_size):
    with pytest.raises(TypeError, match=m("'batch_size'", "int", repr(batch_size))):
        net.fit(*data, batch_size=batch_size)


def test_batch_size_numpy_int_is_accepted(net, data):
    assert len(net.fit(*data, epochs=1, batch_size=np.int64(4))) == 1


@pytest.mark.parametrize("epochs", [-1, -10])
def test_epochs_negative(net, data, epochs):
    with pytest.raises(ValueError, match=m("'epochs'", ">= 0", f"Got {epochs}")):
        net.fit(*data, epochs=epochs)


@pytest.mark.parametrize("epochs", [1.5, "3"])
def test_epochs_not_int(net, data, epochs):
    with pytest.raises(TypeError, match=m("'epochs'", repr(epochs))):
        net.fit(*data, epochs=epochs)


def test_progress_every_and_seed(net, data):
    with pytest.raises(ValueError, match=m("'progress_every'", "Got 0")):
        net.fit(*data, progress_every=0)
    with pytest.raises(ValueError, match=m("'seed'", "Got -1")):
        net.fit(*data, seed=-1)
    with pytest.raises(ValueError, match=m("'seed'", "1.5")):
        fastnn.Network([3, 2], seed=1.5)


def test_callbacks_must_be_callable(net, data):
    with pytest.raises(TypeError, match=m("'callbacks'", "42")):
        net.fit(*data, callbacks=[42])


def test_early_stopping_parameters():
    with pytest.raises(ValueError, match=m("'patience'", "EarlyStopping", "Got 0")):
        EarlyStopping(patience=0)
    with pytest.raises(ValueError, match=m("'min_delta'", "Got -1.0")):
        EarlyStopping(min_delta=-1.0)
    with pytest.raises(ValueError, match=m("'monitor'", "'loss'")):
        EarlyStopping(monitor="loss")


# --------------------------------------------------------------------------- network structure


@pytest.mark.parametrize("sizes", [[], [784], (5,)])
def test_sizes_fewer_than_two_layers(sizes):
    with pytest.raises(ValueError, match=m("'sizes'", "at least 2", repr(list(sizes)))):
        fastnn.Network(sizes)


@pytest.mark.parametrize("sizes", [[3, 0, 2], [3, -4], [0, 2], [3, 2, 0]])
def test_sizes_non_positive(sizes):
    with pytest.raises(ValueError, match=m("'sizes'", "positive", repr(sizes))):
        fastnn.Network(sizes)


@pytest.mark.parametrize("sizes", [[3, 2.5], [3.0, 2], ["3", 2], [3, None], [3, True]])
def test_sizes_non_integers(sizes):
    with pytest.raises((ValueError, TypeError), match=m("'sizes'", repr(sizes))):
        fastnn.Network(sizes)


def test_sizes_not_a_sequence():
    with pytest.raises(TypeError, match=m("'sizes'", "Got 5")):
        fastnn.Network(5)


def test_sizes_numpy_ints_are_accepted():
    net = fastnn.Network(np.array([3, 4, 2]))
    assert net.sizes == (3, 4, 2) and all(type(s) is int for s in net.sizes)


@pytest.mark.parametrize("param,value", [("hidden", "sigmod"), ("hidden", "ReLU"), ("output", "linear"),
                                         ("cost", "mse"), ("cost", "cross_entropy"), ("init", "xavier"),
                                         ("output", 3), ("output", None)])
def test_unknown_names(param, value):
    with pytest.raises(ValueError, match=m(f"'{param}'", f"Got {value!r}")) as info:
        fastnn.Network([3, 4, 2], **{param: value})
    valid = {"hidden": ["sigmoid", "tanh", "relu", "identity"],
             "output": ["sigmoid", "tanh", "relu", "identity", "softmax"],
             "cost": ["quadratic", "cross-entropy", "log-likelihood"],
             "init": ["default", "large", "glorot", "he"]}[param]
    for name in valid:  # the message names the valid choices
        assert repr(name) in str(info.value)


def test_hidden_not_a_name_or_list():
    with pytest.raises((ValueError, TypeError), match=m("'hidden'", "3")):
        fastnn.Network([3, 4, 2], hidden=3)


def test_unknown_name_in_hidden_list():
    with pytest.raises(ValueError, match=m("'hidden'", "'tan'")):
        fastnn.Network([3, 4, 4, 2], hidden=["relu", "tan"])


def test_hidden_list_of_wrong_length():
    with pytest.raises(ValueError, match=m("'hidden'", "2", "Got a list of 3")):
        fastnn.Network([3, 4, 4, 2], hidden=["relu", "tanh", "relu"])


def test_softmax_as_hidden_activation():
    with pytest.raises(ValueError, match=m("'hidden'", "softmax", "output", "Got 'softmax'")):
        fastnn.Network([3, 4, 2], hidden="softmax", output="softmax", cost="log-likelihood")
    with pytest.raises(ValueError, match=m("'hidden'", "'softmax'")):
        fastnn.Network([3, 4, 4, 2], hidden=["relu", "softmax"])


def test_unknown_hidden_name_without_hidden_layers():
    with pytest.raises(ValueError, match="'hidden'"):
        fastnn.Network([3, 2], hidden="bogus")


@pytest.mark.parametrize("output,cost", [("tanh", "cross-entropy"), ("softmax", "cross-entropy"),
                                         ("identity", "cross-entropy"), ("sigmoid", "log-likelihood"),
                                         ("tanh", "log-likelihood"), ("relu", "log-likelihood")])
def test_mismatched_cost_and_output(output, cost):
    with pytest.raises(ValueError, match=m(repr(cost), repr(output))) as info:
        fastnn.Network([3, 4, 2], output=output, cost=cost)
    msg = str(info.value)
    assert "Valid" in msg or "valid" in msg
    # the valid choices: cross-entropy goes with sigmoid, log-likelihood with softmax
    assert re.search(r"'cross-entropy'[^;]*'sigmoid'", msg)
    assert re.search(r"'log-likelihood'[^;]*'softmax'", msg)


@pytest.mark.parametrize("output", ["identity", "sigmoid", "tanh", "relu", "softmax"])
def test_quadratic_accepts_every_output(output):
    assert fastnn.Network([3, 4, 2], output=output, cost="quadratic").cost == "quadratic"


@pytest.mark.parametrize("dtype", ["float16", "int32", "int64", "complex128", np.int8, object])
def test_bad_dtype(dtype):
    with pytest.raises(ValueError, match=m("'dtype'", "'float32'", "'float64'", "Got")):
        fastnn.Network([3, 2], dtype=dtype)


@pytest.mark.parametrize("dtype", ["foo", "not-a-dtype"])
def test_unparseable_dtype_name(dtype):
    with pytest.raises(ValueError, match=m("'dtype'", repr(dtype))):
        fastnn.Network([3, 2], dtype=dtype)


@pytest.mark.parametrize("dtype", ["float32", np.float32, np.dtype("float64"), "f8"])
def test_good_dtypes(dtype):
    assert fastnn.Network([3, 2], dtype=dtype).params.dtype == np.dtype(dtype)


def test_bad_engine(net, data):
    X, y = data
    for call in (lambda: net.feedforward(X, engine="torch"), lambda: net.gradient(X, y, engine="torch"),
                 lambda: net.loss_and_gradient(X, y, engine="torch"),
                 lambda: net.fit(X, y, engine="torch")):
        with pytest.raises(ValueError, match=m("'engine'", "'cython'", "'numpy'", "'torch'")):
            call()


# --------------------------------------------------------------------------- X


@pytest.mark.parametrize("shape", [(6, 4), (6, 2), (6, 3, 1), (3,) * 0, (18,), (4,)])
def test_X_wrong_shape(net, shape):
    X = np.zeros(shape)
    y = np.zeros(6, dtype=int)
    for call in (lambda: net.feedforward(X), lambda: net.loss(X, y), lambda: net.fit(X, y)):
        with pytest.raises(ValueError, match=m("'X'", "(n_samples, 3)", str(shape))):
            call()


def test_X_with_no_rows(net):
    with pytest.raises(ValueError, match=m("'X'", "at least one", "(0, 3)")):
        net.feedforward(np.zeros((0, 3)))


def test_X_and_y_lengths_differ(net, data):
    X, y = data
    with pytest.raises(ValueError, match=m("'y'", "6", "Got 5")):
        net.fit(X, y[:5])
    with pytest.raises(ValueError, match=m("'y'", "(6, 2)", "(7, 2)")):
        net.loss(X, np.zeros((7, 2)))


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_X_non_finite(net, data, bad):
    X, y = data
    X = X.copy()
    X[4, 2] = bad
    for call in (lambda: net.feedforward(X), lambda: net.loss(X, y), lambda: net.gradient(X, y),
                 lambda: net.evaluate(X, y), lambda: net.fit(X, y), lambda: net.predict(X)):
        with pytest.raises(ValueError, match=m("'X'", "finite", "row 4", "column 2")):
            call()


FIT_NETS = [  # (hidden, output, cost): every hidden activation, every output/cost pair
    ("sigmoid", "sigmoid", "cross-entropy"), ("tanh", "softmax", "log-likelihood"),
    ("relu", "identity", "quadratic"), ("identity", "tanh", "quadratic"),
    ("relu", "softmax", "log-likelihood"),
]


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("hidden,output,cost", FIT_NETS)
@pytest.mark.parametrize("rule", ["plain", "momentum", "nesterov", "adam"])
@pytest.mark.parametrize("batch_size", [1, 7, 64, 300])
def test_fit_with_a_non_finite_X_value_is_an_error_and_changes_nothing(dtype, hidden, output, cost,
                                                                      rule, batch_size):
    """fit leaves the scan of X's values to its first epoch (no pass of its own): a NaN or
    inf anywhere - in a row the permutation takes first, last or in between, in a column
    whose weights are all zero, in a float64 X that overflows the float32 network, or as
    +inf into a saturating unit - is the same ValueError as from a separate scan, naming
    the first bad entry, and the parameters and the optimizer's state are those before
    fit. Batches of 1 and 7 rows (fused kernel, in place), 64 (packed), 300 (BLAS)."""
    rng = np.random.default_rng(7)
    n, d = 320, 21
    X = 0.5 * rng.standard_normal((n, d))
    y = rng.integers(0, 3, n)
    if cost == "quadratic" and output in ("identity", "tanh"):
        y = np.tanh(rng.standard_normal((n, 3)))
    elif output == "sigmoid":
        y = np.eye(3)[y]
    for row, col, value in ((0, 0, np.nan), (n - 1, d - 1, np.inf), (137, 5, -np.inf),
                            (201, 9, np.inf), (55, 3, 1e300)):
        Xb = X.copy()
        Xb[row, col] = value
        if value == 1e300 and dtype == "float64":
            continue  # finite in float64
        net = fastnn.Network([d, 6, 3], hidden=hidden, output=output, cost=cost, dtype=dtype,
                             seed=8)
        net.weights[0][:, 9] = 0.0  # inf x 0
        opt = (fastnn.Adam(eta=0.01) if rule == "adam" else
               fastnn.SGD(eta=0.01, momentum=0.0 if rule == "plain" else 0.9,
                          nesterov=rule == "nesterov"))
        # a first fit on good data gives the optimizer a state to keep
        net.fit(X, y, epochs=1, batch_size=batch_size, optimizer=opt, seed=1,
                monitor_training=False)
        before = net.params.copy(), [b.copy() for b in opt._state_for(net)], opt.t
        with np.errstate(over="ignore"):  # the cast of 1e300 to float32
            with pytest.raises(ValueError, match=m("'X'", "finite", f"row {row}",
                                                   f"column {col}")):
                net.fit(Xb, y, epochs=3, batch_size=batch_size, optimizer=opt, lmbda=0.5,
                        seed=2, monitor_training=False)
        np.testing.assert_array_equal(net.params, before[0])
        for buf, old in zip(opt._state_for(net), before[1]):
            np.testing.assert_array_equal(buf, old)
        assert opt.t == before[2]


@pytest.mark.parametrize("rule", ["momentum", "adam"])
def test_fit_with_a_non_finite_X_keeps_an_optimizer_that_belongs_to_another_network(rule):
    """fit on unscanned X gives the optimizer fresh state for the new network in its first
    epoch; when X turns out to hold NaN, the optimizer goes back to the network, state and
    step count it had (and keeps training that network as before)."""
    rng = np.random.default_rng(3)
    X, y = rng.standard_normal((60, 5)), rng.integers(0, 2, 60)
    a, b = fastnn.Network([5, 4, 2], seed=1), fastnn.Network([5, 4, 2], seed=2)
    ref = a.copy()
    opt, ref_opt = ((fastnn.Adam(eta=0.01) if rule == "adam" else fastnn.SGD(eta=0.1, momentum=0.9))
                    for _ in range(2))
    for net, o in ((a, opt), (ref, ref_opt)):
        net.fit(X, y, epochs=1, batch_size=6, optimizer=o, seed=0, monitor_training=False)
    state, t = [buf.copy() for buf in opt._state_for(a)], opt.t
    Xb = X.copy()
    Xb[10, 2] = np.nan
    with pytest.raises(ValueError, match=m("'X'", "finite", "row 10", "column 2")):
        b.fit(Xb, y, epochs=1, batch_size=6, optimizer=opt, seed=0, monitor_training=False)
    assert opt.t == t and opt._owner() is a
    for buf, old in zip(opt._buffers, state):
        np.testing.assert_array_equal(buf, old)
    np.testing.assert_array_equal(b.params, fastnn.Network([5, 4, 2], seed=2).params)
    # a's training continues exactly as if b's fit had never been tried
    for net, o in ((a, opt), (ref, ref_opt)):
        net.fit(X, y, epochs=1, batch_size=6, optimizer=o, seed=1, monitor_training=False)
    np.testing.assert_array_equal(a.params, ref.params)


@pytest.mark.filterwarnings("ignore:overflow encountered in cast:RuntimeWarning")
def test_X_non_finite_after_float32_conversion():
    net = fastnn.Network([2, 2], hidden=[], dtype="float32")
    with pytest.raises(ValueError, match=m("'X'", "finite")):
        net.feedforward(np.array([[1e300, 0.0]]))  # overflows float32


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_validation_data_non_finite(net, data, bad):
    X, y = data
    Xv = X.copy()
    Xv[1, 0] = bad
    with pytest.raises(ValueError, match=m("'validation_data[0]'", "finite", "row 1", "column 0")):
        net.fit(X, y, validation_data=(Xv, y))


def test_validation_data_wrong_shape_and_form(net, data):
    X, y = data
    with pytest.raises(ValueError, match=m("'validation_data[0]'", "(n_samples, 3)", "(6, 4)")):
        net.fit(X, y, validation_data=(np.zeros((6, 4)), y))
    with pytest.raises(ValueError, match=m("'validation_data'", "pair")):
        net.fit(X, y, validation_data=(X, y, y))
    with pytest.raises(ValueError, match=m("'validation_data'", "pair")):
        net.fit(X, y, validation_data=X[0, 0])


def test_validation_labels_error_names_validation_data(net, data):
    X, y = data
    with pytest.raises(ValueError, match="validation_data"):
        net.fit(X, y, validation_data=(X, np.array([0, 1, 7, 0, 0, 1])))


def test_X_not_numbers(net):
    with pytest.raises(TypeError, match=m("'X'", "real numbers")):
        net.feedforward(np.array([["a", "b", "c"]]))
    with pytest.raises(TypeError, match=m("'X'", "real numbers")):
        net.feedforward(np.ones((2, 3), dtype=complex))
    with pytest.raises(ValueError, match=m("'X'", "Could not convert")):
        net.loss([[1, 2, 3], [1, 2]], [0, 1])  # ragged


def test_ragged_X_in_feedforward_names_X(net):
    with pytest.raises(ValueError, match=m("'X'")):
        net.feedforward([[1, 2, 3], [1, 2]])


def test_X_sparse_is_rejected(net):
    sparse = pytest.importorskip("scipy.sparse")
    with pytest.raises(TypeError, match=m("'X'", "sparse")):
        net.feedforward(sparse.csr_matrix(np.ones((2, 3))))


def test_X_lists_ints_and_fortran_order_are_converted(net):
    X = np.arange(12, dtype=np.int64).reshape(4, 3)
    ref = net.feedforward(X.astype(np.float64))
    np.testing.assert_array_equal(net.feedforward(X.tolist()), ref)
    np.testing.assert_array_equal(net.feedforward(np.asfortranarray(X)), ref)
    np.testing.assert_array_equal(net.feedforward(X.astype(np.float64)[:, ::-1][:, ::-1]), ref)


# --------------------------------------------------------------------------- y


@pytest.mark.parametrize("label", [2, 3, 100])
def test_labels_out_of_range(net, data, label):
    X, y = data
    y = y.copy()
    y[3] = label
    for call in (lambda: net.loss(X, y), lambda: net.fit(X, y), lambda: net.evaluate(X, y)):
        with pytest.raises(ValueError, match=m("'y'", f"label {label}", "[0, 2)")):
            call()


def test_labels_negative(net, data):
    X, y = data
    y = y.copy()
    y[0] = -1
    with pytest.raises(ValueError, match=m("'y'", "label -1", "[0, 2)")):
        net.fit(X, y)


@pytest.mark.parametrize("bad", [0.5, 1.0000001, np.nan, np.inf])
def test_labels_non_integer_floats(net, data, bad):
    X, y = data
    y = y.astype(np.float64)
    y[2] = bad
    with pytest.raises(ValueError, match=m("'y'", "not integers", str(bad))):
        net.fit(X, y)


def test_integral_float_labels_are_accepted(net, data):
    X, y = data
    assert net.loss(X, y.astype(np.float64)) == net.loss(X, y)


def test_single_output_labels_are_zero_or_one():
    net = fastnn.Network([3, 4, 1], seed=0)
    X = np.zeros((3, 3))
    assert np.isfinite(net.loss(X, [0, 1, 1]))
    with pytest.raises(ValueError, match=m("'y'", "label 2", "[0, 2)")):
        net.loss(X, [0, 2, 1])


def test_labels_of_wrong_type(net, data):
    X, _ = data
    with pytest.raises(TypeError, match=m("'y'")):
        net.loss(X, np.array(list("abcabc")))


def test_target_matrix_non_finite_or_wrong_width(net, data):
    X, _ = data
    Y = np.zeros((6, 2))
    Y[1, 1] = np.nan
    with pytest.raises(ValueError, match=m("'y'", "finite")):
        net.loss(X, Y)
    with pytest.raises(ValueError, match=m("'y'", "(6, 2)", "(6, 3)")):
        net.fit(X, np.zeros((6, 3)))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_first_nonfinite_row_finds_the_first_bad_row(dtype):
    """The kernels' finiteness scan (rows split between threads) against np.isfinite."""
    from fastnn import _core
    rng = np.random.default_rng(3)
    info = np.finfo(dtype)
    X = rng.standard_normal((3000, 785)).astype(dtype)  # large enough to be split between threads
    X[5, :3] = [info.max, -info.max, info.tiny / 4]       # extreme but finite values, a subnormal
    assert _core.first_nonfinite_row(X) == -1
    for rows, value in (([2999], np.nan), ([1700, 2500], np.inf), ([0, 1], -np.inf), ([1499, 10], np.nan)):
        Y = X.copy()
        for r in rows:
            Y[r, rng.integers(0, 785)] = value
        assert _core.first_nonfinite_row(Y) == min(rows)
        assert _core.first_nonfinite_row(Y) == np.flatnonzero(~np.isfinite(Y).all(axis=1))[0]
    assert _core.first_nonfinite_row(np.empty((0, 4), dtype)) == -1
    one = np.array([[1.0, np.nan]], dtype)
    assert _core.first_nonfinite_row(one) == 0
