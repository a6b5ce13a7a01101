"""Validation at the public boundary.

Every message names the parameter, what was expected and what was given, in
the form "The 'eta' parameter of SGD must be a float > 0. Got -0.1 instead."
Kernels trust what passes these checks.
"""
import numbers

import numpy as np

from fastnn._kernels import _core


def _where(owner):
    return f" of {owner}" if owner else ""


def describe_interval(low=None, high=None, low_inclusive=True, high_inclusive=True):
    """'in [0, 1)', '> 0', '<= 5': the words for an interval, in error messages."""
    if low is not None and high is not None:
        return (f"in {'[' if low_inclusive else '('}{low}, "
                f"{high}{']' if high_inclusive else ')'}")
    if low is not None:
        return f"{'>=' if low_inclusive else '>'} {low}"
    return f"{'<=' if high_inclusive else '<'} {high}"


def check_real(value, name, *, owner=None, low=None, high=None,
               low_inclusive=True, high_inclusive=True):
    """A finite real number in the given interval, returned as float."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"The {name!r} parameter{_where(owner)} must be a finite real number. "
                        f"Got {value!r} instead.")
    if not np.isfinite(value):
        raise ValueError(f"The {name!r} parameter{_where(owner)} must be finite. "
                         f"Got {value!r} instead.")
    if ((low is not None and (value < low if low_inclusive else value <= low))
            or (high is not None and (value > high if high_inclusive else value >= high))):
        raise ValueError(f"The {name!r} parameter{_where(owner)} must be a float "
                         f"{describe_interval(low, high, low_inclusive, high_inclusive)}. "
                         f"Got {value!r} instead.")
    return float(value)


def check_int(value, name, *, owner=None, low=None):
    """An integer >= low, returned as int."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(
            f"The {name!r} parameter{_where(owner)} must be an int. Got {value!r} instead.")
    if low is not None and value < low:
        raise ValueError(
            f"The {name!r} parameter{_where(owner)} must be an int >= {low}. Got {value!r} instead.")
    return int(value)


def check_seed(seed, name="seed"):
    if seed is None or isinstance(seed, np.random.Generator):
        return seed
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:
        raise ValueError(
            f"The {name!r} parameter must be None, a non-negative int or a "
            f"numpy.random.Generator. Got {seed!r} instead.")
    return int(seed)


def check_X(X, n_features, dtype, name="X", finite=True):
    """X as a C-contiguous (n, n_features) array of ``dtype``, all finite.

    A 1-D array of length n_features is one sample. Copies only when needed. With
    ``finite=False`` the values are not scanned: the caller must call ``check_finite``
    (or prove finiteness otherwise) before it reports any result computed from them.
    """
    if hasattr(X, "toarray") and not isinstance(X, np.ndarray):
        raise TypeError(f"The {name!r} parameter must be a dense array; sparse input is "
                        f"not supported. Got {type(X).__name__} instead.")
    try:
        arr = np.asarray(X)
    except Exception as exc:  # ragged lists and the like
        raise ValueError(f"The {name!r} parameter must be an array of shape "
                         f"(n_samples, {n_features}). Could not convert it: {exc}") from None
    if arr.dtype == object or not (np.issubdtype(arr.dtype, np.number) or arr.dtype == bool):
        raise TypeError(f"The {name!r} parameter must hold real numbers. "
                        f"Got an array of dtype {arr.dtype} instead.")
    if np.iscomplexobj(arr):
        raise TypeError(f"The {name!r} parameter must hold real numbers. Got complex values.")
    if arr.ndim == 1 and arr.shape[0] == n_features:
        arr = arr.reshape(1, -1)
    if arr.ndim != 2 or arr.shape[1] != n_features:
        raise ValueError(f"The {name!r} parameter must have shape (n_samples, {n_features}). "
                         f"Got an array of shape {arr.shape} instead.")
    if arr.shape[0] == 0:
        raise ValueError(f"The {name!r} parameter must hold at least one sample. "
                         f"Got shape {arr.shape}.")
    arr = np.ascontiguousarray(arr, dtype=dtype)
    if finite:
        check_finite(arr, name)
    return arr


def check_finite(arr, name="X"):
    """Raise ValueError (naming ``name`` and the first non-finite entry) unless every value
    of the C-contiguous 2-D float array ``arr`` is finite: one pass, no temporary, rows
    split between the kernels' threads."""
    row = _core.first_nonfinite_row(arr)
    if row >= 0:
        col = int(np.flatnonzero(~np.isfinite(arr[row]))[0])
        raise ValueError(f"The {name!r} parameter must be finite; it holds NaN or inf "
                         f"(first at row {row}, column {col}).")


def check_y(y, n_samples, n_out, dtype, name="y"):
    """Targets as ``(Y, labels)``: exactly one of them has rows.

    Integer labels of shape (n,) with values in [0, n_out) (in {0, 1} when
    n_out == 1) become an intp array; targets of shape (n, n_out) become a
    C-contiguous array of ``dtype``.
    """
    arr = np.asarray(y)
    empty_y = np.empty((0, n_out), dtype=dtype)
    empty_l = np.empty(0, dtype=np.intp)
    if arr.ndim == 1 or (arr.ndim == 2 and arr.shape[1] == 1 and n_out != 1 and
                         np.issubdtype(arr.dtype, np.integer)):
        arr = arr.reshape(-1)
        if arr.shape[0] != n_samples:
            raise ValueError(f"The {name!r} parameter must have one label per sample "
                             f"({n_samples}). Got {arr.shape[0]} labels instead.")
        if np.issubdtype(arr.dtype, np.floating):
            if not np.isfinite(arr).all() or not np.all(arr == np.round(arr)):
                raise ValueError(f"The {name!r} parameter holds labels that are not integers "
                                 f"(e.g. {arr[~np.isfinite(arr) | (arr != np.round(arr))][0]!r}); "
                                 f"labels must be class indices in [0, {max(n_out, 2)}).")
        elif not (np.issubdtype(arr.dtype, np.integer) or arr.dtype == bool):
            raise TypeError(f"The {name!r} parameter must hold integer class labels or a target "
                            f"matrix of shape (n_samples, {n_out}). Got dtype {arr.dtype}.")
        n_classes = 2 if n_out == 1 else n_out
        labels = arr.astype(np.intp)
        if labels.size and (labels.min() < 0 or labels.max() >= n_classes):
            bad = labels[(labels < 0) | (labels >= n_classes)][0]
            raise ValueError(f"The {name!r} parameter holds the label {bad}, out of range: "
                             f"labels must lie in [0, {n_classes}) for {n_out} output neuron(s).")
        return empty_y, np.ascontiguousarray(labels)
    if arr.ndim != 2 or arr.shape != (n_samples, n_out):
        raise ValueError(f"The {name!r} parameter must be labels of shape ({n_samples},) or "
                         f"targets of shape ({n_samples}, {n_out}). Got shape {arr.shape} instead.")
    if not (np.issubdtype(arr.dtype, np.number) or arr.dtype == bool) or np.iscomplexobj(arr):
        raise TypeError(f"The {name!r} parameter must hold real numbers. Got dtype {arr.dtype}.")
    Y = np.ascontiguousarray(arr, dtype=dtype)
    if not np.isfinite(Y).all():
        raise ValueError(f"The {name!r} parameter must be finite; it holds NaN or inf.")
    return Y, empty_l
