"""Cache-line-aligned buffers: every array the training loop streams starts on a 64-byte
boundary, wherever it came from, and the kernels give the same bits at any alignment."""
import pickle

import numpy as np
import pytest

import fastnn
from fastnn import _memory
from fastnn._memory import ALIGN, aligned_copy, aligned_empty, aligned_zeros, is_aligned

from conftest import DTYPES, make_data


@pytest.mark.parametrize("dtype", ["float64", "float32", "int8"])
@pytest.mark.parametrize("n", [0, 1, 3, 17, 1000])
def test_aligned_allocators(dtype, n):
    for _ in range(5):  # several allocations, so some land off the boundary without the fix
        e = aligned_empty(n, dtype)
        assert e.shape == (n,) and e.dtype == np.dtype(dtype) and e.flags.c_contiguous
        assert e.flags.writeable and is_aligned(e)
        z = aligned_zeros(n, dtype)
        assert is_aligned(z) and z.shape == (n,) and not z.any()
    src = np.arange(n, dtype=np.float64).reshape(-1, 1)[::1]
    c = aligned_copy(src, dtype)
    assert is_aligned(c) and c.shape == (n,) and c.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(c, src.ravel().astype(dtype))
    assert not np.shares_memory(c, src)


def test_is_aligned_tells_the_offset():
    buf = aligned_empty(16, np.float64)
    assert is_aligned(buf) and not is_aligned(buf[1:]) and not is_aligned(buf[2:])
    assert is_aligned(buf[ALIGN // 8:])


def _misaligned_copy(a, offset_bytes):
    """A copy of the 1-d array a whose data starts offset_bytes past a 64-byte boundary."""
    raw = np.empty(a.nbytes + 2 * ALIGN, dtype=np.uint8)
    start = (-raw.ctypes.data) % ALIGN + offset_bytes
    out = raw[start:start + a.nbytes].view(a.dtype)
    out[...] = a
    assert out.ctypes.data % ALIGN == offset_bytes
    return out


@pytest.mark.parametrize("dtype", DTYPES)
def test_network_and_optimizer_buffers_are_aligned(tmp_path, dtype):
    X, y = make_data(64, 37, 5, seed=3)
    for opt in (fastnn.SGD(eta=0.1, momentum=0.9, nesterov=True), fastnn.Adam(eta=0.01)):
        net = fastnn.Network([37, 23, 5], hidden="relu", output="softmax", cost="log-likelihood",
                             dtype=dtype, seed=4)
        assert is_aligned(net.params) and is_aligned(net.weights[0])
        net.fit(X, y, epochs=1, batch_size=8, optimizer=opt, monitor_training=False)
        assert all(is_aligned(b) for b in opt._state_for(net))
        assert is_aligned(net.copy().params)
        assert is_aligned(pickle.loads(pickle.dumps(net)).params)
        path = tmp_path / f"net-{dtype}.npz"
        net.save(path)
        assert is_aligned(fastnn.load(path).params)
        other = type(opt)(**opt.state_dict()["param_groups"])
        other.load_state_dict(opt.state_dict(), net=net)
        assert all(is_aligned(b) for b in other._state_for(net))
        np.testing.assert_array_equal(other._state_for(net)[0], opt._state_for(net)[0])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rule", ["momentum", "nesterov", "adam"])
@pytest.mark.parametrize("batch_size", [5, 40])
def test_training_gives_the_same_bits_at_any_alignment(dtype, rule, batch_size):
    """Parameters and optimizer state moved off the 64-byte boundary (by one element, and by
    16 bytes) train to exactly the same bits: alignment is a speed matter only. Batch 5 takes
    the fused kernel's in-place path, 40 its packed path."""
    X, y = make_data(120, 70, 6, seed=7)
    itemsize = np.dtype(dtype).itemsize
    results = []
    for offset in (0, itemsize, 16):
        net = fastnn.Network([70, 45, 6], hidden="tanh", output="softmax", cost="log-likelihood",
                             dtype=dtype, seed=8)
        opt = (fastnn.Adam(eta=0.01) if rule == "adam" else
               fastnn.SGD(eta=0.1, momentum=0.9, nesterov=rule == "nesterov"))
        net.fit(X[:batch_size], y[:batch_size], epochs=1, batch_size=batch_size, optimizer=opt,
                seed=1, monitor_training=False)  # creates the optimizer state
        if offset:
            net._build(_misaligned_copy(net.params, offset))
            opt._buffers = [_misaligned_copy(b, offset) for b in opt._buffers]
            assert net.params.ctypes.data % ALIGN == offset
        net.fit(X, y, epochs=2, batch_size=batch_size, optimizer=opt, lmbda=0.3, seed=9,
                monitor_training=False)
        assert opt._buffers[0].ctypes.data % ALIGN == offset  # the same buffers were trained
        results.append((net.params.copy(), opt._buffers[0].copy()))
    for params, state in results[1:]:
        np.testing.assert_array_equal(params, results[0][0])
        np.testing.assert_array_equal(state, results[0][1])
    assert np.max(np.abs(results[0][0] - fastnn.Network([70, 45, 6], dtype=dtype, seed=8).params)) > 1e-3


def test_module_documents_the_reason():
    assert "cache line" in _memory.__doc__ and "64-byte" in _memory.__doc__
