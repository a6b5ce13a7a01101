"""fit: the Cython training path against the NumPy reference and against the
update equations written in the tests, continuation, monitoring, callbacks,
divergence, threads and reproducibility."""
import threading

import numpy as np
import pytest

import fastnn
from fastnn.training import Callback, EarlyStopping, History
from conftest import (epoch_perms, make_data, max_rel, np_forward, np_gradient, per_sample_gradients,
                      sgd_oracle, targets, weight_mask)

OPTIMIZERS = [(0.0, False), (0.9, False), (0.9, True)]  # plain, momentum, Nesterov
OPT_IDS = ["sgd", "momentum", "nesterov"]


class Recorder(Callback):
    """Records params and velocity after every progress chunk and every epoch."""

    def __init__(self, net, opt):
        self.net, self.opt = net, opt
        self.steps, self.epochs, self.progress = [], [], []

    def on_progress(self, epoch, samples_done, n_samples):
        self.progress.append((epoch, samples_done, n_samples))
        self.steps.append((self.net.params.copy(), self.opt.velocity.copy()))

    def on_epoch_end(self, history):
        self.epochs.append((self.net.params.copy(), self.opt.velocity.copy()))
        return False


def _run(net, X, y, opt, engine, epochs, batch_size, lmbda, seed=0, shuffle=True):
    rec = Recorder(net, opt)
    hist = net.fit(X, y, epochs=epochs, batch_size=batch_size, optimizer=opt, lmbda=lmbda, seed=seed,
                   shuffle=shuffle, callbacks=[rec], progress_every=batch_size, engine=engine,
                   monitor_training=False)
    return rec, hist


def oracle_fit(net, X, y, *, epochs, batch_size, eta, mu, nesterov, lmbda, seed, shuffle=True,
               params=None, vel=None):
    """DESIGN.md's training loop in float64 from per-sample gradients: returns per-step (params, vel)."""
    n = X.shape[0]
    T = targets(y, net.sizes[-1])
    mask = weight_mask(net.sizes)
    p = np.asarray(net.params if params is None else params, dtype=np.float64).copy()
    v = np.zeros_like(p) if vel is None else np.asarray(vel, dtype=np.float64).copy()
    Xd = np.asarray(X, dtype=np.float64)
    out = []
    for perm in epoch_perms(seed, n, epochs, shuffle):
        for s in range(0, n, batch_size):
            idx = perm[s:s + batch_size]
            g = np.mean(per_sample_gradients(net.sizes, net.activations, net.cost, p, Xd[idx], T[idx]),
                        axis=0)
            p, v = sgd_oracle(p, g, v, mask, eta, mu, lmbda / n, nesterov)
            out.append((p.copy(), v.copy()))
    return out


# --------------------------------------------------------------------------- step for step


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("mu,nesterov", OPTIMIZERS, ids=OPT_IDS)
def test_cython_equals_numpy_reference_step_for_step(mu, nesterov, dtype, update_path):
    n, bs, epochs = 53, 5, 5  # 11 steps per epoch, the last one of 3 rows: 55 steps
    X, y = make_data(n, 6, 3, seed=1)
    net_c = fastnn.Network([6, 8, 3], hidden="tanh", output="softmax", cost="log-likelihood",
                           dtype=dtype, seed=2)
    net_n = net_c.copy()
    opt_c = fastnn.SGD(eta=0.2, momentum=mu, nesterov=nesterov)
    opt_n = fastnn.SGD(eta=0.2, momentum=mu, nesterov=nesterov)
    rec_c, hist_c = _run(net_c, X, y, opt_c, "cython", epochs, bs, lmbda=0.8, seed=3)
    rec_n, hist_n = _run(net_n, X, y, opt_n, "numpy", epochs, bs, lmbda=0.8, seed=3)
    assert len(rec_c.steps) == len(rec_n.steps) == epochs * 11 >= 50
    assert len(rec_c.epochs) == len(rec_n.epochs) == epochs
    tol = 1e-12 if dtype == "float64" else 1e-5
    for i, ((pc, vc), (pn, vn)) in enumerate(zip(rec_c.steps, rec_n.steps)):
        assert pc.dtype == np.dtype(dtype)
        assert max_rel(pc, pn) < tol, f"params differ after step {i}"
        if mu:
            assert max_rel(vc, vn) < tol, f"velocities differ after step {i}"
        else:
            assert not vc.any() and not vn.any()
    for (pc, vc), (pn, vn) in zip(rec_c.epochs, rec_n.epochs):
        assert max_rel(pc, pn) < tol
    assert max_rel(net_c.params, net_n.params) < tol
    assert max_rel(opt_c.velocity, opt_n.velocity) < (tol if mu else np.inf)
    # the training really moved the parameters
    assert max_rel(net_c.params, fastnn.Network([6, 8, 3], dtype=dtype, seed=2).params) > 1e-2


@pytest.mark.parametrize("mu,nesterov", OPTIMIZERS, ids=OPT_IDS)
@pytest.mark.parametrize("hidden,output,cost,kind", [
    ("relu", "sigmoid", "cross-entropy", "labels"),
    (["sigmoid", "identity"], "tanh", "quadratic", "soft"),
    ("tanh", "softmax", "quadratic", "labels"),
])
def test_cython_equals_independent_oracle_step_for_step(hidden, output, cost, kind, mu, nesterov,
                                                       update_path):
    n, bs, epochs = 17, 4, 3  # steps of 4, 4, 4, 4, 1
    X, y = make_data(n, 5, 3, seed=4, kind=kind)
    sizes = [5, 6, 3] if isinstance(hidden, str) else [5, 6, 4, 3]
    net = fastnn.Network(sizes, hidden=hidden, output=output, cost=cost, seed=5)
    expected = oracle_fit(net, X, y, epochs=epochs, batch_size=bs, eta=0.3, mu=mu, nesterov=nesterov,
                          lmbda=1.1, seed=6)
    opt = fastnn.SGD(eta=0.3, momentum=mu, nesterov=nesterov)
    rec, _ = _run(net, X, y, opt, "cython", epochs, bs, lmbda=1.1, seed=6)
    assert len(rec.steps) == len(expected) == 15
    for i, ((p, v), (pe, ve)) in enumerate(zip(rec.steps, expected)):
        assert max_rel(p, pe) < 1e-11, f"params differ after step {i}"
        assert max_rel(v, ve, floor=1e-12) < 1e-11, f"velocities differ after step {i}"


@pytest.mark.parametrize("mu,nesterov", OPTIMIZERS, ids=OPT_IDS)
def test_wide_layers_step_for_step(mu, nesterov, update_path):
    """Layers wider than the kernels' column blocks (256) and batches of 1, 3 and 70 rows."""
    X, y = make_data(74, 300, 260, seed=60)
    net = fastnn.Network([300, 270, 260], hidden="relu", output="softmax", cost="log-likelihood", seed=61)
    for bs in (70, 3, 1):
        ref = net.copy()
        opt, ref_opt = (fastnn.SGD(eta=0.1, momentum=mu, nesterov=nesterov) for _ in range(2))
        stop = bs * 2 + 1 if bs < 70 else 74  # a few steps, the last one partial
        rows = slice(0, stop)
        net.fit(X[rows], y[rows], epochs=1, batch_size=bs, optimizer=opt, lmbda=2.0, seed=1,
                monitor_training=False)
        ref.fit(X[rows], y[rows], epochs=1, batch_size=bs, optimizer=ref_opt, lmbda=2.0, seed=1,
                engine="numpy", monitor_training=False)
        assert max_rel(net.params, ref.params) < 1e-12
        assert max_rel(opt.velocity, ref_opt.velocity, floor=1e-300) < (1e-12 if mu else np.inf)


@pytest.mark.parametrize("sizes", [[6, 7, 3], [100, 7, 3]], ids=["rows-of-24-bytes", "rows-of-400-bytes"])
@pytest.mark.parametrize("batch_size", [4, 41])
def test_prefetch_switch_does_not_change_results(sizes, batch_size):
    """The next batch's rows prefetched (their first 128 bytes, the default; whole rows;
    none) or not, and the forward kernel's prefetch of its next 4 rows on or off (batches
    of 41 take its row-block variant): the same bits."""
    from fastnn import _core
    X, y = make_data(90, sizes[0], 3, seed=62)
    results = []
    for on, nbytes, fwd in ((True, 128, True), (True, 1 << 20, True), (True, 0, True),
                            (False, 128, True), (True, 128, False)):
        old = _core.set_prefetch(on), _core.set_prefetch_bytes(nbytes), _core.set_forward_prefetch(fwd)
        try:
            net = fastnn.Network(sizes, seed=63)
            net.fit(X, y, epochs=2, batch_size=batch_size, seed=1,
                    optimizer=fastnn.SGD(eta=0.3, momentum=0.5))
            results.append(net.params)
        finally:
            _core.set_prefetch(old[0])
            _core.set_prefetch_bytes(old[1])
            _core.set_forward_prefetch(old[2])
    for r in results[1:]:
        np.testing.assert_array_equal(r, results[0])


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize("batch_size", [5, 40])
@pytest.mark.parametrize("rule", ["momentum", "adam"])
def test_update_prefetch_of_the_next_batch_does_not_change_results(dtype, threads, batch_size,
                                                                     rule):
    """Layer 0's fused update asking for the next batch's rows as it goes (the lines shared out
    between the tasks of each thread) or not, and the fused update asking for each row's
    strip after next as it packs a strip or not: the same bits, with every product split
    into tasks on 1-3 threads, the fused kernel's in-place (batch 5) and packed (batch 40)
    paths and a last partial batch (103 rows); and both equal the NumPy engine to
    rounding."""
    from fastnn import _core
    X, y = make_data(103, 70, 4, seed=64)
    results = []
    old = (_core.set_split_thresholds(0, 1), fastnn.set_num_threads(threads),
           _core.set_update_prefetch_bytes(0), _core.set_update_strip_prefetch(False))
    try:
        for nbytes, strips, engine in ((0, False, "cython"), (1 << 40, True, "cython"),
                                       (0, False, "numpy")):
            _core.set_update_prefetch_bytes(nbytes)
            _core.set_update_strip_prefetch(strips)
            net = fastnn.Network([70, 37, 4], hidden="relu", output="softmax",
                                 cost="log-likelihood", dtype=dtype, seed=65)
            opt = fastnn.Adam(eta=0.01) if rule == "adam" else fastnn.SGD(eta=0.2, momentum=0.9)
            net.fit(X, y, epochs=2, batch_size=batch_size, optimizer=opt, lmbda=0.5, seed=66,
                    engine=engine, monitor_training=False)
            results.append(net.params)
    finally:
        _core.set_split_thresholds(*old[0])
        fastnn.set_num_threads(old[1])
        _core.set_update_prefetch_bytes(old[2])
        _core.set_update_strip_prefetch(old[3])
    np.testing.assert_array_equal(results[1], results[0])
    tol = 1e-10 if dtype == "float64" else 1e-3
    assert max_rel(results[0], results[2], floor=1e-2) < tol
    assert np.max(np.abs(results[0] - fastnn.Network([70, 37, 4], dtype=dtype, seed=65).params)) > 1e-3


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("rule", ["plain", "momentum", "nesterov", "adam"])
@pytest.mark.parametrize("threads", [1, 2, 3])
def test_next_forward_formed_by_the_update_gives_the_same_bits(dtype, rule, threads):
    """Layer 0's fused update also forms the next batch's A_1 with the new parameters (here
    in tasks of any size: min_rows 0). Two epochs give the very bits of a separate forward
    product per step, for every hidden activation, fan-ins of several k-tiles (784: three of
    256 and one of 16) and of one (40), and batches that take the k-tiled forward kernel
    (float64 up to 16 rows, float32 up to 3) with a last partial batch; and they equal the
    NumPy engine to rounding. The count of steps that started from the update's A_1 shows
    the path was taken exactly where it may be (never for batches past the k-tiled
    kernel's, nor for the step before a partial batch)."""
    from fastnn import _core
    tiled = 16 if dtype == "float64" else 3
    cases = [(784, 1, "sigmoid"), (40, tiled, "relu"), (784, 7 if dtype == "float64" else 2, "tanh"),
             (40, tiled + 1, "identity")]
    old = (_core.set_split_thresholds(0, 1), fastnn.set_num_threads(threads),
           _core.set_fused_next_forward(True, 0))
    try:
        for n_in, batch_size, hidden in cases:
            X, y = make_data(61, n_in, 5, seed=n_in + batch_size)
            X = X * 0.2
            results, counts = [], []
            for fused, engine in ((False, "cython"), (True, "cython"), (True, "numpy")):
                _core.set_fused_next_forward(fused, 0)
                net = fastnn.Network([n_in, 19, 5], hidden=hidden, output="softmax",
                                     cost="log-likelihood", dtype=dtype, seed=81)
                opt = (fastnn.Adam(eta=0.01) if rule == "adam" else
                       fastnn.SGD(eta=0.1, momentum=0.0 if rule == "plain" else 0.9,
                                  nesterov=rule == "nesterov"))
                _core.next_forward_steps()
                net.fit(X, y, epochs=2, batch_size=batch_size, optimizer=opt, lmbda=0.5, seed=82,
                        engine=engine, monitor_training=False)
                counts.append(_core.next_forward_steps())
                results.append(net.params)
            case = f"fan-in {n_in}, batch {batch_size}, {hidden}"
            full = 61 // batch_size
            assert counts[0] == 0 and counts[2] == 0, case
            assert counts[1] == (2 * (full - 1) if batch_size <= tiled else 0), case
            np.testing.assert_array_equal(results[1], results[0], err_msg=case)
            tol = 1e-10 if dtype == "float64" else 2e-3
            assert max_rel(results[1], results[2], floor=1e-2) < tol, case
            assert np.max(np.abs(results[1] - fastnn.Network([n_in, 19, 5], dtype=dtype,
                                                             seed=81).params)) > 1e-3, case
    finally:
        _core.set_split_thresholds(*old[0])
        fastnn.set_num_threads(old[1])
        _core.set_fused_next_forward(*old[2])


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("threads", [1, 2, 3])
def test_tail_region_gives_the_same_bits_as_the_separate_steps(dtype, threads):
    """A step's output-layer forward, output delta and the delta below it run as one region
    over blocks of 4 batch rows (set_fused_tail), here split at any size
    (set_split_thresholds(0, 1)). Against the three separate steps: for each output/cost pair
    (labels with one and several outputs, one-hot and multi-output targets), one and two
    hidden layers, batches of 1, 6 and 21 rows with a last partial batch, every rule, the
    running loss of an epoch (scikit-learn's loss_curve_, whose rows' costs the tail region
    forms) and the monitored cost: the very bits, and the
    NumPy engine to rounding. region_times shows the tail regions ran (float32's split in
    tasks; float64's keep one, see run_job).
    With the default split: C2's layer widths on 50 inputs (batch 128, its delta of 38 400
    multiply-adds) and a float64 output layer of 300 inputs (more than one k-tile; batch 20)
    give the same bits on 1, 2 and 3 threads, and as the separate steps."""
    from fastnn import _core
    if not _core.SMALL_KERNELS_AVAILABLE:
        pytest.skip("the tail region needs the small kernels (AVX2 and FMA)")
    pairs = [("sigmoid", "cross-entropy", 4), ("softmax", "log-likelihood", 5),
             ("sigmoid", "quadratic", 3), ("identity", "quadratic", 2), ("sigmoid", "cross-entropy", 1),
             ("tanh", "quadratic", 3)]
    old = (_core.set_fused_tail(True), fastnn.set_num_threads(threads),
           _core.set_split_thresholds(0, 1), _core.set_region_timing(False))
    try:
        for sizes, hidden in (([29, 13], "relu"), ([29, 17, 9], ["tanh", "sigmoid"])):
            for (output, cost, k), batch, rule in zip(pairs, [1, 6, 21, 6, 21, 6],
                                                      ["momentum", "nesterov", "plain", "adam",
                                                       "momentum", "nesterov"]):
                X, y = make_data(47, sizes[0], max(k, 2), seed=k + batch)
                X = X * 0.5
                if k == 1:
                    y = (y > 0).astype(np.int64)
                target = y if output in ("sigmoid", "softmax") else np.sin(
                    np.arange(47 * k).reshape(47, k) * 0.37).astype(dtype) * 0.5
                results = []
                for tail, engine in ((False, "cython"), (True, "cython"), (True, "numpy")):
                    _core.set_fused_tail(tail)
                    _core.set_region_timing(True)
                    _core.region_times()
                    net = fastnn.Network(sizes + [k], hidden=hidden, output=output, cost=cost,
                                         dtype=dtype, seed=3)
                    opt = (fastnn.Adam(eta=0.01) if rule == "adam" else
                           fastnn.SGD(eta=0.05, momentum=0.0 if rule == "plain" else 0.9,
                                      nesterov=rule == "nesterov"))
                    hist = net.fit(X, target, epochs=2, batch_size=batch, optimizer=opt,
                                   lmbda=0.2, seed=4, engine=engine)
                    times = _core.region_times()
                    _core.set_region_timing(False)
                    if engine == "cython":
                        # the running loss of an epoch (scikit-learn's loss_curve_): its rows'
                        # costs come out of the tail region
                        from fastnn.training import Trainer
                        tgt = (np.empty((0, k), dtype), y) if output != "identity" else (
                            np.ascontiguousarray(target), np.empty(0, np.intp))
                        tr = Trainer(net.copy(), X.astype(dtype), *tgt, batch_size=batch,
                                     optimizer=fastnn.SGD(eta=0.05, momentum=0.9), lmbda=0.2,
                                     l2_scale="batch")
                        running = tr.run_epoch(np.arange(47)[::-1].copy(), want_loss=True)
                    tails = times.get(("tail", min(len(sizes) - 1, 3)), {})
                    if tail and engine == "cython":
                        steps = 2 * -(-47 // batch)
                        assert tails.get("regions") == steps, (sizes, output, tails)
                        if threads > 1 and batch > 4 and _core.POOL_AVAILABLE and dtype == "float32":
                            assert tails["caller_tasks"] + tails["helper_tasks"] > steps
                    else:
                        assert not tails
                    results.append((net.params, hist.train_cost, running))
                case = f"{sizes} {output} / {cost} / {k} outputs, batch {batch}, {rule}"
                np.testing.assert_array_equal(results[1][0], results[0][0], err_msg=case)
                np.testing.assert_array_equal(results[1][1], results[0][1], err_msg=case)
                assert results[1][2] == results[0][2] and np.isfinite(results[1][2]), case
                tol = 1e-10 if dtype == "float64" else 2e-3
                assert max_rel(results[1][0], results[2][0], floor=1e-2) < tol, case
                assert np.max(np.abs(results[1][0] - fastnn.Network(
                    sizes + [k], hidden=hidden, output=output, cost=cost, dtype=dtype,
                    seed=3).params)) > 1e-3, case
        _core.set_split_thresholds(*old[2])
        for sizes, batch in (([50, 30, 10], 128), ([50, 300, 10], 20)):
            X, y = make_data(300, 50, 10, seed=batch)
            runs = []
            for tail, t in ((True, 1), (True, 2), (True, 3), (False, threads)):
                _core.set_fused_tail(tail)
                fastnn.set_num_threads(t)
                net = fastnn.Network(sizes, hidden="sigmoid", output="softmax",
                                     cost="log-likelihood", dtype=dtype, seed=8)
                net.fit(X * 0.3, y, epochs=2, batch_size=batch,
                        optimizer=fastnn.SGD(eta=0.1, momentum=0.9), seed=9, monitor_training=False)
                runs.append(net.params)
            for got in runs[1:]:
                np.testing.assert_array_equal(got, runs[0], err_msg=f"{sizes}, batch {batch}")
    finally:
        _core.set_fused_tail(old[0])
        fastnn.set_num_threads(old[1])
        _core.set_split_thresholds(*old[2])
        _core.set_region_timing(old[3])


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("threads", [1, 2])
def test_flat_activation_and_label_delta_give_the_same_bits_as_row_by_row(dtype, threads):
    """Elementwise activations over whole rows run as one pass over the block, and the output
    delta for labels as scale * a everywhere then scale * (a - 1) at the label
    (set_flat_activate). For every hidden activation, each output/cost pair (labels with
    one and with several outputs, and one-hot targets), a last partial batch and a label no
    row of a batch has: two epochs, predictions and the monitored cost give the very bits of
    the row-by-row code, and equal the NumPy engine to rounding."""
    from fastnn import _core
    pairs = [("sigmoid", "cross-entropy", 4), ("softmax", "log-likelihood", 4),
             ("sigmoid", "quadratic", 4), ("identity", "quadratic", 3), ("sigmoid", "cross-entropy", 1)]
    old = (_core.set_flat_activate(True), fastnn.set_num_threads(threads))
    try:
        for hidden in ("sigmoid", "tanh", "relu", "identity"):
            for output, cost, k in pairs:
                X, y = make_data(53, 23, max(k, 2), seed=len(hidden) + k)
                y = np.where(y == 1, 0, y) if k > 2 else y          # class 1 never appears
                if k == 1:
                    y = (y > 0).astype(np.int64)
                target = y if output != "identity" else np.eye(k)[y % k]
                results = []
                for flat, engine in ((False, "cython"), (True, "cython"), (True, "numpy")):
                    _core.set_flat_activate(flat)
                    net = fastnn.Network([23, 11, k], hidden=hidden, output=output, cost=cost,
                                         dtype=dtype, seed=7)
                    hist = net.fit(X, target, epochs=2, batch_size=8,
                                   optimizer=fastnn.SGD(eta=0.1, momentum=0.9), lmbda=0.3,
                                   seed=5, engine=engine)
                    results.append((net.params, net.feedforward(X), hist.train_cost[-1]))
                case = f"{hidden} / {output} / {cost} / {k} outputs"
                for a, b in zip(results[0], results[1]):
                    np.testing.assert_array_equal(a, b, err_msg=case)
                tol = 1e-10 if dtype == "float64" else 2e-3
                assert max_rel(results[1][0], results[2][0], floor=1e-2) < tol, case
                assert np.max(np.abs(results[1][0] - fastnn.Network(
                    [23, 11, k], hidden=hidden, output=output, cost=cost, dtype=dtype,
                    seed=7).params)) > 1e-3, case
    finally:
        _core.set_flat_activate(old[0])
        fastnn.set_num_threads(old[1])


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("rule", ["plain", "momentum", "nesterov", "adam"])
@pytest.mark.parametrize("batch_size", [3, 40])
def test_fused_update_for_every_count_of_columns_past_the_last_vector(dtype, rule, batch_size):
    """Fan-ins 1..17 (no whole vector of 4 or 8 at first, then every count of columns past the
    last one, and none), 6 units (a 4-row block of W and two single rows), batches the fused
    kernel reads in place (3) and packs (40): two epochs equal the NumPy engine to rounding,
    the parameters past the last vector included."""
    for n_in in range(1, 18):
        X, y = make_data(87, n_in, 3, seed=70 + n_in)
        nets = []
        for engine in ("cython", "numpy"):
            net = fastnn.Network([n_in, 6, 3], hidden="tanh", output="softmax",
                                 cost="log-likelihood", dtype=dtype, seed=71)
            opt = (fastnn.Adam(eta=0.01) if rule == "adam" else
                   fastnn.SGD(eta=0.2, momentum=0.0 if rule == "plain" else 0.9,
                              nesterov=rule == "nesterov"))
            net.fit(X, y, epochs=2, batch_size=batch_size, optimizer=opt, lmbda=0.5, seed=72,
                    engine=engine, monitor_training=False)
            nets.append((net, opt))
        tol = 1e-11 if dtype == "float64" else 2e-4
        (a, oa), (b, ob) = nets
        assert max_rel(a.params, b.params, floor=1e-2) < tol, f"fan-in {n_in}"
        if rule != "plain":
            # (velocities are differences of nearby steps: float32 keeps fewer of their digits)
            assert max_rel(oa._state_for(a)[0], ob._state_for(b)[0], floor=1e-2) < (
                tol if dtype == "float64" else 2e-3), f"fan-in {n_in}"
        assert np.max(np.abs(a.weights[0] - fastnn.Network([n_in, 6, 3], dtype=dtype,
                                                            seed=71).weights[0])) > 1e-4


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("batch_size", [1, 7, 40])
@pytest.mark.parametrize("threads", [1, 3])
def test_small_delta_kernel_trains_like_blas_and_the_reference(dtype, batch_size, threads):
    """The delta propagated back through narrow layers by small_nn (widths 37, 11 and 5: whole
    vectors, partial ones and none) or by BLAS, its tasks split by rows or by columns: both
    train like the NumPy engine, and differ from each other only by rounding."""
    from fastnn import _core
    X, y = make_data(95, 13, 5, seed=80)
    results = []
    old = (_core.set_split_thresholds(0, 1), fastnn.set_num_threads(threads),
           _core.set_small_delta_max_macs(-1))
    try:
        for macs, engine in ((1 << 40, "cython"), (-1, "cython"), (-1, "numpy")):
            _core.set_small_delta_max_macs(macs)
            net = fastnn.Network([13, 37, 11, 5], hidden=["tanh", "sigmoid"], output="softmax",
                                 cost="log-likelihood", dtype=dtype, seed=81)
            net.fit(X, y, epochs=2, batch_size=batch_size, optimizer=fastnn.SGD(eta=0.1, momentum=0.9),
                    lmbda=0.2, seed=82, engine=engine, monitor_training=False)
            results.append(net.params)
    finally:
        _core.set_split_thresholds(*old[0])
        fastnn.set_num_threads(old[1])
        _core.set_small_delta_max_macs(old[2])
    tol = 1e-10 if dtype == "float64" else 1e-3
    assert max_rel(results[0], results[2], floor=1e-2) < tol
    assert max_rel(results[1], results[2], floor=1e-2) < tol
    assert np.max(np.abs(results[0] - fastnn.Network([13, 37, 11, 5], dtype=dtype, seed=81).params)) > 1e-3


@pytest.mark.parametrize("lmbda", [0.0, 3.0])
def test_plain_step_is_network2_update(lmbda, update_path):
    """mu = 0: W <- (1 - eta lmbda/n) W - (eta/m) sum_x grad_x;  b <- b - (eta/m) sum_x grad_b."""
    n, bs, eta = 13, 5, 0.45  # steps of 5, 5, 3
    X, y = make_data(n, 4, 3, seed=7)
    net = fastnn.Network([4, 5, 3], hidden="sigmoid", seed=8)
    T = targets(y, 3)
    opt = fastnn.SGD(eta=eta)
    rec = Recorder(net, opt)
    w = [W.copy() for W in net.weights]
    b = [bb.copy() for bb in net.biases]
    net.fit(X, y, epochs=1, batch_size=bs, optimizer=opt, lmbda=lmbda, shuffle=False,
            callbacks=[rec], progress_every=bs, monitor_training=False)
    assert [s for _, s, _ in rec.progress] == [5, 10, 13]
    for (got, _), start in zip(rec.steps, (0, 5, 10)):
        rows = slice(start, min(start + bs, n))
        m = len(range(n)[rows])
        params = np.concatenate([np.concatenate([W.ravel(), bb]) for W, bb in zip(w, b)])
        grads = per_sample_gradients(net.sizes, net.activations, net.cost, params, X[rows], T[rows])
        gsum = np.sum(grads, axis=0)
        off, new_w, new_b = 0, [], []
        for W, bb in zip(w, b):
            gW = gsum[off:off + W.size].reshape(W.shape)
            off += W.size
            gb = gsum[off:off + bb.size]
            off += bb.size
            new_w.append((1 - eta * lmbda / n) * W - (eta / m) * gW)
            new_b.append(bb - (eta / m) * gb)
        w, b = new_w, new_b
        expected = np.concatenate([np.concatenate([W.ravel(), bb]) for W, bb in zip(w, b)])
        np.testing.assert_allclose(got, expected, rtol=1e-13, atol=1e-15)
    np.testing.assert_allclose(net.params, expected, rtol=1e-13, atol=1e-15)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_nesterov_stored_form_agrees_with_sutskever_form(dtype, update_path):
    """Sutskever et al.: v' = mu v - eta grad(w + mu v); w' = w + v'. fastnn stores phi = w + mu v."""
    n, bs, eta, mu, lmbda = 20, 5, 0.3, 0.9, 0.4
    X, y = make_data(n, 4, 3, seed=9)
    net = fastnn.Network([4, 6, 3], hidden="tanh", output="softmax", cost="log-likelihood",
                         dtype="float64", seed=10)
    if dtype == "float32":
        X = X.astype(np.float32).astype(np.float64)
        net.params[:] = net.params.astype(np.float32)
    shifted = net.copy()  # evaluates gradients at w + mu v
    w = net.params.astype(np.float64).copy()
    v = np.zeros_like(w)
    states = []
    for epoch in range(3):
        for s in range(0, n, bs):
            Xb, yb = X[s:s + bs], y[s:s + bs]
            shifted.params[:] = w + mu * v
            # net.gradient's L2 uses the rows it is given: lmbda * m / n gives (lmbda / n) W
            g = shifted.gradient(Xb, yb, lmbda * len(Xb) / n)
            v = mu * v - eta * g
            w = w + v
            states.append((w + mu * v, v.copy()))
    trained = fastnn.Network([4, 6, 3], hidden="tanh", output="softmax", cost="log-likelihood",
                             dtype=dtype, seed=10)
    trained.params[:] = net.params
    opt = fastnn.SGD(eta=eta, momentum=mu, nesterov=True)
    rec, _ = _run(trained, X, y, opt, "cython", 3, bs, lmbda=lmbda, shuffle=False)
    assert len(rec.steps) == len(states) == 12
    tol = 1e-11 if dtype == "float64" else 2e-5
    for i, ((p, vel), (phi, ve)) in enumerate(zip(rec.steps, states)):
        assert max_rel(p, phi) < tol, f"params differ from w + mu v after step {i}"
        assert max_rel(vel, ve) < tol, f"velocities differ after step {i}"
    # and plain momentum (the book's 107-108) is a different trajectory
    other = net.copy()
    other.fit(X, y, epochs=3, batch_size=bs, optimizer=fastnn.SGD(eta=eta, momentum=mu), lmbda=lmbda,
              shuffle=False, monitor_training=False)
    assert max_rel(other.params, states[-1][0]) > 1e-6


# --------------------------------------------------------------------------- continuation


@pytest.mark.parametrize("mu,nesterov", OPTIMIZERS[1:], ids=OPT_IDS[1:])
def test_fit_continues_params_and_velocity(mu, nesterov):
    X, y = make_data(30, 4, 3, seed=11)
    net_a = fastnn.Network([4, 5, 3], seed=12)
    net_b = net_a.copy()
    opt_a = fastnn.SGD(eta=0.2, momentum=mu, nesterov=nesterov)
    opt_b = fastnn.SGD(eta=0.2, momentum=mu, nesterov=nesterov)
    net_a.fit(X, y, epochs=2, batch_size=7, optimizer=opt_a, lmbda=0.5, shuffle=False)
    net_b.fit(X, y, epochs=1, batch_size=7, optimizer=opt_b, lmbda=0.5, shuffle=False)
    assert opt_b.velocity is not None and np.abs(opt_b.velocity).max() > 0
    net_b.fit(X, y, epochs=1, batch_size=7, optimizer=opt_b, lmbda=0.5, shuffle=False)
    np.testing.assert_allclose(net_b.params, net_a.params, rtol=1e-14, atol=1e-15)
    np.testing.assert_allclose(opt_b.velocity, opt_a.velocity, rtol=1e-14, atol=1e-15)


def test_fit_with_shuffle_continues_like_the_reference_with_fresh_permutations():
    """Each fit call draws its permutations from default_rng(seed) again."""
    n = 24
    X, y = make_data(n, 4, 3, seed=13)
    net = fastnn.Network([4, 5, 3], seed=14)
    expected = oracle_fit(net, X, y, epochs=1, batch_size=6, eta=0.3, mu=0.8, nesterov=False, lmbda=0.2,
                          seed=15)
    p1, v1 = expected[-1]
    expected += oracle_fit(net, X, y, epochs=1, batch_size=6, eta=0.3, mu=0.8, nesterov=False,
                           lmbda=0.2, seed=15, params=p1, vel=v1)
    opt = fastnn.SGD(eta=0.3, momentum=0.8)
    for _ in range(2):
        net.fit(X, y, epochs=1, batch_size=6, optimizer=opt, lmbda=0.2, seed=15)
    np.testing.assert_allclose(net.params, expected[-1][0], rtol=1e-11, atol=1e-14)
    np.testing.assert_allclose(opt.velocity, expected[-1][1], rtol=1e-11, atol=1e-14)


def test_new_optimizer_restarts_from_zero_velocity():
    X, y = make_data(30, 4, 3, seed=16)
    net = fastnn.Network([4, 5, 3], seed=17)
    opt = fastnn.SGD(eta=0.2, momentum=0.9)
    net.fit(X, y, epochs=1, batch_size=7, optimizer=opt, shuffle=False)
    after_one, v_one = net.params.copy(), opt.velocity.copy()
    assert np.abs(v_one).max() > 0
    kw = dict(epochs=1, batch_size=7, eta=0.2, mu=0.9, nesterov=False, lmbda=0.0, seed=None,
              shuffle=False, params=after_one)
    # a new SGD on the same network: v = 0
    restarted = net.copy()
    restarted.fit(X, y, epochs=1, batch_size=7, optimizer=fastnn.SGD(eta=0.2, momentum=0.9),
                  shuffle=False)
    np.testing.assert_allclose(restarted.params, oracle_fit(net, X, y, **kw)[-1][0], rtol=1e-11,
                               atol=1e-14)
    # the same SGD on the same network: v carries over
    net.fit(X, y, epochs=1, batch_size=7, optimizer=opt, shuffle=False)
    np.testing.assert_allclose(net.params, oracle_fit(net, X, y, vel=v_one, **kw)[-1][0], rtol=1e-11,
                               atol=1e-14)
    assert max_rel(restarted.params, net.params) > 1e-4


def test_optimizer_used_on_another_network_starts_from_zero():
    X, y = make_data(30, 4, 3, seed=18)
    net1 = fastnn.Network([4, 5, 3], seed=19)
    net2 = net1.copy()
    net3 = net1.copy()
    opt = fastnn.SGD(eta=0.2, momentum=0.9)
    net1.fit(X, y, epochs=1, batch_size=7, optimizer=opt, shuffle=False)
    net2.fit(X, y, epochs=1, batch_size=7, optimizer=opt, shuffle=False)  # opt now belongs to net2
    net3.fit(X, y, epochs=1, batch_size=7, optimizer=fastnn.SGD(eta=0.2, momentum=0.9), shuffle=False)
    np.testing.assert_array_equal(net2.params, net1.params)
    np.testing.assert_array_equal(net3.params, net1.params)


def test_reset_forgets_velocity():
    X, y = make_data(30, 4, 3, seed=20)
    net = fastnn.Network([4, 5, 3], seed=21)
    twin = net.copy()
    opt = fastnn.SGD(eta=0.2, momentum=0.9)
    net.fit(X, y, epochs=1, batch_size=7, optimizer=opt, shuffle=False)
    twin.fit(X, y, epochs=1, batch_size=7, optimizer=fastnn.SGD(eta=0.2, momentum=0.9), shuffle=False)
    opt.reset()
    assert opt.velocity is None
    net.fit(X, y, epochs=1, batch_size=7, optimizer=opt, shuffle=False)
    twin.fit(X, y, epochs=1, batch_size=7, optimizer=fastnn.SGD(eta=0.2, momentum=0.9), shuffle=False)
    np.testing.assert_array_equal(net.params, twin.params)


# --------------------------------------------------------------------------- invariants


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_fit_keeps_params_buffer_dtype_and_views(dtype):
    X, y = make_data(40, 4, 3, seed=22)
    net = fastnn.Network([4, 5, 3], dtype=dtype, seed=23)
    params = net.params
    before = params.copy()
    net.fit(X.astype(np.float64), y, epochs=2, batch_size=8,
            optimizer=fastnn.SGD(eta=0.5, momentum=0.5), lmbda=0.1)
    assert net.params is params  # trained in place
    assert net.params.dtype == np.dtype(dtype) and net.params.shape == before.shape
    assert not np.array_equal(net.params, before)
    for W, b in zip(net.weights, net.biases):
        assert W.dtype == np.dtype(dtype) and np.shares_memory(W, net.params)
        assert np.shares_memory(b, net.params)
    assert net.dtype == np.dtype(dtype)


def test_float64_data_into_float32_net_trains_like_float32_data():
    X, y = make_data(40, 4, 3, seed=24)
    net_a = fastnn.Network([4, 5, 3], dtype="float32", seed=25)
    net_b = net_a.copy()
    h = net_a.fit(X, y, epochs=2, batch_size=8, optimizer=fastnn.SGD(eta=0.5), seed=1)
    net_b.fit(X.astype(np.float32), y, epochs=2, batch_size=8, optimizer=fastnn.SGD(eta=0.5), seed=1)
    np.testing.assert_array_equal(net_a.params, net_b.params)
    assert net_a.params.dtype == np.float32
    assert all(np.isfinite(h.train_cost))
    # non-contiguous and integer inputs are converted too
    net_c = net_b.copy()
    net_c.fit(np.asfortranarray(X), y.astype(np.int8), epochs=1, batch_size=8, seed=1)
    assert net_c.params.dtype == np.float32


def test_epochs_zero_does_nothing():
    X, y = make_data(10, 4, 3, seed=26)
    net = fastnn.Network([4, 5, 3], seed=27)
    before = net.params.copy()
    hist = net.fit(X, y, epochs=0)
    assert len(hist) == 0
    np.testing.assert_array_equal(net.params, before)


def test_batch_larger_than_data_is_one_full_batch_step():
    X, y = make_data(9, 4, 3, seed=28)
    net = fastnn.Network([4, 5, 3], seed=29)
    expected = oracle_fit(net, X, y, epochs=1, batch_size=9, eta=0.4, mu=0.0, nesterov=False,
                          lmbda=0.0, seed=None, shuffle=False)
    net.fit(X, y, epochs=1, batch_size=100, optimizer=fastnn.SGD(eta=0.4), shuffle=True, seed=3)
    # one full-batch step: the order of the rows does not matter (up to rounding)
    np.testing.assert_allclose(net.params, expected[0][0], rtol=1e-12, atol=1e-14)


# --------------------------------------------------------------------------- history and callbacks


def test_history_records_costs_accuracies_and_seconds():
    X, y = make_data(60, 4, 3, seed=30)
    Xv, yv = make_data(25, 4, 3, seed=31)
    net = fastnn.Network([4, 6, 3], seed=32)
    snapshots = []
    hist = net.fit(X, y, epochs=3, batch_size=10, optimizer=fastnn.SGD(eta=0.5), lmbda=0.7,
                   validation_data=(Xv, yv), callbacks=lambda h: snapshots.append(net.copy()))
    assert isinstance(hist, History) and len(hist) == 3
    assert hist.epoch == [0, 1, 2] and hist["epoch"] == [0, 1, 2]
    for e, snap in enumerate(snapshots):
        # independent oracle: costs and accuracies from a NumPy forward pass
        for Xs, ys, cost_key, acc_key in ((X, y, "train_cost", "train_accuracy"),
                                           (Xv, yv, "val_cost", "val_accuracy")):
            _, As = np_forward(snap.sizes, snap.activations, snap.params, Xs)
            acc = np.mean(np.argmax(As[-1], axis=1) == ys)
            assert hist[acc_key][e] == pytest.approx(acc, abs=1e-12)
            # network2's total_cost with the fit's lmbda and the rows of that set
            assert hist[cost_key][e] == pytest.approx(snap.loss(Xs, ys, 0.7), rel=1e-12)
        assert hist.seconds[e] > 0
    assert hist.as_dict()["val_accuracy"] == hist.val_accuracy
    with pytest.raises(KeyError):
        hist["nope"]


def test_history_without_monitoring_has_none():
    X, y = make_data(20, 4, 3, seed=33)
    net = fastnn.Network([4, 5, 3], seed=34)
    hist = net.fit(X, y, epochs=2, batch_size=5, monitor_training=False)
    assert hist.train_cost == [None, None] and hist.val_accuracy == [None, None]
    assert len(hist.seconds) == 2 and all(s >= 0 for s in hist.seconds)


def test_callback_returning_true_stops_training():
    X, y = make_data(20, 4, 3, seed=35)
    net = fastnn.Network([4, 5, 3], seed=36)
    seen = []

    def stop_after_two(history):
        seen.append(len(history))
        return len(history) == 2

    hist = net.fit(X, y, epochs=10, batch_size=5, callbacks=[stop_after_two])
    assert seen == [1, 2] and len(hist) == 2 and hist.stopped_early
    hist = net.fit(X, y, epochs=3, batch_size=5, callbacks=lambda h: False)
    assert len(hist) == 3 and not hist.stopped_early


def test_on_progress_called_within_epochs_with_increasing_counts():
    X, y = make_data(50, 4, 3, seed=37)
    net = fastnn.Network([4, 5, 3], seed=38)

    class Progress(Callback):
        def __init__(self):
            self.calls = []

        def on_progress(self, epoch, samples_done, n_samples):
            self.calls.append((epoch, samples_done, n_samples, net.params.copy()))

    cb = Progress()
    hist = net.fit(X, y, epochs=2, batch_size=5, progress_every=20, callbacks=[cb])
    # chunks of whole batches: 20 samples, 20, then the remaining 10
    assert [(e, s, t) for e, s, t, _ in cb.calls] == [(0, 20, 50), (0, 40, 50), (0, 50, 50),
                                                       (1, 20, 50), (1, 40, 50), (1, 50, 50)]
    # parameters change between progress calls (they really are within the epoch)
    assert not np.array_equal(cb.calls[0][3], cb.calls[1][3])
    assert len(hist) == 2


def test_progress_chunks_do_not_change_the_result():
    X, y = make_data(50, 4, 3, seed=39)
    net = fastnn.Network([4, 5, 3], seed=40)
    twin = net.copy()

    class Progress(Callback):
        def on_progress(self, epoch, samples_done, n_samples):
            pass

    opt = dict(eta=0.3, momentum=0.9, nesterov=True)
    net.fit(X, y, epochs=2, batch_size=5, optimizer=fastnn.SGD(**opt), seed=1, progress_every=15,
            callbacks=[Progress()])
    twin.fit(X, y, epochs=2, batch_size=5, optimizer=fastnn.SGD(**opt), seed=1)
    np.testing.assert_array_equal(net.params, twin.params)


def test_early_stopping_stops_when_monitor_stalls():
    X, y = make_data(40, 4, 3, seed=41)
    net = fastnn.Network([4, 5, 3], seed=42)
    # eta so small the accuracy never changes: best at epoch 0, then `patience` epochs without gain
    hist = net.fit(X, y, epochs=20, batch_size=10, optimizer=fastnn.SGD(eta=1e-12),
                   validation_data=(X, y), callbacks=[EarlyStopping("val_accuracy", patience=3)])
    assert len(hist) == 4 and hist.stopped_early
    assert len(set(hist.val_accuracy)) == 1
    # a cost that keeps falling never triggers it
    net2 = fastnn.Network([4, 5, 3], seed=42)
    hist = net2.fit(X, y, epochs=6, batch_size=10, optimizer=fastnn.SGD(eta=0.1),
                    callbacks=[EarlyStopping("train_cost", patience=1)])
    assert len(hist) == 6 and not hist.stopped_early
    assert all(a > b for a, b in zip(hist.train_cost, hist.train_cost[1:]))


def test_early_stopping_logic_on_a_given_sequence():
    es = EarlyStopping("val_cost", patience=2, min_delta=0.1)
    h = History()
    decisions = []
    for cost in [1.0, 0.8, 0.75, 0.72, 0.5, 0.45, 0.44]:
        h._append(epoch=len(h), val_cost=cost)
        decisions.append(es.on_epoch_end(h))
    # improvements by more than 0.1: 0.8 (vs 1.0); 0.75 and 0.72 are not -> stop at 0.72
    assert decisions == [False, False, False, True, False, False, True]


def test_early_stopping_needs_the_monitored_value():
    X, y = make_data(20, 4, 3, seed=43)
    net = fastnn.Network([4, 5, 3], seed=44)
    with pytest.raises(ValueError, match="val_accuracy"):
        net.fit(X, y, epochs=2, callbacks=[EarlyStopping("val_accuracy")])
    with pytest.raises(ValueError, match="monitor"):
        EarlyStopping("accuracy")


# --------------------------------------------------------------------------- divergence


def _replay(net0, X, y, opt_kw, err, seed, batch_size, epochs_done_perms):
    """Params after err.epoch whole epochs and err.step steps of the next, by re-running fit."""
    net = net0.copy()
    opt = fastnn.SGD(**opt_kw)
    if err.epoch:
        net.fit(X, y, epochs=err.epoch, batch_size=batch_size, optimizer=opt, seed=seed,
                monitor_training=False)
    if err.step:
        perm = epochs_done_perms[err.epoch]
        rows = perm[:err.step * batch_size]
        # the partial epoch, in the same order; lmbda = 0 so the smaller n does not matter
        net.fit(X[rows], y[rows], epochs=1, batch_size=batch_size, optimizer=opt, shuffle=False,
                monitor_training=False)
    return net, opt


@pytest.mark.parametrize("case", ["relu-eta1e30", "linear-slow", "linear-epoch-start", "momentum-float32"])
def test_divergence_raises_and_keeps_last_finite_params(case, update_path):
    if case == "relu-eta1e30":
        sizes, kw, dtype, opt_kw = [5, 6, 3], dict(hidden="relu", output="softmax",
                                                    cost="log-likelihood"), "float64", dict(eta=1e30)
    elif case.startswith("linear"):  # grows by ~eta per step: breaks after a few epochs
        sizes, kw, dtype, opt_kw = [5, 3], dict(hidden=[], output="identity", cost="quadratic"), \
            "float64", dict(eta=3e9 if case == "linear-slow" else 1e10)
    else:
        sizes, kw, dtype, opt_kw = [5, 6, 3], dict(hidden="relu", output="identity", cost="quadratic"), \
            "float32", dict(eta=1e4, momentum=0.9)
    n, bs, seed = 40, 4, 3
    X, y = make_data(n, 5, 3, seed=45, kind="soft")
    net0 = fastnn.Network(sizes, dtype=dtype, seed=46, **kw)
    net = net0.copy()
    opt = fastnn.SGD(**opt_kw)
    with np.errstate(all="ignore"), pytest.raises(fastnn.TrainingDiverged) as info:
        net.fit(X, y, epochs=50, batch_size=bs, optimizer=opt, seed=seed, monitor_training=False)
    err = info.value
    assert isinstance(err, FloatingPointError)
    assert err.step is not None and 0 <= err.step < n // bs
    assert "eta" in str(err) and str(float(opt_kw["eta"])) in str(err)
    assert isinstance(err.history, History) and len(err.history) == err.epoch
    if case == "linear-slow":
        assert err.epoch >= 1 and err.step >= 1  # the replay runs within a later epoch
    if case == "linear-epoch-start":
        assert err.epoch >= 1 and err.step == 0  # breaks on the first step of an epoch
    assert np.all(np.isfinite(net.params))
    perms = epoch_perms(seed, n, err.epoch + 1)
    ref, ref_opt = _replay(net0, X, y, opt_kw, err, seed, bs, perms)
    np.testing.assert_array_equal(net.params, ref.params)
    if opt_kw.get("momentum"):
        np.testing.assert_array_equal(opt.velocity, ref_opt.velocity)
        assert np.all(np.isfinite(opt.velocity))
    # one more step from there is the one that breaks
    with np.errstate(all="ignore"):
        probe = ref.copy()
        rows = perms[err.epoch][err.step * bs:(err.step + 1) * bs]
        probe_opt = ref_opt if opt_kw.get("momentum") else fastnn.SGD(**opt_kw)
        with pytest.raises(fastnn.TrainingDiverged):
            probe.fit(X[rows], y[rows], epochs=1, batch_size=bs, optimizer=probe_opt, shuffle=False,
                      monitor_training=False)


def test_divergence_in_the_numpy_engine_matches_cython():
    X, y = make_data(40, 5, 3, seed=47)
    net_c = fastnn.Network([5, 6, 3], hidden="relu", output="softmax", cost="log-likelihood", seed=48)
    net_n = net_c.copy()
    errs = []
    for net, engine in ((net_c, "cython"), (net_n, "numpy")):
        with np.errstate(all="ignore"), pytest.raises(fastnn.TrainingDiverged) as info:
            net.fit(X, y, epochs=20, batch_size=4, optimizer=fastnn.SGD(eta=1e30), seed=1,
                    engine=engine, monitor_training=False)
        errs.append((info.value.epoch, info.value.step))
    assert errs[0] == errs[1]
    assert max_rel(net_c.params, net_n.params) < 1e-10


def test_divergence_seen_by_the_monitored_cost():
    """Finite params whose cost overflows: stops after the epoch with a clear error."""
    X, y = make_data(20, 5, 3, seed=49, kind="soft")
    net = fastnn.Network([5, 3], hidden=[], output="identity", cost="quadratic", seed=50)
    with np.errstate(all="ignore"), pytest.raises(fastnn.TrainingDiverged) as info:
        net.fit(X, y, epochs=50, batch_size=20, optimizer=fastnn.SGD(eta=1e60), lmbda=0.0)
    err = info.value
    assert np.all(np.isfinite(net.params))
    assert "cost" in str(err)


# --------------------------------------------------------------------------- threads, seeds


def test_two_networks_training_in_threads_match_sequential_runs():
    Xa, ya = make_data(3000, 20, 5, seed=51)
    Xb, yb = make_data(2500, 20, 5, seed=52)
    base_a = fastnn.Network([20, 32, 5], hidden="relu", output="softmax", cost="log-likelihood", seed=53)
    base_b = fastnn.Network([20, 24, 5], hidden="tanh", seed=54, dtype="float32")

    def train(net, X, y, out, key):
        out[key] = net.fit(X, y, epochs=3, batch_size=16, seed=7, lmbda=0.1,
                           optimizer=fastnn.SGD(eta=0.05, momentum=0.9, nesterov=True))

    seq_a, seq_b = base_a.copy(), base_b.copy()
    seq = {}
    train(seq_a, Xa, ya, seq, "a")
    train(seq_b, Xb, yb, seq, "b")
    par_a, par_b = base_a.copy(), base_b.copy()
    par = {}
    threads = [threading.Thread(target=train, args=(par_a, Xa, ya, par, "a")),
               threading.Thread(target=train, args=(par_b, Xb, yb, par, "b"))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert set(par) == {"a", "b"}
    np.testing.assert_allclose(par_a.params, seq_a.params, rtol=1e-13, atol=1e-15)
    np.testing.assert_allclose(par_b.params, seq_b.params, rtol=1e-6, atol=1e-7)
    assert par["a"].train_cost == pytest.approx(seq["a"].train_cost, rel=1e-12)


def test_shuffle_seed_reproducible_and_different_seeds_differ():
    X, y = make_data(40, 4, 3, seed=55)
    base = fastnn.Network([4, 5, 3], seed=56)
    runs = {}
    for key, seed in (("a", 1), ("b", 1), ("c", 2)):
        net = base.copy()
        net.fit(X, y, epochs=2, batch_size=5, seed=seed, optimizer=fastnn.SGD(eta=0.3))
        runs[key] = net.params
    np.testing.assert_array_equal(runs["a"], runs["b"])
    assert max_rel(runs["a"], runs["c"]) > 1e-6
    # a Generator works as the seed too, and shuffle=False ignores the seed
    net_g = base.copy()
    net_g.fit(X, y, epochs=2, batch_size=5, seed=np.random.default_rng(1), optimizer=fastnn.SGD(eta=0.3))
    np.testing.assert_array_equal(net_g.params, runs["a"])
    s1, s2 = base.copy(), base.copy()
    s1.fit(X, y, epochs=2, batch_size=5, seed=1, shuffle=False, optimizer=fastnn.SGD(eta=0.3))
    s2.fit(X, y, epochs=2, batch_size=5, seed=2, shuffle=False, optimizer=fastnn.SGD(eta=0.3))
    np.testing.assert_array_equal(s1.params, s2.params)


def test_initialization_is_reproducible_and_float32_matches_float64():
    a = fastnn.Network([6, 5, 4], seed=3)
    b = fastnn.Network([6, 5, 4], seed=3)
    c = fastnn.Network([6, 5, 4], seed=4)
    d = fastnn.Network([6, 5, 4], seed=3, dtype="float32")
    np.testing.assert_array_equal(a.params, b.params)
    assert not np.array_equal(a.params, c.params)
    np.testing.assert_array_equal(d.params, a.params.astype(np.float32))
    # network2's default: W ~ N(0, 1/n_in), b ~ N(0, 1), drawn W_0, b_0, W_1, b_1 ...
    rng = np.random.default_rng(3)
    W0 = rng.standard_normal((5, 6)) / np.sqrt(6)
    b0 = rng.standard_normal(5)
    np.testing.assert_array_equal(a.weights[0], W0)
    np.testing.assert_array_equal(a.biases[0], b0)


def test_gradient_of_training_objective_vanishes_after_long_full_batch_training():
    """Sanity of the whole loop: full-batch GD on a convex problem reaches the optimum."""
    X, y = make_data(30, 3, 2, seed=57, kind="soft")
    net = fastnn.Network([3, 2], hidden=[], output="identity", cost="quadratic", seed=58)
    net.fit(X, y, epochs=2000, batch_size=30, optimizer=fastnn.SGD(eta=0.5, momentum=0.5), lmbda=0.3,
            monitor_training=False)
    # closed form of the ridge problem: min 1/(2n) sum ||Wx + b - y||^2 + lmbda/(2n) ||W||^2
    A = np.hstack([X, np.ones((30, 1))])
    R = np.diag([0.3, 0.3, 0.3, 0.0])
    sol = np.linalg.solve(A.T @ A + R, A.T @ y)  # (4, 2): rows W^T then b
    np.testing.assert_allclose(net.weights[0], sol[:3].T, rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(net.biases[0], sol[3], rtol=1e-8, atol=1e-10)
    assert np.abs(np_gradient(net, X, y, 0.3)).max() < 1e-10


@pytest.mark.parametrize("batch_size", [24, 200])
def test_first_layer_too_large_to_fuse_trains_like_the_reference(batch_size):
    """A first layer whose gradient product exceeds the fused kernel's bound (here 24 x 784 x
    1024 multiply-adds) takes the BLAS gradient, which needs the batch gathered even when the
    forward product reads the rows in place."""
    X, y = make_data(2 * batch_size + 5, 784, 10, seed=70)
    net = fastnn.Network([784, 1024, 10], hidden="relu", output="softmax", cost="log-likelihood",
                         dtype="float32", seed=71)
    ref = net.copy()
    for n, engine in ((net, "cython"), (ref, "numpy")):
        n.fit(X, y, epochs=1, batch_size=batch_size, optimizer=fastnn.SGD(eta=0.05, momentum=0.9),
              seed=72, engine=engine, monitor_training=False)
    assert max_rel(net.params, ref.params, floor=1e-3) < 1e-4
    assert max_rel(net.params, fastnn.Network([784, 1024, 10], dtype="float32", seed=71).params,
                   floor=1e-3) > 1e-3


def test_batch_larger_than_the_data_is_one_full_batch():
    """A batch_size beyond n trains on all n rows at once (the kernels size their buffers
    by the rows there are, not by batch_size: 10**9 must not try to allocate for it)."""
    X, y = make_data(100, 20, 10, seed=70)
    nets = [fastnn.Network([20, 300, 10], seed=71) for _ in range(2)]
    for net, bs in zip(nets, (10**9, 100)):
        net.fit(X, y, epochs=2, batch_size=bs, optimizer=fastnn.SGD(eta=0.1, momentum=0.9),
                seed=1, monitor_training=False)
    np.testing.assert_array_equal(nets[0].params, nets[1].params)
