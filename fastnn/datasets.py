"""Loaders for IDX-format datasets (MNIST, Fashion-MNIST).

The IDX format stores one n-dimensional array per file::

    2 zero bytes | type code (1 byte) | ndim (1 byte) | ndim x uint32 dims | data

All integers are big-endian.  The data follow in C order, with the element
type given by the type code (0x08 unsigned byte, 0x09 signed byte, 0x0B
int16, 0x0C int32, 0x0D float32, 0x0E float64).  Files may be stored raw or
gzip-compressed; compression is detected from the content, not the name.

Only NumPy and the standard library are used, and nothing is downloaded:
on Debian/Ubuntu ``apt-get install dataset-fashion-mnist`` provides the
Fashion-MNIST files, or they can be fetched by hand and passed via ``path=``
or the ``FASTNN_DATA`` environment variable.

Examples
--------
>>> from fastnn.datasets import load_fashion_mnist
>>> (X_train, y_train), (X_test, y_test) = load_fashion_mnist()  # doctest: +SKIP
>>> X_train.shape, y_train.shape                                  # doctest: +SKIP
((60000, 784), (60000,))
"""

import gzip
import math
import os
import zlib
from pathlib import Path

import numpy as np

__all__ = ["FASHION_MNIST_CLASSES", "load_idx", "load_fashion_mnist"]

#: Fashion-MNIST class names, indexed by label.
FASHION_MNIST_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)

#: Directory where the Debian package ``dataset-fashion-mnist`` installs the data.
DEFAULT_FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"

#: Environment variable naming a data directory.
DATA_ENV_VAR = "FASTNN_DATA"

_FASHION_MNIST_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)

# IDX type code -> (big-endian NumPy dtype, name used in messages)
_IDX_TYPES = {
    0x08: (np.dtype(">u1"), "ubyte"),
    0x09: (np.dtype(">i1"), "sbyte"),
    0x0B: (np.dtype(">i2"), "short"),
    0x0C: (np.dtype(">i4"), "int"),
    0x0D: (np.dtype(">f4"), "float"),
    0x0E: (np.dtype(">f8"), "double"),
}

_GZIP_MAGIC = b"\x1f\x8b"


def _read_idx(path):
    """Read one IDX file and return its array (read-only, big-endian).

    Parameters
    ----------
    path : str or os.PathLike
        Raw or gzip-compressed IDX file.

    Returns
    -------
    numpy.ndarray
        Array with the shape and element type declared in the header.

    Raises
    ------
    FileNotFoundError
        If `path` does not exist.
    ValueError
        If the file is not a valid IDX file (bad magic, unknown type code,
        truncated header or data, trailing bytes, corrupt gzip stream).
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"IDX file not found: {path!r}")
    with open(path, "rb") as f:
        buf = f.read()

    if buf[:2] == _GZIP_MAGIC:
        try:
            buf = gzip.decompress(buf)
        except (OSError, EOFError, zlib.error) as exc:
            raise ValueError(
                f"{path}: corrupt or truncated gzip stream ({exc})"
            ) from None

    if len(buf) < 4:
        raise ValueError(
            f"{path}: truncated IDX header: expected at least 4 bytes, "
            f"found {len(buf)}"
        )
    if buf[0] != 0 or buf[1] != 0 or buf[2] not in _IDX_TYPES:
        codes = ", ".join(f"0x{c:02X}" for c in _IDX_TYPES)
        raise ValueError(
            f"{path}: not an IDX file: expected magic 00 00 <type> <ndim> with "
            f"type in {{{codes}}}, found {buf[:4].hex(' ')}"
        )
    dtype, type_name = _IDX_TYPES[buf[2]]
    ndim = buf[3]

    header_size = 4 + 4 * ndim
    if len(buf) < header_size:
        raise ValueError(
            f"{path}: truncated IDX header: expected {header_size} bytes for "
            f"{ndim} dimensions, found {len(buf)}"
        )
    shape = tuple(int(d) for d in np.frombuffer(buf, ">u4", ndim, offset=4))

    expected = math.prod(shape) * dtype.itemsize
    found = len(buf) - header_size
    if found != expected:
        what = "truncated IDX data" if found < expected else "trailing bytes after IDX data"
        dims = " x ".join(map(str, shape)) or "scalar"
        raise ValueError(
            f"{path}: {what}: header declares {dims} {type_name} "
            f"= {expected} data bytes, found {found}"
        )
    return np.frombuffer(buf, dtype, offset=header_size).reshape(shape)


def load_idx(images, labels=None, *, dtype="float64", normalize=True, flatten=True):
    """Load an IDX images file and, optionally, the matching labels file.

    Parameters
    ----------
    images : str or os.PathLike
        IDX file with at least 2 dimensions, ``(n, rows, cols, ...)``,
        raw or gzip-compressed (detected by the magic bytes ``1f 8b``).
    labels : str or os.PathLike, optional
        1-D IDX file of ``n`` integer labels.  If omitted only ``X`` is
        returned.
    dtype : str or numpy.dtype, default "float64"
        Element type of ``X``.
    normalize : bool, default True
        If the images are unsigned bytes, scale them to ``[0, 1]`` by dividing
        by 255 (`dtype` must then be a floating type).  Other element types
        are never rescaled.
    flatten : bool, default True
        Reshape ``X`` to ``(n, rows * cols)``; otherwise keep the file's shape.

    Returns
    -------
    X : numpy.ndarray
        C-contiguous, writable array of `dtype`, shape ``(n, rows * cols)``
        (or the file's shape if not `flatten`).
    y : numpy.ndarray of int64, shape (n,)
        Labels; only returned when `labels` is given.

    Raises
    ------
    FileNotFoundError
        If a file does not exist (the message names it).
    ValueError
        If a file is corrupt or truncated, has the wrong number of
        dimensions, the label type is not an integer, the image and label
        counts differ, or `normalize` is requested with a non-float `dtype`.

    Examples
    --------
    >>> X, y = load_idx("train-images-idx3-ubyte.gz",
    ...                 "train-labels-idx1-ubyte.gz")  # doctest: +SKIP
    """
    dtype = np.dtype(dtype)
    raw = _read_idx(images)
    if raw.ndim < 2:
        raise ValueError(
            f"{os.fspath(images)}: expected an images file with at least 2 "
            f"dimensions, found shape {raw.shape} (is it a labels file?)"
        )
    scale = normalize and raw.dtype == np.uint8
    if scale and dtype.kind != "f":
        raise ValueError(
            f"normalize=True needs a floating dtype, found {dtype}; "
            "pass normalize=False to keep raw byte values"
        )

    X = raw.astype(dtype, order="C")  # native byte order, writable copy
    if scale:
        X /= 255
    if flatten:
        X = X.reshape(X.shape[0], math.prod(X.shape[1:]))
    if labels is None:
        return X

    raw_y = _read_idx(labels)
    if raw_y.ndim != 1 or raw_y.dtype.kind not in "iu":
        raise ValueError(
            f"{os.fspath(labels)}: expected a 1-D integer labels file, "
            f"found shape {raw_y.shape} of {raw_y.dtype.name}"
        )
    if raw_y.shape[0] != X.shape[0]:
        raise ValueError(
            f"image and label counts differ: {os.fspath(images)} holds "
            f"{X.shape[0]} images, {os.fspath(labels)} holds {raw_y.shape[0]} labels"
        )
    return X, raw_y.astype(np.int64)


def _find_file(directory, name):
    """Return ``directory/name.gz`` or ``directory/name``, whichever exists."""
    for candidate in (name + ".gz", name):
        p = Path(directory, candidate)
        if p.is_file():
            return p
    return None


def _fashion_mnist_dirs(path):
    """Directories to search, in order, for the Fashion-MNIST files."""
    if path is not None:
        return [Path(path)]
    dirs = []
    env = os.environ.get(DATA_ENV_VAR)
    if env:
        dirs += [Path(env), Path(env, "fashion-mnist")]
    dirs.append(Path(DEFAULT_FASHION_MNIST_DIR))
    return dirs


def load_fashion_mnist(path=None, *, dtype="float64", normalize=True):
    """Load the Fashion-MNIST training and test sets from local IDX files.

    The four files ``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``,
    ``t10k-images-idx3-ubyte`` and ``t10k-labels-idx1-ubyte`` (each with or
    without a ``.gz`` suffix) must sit in one directory.  Search order:

    1. `path`, if given (and nothing else);
    2. otherwise ``$FASTNN_DATA`` and ``$FASTNN_DATA/fashion-mnist`` if the
       environment variable is set, then
       ``/usr/share/datasets/fashion-mnist`` (Debian package
       ``dataset-fashion-mnist``).

    Nothing is downloaded.

    Parameters
    ----------
    path : str or os.PathLike, optional
        Directory holding the four files.
    dtype : str or numpy.dtype, default "float64"
        Element type of the image arrays.
    normalize : bool, default True
        Scale pixel values to ``[0, 1]``.

    Returns
    -------
    (X_train, y_train), (X_test, y_test) : tuple of tuples of numpy.ndarray
        ``X_train`` is ``(60000, 784)``, ``X_test`` is ``(10000, 784)``, both
        C-contiguous `dtype`; labels are int64 in ``0..9`` (see
        `FASHION_MNIST_CLASSES`).

    Raises
    ------
    FileNotFoundError
        If no searched directory holds all four files; the message lists
        every directory looked in and how to obtain the data.
    ValueError
        If a file is corrupt (see `load_idx`).
    """
    dirs = _fashion_mnist_dirs(path)
    for d in dirs:
        files = [_find_file(d, name) for name in _FASHION_MNIST_FILES]
        if all(files):
            train_x, train_y, test_x, test_y = files
            kw = dict(dtype=dtype, normalize=normalize, flatten=True)
            return load_idx(train_x, train_y, **kw), load_idx(test_x, test_y, **kw)

    looked = []
    for d in dirs:
        if d.is_dir():
            missing = [n for n in _FASHION_MNIST_FILES if _find_file(d, n) is None]
            looked.append(f"  {d} (missing: {', '.join(missing)})")
        else:
            looked.append(f"  {d} (no such directory)")
    raise FileNotFoundError(
        "Fashion-MNIST not found. Looked in:\n"
        + "\n".join(looked)
        + "\nEach directory needs the files "
        + ", ".join(n + "[.gz]" for n in _FASHION_MNIST_FILES)
        + ".\nTo get them: 'apt-get install dataset-fashion-mnist' (Debian/Ubuntu), "
        f"or download the four IDX files and pass path=<dir> or set {DATA_ENV_VAR}=<dir>."
    )
