"""The Network: parameters in one flat buffer, and the public API over the kernels."""
import numbers

import numpy as np

from fastnn import reference
from fastnn._kernels import _core
from fastnn._memory import aligned_copy, aligned_empty, aligned_zeros
from fastnn._validation import check_X, check_y, check_real, check_seed
from fastnn.activations import get_activation
from fastnn.costs import get_cost
from fastnn.init import get_initializer, initialize
from fastnn.threads import kernel_blas

ENGINES = ("cython", "numpy")
_WORKSPACE_BYTES = 1 << 24  # evaluation works on chunks of rows within ~16 MiB


def check_engine(engine):
    if engine not in ENGINES:
        raise ValueError(f"The 'engine' parameter must be one of {ENGINES}. Got {engine!r} instead.")
    return engine


class Network:
    """A fully-connected feed-forward network.

    ``sizes`` lists the layer widths, input first: ``[784, 30, 10]`` has one
    hidden layer of 30 neurons. Layer l computes ``a_{l+1} = f(W_l a_l + b_l)``
    with ``W_l`` of shape ``(sizes[l+1], sizes[l])``.

    Parameters
    ----------
    sizes : sequence of int, at least two widths, each >= 1.
    hidden : str or list of str, the hidden activation(s): 'sigmoid', 'tanh',
        'relu' or 'identity'; a list gives one per hidden layer.
    output : str, the output activation: those or 'softmax'.
    cost : 'quadratic', 'cross-entropy' (sigmoid output) or 'log-likelihood'
        (softmax output).
    dtype : 'float32' or 'float64'; parameters, workspaces and converted inputs
        all use it.
    init : 'default' (network2's), 'large', 'glorot' or 'he' (see fastnn.init).
    seed : int, numpy Generator or None; makes the initial weights reproducible.

    Attributes
    ----------
    params : 1-D array holding ``W_0, b_0, W_1, b_1, ...`` contiguously.
    weights, biases : tuples of views into ``params`` (write into them in place).
    """

    def __init__(self, sizes, hidden="sigmoid", output="sigmoid", cost="cross-entropy",
                 dtype="float64", init="default", seed=None):
        self.sizes = _check_sizes(sizes)
        n_hidden = len(self.sizes) - 2
        if isinstance(hidden, str):
            get_activation(hidden, parameter="hidden")
            hidden = [hidden] * n_hidden
        else:
            try:
                hidden = list(hidden)
            except TypeError:
                raise TypeError(f"The 'hidden' parameter must be an activation name or a list of "
                                f"{n_hidden} names. Got {hidden!r} instead.") from None
            if len(hidden) != n_hidden:
                raise ValueError(f"The 'hidden' parameter must be one activation name or a list of "
                                 f"{n_hidden} (one per hidden layer). Got a list of {len(hidden)}.")
        self.hidden = tuple(get_activation(h, parameter="hidden").name for h in hidden)
        self.output = get_activation(output, parameter="output", output=True).name
        self.cost = get_cost(cost, self.output).name
        self.dtype = _check_dtype(dtype)
        get_initializer(init)
        self.init = init
        self._build()
        initialize(self._layer_views(), self.sizes, init, np.random.default_rng(check_seed(seed)))

    # ------------------------------------------------------------------ layout
    def _build(self, params=None):
        from fastnn.activations import ACTIVATIONS
        from fastnn.costs import COSTS
        self._sizes_c = np.asarray(self.sizes, dtype=np.int32)
        self._acts_c = np.asarray([ACTIVATIONS[a].code for a in self.activations], dtype=np.int32)
        self._cost_c = COSTS[self.cost].code
        n = sum(o * (i + 1) for i, o in zip(self.sizes[:-1], self.sizes[1:]))
        self.params = aligned_zeros(n, self.dtype) if params is None else params
        self._views = []
        off = 0
        for n_in, n_out in zip(self.sizes[:-1], self.sizes[1:]):
            W = self.params[off:off + n_out * n_in].reshape(n_out, n_in)
            off += n_out * n_in
            b = self.params[off:off + n_out]
            off += n_out
            self._views.append((W, b))
        self.weights = tuple(W for W, _ in self._views)
        self.biases = tuple(b for _, b in self._views)
        # 1 for weights, 0 for biases: which entries L2 applies to
        mask = np.zeros(n, dtype=bool)
        off = 0
        for n_in, n_out in zip(self.sizes[:-1], self.sizes[1:]):
            mask[off:off + n_out * n_in] = True
            off += n_out * (n_in + 1)
        self._weight_mask = mask

    def _layer_views(self):
        return list(self._views)

    @property
    def activations(self):
        """Activation name of every layer's output, the output layer last."""
        return self.hidden + (self.output,)

    @property
    def n_params(self):
        return self.params.shape[0]

    @property
    def n_layers(self):
        """Number of weight layers (len(sizes) - 1)."""
        return len(self.sizes) - 1

    def __repr__(self):
        return (f"Network({list(self.sizes)}, hidden={_compact(self.hidden)!r}, "
                f"output={self.output!r}, cost={self.cost!r}, dtype={self.dtype.name!r})")

    def copy(self):
        """An independent network with the same structure and parameters."""
        return Network._from_state(self.__getstate__())

    @classmethod
    def _from_state(cls, state):
        """A network from a state dict (as __getstate__ gives), every field validated."""
        net = cls.__new__(cls)
        net.sizes = _check_sizes(state["sizes"])
        hidden = state["hidden"]
        if not isinstance(hidden, (list, tuple)) or len(hidden) != len(net.sizes) - 2:
            raise ValueError(f"hidden must list {len(net.sizes) - 2} activations, got {hidden!r}")
        net.hidden = tuple(get_activation(h, parameter="hidden").name for h in hidden)
        net.output = get_activation(state["output"], parameter="output", output=True).name
        net.cost = get_cost(state["cost"], net.output).name
        net.dtype = _check_dtype(state["dtype"])
        get_initializer(state["init"])
        net.init = state["init"]
        params = np.asarray(state["params"])
        n = sum(o * (i + 1) for i, o in zip(net.sizes[:-1], net.sizes[1:]))
        if params.shape != (n,):
            raise ValueError(f"params must have shape ({n},), got {params.shape}")
        net._build(aligned_copy(params, net.dtype))
        return net

    def __getstate__(self):
        return {"sizes": self.sizes, "hidden": self.hidden, "output": self.output,
                "cost": self.cost, "dtype": self.dtype.name, "init": self.init,
                "params": self.params.copy()}

    def __setstate__(self, state):
        self.__dict__.update(Network._from_state(state).__dict__)

    # ------------------------------------------------------------------ helpers
    def _chunk(self, n):
        per_row = self.sizes[0] + 2 * sum(self.sizes[1:]) + self.sizes[-1]
        rows = max(64, _WORKSPACE_BYTES // (per_row * self.dtype.itemsize))
        return int(min(n, rows))

    def _workspace(self, m):
        return aligned_empty(_core.workspace_size(self._sizes_c, m), self.dtype)

    def _check_Xy(self, X, y, names=("X", "y"), finite=True):
        X = check_X(X, self.sizes[0], self.dtype, name=names[0], finite=finite)
        Y, labels = check_y(y, X.shape[0], self.sizes[-1], self.dtype, name=names[1])
        return X, Y, labels

    def _targets(self, Y, labels):
        """The (n, n_out) target matrix (for the NumPy reference)."""
        if Y.shape[0]:
            return Y
        n_out = self.sizes[-1]
        if n_out == 1:
            return labels.astype(self.dtype).reshape(-1, 1)
        T = np.zeros((labels.shape[0], n_out), dtype=self.dtype)
        T[np.arange(labels.shape[0]), labels] = 1
        return T

    def _l2_norm2(self):
        """sum_l ||W_l||^2 in double, by fastnn's kernel (a NumPy dot would wake BLAS's
        threads, whose spinning afterwards slows the next training steps)."""
        return _core.weights_norm2(self._sizes_c, self._acts_c, self._cost_c, self.params)

    def _check_lmbda(self, lmbda):
        return check_real(lmbda, "lmbda", low=0.0)

    # ------------------------------------------------------------------ inference
    def feedforward(self, X, *, engine="cython"):
        """The network's output for each row of X: shape (n_samples, sizes[-1]).

        A 1-D X of length sizes[0] is one sample and gives a 1-D output.
        """
        check_engine(engine)
        X_in = X
        X = check_X(X, self.sizes[0], self.dtype)
        one = np.ndim(X_in) == 1
        if engine == "numpy":
            out = reference.forward(self, self.params, X)[0][-1]
        else:
            m = self._chunk(X.shape[0])
            out = np.empty((X.shape[0], self.sizes[-1]), dtype=self.dtype)
            with kernel_blas():
                _core.feedforward(self._sizes_c, self._acts_c, self._cost_c, self.params, X, out,
                                  self._workspace(m), m)
        return out[0] if one else out

    def predict(self, X):
        """Class indices: the argmax of the output (a > 0.5 for one output neuron)."""
        out = self.feedforward(X)
        if out.ndim == 1:
            out = out[None, :]
        if self.sizes[-1] == 1:
            return (out[:, 0] > 0.5).astype(np.intp)
        return np.argmax(out, axis=1)

    def _evaluate(self, X, Y, labels, lmbda, want_grad, engine="cython"):
        """(mean cost with L2, accuracy, gradient or None) on validated arrays."""
        n = X.shape[0]
        if engine == "numpy":
            cost_sum, correct, grad = reference.evaluate(self, self.params, X, self._targets(Y, labels),
                                                         want_grad)
        else:
            m = self._chunk(n)
            grad = aligned_empty(self.n_params, self.dtype) if want_grad else np.empty(1, dtype=self.dtype)
            with kernel_blas():
                cost_sum, correct = _core.evaluate(self._sizes_c, self._acts_c, self._cost_c,
                                                   self.params, X, Y, labels, grad,
                                                   self._workspace(m), m, want_grad, True)
        cost = cost_sum / n
        if lmbda:
            cost += 0.5 * (lmbda / n) * self._l2_norm2()
        if want_grad:
            if lmbda:
                grad[self._weight_mask] += (lmbda / n) * self.params[self._weight_mask]
        else:
            grad = None
        return cost, correct / n, grad

    def loss(self, X, y, lmbda=0.0):
        """C = C0 + lmbda/(2n) sum ||W||^2 over the n rows given (network2's total_cost)."""
        lmbda = self._check_lmbda(lmbda)
        X, Y, labels = self._check_Xy(X, y)
        return self._evaluate(X, Y, labels, lmbda, False)[0]

    def gradient(self, X, y, lmbda=0.0, *, engine="cython"):
        """dC/dparams over all rows given, a flat array in the params layout."""
        return self.loss_and_gradient(X, y, lmbda, engine=engine)[1]

    def loss_and_gradient(self, X, y, lmbda=0.0, *, engine="cython"):
        """(C, dC/dparams) in one pass over the data."""
        check_engine(engine)
        lmbda = self._check_lmbda(lmbda)
        X, Y, labels = self._check_Xy(X, y)
        cost, _, grad = self._evaluate(X, Y, labels, lmbda, True, engine)
        return cost, grad

    def evaluate(self, X, y, lmbda=0.0):
        """{'cost': C (with L2 when lmbda > 0), 'accuracy': fraction classified right}."""
        lmbda = self._check_lmbda(lmbda)
        X, Y, labels = self._check_Xy(X, y)
        cost, acc, _ = self._evaluate(X, Y, labels, lmbda, False)
        return {"cost": cost, "accuracy": acc}

    # ------------------------------------------------------------------ training
    def fit(self, X, y, epochs=30, batch_size=10, optimizer=None, lmbda=0.0,
            validation_data=None, shuffle=True, seed=None, *, callbacks=(),
            monitor_training=True, progress_every=4096, engine="cython", verbose=False,
            blas_threads="auto"):
        """Train with mini-batch SGD (plain, momentum or Nesterov) or Adam; see
        fastnn.training.fit."""
        from fastnn.training import fit
        return fit(self, X, y, epochs=epochs, batch_size=batch_size, optimizer=optimizer,
                   lmbda=lmbda, validation_data=validation_data, shuffle=shuffle, seed=seed,
                   callbacks=callbacks, monitor_training=monitor_training,
                   progress_every=progress_every, engine=engine, verbose=verbose,
                   blas_threads=blas_threads)

    # ------------------------------------------------------------------ curvature
    def hessian_vector_product(self, X, y, v, lmbda=0.0):
        """Hv: the exact Hessian of the mean cost C (with L2) times v (params layout),
        by Pearlmutter's R-operator; see fastnn.curvature."""
        from fastnn import curvature
        return curvature.hessian_vector_product(self, X, y, v, lmbda)

    def gauss_newton_vector_product(self, X, y, v, lmbda=0.0):
        """Gv: the generalized Gauss-Newton matrix (positive semi-definite) times v;
        see fastnn.curvature."""
        from fastnn import curvature
        return curvature.gauss_newton_vector_product(self, X, y, v, lmbda)

    def hessian(self, X, y, lmbda=0.0):
        """The full (P, P) Hessian of C, built from exact products; see fastnn.curvature."""
        from fastnn import curvature
        return curvature.hessian(self, X, y, lmbda)

    # ------------------------------------------------------------------ persistence
    def save(self, path):
        """Save atomically in fastnn's versioned .npz format (see fastnn.io)."""
        from fastnn.io import save
        save(self, path)


def _compact(hidden):
    if len(set(hidden)) == 1:
        return hidden[0]
    return list(hidden)


def _check_sizes(sizes):
    try:
        sizes = list(sizes)
    except TypeError:
        raise TypeError(f"The 'sizes' parameter must be a list of layer widths, e.g. [784, 30, 10]. "
                        f"Got {sizes!r} instead.") from None
    if len(sizes) < 2:
        raise ValueError(f"The 'sizes' parameter must list at least 2 layers (inputs and outputs). "
                         f"Got {sizes!r} instead.")
    if len(sizes) - 1 > _core.MAX_LAYER_COUNT:
        raise ValueError(f"The 'sizes' parameter may list at most {_core.MAX_LAYER_COUNT + 1} layers. "
                         f"Got {len(sizes)}.")
    for s in sizes:
        if isinstance(s, bool) or not isinstance(s, numbers.Integral) or s < 1:
            raise ValueError(f"The 'sizes' parameter must hold positive integer widths. "
                             f"Got {sizes!r} instead.")
        if s >= 2 ** 31:
            raise ValueError(f"The 'sizes' parameter holds a width too large for BLAS: {s}.")
    return tuple(int(s) for s in sizes)


def _check_dtype(dtype):
    try:
        dt = None if dtype is None else np.dtype(dtype)
    except TypeError:
        dt = None
    if dt is None or dt not in (np.dtype(np.float32), np.dtype(np.float64)):
        raise ValueError(f"The 'dtype' parameter must be 'float32' or 'float64'. Got {dtype!r} instead.")
    return dt
