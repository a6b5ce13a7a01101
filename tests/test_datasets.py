"""Tests for fastnn.datasets: IDX parsing, validation and Fashion-MNIST lookup."""

import gzip
import os
import struct

import numpy as np
import pytest

import fastnn.datasets as datasets
from fastnn.datasets import FASHION_MNIST_CLASSES, load_fashion_mnist, load_idx

REAL_DIR = "/usr/share/datasets/fashion-mnist"
FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
TYPE_CODES = {"u1": 0x08, "i1": 0x09, "i2": 0x0B, "i4": 0x0C, "f4": 0x0D, "f8": 0x0E}


# --------------------------------------------------------------------------- helpers


def idx_bytes(arr, type_code=None):
    """Reference IDX encoder, independent of the module under test."""
    arr = np.asarray(arr)
    code = TYPE_CODES[arr.dtype.str[1:]] if type_code is None else type_code
    header = struct.pack(">BBBB", 0, 0, code, arr.ndim)
    header += struct.pack(f">{arr.ndim}I", *arr.shape)
    return header + arr.astype(arr.dtype.newbyteorder(">")).tobytes()


def write(path, data, gz=False):
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


def write_idx(path, arr, gz=False):
    return write(path, idx_bytes(arr), gz)


def make_images(n=5, rows=3, cols=4, seed=0):
    rng = np.random.default_rng(seed)
    imgs = rng.integers(0, 256, size=(n, rows, cols), dtype=np.uint8)
    imgs[0, 0, 0], imgs[0, 0, 1] = 0, 255  # make sure both extremes occur
    return imgs


def make_labels(n=5, seed=1):
    return np.random.default_rng(seed).integers(0, 10, size=n, dtype=np.uint8)


def fake_fashion_dir(d, n_train=6, n_test=4, gz=True):
    """Write a tiny dataset with the real file names into directory d."""
    d.mkdir(parents=True, exist_ok=True)
    data = {
        FILES[0]: make_images(n_train, 28, 28, seed=2),
        FILES[1]: make_labels(n_train, seed=3),
        FILES[2]: make_images(n_test, 28, 28, seed=4),
        FILES[3]: make_labels(n_test, seed=5),
    }
    for name, arr in data.items():
        write_idx(d / (name + (".gz" if gz else "")), arr, gz=gz)
    return data


@pytest.fixture
def no_default_data(monkeypatch, tmp_path):
    """Isolate lookup from the machine: no FASTNN_DATA, empty system dir."""
    monkeypatch.delenv("FASTNN_DATA", raising=False)
    missing = tmp_path / "system-dir-absent"
    monkeypatch.setattr(datasets, "DEFAULT_FASHION_MNIST_DIR", str(missing))
    return missing


# --------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("gz", [False, True], ids=["raw", "gzip"])
def test_round_trip_ubyte_raw_values(tmp_path, gz):
    imgs, labels = make_images(), make_labels()
    fi = write_idx(tmp_path / "img", imgs, gz)
    fl = write_idx(tmp_path / "lbl", labels, gz)

    X, y = load_idx(fi, fl, normalize=False)
    assert X.shape == (5, 12) and X.dtype == np.float64
    np.testing.assert_array_equal(X, imgs.reshape(5, 12))
    assert y.dtype == np.int64 and y.shape == (5,)
    np.testing.assert_array_equal(y, labels)


@pytest.mark.parametrize("dtype", ["float32", "float64", np.float32])
def test_normalize_and_dtype(tmp_path, dtype):
    imgs = make_images()
    X = load_idx(write_idx(tmp_path / "img.gz", imgs, gz=True), dtype=dtype)
    assert isinstance(X, np.ndarray)  # labels=None -> X only
    assert X.dtype == np.dtype(dtype)
    assert X.flags.c_contiguous and X.flags.writeable
    assert X.dtype.byteorder in "=|"  # native, not the file's big-endian
    assert X.min() == 0.0 and X.max() == 1.0
    expected = (imgs.reshape(5, 12).astype(np.float64) / 255).astype(dtype)
    np.testing.assert_allclose(X, expected, rtol=0, atol=np.finfo(dtype).eps)


def test_flatten_false_keeps_shape(tmp_path):
    imgs = make_images(n=2, rows=3, cols=4)
    X = load_idx(write_idx(tmp_path / "img", imgs), flatten=False, normalize=False)
    assert X.shape == (2, 3, 4) and X.flags.c_contiguous
    np.testing.assert_array_equal(X, imgs)


def test_gzip_detected_by_content_not_extension(tmp_path):
    imgs = make_images()
    gz_no_ext = write_idx(tmp_path / "images-idx3-ubyte", imgs, gz=True)
    raw_gz_ext = write_idx(tmp_path / "images-idx3-ubyte.gz", imgs, gz=False)
    X1 = load_idx(gz_no_ext, normalize=False)
    X2 = load_idx(raw_gz_ext, normalize=False)
    np.testing.assert_array_equal(X1, imgs.reshape(5, -1))
    np.testing.assert_array_equal(X2, imgs.reshape(5, -1))


def test_accepts_str_paths(tmp_path):
    imgs, labels = make_images(), make_labels()
    X, y = load_idx(str(write_idx(tmp_path / "i", imgs)), str(write_idx(tmp_path / "l", labels)))
    assert X.shape == (5, 12) and y.shape == (5,)


@pytest.mark.parametrize("np_type", ["i1", "i2", "i4", "f4", "f8"])
def test_other_element_types_are_decoded_big_endian_and_not_scaled(tmp_path, np_type):
    rng = np.random.default_rng(7)
    info = np.iinfo(np_type) if np_type[0] == "i" else None
    if info:
        arr = rng.integers(info.min, info.max, size=(4, 2, 3), endpoint=True).astype(np_type)
    else:
        arr = (rng.standard_normal((4, 2, 3)) * 1000).astype(np_type)
    X = load_idx(write_idx(tmp_path / "x", arr, gz=True), normalize=True, flatten=False)
    # normalize only applies to ubyte; other types come back as stored
    np.testing.assert_array_equal(X, arr.astype(np.float64))


@pytest.mark.parametrize("np_type", ["i1", "i2", "i4"])
def test_signed_label_types(tmp_path, np_type):
    labels = np.array([-3, 0, 7, 1], dtype=np_type)
    _, y = load_idx(write_idx(tmp_path / "i", make_images(4)), write_idx(tmp_path / "l", labels))
    assert y.dtype == np.int64
    np.testing.assert_array_equal(y, [-3, 0, 7, 1])


def test_empty_dataset(tmp_path):
    X, y = load_idx(
        write_idx(tmp_path / "i", np.zeros((0, 28, 28), np.uint8)),
        write_idx(tmp_path / "l", np.zeros(0, np.uint8)),
    )
    assert X.shape == (0, 784) and y.shape == (0,)


# --------------------------------------------------------------------------- errors


def test_missing_images_file_names_path(tmp_path):
    p = tmp_path / "nope-images-idx3-ubyte.gz"
    with pytest.raises(FileNotFoundError, match="nope-images-idx3-ubyte.gz"):
        load_idx(p)


def test_missing_labels_file_names_path(tmp_path):
    img = write_idx(tmp_path / "img", make_images())
    with pytest.raises(FileNotFoundError, match="missing-labels"):
        load_idx(img, tmp_path / "missing-labels")


@pytest.mark.parametrize("gz", [False, True], ids=["raw", "gzip"])
def test_truncated_data(tmp_path, gz):
    data = idx_bytes(make_images())  # 16-byte header + 60 data bytes
    p = write(tmp_path / "trunc", data[:-7], gz)
    with pytest.raises(ValueError) as exc:
        load_idx(p)
    msg = str(exc.value)
    assert str(p) in msg and "truncated" in msg
    assert "60" in msg and "53" in msg  # expected vs found data bytes


def test_trailing_bytes(tmp_path):
    p = write(tmp_path / "long", idx_bytes(make_images()) + b"\0\0\0")
    with pytest.raises(ValueError, match=r"trailing.*60.*found 63"):
        load_idx(p)


def test_truncated_header(tmp_path):
    p = write(tmp_path / "hdr", idx_bytes(make_images())[:9])
    with pytest.raises(ValueError, match=r"truncated IDX header.*16.*found 9"):
        load_idx(p)


@pytest.mark.parametrize(
    "head",
    [b"\x12\x34\x08\x03", b"\x00\x01\x08\x03", b"\x00\x00\x07\x03", b"PK\x03\x04"],
    ids=["garbage", "nonzero-2nd-byte", "unknown-type", "zip"],
)
def test_wrong_magic(tmp_path, head):
    p = write(tmp_path / "bad", head + idx_bytes(make_images())[4:])
    with pytest.raises(ValueError) as exc:
        load_idx(p)
    msg = str(exc.value)
    assert str(p) in msg and "not an IDX file" in msg
    assert head.hex(" ") in msg  # shows what was found


def test_empty_file(tmp_path):
    p = write(tmp_path / "empty", b"")
    with pytest.raises(ValueError, match="expected at least 4 bytes, found 0"):
        load_idx(p)


def test_corrupt_gzip(tmp_path):
    blob = bytearray(gzip.compress(idx_bytes(make_images())))
    p1 = write(tmp_path / "cut.gz", bytes(blob[: len(blob) // 2]))
    blob[-8] ^= 0xFF  # break the CRC
    p2 = write(tmp_path / "crc.gz", bytes(blob))
    for p in (p1, p2):
        with pytest.raises(ValueError, match="gzip") as exc:
            load_idx(p)
        assert str(p) in str(exc.value)


def test_count_mismatch(tmp_path):
    fi = write_idx(tmp_path / "img", make_images(n=5))
    fl = write_idx(tmp_path / "lbl", make_labels(n=4))
    with pytest.raises(ValueError) as exc:
        load_idx(fi, fl)
    msg = str(exc.value)
    assert "differ" in msg and str(fi) in msg and str(fl) in msg
    assert "5 images" in msg and "4 labels" in msg


def test_swapped_files_are_rejected(tmp_path):
    fi = write_idx(tmp_path / "img", make_images())
    fl = write_idx(tmp_path / "lbl", make_labels())
    with pytest.raises(ValueError, match="at least 2 dimensions"):
        load_idx(fl, fi)
    with pytest.raises(ValueError, match="1-D integer labels"):
        load_idx(fi, fi)


def test_float_labels_rejected(tmp_path):
    fi = write_idx(tmp_path / "img", make_images())
    fl = write_idx(tmp_path / "lbl", np.arange(5, dtype="f4"))
    with pytest.raises(ValueError, match="1-D integer labels"):
        load_idx(fi, fl)


def test_normalize_needs_float_dtype(tmp_path):
    fi = write_idx(tmp_path / "img", make_images())
    with pytest.raises(ValueError, match="floating dtype"):
        load_idx(fi, dtype="int32")
    X = load_idx(fi, dtype="uint8", normalize=False)
    np.testing.assert_array_equal(X, make_images().reshape(5, -1))


def test_huge_declared_size_does_not_allocate(tmp_path):
    # header claims 2**32-1 x 2**32-1 x 2**32-1 bytes; must fail cleanly
    p = write(tmp_path / "huge", struct.pack(">BBBB3I", 0, 0, 8, 3, *(3 * [2**32 - 1])) + b"x")
    with pytest.raises(ValueError, match="truncated IDX data"):
        load_idx(p)


@pytest.mark.parametrize("gz", [False, True], ids=["raw", "gzip"])
def test_every_truncation_raises_valueerror(tmp_path, gz):
    """Never crash on a corrupt file: every prefix gives a clean ValueError."""
    data = idx_bytes(make_images(n=2, rows=2, cols=2))
    blob = gzip.compress(data) if gz else data
    p = tmp_path / "prefix"
    for cut in range(len(blob)):
        p.write_bytes(blob[:cut])
        with pytest.raises(ValueError):
            load_idx(p)


def test_random_corruption_never_crashes(tmp_path):
    rng = np.random.default_rng(123)
    data = bytearray(idx_bytes(make_images(n=3, rows=2, cols=2)))
    p = tmp_path / "fuzz"
    for _ in range(500):
        bad = bytearray(data)
        for i in rng.integers(0, len(bad), size=rng.integers(1, 4)):
            bad[i] = rng.integers(0, 256)
        p.write_bytes(bytes(bad))
        try:
            X = load_idx(p, normalize=False, flatten=False)
        except ValueError:
            continue
        assert isinstance(X, np.ndarray)


# --------------------------------------------------------------------------- Fashion-MNIST lookup


def test_class_names():
    assert FASHION_MNIST_CLASSES == (
        "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
        "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
    )


@pytest.mark.parametrize("gz", [True, False], ids=["gz-names", "raw-names"])
def test_load_fashion_mnist_from_path(tmp_path, no_default_data, gz):
    data = fake_fashion_dir(tmp_path / "fm", gz=gz)
    (Xtr, ytr), (Xte, yte) = load_fashion_mnist(tmp_path / "fm", dtype="float32")
    assert Xtr.shape == (6, 784) and Xte.shape == (4, 784)
    assert Xtr.dtype == Xte.dtype == np.float32
    assert ytr.dtype == yte.dtype == np.int64
    np.testing.assert_allclose(Xtr, data[FILES[0]].reshape(6, 784) / 255, atol=1e-7)
    np.testing.assert_array_equal(ytr, data[FILES[1]])
    np.testing.assert_allclose(Xte, data[FILES[2]].reshape(4, 784) / 255, atol=1e-7)
    np.testing.assert_array_equal(yte, data[FILES[3]])


def test_load_fashion_mnist_normalize_false(tmp_path, no_default_data):
    data = fake_fashion_dir(tmp_path)
    (Xtr, _), _ = load_fashion_mnist(str(tmp_path), normalize=False)
    np.testing.assert_array_equal(Xtr, data[FILES[0]].reshape(6, 784))


@pytest.mark.parametrize("sub", ["", "fashion-mnist"])
def test_fastnn_data_env(tmp_path, monkeypatch, no_default_data, sub):
    data = fake_fashion_dir(tmp_path / "data" / sub if sub else tmp_path / "data")
    monkeypatch.setenv("FASTNN_DATA", str(tmp_path / "data"))
    (_, ytr), (Xte, _) = load_fashion_mnist()
    np.testing.assert_array_equal(ytr, data[FILES[1]])
    assert Xte.shape == (4, 784)


def test_path_takes_precedence_over_env(tmp_path, monkeypatch, no_default_data):
    fake_fashion_dir(tmp_path / "env", n_train=3)
    fake_fashion_dir(tmp_path / "arg", n_train=7)
    monkeypatch.setenv("FASTNN_DATA", str(tmp_path / "env"))
    (Xtr, _), _ = load_fashion_mnist(tmp_path / "arg")
    assert Xtr.shape[0] == 7


def test_env_falls_back_to_system_dir(tmp_path, monkeypatch, no_default_data):
    fake_fashion_dir(no_default_data, n_train=2)
    monkeypatch.setenv("FASTNN_DATA", str(tmp_path / "empty-env"))
    (Xtr, _), _ = load_fashion_mnist()
    assert Xtr.shape[0] == 2


def test_not_found_message(tmp_path, monkeypatch, no_default_data):
    env_dir = tmp_path / "env"
    env_dir.mkdir()
    write_idx(env_dir / (FILES[0] + ".gz"), make_images(), gz=True)  # partial set
    monkeypatch.setenv("FASTNN_DATA", str(env_dir))
    with pytest.raises(FileNotFoundError) as exc:
        load_fashion_mnist()
    msg = str(exc.value)
    for d in (env_dir, env_dir / "fashion-mnist", no_default_data):
        assert str(d) in msg
    assert "apt-get install dataset-fashion-mnist" in msg
    assert "FASTNN_DATA" in msg and "path=" in msg
    assert "missing: " + ", ".join(FILES[1:]) in msg  # partial dir explained


def test_not_found_explicit_path(tmp_path, no_default_data):
    p = tmp_path / "not-here"
    with pytest.raises(FileNotFoundError) as exc:
        load_fashion_mnist(p)
    msg = str(exc.value)
    assert str(p) in msg and "apt-get install dataset-fashion-mnist" in msg
    assert str(no_default_data) not in msg  # an explicit path is the only place looked


def test_default_dir_is_debian_location():
    assert datasets.DEFAULT_FASHION_MNIST_DIR == "/usr/share/datasets/fashion-mnist"


# --------------------------------------------------------------------------- real data


def _real_files_present():
    return all(
        any(os.path.isfile(os.path.join(REAL_DIR, f + ext)) for ext in (".gz", ""))
        for f in FILES
    )


def test_real_fashion_mnist():
    if not _real_files_present():
        pytest.skip(
            f"Fashion-MNIST not installed in {REAL_DIR} "
            "(apt-get install dataset-fashion-mnist)"
        )
    (Xtr, ytr), (Xte, yte) = load_fashion_mnist(REAL_DIR, dtype="float32")
    assert Xtr.shape == (60000, 784) and Xte.shape == (10000, 784)
    assert ytr.shape == (60000,) and yte.shape == (10000,)
    assert Xtr.dtype == Xte.dtype == np.float32
    assert Xtr.flags.c_contiguous and Xte.flags.c_contiguous
    for X in (Xtr, Xte):
        assert X.min() == 0.0 and X.max() == 1.0
        assert 0.2 < X.mean() < 0.4  # Fashion-MNIST mean pixel is about 0.29
    assert set(np.unique(ytr)) == set(range(10)) == set(np.unique(yte))
    np.testing.assert_array_equal(np.bincount(ytr, minlength=10), np.full(10, 6000))
    np.testing.assert_array_equal(np.bincount(yte, minlength=10), np.full(10, 1000))

    # Cross-check the first test image against a direct read of the file.
    path = os.path.join(REAL_DIR, FILES[2] + ".gz")
    if os.path.isfile(path):
        with gzip.open(path, "rb") as f:
            raw = np.frombuffer(f.read(), np.uint8, offset=16)
        np.testing.assert_array_equal(np.rint(Xte[0] * 255), raw[:784])
