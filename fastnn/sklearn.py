"""scikit-learn's MLPClassifier and MLPRegressor on fastnn's kernels.

A drop-in for ``sklearn.neural_network``: change the import, keep the code::

    from fastnn.sklearn import MLPClassifier   # was: from sklearn.neural_network import ...
    clf = MLPClassifier(hidden_layer_sizes=(100,), random_state=0).fit(X, y)

The constructor parameters, their defaults and meanings, the methods and the
fitted attributes are scikit-learn's (version 1.6 or later is needed). The
model is a :class:`fastnn.Network` trained by fastnn's fused kernels:

- hidden activation 'identity', 'logistic' (fastnn's 'sigmoid'), 'tanh' or 'relu';
- output and cost as scikit-learn chooses them: multiclass -> softmax with the
  log-likelihood (scikit-learn's log_loss); binary (one output neuron) and
  multilabel -> logistic with the cross-entropy; regression -> identity with
  the quadratic cost (scikit-learn's squared_error, half the squared error);
- weights drawn exactly as scikit-learn's ``_init_coef`` draws them, from the
  same ``random_state`` in the same order, so both libraries start from the
  same network;
- ``alpha`` is scikit-learn's L2 term ``alpha/(2m) sum ||W||^2`` for a batch of
  m rows: the stochastic solvers apply ``(alpha/m) W`` per mini-batch
  (``Trainer(l2_scale="batch")``), lbfgs ``(alpha/n) W`` over all n rows;
- 'sgd' is fastnn.SGD (momentum, Nesterov) with scikit-learn's per-epoch
  learning-rate rules ('constant', 'invscaling', 'adaptive'); 'adam' is
  fastnn.Adam (scikit-learn's bias-corrected rule, one fused pass); 'lbfgs'
  is scipy's L-BFGS-B over the flat parameter buffer, as in scikit-learn;
- each epoch's order is the permutation scikit-learn draws from its
  random_state, and early stopping holds out the same validation rows, so
  with the same settings the two libraries follow the same trajectory up to
  floating-point rounding.

Differences from scikit-learn, all deliberate:

- ``coefs_`` and ``intercepts_`` are *views* into the network's parameter
  buffer (fastnn stores W as (fan_out, fan_in); ``coefs_[i]`` is its
  transpose, shape (fan_in, fan_out), F-contiguous). Writing into them in
  place changes the model; assigning a new list copies its values in.
- ``dtype`` (extra parameter): None (default) trains in float32 when X is
  float32 and in float64 otherwise (scikit-learn's rule); 'float32' or
  'float64' forces one. The network keeps the dtype of its first fit; later
  inputs are converted to it, and predictions come in it.
- Sparse X is accepted and converted to a dense array (the kernels are dense).
- ``fit`` takes no ``sample_weight`` (fastnn's kernels have no per-sample
  weights), and ``MLPRegressor(loss='poisson')`` is not available.
- The training loss is computed from the output pre-activations (stable
  softplus / logsumexp), so it differs from scikit-learn's only where
  scikit-learn clips probabilities at the float epsilon.
- Multi-output regression: scikit-learn's squared_error averages the data
  term over the outputs, while its gradient is that of the sum over outputs.
  ``loss_`` and ``loss_curve_`` follow scikit-learn's loss (so tol acts the
  same); lbfgs minimizes the sum, the function whose gradient both use, so
  its line searches (and runs) differ from scikit-learn's in that case only.
- ``momentum`` must be < 1 (scikit-learn accepts 1, which has no friction).
- ``network_`` (extra fitted attribute) is the fitted :class:`fastnn.Network`.
- A step that makes a parameter non-finite stops training at once (the
  network keeps its last finite parameters) and raises scikit-learn's
  ValueError "Solver produced non-finite parameter weights".
- ``fit`` with 'sgd' or 'adam' finds a NaN or inf in X in its first epoch
  (a bad value makes that step's update non-finite) rather than in a pass of
  its own over X before training; it then puts the estimator back as it was
  (attributes, network, optimizer state, random generator) and raises
  scikit-learn's ValueError ("Input X contains NaN", ...), naming the first
  bad row and column. ``partial_fit`` and 'lbfgs' scan X first, as
  scikit-learn does.
"""
import numbers
import warnings

import numpy as np
import scipy.optimize

try:
    from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin, is_classifier
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.metrics import accuracy_score, r2_score
    from sklearn.model_selection import train_test_split
    from sklearn.preprocessing import LabelBinarizer
    from sklearn.utils import check_random_state, column_or_1d
    from sklearn.utils.metaestimators import available_if
    from sklearn.utils.multiclass import type_of_target, unique_labels
    from sklearn.utils.validation import check_is_fitted, validate_data
except ImportError as exc:  # pragma: no cover - exercised without scikit-learn
    raise ImportError(
        "fastnn.sklearn needs scikit-learn >= 1.6 (it subclasses scikit-learn's estimator "
        "classes). Install it with `pip install 'fastnn[sklearn]'` or `pip install "
        f"scikit-learn`. ({exc})") from exc

import scipy.sparse

from fastnn import threads as _threads
from fastnn.network import Network
from fastnn.optimizers import SGD, Adam
from fastnn.training import Trainer, TrainingDiverged

__all__ = ["MLPClassifier", "MLPRegressor"]

_STOCHASTIC_SOLVERS = ("sgd", "adam")
# scikit-learn's hidden activation names -> fastnn's
_HIDDEN = {"identity": "identity", "logistic": "sigmoid", "tanh": "tanh", "relu": "relu"}
# scikit-learn's out_activation_ -> fastnn's (output, cost)
_OUTPUT = {"softmax": ("softmax", "log-likelihood"),
           "logistic": ("sigmoid", "cross-entropy"),
           "identity": ("identity", "quadratic")}
_NON_FINITE = ("Solver produced non-finite parameter weights. The input data may contain large "
               "values and need to be preprocessed.")


class _NonFiniteX(Exception):
    """X turned out to hold NaN or inf after fit had begun (see MLP._fit)."""


def _non_finite_x(X, rows=None):
    """_NonFiniteX naming X's first non-finite entry (in scikit-learn's words, with its place),
    or None when every value is finite. ``rows`` maps X's rows to the caller's (a subset)."""
    from fastnn import _core
    row = _core.first_nonfinite_row(X)
    if row < 0:
        return None
    col = int(np.flatnonzero(~np.isfinite(X[row]))[0])
    what = ("NaN" if np.isnan(X[row, col]) else
            f"infinity or a value too large for {X.dtype!r}")
    where = int(rows[row]) if rows is not None else row
    return _NonFiniteX(f"Input X contains {what} (first at row {where}, column {col}).")


# n_samples * n_params from which lbfgs evaluates the loss and gradient with BLAS threads
_THREADED_EVAL = 1 << 20


def _blas_controller():
    """(fastnn's threadpoolctl controller, BLAS threads in use now)."""
    ctl = _threads._blas_controller()
    libs = ctl.select(user_api="blas").lib_controllers
    return ctl, max([lib.num_threads for lib in libs], default=1)


# --------------------------------------------------------------------------- validation

def _bad(owner, name, expected, value, exc=ValueError):
    return exc(f"The {name!r} parameter of {owner} must be {expected}. Got {value!r} instead.")


def _real(owner, name, value, low, *, low_open=False, high=None, high_open=False):
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise _bad(owner, name, "a real number", value, TypeError)
    if np.isnan(value):
        raise _bad(owner, name, "a real number", value)
    lo = "(" if low_open else "["
    hi = "" if high is None else f", {high}" + (")" if high_open else "]")
    expected = (f"a float in {lo}{low}{hi}" if high is not None
                else f"a float {'>' if low_open else '>='} {low}")
    if (value < low or (low_open and value == low) or
            (high is not None and (value > high or (high_open and value == high)))):
        raise _bad(owner, name, expected, value)
    return float(value)


def _int(owner, name, value, low):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise _bad(owner, name, f"an int >= {low}", value, TypeError)
    if value < low:
        raise _bad(owner, name, f"an int >= {low}", value)
    return int(value)


def _choice(owner, name, value, options):
    if not isinstance(value, str) or value not in options:
        raise _bad(owner, name, "one of " + ", ".join(map(repr, options)), value)
    return value


def _bool(owner, name, value):
    if not isinstance(value, (bool, np.bool_)):
        raise _bad(owner, name, "a bool", value, TypeError)
    return bool(value)


# --------------------------------------------------------------------------- the estimators

class _BaseMLP(BaseEstimator):
    """What MLPClassifier and MLPRegressor share; use those."""

    _loss = None  # the regressor's parameter 'loss'; the classifier's loss is fixed

    # ------------------------------------------------------------ parameters
    def _check_params(self):
        """Validate the hyper-parameters (in fit, never in __init__ or set_params)."""
        own = type(self).__name__
        hls = self.hidden_layer_sizes
        if not hasattr(hls, "__iter__") or isinstance(hls, str):
            hls = [hls]
        hls = list(hls)
        for h in hls:
            if isinstance(h, bool) or not isinstance(h, numbers.Integral) or h < 1:
                raise _bad(own, "hidden_layer_sizes",
                           "an int >= 1 or a sequence of them (one width per hidden layer)",
                           self.hidden_layer_sizes)
        _choice(own, "activation", self.activation, tuple(_HIDDEN))
        _choice(own, "solver", self.solver, ("lbfgs", "sgd", "adam"))
        _real(own, "alpha", self.alpha, 0)
        if not (isinstance(self.batch_size, str) and self.batch_size == "auto"):
            if (isinstance(self.batch_size, bool) or not isinstance(self.batch_size, numbers.Integral)
                    or self.batch_size < 1):
                raise _bad(own, "batch_size", "'auto' or an int >= 1", self.batch_size)
        _choice(own, "learning_rate", self.learning_rate, ("constant", "invscaling", "adaptive"))
        _real(own, "learning_rate_init", self.learning_rate_init, 0, low_open=True)
        _real(own, "power_t", self.power_t, 0)
        _int(own, "max_iter", self.max_iter, 1)
        _bool(own, "shuffle", self.shuffle)
        _real(own, "tol", self.tol, 0)
        if isinstance(self.verbose, str) or not isinstance(self.verbose, (numbers.Integral, bool)):
            raise _bad(own, "verbose", "a bool or an int", self.verbose, TypeError)
        _bool(own, "warm_start", self.warm_start)
        # scikit-learn allows momentum = 1; it has no friction and diverges (fastnn.SGD's rule)
        _real(own, "momentum", self.momentum, 0, high=1, high_open=True)
        _bool(own, "nesterovs_momentum", self.nesterovs_momentum)
        _bool(own, "early_stopping", self.early_stopping)
        _real(own, "validation_fraction", self.validation_fraction, 0, high=1, high_open=True)
        _real(own, "beta_1", self.beta_1, 0, high=1, high_open=True)
        _real(own, "beta_2", self.beta_2, 0, high=1, high_open=True)
        _real(own, "epsilon", self.epsilon, 0, low_open=True)
        patience = self.n_iter_no_change
        if not (isinstance(patience, float) and patience == np.inf):
            if (isinstance(patience, bool) or not isinstance(patience, numbers.Integral)
                    or patience < 1):
                raise _bad(own, "n_iter_no_change", "an int >= 1 or numpy.inf", patience)
        _int(own, "max_fun", self.max_fun, 1)
        if self.dtype is not None:
            try:
                dt = np.dtype(self.dtype)
            except TypeError:
                dt = None
            if dt not in (np.dtype(np.float32), np.dtype(np.float64)):
                raise _bad(own, "dtype", "None, 'float32' or 'float64'", self.dtype)
        return [int(h) for h in hls]

    def _x_dtype(self, first_pass):
        """The dtype(s) validate_data converts X to in fit: the network's, once it has one."""
        if not first_pass:
            return self._net.dtype
        return (np.float64, np.float32) if self.dtype is None else np.dtype(self.dtype)

    @staticmethod
    def _as_dense(X, dtype):
        if scipy.sparse.issparse(X):
            X = X.toarray()
        return np.ascontiguousarray(X, dtype=dtype)

    # ------------------------------------------------------------ fitted views
    def __sklearn_is_fitted__(self):
        return "_net" in self.__dict__

    def _fitted_net(self, name):
        net = self.__dict__.get("_net")
        if net is None:
            raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r} "
                                 f"(it is set by fit)")
        return net

    @property
    def coefs_(self):
        """Weight matrices, (fan_in, fan_out) each: views into the network's buffer."""
        return [W.T for W in self._fitted_net("coefs_").weights]

    @coefs_.setter
    def coefs_(self, value):
        self._assign("coefs_", [W.T for W in self._fitted_net("coefs_").weights], value)

    @property
    def intercepts_(self):
        """Bias vectors, (fan_out,) each: views into the network's buffer."""
        return list(self._fitted_net("intercepts_").biases)

    @intercepts_.setter
    def intercepts_(self, value):
        self._assign("intercepts_", list(self._fitted_net("intercepts_").biases), value)

    @staticmethod
    def _assign(name, views, values):
        """Copy ``values`` into ``views`` (the setters of coefs_ and intercepts_)."""
        values = [np.asarray(v) for v in values]
        want = [v.shape for v in views]
        if [v.shape for v in values] != want:
            raise ValueError(f"{name} must be a list of {len(want)} arrays of shapes {want}. "
                             f"Got shapes {[v.shape for v in values]} instead.")
        for dst, src in zip(views, values):
            dst[...] = src

    @property
    def network_(self):
        """The fitted fastnn.Network (shares its parameters with coefs_ / intercepts_)."""
        return self._fitted_net("network_")

    # ------------------------------------------------------------ pickling
    def __getstate__(self):
        state = dict(super().__getstate__())  # object.__getstate__ may return __dict__ itself
        opt = state.pop("_optimizer", None)
        if opt is not None:
            state["_optimizer_state"] = (type(opt).__name__, opt.state_dict())
        return state

    def __setstate__(self, state):
        state = dict(state)
        saved = state.pop("_optimizer_state", None)
        super().__setstate__(state)
        if saved is not None and "_net" in self.__dict__:
            import fastnn
            cls = getattr(fastnn, saved[0])
            opt = cls.__new__(cls)
            opt.load_state_dict(saved[1], net=self._net)
            self._optimizer = opt

    # ------------------------------------------------------------ fit
    def fit(self, X, y):
        """Fit the model to data matrix X and target(s) y.

        Parameters
        ----------
        X : {array-like, sparse matrix} of shape (n_samples, n_features)
        y : array-like of shape (n_samples,) or (n_samples, n_outputs)
            Class labels (classification) or real targets (regression).

        Returns
        -------
        self : a fitted estimator.
        """
        return self._fit(X, y, incremental=False)

    def _check_solver(self):
        if self.solver not in _STOCHASTIC_SOLVERS:
            raise AttributeError(f"partial_fit is only available for stochastic optimizers. "
                                 f"{self.solver} is not stochastic.")
        return True

    def _fit(self, X, y, incremental):
        hidden = self._check_params()
        if self._loss not in (None, "squared_error"):
            raise ValueError(f"The 'loss' parameter of {type(self).__name__} must be "
                             f"'squared_error' in fastnn (scikit-learn's 'poisson' needs an exp "
                             f"output and a Poisson cost, which fastnn lacks). Got {self._loss!r}.")
        first_pass = "_net" not in self.__dict__ or (not self.warm_start and not incremental)
        # fit with sgd or adam leaves the scan of X for NaN and inf to its first epoch (every
        # step reads its rows, and a non-finite value makes the step's update non-finite: see
        # Trainer), not a pass of its own over X (S1 of benchmarks/sklearn_compare.py: 35 ms
        # per fit); if the epoch finds one, the estimator is put back as it was
        lazy = self.solver in _STOCHASTIC_SOLVERS and not incremental
        if lazy:
            # (validation itself sets n_features_in_, classes_ and the label binarizer)
            before = dict(self.__dict__)
            rng = check_random_state(self.random_state)
            rng_state = rng.get_state()
        try:
            X, Y = self._validate_input(X, y, incremental, first_pass, finite=not lazy)
            X = self._as_dense(X, X.dtype if first_pass else self._net.dtype)
            if Y.ndim == 1:
                Y = Y.reshape(-1, 1)
            self.n_outputs_ = Y.shape[1]
            layer_units = [X.shape[1]] + hidden + [self.n_outputs_]
            self._random_state = check_random_state(self.random_state)
            if first_pass:
                self._initialize(layer_units, X.dtype)
            elif list(self._net.sizes) != layer_units:
                raise ValueError(f"{'partial_fit' if incremental else 'warm_start'} needs the "
                                 f"network of the previous fit: layer sizes "
                                 f"{list(self._net.sizes)}; this call implies {layer_units} "
                                 f"(hidden_layer_sizes or the targets changed).")
            if self.solver in _STOCHASTIC_SOLVERS:
                self._fit_stochastic(X, Y, incremental, x_unscanned=lazy)
            else:
                self._fit_lbfgs(X, Y)
        except _NonFiniteX as exc:
            # the network's parameters and the optimizer's state are back (Trainer); the
            # estimator's attributes and the random generator are put back here
            self.__dict__.clear()
            self.__dict__.update(before)
            rng.set_state(rng_state)
            raise ValueError(str(exc)) from None
        return self

    def _initialize(self, layer_units, dtype):
        """A new network with scikit-learn's initial weights, and fresh bookkeeping."""
        self.n_iter_ = 0
        self.t_ = 0
        self.n_layers_ = len(layer_units)
        self.out_activation_ = self._out_activation()
        output, cost = _OUTPUT[self.out_activation_]
        net = Network(layer_units, hidden=_HIDDEN[self.activation], output=output, cost=cost,
                      dtype=dtype, init="glorot", seed=0)
        # scikit-learn's _init_coef: per layer, W (fan_in, fan_out) then b, uniform in +-bound
        factor = 2.0 if self.activation == "logistic" else 6.0
        for W, b, fan_in, fan_out in zip(net.weights, net.biases, layer_units[:-1], layer_units[1:]):
            bound = np.sqrt(factor / (fan_in + fan_out))
            W[...] = self._random_state.uniform(-bound, bound, (fan_in, fan_out)).astype(dtype).T
            b[...] = self._random_state.uniform(-bound, bound, fan_out).astype(dtype)
        self._net = net
        self.__dict__.pop("_optimizer", None)
        self._best_params = net.params.copy()
        if self.solver in _STOCHASTIC_SOLVERS:
            self._initialize_stochastic()

    def _initialize_stochastic(self):
        self.loss_curve_ = []
        self._no_improvement_count = 0
        if self.early_stopping:
            self.validation_scores_ = []
            self.best_validation_score_ = -np.inf
            self.best_loss_ = None
        else:
            self.best_loss_ = np.inf
            self.validation_scores_ = None
            self.best_validation_score_ = None

    def _targets(self, Y):
        """fastnn's (Y, labels) pair for the model's targets Y (n, n_outputs)."""
        net = self._net
        no_Y = np.empty((0, net.sizes[-1]), dtype=net.dtype)
        no_labels = np.empty(0, dtype=np.intp)
        if self.out_activation_ == "softmax":
            return no_Y, np.ascontiguousarray(np.argmax(Y, axis=1), dtype=np.intp)
        if self.out_activation_ == "logistic" and Y.shape[1] == 1:
            return no_Y, np.ascontiguousarray(Y[:, 0], dtype=np.intp)
        return np.ascontiguousarray(Y, dtype=net.dtype), no_labels

    def _loss_scale(self):
        """scikit-learn's data loss over fastnn's: 1/n_outputs for squared error, else 1."""
        return 1.0 / self.n_outputs_ if self.out_activation_ == "identity" else 1.0

    # ------------------------------------------------------------ lbfgs
    def _fit_lbfgs(self, X, Y):
        net = self._net
        Yt, labels = self._targets(Y)
        alpha = float(self.alpha)
        # L-BFGS-B's own small BLAS calls run ~100x slower with a threaded OpenBLAS on a busy
        # 2-core machine (waking threads for tiny products); it runs single-threaded, and the
        # loss and gradient get the threads back when they are large enough to use them.
        blas, threads = _blas_controller()
        big = X.shape[0] * net.n_params >= _THREADED_EVAL

        def loss_grad(x):
            net.params[...] = x
            if big and threads > 1:
                with blas.limit(limits=threads, user_api="blas"):
                    cost, _, grad = net._evaluate(X, Yt, labels, alpha, True)
            else:
                cost, _, grad = net._evaluate(X, Yt, labels, alpha, True)
            return cost, grad.astype(np.float64)

        callback = None
        if self.verbose:  # scikit-learn relied on scipy's iprint, which scipy 1.15 dropped
            iteration = [0]

            def callback(intermediate_result):
                iteration[0] += 1
                print(f"Iteration {iteration[0]}, loss = {intermediate_result.fun:.8f}")

        with blas.limit(limits=1, user_api="blas"):
            res = scipy.optimize.minimize(
                loss_grad, net.params.astype(np.float64), method="L-BFGS-B", jac=True,
                callback=callback,
                options={"maxfun": self.max_fun, "maxiter": self.max_iter, "gtol": self.tol})
        self.n_iter_ = min(res.nit, self.max_iter)
        if res.status != 0:
            msg = (f"lbfgs failed to converge after {self.n_iter_} iteration(s) "
                   f"(status={res.status}):\n{res.message}\n")
            if self.n_iter_ == self.max_iter:
                msg += (f"\nIncrease the number of iterations to improve the convergence "
                        f"(max_iter={self.max_iter}).")
            msg += ("\nYou might also want to scale the data as shown in:\n"
                    "    https://scikit-learn.org/stable/modules/preprocessing.html")
            warnings.warn(msg, ConvergenceWarning, stacklevel=3)
        net.params[...] = res.x
        if not np.isfinite(net.params).all():
            raise ValueError(_NON_FINITE)
        self.loss_ = float(res.fun)
        if self._loss_scale() != 1.0:
            l2 = 0.5 * alpha / X.shape[0] * net._l2_norm2()
            self.loss_ = (self.loss_ - l2) * self._loss_scale() + l2

    # ------------------------------------------------------------ sgd / adam
    def _new_optimizer(self):
        if self.solver == "sgd":
            return SGD(eta=self.learning_rate_init, momentum=self.momentum,
                       nesterov=self.nesterovs_momentum)
        return Adam(eta=self.learning_rate_init, beta1=self.beta_1, beta2=self.beta_2,
                    epsilon=self.epsilon)

    def _fit_stochastic(self, X, Y, incremental, x_unscanned=False):
        """The sgd / adam epochs. With ``x_unscanned``, X's values are not yet known to be
        finite: the first epoch's steps find a NaN or inf (raising _NonFiniteX), and the
        validation rows of early stopping, which no step reads, are scanned here."""
        net = self._net
        if not incremental or "_optimizer" not in self.__dict__:
            self._optimizer = self._new_optimizer()
        opt = self._optimizer
        if self.early_stopping and incremental:
            raise ValueError("partial_fit does not support early_stopping=True")
        if "loss_curve_" not in self.__dict__:  # continuing an lbfgs fit
            self._initialize_stochastic()
        early_stopping = self.early_stopping
        if early_stopping:
            if self.validation_scores_ is None:  # warm start after a fit without early stopping
                self.validation_scores_, self.best_validation_score_ = [], -np.inf
            # scikit-learn's split: stratified for single-output classifiers only
            stratify = Y if is_classifier(self) and self.n_outputs_ == 1 else None
            idx_train, idx_val = train_test_split(
                np.arange(X.shape[0]), random_state=self._random_state,
                test_size=self.validation_fraction, stratify=stratify)
            if idx_val.shape[0] < 2:
                raise ValueError("The validation set is too small. Increase 'validation_fraction' "
                                 "or the size of your dataset.")
            X_val, y_val = X[idx_val], self._score_target(Y[idx_val])
            if x_unscanned:
                bad = _non_finite_x(X_val, idx_val)
                if bad is not None:
                    raise bad
                rows_train = idx_train
            X, Y = X[idx_train], Y[idx_train]
        else:
            X_val = y_val = None
            rows_train = None

        n = X.shape[0]
        if self.batch_size == "auto":
            batch_size = min(200, n)
        else:
            if self.batch_size > n:
                warnings.warn("Got `batch_size` less than 1 or larger than sample size. "
                              "It is going to be clipped")
            batch_size = int(np.clip(self.batch_size, 1, n))
        Yt, labels = self._targets(Y)
        trainer = Trainer(net, X, Yt, labels, batch_size=batch_size, optimizer=opt,
                          lmbda=float(self.alpha), l2_scale="batch", _x_unscanned=x_unscanned)
        sgd = self.solver == "sgd"
        sample_idx = np.arange(n, dtype=np.intp)
        try:
            self.n_iter_ = 0
            for _ in range(self.max_iter):
                if self.shuffle:
                    # the draw of sklearn.utils.shuffle(sample_idx, random_state=...), without
                    # its per-call validation (which costs more than a small epoch)
                    order = np.arange(n)
                    self._random_state.shuffle(order)
                    sample_idx = sample_idx[order]
                unscanned = trainer.x_unscanned
                try:
                    self.loss_ = self._run_epoch(trainer, sample_idx, batch_size)
                except ValueError:
                    # Trainer's own error for a NaN or inf of X, or _NON_FINITE
                    bad = _non_finite_x(X, rows_train) if unscanned else None
                    if bad is not None:
                        raise bad from None
                    raise
                self.n_iter_ += 1
                self.t_ += n
                self.loss_curve_.append(self.loss_)
                if self.verbose:
                    print("Iteration %d, loss = %.8f" % (self.n_iter_, self.loss_))
                self._update_no_improvement_count(early_stopping, X_val, y_val)
                if sgd and self.learning_rate == "invscaling":
                    opt.eta = float(self.learning_rate_init) / (self.t_ + 1) ** self.power_t
                if self._no_improvement_count > self.n_iter_no_change:
                    what = ("Validation score did not improve more than tol=%f for %d consecutive "
                            "epochs." if early_stopping else
                            "Training loss did not improve more than tol=%f for %d consecutive "
                            "epochs.") % (self.tol, self.n_iter_no_change)
                    if self._trigger_stopping(what, opt):
                        break
                    self._no_improvement_count = 0
                if incremental:
                    break
                if self.n_iter_ == self.max_iter:
                    warnings.warn("Stochastic Optimizer: Maximum iterations (%d) reached and the "
                                  "optimization hasn't converged yet." % self.max_iter,
                                  ConvergenceWarning)
        except KeyboardInterrupt:
            warnings.warn("Training interrupted by user.")
        if early_stopping:
            net.params[...] = self._best_params

    def _run_epoch(self, trainer, perm, batch_size):
        """One epoch in the kernels; returns scikit-learn's loss_ for it."""
        n = trainer.n
        try:
            scale = self._loss_scale()
            if scale == 1.0:
                return trainer.run_epoch(perm, want_loss=True) / n
            # multi-output squared error: scikit-learn averages the data term over the outputs
            # but not the L2 term, so add up the L2 terms (0.5 alpha ||W||^2 before each step)
            # between the steps; only the total comes back from the kernels.
            net = self._net
            norms = [net._l2_norm2()]
            total = trainer.run_epoch(perm, want_loss=True, chunk=batch_size,
                                      progress=lambda done: norms.append(net._l2_norm2()))
            l2 = 0.5 * float(self.alpha) * sum(norms[:-1])
            return ((total - l2) * scale + l2) / n
        except TrainingDiverged:
            raise ValueError(_NON_FINITE) from None

    def _trigger_stopping(self, what, opt):
        if self.solver != "sgd" or self.learning_rate != "adaptive":
            if self.verbose:
                print(what + " Stopping.")
            return True
        if opt.eta <= 1e-6:
            if self.verbose:
                print(what + " Learning rate too small. Stopping.")
            return True
        opt.eta /= 5.0
        if self.verbose:
            print(what + " Setting learning rate to %f" % opt.eta)
        return False

    def _update_no_improvement_count(self, early_stopping, X_val, y_val):
        if early_stopping:
            score = self._score(X_val, y_val)
            self.validation_scores_.append(score)
            if self.verbose:
                print("Validation score: %f" % score)
            if score < self.best_validation_score_ + self.tol:
                self._no_improvement_count += 1
            else:
                self._no_improvement_count = 0
            if score > self.best_validation_score_:
                self.best_validation_score_ = score
                self._best_params = self._net.params.copy()
        else:
            if self.loss_curve_[-1] > self.best_loss_ - self.tol:
                self._no_improvement_count += 1
            else:
                self._no_improvement_count = 0
            if self.loss_curve_[-1] < self.best_loss_:
                self.best_loss_ = self.loss_curve_[-1]

    def _score(self, X, y):
        """The validation score (accuracy or R^2) on validated arrays; NaN if not finite."""
        y_pred = self._predict_dense(X)
        if np.issubdtype(y_pred.dtype, np.floating) and not np.isfinite(y_pred).all():
            return np.nan
        return self._score_function(y, y_pred)

    # ------------------------------------------------------------ prediction
    def _forward(self, X):
        check_is_fitted(self)
        X = validate_data(self, X, accept_sparse=["csr", "csc"], reset=False,
                          dtype=(np.float64, np.float32))
        return self._net.feedforward(self._as_dense(X, self._net.dtype))

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.sparse = True
        return tags


class MLPClassifier(ClassifierMixin, _BaseMLP):
    """Multi-layer perceptron classifier: scikit-learn's MLPClassifier on fastnn.

    Parameters, methods and fitted attributes are those of
    ``sklearn.neural_network.MLPClassifier`` (see its documentation), with the
    differences listed in :mod:`fastnn.sklearn`; ``dtype`` is an extra
    parameter (None, 'float32' or 'float64'). The output layer is softmax with
    the log-likelihood for multiclass targets, and logistic with the
    cross-entropy for binary (one output neuron) and multilabel targets.

    Attributes
    ----------
    classes_, loss_, best_loss_, loss_curve_, validation_scores_,
    best_validation_score_, t_, coefs_, intercepts_, n_features_in_,
    feature_names_in_, n_iter_, n_layers_, n_outputs_, out_activation_ :
        as in scikit-learn. ``coefs_`` / ``intercepts_`` are views into the
        parameters of ``network_``, the fitted :class:`fastnn.Network`.
    """

    def __init__(self, hidden_layer_sizes=(100,), activation="relu", *, solver="adam",
                 alpha=0.0001, batch_size="auto", learning_rate="constant",
                 learning_rate_init=0.001, power_t=0.5, max_iter=200, shuffle=True,
                 random_state=None, tol=1e-4, verbose=False, warm_start=False, momentum=0.9,
                 nesterovs_momentum=True, early_stopping=False, validation_fraction=0.1,
                 beta_1=0.9, beta_2=0.999, epsilon=1e-8, n_iter_no_change=10, max_fun=15000,
                 dtype=None):
        self.hidden_layer_sizes = hidden_layer_sizes
        self.activation = activation
        self.solver = solver
        self.alpha = alpha
        self.batch_size = batch_size
        self.learning_rate = learning_rate
        self.learning_rate_init = learning_rate_init
        self.power_t = power_t
        self.max_iter = max_iter
        self.shuffle = shuffle
        self.random_state = random_state
        self.tol = tol
        self.verbose = verbose
        self.warm_start = warm_start
        self.momentum = momentum
        self.nesterovs_momentum = nesterovs_momentum
        self.early_stopping = early_stopping
        self.validation_fraction = validation_fraction
        self.beta_1 = beta_1
        self.beta_2 = beta_2
        self.epsilon = epsilon
        self.n_iter_no_change = n_iter_no_change
        self.max_fun = max_fun
        self.dtype = dtype

    def _out_activation(self):
        return "softmax" if self._label_binarizer.y_type_ == "multiclass" else "logistic"

    def _validate_input(self, X, y, incremental, first_pass, finite=True):
        X, y = validate_data(self, X, y, accept_sparse=["csr", "csc"], multi_output=True,
                             dtype=self._x_dtype(first_pass), reset=first_pass,
                             ensure_all_finite=finite)
        if y.ndim == 2 and y.shape[1] == 1:
            y = column_or_1d(y, warn=True)
        if "classes_" not in self.__dict__ or (not self.warm_start and not incremental):
            self._label_binarizer = LabelBinarizer()
            self._label_binarizer.fit(y)
            self.classes_ = self._label_binarizer.classes_
        else:
            classes = unique_labels(y)
            if self.warm_start:
                if set(classes) != set(self.classes_):
                    raise ValueError(f"warm_start can only be used where `y` has the same classes "
                                     f"as in the previous call to fit. Previously got "
                                     f"{self.classes_}, `y` has {classes}")
            elif len(np.setdiff1d(classes, self.classes_, assume_unique=True)):
                raise ValueError(f"`y` has classes not in `self.classes_`. `self.classes_` has "
                                 f"{self.classes_}. 'y' has {classes}.")
        return X, self._label_binarizer.transform(y).astype(bool)

    def _score_target(self, Y):
        return self._label_binarizer.inverse_transform(Y)

    @staticmethod
    def _score_function(y, y_pred):
        return accuracy_score(y, y_pred)

    def _predict_dense(self, X):
        y_pred = self._net.feedforward(X)
        if self.n_outputs_ == 1:
            y_pred = y_pred.ravel()
        return self._label_binarizer.inverse_transform(y_pred)

    @available_if(lambda est: est._check_solver())
    def partial_fit(self, X, y, classes=None):
        """Update the model with a single iteration over the given data.

        Parameters
        ----------
        X : {array-like, sparse matrix} of shape (n_samples, n_features)
        y : array-like of shape (n_samples,)
        classes : array of shape (n_classes,), all the classes across the calls;
            needed on the first call, may be omitted afterwards.

        Returns
        -------
        self : the trained model.
        """
        if self._partial_fit_first_call(classes):
            self._label_binarizer = LabelBinarizer()
            if type_of_target(y).startswith("multilabel"):
                self._label_binarizer.fit(y)
            else:
                self._label_binarizer.fit(classes)
        return self._fit(X, y, incremental=True)

    def _partial_fit_first_call(self, classes):
        have = getattr(self, "classes_", None)
        if have is None and classes is None:
            raise ValueError("classes must be passed on the first call to partial_fit.")
        if classes is not None:
            if have is not None:
                if not np.array_equal(have, unique_labels(classes)):
                    raise ValueError(f"`classes={classes!r}` is not the same as on last call to "
                                     f"partial_fit, was: {have!r}")
            else:
                self.classes_ = unique_labels(classes)
                return True
        return False

    def predict(self, X):
        """Predicted classes, shape (n_samples,) or (n_samples, n_classes) for multilabel."""
        y_pred = self._forward(X)
        if self.n_outputs_ == 1:
            y_pred = y_pred.ravel()
        return self._label_binarizer.inverse_transform(y_pred)

    def predict_proba(self, X):
        """Class probabilities, (n_samples, n_classes), columns in the order of classes_."""
        y_pred = self._forward(X)
        if self.n_outputs_ == 1:
            y_pred = y_pred.ravel()
        if y_pred.ndim == 1:
            return np.vstack([1 - y_pred, y_pred]).T
        return y_pred

    def predict_log_proba(self, X):
        """log(predict_proba(X))."""
        y_prob = self.predict_proba(X)
        return np.log(y_prob, out=y_prob)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.classifier_tags.multi_label = True
        return tags


class MLPRegressor(RegressorMixin, _BaseMLP):
    """Multi-layer perceptron regressor: scikit-learn's MLPRegressor on fastnn.

    Parameters, methods and fitted attributes are those of
    ``sklearn.neural_network.MLPRegressor`` (see its documentation), with the
    differences listed in :mod:`fastnn.sklearn`: ``loss`` must be
    'squared_error'; ``dtype`` is an extra parameter. The output layer is the
    identity with the quadratic cost; targets may have several columns.
    """

    def __init__(self, loss="squared_error", hidden_layer_sizes=(100,), activation="relu", *,
                 solver="adam", alpha=0.0001, batch_size="auto", learning_rate="constant",
                 learning_rate_init=0.001, power_t=0.5, max_iter=200, shuffle=True,
                 random_state=None, tol=1e-4, verbose=False, warm_start=False, momentum=0.9,
                 nesterovs_momentum=True, early_stopping=False, validation_fraction=0.1,
                 beta_1=0.9, beta_2=0.999, epsilon=1e-8, n_iter_no_change=10, max_fun=15000,
                 dtype=None):
        self.loss = loss
        self.hidden_layer_sizes = hidden_layer_sizes
        self.activation = activation
        self.solver = solver
        self.alpha = alpha
        self.batch_size = batch_size
        self.learning_rate = learning_rate
        self.learning_rate_init = learning_rate_init
        self.power_t = power_t
        self.max_iter = max_iter
        self.shuffle = shuffle
        self.random_state = random_state
        self.tol = tol
        self.verbose = verbose
        self.warm_start = warm_start
        self.momentum = momentum
        self.nesterovs_momentum = nesterovs_momentum
        self.early_stopping = early_stopping
        self.validation_fraction = validation_fraction
        self.beta_1 = beta_1
        self.beta_2 = beta_2
        self.epsilon = epsilon
        self.n_iter_no_change = n_iter_no_change
        self.max_fun = max_fun
        self.dtype = dtype

    @property
    def _loss(self):
        return self.loss

    def _out_activation(self):
        return "identity"

    def _validate_input(self, X, y, incremental, first_pass, finite=True):
        X, y = validate_data(self, X, y, accept_sparse=["csr", "csc"], multi_output=True,
                             y_numeric=True, dtype=self._x_dtype(first_pass), reset=first_pass,
                             ensure_all_finite=finite)
        if y.ndim == 2 and y.shape[1] == 1:
            y = column_or_1d(y, warn=True)
        return X, y

    def _score_target(self, Y):
        return Y

    @staticmethod
    def _score_function(y, y_pred):
        return r2_score(y, y_pred)

    def _predict_dense(self, X):
        y_pred = self._net.feedforward(X)
        return y_pred.ravel() if y_pred.shape[1] == 1 else y_pred

    @available_if(lambda est: est._check_solver())
    def partial_fit(self, X, y):
        """Update the model with a single iteration over the given data.

        Parameters
        ----------
        X : {array-like, sparse matrix} of shape (n_samples, n_features)
        y : array-like of shape (n_samples,) or (n_samples, n_outputs)

        Returns
        -------
        self : the trained model.
        """
        return self._fit(X, y, incremental=True)

    def predict(self, X):
        """Predicted values, shape (n_samples,) or (n_samples, n_outputs)."""
        y_pred = self._forward(X)
        return y_pred.ravel() if y_pred.shape[1] == 1 else y_pred

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.multi_output = True
        return tags
