"""End-to-end learning on real data: Fashion-MNIST (60 000 + 10 000 images).

These are required tests (the README's plain ``pytest`` runs them); each takes
a few seconds. They skip with a reason when the data set is not installed
(Debian package ``dataset-fashion-mnist``).
"""
import time

import numpy as np
import pytest

import fastnn
import fastnn.datasets


@pytest.fixture(scope="module")
def fashion():
    try:
        (X, y), (Xt, yt) = fastnn.datasets.load_fashion_mnist()
    except FileNotFoundError as exc:
        pytest.skip(f"Fashion-MNIST is not installed (apt-get install dataset-fashion-mnist): {exc}")
    assert X.shape == (60000, 784) and Xt.shape == (10000, 784)
    assert 0.0 <= X.min() and X.max() <= 1.0
    return X, y, Xt, yt


def _accuracy(net, X, y):
    """Independent of net.evaluate: argmax of the outputs against the labels."""
    return float(np.mean(np.argmax(net.feedforward(X), axis=1) == y))


def test_sigmoid_cross_entropy_book_network(fashion):
    X, y, Xt, yt = fashion
    net = fastnn.Network([784, 30, 10], hidden="sigmoid", output="sigmoid", cost="cross-entropy", seed=0)
    t0 = time.perf_counter()
    hist = net.fit(X, y, epochs=5, batch_size=10, optimizer=fastnn.SGD(eta=0.5), seed=0,
                   validation_data=(Xt, yt), monitor_training=False)
    elapsed = time.perf_counter() - t0
    acc = hist.val_accuracy
    print(f"\n[784, 30, 10] sigmoid/cross-entropy SGD(0.5) batch 10: test accuracy per epoch "
          f"{[round(a, 4) for a in acc]}, {elapsed:.1f} s")
    assert len(acc) == 5
    assert acc[0] > 0.75
    assert acc[4] > 0.81
    assert acc[4] == pytest.approx(_accuracy(net, Xt, yt), abs=1e-12)
    assert all(np.isfinite(hist.val_cost))


def test_relu_softmax_nesterov_float32(fashion):
    X, y, Xt, yt = fashion
    X32, Xt32 = X.astype(np.float32), Xt.astype(np.float32)
    net = fastnn.Network([784, 100, 10], hidden="relu", output="softmax", cost="log-likelihood",
                         dtype="float32", init="he", seed=0)
    t0 = time.perf_counter()
    hist = net.fit(X32, y, epochs=5, batch_size=64,
                   optimizer=fastnn.SGD(eta=0.05, momentum=0.9, nesterov=True), seed=0,
                   validation_data=(Xt32, yt), monitor_training=False)
    elapsed = time.perf_counter() - t0
    acc = hist.val_accuracy
    print(f"\n[784, 100, 10] relu/softmax/log-likelihood float32 Nesterov(0.05, 0.9) batch 64: "
          f"test accuracy per epoch {[round(a, 4) for a in acc]}, {elapsed:.1f} s")
    assert net.params.dtype == np.float32
    assert max(acc) > 0.85
    assert acc[-1] == pytest.approx(_accuracy(net, Xt32, yt), abs=1e-12)
