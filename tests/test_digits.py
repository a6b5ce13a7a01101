"""The embedded digits (fastnn.datasets.load_digits) and the MNIST loader (load_mnist)."""
import gzip
import importlib.resources
import io
import os
import pickle
import struct

import numpy as np
import pytest

import fastnn
from fastnn.datasets import MNIST_PICKLE_GLOBALS, load_digits, load_mnist

# --------------------------------------------------------------------------- load_digits


def test_digits_shape_dtype_and_range():
    X, y = load_digits()
    assert X.shape == (1797, 64) and y.shape == (1797,)
    assert X.dtype == np.float64 and y.dtype == np.int64
    assert X.flags.c_contiguous and X.flags.writeable
    assert X.min() == 0.0 and X.max() == 1.0
    # normalize divides the pixel counts 0..16 by 16
    assert np.array_equal(np.unique(X * 16), np.arange(17))


def test_digits_labels_balanced():
    _, y = load_digits()
    counts = np.bincount(y)
    assert counts.shape == (10,)
    assert counts.sum() == 1797
    assert counts.min() >= 170 and counts.max() <= 190  # each class ~180
    assert counts.tolist() == [178, 182, 177, 183, 181, 182, 181, 179, 174, 180]


def test_digits_raw_and_float32():
    X, y = load_digits(normalize=False, dtype="uint8")
    assert X.dtype == np.uint8 and X.max() == 16 and X.min() == 0
    X32, y32 = load_digits(dtype="float32")
    assert X32.dtype == np.float32
    np.testing.assert_array_equal(X32 * 16, X.astype(np.float32))
    np.testing.assert_array_equal(y32, y)


def test_digits_normalize_needs_float():
    with pytest.raises(ValueError, match="floating dtype"):
        load_digits(dtype="int32")


def test_digits_fresh_arrays_each_call():
    X1, y1 = load_digits()
    X1[:] = -1
    y1[:] = -1
    X2, y2 = load_digits()
    assert X2.min() == 0.0 and y2.min() == 0


def test_digits_match_scikit_learn():
    """The file was made from scikit-learn's copy; only the format changed."""
    datasets = pytest.importorskip("sklearn.datasets")
    ref = datasets.load_digits()
    X, y = load_digits(normalize=False, dtype="float64")
    np.testing.assert_array_equal(X, ref.data)
    np.testing.assert_array_equal(y, ref.target)


def test_digits_ship_inside_the_package_with_attribution():
    data = importlib.resources.files("fastnn").joinpath("data")
    assert data.joinpath("digits.npz").is_file()
    readme = data.joinpath("README.md").read_text(encoding="utf-8")
    for needle in ("Alpaydin", "Kaynak", "CC BY 4.0", "UCI", "10.24432/C50P49", "format"):
        assert needle in readme
    with data.joinpath("digits.npz").open("rb") as fh, np.load(fh, allow_pickle=False) as f:
        assert sorted(f.files) == ["images", "labels"]
        assert f["images"].dtype == np.uint8 and f["images"].shape == (1797, 8, 8)


def test_digits_train_fast_network_above_90_percent():
    X, y = load_digits()
    perm = np.random.default_rng(0).permutation(len(y))
    test, train = perm[:360], perm[360:]
    net = fastnn.Network([64, 32, 10], hidden="relu", output="softmax", cost="log-likelihood",
                         seed=0)
    hist = net.fit(X[train], y[train], epochs=5, batch_size=10,
                   optimizer=fastnn.SGD(eta=0.1), validation_data=(X[test], y[test]), seed=0)
    assert hist.val_accuracy[-1] > 0.90
    assert np.mean(net.predict(X[test]) == y[test]) > 0.90


# --------------------------------------------------------------------------- load_mnist: pickles


class _Py2Pickler(pickle._Pickler):
    """Writes bytes with Python 2's str opcodes, as the book's Python 2 mnist.pkl.gz does.

    Such a file can only be read with ``encoding="latin1"``.
    """

    dispatch = pickle._Pickler.dispatch.copy()

    def _save_py2_str(self, obj):
        n = len(obj)
        if n < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([n]) + obj)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", n) + obj)
        self.memoize(obj)

    dispatch[bytes] = _save_py2_str


def py2_pickle(obj):
    buf = io.BytesIO()
    _Py2Pickler(buf, protocol=2).dump(obj)
    # the book's file was written by NumPy 1, whose array constructor lives in numpy.core
    return buf.getvalue().replace(b"cnumpy._core.multiarray\n", b"cnumpy.core.multiarray\n")


def mnist_like(sizes=(30, 8, 9), seed=0):
    rng = np.random.default_rng(seed)
    return tuple((rng.random((n, 784), dtype=np.float32), rng.integers(0, 10, n).astype(np.int64))
                 for n in sizes)


def assert_same(loaded, data, dtype=np.float64):
    assert len(loaded) == len(data)
    for (X, y), (X0, y0) in zip(loaded, data):
        assert X.dtype == dtype and y.dtype == np.int64 and X.flags.c_contiguous
        np.testing.assert_array_equal(X, X0.astype(dtype))
        np.testing.assert_array_equal(y, y0)


def test_mnist_book_style_python2_gzip_pickle(tmp_path):
    data = mnist_like()
    raw = py2_pickle(data)
    assert b"cnumpy.core.multiarray\n_reconstruct" in raw and pickle.BINSTRING in raw
    path = tmp_path / "mnist.pkl.gz"
    path.write_bytes(gzip.compress(raw))
    assert_same(load_mnist(path), data)
    assert_same(load_mnist(str(path), dtype="float32"), data, np.float32)


@pytest.mark.parametrize("protocol", [3, 4, 5])
def test_mnist_python3_pickles_gzip_or_not(tmp_path, protocol):
    data = mnist_like(seed=protocol)
    raw = pickle.dumps(data, protocol=protocol)
    (tmp_path / "a.pkl").write_bytes(raw)
    (tmp_path / "a.pkl.gz").write_bytes(gzip.compress(raw))
    assert_same(load_mnist(tmp_path / "a.pkl"), data)
    assert_same(load_mnist(tmp_path / "a.pkl.gz"), data)


class _Evil:
    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return (os.remove, (self.target,))


def test_mnist_pickle_refuses_code(tmp_path):
    marker = tmp_path / "marker"
    marker.write_text("still here")
    X, y = mnist_like((4,))[0]
    path = tmp_path / "evil.pkl.gz"
    path.write_bytes(gzip.compress(pickle.dumps(((X, y), (X, y), _Evil(str(marker))),
                                                protocol=4)))
    with pytest.raises(ValueError) as err:
        load_mnist(path)
    assert str(path) in str(err.value) and "remove" in str(err.value)
    assert marker.read_text() == "still here"


def test_mnist_pickle_refuses_builtins_other_than_tuple(tmp_path):
    path = tmp_path / "evil.pkl"
    # GLOBAL builtins.eval, then call it: what a hand-made malicious file would do
    path.write_bytes(b"\x80\x02cbuiltins\neval\nX\x05\x00\x00\x001 + 1\x85R.")
    with pytest.raises(ValueError, match="builtins.eval"):
        load_mnist(path)
    assert ("builtins", "eval") not in MNIST_PICKLE_GLOBALS


@pytest.mark.parametrize("obj, match", [
    (("a", "b", "c"), "training set must be a pair"),
    ([1, 2, 3], "expected a tuple"),
    (((np.zeros((3, 784), np.float32), np.zeros(3, np.int64)),) * 2, "of length 2"),
    (((np.zeros((3, 784), np.float32), np.zeros(4, np.int64)),) * 3, "3 images but 4 labels"),
    (((np.zeros((3, 784), np.int64), np.zeros(3, np.int64)),) * 3, "2-D floating array"),
    (((np.zeros((3, 784), np.float32), np.zeros(3, np.float32)),) * 3, "1-D integer array"),
    (((np.zeros(784, np.float32), np.zeros(3, np.int64)),) * 3, "2-D floating array"),
])
def test_mnist_pickle_wrong_structure(tmp_path, obj, match):
    path = tmp_path / "mnist.pkl.gz"
    path.write_bytes(gzip.compress(pickle.dumps(obj, protocol=4)))
    with pytest.raises(ValueError, match=match) as err:
        load_mnist(path)
    assert str(path) in str(err.value)


@pytest.mark.parametrize("content", [
    b"",                                       # empty
    b"not a pickle at all",                    # garbage
    gzip.compress(b"garbage inside gzip"),     # garbage, compressed
    gzip.compress(pickle.dumps(mnist_like(), protocol=4))[:200],  # truncated gzip stream
    pickle.dumps(mnist_like(), protocol=4)[:-100],  # truncated pickle
])
def test_mnist_malformed_file(tmp_path, content):
    path = tmp_path / "mnist.pkl.gz"
    path.write_bytes(content)
    with pytest.raises(ValueError) as err:
        load_mnist(path)
    assert str(path) in str(err.value)


def test_mnist_missing_path(tmp_path):
    path = tmp_path / "nope" / "mnist.pkl.gz"
    with pytest.raises(FileNotFoundError) as err:
        load_mnist(path)
    assert str(path) in str(err.value)


# --------------------------------------------------------------------------- load_mnist: IDX


def idx_bytes(arr):
    arr = np.asarray(arr)
    code = {np.dtype(np.uint8): 0x08}[arr.dtype]
    return struct.pack(">BBBB", 0, 0, code, arr.ndim) + struct.pack(f">{arr.ndim}I", *arr.shape) \
        + arr.tobytes()


def write_idx_dir(d, n_train=7, n_test=3, gz=True, dot=False):
    rng = np.random.default_rng(1)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte": rng.integers(0, 10, n_train, dtype=np.uint8),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": rng.integers(0, 10, n_test, dtype=np.uint8),
    }
    d.mkdir(parents=True, exist_ok=True)
    for name, arr in arrays.items():
        if dot:
            name = name.replace("-idx", ".idx")  # train-images.idx3-ubyte
        data = idx_bytes(arr)
        (d / (name + (".gz" if gz else ""))).write_bytes(gzip.compress(data) if gz else data)
    return arrays


@pytest.mark.parametrize("gz, dot", [(True, False), (False, False), (False, True)])
def test_mnist_idx_directory(tmp_path, gz, dot):
    arrays = write_idx_dir(tmp_path / "mnist", gz=gz, dot=dot)
    (X, y), (Xt, yt) = load_mnist(tmp_path / "mnist")
    assert X.shape == (7, 784) and Xt.shape == (3, 784)
    assert X.dtype == np.float64 and y.dtype == np.int64
    np.testing.assert_allclose(X, arrays["train-images-idx3-ubyte"].reshape(7, -1) / 255)
    np.testing.assert_array_equal(y, arrays["train-labels-idx1-ubyte"])
    np.testing.assert_array_equal(yt, arrays["t10k-labels-idx1-ubyte"])
    (Xr, _), _ = load_mnist(tmp_path / "mnist", dtype="uint8", normalize=False)
    np.testing.assert_array_equal(Xr, arrays["train-images-idx3-ubyte"].reshape(7, -1))


def test_mnist_idx_directory_missing_files(tmp_path):
    write_idx_dir(tmp_path)
    os.remove(tmp_path / "t10k-labels-idx1-ubyte.gz")
    with pytest.raises(FileNotFoundError) as err:
        load_mnist(tmp_path)
    assert str(tmp_path) in str(err.value) and "t10k-labels-idx1-ubyte" in str(err.value)
    assert "train-images" not in str(err.value)


def test_mnist_idx_directory_corrupt_file(tmp_path):
    write_idx_dir(tmp_path)
    bad = tmp_path / "train-images-idx3-ubyte.gz"
    bad.write_bytes(gzip.compress(b"\x00\x00\x08\x03" + b"\x00" * 5))
    with pytest.raises(ValueError) as err:
        load_mnist(tmp_path)
    assert str(bad) in str(err.value)
