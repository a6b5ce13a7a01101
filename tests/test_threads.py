"""The kernels' thread pool: results independent of the thread count, safe with
Python threads and fork, and the public thread setting."""
import multiprocessing
import os
import subprocess
import sys
import tempfile
import threading

import numpy as np
import pytest

import fastnn
from fastnn import _core

from conftest import make_data

pytestmark = pytest.mark.skipif(not _core.POOL_AVAILABLE, reason="this build has no thread pool")

# [in, hidden, hidden, out] with widths that leave partial blocks (not multiples of 4, 8 or 16)
SIZES = [37, 45, 23, 5]


@pytest.fixture
def split_everything():
    """Split every product between threads, however small (restored after)."""
    old = _core.set_split_thresholds(0, 1), fastnn.get_num_threads()
    try:
        yield
    finally:
        _core.set_split_thresholds(*old[0])
        fastnn.set_num_threads(old[1])


def _train(threads, dtype, mu, nesterov, batch_size, adam=False, small=True):
    fastnn.set_num_threads(threads)
    old = _core.set_small_max_rows(1 << 30 if small else 0), _core.set_fused_max_rows(1 << 30 if small else 0)
    try:
        X, y = make_data(150, SIZES[0], SIZES[-1], seed=11)
        net = fastnn.Network(SIZES, hidden=["tanh", "relu"], output="softmax", cost="log-likelihood",
                             dtype=dtype, seed=12)
        opt = fastnn.Adam(eta=0.01) if adam else fastnn.SGD(eta=0.1, momentum=mu, nesterov=nesterov)
        net.fit(X, y, epochs=2, batch_size=batch_size, optimizer=opt, lmbda=0.5, seed=13,
                monitor_training=False)
        return net.params.copy(), opt._state_for(net)[0].copy()
    finally:
        _core.set_small_max_rows(old[0])
        _core.set_fused_max_rows(old[1])


def assert_close(a, b, dtype, what):
    """Equal up to the rounding of a different blocking of the same sums."""
    tol = 1e-12 if np.dtype(dtype) == np.float64 else 1e-4  # 44 steps of float32 rounding
    scale = np.maximum(np.abs(b), 1e-2)
    err = np.max(np.abs(a - b) / scale)
    assert err < tol, f"{what}: relative difference {err:.3g}"


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("rule", ["plain", "momentum", "nesterov", "adam"])
@pytest.mark.parametrize("batch_size", [7, 64])
@pytest.mark.parametrize("small", [True, False], ids=["small-kernels", "blas"])
def test_training_is_reproducible_and_agrees_across_thread_counts(split_everything, dtype, rule,
                                                                  batch_size, small):
    """With a given thread count every run gives the same bits (a block's result never depends
    on which thread runs it); different thread counts block the products differently and agree
    to rounding. Rows are split at batch 64 (> the widths), columns at batch 7, in every kind
    of region (forward, delta, gradient, fused gradient-and-update)."""
    mu = 0.0 if rule == "plain" else 0.9
    args = (dtype, mu, rule == "nesterov", batch_size, rule == "adam", small)
    p1, v1 = _train(1, *args)
    for threads in (2, 3, 8):
        p, v = _train(threads, *args)
        for _ in range(2):
            again = _train(threads, *args)
            np.testing.assert_array_equal(again[0], p, err_msg=f"params, {threads} threads, rerun")
            np.testing.assert_array_equal(again[1], v, err_msg=f"state, {threads} threads, rerun")
        assert_close(p, p1, dtype, f"params with {threads} threads")
        assert_close(v, v1, dtype, f"optimizer state with {threads} threads")
    # and the network did train
    fresh = fastnn.Network(SIZES, dtype=dtype, seed=12).params
    assert np.max(np.abs(p1 - fresh)) > 1e-3


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("rule", ["plain", "momentum", "nesterov", "adam"])
@pytest.mark.parametrize("threads", [2, 3])
def test_fused_kernel_split_by_columns_equals_split_by_rows(split_everything, dtype, rule, threads):
    """Batches the fused kernel packs (>= 32 rows) split W by columns between tasks; every
    weight's gradient is still the same sum over the batch in the same order, so the bits
    equal those of the split by rows, and both equal the NumPy engine to rounding. Widths
    that leave partial 16-column blocks and 4-row blocks; batch 40, then a last one of 30."""
    fastnn.set_num_threads(threads)
    X, y = make_data(110, 70, 5, seed=41)
    sizes = [70, 45, 23, 5]
    results = []
    for engine, cols in (("cython", True), ("cython", False), ("numpy", False)):
        old = _core.set_fused_split_cols(cols)
        try:
            net = fastnn.Network(sizes, hidden=["sigmoid", "relu"], output="softmax",
                                 cost="log-likelihood", dtype=dtype, seed=42)
            opt = (fastnn.Adam(eta=0.01) if rule == "adam" else
                   fastnn.SGD(eta=0.2, momentum=0.0 if rule == "plain" else 0.9,
                              nesterov=rule == "nesterov"))
            net.fit(X, y, epochs=2, batch_size=40, optimizer=opt, lmbda=0.5, seed=43,
                    engine=engine, monitor_training=False)
            results.append((net.params.copy(), opt._state_for(net)[0].copy()))
        finally:
            _core.set_fused_split_cols(old)
    np.testing.assert_array_equal(results[0][0], results[1][0])
    np.testing.assert_array_equal(results[0][1], results[1][1])
    assert_close(results[0][0], results[2][0], dtype, "params against the NumPy engine")
    fresh = fastnn.Network(sizes, dtype=dtype, seed=42).params
    assert np.max(np.abs(results[0][0] - fresh)) > 1e-3


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("threads", [2, 3])
@pytest.mark.parametrize("split", ["w-rows", "batch-rows"])
@pytest.mark.parametrize("tasks", ["one-per-thread", "two-per-thread"])
def test_forward_split_and_task_count_choices_train_like_the_reference(split_everything, dtype,
                                                                      threads, split, tasks):
    """The forward product split by W's rows (as for a W larger than L2) or by the batch's
    rows, one or two tasks per thread: each trains as the NumPy engine does. A batch of 67
    rows (more than W's 50 rows, not a multiple of 4) and a last one of 33."""
    fastnn.set_num_threads(threads)
    X, y = make_data(201, 90, 7, seed=51)
    sizes = [90, 50, 7]
    old = (_core.set_forward_split_bytes(0 if split == "w-rows" else 1 << 60),
           _core.set_task_split(2, 0 if tasks == "one-per-thread" else 1 << 60))
    try:
        nets = []
        for engine in ("cython", "numpy"):
            net = fastnn.Network(sizes, hidden="tanh", output="softmax", cost="log-likelihood",
                                 dtype=dtype, seed=52)
            net.fit(X, y, epochs=2, batch_size=67, optimizer=fastnn.SGD(eta=0.2, momentum=0.9),
                    lmbda=0.5, seed=53, engine=engine, monitor_training=False)
            nets.append(net)
    finally:
        _core.set_forward_split_bytes(old[0])
        _core.set_task_split(*old[1])
    assert_close(nets[0].params, nets[1].params, dtype, "params against the NumPy engine")
    assert np.max(np.abs(nets[0].params - fastnn.Network(sizes, dtype=dtype, seed=52).params)) > 1e-3


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_evaluation_and_gradient_agree_across_thread_counts(split_everything, dtype):
    X, y = make_data(300, SIZES[0], SIZES[-1], seed=21)
    net = fastnn.Network(SIZES, hidden=["sigmoid", "relu"], output="softmax", cost="log-likelihood",
                         dtype=dtype, seed=22)
    fastnn.set_num_threads(1)
    out1, (c1, g1) = net.feedforward(X), net.loss_and_gradient(X, y, lmbda=0.3)
    for threads in (2, 4, 8):
        fastnn.set_num_threads(threads)
        out, (c, g) = net.feedforward(X), net.loss_and_gradient(X, y, lmbda=0.3)
        np.testing.assert_array_equal(net.feedforward(X), out)
        np.testing.assert_array_equal(net.loss_and_gradient(X, y, lmbda=0.3)[1], g)
        assert_close(out, out1, dtype, "outputs")
        assert_close(g, g1, dtype, "gradient")
        assert abs(c - c1) <= (1e-12 if dtype == "float64" else 1e-5) * abs(c1)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("output,cost,k", [("softmax", "log-likelihood", 5),
                                           ("sigmoid", "cross-entropy", 5),
                                           ("sigmoid", "cross-entropy", 1),
                                           ("identity", "quadratic", 3)])
def test_evaluation_in_chunks_for_the_small_kernels(dtype, output, cost, k):
    """On more than one thread, evaluation and feedforward cut their rows into chunks the
    small forward kernels take (set_eval_small_chunks; at most 256 rows), and evaluation
    forms each row's cost in a region over
    the chunk's rows, added in row order after it. Loss (with L2), accuracy, the monitored
    history and the outputs agree with BLAS's large chunks to rounding and with a NumPy
    computation of the cost; region_times shows the chunks and the cost regions split in
    tasks; on one thread the chunks stay large (the same bits either way)."""
    if not _core.SMALL_KERNELS_AVAILABLE:
        pytest.skip("the small chunks are for the small kernels (AVX2 and FMA)")
    rng = np.random.default_rng(7)
    n = 1000
    X = rng.random((n, 40)).astype(dtype)
    y = rng.integers(0, max(k, 2), n)
    target = y if output != "identity" else rng.normal(size=(n, k)).astype(dtype)
    net = fastnn.Network([40, 19, k], hidden="tanh", output=output, cost=cost, dtype=dtype,
                         seed=3)
    old = (fastnn.get_num_threads(), _core.set_eval_small_chunks(True),
           _core.set_region_timing(False))
    try:
        fastnn.set_num_threads(2)
        results = {}
        base = net
        for small in (True, False):
            _core.set_eval_small_chunks(small)
            _core.set_region_timing(True)
            _core.region_times()
            net = base.copy()
            hist = net.fit(X[:10], target[:10], epochs=1, batch_size=10,
                           optimizer=fastnn.SGD(eta=1e-9), validation_data=(X, target), lmbda=0.4,
                           monitor_training=False)
            times = _core.region_times()
            _core.set_region_timing(False)
            results[small] = (net.loss(X, target, lmbda=0.4), net.evaluate(X, target)["accuracy"]
                              if output != "identity" else None, hist.val_cost[0],
                              net.feedforward(X))
            chunks = -(-n // 256) if small else 1
            assert times[("forward", 0)]["regions"] == chunks + 1  # and the training step
            _core.set_region_timing(True)
            _core.region_times()
            net.feedforward(X)
            assert _core.region_times()[("forward", 0)]["regions"] == chunks
            _core.set_region_timing(False)
            assert times[("cost", 1)]["regions"] == chunks
            cr = times[("cost", 1)]
            assert cr["caller_tasks"] + cr["helper_tasks"] > chunks  # split in tasks
        tol = 1e-12 if dtype == "float64" else 1e-5
        (l1, a1, v1, o1), (l2, a2, v2, o2) = results[True], results[False]
        assert abs(l1 - l2) <= tol * abs(l2) and abs(v1 - v2) <= tol * abs(v2)
        assert a1 == a2
        np.testing.assert_allclose(o1, o2, rtol=tol, atol=tol)   # feedforward's chunks too
        # the cost from the outputs, in NumPy
        A = o2.astype(np.float64)
        if cost == "log-likelihood":
            c0 = -np.log(A[np.arange(n), y])
        elif cost == "cross-entropy":
            T = (y[:, None] == np.arange(k)) if k > 1 else y[:, None].astype(float)
            c0 = -(T * np.log(A) + (1 - T) * np.log(1 - A)).sum(axis=1)
        else:
            c0 = 0.5 * ((A - target) ** 2).sum(axis=1)
        l2norm = sum(float((W.astype(np.float64) ** 2).sum()) for W in net.weights)
        assert l1 == pytest.approx(c0.mean() + 0.2 * l2norm / n, rel=1e-10 if dtype == "float64" else 1e-4)
        fastnn.set_num_threads(1)
        same = []
        for small in (True, False):
            _core.set_eval_small_chunks(small)
            same.append(net.loss(X, target, lmbda=0.4))
        assert same[0] == same[1]
    finally:
        fastnn.set_num_threads(old[0])
        _core.set_eval_small_chunks(old[1])
        _core.set_region_timing(old[2])


def test_split_training_matches_the_numpy_reference(split_everything):
    """The split path against the package's NumPy engine (an independent implementation)."""
    X, y = make_data(90, SIZES[0], SIZES[-1], seed=31)
    net = fastnn.Network(SIZES, hidden="sigmoid", output="sigmoid", cost="cross-entropy", seed=32)
    ref = net.copy()
    fastnn.set_num_threads(4)
    for engine, n in (("cython", net), ("numpy", ref)):
        n.fit(X, y, epochs=3, batch_size=16, optimizer=fastnn.SGD(eta=0.5, momentum=0.8, nesterov=True),
              lmbda=1.0, seed=33, engine=engine, monitor_training=False)
    scale = np.maximum(np.abs(ref.params), 1e-3)
    assert np.max(np.abs(net.params - ref.params) / scale) < 1e-12


def test_two_python_threads_share_the_pool(split_everything):
    """Two networks trained at once from two Python threads (the pool runs one region at a
    time; the other thread's regions run inline) end exactly as when trained one by one."""
    fastnn.set_num_threads(2)
    X, y = make_data(400, SIZES[0], SIZES[-1], seed=41)

    def job(seed):
        net = fastnn.Network(SIZES, hidden="relu", output="softmax", cost="log-likelihood", seed=seed)
        net.fit(X, y, epochs=3, batch_size=8, optimizer=fastnn.SGD(eta=0.05, momentum=0.9), seed=seed,
                monitor_training=False)
        return net.params

    expected = [job(s) for s in (1, 2)]
    got = [None, None]
    threads = [threading.Thread(target=lambda i=i: got.__setitem__(i, job(i + 1))) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for e, g in zip(expected, got):
        np.testing.assert_array_equal(g, e)


def _train_in_child(queue):
    queue.put(_train(2, "float64", 0.9, False, 7)[0])


@pytest.mark.skipif(sys.platform == "win32" or "fork" not in multiprocessing.get_all_start_methods(),
                    reason="fork is not available here")
def test_kernels_work_in_a_forked_child(split_everything):
    """The helpers do not survive fork(); the child makes its own and gets the same result."""
    expected = _train(2, "float64", 0.9, False, 7)[0]  # the parent's helpers now exist
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    proc = ctx.Process(target=_train_in_child, args=(queue,))
    proc.start()
    got = queue.get(timeout=120)
    proc.join(timeout=120)
    assert proc.exitcode == 0
    np.testing.assert_array_equal(got, expected)


def test_set_num_threads_validates_clamps_and_returns_the_old_value():
    old = fastnn.get_num_threads()
    try:
        assert fastnn.set_num_threads(3) == old
        assert fastnn.get_num_threads() == 3
        assert fastnn.set_num_threads(10_000) == 3
        assert fastnn.get_num_threads() == _core.MAX_THREADS
        assert fastnn.set_num_threads(np.int64(2)) == _core.MAX_THREADS
        assert fastnn.get_num_threads() == 2
        for bad, exc in ((0, ValueError), (-1, ValueError), (2.5, TypeError), ("2", TypeError),
                         (True, TypeError), (None, TypeError)):
            with pytest.raises(exc, match=r"'n' parameter of set_num_threads must be an integer >= 1\. "
                                          r"Got .* instead"):
                fastnn.set_num_threads(bad)
        assert fastnn.get_num_threads() == 2
    finally:
        fastnn.set_num_threads(old)


def _import_with_env(value):
    env = dict(os.environ, FASTNN_NUM_THREADS=value)
    code = "import fastnn; print(fastnn.get_num_threads())"
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          cwd=tempfile.gettempdir(), timeout=120)


def test_environment_variable_sets_the_default():
    r = _import_with_env("1")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "1"
    r = _import_with_env("99")
    assert r.returncode == 0, r.stderr
    assert int(r.stdout) == _core.MAX_THREADS


@pytest.mark.parametrize("value", ["zero", "0", "-3", "1.5"])
def test_bad_environment_variable_is_a_clear_error(value):
    r = _import_with_env(value)
    assert r.returncode != 0
    assert "environment variable FASTNN_NUM_THREADS must be an integer >= 1" in r.stderr
    assert repr(value if not value.lstrip("-").isdigit() else int(value)) in r.stderr


def test_default_is_the_cpus_this_process_may_use():
    env = {k: v for k, v in os.environ.items() if k != "FASTNN_NUM_THREADS"}
    r = subprocess.run([sys.executable, "-c", "import fastnn; print(fastnn.get_num_threads())"],
                       env=env, capture_output=True, text=True, cwd=tempfile.gettempdir(), timeout=120)
    assert r.returncode == 0, r.stderr
    expected = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    assert int(r.stdout) == max(1, min(expected, _core.MAX_THREADS))


def test_every_task_of_a_pooled_region_runs_exactly_once(split_everything):
    """The pool's statistics: tasks run by the caller plus tasks run by helpers add up to the
    tasks the regions had (per chunk, the first layer's product split by columns)."""
    fastnn.set_num_threads(2)
    _core.set_split_thresholds(1 << 16, 1 << 14)  # the defaults: only the large product splits
    net = fastnn.Network([784, 100, 10], hidden="relu", output="softmax", cost="log-likelihood",
                         dtype="float32", seed=0)
    X = np.random.default_rng(0).random((64 * 50, 784), dtype=np.float32)
    out = np.empty((X.shape[0], 10), np.float32)
    work = np.empty(_core.workspace_size(net._sizes_c, 64), np.float32)
    # BLAS splits a product into one task per thread; fastnn's own kernels into two per
    # thread below one_task_min_macs (64 x 784 x 100 is above the default) and one above
    for small_rows, one_task_min_macs, per_chunk in ((0, None, 2), (1 << 30, None, 2),
                                                     (1 << 30, 1 << 60, 4)):
        old = _core.set_small_max_rows(small_rows)
        old_split = _core.set_task_split(2, one_task_min_macs) if one_task_min_macs else None
        try:
            before = _core.pool_tasks_run()
            _core.feedforward(net._sizes_c, net._acts_c, net._cost_c, net.params, X, out, work, 64)
            after = _core.pool_tasks_run()
        finally:
            _core.set_small_max_rows(old)
            if old_split:
                _core.set_task_split(*old_split)
        assert (after[0] - before[0]) + (after[1] - before[1]) == per_chunk * 50
        np.testing.assert_allclose(out, net.feedforward(X), rtol=1e-4, atol=1e-6)  # other blocks


def test_phase_timing_accounts_the_training_steps():
    """The profiling switch: off by default (nothing accumulates), on it splits train_steps'
    time into its phases, and phase_times(reset=True) clears them."""
    old = _core.set_phase_timing(False)
    try:
        X, y = make_data(200, 20, 3, seed=51)
        net = fastnn.Network([20, 16, 3], seed=52)
        _core.phase_times()
        net.fit(X, y, epochs=1, batch_size=10, monitor_training=False)
        assert all(v == 0 for v in _core.phase_times().values())
        _core.set_phase_timing(True)
        net.fit(X, y, epochs=2, batch_size=10, monitor_training=False)
        times = _core.phase_times()
        assert set(times) == set(_core.PHASES)
        assert all(v >= 0 for v in times.values())
        assert times["forward"] > 0 and times["backward+update"] > 0
        assert all(v == 0 for v in _core.phase_times().values())  # the previous call reset them
    finally:
        _core.set_phase_timing(old)


def test_region_timing_counts_every_region_and_its_tasks_without_changing_a_bit(
        split_everything):
    """The regions' profiling switch: off by default (nothing accumulates); on, each step of
    a [37, 45, 23, 5] network counts one fused-update region per layer, one forward region
    per layer below the output layer, one tail region (the output layer's forward and delta,
    and the delta below it; without the small kernels, its forward and delta regions) and a
    delta region for the middle layer, each region at least one
    task, the regions split in tasks; the trained parameters are the same
    bits as with the switch off; region_times(reset=True) clears the counts."""
    fastnn.set_num_threads(2)
    X, y = make_data(95, SIZES[0], SIZES[-1], seed=53)
    old = _core.set_region_timing(False)
    try:
        def train(timed):
            _core.set_region_timing(timed)
            net = fastnn.Network(SIZES, hidden="tanh", output="softmax", cost="log-likelihood",
                                 seed=54)
            net.fit(X, y, epochs=2, batch_size=10, optimizer=fastnn.SGD(eta=0.1, momentum=0.9),
                    seed=55, monitor_training=False)
            return net.params

        _core.region_times()
        off = train(False)
        assert _core.region_times() == {}
        on = train(True)
        times = _core.region_times()
        np.testing.assert_array_equal(on, off)
        steps = 2 * 10  # 95 rows in batches of 10
        for layer in range(3):
            assert times[("gradient+update", layer)]["regions"] == steps
        for layer in (0, 1):
            assert times[("forward", layer)]["regions"] == steps
        assert times[("delta", 1)]["regions"] == steps
        if _core.SMALL_KERNELS_AVAILABLE:
            assert times[("tail", 2)]["regions"] == steps
            assert ("forward", 2) not in times and ("delta", 2) not in times
        else:  # no tail region without the small kernels
            assert times[("forward", 2)]["regions"] == times[("delta", 2)]["regions"] == steps
        for key, t in times.items():
            assert t["caller_tasks"] + t["helper_tasks"] >= t["regions"], key
            assert min(t["wall_s"], t["caller_s"], t["helper_s"]) >= 0, key
            # (either thread may run all of a region's tasks: a spinning helper can take
            # them before the caller starts)
            assert t["caller_tasks"] + t["helper_tasks"] > 0, key
            assert t["caller_s"] + t["helper_s"] > 0, key
        # the regions split in two or more tasks (which thread runs them is up to the pool:
        # under load the caller may take them all before the helper wakes)
        assert sum(t["caller_tasks"] + t["helper_tasks"] - t["regions"]
                   for t in times.values()) > 0
        assert _core.region_times() == {}  # the previous call reset them
    finally:
        _core.set_region_timing(old)


@pytest.mark.parametrize("split,unit,ntasks,threads", [
    (s, u, nt, th) for s in (0, 1, 7, 30, 49, 100, 784) for u in (1, 3, 4, 8, 16)
    for th in (1, 2, 3) for nt in (th, 2 * th, 7)])
def test_task_blocks_tile_the_range_and_share_it_evenly_between_threads(split, unit, ntasks,
                                                                        threads):
    """The tasks' blocks lie in reverse task order and cover [0, split) once, each a whole
    number of units (the range's end may cut the last, which goes to task 0: the caller's);
    thread h runs tasks h, h + T, ... (T = the threads, at most the tasks), and the threads'
    shares of units differ by at most one, the caller's being the smaller."""
    blocks = _core.task_blocks(split, unit, ntasks, threads)
    assert len(blocks) == ntasks
    at = 0
    for j0, j1 in reversed(blocks):
        assert j0 == at and j1 >= j0
        assert j0 % unit == 0 or j0 == split   # (empty blocks past the end)
        assert j1 % unit == 0 or j1 == split
        at = j1
    assert at == split
    units = -(-split // unit)
    T = min(threads, ntasks)
    shares = [sum(-(-(j1 - j0) // unit) for j0, j1 in blocks[h::T]) for h in range(T)]
    assert sum(shares) == units
    assert max(shares) - min(shares) <= 1
    assert shares[0] == min(shares)
    assert blocks[0][1] == split


def test_task_blocks_split_a_hundred_rows_in_halves_and_thirty_as_the_fused_kernel_needs():
    """C3's and S1's forward product (100 rows of W, any block, 2 threads): 50 rows each, not
    48 and 52. C1's (30 rows in 4-row blocks, 2 tasks per thread): 14 rows for the caller
    (tasks 0 and 2) and 16 for the helper, the best whole 4-row blocks allow. S1's float64
    update (784 columns, one cache line = 8 columns): 392 each."""
    assert _core.task_blocks(100, 1, 2, 2) == [(50, 100), (0, 50)]
    c1 = _core.task_blocks(30, 4, 4, 2)
    assert [b - a for a, b in c1] == [6, 8, 8, 8]
    assert _core.task_blocks(784, 8, 2, 2) == [(392, 784), (0, 392)]
    with pytest.raises(ValueError, match="unit >= 1"):
        _core.task_blocks(10, 0, 2, 2)


@pytest.mark.parametrize("split,unit", [(100, 1), (784, 16), (784, 8), (30, 4), (10, 4), (3, 1)])
@pytest.mark.parametrize("speeds", [[1, 1], [3, 1], [1, 3], [1, 1e6], [0.8, 1, 1.2, 2], [5, 1, 1]])
def test_balanced_blocks_tile_the_range_in_proportion_to_the_speeds(split, unit, speeds):
    """Blocks sized by the threads' speeds (one task per thread) lie in reverse task order,
    cover [0, split) once in whole units (the short last one the caller's), give every task
    at least one unit and each thread units in proportion to its speed, to within one; equal
    speeds give task_range's blocks."""
    T = len(speeds)
    units = -(-split // unit)
    if units < T:
        with pytest.raises(ValueError, match="a unit for each"):
            _core.task_blocks(split, unit, T, T, speeds)
        return
    blocks = _core.task_blocks(split, unit, T, T, speeds)
    at = 0
    for j0, j1 in reversed(blocks):
        assert j0 == at and j1 > j0
        assert j0 % unit == 0 and (j1 % unit == 0 or j1 == split)
        at = j1
    assert at == split and blocks[0][1] == split
    got = [-(-(j1 - j0) // unit) for j0, j1 in blocks]
    want = [units * s / sum(speeds) for s in speeds]
    assert all(g >= 1 for g in got)
    assert all(abs(g - w) < 1 + 1e-9 or g == 1 or g == units - (T - 1) for g, w in zip(got, want)), (got, want)
    if len(set(speeds)) == 1:
        assert blocks == _core.task_blocks(split, unit, T, T)


def test_balanced_blocks_reject_bad_speeds():
    for bad in ([1], [1, 0], [1, -2], [1, float("nan")], [1, float("inf")]):
        with pytest.raises(ValueError, match="speeds needs one positive finite value per task"):
            _core.task_blocks(100, 1, 2, 2, bad)
    with pytest.raises(ValueError, match="mode must be 0, 1 or 2"):
        _core.set_balance(3)


# batch -> the hidden width: the first layer's forward product splits W's rows (batches of
# 40 and 20: more rows than the batch has) or the batch's rows (64), its fused update W's
# columns (40, 64) or rows (20), every region with one task per thread
BALANCED_HIDDEN = {40: 64, 20: 96, 64: 32}


def _train_balanced(dtype, rule, balance, mode, batch, threads=2, hidden="relu"):
    """Two epochs of train_steps on 203 rows with a net of BALANCED_HIDDEN[batch] hidden
    units, in the regions balance_free lets the speeds size."""
    fastnn.set_num_threads(threads)
    X, y = make_data(203, 300, 10, seed=21)
    net = fastnn.Network([300, BALANCED_HIDDEN[batch], 10], hidden=hidden, output="softmax",
                         cost="log-likelihood", dtype=dtype, seed=22)
    opt = fastnn.Adam(eta=0.01) if rule == "adam" else fastnn.SGD(eta=0.1, momentum=0.9,
                                                                  nesterov=rule == "nesterov")
    from fastnn.training import Trainer
    trainer = Trainer(net, X.astype(dtype), None, y, batch_size=batch, optimizer=opt, lmbda=0.5)
    if balance is not None:
        trainer.balance[:] = np.tile(np.r_[balance, np.ones(_core.MAX_THREADS - len(balance))],
                                     len(trainer.balance) // _core.MAX_THREADS)
    else:
        trainer.balance = None
    old = _core.set_balance(mode)
    losses = []
    try:
        before = _core.balance_counts()
        rng = np.random.default_rng(23)
        for _ in range(2):
            done, finite, loss = trainer._steps(rng.permutation(len(X)).astype(np.intp), 0, len(X),
                                                True)
            assert finite and done == -(-len(X) // batch)
            losses.append(loss)
        after = _core.balance_counts()
    finally:
        _core.set_balance(old)
    return (net.params.copy(), opt._state_for(net)[0].copy(), losses, after[0] - before[0],
            after[1] - before[1])


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("rule", ["momentum", "nesterov", "adam"])
@pytest.mark.parametrize("batch", [40, 20, 64])
@pytest.mark.parametrize("hidden", ["relu", "sigmoid"])
def test_blocks_sized_by_the_speeds_give_the_same_bits(dtype, rule, batch, hidden):
    """The regions whose blocks follow the threads' speeds compute every element the same way
    in any block: training with the caller's share at 3/4, at 1/4, learnt from the timings,
    or with equal blocks gives identical parameters and optimizer state, bit for bit. The
    running loss (its L2 term needs the sum of squares of the new weights, which the
    balanced update leaves to a pass of its own) is the same bits whatever the blocks, and
    agrees with the unbalanced run's (the tasks' partial sums) to rounding. Sigmoid units
    check that the vector exp gives each activation the same bits in any block."""
    ref_p, ref_v, ref_loss, regions, _ = _train_balanced(dtype, rule, None, 1, batch,
                                                         hidden=hidden)
    assert regions == 0
    first_loss = None
    for speeds, mode in (([3, 1], 2), ([1, 3], 2), ([1, 1], 1)):
        p, v, loss, regions, learned = _train_balanced(dtype, rule, speeds, mode, batch,
                                                       hidden=hidden)
        # forward and update of layer 0 in each step of both epochs but their last (3 or 11
        # rows: too small a product for one task per thread), but the forward over the
        # batch's rows in float64 (whose k-tiled kernel takes blocks of up to 16 rows)
        per_step = 1 if batch == 64 and dtype == "float64" else 2
        assert regions == 2 * per_step * (203 // batch), (speeds, regions)
        if mode == 2:
            assert learned == 0
        np.testing.assert_array_equal(p, ref_p, err_msg=f"speeds {speeds}")
        np.testing.assert_array_equal(v, ref_v, err_msg=f"speeds {speeds}")
        first_loss = loss if first_loss is None else first_loss
        assert loss == first_loss, (speeds, loss, first_loss)
        np.testing.assert_allclose(loss, ref_loss, rtol=1e-12)


def test_speeds_move_toward_the_measured_rates():
    """Each region moves the threads' speeds a quarter of the way toward its measured rates
    (units per second, relative to their mean; the speeds keep a mean of 1), so a helper
    taking twice as long per unit for a while ends with about half the caller's speed; a
    task 4x slower or faster than the mean (preempted) leaves them alone."""
    w = [1.0, 1.0]
    for _ in range(40):
        w = _core.balance_step(w, [50, 50], [100_000, 200_000])
    assert w[0] / w[1] == pytest.approx(2.0, rel=1e-3)
    assert sum(w) == pytest.approx(2.0)
    w1 = _core.balance_step([1.0, 1.0], [50, 50], [100_000, 200_000])
    assert w1 == pytest.approx([1.0 + 0.25 / 3, 1.0 - 0.25 / 3])
    assert _core.balance_step([1.0, 1.0], [50, 50], [100_000, 1_000_000]) == [1.0, 1.0]
    # blocks in proportion to the speeds, finishing together: nothing to move
    assert _core.balance_step([1.2, 0.8], [60, 40], [100_000, 100_000]) == pytest.approx([1.2, 0.8])


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("rule", ["plain", "momentum", "nesterov", "adam"])
@pytest.mark.parametrize("batch,threads", [(40, 1), (40, 2), (100, 2), (20, 2)])
def test_fused_update_skipping_zero_deltas_gives_the_same_bits(dtype, rule, batch, threads):
    """The fused update's sparse variant (each row of W summed over the batch rows whose
    delta is not zero, in order: a ReLU layer's delta is zero wherever its unit is off) adds
    the same terms in the same order as the dense 4 x 3 blocks, so training with it forced
    on (at any density) or off gives the same bits. 301 inputs leave a partial vector (the
    dense code's); batches of 40 take 12-vector strips, 100 take 6; with 20 rows the two
    threads split W's 96 rows (one task each: 48 rows, enough to pack the strips)."""
    fastnn.set_num_threads(threads)
    X, y = make_data(230, 301, 7, seed=31)
    out = {}
    for density in (0.0, 1.0, 0.6):
        old = _core.set_fused_sparse(density)
        try:
            net = fastnn.Network([301, 96 if batch == 20 else 48, 7], hidden="relu",
                                 output="softmax", cost="log-likelihood", dtype=dtype, seed=32)
            opt = (fastnn.Adam(eta=0.01) if rule == "adam" else
                   fastnn.SGD(eta=0.1, momentum=0.0 if rule == "plain" else 0.9,
                              nesterov=rule == "nesterov"))
            net.fit(X.astype(dtype), y, epochs=2, batch_size=batch, optimizer=opt, lmbda=0.5,
                    seed=33, monitor_training=False)
            out[density] = (net.params.copy(), opt._state_for(net)[0].copy())
        finally:
            _core.set_fused_sparse(old)
    for density in (1.0, 0.6):
        np.testing.assert_array_equal(out[density][0], out[0.0][0], err_msg=f"density {density}")
        np.testing.assert_array_equal(out[density][1], out[0.0][1], err_msg=f"density {density}")


def test_set_fused_sparse_validates_and_returns_the_old_value():
    old = _core.set_fused_sparse(0.25)
    try:
        assert _core.set_fused_sparse(0.5) == 0.25
        for bad in (-0.1, 1.5):
            with pytest.raises(ValueError, match=r"max_density must be in \[0, 1\]"):
                _core.set_fused_sparse(bad)
    finally:
        _core.set_fused_sparse(old)
