"""Time whole training epochs of fastnn against the alternatives, side by side, in one run.

    python benchmarks/compare.py [--configs C1,C2,C3,C4] [--epochs K] [--warmup W]
                                 [--samples N] [--data generated|fashion-mnist]
                                 [--impls fastnn,fastnn-1t,numpy,torch,sklearn,gemm,gemm-scipy]
                                 [--budget SECONDS] [--wait-idle SECONDS] [--retries R]
                                 [--out results.md] [--no-rss]

Implementations (each an adapter with ``setup(config, X, y)`` and ``run_epoch()``):

* ``fastnn``      ``fastnn.Network.fit(..., epochs=1)`` per epoch (the velocity carries over).
* ``fastnn-1t``   the same on one thread: ``fastnn.set_num_threads(1)`` and
                  ``threadpool_limits(1, "blas")`` (what the kernels' thread pool adds).
* ``numpy``       ``numpy_mlp.py``: the best vectorized plain-NumPy implementation; it runs
                  with whichever of 1 or all BLAS threads is faster for the configuration.
* ``torch``       ``torch_mlp.py``: idiomatic PyTorch CPU (nn.Linear, optim.SGD), threads =
                  number of CPUs.
* ``sklearn``     ``sklearn.neural_network.MLPClassifier(solver="sgd")``, one ``partial_fit``
                  per epoch, default threads.
* ``gemm``        "GEMMs alone": the matrix products of one epoch (forward, weight gradient,
                  delta propagation) with ``np.dot`` into preallocated outputs, nothing else
                  (faster of 1 or all BLAS threads).
* ``gemm-scipy``  the same products through ``scipy.linalg.blas`` (the OpenBLAS build fastnn
                  calls through ``scipy.linalg.cython_blas``; NumPy ships a different build).

Each implementation trains warm-up epoch(s) first, then ``--epochs`` timed epochs; the
implementations of one configuration run interleaved in rounds (epoch 1 of each, then epoch
2 of each, ...), so slow drifts of the machine hit all of them alike. The table reports the
median and the minimum seconds per epoch and the ratio of medians to fastnn's. An
implementation whose warm-up epoch shows that its timed epochs would exceed ``--budget``
seconds is timed on the first part of each epoch (whole mini-batches) and scaled to a full
epoch; the table says so.

On a 2-core machine any other process disturbs multi-threaded BLAS badly (10-50x at small
batches). The CPU time other processes use during each timed epoch is measured from
/proc/stat; an epoch in which they took more than 5 % of the machine is redone (up to
``--retries`` times) and the report states what remained. ``--wait-idle S`` waits up to
S seconds for an idle machine before each epoch.
"""
import argparse
import gc
import importlib
import importlib.util
import json
import os
import pathlib
import platform
import resource
import statistics
import subprocess
import sys
import time
import warnings

import numpy as np

HERE = pathlib.Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

import numpy_mlp  # noqa: E402
import torch_mlp  # noqa: E402  (imports torch lazily)

CONFIGS = {
    "C1": dict(sizes=[784, 30, 10], hidden="sigmoid", output="sigmoid", cost="cross-entropy",
               batch_size=10, dtype="float64", eta=0.05, mu=0.9, nesterov=False, lmbda=5.0,
               desc="network2's net: [784,30,10] sigmoid/sigmoid/cross-entropy, batch 10, "
                    "float64, momentum 0.9, lmbda 5"),
    "C2": dict(sizes=[784, 30, 10], hidden="sigmoid", output="sigmoid", cost="cross-entropy",
               batch_size=128, dtype="float32", eta=0.05, mu=0.9, nesterov=False, lmbda=5.0,
               desc="same net, batch 128, float32, momentum 0.9, lmbda 5"),
    "C3": dict(sizes=[784, 100, 10], hidden="relu", output="softmax", cost="log-likelihood",
               batch_size=64, dtype="float32", eta=0.05, mu=0.9, nesterov=True, lmbda=0.0,
               desc="[784,100,10] relu/softmax/log-likelihood, batch 64, float32, "
                    "Nesterov 0.9, lmbda 0"),
    "C4": dict(sizes=[784, 1024, 1024, 10], hidden="relu", output="softmax",
               cost="log-likelihood", batch_size=256, dtype="float32", eta=0.05, mu=0.9,
               nesterov=False, lmbda=0.0,
               desc="[784,1024,1024,10] relu/softmax/log-likelihood, batch 256, float32, "
                    "momentum 0.9, lmbda 0"),
}

ALL_IMPLS = ("fastnn", "fastnn-1t", "numpy", "torch", "sklearn", "gemm", "gemm-scipy")
DEFAULT_IMPLS = ALL_IMPLS


class Skip(Exception):
    """An implementation cannot run here (not installed / not built / unsupported)."""


def log(*a):
    print(*a, file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------- data
def make_generated(n, d=784, k=10, seed=0):
    """A deterministic synthetic classification set in [0, 1]^d (float32) and labels.

    Class-dependent Gaussian blobs: a prototype per class plus a shared low-rank
    "style" component plus pixel noise, squashed into [0, 1] by a logistic. Classes
    overlap: C1's network reaches ~90 % held-out accuracy after 5 epochs, neither
    trivial nor hopeless.
    """
    rng = np.random.default_rng(seed)
    protos = rng.normal(0.0, 0.2, (k, d)).astype(np.float32) - 1.0
    style = rng.normal(0.0, 1.0 / np.sqrt(16), (16, d)).astype(np.float32)
    y = rng.integers(0, k, n)
    X = np.empty((n, d), np.float32)
    for s in range(0, n, 8192):
        e = min(n, s + 8192)
        z = rng.standard_normal((e - s, 16), dtype=np.float32)
        blk = protos[y[s:e]] + 2.0 * (z @ style)
        blk += rng.standard_normal((e - s, d), dtype=np.float32)
        np.negative(blk, out=blk)
        np.exp(blk, out=blk)
        blk += 1.0
        np.reciprocal(blk, out=blk)
        X[s:e] = blk
    return X, y.astype(np.int64)


def load_data(kind, n):
    if kind == "generated":
        return make_generated(n)
    if kind == "fashion-mnist":
        try:
            from fastnn.datasets import load_fashion_mnist
        except Exception as e:  # fastnn not built
            raise SystemExit(f"--data fashion-mnist needs fastnn.datasets: {e}")
        (X, y), _ = load_fashion_mnist(dtype="float32")
        if n > X.shape[0]:
            raise SystemExit(f"--samples {n} > {X.shape[0]} Fashion-MNIST training images")
        return np.ascontiguousarray(X[:n]), np.ascontiguousarray(y[:n]).astype(np.int64)
    raise SystemExit(f"unknown --data {kind!r}; use generated or fashion-mnist")


def onehot(y, k, dtype):
    Y = np.zeros((y.shape[0], k), dtype)
    Y[np.arange(y.shape[0]), y] = 1
    return Y


# ----------------------------------------------------------------------------- adapters
class Adapter:
    """setup(config, X, y) once; run_epoch(fraction) trains one epoch (or its first
    ``fraction`` in whole mini-batches) and returns the fraction actually trained.

    ``blas_threads``: if set, the runner calls run_epoch inside
    ``threadpool_limits(blas_threads, user_api="blas")`` (outside the timed region);
    ``tune_threads``: the runner first picks the faster of 1 and all CPUs for it.
    """

    name = "?"
    note = ""
    blas_threads = None
    tune_threads = False

    def setup(self, cfg, X, y):
        raise NotImplementedError

    def run_epoch(self, fraction=1.0):
        raise NotImplementedError

    def teardown(self):
        pass

    def predict(self, X):
        """Class indices (for the sanity column: every implementation must learn)."""
        return None

    @staticmethod
    def _n_batches(n, bs, fraction):
        total = -(-n // bs)
        return total if fraction >= 1.0 else max(1, min(total, round(total * fraction)))


class FastnnAdapter(Adapter):
    name = "fastnn"

    def setup(self, cfg, X, y):
        try:
            import fastnn
        except Exception as e:
            raise Skip(f"fastnn not built ({type(e).__name__}: {e})")
        self.fastnn = fastnn
        self.cfg = cfg
        self.net = fastnn.Network(cfg["sizes"], hidden=cfg["hidden"], output=cfg["output"],
                                  cost=cfg["cost"], dtype=cfg["dtype"], init="default", seed=0)
        self.opt = fastnn.SGD(eta=cfg["eta"], momentum=cfg["mu"], nesterov=cfg["nesterov"])
        self.X, self.y = X, y
        self.epoch = 0
        self.internal = []  # history.seconds: training only, per fit() call

    def run_epoch(self, fraction=1.0):
        c = self.cfg
        hist = self.net.fit(self.X, self.y, epochs=1, batch_size=c["batch_size"],
                            optimizer=self.opt, lmbda=c["lmbda"], shuffle=True,
                            seed=self.epoch, monitor_training=False)
        self.epoch += 1
        self.internal.append(hist.seconds[0])
        return 1.0

    def predict(self, X):
        return self.net.predict(X)

    def extra_note(self, timed):
        if len(self.internal) > len(timed):
            inner = statistics.median(self.internal[-len(timed):])
            return (f"fit() wall time; its own history.seconds (training loop only) median "
                    f"{inner:.4g} s")
        return ""


class Fastnn1tAdapter(FastnnAdapter):
    name = "fastnn-1t"
    label = "fastnn, 1 thread"
    blas_threads = 1

    def setup(self, cfg, X, y):
        if not have_threadpoolctl():
            raise Skip("needs threadpoolctl")
        super().setup(cfg, X, y)

    def run_epoch(self, fraction=1.0):
        old = self.fastnn.set_num_threads(1)  # the kernels' own threads too
        try:
            return super().run_epoch(fraction)
        finally:
            self.fastnn.set_num_threads(old)


class NumpyAdapter(Adapter):
    name = "numpy"
    tune_threads = True  # the best plain NumPy can do here, threads included

    def setup(self, cfg, X, y):
        self.cfg = cfg
        self.state = numpy_mlp.make_state(cfg["sizes"], cfg["hidden"], cfg["output"],
                                          cfg["cost"], cfg["dtype"], seed=0)
        self.X = X
        self.Y = onehot(y, cfg["sizes"][-1], X.dtype)
        self.rng = np.random.default_rng(0)

    def run_epoch(self, fraction=1.0):
        c = self.cfg
        n, bs = self.X.shape[0], c["batch_size"]
        perm = self.rng.permutation(n)
        nb = self._n_batches(n, bs, fraction)
        numpy_mlp.train_epoch(self.state, self.X, self.Y, perm, bs, c["eta"], c["mu"],
                              c["nesterov"], c["lmbda"], max_batches=nb)
        return min(1.0, nb * bs / n)

    def predict(self, X):
        out = [np.argmax(self.state.feedforward(X[s:s + 1000]), axis=1)
               for s in range(0, X.shape[0], 1000)]
        return np.concatenate(out)

    def teardown(self):
        self.state._ws.clear()


class TorchAdapter(Adapter):
    name = "torch"

    def setup(self, cfg, X, y):
        if not torch_mlp.available():
            raise Skip("torch not installed")
        self.cfg = cfg
        n = X.shape[0]
        self.net = torch_mlp.TorchMLP(cfg["sizes"], cfg["hidden"], cfg["output"], cfg["cost"],
                                      cfg["dtype"], eta=cfg["eta"], mu=cfg["mu"],
                                      nesterov=cfg["nesterov"], lmbda=cfg["lmbda"], n=n,
                                      threads=os.cpu_count())
        targets = y if cfg["cost"] == "log-likelihood" else onehot(y, cfg["sizes"][-1], X.dtype)
        self.Xt, self.Tt = self.net.prepare(X, targets)
        self.gen = self.net.torch.Generator().manual_seed(0)
        self.note = f"torch.set_num_threads({self.net.torch.get_num_threads()})"

    def run_epoch(self, fraction=1.0):
        torch = self.net.torch
        n, bs = self.Xt.shape[0], self.cfg["batch_size"]
        perm = torch.randperm(n, generator=self.gen)
        nb = self._n_batches(n, bs, fraction)
        self.net.train_epoch(self.Xt, self.Tt, perm, bs, max_batches=nb)
        return min(1.0, nb * bs / n)

    def predict(self, X):
        torch = self.net.torch
        with torch.no_grad():
            return self.net.model(torch.from_numpy(X)).argmax(dim=1).numpy()


class SklearnAdapter(Adapter):
    name = "sklearn"

    def setup(self, cfg, X, y):
        try:
            from sklearn.exceptions import ConvergenceWarning  # noqa: F401
            from sklearn.neural_network import MLPClassifier
        except ImportError:
            raise Skip("scikit-learn not installed")
        acts = {"sigmoid": "logistic", "tanh": "tanh", "relu": "relu", "identity": "identity"}
        if cfg["hidden"] not in acts:
            raise Skip(f"no {cfg['hidden']} activation in scikit-learn")
        k = cfg["sizes"][-1]
        if cfg["cost"] == "cross-entropy" and cfg["output"] == "sigmoid":
            # a one-hot indicator matrix makes MLPClassifier a multi-label model: logistic
            # outputs and the binary log-loss summed over outputs = the book's cross-entropy
            self.T = onehot(y, k, np.int8)
            kind = "multi-label (one-hot) targets: sigmoid outputs + summed binary log-loss"
        elif cfg["cost"] == "log-likelihood" and cfg["output"] == "softmax":
            self.T = y
            kind = "softmax + log-loss"
        else:
            raise Skip(f"MLPClassifier has no {cfg['output']} output with {cfg['cost']} cost")
        n, bs = X.shape[0], cfg["batch_size"]
        # sklearn's gradient is (sum_batch grad + alpha W) / m_batch, so alpha = lmbda m / n
        # gives DESIGN.md's lmbda/n per step; a last partial batch of m' rows gets
        # lmbda m/(n m') instead.
        alpha = cfg["lmbda"] * bs / n
        self.clf = MLPClassifier(
            hidden_layer_sizes=tuple(cfg["sizes"][1:-1]), activation=acts[cfg["hidden"]],
            solver="sgd", alpha=alpha, batch_size=bs, learning_rate="constant",
            learning_rate_init=cfg["eta"], momentum=cfg["mu"],
            nesterovs_momentum=cfg["nesterov"], shuffle=True, random_state=0,
            early_stopping=False, tol=0.0, n_iter_no_change=10 ** 9, max_iter=1)
        self.X, self.cfg, self.k = X, cfg, k
        self.first = True
        rest = n % bs
        notes = [kind, f"alpha = lmbda*batch/n = {alpha:.3g}"]
        if cfg["lmbda"] and rest:
            notes.append(f"(last batch of {rest} rows: L2 x{bs / rest:.2f})")
        notes.append("computes the training loss (incl. the L2 norm) every batch and "
                     "validates X every partial_fit; Glorot init, W stored (in, out)")
        self.note = "; ".join(notes)

    def run_epoch(self, fraction=1.0):
        n, bs = self.X.shape[0], self.cfg["batch_size"]
        nb = self._n_batches(n, bs, fraction)
        rows = min(n, nb * bs)
        X, T = (self.X, self.T) if rows == n else (self.X[:rows], self.T[:rows])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if self.first:
                self.clf.partial_fit(X, T, classes=np.arange(self.k))
                self.first = False
            else:
                self.clf.partial_fit(X, T)
        return rows / n

    def predict(self, X):
        return np.argmax(self.clf.predict_proba(X), axis=1)


class GemmAdapter(Adapter):
    """The matrix products of one epoch alone: per mini-batch, forward ``A_l = A_{l-1} W_l^T``,
    weight gradients ``D_l^T A_{l-1}`` and delta propagation ``D_l W_l`` (not for the input
    layer), into preallocated outputs. No gather, activation, update or Python beyond the loop."""

    name = "gemm"
    label = "GEMMs alone (np.dot)"
    tune_threads = True

    def _dot(self):
        d = np.dot
        return lambda a, b, out: d(a, b, out)

    def setup(self, cfg, X, y):
        self.cfg = cfg
        dt = X.dtype
        sizes, n, bs = cfg["sizes"], X.shape[0], cfg["batch_size"]
        rng = np.random.default_rng(0)
        self.W = [(rng.standard_normal((o, i)) / np.sqrt(i)).astype(dt)
                  for i, o in zip(sizes[:-1], sizes[1:])]
        self.gW = [np.empty_like(W) for W in self.W]
        self.n, self.bs = n, bs
        self.plans = {}
        for m in {bs, n % bs} - {0}:
            Xb = np.ascontiguousarray(X[:m])
            A = [rng.random((m, s)).astype(dt) for s in sizes[1:]]
            D = [rng.random((m, s)).astype(dt) * 1e-3 for s in sizes[1:]]
            ops = []
            a = Xb
            for l, W in enumerate(self.W):
                ops.append((a, W.T, A[l]))
                a = A[l]
            for l in range(len(self.W) - 1, -1, -1):
                ops.append((D[l].T, A[l - 1] if l else Xb, self.gW[l]))
                if l:
                    ops.append((D[l], self.W[l], D[l - 1]))
            self.plans[m] = ops
        self.mm = self._dot()

    def run_epoch(self, fraction=1.0):
        n, bs = self.n, self.bs
        nb = self._n_batches(n, bs, fraction)
        full = min(nb, n // bs)
        mm = self.mm
        ops = self.plans.get(bs, [])
        for _ in range(full):
            for a, b, c in ops:
                mm(a, b, c)
        if nb > full:
            for a, b, c in self.plans[n % bs]:
                mm(a, b, c)
        return min(1.0, nb * bs / n)


def scipy_gemm(dtype):
    """Row-major ``out = a @ b`` through scipy.linalg.blas (no copies: transposes are flags)."""
    from scipy.linalg import blas
    gemm = blas.sgemm if np.dtype(dtype) == np.float32 else blas.dgemm

    def arg(x):  # the Fortran view of x^T and its transpose flag
        return (x.T, 0) if x.flags.c_contiguous else (x, 1)

    def mm(a, b, out):
        # out^T = b^T a^T, all column-major
        A, ta = arg(b)
        B, tb = arg(a)
        gemm(1.0, A, B, 0.0, out.T, ta, tb, 1)

    return mm


class GemmScipyAdapter(GemmAdapter):
    name = "gemm-scipy"
    label = "GEMMs alone (scipy BLAS)"

    def _dot(self):
        return scipy_gemm(self.cfg["dtype"])


ADAPTERS = {"fastnn": FastnnAdapter, "fastnn-1t": Fastnn1tAdapter, "numpy": NumpyAdapter,
            "torch": TorchAdapter,
            "sklearn": SklearnAdapter, "gemm": GemmAdapter, "gemm-scipy": GemmScipyAdapter}


# ----------------------------------------------------------------------------- environment
def cpu_model():
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


class _NoLimit:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def have_threadpoolctl():
    return importlib.util.find_spec("threadpoolctl") is not None


def blas_limit(threads):
    """threadpool_limits(threads, user_api="blas") as a context (no-op without threadpoolctl)."""
    if not threads or not have_threadpoolctl():
        return _NoLimit()
    from threadpoolctl import threadpool_limits
    return threadpool_limits(limits=threads, user_api="blas")


def _cpu_seconds():
    """(CPU seconds used by all processes, by this process) so far; None if unknown."""
    try:
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    # user nice system idle iowait irq softirq steal ...
    busy = sum(fields[:3]) + sum(fields[5:8])
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return busy / os.sysconf("SC_CLK_TCK"), ru.ru_utime + ru.ru_stime


def others_cpu(start, end):
    """CPU seconds other processes used between two _cpu_seconds() samples."""
    if start is None or end is None:
        return None
    return max(0.0, (end[0] - start[0]) - (end[1] - start[1]))


def wait_idle(max_wait, threshold=0.1):
    """Wait (up to max_wait s) for a 2-second window in which other processes use less than
    ``threshold`` of the CPUs; returns the busy fraction last seen."""
    t_end = time.monotonic() + max_wait
    while True:
        a = _cpu_seconds()
        time.sleep(2.0)
        b = _cpu_seconds()
        frac = None if a is None else others_cpu(a, b) / (2.0 * (os.cpu_count() or 1))
        if frac is None or frac < threshold or time.monotonic() >= t_end:
            return frac
        log(f"  machine busy ({frac:.0%} of the CPUs used by other processes); waiting")


def environment(impls):
    """Header facts. Imports the libraries first so that threadpoolctl sees their BLAS."""
    info = {"python": platform.python_version(), "platform": platform.platform(),
            "cpu": cpu_model(), "cpus": os.cpu_count(), "numpy": np.__version__}
    for mod in ("scipy", "sklearn", "fastnn"):
        try:
            m = importlib.import_module(mod)
            info[mod] = getattr(m, "__version__", "?")
        except Exception as e:
            info[mod] = f"not available ({type(e).__name__})"
    import scipy.linalg  # noqa: F401  (loads scipy's OpenBLAS, which fastnn calls)
    if "torch" in impls and torch_mlp.available():
        import torch
        info["torch"] = f"{torch.__version__} (BLAS {torch_mlp.blas_info()}, " \
                        f"{torch.get_num_threads()} threads)"
    else:
        info["torch"] = "not available" if not torch_mlp.available() else "not run"
    try:
        from threadpoolctl import threadpool_info
        pools = threadpool_info()
    except ImportError:
        pools = None
    info["threadpools"] = pools
    try:
        import fastnn
        info["fastnn_threads"] = fastnn.get_num_threads()
    except Exception:
        info["fastnn_threads"] = None
    info["env"] = {k: os.environ[k] for k in ("OPENBLAS_CORETYPE", "OPENBLAS_NUM_THREADS",
                                              "OMP_NUM_THREADS", "MKL_NUM_THREADS",
                                              "FASTNN_NUM_THREADS")
                   if k in os.environ}
    info["loadavg_start"] = os.getloadavg()
    return info


def header_md(info, args):
    lines = ["# fastnn benchmark: seconds per training epoch", ""]
    lines.append(f"- data: {args.data}, {args.samples} samples x 784 features; "
                 f"{args.warmup} warm-up + {args.epochs} timed epochs per implementation, "
                 f"interleaved; median and min of the timed epochs")
    lines.append(f"- CPU: {info['cpu']} ({info['cpus']} logical CPUs); {info['platform']}; "
                 f"Python {info['python']}")
    lines.append(f"- numpy {info['numpy']}, scipy {info['scipy']}, scikit-learn "
                 f"{info['sklearn']}, torch {info['torch']}, fastnn {info['fastnn']}")
    if info["threadpools"] is None:
        lines.append("- threadpoolctl not installed: BLAS/OpenMP thread pools unknown")
    else:
        for p in info["threadpools"]:
            lib = os.path.basename(p.get("filepath", "?"))
            extra = "".join(f", {k} {p[k]}" for k in ("architecture", "threading_layer")
                            if p.get(k))
            lines.append(f"- threadpool: {p.get('user_api')} / {p.get('internal_api')} "
                         f"{p.get('version') or ''} ({lib}): {p.get('num_threads')} threads"
                         f"{extra}")
    if info.get("fastnn_threads"):
        lines.append(f"- fastnn kernels: {info['fastnn_threads']} threads (fastnn.set_num_threads; "
                     f"BLAS held to 1 thread inside them when > 1)")
    env = info["env"]
    lines.append("- OPENBLAS_CORETYPE: " + (env["OPENBLAS_CORETYPE"] if "OPENBLAS_CORETYPE"
                                            in env else "not set"))
    others = {k: v for k, v in env.items() if k != "OPENBLAS_CORETYPE"}
    if others:
        lines.append("- thread env: " + ", ".join(f"{k}={v}" for k, v in others.items()))
    lines.append("- load average at start: " + ", ".join(f"{x:.2f}"
                                                          for x in info["loadavg_start"]))
    return lines


# ----------------------------------------------------------------------------- RSS probe
def _status_kb(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def rss_probe(args):
    """Child process: growth of the peak RSS while fastnn's fit trains 2 epochs.

    On Linux the peak (VmHWM) is reset to the current RSS just before fit (writing 5 to
    /proc/self/clear_refs), so the data set's own construction does not mask the growth;
    elsewhere ru_maxrss is compared, which can only show growth beyond earlier peaks.
    """
    import fastnn
    cfg = CONFIGS[args.rss_probe]
    X, y = load_data(args.data, args.samples)
    X = np.ascontiguousarray(X, cfg["dtype"])
    net = fastnn.Network(cfg["sizes"], hidden=cfg["hidden"], output=cfg["output"],
                         cost=cfg["cost"], dtype=cfg["dtype"], seed=0)
    opt = fastnn.SGD(eta=cfg["eta"], momentum=cfg["mu"], nesterov=cfg["nesterov"])
    gc.collect()
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        before, method = _status_kb("VmRSS"), "VmHWM after reset"
    except OSError:
        before, method = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, "ru_maxrss"
    net.fit(X, y, epochs=2, batch_size=cfg["batch_size"], optimizer=opt, lmbda=cfg["lmbda"],
            seed=0, monitor_training=False)
    if method == "ru_maxrss":
        after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    else:
        after = _status_kb("VmHWM")
    print(json.dumps({"before_kb": before, "after_kb": after, "data_kb": X.nbytes // 1024,
                      "method": method}))


def measure_rss(name, args):
    cmd = [sys.executable, __file__, "--rss-probe", name, "--samples", str(args.samples),
           "--data", args.data]
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        return json.loads(r.stdout.strip().splitlines()[-1])
    except Exception as e:
        log(f"  RSS probe failed: {e}")
        return None


# ----------------------------------------------------------------------------- main loop
def run_config(name, X32, y, args, impls):
    cfg = CONFIGS[name]
    X = X32 if cfg["dtype"] == "float32" else X32.astype(cfg["dtype"])
    n = X.shape[0]
    n_batches = -(-n // cfg["batch_size"])
    adapters, skipped = [], {}
    for key in impls:
        ad = ADAPTERS[key]()
        try:
            t = time.perf_counter()
            ad.setup(cfg, X, y)
            log(f"  {key}: set up in {time.perf_counter() - t:.2f} s")
            adapters.append(ad)
        except Skip as e:
            skipped[key] = str(e)
            log(f"  {key}: skipped: {e}")
    times = {ad.name: [] for ad in adapters}
    fractions = {ad.name: 1.0 for ad in adapters}
    failed = {}
    ncpu = os.cpu_count() or 1
    redone = {ad.name: 0 for ad in adapters}
    shares, others_total = [], [0.0]

    def attempt(ad, fraction, threads=None, what="epoch"):
        """Time one run_epoch; redo it (up to --retries times) when other processes took
        more than 5 % of the machine meanwhile (with 2 clock ticks of slack for /proc/stat's
        resolution). Returns (seconds, fraction) or (None, None)."""
        threads = threads or ad.blas_threads
        tries = 0
        while True:
            if args.settle > 0:
                time.sleep(args.settle)
            if args.wait_idle > 0:
                wait_idle(args.wait_idle)
            c0 = _cpu_seconds()
            try:
                with blas_limit(threads):
                    t = time.perf_counter()
                    frac = ad.run_epoch(fraction)
                    dt = time.perf_counter() - t
            except Exception as e:  # one broken implementation must not end the run
                failed[ad.name] = f"{type(e).__name__}: {e}"
                log(f"  {name}: {ad.name} failed: {failed[ad.name]}")
                return None, None
            other = others_cpu(c0, _cpu_seconds())
            if other is None:
                return dt, frac
            share = min(1.0, other / (dt * ncpu))
            if other > 0.05 * dt * ncpu + 0.02 and tries < args.retries:
                tries += 1
                redone[ad.name] += 1
                log(f"  {name} {what}: {ad.name:<10} {dt / frac:8.3f} s/epoch disturbed (other "
                    f"processes took {share:.0%} of the machine): redo")
                continue
            if what.startswith("epoch"):
                shares.append(share if other > 0.02 else 0.0)
                others_total[0] += other
            return dt, frac

    for ad in adapters:
        if ad.tune_threads and ncpu > 1 and have_threadpoolctl():
            options = (1, ncpu)
            probe = min(1.0, max(0.03, 20 / n_batches))
            best = {}
            for _ in range(2):
                for k in options:
                    dt, frac = attempt(ad, probe, threads=k, what="thread probe")
                    if dt is not None:
                        best[k] = min(best.get(k, float("inf")), dt / frac)
            if best:
                ad.blas_threads = min(best, key=best.get)
                ad.note = (f"{ad.blas_threads} BLAS thread(s), the faster here ("
                           + ", ".join(f"{k}: {v:.3g} s/epoch" for k, v in best.items())
                           + f" timed on {probe:.0%} of an epoch, twice)"
                           + ("; " + ad.note if ad.note else ""))
                log(f"  {ad.name}: BLAS threads {best} -> {ad.blas_threads}")
    for w in range(args.warmup):
        for ad in [a for a in adapters if a.name not in failed]:
            dt, _ = attempt(ad, 1.0, what=f"warm-up {w + 1}")
            if dt is None:
                continue
            log(f"  {name} warm-up {w + 1}: {ad.name:<10} {dt:8.3f} s")
            if args.epochs * dt > args.budget and not isinstance(ad, FastnnAdapter):
                fractions[ad.name] = max(0.02, args.budget / (args.epochs * dt))
    # Timed rounds: one epoch of every implementation each.
    for e in range(args.epochs):
        for ad in [a for a in adapters if a.name not in failed]:
            dt, frac = attempt(ad, fractions[ad.name], what=f"epoch {e + 1}")
            if dt is None:
                continue
            fractions[ad.name] = frac
            times[ad.name].append(dt / frac)
            log(f"  {name} epoch {e + 1}: {ad.name:<10} {dt / frac:8.3f} s/epoch"
                + (f" (timed on {frac:.1%} of the epoch)" if frac < 1 else ""))
    if shares:
        worst = max(shares)
        n_redone = sum(redone.values())
        skipped["_load"] = (f"other processes used {others_total[0]:.1f} CPU-s during the "
                            f"accepted timed epochs (at most {worst:.0%} of the machine in one)"
                            + (f"; {n_redone} disturbed run(s) redone" if n_redone else "")
                            + (" - results disturbed, rerun on an idle machine"
                               if worst > 0.05 else ""))
    k = min(X.shape[0], 10000)
    rows = []
    for ad in adapters:
        ts = times[ad.name]
        if ad.name in failed or not ts:
            skipped[ad.name] = "failed: " + failed.get(ad.name, "no timed epoch")
            continue
        note = [ad.note] if ad.note else []
        if hasattr(ad, "extra_note"):
            x = ad.extra_note(ts)
            if x:
                note.append(x)
        if fractions[ad.name] < 1:
            note.insert(0, f"timed on the first {fractions[ad.name]:.1%} of each epoch, "
                           f"scaled")
        try:
            pred = ad.predict(X[:k])
            acc = None if pred is None else float(np.mean(pred == y[:k]))
        except Exception as e:
            acc = None
            note.append(f"predict failed: {type(e).__name__}: {e}")
        rows.append(dict(config=name, impl=getattr(ad, "label", ad.name), key=ad.name,
                         median=statistics.median(ts), min=min(ts), n_batches=n_batches,
                         acc=acc, note="; ".join(note)))
        ad.teardown()
    del adapters
    gc.collect()
    return rows, skipped


def table_md(rows, ref_key):
    out = ["| config | implementation | s/epoch (median) | s/epoch (min) | us/step | "
           f"x {ref_key} | train acc | notes |", "|---|---|---:|---:|---:|---:|---:|---|"]
    by_cfg = {}
    for r in rows:
        by_cfg.setdefault(r["config"], []).append(r)
    for cfg, rs in by_cfg.items():
        ref = next((r for r in rs if r["key"] == ref_key), None)
        for r in rs:
            ratio = f"{r['median'] / ref['median']:.2f}" if ref else "n/a"
            acc = "" if r["acc"] is None else f"{r['acc']:.3f}"
            out.append(f"| {cfg} | {r['impl']} | {r['median']:.4g} | {r['min']:.4g} | "
                       f"{r['median'] / r['n_batches'] * 1e6:.1f} | {ratio} | {acc} | "
                       f"{r['note']} |")
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--configs", default="C1,C2,C3,C4")
    # 5, not 3: on a shared 2-vCPU machine a multi-threaded epoch now and then takes 1.3-1.4x
    # its neighbours' time (session 11: fastnn's C1 0.188, 0.251, 0.265 s in one run), and
    # the median of 3 follows one such epoch
    p.add_argument("--epochs", type=int, default=5, help="timed epochs (default 5)")
    p.add_argument("--warmup", type=int, default=1, help="warm-up epochs (default 1)")
    p.add_argument("--samples", type=int, default=50000)
    p.add_argument("--data", default="generated", choices=["generated", "fashion-mnist"])
    p.add_argument("--impls", default=",".join(DEFAULT_IMPLS),
                   help=f"comma-separated subset of {','.join(ALL_IMPLS)}")
    p.add_argument("--budget", type=float, default=30.0,
                   help="max seconds for one implementation's timed epochs of one config; "
                        "above it, part-epochs are timed and scaled (default 30)")
    p.add_argument("--out", default=None, help="also write the markdown report here")
    p.add_argument("--wait-idle", type=float, default=0.0, metavar="SECONDS",
                   help="before the thread tuning and before each timed epoch, wait up to "
                        "SECONDS for other processes to leave the CPUs idle (default 0)")
    p.add_argument("--settle", type=float, default=0.3, metavar="SECONDS",
                   help="sleep before each timed epoch, so that the spinning of the previous "
                        "implementation's idle BLAS/OpenMP threads (OpenBLAS spins about "
                        "0.1 s after each multi-threaded call) does not land on the next "
                        "one's epoch (default 0.3)")
    p.add_argument("--retries", type=int, default=3,
                   help="times to redo an epoch (or thread probe) during which other "
                        "processes took > 5 %% of the machine (default 3)")
    p.add_argument("--no-rss", action="store_true",
                   help="skip the peak-RSS probe of fastnn's fit (a child process per config)")
    p.add_argument("--rss-probe", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.rss_probe:
        return rss_probe(args)
    configs = [c.strip().upper() for c in args.configs.split(",") if c.strip()]
    for c in configs:
        if c not in CONFIGS:
            p.error(f"unknown config {c!r}; choose from {','.join(CONFIGS)}")
    impls = [i.strip() for i in args.impls.split(",") if i.strip()]
    for i in impls:
        if i not in ADAPTERS:
            p.error(f"unknown implementation {i!r}; choose from {','.join(ALL_IMPLS)}")

    fastnn_ok = True
    try:
        import fastnn  # noqa: F401
    except Exception as e:
        fastnn_ok = False
        print(f"fastnn not built ({type(e).__name__}: {e}); timing the others only",
              flush=True)
    info = environment(impls)
    lines = header_md(info, args)
    print("\n".join(lines), flush=True)

    t0 = time.perf_counter()
    X32, y = load_data(args.data, args.samples)
    log(f"data: {X32.shape} in {time.perf_counter() - t0:.1f} s")
    rows, notes = [], []
    for name in configs:
        log(f"{name}: {CONFIGS[name]['desc']}")
        r, skipped = run_config(name, X32, y, args, impls)
        rows += r
        for k, why in skipped.items():
            notes.append(f"{name}: {why}" if k == "_load" else f"{name} {k}: skipped ({why})")
        meds = {x["key"]: x["median"] for x in r}
        if "fastnn" in meds and "gemm" in meds:
            notes.append(f"{name}: fastnn / GEMMs alone (np.dot) = "
                         f"{meds['fastnn'] / meds['gemm']:.2f}"
                         + (" (target <= 1.25)" if name == "C4" else ""))
        if "fastnn" in meds and "gemm-scipy" in meds:
            notes.append(f"{name}: fastnn / GEMMs alone (scipy BLAS) = "
                         f"{meds['fastnn'] / meds['gemm-scipy']:.2f}")
        if fastnn_ok and "fastnn" in impls and not args.no_rss:
            rss = measure_rss(name, args)
            if rss:
                notes.append(f"{name}: peak RSS growth during fastnn's fit (2 epochs, child "
                             f"process, {rss['method']}): "
                             f"{(rss['after_kb'] - rss['before_kb']) / 1024:.1f} MiB "
                             f"(training data {rss['data_kb'] / 1024:.0f} MiB)")
    ref_key = "fastnn" if any(r["key"] == "fastnn" for r in rows) else "numpy"
    out = lines + ["- load average at end: " + ", ".join(f"{x:.2f}" for x in os.getloadavg()),
                   ""]
    out += ["## Configurations", ""]
    out += [f"- {c}: {CONFIGS[c]['desc']}" for c in configs]
    out += ["", "## Results", ""]
    if ref_key != "fastnn":
        out.append("fastnn not built: ratios are relative to the NumPy baseline.")
        out.append("")
    out += table_md(rows, ref_key)
    out += ["", f"Ratios are median / median of {ref_key} (> 1: slower than {ref_key}). "
                "us/step = median seconds per epoch / mini-batches per epoch. train acc = "
                "accuracy on the first 10 000 training rows after all epochs (a sanity check "
                "that every implementation learns; initialisations differ).", ""]
    if notes:
        out += ["## Notes", ""] + [f"- {x}" for x in notes] + [""]
    report = "\n".join(out)
    print("\n".join(out[len(lines):]), flush=True)
    if args.out:
        pathlib.Path(args.out).write_text(report + "\n")
        log(f"wrote {args.out}")


if __name__ == "__main__":
    main()
