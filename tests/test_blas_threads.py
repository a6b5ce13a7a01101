"""fit's BLAS thread policy: "auto" runs small products on one thread, restores the
setting afterwards, and changes no result."""
import numpy as np
import pytest

import fastnn
from fastnn.training import AUTO_SINGLE_THREAD_MACS, resolve_blas_threads

threadpoolctl = pytest.importorskip("threadpoolctl")


def _blas_threads():
    return [i["num_threads"] for i in threadpoolctl.threadpool_info() if i["user_api"] == "blas"]


@pytest.fixture
def one_kernel_thread():
    old = fastnn.set_num_threads(1)
    yield
    fastnn.set_num_threads(old)


def test_auto_is_one_thread_for_small_products_only(one_kernel_thread):
    """With the kernels on one thread, "auto" leaves large products to BLAS's threads."""
    small = fastnn.Network([784, 30, 10], seed=0)
    assert resolve_blas_threads(small, 10, "auto") == 1
    big = fastnn.Network([784, 1024, 1024, 10], seed=0)
    assert 256 * 1024 * 1024 >= AUTO_SINGLE_THREAD_MACS
    assert resolve_blas_threads(big, 256, "auto") is None
    assert resolve_blas_threads(small, 10, None) is None
    assert resolve_blas_threads(small, 10, 3) == 3


def test_auto_is_one_thread_while_the_kernels_split_products():
    old = fastnn.set_num_threads(2)
    try:
        big = fastnn.Network([784, 1024, 1024, 10], seed=0)
        assert resolve_blas_threads(big, 256, "auto") == 1
        assert resolve_blas_threads(big, 256, 2) == 2  # an explicit limit is the user's
    finally:
        fastnn.set_num_threads(old)


@pytest.mark.parametrize("bad", [0, -1, 1.5, "many"])
def test_bad_blas_threads(bad):
    X = np.zeros((4, 3))
    with pytest.raises((ValueError, TypeError), match="blas_threads"):
        fastnn.Network([3, 2]).fit(X, [0, 1, 0, 1], epochs=1, blas_threads=bad)


def test_limit_applies_during_training_and_is_restored():
    before = _blas_threads()
    seen = []

    class Probe(fastnn.Callback):
        def on_progress(self, epoch, done, n):
            seen.append(_blas_threads())

    rng = np.random.default_rng(0)
    X, y = rng.random((64, 5)), rng.integers(0, 3, 64)
    net = fastnn.Network([5, 4, 3], hidden="tanh", output="softmax", cost="log-likelihood", seed=0)
    net.fit(X, y, epochs=1, batch_size=8, callbacks=[Probe()], progress_every=16)
    assert seen and all(all(t == 1 for t in threads) for threads in seen)
    assert _blas_threads() == before


def test_thread_policy_does_not_change_results():
    rng = np.random.default_rng(1)
    X, y = rng.random((50, 6)), rng.integers(0, 3, 50)
    params = []
    for bt in ("auto", None, 2):
        net = fastnn.Network([6, 5, 3], hidden="relu", output="softmax", cost="log-likelihood", seed=0)
        net.fit(X, y, epochs=2, batch_size=7, seed=0, optimizer=fastnn.SGD(eta=0.1, momentum=0.9),
                blas_threads=bt, monitor_training=False)
        params.append(net.params.copy())
    np.testing.assert_array_equal(params[0], params[1])
    np.testing.assert_array_equal(params[0], params[2])
