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


# --------------------------------------------------------------------------- embedded digits

__all__ += ["load_digits", "load_mnist", "MNIST_PICKLE_GLOBALS"]

#: Where the embedded digits live inside the package (see fastnn/data/README.md).
_DIGITS_RESOURCE = ("data", "digits.npz")
_DIGITS_SHAPE = (1797, 8, 8)


def load_digits(*, dtype="float64", normalize=True):
    """Load the handwritten digits that ship inside fastnn: 1797 images, 8x8 pixels.

    These are the "Optical Recognition of Handwritten Digits" of E. Alpaydin and
    C. Kaynak (1998). The source is the UCI Machine Learning Repository,
    https://doi.org/10.24432/C50P49, and the licence is CC BY 4.0. They are the
    1797 instances of the test partition, the same data as scikit-learn's
    ``load_digits``. Each pixel counts the "on" bits of a 4x4 block of a 32x32
    bitmap, an integer 0..16. ``fastnn/data/README.md`` gives the attribution
    and says how the file was made. The data are read from the installed
    package with ``importlib.resources``, so nothing is downloaded.

    Parameters
    ----------
    dtype : str or numpy.dtype, default "float64"
        Element type of ``X``.
    normalize : bool, default True
        Divide the pixel values by 16, into ``[0, 1]``. `dtype` must then be a
        floating type. With ``normalize=False`` the raw counts 0..16 are kept.

    Returns
    -------
    X : numpy.ndarray, shape (1797, 64)
        C-contiguous and writable, of `dtype`. Rows are images, pixels are in
        row-major order.
    y : numpy.ndarray of int64, shape (1797,)
        The digits, 0..9. Each class has 174 to 183 samples.

    Raises
    ------
    FileNotFoundError
        If the data file is missing from the installation (the message names
        the path it looked at).
    ValueError
        If `normalize` is asked for with a non-floating `dtype`.

    Examples
    --------
    >>> X, y = load_digits()
    >>> X.shape, y.shape
    ((1797, 64), (1797,))
    """
    import importlib.resources

    dtype = np.dtype(dtype)
    if normalize and dtype.kind != "f":
        raise ValueError(
            f"normalize=True needs a floating dtype, found {dtype}; "
            "pass normalize=False to keep the raw pixel counts 0..16"
        )
    resource = importlib.resources.files("fastnn").joinpath(*_DIGITS_RESOURCE)
    try:
        with resource.open("rb") as fh, np.load(fh, allow_pickle=False) as data:
            images = data["images"]
            labels = data["labels"]
    except FileNotFoundError:
        raise FileNotFoundError(
            f"fastnn's embedded digits data set is missing: {resource} does not exist. "
            "The installation is incomplete (fastnn/data/*.npz must be installed as "
            "package data); reinstall fastnn."
        ) from None
    except (OSError, KeyError, ValueError) as exc:
        raise ValueError(
            f"fastnn's embedded digits data set {resource} is unreadable "
            f"({type(exc).__name__}: {exc}); reinstall fastnn."
        ) from None
    if (images.shape != _DIGITS_SHAPE or images.dtype != np.uint8
            or labels.shape != _DIGITS_SHAPE[:1] or labels.dtype != np.uint8):
        raise ValueError(
            f"fastnn's embedded digits data set {resource} holds images {images.shape} "
            f"{images.dtype} and labels {labels.shape} {labels.dtype}, expected "
            f"{_DIGITS_SHAPE} uint8 and ({_DIGITS_SHAPE[0]},) uint8; reinstall fastnn."
        )
    X = images.reshape(images.shape[0], -1).astype(dtype, order="C")
    if normalize:
        X /= 16
    return X, labels.astype(np.int64)


# --------------------------------------------------------------------------- MNIST

#: The only globals a ``mnist.pkl.gz`` pickle may name. They are what NumPy
#: needs to rebuild arrays: its array constructor (numpy.core in NumPy 1, as in the
#: book's file, and numpy._core in NumPy 2), the protocol-5 buffer constructor,
#: ``ndarray`` and ``dtype``. ``tuple`` is also allowed (``__builtin__`` is its
#: Python 2 module name).
MNIST_PICKLE_GLOBALS = frozenset({
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.numeric", "_frombuffer"),
    ("numpy._core.numeric", "_frombuffer"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("builtins", "tuple"),
    ("__builtin__", "tuple"),
})

_MNIST_IDX_FILES = (
    ("train-images-idx3-ubyte", "train-images.idx3-ubyte"),
    ("train-labels-idx1-ubyte", "train-labels.idx1-ubyte"),
    ("t10k-images-idx3-ubyte", "t10k-images.idx3-ubyte"),
    ("t10k-labels-idx1-ubyte", "t10k-labels.idx1-ubyte"),
)


def _numpy_global(module, name):
    """The object behind an allowed global, taken from NumPy as installed.

    A pickle made with NumPy 1 names ``numpy.core.multiarray``. NumPy 2 calls it
    ``numpy._core`` and warns when the old name is used, so both names map to
    whichever module is there.
    """
    if module == "numpy" or module in ("builtins", "__builtin__"):
        return {"ndarray": np.ndarray, "dtype": np.dtype, "tuple": tuple}[name]
    import importlib

    submodule = module.rsplit(".", 1)[1]
    try:
        mod = importlib.import_module(f"numpy._core.{submodule}")
    except ImportError:  # NumPy 1
        mod = importlib.import_module(f"numpy.core.{submodule}")
    return getattr(mod, name)


def _restricted_unpickler(fh):
    import pickle

    class _ArraysOnly(pickle.Unpickler):
        def find_class(self, module, name):
            if (module, name) not in MNIST_PICKLE_GLOBALS:
                raise pickle.UnpicklingError(
                    f"it names the global {module}.{name}, but only NumPy arrays in tuples "
                    "are allowed (loading a pickle can run code, so no other global is "
                    "ever loaded)"
                )
            return _numpy_global(module, name)

    # encoding="latin1" reads the book's Python 2 pickle. Its arrays' bytes were
    # Python 2 str objects, and NumPy accepts them decoded as latin-1.
    return _ArraysOnly(fh, encoding="latin1")


def _check_split(path, name, pair, dtype):
    """Validate one (X, y) pair of the book's pickle; return it converted."""
    if not isinstance(pair, tuple) or len(pair) != 2:
        raise ValueError(
            f"{path}: the {name} set must be a pair (X, y), found {type(pair).__name__}"
            + (f" of length {len(pair)}" if isinstance(pair, tuple) else "")
        )
    X, y = pair
    if not isinstance(X, np.ndarray) or X.ndim != 2 or X.dtype.kind != "f":
        raise ValueError(
            f"{path}: the {name} images must be a 2-D floating array (n, 784), found "
            + (f"shape {X.shape} of {X.dtype}" if isinstance(X, np.ndarray) else type(X).__name__)
        )
    if not isinstance(y, np.ndarray) or y.ndim != 1 or y.dtype.kind not in "iu":
        raise ValueError(
            f"{path}: the {name} labels must be a 1-D integer array, found "
            + (f"shape {y.shape} of {y.dtype}" if isinstance(y, np.ndarray) else type(y).__name__)
        )
    if X.shape[0] != y.shape[0]:
        raise ValueError(
            f"{path}: the {name} set holds {X.shape[0]} images but {y.shape[0]} labels"
        )
    return np.ascontiguousarray(X, dtype=dtype), y.astype(np.int64)


def _load_mnist_pickle(path, dtype):
    import pickle

    with open(path, "rb") as fh:
        head = fh.read(2)
        fh.seek(0)
        stream = gzip.GzipFile(fileobj=fh, mode="rb") if head == _GZIP_MAGIC else fh
        try:
            obj = _restricted_unpickler(stream).load()
        except (pickle.UnpicklingError, EOFError, OSError, zlib.error, ValueError, TypeError,
                KeyError, AttributeError, IndexError, MemoryError, UnicodeDecodeError) as exc:
            raise ValueError(
                f"{path}: not a readable mnist.pkl.gz (the book's gzip'd pickle of "
                f"(training, validation, test) NumPy arrays): {exc}"
            ) from None
    if not isinstance(obj, tuple) or len(obj) != 3:
        raise ValueError(
            f"{path}: expected a tuple (training, validation, test) of (X, y) pairs, found "
            f"{type(obj).__name__}" + (f" of length {len(obj)}" if isinstance(obj, tuple) else "")
        )
    return tuple(_check_split(path, name, pair, dtype)
                 for name, pair in zip(("training", "validation", "test"), obj))


def load_mnist(path, *, dtype="float64", normalize=True):
    """Load MNIST from local files: the book's ``mnist.pkl.gz`` or a directory of IDX files.

    Nothing is downloaded. `path` can be either of these:

    * **a file**, the ``mnist.pkl.gz`` of Nielsen's *Neural Networks and Deep
      Learning* (the repository's ``data/`` folder). It is a gzip'd pickle of
      ``(training, validation, test)``, each a pair ``(X, y)`` with X float32 of
      shape ``(n, 784)`` in ``[0, 1]`` and y int64. The splits hold 50 000,
      10 000 and 10 000 images. An uncompressed pickle is read too. The result is
      ``(X_train, y_train), (X_val, y_val), (X_test, y_test)``.
    * **a directory** holding the four MNIST IDX files ``train-images-idx3-ubyte``,
      ``train-labels-idx1-ubyte``, ``t10k-images-idx3-ubyte`` and
      ``t10k-labels-idx1-ubyte``. Each may end in ``.gz``, and a ``.`` may stand
      for the last ``-`` (``train-images.idx3-ubyte``). They are read with
      `load_idx`, and the result is ``(X_train, y_train), (X_test, y_test)``.

    Loading a pickle runs code that the file names. The pickle is therefore
    read with a restricted unpickler. It accepts only the globals in
    `MNIST_PICKLE_GLOBALS`: NumPy's array and dtype reconstruction, and
    ``tuple``. Any other global (``os.system``, say) raises ValueError before
    anything it names is imported or called. The data are then checked: three
    (X, y) pairs, X a 2-D floating array and y 1-D integers of the same length.
    The pickle is read with ``encoding="latin1"``, which the book's Python 2
    file needs.

    Parameters
    ----------
    path : str or os.PathLike
        The pickle file or the IDX directory.
    dtype : str or numpy.dtype, default "float64"
        Element type of the image arrays.
    normalize : bool, default True
        For IDX files: scale bytes to ``[0, 1]`` (see `load_idx`). The pickle's
        images are already in ``[0, 1]`` and are never rescaled.

    Returns
    -------
    tuple of (X, y) pairs
        Three pairs for a pickle, two for an IDX directory. X is a C-contiguous
        (n, 784) array of `dtype` and y is int64.

    Raises
    ------
    FileNotFoundError
        If `path` does not exist, or the directory lacks an IDX file. The
        message names the path and the files it needs.
    ValueError
        If the file is not a valid pickle of that structure, names a global
        that is not allowed, or an IDX file is corrupt.
    """
    path = os.fspath(path)
    dtype = np.dtype(dtype)
    if os.path.isdir(path):
        files = []
        for variants in _MNIST_IDX_FILES:
            found = next((f for f in (_find_file(path, v) for v in variants) if f), None)
            files.append(found)
        if not all(files):
            missing = [v[0] for v, f in zip(_MNIST_IDX_FILES, files) if f is None]
            raise FileNotFoundError(
                f"MNIST IDX files not found in {path}: missing "
                + ", ".join(m + "[.gz]" for m in missing)
                + ". Pass a directory with the four MNIST IDX files, or the book's "
                "mnist.pkl.gz file."
            )
        kw = dict(dtype=dtype, normalize=normalize, flatten=True)
        return load_idx(files[0], files[1], **kw), load_idx(files[2], files[3], **kw)
    if not os.path.exists(path):
        raise FileNotFoundError(
            f"MNIST not found: {path} does not exist. Pass the book's mnist.pkl.gz "
            "(from the data/ folder of Nielsen's neural-networks-and-deep-learning "
            "repository) or a directory with the four MNIST IDX files."
        )
    if dtype.kind != "f":
        raise ValueError(f"load_mnist needs a floating dtype for a pickle, found {dtype}")
    return _load_mnist_pickle(path, dtype)
