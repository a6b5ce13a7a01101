"""pytest-benchmark micro-benchmarks of fastnn's kernels, one mini-batch step at a time.

    pytest benchmarks/test_kernel_benchmarks.py --benchmark-group-by=param:config

Each benchmark times one piece of a training step at the book's and the benchmark
configurations' shapes: the forward pass of one batch (BLAS vs the AVX2 small-batch
kernel), the fused one-pass update of the whole parameter buffer, and whole steps
(``train_steps`` over 100 batches). Compare rows of the same group: they run in one
process, side by side.
"""
import numpy as np
import pytest

import fastnn
from fastnn import _core

CONFIGS = {
    "C1": ([784, 30, 10], "sigmoid", "sigmoid", "cross-entropy", 10, "float64"),
    "C2": ([784, 30, 10], "sigmoid", "sigmoid", "cross-entropy", 128, "float32"),
    "C3": ([784, 100, 10], "relu", "softmax", "log-likelihood", 64, "float32"),
}


def _setup(config, n=2000):
    sizes, hidden, output, cost, bs, dtype = CONFIGS[config]
    rng = np.random.default_rng(0)
    net = fastnn.Network(sizes, hidden=hidden, output=output, cost=cost, dtype=dtype, seed=0)
    X = rng.random((n, sizes[0])).astype(dtype)
    labels = rng.integers(0, sizes[-1], n).astype(np.intp)
    return net, X, labels, bs


@pytest.fixture(params=[0, 256], ids=["blas", "small-kernels"])
def small_rows(request):
    if request.param and not _core.SMALL_KERNELS_AVAILABLE:
        pytest.skip("no AVX2+FMA small-batch kernels on this CPU")
    old = _core.set_small_max_rows(request.param), _core.set_fused_max_rows(request.param)
    yield request.param
    _core.set_small_max_rows(old[0])
    _core.set_fused_max_rows(old[1])


@pytest.mark.parametrize("config", list(CONFIGS))
def test_forward_one_batch(benchmark, config, small_rows):
    net, X, _, bs = _setup(config)
    out = np.empty((bs, net.sizes[-1]), dtype=net.dtype)
    work = net._workspace(bs)
    Xb = np.ascontiguousarray(X[:bs])
    benchmark.group = f"forward {config}"
    benchmark(_core.feedforward, net._sizes_c, net._acts_c, net._cost_c, net.params, Xb, out,
              work, bs)


@pytest.mark.parametrize("config", list(CONFIGS))
@pytest.mark.parametrize("rule", ["momentum", "nesterov"])
def test_fused_update(benchmark, config, rule):
    net, _, _, _ = _setup(config)
    grad = np.full_like(net.params, 1e-3)
    vel = np.zeros_like(net.params)
    benchmark.group = f"update {config}"
    benchmark(_core.sgd_step, net._sizes_c, net._acts_c, net._cost_c, net.params, grad, vel,
              1e-6, 0.9, 1e-5, rule == "nesterov")


@pytest.mark.parametrize("config", list(CONFIGS))
def test_train_100_steps(benchmark, config, small_rows):
    net, X, labels, bs = _setup(config, n=100 * CONFIGS[config][4])
    trainer = fastnn.training.Trainer(net, X, np.empty((0, net.sizes[-1]), net.dtype), labels,
                                      batch_size=bs, optimizer=fastnn.SGD(eta=1e-4, momentum=0.9),
                                      lmbda=0.0)
    perm = np.random.default_rng(0).permutation(X.shape[0]).astype(np.intp)
    benchmark.group = f"100 steps {config}"
    benchmark(trainer.run_epoch, perm)
