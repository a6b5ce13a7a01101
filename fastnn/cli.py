"""The ``fastnn`` command: ``fastnn train``, ``fastnn bench``, ``fastnn study`` and ``fastnn info``.

    fastnn train [--data digits] [--hidden-sizes 30] [--epochs 10] ...   train a network
    fastnn bench [--configs C1,C3] [--epochs 3] ...                      run benchmarks/compare.py
    fastnn study [--seeds 3] [--methods SGD,Newton,LBFGS] ...           run benchmarks/second_order_study.py
    fastnn info                                                          versions, BLAS, threads

It is installed as the console script ``fastnn`` and also runs as ``python -m fastnn``.
``main(argv)`` returns the exit status and never raises. 0 means success, 1 an error and
2 a bad command line. A user error (unknown data set, bad number, unreadable file, sizes
that do not fit the data) prints one line ``fastnn: error: ...`` to stderr and no
traceback.
"""
import argparse
import math
import os
import sys
import time
from pathlib import Path

import numpy as np

from fastnn._validation import describe_interval
from fastnn.training import Callback

PROG = "fastnn"
HIDDEN_CHOICES = ("sigmoid", "tanh", "relu", "identity")
OUTPUT_CHOICES = HIDDEN_CHOICES + ("softmax",)
COST_CHOICES = ("quadratic", "cross-entropy", "log-likelihood")
DTYPE_CHOICES = ("float32", "float64")
TEXT_SUFFIXES = (".csv", ".csv.gz", ".tsv", ".tsv.gz", ".txt", ".txt.gz")
DEFAULT_VALIDATION_FRACTION = 0.1
PROGRESS_EVERY = 2000  # samples between progress-bar updates (terminal only)


class CLIError(Exception):
    """A user error: printed as one line ``fastnn: error: <message>``, exit status 1."""


class _UsageError(Exception):
    """A bad command line: printed as one line, exit status 2."""


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (no usage block) that main() turns into exit status 2."""

    def error(self, message):
        raise _UsageError(f"{message} (see '{self.prog} --help')")


# ----------------------------------------------------------------------------- argument types
def _number(kind, text, *, low=None, high=None, low_open=False, high_open=False):
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected {'an integer' if kind is int else 'a number'}, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    if ((low is not None and (value <= low if low_open else value < low))
            or (high is not None and (value >= high if high_open else value > high))):
        want = describe_interval(low, high, not low_open, not high_open)
        raise argparse.ArgumentTypeError(f"must be {want}, got {text!r}")
    return value


def _type(kind, name=None, **limits):
    def convert(text):
        return _number(kind, text, **limits)
    convert.__name__ = name or kind.__name__  # argparse names it in "invalid <name> value"
    return convert


def _int_list(text, *, allow_empty):
    text = text.strip()
    if allow_empty and text.lower() in ("", "none", "0"):
        return []
    parts = [p.strip() for p in text.split(",")]
    out = []
    for p in parts:
        try:
            v = int(p)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected comma-separated positive integers like 64,30,10, got {text!r}") from None
        if v < 1:
            raise argparse.ArgumentTypeError(f"layer widths must be >= 1, got {text!r}")
        out.append(v)
    return out


def _sizes(text):
    sizes = _int_list(text, allow_empty=False)
    if len(sizes) < 2:
        raise argparse.ArgumentTypeError(
            f"expected at least two widths (inputs and outputs) like 64,30,10, got {text!r}")
    return sizes


def _hidden_sizes(text):
    return _int_list(text, allow_empty=True)


def _hidden(text):
    names = [t.strip() for t in text.split(",")]
    for n in names:
        if n not in HIDDEN_CHOICES:
            raise argparse.ArgumentTypeError(
                f"invalid choice {n!r} (choose from {', '.join(HIDDEN_CHOICES)}; a comma-separated "
                f"list gives one per hidden layer)")
    return names


_sizes.__name__ = "sizes"
_hidden_sizes.__name__ = "hidden sizes"
_hidden.__name__ = "activation"


# ----------------------------------------------------------------------------- the parser
def build_parser():
    from fastnn import __version__

    p = _Parser(prog=PROG, description="Fast fully-connected neural networks: train, benchmark, "
                                       "inspect.",
                epilog="Run 'fastnn COMMAND --help' for a command's options.")
    p.add_argument("--version", action="version", version=f"fastnn {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    # -- train
    t = sub.add_parser(
        "train", help="train a network on a data set and print its learning curve",
        description="Train a fully-connected network with mini-batch SGD and print the learning "
                    "curve. The default trains on the embedded handwritten digits (1797 8x8 "
                    "images) in about a second.",
        epilog="Data sources: 'digits' (embedded, the default); 'fashion-mnist [DIR]' (IDX files "
               "of the Debian package dataset-fashion-mnist, $FASTNN_DATA or DIR); 'mnist PATH' "
               "(the book's mnist.pkl.gz, or a directory of MNIST IDX files); a .npz file with "
               "arrays X (n, features) and y (n,) of integer labels, optionally X_test and "
               "y_test; a .csv/.tsv/.txt file (optionally .gz) with one sample per row, the "
               "label in the last column (or --label-column) and an optional header line. "
               "Labels are class indices 0..K-1 (text labels are numbered in sorted order).")
    d = t.add_argument_group("data")
    d.add_argument("--data", nargs="+", default=["digits"], metavar="SOURCE",
                   help="digits | fashion-mnist [DIR] | mnist PATH | FILE.npz | FILE.csv "
                        "(default: digits)")
    d.add_argument("--label-column", default="-1", metavar="K",
                   help="CSV column holding the label: an index (negative counts from the end) "
                        "or a header name (default: -1, the last)")
    d.add_argument("--csv-header", choices=("auto", "yes", "no"), default="auto",
                   help="whether the CSV file's first line is a header (default: auto, a header "
                        "if a feature field is not a number)")
    d.add_argument("--validation-fraction", type=_type(float, "fraction", low=0.0, high=1.0,
                                                        high_open=True),
                   default=None, metavar="F",
                   help="hold out this fraction of the training data and monitor it after every "
                        "epoch. Default: the data set's own validation or test split if it has "
                        f"one, else {DEFAULT_VALIDATION_FRACTION}. 0 monitors no held-out data.")
    n = t.add_argument_group("network")
    shape = n.add_mutually_exclusive_group()
    shape.add_argument("--sizes", type=_sizes, metavar="N,...,N",
                       help="all layer widths, inputs first, e.g. 64,30,10 (must fit the data)")
    shape.add_argument("--hidden-sizes", type=_hidden_sizes, metavar="N,...",
                       help="hidden layer widths, e.g. 30 or 100,30 ('none' for no hidden layer); "
                            "input and output widths come from the data (default: 30)")
    n.add_argument("--hidden", type=_hidden, default=["relu"], metavar="ACT",
                   help=f"hidden activation: {', '.join(HIDDEN_CHOICES)}, or a comma-separated "
                        "list, one per hidden layer (default: relu)")
    n.add_argument("--output", choices=OUTPUT_CHOICES, default=None,
                   help="output activation (default: softmax, or sigmoid for one output neuron)")
    n.add_argument("--cost", choices=COST_CHOICES, default=None,
                   help="cost (default: log-likelihood for softmax, cross-entropy for sigmoid, "
                        "else quadratic)")
    n.add_argument("--dtype", choices=DTYPE_CHOICES, default="float64",
                   help="float type of parameters and data (default: float64)")
    n.add_argument("--seed", type=_type(int, "seed", low=0), default=0,
                   help="seed of the initial weights, the shuffling and the held-out split "
                        "(default: 0)")
    o = t.add_argument_group("training")
    o.add_argument("--optimizer", choices=("sgd",), default="sgd",
                   help="the optimizer (default: sgd)")
    o.add_argument("--eta", type=_type(float, "eta", low=0.0, low_open=True), default=0.1,
                   help="learning rate > 0 (default: 0.1)")
    o.add_argument("--momentum", type=_type(float, "momentum", low=0.0, high=1.0, high_open=True),
                   default=0.0, help="momentum coefficient in [0, 1) (default: 0)")
    o.add_argument("--nesterov", action="store_true", help="use Nesterov's accelerated gradient")
    o.add_argument("--lmbda", type=_type(float, "lmbda", low=0.0), default=0.0,
                   help="L2 regularization parameter >= 0 (default: 0)")
    o.add_argument("--epochs", type=_type(int, "epochs", low=1), default=10,
                   help="number of epochs (default: 10)")
    o.add_argument("--batch-size", type=_type(int, "batch size", low=1), default=10,
                   help="mini-batch size (default: 10)")
    out = t.add_argument_group("output")
    out.add_argument("--save", metavar="FILE", help="save the trained network (load it with "
                                                    "fastnn.load)")
    out.add_argument("--plot", metavar="FILE.png",
                     help="plot the learning curve to this image (needs matplotlib)")
    t.set_defaults(func=cmd_train)

    # -- bench
    b = sub.add_parser(
        "bench", help="time training epochs against NumPy, PyTorch, scikit-learn",
        description="Run the comparison runner benchmarks/compare.py of fastnn's source "
                    "repository and print its table. It is found in --benchmarks DIR, else in "
                    "$FASTNN_BENCHMARKS, ./benchmarks or a parent directory's benchmarks/, or the "
                    "source tree fastnn was installed from. Options not listed here are passed "
                    "on to compare.py unchanged.")
    b.add_argument("--benchmarks", metavar="DIR",
                   help="the repository's benchmarks/ directory (or the repository itself)")
    b.add_argument("--configs", help="comma-separated configurations, e.g. C1,C3 "
                                     "(default: all)")
    b.add_argument("--epochs", type=_type(int, "epochs", low=1), help="timed epochs")
    b.add_argument("--warmup", type=_type(int, "warmup", low=0), help="warm-up epochs")
    b.add_argument("--samples", type=_type(int, "samples", low=1), help="training samples")
    b.add_argument("--data", choices=("generated", "fashion-mnist"), help="data set")
    b.add_argument("--impls", help="comma-separated implementations, e.g. fastnn,numpy")
    b.add_argument("--budget", type=_type(float, "budget", low=0.0, low_open=True),
                   help="seconds of timed epochs per implementation and configuration")
    b.add_argument("--out", metavar="FILE", help="also write the markdown report here")
    b.add_argument("--no-rss", action="store_true", help="skip the peak-RSS probe")
    b.set_defaults(func=cmd_bench)

    # -- study
    st = sub.add_parser(
        "study", help="compare SGD, momentum, Nesterov, Newton, Hessian-free, CG, BFGS, L-BFGS",
        description="Run benchmarks/second_order_study.py of fastnn's source repository (found "
                    "like 'fastnn bench' finds compare.py): the same small network trained from "
                    "the same initial weights by every optimizer, with iterations, gradient and "
                    "curvature evaluations and wall time to a target cost. Options not listed here "
                    "(--seeds, --targets, --methods, --hidden, --threads, --out) are passed on.")
    st.add_argument("--benchmarks", metavar="DIR",
                    help="the repository's benchmarks/ directory (or the repository itself)")
    st.set_defaults(func=cmd_study)

    # -- info
    i = sub.add_parser("info", help="show versions, dtypes, BLAS and threads",
                       description="Show fastnn's version and build, the dtypes it supports, the "
                                   "BLAS it calls and its threads, and the Python, NumPy and "
                                   "SciPy versions.")
    i.set_defaults(func=cmd_info)
    return p


# ----------------------------------------------------------------------------- entry point
def _one_line(text):
    return " ".join(str(text).split())


def _error(message):
    print(f"{PROG}: error: {_one_line(message)}", file=sys.stderr, flush=True)


def main(argv=None):
    """Run the ``fastnn`` command with ``argv`` (default: sys.argv[1:]); return the exit status."""
    argv = sys.argv[1:] if argv is None else [
        os.fspath(a) if isinstance(a, os.PathLike) else str(a) for a in argv]
    try:
        parser = build_parser()
        args, extra = parser.parse_known_args(argv)
        if extra and args.command not in ("bench", "study"):
            raise _UsageError(f"unrecognized arguments: {' '.join(extra)} "
                              f"(see '{PROG} {args.command} --help')")
        args.extra = extra
    except _UsageError as exc:
        _error(exc)
        return 2
    except SystemExit as exc:  # --help and --version
        return exc.code if isinstance(exc.code, int) else 0
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    try:
        return args.func(args) or 0
    except BrokenPipeError:  # `fastnn train | head`: stop quietly
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        except (OSError, ValueError, AttributeError):
            pass
        return 1
    except KeyboardInterrupt:
        print(f"\n{PROG}: interrupted", file=sys.stderr, flush=True)
        return 130
    except _UsageError as exc:
        _error(exc)
        return 2
    except (CLIError, ValueError, TypeError, OSError, FloatingPointError, ImportError) as exc:
        _error(exc)
        return 1


# ----------------------------------------------------------------------------- data
class Data:
    """Training data with its optional validation and test splits, all validated."""

    def __init__(self, name, X, y, val=None, test=None, classes=None):
        self.name, self.X, self.y, self.val, self.test = name, X, y, val, test
        self.classes = classes  # names of the label values, or None

    @property
    def n_features(self):
        return self.X.shape[1]

    @property
    def n_classes(self):
        return int(max(int(p[1].max()) for p in self._pairs()) + 1)

    def _pairs(self):
        return [p for p in ((self.X, self.y), self.val, self.test) if p is not None]


def _check_pair(source, what, X, y):
    """X as a 2-D float array, y as int64 class indices >= 0, checked against each other."""
    X = np.asarray(X)
    y = np.asarray(y)
    if X.dtype == object or not (np.issubdtype(X.dtype, np.number) or X.dtype == bool):
        raise CLIError(f"{source}: {what} features must be numbers, found dtype {X.dtype}")
    if X.ndim < 2:
        raise CLIError(f"{source}: {what} features must be a 2-D array (samples, features), "
                       f"found shape {X.shape}")
    if X.ndim > 2:  # images (n, rows, cols, ...) are flattened
        X = X.reshape(X.shape[0], -1)
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1:
        raise CLIError(f"{source}: {what} labels must be a 1-D array of class indices, found "
                       f"shape {y.shape}")
    if X.shape[0] != y.shape[0]:
        raise CLIError(f"{source}: {what} has {X.shape[0]} samples but {y.shape[0]} labels")
    if X.shape[0] == 0:
        raise CLIError(f"{source}: {what} holds no samples")
    finite = np.isfinite(X)
    if not finite.all():
        r, c = np.argwhere(~finite)[0]
        raise CLIError(f"{source}: {what} features hold NaN or infinity (first at row {r}, "
                       f"column {c})")
    return X, _labels(source, what, y)


def _labels(source, what, y):
    if y.dtype == bool:
        y = y.astype(np.int64)
    if np.issubdtype(y.dtype, np.floating):
        bad = ~np.isfinite(y) | (y != np.round(y))
        if bad.any():
            raise CLIError(f"{source}: {what} labels must be integer class indices 0..K-1, found "
                           f"{y[bad][0]!r} (regression targets are not supported by "
                           f"'fastnn train')")
    elif not np.issubdtype(y.dtype, np.integer):
        raise CLIError(f"{source}: {what} labels must be integer class indices, found dtype "
                       f"{y.dtype}")
    y = y.astype(np.int64)
    if y.min() < 0:
        raise CLIError(f"{source}: {what} labels must be class indices 0..K-1, found {y.min()}")
    return y


def _is_number(text):
    try:
        float(text)
    except ValueError:
        return False
    return True


def _text_layout(path, label_column, has_header="auto"):
    """(delimiter, has_header, n_columns, label index, header names) from the first lines.

    The first line is a header if one of its feature fields is not a number, or if its
    label field is not a number while the next line's is (a header of numbered columns).
    """
    import gzip
    import itertools

    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rt", newline="") as fh:
        lines = list(itertools.islice((line.strip() for line in fh
                                       if line.strip() and not line.lstrip().startswith("#")), 2))
    if not lines:
        raise CLIError(f"{path}: the file holds no data rows")
    first = lines[0]
    delimiter = next((c for c in (",", "\t", ";") if c in first), None)

    def split(line):
        return [f.strip().strip('"').strip("'") for f in line.split(delimiter)]

    fields = split(first)
    ncol = len(fields)
    if ncol < 2:
        raise CLIError(f"{path}: needs at least two columns (features and a label), found "
                       f"{ncol}" + ("" if delimiter else " (columns are separated by commas, "
                                                          "tabs, semicolons or whitespace)"))
    try:
        k = int(label_column)
    except ValueError:
        if label_column not in fields:
            raise CLIError(f"--label-column {label_column!r} is not a column name of {path} "
                           f"(its first line is {first[:80]!r}); give a name from its header "
                           f"line or a column index") from None
        k = fields.index(label_column)
        if has_header == "no":
            raise CLIError(f"--label-column {label_column!r} names a column, but --csv-header no "
                           f"says {path} has no header line") from None
        header = True
    else:
        if not -ncol <= k < ncol:
            raise CLIError(f"--label-column {label_column} is out of range: {path} has {ncol} "
                           f"columns")
        k %= ncol
        second = split(lines[1]) if len(lines) > 1 else []
        header = (has_header == "yes" if has_header != "auto" else
                  not all(_is_number(f) for i, f in enumerate(fields) if i != k)
                  or (not _is_number(fields[k]) and len(second) == ncol
                      and _is_number(second[k])))
    return delimiter, header, ncol, k, fields if header else None


def _load_text(path, label_column, has_header="auto"):
    delimiter, header, ncol, k, names = _text_layout(path, label_column, has_header)
    feature_cols = [c for c in range(ncol) if c != k]
    kw = dict(delimiter=delimiter, skiprows=int(header), comments="#", quotechar='"')

    def loadtxt(**more):
        try:
            return np.loadtxt(path, **kw, **more)
        except ValueError as exc:
            msg = str(exc).split("; use `usecols`")[0]
            raise CLIError(f"{path}: {msg}") from None

    X = loadtxt(usecols=feature_cols, dtype=np.float64, ndmin=2)
    raw = loadtxt(usecols=[k], dtype=str, ndmin=1)
    classes = None
    try:
        y = raw.astype(np.float64)
    except ValueError:  # text labels: number them in sorted order
        classes, y = np.unique(raw, return_inverse=True)
        classes = [str(c) for c in classes]
    else:
        bad = ~np.isfinite(y) | (y != np.round(y))
        if bad.any():
            raise CLIError(f"{path}: the label column {k} must hold class labels, found "
                           f"{raw[bad][0]!r} (regression targets are not supported by "
                           f"'fastnn train')")
        if y.min() < 0:  # e.g. -1/+1: number the values in sorted order
            values, y = np.unique(y.astype(np.int64), return_inverse=True)
            classes = [str(v) for v in values]
    X, y = _check_pair(path, "the file", X, y)
    what = f"{Path(path).name} (label column {k}" + (f" '{names[k]}'" if names else "") + ")"
    return Data(what, X, y, classes=classes)


def _load_npz(path):
    import zipfile

    try:
        with np.load(path, allow_pickle=False) as f:
            if not hasattr(f, "files"):
                raise CLIError(f"{path}: not a .npz archive (a single array); save X and y with "
                               f"numpy.savez(path, X=X, y=y)")
            arrays = {k: f[k] for k in f.files}
    except (zipfile.BadZipFile, EOFError) as exc:
        raise CLIError(f"{path}: not a readable .npz file ({exc})") from None
    except ValueError as exc:
        raise CLIError(f"{path}: not a readable .npz file ({exc})") from None
    missing = [k for k in ("X", "y") if k not in arrays]
    if missing:
        raise CLIError(f"{path}: the archive needs arrays named X and y; it holds "
                       f"{', '.join(sorted(arrays)) or 'none'}")
    X, y = _check_pair(path, "X/y", arrays["X"], arrays["y"])
    test = None
    if "X_test" in arrays or "y_test" in arrays:
        if not ("X_test" in arrays and "y_test" in arrays):
            raise CLIError(f"{path}: give both X_test and y_test, or neither")
        test = _check_pair(path, "X_test/y_test", arrays["X_test"], arrays["y_test"])
    return Data(Path(path).name, X, y, test=test)


def load_data(source, label_column="-1", dtype="float64", csv_header="auto"):
    """The Data named by ``--data`` (a list of one or two words), images in ``dtype``."""
    from fastnn import datasets

    name, rest = source[0], source[1:]
    lowered = name.lower()

    def no_extra(usage):
        if rest:
            raise CLIError(f"--data {usage} takes no further argument, got {' '.join(rest)!r}")

    if lowered == "digits":
        no_extra("digits")
        X, y = datasets.load_digits(dtype=dtype)
        return Data("digits (UCI handwritten digits, embedded)", X, y)
    if lowered in ("fashion-mnist", "fashion_mnist", "fashionmnist"):
        if len(rest) > 1:
            raise CLIError(f"--data fashion-mnist takes at most one directory, got "
                           f"{' '.join(rest)!r}")
        try:
            train, test = datasets.load_fashion_mnist(rest[0] if rest else None, dtype=dtype)
        except FileNotFoundError as exc:
            raise FileNotFoundError(f"{_one_line(exc)} With fastnn train: --data fashion-mnist "
                                    f"DIR.") from None
        return Data("Fashion-MNIST", *train, test=test)
    if lowered == "mnist":
        if len(rest) != 1:
            raise CLIError("--data mnist needs one PATH: the book's mnist.pkl.gz or a directory "
                           "holding the MNIST IDX files (e.g. --data mnist data/mnist.pkl.gz)")
        return _load_mnist(rest[0], dtype)
    if rest:
        raise CLIError(f"unknown data set {name!r} with argument {' '.join(rest)!r}: use digits, "
                       f"fashion-mnist [DIR], mnist PATH, or a .npz or .csv file")
    if lowered.endswith((".pkl", ".pkl.gz", ".pickle")):
        return _load_mnist(name, dtype)
    if label_column != "-1" and not lowered.endswith(TEXT_SUFFIXES):
        raise CLIError(f"--label-column applies to .csv/.tsv/.txt files, not to --data {name}")
    if lowered.endswith(".npz") or lowered.endswith(TEXT_SUFFIXES):
        if not os.path.exists(name):
            raise FileNotFoundError(f"data file not found: {name}")
        if os.path.isdir(name):
            raise CLIError(f"{name} is a directory; --data takes a .npz or .csv file")
        if lowered.endswith(".npz"):
            return _load_npz(name)
        return _load_text(name, label_column, csv_header)
    hint = (f" ({name} exists but its type is unknown: name it .npz or .csv)"
            if os.path.exists(name) else "")
    raise CLIError(f"unknown data set {name!r}: use digits, fashion-mnist [DIR], mnist PATH, "
                   f"or a .npz or .csv file{hint}")


def _load_mnist(path, dtype):
    from fastnn import datasets

    splits = datasets.load_mnist(path, dtype=dtype)
    if len(splits) == 3:
        (X, y), val, test = splits
        return Data(f"MNIST ({Path(path).name})", X, y, val=val, test=test)
    (X, y), test = splits
    return Data(f"MNIST ({path})", X, y, test=test)


def _held_out(data, fraction, seed):
    """(X_train, y_train, held-out pair or None, its description, test pair to report or None)."""
    X, y = data.X, data.y
    n = X.shape[0]
    if fraction is None:
        if data.val is not None:
            return X, y, data.val, "the validation split", data.test
        if data.test is not None:
            return X, y, data.test, "the test split", None
        fraction = DEFAULT_VALIDATION_FRACTION
        if round(fraction * n) < 1:  # too few samples to hold any out by default
            fraction = 0
    if fraction == 0:
        return X, y, None, None, data.test
    k = int(round(fraction * n))
    if k < 1 or k >= n:
        raise CLIError(f"--validation-fraction {fraction} of {n} samples leaves "
                       f"{'no held-out' if k < 1 else 'no training'} sample; use a larger data "
                       f"set or another fraction")
    perm = np.random.default_rng(seed).permutation(n)
    val, train = perm[:k], np.sort(perm[k:])
    return (X[train], y[train], (X[val], y[val]),
            f"{100 * fraction:g}% of the training data", data.test)


# ----------------------------------------------------------------------------- progress
class _EpochPrinter(Callback):
    """Prints one line per epoch; keeps the history for the final table."""

    def __init__(self, out, epochs, n):
        self.out, self.epochs, self.n = out, epochs, n
        self.history = None
        self.t_epoch = time.perf_counter()

    def _clear(self):
        pass

    def on_epoch_end(self, history):
        self.history = history
        self._clear()
        i = len(history) - 1
        parts = [f"epoch {i + 1:>{len(str(self.epochs))}}/{self.epochs}"]
        for label, cost, acc in (("train", history.train_cost[i], history.train_accuracy[i]),
                                 ("val", history.val_cost[i], history.val_accuracy[i])):
            if cost is not None:
                parts.append(f"{label} cost {cost:.4f} acc {100 * acc:6.2f}%")
        parts.append(f"{history.seconds[i]:.3f} s")
        print("  ".join(parts), file=self.out, flush=True)
        self.t_epoch = time.perf_counter()
        return False


class _ProgressBar(_EpochPrinter):
    """Adds a progress bar with the epoch's ETA, redrawn in place on a terminal."""

    def __init__(self, out, epochs, n):
        super().__init__(out, epochs, n)
        self.t_draw = 0.0
        self.drawn = 0

    def on_progress(self, epoch, done, n):
        now = time.perf_counter()
        if now - self.t_draw < 0.1 or done >= n:
            return
        self.t_draw = now
        elapsed = now - self.t_epoch
        eta = elapsed * (n - done) / max(done, 1)
        import shutil
        width = max(40, min(shutil.get_terminal_size((80, 24)).columns, 120)) - 1
        head = f"epoch {epoch + 1}/{self.epochs} "
        tail = f" {100 * done / n:3.0f}% {done}/{n} ETA {_clock(eta)}"
        bar_w = max(10, width - len(head) - len(tail) - 2)
        fill = int(bar_w * done / n)
        line = f"{head}[{'#' * fill}{'.' * (bar_w - fill)}]{tail}"[:width]
        self.out.write("\r" + line.ljust(self.drawn))
        self.out.flush()
        self.drawn = len(line)

    def _clear(self):
        if self.drawn:
            self.out.write("\r" + " " * self.drawn + "\r")
            self.drawn = 0


def _clock(seconds):
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def _make_reporter(out, epochs, n):
    """A progress bar on a terminal, plain lines otherwise (fit then never stops mid-epoch)."""
    isatty = getattr(out, "isatty", None)
    tty = bool(isatty and isatty())
    return (_ProgressBar if tty else _EpochPrinter)(out, epochs, n), tty


def format_table(history):
    """The learning curve as a text table, one row per epoch (accuracies in %)."""
    head = ("epoch", "train cost", "train acc", "val cost", "val acc", "seconds")
    rows = []
    for i in range(len(history)):
        def cost(v):
            return "-" if v is None else f"{v:.4f}"

        def acc(v):
            return "-" if v is None else f"{100 * v:.2f}%"
        rows.append((str(history.epoch[i] + 1), cost(history.train_cost[i]),
                     acc(history.train_accuracy[i]), cost(history.val_cost[i]),
                     acc(history.val_accuracy[i]), f"{history.seconds[i]:.3f}"))
    widths = [max(len(h), *(len(r[j]) for r in rows)) for j, h in enumerate(head)]
    lines = ["  ".join(h.rjust(w) for h, w in zip(head, widths)),
             "  ".join("-" * w for w in widths)]
    lines += ["  ".join(c.rjust(w) for c, w in zip(r, widths)) for r in rows]
    return "\n".join(lines)


# ----------------------------------------------------------------------------- train
def _check_output_path(option, path):
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise CLIError(f"{option} {path}: the directory {directory} does not exist")
    if os.path.isdir(path):
        raise CLIError(f"{option} {path}: is a directory; give a file name")


def _plot_check(path):
    """Fail before training if --plot cannot work: matplotlib missing or format unknown."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise CLIError("--plot needs matplotlib, which is not installed: pip install matplotlib "
                       "(or pip install 'fastnn[plot]')") from None
    formats = Figure().canvas.get_supported_filetypes()
    ext = os.path.splitext(path)[1].lstrip(".").lower()
    if ext not in formats:
        raise CLIError(f"--plot {path}: unknown image type {ext!r}; use one of "
                       f"{', '.join(sorted(formats))} (e.g. curve.png)")
    _check_output_path("--plot", path)


def plot_history(history, path, title=""):
    """Write the learning curve (cost and accuracy per epoch) to an image file."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    fig = Figure(figsize=(10, 4.5), layout="constrained")
    ax_cost, ax_acc = fig.subplots(1, 2)
    epochs = [e + 1 for e in history.epoch]
    for key, label in (("train", "training"), ("val", "held-out")):
        cost, acc = history[f"{key}_cost"], history[f"{key}_accuracy"]
        if any(v is not None for v in cost):
            ax_cost.plot(epochs, cost, marker="o", label=label)
            ax_acc.plot(epochs, [100 * a for a in acc], marker="o", label=label)
    ax_cost.set(xlabel="epoch", ylabel="cost", title="cost")
    ax_acc.set(xlabel="epoch", ylabel="accuracy (%)", title="accuracy")
    for ax in (ax_cost, ax_acc):
        ax.grid(alpha=0.3)
        ax.legend()
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if title:
        fig.suptitle(title, fontsize="medium")
    fig.savefig(path, dpi=100)


def _activation_defaults(n_out, output, cost):
    if output is None:
        output = "softmax" if n_out > 1 else "sigmoid"
    if cost is None:
        cost = {"softmax": "log-likelihood", "sigmoid": "cross-entropy"}.get(output, "quadratic")
    return output, cost


def cmd_train(args):
    import fastnn

    out = sys.stdout
    if args.plot:
        _plot_check(args.plot)
    if args.save:
        _check_output_path("--save", args.save)

    data = load_data(args.data, args.label_column, args.dtype, args.csv_header)
    n_features, n_classes = data.n_features, data.n_classes
    if n_classes < 2:
        raise CLIError(f"{data.name}: the labels hold one class only ({n_classes - 1}); "
                       f"classification needs at least two")
    if args.sizes is not None:
        sizes = list(args.sizes)
        if sizes[0] != n_features:
            raise CLIError(f"--sizes {','.join(map(str, sizes))} does not fit the data: the "
                           f"first width must be the number of features, {n_features} (or use "
                           f"--hidden-sizes)")
        if sizes[-1] != 1 and sizes[-1] < n_classes or sizes[-1] == 1 and n_classes > 2:
            raise CLIError(f"--sizes {','.join(map(str, sizes))} does not fit the data: the last "
                           f"width must be the number of classes, {n_classes} (labels "
                           f"0..{n_classes - 1})" + (", or 1 for two classes"
                                                      if n_classes == 2 else ""))
    else:
        hidden_sizes = [30] if args.hidden_sizes is None else args.hidden_sizes
        sizes = [n_features, *hidden_sizes, n_classes]
    hidden = args.hidden
    if len(hidden) == 1:
        hidden = hidden[0]
    elif len(hidden) != len(sizes) - 2:
        raise CLIError(f"--hidden lists {len(hidden)} activations but the network "
                       f"{sizes} has {len(sizes) - 2} hidden layer(s)")
    output, cost = _activation_defaults(sizes[-1], args.output, args.cost)
    if args.nesterov and args.momentum == 0:
        raise CLIError("--nesterov needs a momentum > 0 (e.g. --momentum 0.9)")

    X, y, val, val_desc, test = _held_out(data, args.validation_fraction, args.seed)
    net = fastnn.Network(sizes, hidden=hidden, output=output, cost=cost, dtype=args.dtype,
                         seed=args.seed)
    opt = fastnn.SGD(eta=args.eta, momentum=args.momentum, nesterov=args.nesterov)
    X = np.ascontiguousarray(X, dtype=args.dtype)
    if val is not None:
        val = (np.ascontiguousarray(val[0], dtype=args.dtype), val[1])

    held = f", {val[0].shape[0]} held-out ({val_desc})" if val is not None else ""
    print(f"data: {data.name}: {X.shape[0]} training samples{held}, {n_features} features, "
          f"{n_classes} classes", file=out)
    if data.classes is not None:
        print("classes: " + ", ".join(f"{i}={c}" for i, c in enumerate(data.classes)), file=out)
    acts = "/".join([*(net.hidden[:1] if len(set(net.hidden)) == 1 else net.hidden), net.output])
    mom = (f", {'Nesterov' if args.nesterov else 'momentum'} {args.momentum:g}"
           if args.momentum else "")
    l2 = f", lmbda {args.lmbda:g}" if args.lmbda else ""
    desc = (f"{list(net.sizes)} {acts}, cost {net.cost}, {net.dtype.name}; SGD eta {args.eta:g}"
            f"{mom}{l2}, batch {args.batch_size}, {args.epochs} epochs, seed {args.seed}")
    print(f"network: {desc}", file=out, flush=True)

    reporter, tty = _make_reporter(out, args.epochs, X.shape[0])
    t0 = time.perf_counter()
    try:
        history = net.fit(X, y, epochs=args.epochs, batch_size=args.batch_size, optimizer=opt,
                          lmbda=args.lmbda, validation_data=val, seed=args.seed,
                          callbacks=[reporter],
                          progress_every=max(args.batch_size, PROGRESS_EVERY))
    except ValueError:
        reporter._clear()  # fit finds a NaN or inf in X during its first epoch
        raise
    except (KeyboardInterrupt, FloatingPointError):
        reporter._clear()
        if reporter.history is not None and len(reporter.history):
            print(f"\nlearning curve of the {len(reporter.history)} completed epoch(s):",
                  file=out)
            print(format_table(reporter.history), file=out, flush=True)
        raise
    wall = time.perf_counter() - t0

    print("\nlearning curve:", file=out)
    print(format_table(history), file=out)
    train_s = sum(history.seconds)
    print(f"\ntime: {train_s:.3f} s training, {wall:.3f} s with monitoring "
          f"({X.shape[0] * len(history) / max(train_s, 1e-12):,.0f} samples/s)", file=out)
    if val is not None:
        print(f"final held-out accuracy: {100 * history.val_accuracy[-1]:.2f}% "
              f"({val[0].shape[0]} samples, {val_desc})", file=out)
    if test is not None:
        r = net.evaluate(test[0], test[1])
        print(f"test accuracy: {100 * r['accuracy']:.2f}% ({test[0].shape[0]} samples), "
              f"cost {r['cost']:.4f}", file=out)
    if args.save:
        net.save(args.save)
        print(f"saved the network to {args.save} (load it with fastnn.load)", file=out)
    if args.plot:
        plot_history(history, args.plot, title=f"{data.name}\n{desc}")
        print(f"wrote the learning-curve plot to {args.plot}", file=out)
    out.flush()
    return 0


# ----------------------------------------------------------------------------- bench
def _install_source():
    """The directory fastnn was pip-installed from, if pip recorded a local one."""
    import json
    from importlib import metadata
    from urllib.parse import unquote, urlparse

    try:
        text = metadata.distribution("fastnn").read_text("direct_url.json")
        url = json.loads(text or "{}").get("url", "")
    except Exception:  # not installed by pip, or no record: nothing to use
        return None
    parsed = urlparse(url)
    if parsed.scheme != "file":
        return None
    return Path(unquote(parsed.path))


def find_compare(explicit=None, script="compare.py"):
    """(path of benchmarks/<script> or None, the places looked at)."""
    import fastnn

    if explicit:
        base = Path(explicit).expanduser()
        candidates = [base] if base.suffix == ".py" else [base / script,
                                                         base / "benchmarks" / script]
    else:
        dirs = []
        env = os.environ.get("FASTNN_BENCHMARKS")
        if env:
            dirs.append(Path(env))
        cwd = Path.cwd()
        dirs += [d / "benchmarks" for d in (cwd, *cwd.parents)]
        src = _install_source()
        if src is not None:
            dirs.append(src / "benchmarks")
        dirs.append(Path(fastnn.__file__).resolve().parent.parent / "benchmarks")
        candidates = [d / script for d in dirs]
    seen, looked = set(), []
    for c in candidates:
        key = os.path.abspath(c)
        if key in seen:
            continue
        seen.add(key)
        looked.append(str(c))
        try:
            if c.is_file() and "fastnn" in c.read_text(errors="replace"):
                return c, looked
        except OSError:
            continue
    return None, looked


def _load_compare(path):
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"fastnn_bench_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def cmd_bench(args):
    path, looked = find_compare(args.benchmarks)
    if path is None:
        shown = looked if len(looked) <= 6 else looked[:4] + ["..."] + looked[-2:]
        raise CLIError(
            "benchmarks/compare.py not found; looked at " + ", ".join(shown) + ". The benchmarks "
            "ship with fastnn's source repository, not with the installed package: run 'fastnn "
            "bench' inside a clone of the repository, or pass --benchmarks DIR (its benchmarks/ "
            "directory)")
    compare = _load_compare(path)
    configs = getattr(compare, "CONFIGS", {})
    adapters = getattr(compare, "ADAPTERS", {})
    if args.configs and configs:
        for c in args.configs.split(","):
            if c.strip() and c.strip().upper() not in configs:
                raise _UsageError(f"argument --configs: unknown configuration {c.strip()!r}; "
                                  f"choose from {','.join(configs)}")
    if args.impls and adapters:
        for i in args.impls.split(","):
            if i.strip() and i.strip() not in adapters:
                raise _UsageError(f"argument --impls: unknown implementation {i.strip()!r}; "
                                  f"choose from {','.join(adapters)}")
    argv = []
    for opt in ("configs", "epochs", "warmup", "samples", "data", "impls", "budget", "out"):
        value = getattr(args, opt)
        if value is not None:
            argv += [f"--{opt}", str(value)]
    if args.no_rss:
        argv.append("--no-rss")
    argv += args.extra
    print(f"running {path} {' '.join(argv)}".rstrip(), file=sys.stderr, flush=True)

    def one_line_error(parser, message):  # compare.py's own argument errors
        raise _UsageError(f"{message} (passed on to {path.name})")

    saved = argparse.ArgumentParser.error
    argparse.ArgumentParser.error = one_line_error
    try:
        compare.main(argv)
    except SystemExit as exc:  # compare.py's own argument errors and fatal messages
        if exc.code is None or exc.code == 0:
            return 0
        if isinstance(exc.code, int):
            return exc.code
        raise CLIError(str(exc.code)) from None
    finally:
        argparse.ArgumentParser.error = saved
    return 0


def cmd_study(args):
    path, looked = find_compare(args.benchmarks, "second_order_study.py")
    if path is None:
        shown = looked if len(looked) <= 6 else looked[:4] + ["..."] + looked[-2:]
        raise CLIError(
            "benchmarks/second_order_study.py not found; looked at " + ", ".join(shown) + ". It "
            "ships with fastnn's source repository: run 'fastnn study' inside a clone, or pass "
            "--benchmarks DIR")
    study = _load_compare(path)
    print(f"running {path} {' '.join(args.extra)}".rstrip(), file=sys.stderr, flush=True)
    try:
        return study.main(args.extra) or 0
    except SystemExit as exc:  # the study's own argument errors
        if exc.code is None or exc.code == 0:
            return 0
        if isinstance(exc.code, int):
            return exc.code
        raise CLIError(str(exc.code)) from None


# ----------------------------------------------------------------------------- info
def _blas_pools():
    """threadpoolctl's view of the loaded BLAS/OpenMP pools, or None without threadpoolctl."""
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return None
    return threadpool_info()


def _build_blas(module):
    """BLAS name and version from a module's show_config(mode='dicts'), or None."""
    try:
        cfg = module.show_config(mode="dicts")
        blas = cfg["Build Dependencies"]["blas"]
        return f"{blas.get('name', '?')} {blas.get('version', '')}".strip()
    except Exception:  # older versions have no dict mode
        return None


def cmd_info(args):
    import platform

    import scipy
    import scipy.linalg  # noqa: F401  (loads the BLAS that fastnn calls)

    import fastnn
    from fastnn import _kernels

    out = sys.stdout
    w = out.write
    w(f"fastnn {fastnn.__version__} ({os.path.dirname(os.path.abspath(fastnn.__file__))})\n")
    w(f"  kernels: {os.path.basename(_kernels._core.__file__)}\n")
    w("  dtypes: float32, float64\n")
    w("  activations: sigmoid, tanh, relu, identity; softmax (output only)\n")
    w("  costs: quadratic, cross-entropy, log-likelihood\n")
    w(f"Python {platform.python_version()} ({platform.python_implementation()}) on "
      f"{platform.platform()}\n")
    w(f"NumPy {np.__version__}, SciPy {scipy.__version__}\n")
    w(f"CPUs: {os.cpu_count()}\n")
    w(f"kernel threads: {fastnn.get_num_threads()} (fastnn.set_num_threads or FASTNN_NUM_THREADS; "
      f"{'a thread pool' if _kernels._core.POOL_AVAILABLE else 'no thread pool in this build'})\n")
    w("BLAS: fastnn calls SciPy's BLAS through scipy.linalg.cython_blas\n")
    pools = _blas_pools()
    if pools is None:
        w("  threadpoolctl is not installed (pip install threadpoolctl shows the thread pools); "
          "from the build configuration:\n")
        for name, module in (("SciPy", scipy), ("NumPy", np)):
            w(f"  {name} BLAS: {_build_blas(module) or 'unknown'}\n")
    elif not pools:
        w("  threadpoolctl finds no BLAS or OpenMP thread pool\n")
    else:
        for p in pools:
            path = p.get("filepath") or "?"
            owner = ("SciPy, used by fastnn" if "scipy.libs" in path or
                     os.sep + "scipy" + os.sep in path else
                     "NumPy" if "numpy" in path else "")
            extra = "".join(f", {k} {p[k]}" for k in ("architecture", "threading_layer")
                            if p.get(k))
            w(f"  {p.get('user_api')}: {p.get('internal_api')} {p.get('version') or ''}, "
              f"{p.get('num_threads')} threads{extra}{f' ({owner})' if owner else ''}\n"
              f"    {path}\n")
    env = {k: os.environ[k] for k in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS",
                                      "MKL_NUM_THREADS", "OPENBLAS_CORETYPE") if k in os.environ}
    w("  thread variables: " + (", ".join(f"{k}={v}" for k, v in env.items()) or "none set")
      + "\n")
    w("optional packages:\n")
    for mod, why in (("threadpoolctl", "thread pools in 'fastnn info'"),
                     ("matplotlib", "'fastnn train --plot'")):
        try:
            m = __import__(mod)
            w(f"  {mod} {getattr(m, '__version__', '?')}\n")
        except ImportError:
            w(f"  {mod}: not installed (needed for {why})\n")
    try:
        from fastnn.datasets import load_digits
        X, _ = load_digits()
        w(f"embedded data: digits, {X.shape[0]} samples x {X.shape[1]} features\n")
    except (OSError, ValueError) as exc:
        w(f"embedded data: missing ({_one_line(exc)})\n")
    out.flush()
    return 0
