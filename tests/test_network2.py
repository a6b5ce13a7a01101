"""fastnn.network2: the book's network2.py API on fastnn's kernels.

The oracle is ``BookNetwork`` below: a faithful, minimal reimplementation of
the book's network2.Network (Nielsen, chapter 3; Python 3 port) -- per-sample
backprop with column vectors, update_mini_batch with L2, SGD with
``random.shuffle`` and monitoring, total_cost with ``nan_to_num`` and
accuracy -- plus momentum (equations 107-108), Nesterov (DESIGN.md) and the
book's later early stopping. It shares no code with fastnn.
"""
import copy
import json
import os
import pickle
import random
import re
import stat
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import fastnn
import fastnn.network2 as network2

FIXTURE = "/work/shared/fixtures/network2-saved-784-30-10.json"


# --------------------------------------------------------------------------- the oracle


def _sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


def _sigmoid_prime(z):
    return _sigmoid(z) * (1 - _sigmoid(z))


class BookQuadratic:
    @staticmethod
    def fn(a, y):
        return 0.5 * np.linalg.norm(a - y) ** 2

    @staticmethod
    def delta(z, a, y):
        return (a - y) * _sigmoid_prime(z)


class BookCrossEntropy:
    @staticmethod
    def fn(a, y):
        return np.sum(np.nan_to_num(-y * np.log(a) - (1 - y) * np.log(1 - a)))

    @staticmethod
    def delta(z, a, y):
        return a - y


def book_vectorized(j, n_out):
    e = np.zeros((n_out, 1))
    e[j] = 1.0
    return e


class BookNetwork:
    """The book's network2.Network, written plainly (column vectors, one sample at a time)."""

    def __init__(self, sizes, cost=BookCrossEntropy):
        self.num_layers = len(sizes)
        self.sizes = sizes
        self.biases = [np.random.randn(y, 1) for y in sizes[1:]]
        self.weights = [np.random.randn(y, x) / np.sqrt(x) for x, y in zip(sizes[:-1], sizes[1:])]
        self.cost = cost

    def feedforward(self, a):
        for b, w in zip(self.biases, self.weights):
            a = _sigmoid(np.dot(w, a) + b)
        return a

    def SGD(self, training_data, epochs, mini_batch_size, eta, lmbda=0.0, evaluation_data=None,
            monitor_evaluation_cost=False, monitor_evaluation_accuracy=False,
            monitor_training_cost=False, monitor_training_accuracy=False,
            momentum=0.0, nesterov=False, early_stopping_n=0):
        training_data = list(training_data)
        n = len(training_data)
        if evaluation_data:
            evaluation_data = list(evaluation_data)
            n_data = len(evaluation_data)
        self.vw = [np.zeros(w.shape) for w in self.weights]
        self.vb = [np.zeros(b.shape) for b in self.biases]
        best_accuracy, no_accuracy_change = 0, 0
        evaluation_cost, evaluation_accuracy = [], []
        training_cost, training_accuracy = [], []
        for j in range(epochs):
            random.shuffle(training_data)
            mini_batches = [training_data[k:k + mini_batch_size] for k in range(0, n, mini_batch_size)]
            for mini_batch in mini_batches:
                self.update_mini_batch(mini_batch, eta, lmbda, len(training_data), momentum, nesterov)
            print("Epoch %s training complete" % j)
            if monitor_training_cost:
                cost = self.total_cost(training_data, lmbda)
                training_cost.append(cost)
                print("Cost on training data: {}".format(cost))
            if monitor_training_accuracy:
                accuracy = self.accuracy(training_data, convert=True)
                training_accuracy.append(accuracy)
                print("Accuracy on training data: {} / {}".format(accuracy, n))
            if monitor_evaluation_cost:
                cost = self.total_cost(evaluation_data, lmbda, convert=True)
                evaluation_cost.append(cost)
                print("Cost on evaluation data: {}".format(cost))
            if monitor_evaluation_accuracy:
                accuracy = self.accuracy(evaluation_data)
                evaluation_accuracy.append(accuracy)
                print("Accuracy on evaluation data: {} / {}".format(self.accuracy(evaluation_data), n_data))
            if early_stopping_n > 0:  # the book's later network2 (it compares `accuracy`)
                if accuracy > best_accuracy:
                    best_accuracy, no_accuracy_change = accuracy, 0
                else:
                    no_accuracy_change += 1
                if no_accuracy_change == early_stopping_n:
                    return evaluation_cost, evaluation_accuracy, training_cost, training_accuracy
        return evaluation_cost, evaluation_accuracy, training_cost, training_accuracy

    def update_mini_batch(self, mini_batch, eta, lmbda, n, momentum=0.0, nesterov=False):
        nabla_b = [np.zeros(b.shape) for b in self.biases]
        nabla_w = [np.zeros(w.shape) for w in self.weights]
        for x, y in mini_batch:
            delta_nabla_b, delta_nabla_w = self.backprop(x, y)
            nabla_b = [nb + dnb for nb, dnb in zip(nabla_b, delta_nabla_b)]
            nabla_w = [nw + dnw for nw, dnw in zip(nabla_w, delta_nabla_w)]
        m = len(mini_batch)
        if momentum == 0.0:  # the book's update, exactly
            self.weights = [(1 - eta * (lmbda / n)) * w - (eta / m) * nw
                            for w, nw in zip(self.weights, nabla_w)]
            self.biases = [b - (eta / m) * nb for b, nb in zip(self.biases, nabla_b)]
            return
        # equations 107-108: v <- mu v - eta grad C, w <- w + v (L2 on weights only)
        gw = [nw / m + (lmbda / n) * w for w, nw in zip(self.weights, nabla_w)]
        gb = [nb / m for nb in nabla_b]
        self.vw = [momentum * v - eta * g for v, g in zip(self.vw, gw)]
        self.vb = [momentum * v - eta * g for v, g in zip(self.vb, gb)]
        if nesterov:  # DESIGN.md: W <- W + mu v - eta g
            self.weights = [w + momentum * v - eta * g for w, v, g in zip(self.weights, self.vw, gw)]
            self.biases = [b + momentum * v - eta * g for b, v, g in zip(self.biases, self.vb, gb)]
        else:
            self.weights = [w + v for w, v in zip(self.weights, self.vw)]
            self.biases = [b + v for b, v in zip(self.biases, self.vb)]

    def backprop(self, x, y):
        nabla_b = [np.zeros(b.shape) for b in self.biases]
        nabla_w = [np.zeros(w.shape) for w in self.weights]
        activation = x
        activations = [x]
        zs = []
        for b, w in zip(self.biases, self.weights):
            z = np.dot(w, activation) + b
            zs.append(z)
            activation = _sigmoid(z)
            activations.append(activation)
        delta = self.cost.delta(zs[-1], activations[-1], y)
        nabla_b[-1] = delta
        nabla_w[-1] = np.dot(delta, activations[-2].transpose())
        for l in range(2, self.num_layers):
            delta = np.dot(self.weights[-l + 1].transpose(), delta) * _sigmoid_prime(zs[-l])
            nabla_b[-l] = delta
            nabla_w[-l] = np.dot(delta, activations[-l - 1].transpose())
        return nabla_b, nabla_w

    def accuracy(self, data, convert=False):
        if convert:
            results = [(np.argmax(self.feedforward(x)), np.argmax(y)) for (x, y) in data]
        else:
            results = [(np.argmax(self.feedforward(x)), y) for (x, y) in data]
        return sum(int(x == y) for (x, y) in results)

    def total_cost(self, data, lmbda, convert=False):
        cost = 0.0
        for x, y in data:
            a = self.feedforward(x)
            if convert:
                y = book_vectorized(y, self.sizes[-1])
            cost += self.cost.fn(a, y) / len(data)
        cost += 0.5 * (lmbda / len(data)) * sum(np.linalg.norm(w) ** 2 for w in self.weights)
        return cost


# --------------------------------------------------------------------------- helpers

BOOK_COST = {network2.CrossEntropyCost: BookCrossEntropy, network2.QuadraticCost: BookQuadratic}


def book_data(n, n_in=20, n_out=4, seed=0, kind="train"):
    """The book's format: x columns (n_in, 1); y one-hot (n_out, 1) ("train") or an int label."""
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((n_out, n_in))
    labels = rng.integers(0, n_out, n)
    X = centers[labels] + 1.5 * rng.standard_normal((n, n_in))
    if kind == "train":
        return [(x.reshape(-1, 1), book_vectorized(int(l), n_out)) for x, l in zip(X, labels)]
    return [(x.reshape(-1, 1), np.int64(l)) for x, l in zip(X, labels)]


def seeded(s):
    random.seed(s)
    np.random.seed(s)


def rel(a, b):
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-300))


def assert_params_close(net, book, tol=1e-10):
    for l, (w, bw) in enumerate(zip(net.weights, book.weights)):
        assert w.shape == bw.shape
        assert rel(w, bw) < tol, f"weights[{l}]"
    for l, (b, bb) in enumerate(zip(net.biases, book.biases)):
        assert b.shape == bb.shape
        assert rel(b, bb) < tol, f"biases[{l}]"


def assert_histories_equal(ours, book, tol=1e-10):
    ev_cost, ev_acc, tr_cost, tr_acc = ours
    assert ev_acc == book[1]
    assert tr_acc == book[3]
    assert all(type(a) is int for a in ev_acc + tr_acc)
    for mine, theirs in ((ev_cost, book[0]), (tr_cost, book[2])):
        assert len(mine) == len(theirs)
        for c, bc in zip(mine, theirs):
            assert abs(c - bc) <= tol * abs(bc)


_NUM = re.compile(r"-?\d+(?:\.\d+)?(?:e[-+]?\d+)?")


def assert_same_printout(ours, theirs, tol=1e-10):
    """Same lines, same words; numbers equal up to ``tol`` relative."""
    a, b = ours.splitlines(), theirs.splitlines()
    assert len(a) == len(b)
    for la, lb in zip(a, b):
        assert _NUM.sub("#", la) == _NUM.sub("#", lb)
        for x, y in zip(_NUM.findall(la), _NUM.findall(lb)):
            assert abs(float(x) - float(y)) <= tol * abs(float(y))


def run_both(sizes, cost, seed, train, evaluation, capsys=None, **kw):
    seeded(seed)
    book = BookNetwork(list(sizes), cost=BOOK_COST[cost])
    book_hist = book.SGD(train, evaluation_data=evaluation, **kw)
    book_out = capsys.readouterr().out if capsys else None
    seeded(seed)
    net = network2.Network(list(sizes), cost=cost)
    hist = net.SGD(train, evaluation_data=evaluation, **kw)
    out = capsys.readouterr().out if capsys else None
    return net, book, hist, book_hist, out, book_out


ALL_MONITORS = dict(monitor_evaluation_cost=True, monitor_evaluation_accuracy=True,
                    monitor_training_cost=True, monitor_training_accuracy=True)


# --------------------------------------------------------------------------- construction


@pytest.mark.parametrize("init", ["default", "large"])
def test_initializers_draw_from_numpy_random_in_the_books_order(init):
    sizes = [7, 5, 4, 3]
    seeded(3)
    net = network2.Network(sizes)
    if init == "large":
        net.large_weight_initializer()
    ours_next = np.random.randn()
    seeded(3)
    biases = [np.random.randn(y, 1) for y in sizes[1:]]
    weights = [np.random.randn(y, x) / np.sqrt(x) for x, y in zip(sizes[:-1], sizes[1:])]
    if init == "large":
        biases = [np.random.randn(y, 1) for y in sizes[1:]]
        weights = [np.random.randn(y, x) for x, y in zip(sizes[:-1], sizes[1:])]
    assert np.random.randn() == ours_next  # consumed exactly the book's draws
    for w, bw in zip(net.weights, weights):
        np.testing.assert_array_equal(w, bw)
    for b, bb in zip(net.biases, biases):
        np.testing.assert_array_equal(b, bb)


def test_attributes_like_the_book():
    net = network2.Network([6, 5, 2], cost=network2.QuadraticCost)
    assert net.num_layers == 3
    assert net.sizes == [6, 5, 2]
    assert net.cost is network2.QuadraticCost
    assert [w.shape for w in net.weights] == [(5, 6), (2, 5)]
    assert [b.shape for b in net.biases] == [(5, 1), (2, 1)]
    assert isinstance(net.core, fastnn.Network)
    assert net.core.cost == "quadratic" and net.core.activations == ("sigmoid", "sigmoid")
    assert network2.Network([3, 2]).cost is network2.CrossEntropyCost


def test_weights_and_biases_are_views_into_the_flat_buffer():
    net = network2.Network([4, 3, 2])
    params = net.core.params
    for arr in list(net.weights) + list(net.biases):
        assert np.shares_memory(arr, params)
    net.weights[1][0, 2] = 7.5
    net.biases[0][1, 0] = -3.25
    assert params[3 * 4 + 3 + 0 * 3 + 2] == 7.5
    assert params[3 * 4 + 1] == -3.25
    params[0] = 11.0
    assert net.weights[0][0, 0] == 11.0
    params[3 * 4 + 2] = 4.0
    assert net.biases[0][2, 0] == 4.0
    # the in-place edit is what the network computes with
    x = np.linspace(-1, 1, 4).reshape(-1, 1)
    expected = x
    for w, b in zip(net.weights, net.biases):
        expected = _sigmoid(w @ expected + b)
    np.testing.assert_allclose(net.feedforward(x), expected, rtol=1e-13)
    assert net.weights is net.weights and net.biases[0] is net.biases[0]


def test_assigning_weights_and_biases_copies_into_the_buffer():
    net = network2.Network([4, 3, 2])
    params = net.core.params
    views = list(net.weights)
    new_w = [np.full((3, 4), 0.5), np.full((2, 3), -0.25)]
    net.weights = new_w
    assert net.weights[0] is views[0]  # same views, new values
    assert np.shares_memory(net.weights[0], params)
    np.testing.assert_array_equal(net.weights[1], new_w[1])
    new_w[1][0, 0] = 99.0  # the caller's arrays stay independent
    assert net.weights[1][0, 0] == -0.25
    net.biases = [np.arange(3.0).reshape(3, 1), np.ones((2, 1))]
    np.testing.assert_array_equal(params[12:15], [0.0, 1.0, 2.0])
    net.biases = (np.arange(3.0), [2.0, 3.0])  # 1-D biases and nested lists are accepted
    np.testing.assert_array_equal(net.biases[1], [[2.0], [3.0]])
    net.weights[0] = np.eye(3, 4)  # item assignment also writes through
    np.testing.assert_array_equal(params[:12], np.eye(3, 4).ravel())
    net.biases[-1] = np.array([[5.0], [6.0]])
    np.testing.assert_array_equal(params[-2:], [5.0, 6.0])
    before = params.copy()
    with pytest.raises(ValueError, match=r"weights\[1\] must have shape \(2, 3\)"):
        net.weights = [np.zeros((3, 4)), np.zeros((3, 2))]
    with pytest.raises(ValueError, match="2 arrays"):
        net.weights = [np.zeros((3, 4))]
    with pytest.raises(ValueError, match=r"biases\[0\] must have shape \(3, 1\)"):
        net.biases[0] = np.zeros((1, 3))
    with pytest.raises(ValueError, match="finite"):
        net.weights[0] = np.full((3, 4), np.nan)
    np.testing.assert_array_equal(params, before)  # nothing written by a failed assignment
    with pytest.raises(TypeError, match="length is fixed"):
        net.weights.append(np.zeros((2, 2)))
    with pytest.raises(TypeError, match="length is fixed"):
        del net.biases[0]


def test_copy_and_pickle_keep_the_views_in_sync():
    net = network2.Network([4, 3, 2], cost=network2.QuadraticCost)
    for other in (copy.deepcopy(net), pickle.loads(pickle.dumps(net))):
        assert other.cost is network2.QuadraticCost
        assert not np.shares_memory(other.core.params, net.core.params)
        np.testing.assert_array_equal(other.core.params, net.core.params)
        other.weights[0][0, 0] = 123.0
        assert other.core.params[0] == 123.0 and net.core.params[0] != 123.0


def test_cost_must_be_one_of_the_two_classes():
    class MyCost:
        @staticmethod
        def fn(a, y):
            return 0.0

        @staticmethod
        def delta(z, a, y):
            return a - y

    with pytest.raises(ValueError, match="CrossEntropyCost or network2.QuadraticCost"):
        network2.Network([3, 2], cost=MyCost)
    with pytest.raises(ValueError, match="CrossEntropyCost"):
        network2.Network([3, 2], cost="cross-entropy")
    # the book's own classes (same names) map onto the kernels' costs
    BookCrossEntropy.__name__ = "CrossEntropyCost"
    try:
        assert network2.Network([3, 2], cost=BookCrossEntropy).core.cost == "cross-entropy"
    finally:
        BookCrossEntropy.__name__ = "BookCrossEntropy"


def test_cost_setter_switches_the_kernels_cost():
    data = book_data(31, kind="train")
    seeded(1)
    book = BookNetwork([20, 6, 4], cost=BookQuadratic)
    seeded(1)
    net = network2.Network([20, 6, 4])
    net.cost = network2.QuadraticCost
    assert net.core.cost == "quadratic"
    assert abs(net.total_cost(data, 0.3) - book.total_cost(data, 0.3)) < 1e-12 * book.total_cost(data, 0.3)


# --------------------------------------------------------------------------- costs and helpers


def test_cost_classes_are_the_books():
    a = np.array([[0.2], [0.9], [1.0]])
    y = np.array([[0.0], [1.0], [1.0]])
    z = np.array([[-1.0], [2.0], [40.0]])
    assert network2.QuadraticCost.fn(a, y) == pytest.approx(0.5 * (0.04 + 0.01))
    np.testing.assert_allclose(network2.QuadraticCost.delta(z, a, y), (a - y) * _sigmoid_prime(z))
    np.testing.assert_array_equal(network2.CrossEntropyCost.delta(z, a, y), a - y)
    # nan_to_num: 0 ln 0 -> 0, and a saturated wrong output -> 1.8e308 (NumPy warns, as for the book)
    with np.errstate(divide="ignore", invalid="ignore"):
        assert network2.CrossEntropyCost.fn(a, y) == pytest.approx(-np.log(0.8) - np.log(0.9))
        assert network2.CrossEntropyCost.fn(np.array([[1.0]]), np.array([[1.0]])) == 0.0
        assert network2.CrossEntropyCost.fn(np.array([[1.0]]), np.array([[0.0]])) == np.finfo(float).max


def test_vectorized_result_and_sigmoid():
    e = network2.vectorized_result(3)
    assert e.shape == (10, 1) and e[3, 0] == 1.0 and e.sum() == 1.0
    z = np.linspace(-5, 5, 11)
    np.testing.assert_allclose(network2.sigmoid(z), _sigmoid(z))
    np.testing.assert_allclose(network2.sigmoid_prime(z), _sigmoid_prime(z))


# --------------------------------------------------------------------------- inference


def test_feedforward_on_columns_matches_the_book():
    seeded(5)
    book = BookNetwork([20, 9, 7, 4])
    seeded(5)
    net = network2.Network([20, 9, 7, 4])
    for x, _ in book_data(5):
        out = net.feedforward(x)
        assert out.shape == (4, 1)
        np.testing.assert_allclose(out, book.feedforward(x), rtol=1e-13)
    A = np.hstack([x for x, _ in book_data(6)])  # several inputs as columns, as the book allows
    np.testing.assert_allclose(net.feedforward(A), book.feedforward(A), rtol=1e-13)
    assert net.feedforward(A[:, 0]).shape == (4,)
    with pytest.raises(ValueError, match=r"column of shape \(20, 1\)"):
        net.feedforward(np.zeros((1, 20)))


@pytest.mark.parametrize("cost", [network2.CrossEntropyCost, network2.QuadraticCost])
def test_accuracy_and_total_cost_match_the_book(cost):
    train = book_data(57, seed=2)
    test = book_data(41, seed=3, kind="test")
    seeded(9)
    book = BookNetwork([20, 10, 4], cost=BOOK_COST[cost])
    seeded(9)
    net = network2.Network([20, 10, 4], cost=cost)
    acc = net.accuracy(test)
    assert type(acc) is int and acc == book.accuracy(test)
    assert net.accuracy(train, convert=True) == book.accuracy(train, convert=True)
    for lmbda in (0.0, 2.5):
        c = net.total_cost(train, lmbda)
        assert isinstance(c, float)
        assert abs(c - book.total_cost(train, lmbda)) <= 1e-12 * book.total_cost(train, lmbda)
        c = net.total_cost(test, lmbda, convert=True)
        bc = book.total_cost(test, lmbda, convert=True)
        assert abs(c - bc) <= 1e-12 * bc
    assert net.accuracy([]) == 0
    assert net.accuracy(iter(test)) == acc  # a one-shot iterator works too


def test_cross_entropy_where_the_book_saturates():
    """Documented difference: the book's nan_to_num gives ~1.8e308/n for a saturated wrong
    output; fastnn computes the true cost from z (softplus(z) - y z), which is finite."""
    net = network2.Network([2, 1])
    book = BookNetwork([2, 1])
    w, b = np.array([[30.0, 30.0]]), np.array([[0.0]])
    net.weights, net.biases = [w], [b]
    book.weights, book.biases = [w.copy()], [b.copy()]
    data = [(np.array([[1.0], [1.0]]), np.array([[0.0]])),   # z = 60: a == 1.0 exactly, y = 0
            (np.array([[0.0], [0.0]]), np.array([[1.0]]))]   # z = 0: a = 1/2, y = 1
    with np.errstate(divide="ignore", invalid="ignore"):
        assert book.total_cost(data, 0.0) > 1e307
    z = np.array([60.0, 0.0])
    y = np.array([0.0, 1.0])
    softplus = np.maximum(z, 0) + np.log1p(np.exp(-np.abs(z)))
    assert net.total_cost(data, 0.0) == pytest.approx(np.sum(softplus - y * z) / 2, rel=1e-14)
    # where the book's value is finite, both agree
    assert net.total_cost(data[1:], 0.0) == pytest.approx(book.total_cost(data[1:], 0.0), rel=1e-14)


def test_update_mini_batch_and_backprop_match_the_book():
    batch = book_data(7, seed=4)
    seeded(2)
    book = BookNetwork([20, 8, 4])
    seeded(2)
    net = network2.Network([20, 8, 4])
    nb, nw = net.backprop(*batch[0])
    bnb, bnw = book.backprop(*batch[0])
    for a, b in zip(nb + nw, bnb + bnw):
        assert a.shape == b.shape
        assert rel(a, b) < 1e-12
    book.update_mini_batch(batch, 0.7, 3.0, 50)
    net.update_mini_batch(batch, 0.7, 3.0, 50)
    assert_params_close(net, book, 1e-12)


# --------------------------------------------------------------------------- training


@pytest.mark.parametrize("cost", [network2.CrossEntropyCost, network2.QuadraticCost])
@pytest.mark.parametrize("sizes", [[20, 15, 4], [20, 12, 8, 4]])
def test_sgd_reproduces_the_book_number_for_number(cost, sizes, capsys):
    train = book_data(203, seed=10)  # 203: the last mini-batch has 3 samples
    evaluation = book_data(57, seed=11, kind="test")
    for s in (0, 1):
        net, book, hist, book_hist, out, book_out = run_both(
            sizes, cost, s, train, evaluation, capsys, epochs=3, mini_batch_size=10, eta=0.5,
            lmbda=0.1, **ALL_MONITORS)
        assert_params_close(net, book)
        assert_histories_equal(hist, book_hist)
        assert all(len(h) == 3 for h in hist)
        assert_same_printout(out, book_out)
        assert "Accuracy on evaluation data: " in out and " / 57" in out


@pytest.mark.parametrize("nesterov", [False, True])
def test_sgd_momentum_matches_equations_107_108(nesterov, capsys):
    train = book_data(203, seed=12)
    evaluation = book_data(40, seed=13, kind="test")
    net, book, hist, book_hist, _, _ = run_both(
        [20, 15, 4], network2.CrossEntropyCost, 7, train, evaluation, capsys, epochs=3,
        mini_batch_size=10, eta=0.5, lmbda=0.1, momentum=0.6, nesterov=nesterov, **ALL_MONITORS)
    assert_params_close(net, book)
    assert_histories_equal(hist, book_hist)
    # the velocity matters: plain SGD ends elsewhere
    seeded(7)
    plain = network2.Network([20, 15, 4])
    plain.SGD(train, 3, 10, 0.5, lmbda=0.1, verbose=False)
    assert rel(plain.weights[0], book.weights[0]) > 1e-3


def test_sgd_accepts_one_shot_iterators_and_converts_once(monkeypatch, capsys):
    train = book_data(83, seed=14)
    evaluation = book_data(30, seed=15, kind="test")
    calls = []
    original = network2._data_arrays

    def counting(data, *args, **kwargs):
        calls.append(data)
        return original(data, *args, **kwargs)

    monkeypatch.setattr(network2, "_data_arrays", counting)
    seeded(4)
    net = network2.Network([20, 7, 4])
    xs, ys = zip(*train)
    exs, eys = zip(*evaluation)
    hist = net.SGD(zip(xs, ys), 4, 10, 0.5, lmbda=0.2, evaluation_data=zip(exs, eys), **ALL_MONITORS)
    assert len(calls) == 2  # training data and evaluation data, once each for 4 epochs
    monkeypatch.undo()
    capsys.readouterr()
    seeded(4)
    book = BookNetwork([20, 7, 4])
    book_hist = book.SGD(train, 4, 10, 0.5, lmbda=0.2, evaluation_data=evaluation, **ALL_MONITORS)
    assert_params_close(net, book)
    assert_histories_equal(hist, book_hist)


def test_inputs_other_than_columns_give_the_same_numbers():
    train = book_data(23, seed=22)
    test = book_data(17, seed=23, kind="test")
    net = network2.Network([20, 6, 4])
    flat_train = [(x.ravel(), y.ravel().tolist()) for x, y in train]  # 1-D x, list y
    list_test = [(x.ravel().tolist(), int(y)) for x, y in test]       # list x, int y
    assert net.accuracy(list_test) == net.accuracy(test)
    assert net.accuracy(flat_train, convert=True) == net.accuracy(train, convert=True)
    assert net.total_cost(flat_train, 1.0) == net.total_cost(train, 1.0)
    a, b = copy.deepcopy(net), copy.deepcopy(net)
    seeded(1)
    ha = a.SGD(train, 2, 5, 0.5, lmbda=0.5, monitor_training_cost=True, verbose=False)
    seeded(1)
    hb = b.SGD(flat_train, 2, 5, 0.5, lmbda=0.5, monitor_training_cost=True, verbose=False)
    assert ha == hb
    np.testing.assert_array_equal(a.core.params, b.core.params)


def test_float32_networks(tmp_path):
    train = book_data(40, seed=24)
    seeded(0)
    net = network2.Network([20, 6, 4], dtype="float32")
    seeded(0)
    ref = network2.Network([20, 6, 4])
    assert net.weights[0].dtype == np.float32 and np.shares_memory(net.weights[0], net.core.params)
    np.testing.assert_allclose(net.weights[0], ref.weights[0], rtol=1e-6)
    hist = net.SGD(train, 2, 10, 0.5, lmbda=0.1, monitor_training_cost=True, verbose=False)
    seeded(0)
    ref_hist = ref.SGD(train, 2, 10, 0.5, lmbda=0.1, monitor_training_cost=True, verbose=False)
    np.testing.assert_allclose(hist[2], ref_hist[2], rtol=1e-4)
    net.save(tmp_path / "n.json")
    back = network2.load(tmp_path / "n.json")  # the book's format has no dtype: float64
    np.testing.assert_array_equal(back.core.params, net.core.params.astype(np.float64))


def test_sgd_does_not_reorder_the_callers_list_and_is_quiet_when_asked(capsys):
    train = book_data(25, seed=16)
    before = [id(p) for p in train]
    net = network2.Network([20, 5, 4])
    result = net.SGD(train, 2, 10, 0.5, verbose=False)
    assert [id(p) for p in train] == before
    assert result == ([], [], [], [])
    assert capsys.readouterr().out == ""


def test_early_stopping_matches_the_books_later_network2(capsys):
    train = book_data(60, seed=17)
    evaluation = book_data(30, seed=18, kind="test")
    # a tiny eta: the evaluation accuracy never changes after epoch 0, so the book stops after
    # early_stopping_n epochs without improvement
    net, book, hist, book_hist, _, _ = run_both(
        [20, 6, 4], network2.CrossEntropyCost, 3, train, evaluation, capsys, epochs=20,
        mini_batch_size=10, eta=1e-9, early_stopping_n=3, monitor_evaluation_accuracy=True)
    assert len(hist[1]) == 4 and hist[1][0] > 0
    assert_histories_equal(hist, book_hist)
    assert_params_close(net, book)
    # with real learning: same epochs run, same numbers, whether it stops or not
    for n_stop in (1, 2, 5):
        net, book, hist, book_hist, _, _ = run_both(
            [20, 6, 4], network2.CrossEntropyCost, 8, train, evaluation, capsys, epochs=12,
            mini_batch_size=10, eta=3.0, early_stopping_n=n_stop, monitor_evaluation_accuracy=True,
            monitor_training_cost=True)
        assert_histories_equal(hist, book_hist)
        assert_params_close(net, book)
    # early stopping without monitoring the accuracy still watches the evaluation accuracy
    seeded(3)
    quiet = network2.Network([20, 6, 4])
    hist = quiet.SGD(train, 20, 10, 1e-9, evaluation_data=evaluation, early_stopping_n=2,
                     monitor_training_accuracy=True, verbose=False)
    assert len(hist[3]) == 3 and hist[1] == []
    with pytest.raises(ValueError, match="evaluation_data is required"):
        quiet.SGD(train, 2, 10, 0.5, early_stopping_n=2)


def test_training_that_overflows_stops_with_a_clear_error():
    train = book_data(37, n_in=5, n_out=3, seed=19)
    net = network2.Network([5, 4, 3])
    with pytest.raises(network2.TrainingDiverged, match="epoch 0") as info:
        net.SGD(train, 3, 10, 1e200, lmbda=1.0, monitor_training_cost=True, verbose=False)
    assert info.value.epoch == 0
    assert np.isfinite(net.core.params).all()


def test_bad_data_and_parameters_are_clear_errors():
    train = book_data(20, seed=20)
    test = book_data(10, seed=21, kind="test")
    net = network2.Network([20, 5, 4])
    with pytest.raises(ValueError, match="vectorized_result"):
        net.SGD(test, 1, 10, 0.5, verbose=False)  # integer labels as training targets
    with pytest.raises(ValueError, match="integer class label"):
        net.SGD(train, 1, 10, 0.5, evaluation_data=train, monitor_evaluation_accuracy=True,
                verbose=False)
    with pytest.raises(ValueError, match="convert=True"):
        net.accuracy(train)
    with pytest.raises(ValueError, match=r"x must hold 20 values"):
        net.SGD([(np.zeros((19, 1)), np.zeros((4, 1)))], 1, 10, 0.5, verbose=False)
    with pytest.raises(ValueError, match=r"must be a pair"):
        net.accuracy([np.zeros((20, 1))])
    with pytest.raises(ValueError, match="finite"):
        net.SGD([(np.full((20, 1), np.nan), np.zeros((4, 1)))], 1, 10, 0.5, verbose=False)
    with pytest.raises(ValueError, match="label 7"):
        net.accuracy([(np.zeros((20, 1)), 7)])
    with pytest.raises(ValueError, match="momentum"):
        net.SGD(train, 1, 10, 0.5, momentum=1.0, verbose=False)
    with pytest.raises(ValueError, match="eta"):
        net.SGD(train, 1, 10, -0.5, verbose=False)
    with pytest.raises(ValueError, match="mini_batch_size"):
        net.SGD(train, 1, 0, 0.5, verbose=False)
    with pytest.raises(ValueError, match="no samples"):
        net.SGD([], 1, 10, 0.5, verbose=False)
    with pytest.raises(ValueError, match="at least one sample"):
        net.total_cost([], 0.0)


# --------------------------------------------------------------------------- save / load


def book_feedforward(data, x):
    """The book's feedforward, from the saved JSON: sigmoid(w @ a + b) per layer."""
    a = x
    for w, b in zip(data["weights"], data["biases"]):
        a = _sigmoid(np.dot(np.array(w), a) + np.array(b))
    return a


def test_load_the_books_saved_file():
    if not os.path.exists(FIXTURE):
        pytest.skip(f"the fixture {FIXTURE} (a file saved by the book's network2.py) is absent")
    with open(FIXTURE) as fh:
        data = json.load(fh)
    net = network2.load(FIXTURE)
    assert net.sizes == [784, 30, 10] and net.num_layers == 3
    assert net.cost is network2.CrossEntropyCost
    assert [w.shape for w in net.weights] == [(30, 784), (10, 30)]
    assert [b.shape for b in net.biases] == [(30, 1), (10, 1)]
    np.testing.assert_array_equal(net.weights[0], np.array(data["weights"][0]))
    np.testing.assert_array_equal(net.biases[1], np.array(data["biases"][1]))
    rng = np.random.default_rng(0)
    for _ in range(5):
        x = rng.random((784, 1))
        out = net.feedforward(x)
        assert out.shape == (10, 1)
        np.testing.assert_allclose(out, book_feedforward(data, x), rtol=1e-12, atol=1e-15)
    X = rng.random((784, 8))
    np.testing.assert_allclose(net.feedforward(X), book_feedforward(data, X), rtol=1e-12, atol=1e-15)


def test_save_writes_the_books_json_and_loads_back_identically(tmp_path):
    if os.path.exists(FIXTURE):
        net = network2.load(FIXTURE)
    else:  # still test the round trip without the fixture
        net = network2.Network([784, 30, 10])
    path = tmp_path / "net.json"
    net.save(str(path))
    with open(path) as fh:
        data = json.load(fh)
    assert set(data) == {"sizes", "weights", "biases", "cost"}
    assert data["sizes"] == [784, 30, 10] and data["cost"] == "CrossEntropyCost"
    assert [np.array(w).shape for w in data["weights"]] == [(30, 784), (10, 30)]
    assert [np.array(b).shape for b in data["biases"]] == [(30, 1), (10, 1)]
    if os.path.exists(FIXTURE):
        with open(FIXTURE) as fh:
            original = json.load(fh)
        assert data["weights"] == original["weights"] and data["biases"] == original["biases"]
    back = network2.load(path)
    assert back.cost is net.cost and back.sizes == net.sizes
    np.testing.assert_array_equal(back.core.params, net.core.params)
    # a QuadraticCost network round-trips its cost name
    q = network2.Network([3, 2], cost=network2.QuadraticCost)
    q.save(tmp_path / "q.json")
    assert json.loads((tmp_path / "q.json").read_text())["cost"] == "QuadraticCost"
    assert network2.load(tmp_path / "q.json").cost is network2.QuadraticCost


def test_load_draws_like_the_books_load(tmp_path):
    """The book's load builds Network(sizes), drawing the default weights: so does ours."""
    network2.Network([5, 4, 2]).save(tmp_path / "n.json")
    np.random.seed(1)
    network2.load(tmp_path / "n.json")
    after = np.random.randn()
    np.random.seed(1)
    BookNetwork([5, 4, 2])
    assert np.random.randn() == after


def test_save_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "net.json"
    network2.Network([3, 2]).save(path)
    old = path.read_text()
    umask = os.umask(0o022)
    os.umask(umask)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o666 & ~umask  # as open(path, "w") makes it

    import fastnn.io

    def broken_fsync(fd):  # the data is half on its way to the disk when it fails
        raise OSError("disk full")

    monkeypatch.setattr(fastnn.io.os, "fsync", broken_fsync)
    with pytest.raises(OSError, match="disk full"):
        network2.Network([3, 2]).save(path)
    monkeypatch.undo()
    assert path.read_text() == old
    assert sorted(os.listdir(tmp_path)) == ["net.json"]


def _valid_json():
    return {"sizes": [2, 3, 1],
            "weights": [[[0.1, 0.2], [0.3, 0.4], [0.5, 0.6]], [[1.0, -1.0, 0.5]]],
            "biases": [[[0.1], [0.2], [0.3]], [[-0.5]]],
            "cost": "CrossEntropyCost"}


@pytest.mark.parametrize("mutate, message", [
    (lambda d: "not json at all", "not valid JSON"),
    (lambda d: json.dumps(d)[:40], "not valid JSON"),
    (lambda d: [1, 2, 3], "holds a list"),
    (lambda d: {k: v for k, v in d.items() if k != "biases"}, "missing key"),
    (lambda d: {**d, "cost": "Network"}, "'cost' must be"),
    (lambda d: {**d, "cost": 3}, "'cost' must be"),
    (lambda d: {**d, "sizes": [2]}, "'sizes' must"),
    (lambda d: {**d, "sizes": [2, 0, 1]}, "'sizes' must"),
    (lambda d: {**d, "sizes": [2, 3.5, 1]}, "'sizes' must"),
    (lambda d: {**d, "weights": d["weights"][:1]}, "list of 2 arrays"),
    (lambda d: {**d, "weights": [d["weights"][0], [[1.0, 2.0]]]}, r"weights\[1\] has shape \(1, 2\)"),
    (lambda d: {**d, "weights": [d["weights"][0], [[1.0, 2.0], [3.0]]]}, r"weights\[1\] is not"),
    (lambda d: {**d, "biases": [[0.1, 0.2, 0.3], [[-0.5]]]}, r"biases\[0\] has shape \(3,\)"),
    (lambda d: {**d, "biases": [[["a"], [0.2], [0.3]], [[-0.5]]]}, r"biases\[0\] is not"),
    (lambda d: {**d, "weights": [d["weights"][0], [[float("nan"), 0.0, 0.0]]]}, "NaN or inf"),
])
def test_load_rejects_malformed_files(tmp_path, mutate, message):
    path = tmp_path / "bad.json"
    content = mutate(_valid_json())
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    with pytest.raises(ValueError, match=message):
        network2.load(path)


def test_load_ignores_extra_keys_and_reads_binary_garbage_as_an_error(tmp_path):
    path = tmp_path / "extra.json"
    path.write_text(json.dumps({**_valid_json(), "comment": "hi"}))
    net = network2.load(path)
    np.testing.assert_array_equal(net.weights[1], [[1.0, -1.0, 0.5]])
    np.testing.assert_array_equal(net.biases[0], [[0.1], [0.2], [0.3]])
    (tmp_path / "bin").write_bytes(b"\x80\x81\xff\x00")
    with pytest.raises(ValueError, match="not valid JSON"):
        network2.load(tmp_path / "bin")
    with pytest.raises(FileNotFoundError):
        network2.load(tmp_path / "missing.json")


# --------------------------------------------------------------------------- a script in the book's style

MNIST_LOADER = '''
"""A stand-in for the book's mnist_loader: tiny synthetic data in its format."""
import numpy as np

def vectorized_result(j):
    e = np.zeros((10, 1))
    e[j] = 1.0
    return e

def load_data_wrapper():
    rng = np.random.default_rng(0)
    centers = rng.random((10, 784))
    def make(n):
        labels = rng.integers(0, 10, n)
        X = np.clip(centers[labels] + 0.3 * rng.standard_normal((n, 784)), 0, 1)
        return [np.reshape(x, (784, 1)) for x in X], labels
    tr_x, tr_y = make(300)
    va_x, va_y = make(50)
    te_x, te_y = make(50)
    training_data = zip(tr_x, [vectorized_result(y) for y in tr_y])
    validation_data = zip(va_x, va_y)
    test_data = zip(te_x, te_y)
    return (training_data, validation_data, test_data)
'''

BOOK_SCRIPT = '''
import mnist_loader
training_data, validation_data, test_data = mnist_loader.load_data_wrapper()
training_data = list(training_data)
test_data = list(test_data)

import fastnn.network2 as network2
net = network2.Network([784, 30, 10], cost=network2.CrossEntropyCost)
net.large_weight_initializer()
net.SGD(training_data[:200], 3, 10, 0.5, evaluation_data=test_data,
        monitor_evaluation_accuracy=True)

net = network2.Network([784, 30, 10], cost=network2.CrossEntropyCost)
evaluation_cost, evaluation_accuracy, training_cost, training_accuracy = net.SGD(
    training_data, 4, 10, 0.5, lmbda=5.0, evaluation_data=validation_data,
    monitor_evaluation_cost=True, monitor_evaluation_accuracy=True,
    monitor_training_cost=True, monitor_training_accuracy=True)
net.save("net.json")
net2 = network2.load("net.json")
print("test accuracy", net2.accuracy(test_data), "/", len(test_data))
print("cost", net2.total_cost(training_data, 5.0), training_cost[-1])
print("final", evaluation_accuracy[-1], training_accuracy[-1])
'''


def test_a_book_style_script_runs_unchanged(tmp_path):
    (tmp_path / "mnist_loader.py").write_text(MNIST_LOADER)
    (tmp_path / "script.py").write_text(BOOK_SCRIPT)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run([sys.executable, "script.py"], cwd=tmp_path, capture_output=True,
                          text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "Epoch 2 training complete" in out and "Epoch 3 training complete" in out
    assert re.search(r"Accuracy on evaluation data: \d+ / 50", out)
    assert re.search(r"Accuracy on training data: \d+ / 300", out)
    assert re.search(r"Cost on evaluation data: [0-9.e+-]+", out)
    acc = int(re.search(r"test accuracy (\d+) / 50", out).group(1))
    assert acc > 25  # the synthetic classes are easy
    c_loaded, c_trained = map(float, re.search(r"cost (\S+) (\S+)", out).groups())
    assert c_loaded == pytest.approx(c_trained, rel=1e-12)
    assert json.loads((tmp_path / "net.json").read_text())["sizes"] == [784, 30, 10]
