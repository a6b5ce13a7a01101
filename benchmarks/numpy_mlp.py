"""The best vectorized plain-NumPy implementation of fastnn's training algorithm.

This is the *baseline* fastnn is timed against (see ``compare.py``); it is not part of
the package. It implements exactly the update rules of DESIGN.md ("Semantics"), with
every performance trick plain NumPy allows, so that the comparison is honest:

* samples are rows, ``W[l]`` has shape ``(out, in)`` and the forward product is
  ``A @ W.T`` (BLAS handles the transpose without a copy);
* all parameters live in one flat buffer, weights first (``W1, W2, ..., b1, b2, ...``,
  an internal layout), and so do the gradient and the velocity, so the update is a
  handful of whole-buffer in-place ufunc calls however many layers there are, and the
  L2 term touches one contiguous slice (the weights) with a scalar;
* every intermediate (gathered batch, activations, deltas, gradients) is preallocated
  once per batch size and written with ``out=``; nothing is allocated per step;
* the factor eta/m is folded into the output delta (an (m, n_out) array) so that the
  gradients come out of the GEMMs already scaled, saving a pass over all parameters;
* bias gradients are ``ones @ delta`` (a BLAS gemv, ~5x faster than ``sum(axis=0)``
  on small batches);
* the mini-batch rows are gathered per batch from the shuffled permutation with
  ``np.take(..., out=, mode="clip")`` (``mode="raise"`` would buffer the output);
* the last, partial batch is trained (with its own workspace);
* the per-step sequence of NumPy calls is built once per epoch as a flat list of
  ``(ufunc, args)`` with ``out`` passed positionally, so a step costs the NumPy calls
  plus a bare loop (keyword parsing and attribute look-ups cost ~0.4 us per call,
  which matters at batch size 10, where a step is ~35 calls).

Update equations (g is the mean gradient of the unregularized cost over the batch,
L2 on weights only, n = number of training rows):

* momentum:  v <- mu v - eta (g + (lmbda/n) W);  W <- W + v
* Nesterov:  v <- mu v - eta g';  W <- W + mu v - eta g'   with g' = g + (lmbda/n) W
"""

import numpy as np

ACTIVATIONS = ("sigmoid", "tanh", "relu", "identity", "softmax")
COSTS = ("quadratic", "cross-entropy", "log-likelihood")

_dot, _add, _sub, _mul, _div = np.dot, np.add, np.subtract, np.multiply, np.divide
# relu uses np.fmax: np.maximum no longer takes ``out`` positionally (fmax differs only
# for NaN inputs, which never occur in a finite training run).
_neg, _exp, _recip, _tanh, _max2, _gt = (np.negative, np.exp, np.reciprocal, np.tanh,
                                        np.fmax, np.greater)
_rowmax = np.maximum.reduce


class NumpyMLP:
    """Parameters, optimizer state and per-batch-size workspaces of one network."""

    def __init__(self, sizes, hidden="sigmoid", output="sigmoid", cost="cross-entropy",
                 dtype="float64", seed=0):
        sizes = [int(s) for s in sizes]
        if len(sizes) < 2:
            raise ValueError("sizes needs at least an input and an output layer")
        nl = len(sizes) - 1
        if isinstance(hidden, str):
            hidden = [hidden] * (nl - 1)
        self.acts = list(hidden) + [output]
        for a in self.acts[:-1]:
            if a not in ACTIVATIONS or a == "softmax":
                raise ValueError(f"hidden activation {a!r} not one of sigmoid/tanh/relu/identity")
        if output not in ACTIVATIONS:
            raise ValueError(f"output activation {output!r} not in {ACTIVATIONS}")
        if cost not in COSTS:
            raise ValueError(f"cost {cost!r} not in {COSTS}")
        if cost == "cross-entropy" and output != "sigmoid":
            raise ValueError("cross-entropy needs a sigmoid output")
        if cost == "log-likelihood" and output != "softmax":
            raise ValueError("log-likelihood needs a softmax output")
        self.sizes, self.cost, self.output = sizes, cost, output
        self.dtype = np.dtype(dtype)

        # One flat buffer: all weights, then all biases; views into it.
        wshapes = [(sizes[i + 1], sizes[i]) for i in range(nl)]
        self.Pw = sum(o * i for o, i in wshapes)
        self.P = self.Pw + sum(sizes[1:])
        self.params = np.empty(self.P, self.dtype)
        self.grad = np.zeros(self.P, self.dtype)
        self.vel = np.zeros(self.P, self.dtype)
        self.tmp = np.empty(self.P, self.dtype)
        self.is_weight = np.zeros(self.P, bool)
        self.is_weight[:self.Pw] = True

        def views(buf):
            ws, bs, off = [], [], 0
            for o, i in wshapes:
                ws.append(buf[off:off + o * i].reshape(o, i))
                off += o * i
            for o in sizes[1:]:
                bs.append(buf[off:off + o])
                off += o
            return ws, bs

        self.weights, self.biases = views(self.params)
        self.gW, self.gb = views(self.grad)
        # network2's "default" initialisation: N(0, 1/n_in) weights, N(0, 1) biases.
        rng = np.random.default_rng(seed)
        for W, b in zip(self.weights, self.biases):
            W[...] = rng.standard_normal(W.shape) / np.sqrt(W.shape[1])
            b[...] = rng.standard_normal(b.shape)
        self._ws = {}
        self._plans = {}

    # ------------------------------------------------------------------ workspaces
    def workspace(self, m):
        ws = self._ws.get(m)
        if ws is None:
            dt = self.dtype
            ws = {
                "Xb": np.empty((m, self.sizes[0]), dt),
                "Yb": np.empty((m, self.sizes[-1]), dt),
                "A": [np.empty((m, s), dt) for s in self.sizes[1:]],
                "D": [np.empty((m, s), dt) for s in self.sizes[1:]],
                "T": [np.empty((m, s), dt) for s in self.sizes[1:]],
                "mask": [np.empty((m, s), bool) for s in self.sizes[1:]],
                "ones": np.ones(m, dt),
                "ones_out": np.ones((self.sizes[-1], 1), dt),
                "col": np.empty((m, 1), dt),
            }
            self._ws[m] = ws
        return ws

    # ------------------------------------------------------------------ plans
    # A plan is a list of (function, args) executed as f(*args); every array in it is a
    # preallocated buffer or a view of one, so executing it allocates nothing.
    @staticmethod
    def _activation_ops(Z, act, ws):
        if act == "sigmoid":
            # 1 / (1 + exp(-z)); exp overflow gives inf -> 0, the right limit.
            return [(_neg, (Z, Z)), (_exp, (Z, Z)), (_add, (Z, 1.0, Z)), (_recip, (Z, Z))]
        if act == "relu":
            return [(_max2, (Z, 0.0, Z))]
        if act == "tanh":
            return [(_tanh, (Z, Z))]
        if act == "softmax":
            col = ws["col"]
            return [(_rowmax, (Z, 1, None, col, True)), (_sub, (Z, col, Z)), (_exp, (Z, Z)),
                    (_dot, (Z, ws["ones_out"], col)), (_div, (Z, col, Z))]
        return []  # identity

    @staticmethod
    def _derivative_ops(D, A, act, T, mask):
        """D *= f'(z), expressed through the activation a = f(z)."""
        if act == "sigmoid":
            return [(_sub, (1.0, A, T)), (_mul, (T, A, T)), (_mul, (D, T, D))]
        if act == "tanh":
            return [(_mul, (A, A, T)), (_sub, (1.0, T, T)), (_mul, (D, T, D))]
        if act == "relu":
            return [(_gt, (A, 0.0, mask)), (_mul, (D, mask, D))]
        return []  # identity

    def forward_plan(self, m):
        ws = self.workspace(m)
        ops, a = [], ws["Xb"]
        for W, b, A, act in zip(self.weights, self.biases, ws["A"], self.acts):
            ops.append((_dot, (a, W.T, A)))
            ops.append((_add, (A, b, A)))
            ops += self._activation_ops(A, act, ws)
            a = A
        return ops

    def backward_plan(self, m, scale):
        """Gradient of the summed unregularized cost, times ``scale``, into self.grad."""
        ws = self.workspace(m)
        A, D, T, M = ws["A"], ws["D"], ws["T"], ws["mask"]
        L = len(self.weights) - 1
        Dl, Al = D[L], A[L]
        ops = [(_sub, (Al, ws["Yb"], Dl))]
        if self.cost == "quadratic":
            if self.output == "softmax":
                # delta = J^T r with J = diag(a) - a a^T, r = a - y
                col = ws["col"]
                ops += [(_mul, (Dl, Al, T[L])), (_dot, (T[L], ws["ones_out"], col)),
                        (_sub, (Dl, col, Dl)), (_mul, (Dl, Al, Dl))]
            else:
                ops += self._derivative_ops(Dl, Al, self.acts[L], T[L], M[L])
        ops.append((_mul, (Dl, self.dtype.type(scale), Dl)))
        ones = ws["ones"]
        for l in range(L, -1, -1):
            a_prev = A[l - 1] if l > 0 else ws["Xb"]
            ops.append((_dot, (D[l].T, a_prev, self.gW[l])))
            ops.append((_dot, (ones, D[l], self.gb[l])))
            if l > 0:  # the input layer's delta is never needed
                ops.append((_dot, (D[l], self.weights[l], D[l - 1])))
                ops += self._derivative_ops(D[l - 1], A[l - 1], self.acts[l - 1], T[l - 1],
                                            M[l - 1])
        return ops

    def update_plan(self, mu, nesterov, c):
        """self.grad holds eta * (mean unregularized gradient); c = eta * lmbda / n."""
        t = self.dtype.type
        p, v, g = self.params, self.vel, self.grad
        ops = []
        if c != 0.0:  # g <- g + c W on the weights only (one contiguous slice)
            pw, gw, tw = p[:self.Pw], g[:self.Pw], self.tmp[:self.Pw]
            ops += [(_mul, (pw, t(c), tw)), (_add, (gw, tw, gw))]
        if mu == 0.0:
            ops.append((_sub, (p, g, p)))
        elif not nesterov:
            ops += [(_mul, (v, t(mu), v)), (_sub, (v, g, v)), (_add, (p, v, p))]
        else:  # v <- mu v - g;  W <- W - g + mu v
            ops += [(_mul, (v, t(mu), v)), (_sub, (v, g, v)), (_sub, (p, g, p)),
                    (_mul, (v, t(mu), g)), (_add, (p, g, p))]
        return ops

    def train_plan(self, m, eta, mu, nesterov, c):
        key = (m, eta, mu, nesterov, c)
        plan = self._plans.get(key)
        if plan is None:
            plan = (self.forward_plan(m) + self.backward_plan(m, eta / m)
                    + self.update_plan(mu, nesterov, c))
            self._plans[key] = plan
        return plan

    # ------------------------------------------------------------------ conveniences
    def _load(self, X, Y=None):
        X = np.ascontiguousarray(X, self.dtype)
        ws = self.workspace(X.shape[0])
        ws["Xb"][...] = X
        if Y is not None:
            ws["Yb"][...] = Y
        return ws

    @staticmethod
    def _run(ops):
        for f, a in ops:
            f(*a)

    def feedforward(self, X):
        ws = self._load(X)
        with np.errstate(over="ignore"):
            self._run(self.forward_plan(ws["Xb"].shape[0]))
        return ws["A"][-1].copy()

    def loss(self, X, Y, lmbda=0.0):
        """The cost C of DESIGN.md (n = len(X)), computed in float64."""
        a = self.feedforward(X).astype(np.float64)
        Y = np.asarray(Y, np.float64)
        m = a.shape[0]
        if self.cost == "quadratic":
            c0 = 0.5 * np.sum((a - Y) ** 2) / m
        elif self.cost == "cross-entropy":
            with np.errstate(divide="ignore", invalid="ignore"):
                c0 = -np.sum(np.nan_to_num(Y * np.log(a) + (1 - Y) * np.log(1 - a))) / m
        else:
            c0 = -np.sum(Y * np.log(a)) / m
        l2 = sum(float(np.sum(W.astype(np.float64) ** 2)) for W in self.weights)
        return float(c0 + 0.5 * lmbda / m * l2)

    def gradient(self, X, Y, lmbda=0.0):
        """Mean gradient of the cost (with L2, n = len(X)) as a flat copy (internal layout)."""
        ws = self._load(X, Y)
        m = ws["Xb"].shape[0]
        with np.errstate(over="ignore"):
            self._run(self.forward_plan(m) + self.backward_plan(m, 1.0 / m))
        g = self.grad.copy()
        g[:self.Pw] += (lmbda / m) * self.params[:self.Pw]
        return g


def make_state(sizes, hidden="sigmoid", output="sigmoid", cost="cross-entropy",
               dtype="float64", seed=0):
    """The constructor: a NumpyMLP (parameters, velocities, workspaces)."""
    return NumpyMLP(sizes, hidden=hidden, output=output, cost=cost, dtype=dtype, seed=seed)


def train_epoch(state, X, Y_onehot, perm, batch_size, eta, mu, nesterov, lmbda, *,
                max_batches=None):
    """One epoch of mini-batch SGD over the rows ``X[perm]``, last partial batch included.

    ``X`` (n, n_in) and ``Y_onehot`` (n, n_out) must be C-contiguous arrays of
    ``state.dtype`` (convert once, outside the timed loop); ``perm`` is a permutation
    of ``range(n)`` (intp). ``max_batches`` stops after that many mini-batches (to time
    part of an epoch); the L2 term still uses n = len(X).
    """
    n = X.shape[0]
    c = eta * lmbda / n
    take = np.take
    n_full = (n // batch_size) * batch_size
    if max_batches is not None and max_batches * batch_size < n:
        n, n_full = max_batches * batch_size, max_batches * batch_size
    with np.errstate(over="ignore"):
        if n_full:
            ws = state.workspace(batch_size)
            Xb, Yb = ws["Xb"], ws["Yb"]
            plan = state.train_plan(batch_size, eta, mu, nesterov, c)
            for start in range(0, n_full, batch_size):
                idx = perm[start:start + batch_size]
                take(X, idx, 0, Xb, "clip")
                take(Y_onehot, idx, 0, Yb, "clip")
                for f, a in plan:
                    f(*a)
        if n_full < n:  # the last, partial batch
            m = n - n_full
            ws = state.workspace(m)
            idx = perm[n_full:]
            take(X, idx, 0, ws["Xb"], "clip")
            take(Y_onehot, idx, 0, ws["Yb"], "clip")
            for f, a in state.train_plan(m, eta, mu, nesterov, c):
                f(*a)
    return state
