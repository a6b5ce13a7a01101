"""How many threads fastnn's kernels use.

The kernels split each large product of a step (and its activation, delta
and update) into blocks of output columns and run them on a small pool of
threads (``src/fastnn/_pool.h``). The caller's thread takes blocks too and
never waits for a helper that has not started, so a busy machine degrades
to one thread instead of stalling. Runs are reproducible bit for bit: the
blocks depend on the problem and the thread count, never on which thread
runs them. Different thread counts block the products differently and agree
to rounding (a few units in the last place per step).

While the pool has more than one thread, BLAS is held to one thread inside
the kernels (``kernel_blas``), so the two levels of threading never compete.

The default is the number of CPUs this process may use (at most
``MAX_THREADS``); the environment variable ``FASTNN_NUM_THREADS`` sets it at
import, ``set_num_threads`` at run time.
"""
import os

from fastnn import _core

MAX_THREADS = _core.MAX_THREADS
POOL_AVAILABLE = _core.POOL_AVAILABLE


def _check_threads(n, name):
    if isinstance(n, bool) or not isinstance(n, (int,)) and not hasattr(n, "__index__"):
        raise TypeError(f"The {name} must be an integer >= 1. Got {n!r} instead.")
    n = int(n)
    if n < 1:
        raise ValueError(f"The {name} must be an integer >= 1. Got {n!r} instead.")
    return n


def set_num_threads(n):
    """Use ``n`` threads (the caller's included) in the kernels; returns the old value.

    Values above ``MAX_THREADS`` are clamped; builds without POSIX threads
    always use 1. Like ``torch.set_num_threads``, the setting is per process.
    """
    n = _check_threads(n, "'n' parameter of set_num_threads")
    old = _core.get_num_threads()
    _core.set_num_threads(n)
    return old


def get_num_threads():
    """Threads the kernels use (the caller's included)."""
    return _core.get_num_threads()


def default_num_threads():
    """FASTNN_NUM_THREADS if set, else the CPUs this process may use, at most MAX_THREADS."""
    env = os.environ.get("FASTNN_NUM_THREADS", "").strip()
    if env:
        try:
            value = int(env)
        except ValueError:
            value = env
        return min(_check_threads(value, "environment variable FASTNN_NUM_THREADS"), MAX_THREADS)
    return max(1, min(_core.cpu_count(), MAX_THREADS))


_controller = None


def _blas_controller():
    global _controller
    if _controller is None:
        from threadpoolctl import ThreadpoolController
        _controller = ThreadpoolController()
    return _controller


class blas_limit:
    """Context manager: BLAS limited to ``threads`` threads (None: unchanged)."""

    def __init__(self, threads):
        self.threads = threads
        self._ctx = None

    def __enter__(self):
        if self.threads is not None:
            self._ctx = _blas_controller().limit(limits=self.threads, user_api="blas")
            self._ctx.__enter__()
        return self

    def __exit__(self, *exc):
        if self._ctx is not None:
            self._ctx.__exit__(*exc)
            self._ctx = None
        return False


def kernel_blas():
    """The BLAS limit for a kernel call: one thread while the pool has more than one."""
    return blas_limit(1 if get_num_threads() > 1 else None)


_core.set_num_threads(default_num_threads())
