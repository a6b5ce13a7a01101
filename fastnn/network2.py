"""fastnn.network2: the API of the book's ``network2.py`` on fastnn's kernels.

A drop-in for ``network2.py`` of Michael Nielsen's *Neural Networks and Deep
Learning*, chapter 3 (the Python 3 port is MichalDanielDobrzanski/DeepLearningPython).
A script written for the book runs unchanged after::

    import fastnn.network2 as network2

    net = network2.Network([784, 30, 10], cost=network2.CrossEntropyCost)
    net.SGD(training_data, 30, 10, 0.5, lmbda=5.0, evaluation_data=validation_data,
            monitor_evaluation_accuracy=True)

and gives the book's numbers: the same random draws (``numpy.random`` for the
initial weights, Python's ``random.shuffle`` for the epoch order), the same
updates and the same monitored costs and accuracies, to rounding. It adds
``momentum`` / ``nesterov`` (equations 107-108 of the book), ``early_stopping_n``
(as in the book's later network2) and ``verbose``.

The network (all layers sigmoid): ``a^{l+1} = sigmoid(w^l a^l + b^l)`` with
``w^l`` of shape ``(sizes[l+1], sizes[l])`` and ``b^l`` of shape ``(sizes[l+1], 1)``;
inputs and outputs are column vectors, as in the book.

Costs over n samples ``(x, y)`` with output ``a = a^L(x)``::

    quadratic:      C = (1/n) sum_x 1/2 ||a - y||^2                       + lmbda/(2n) sum_l ||w^l||^2
    cross-entropy:  C = -(1/n) sum_x sum_j [y_j ln a_j + (1-y_j) ln(1-a_j)] + lmbda/(2n) sum_l ||w^l||^2

Training, for a mini-batch of m samples of a training set of size n (the
book's update, L2 on weights only)::

    w <- (1 - eta lmbda/n) w - (eta/m) sum_x dC_x/dw,      b <- b - (eta/m) sum_x dC_x/db

and with momentum mu > 0 (equations 107-108; g the mean gradient of the
batch plus (lmbda/n) w on the weights)::

    v <- mu v - eta g,   w <- w + v

Differences from the book, all deliberate:

- The training data is converted once per call into contiguous arrays; each
  epoch visits the samples in the order the book's ``random.shuffle`` of the
  list would give (an index list of the same length is shuffled instead: the
  same draws). Like the Python 3 port (``training_data = list(training_data)``),
  the caller's list is not reordered.
- The cross-entropy cost is computed from z, stably, as
  ``softplus(z) - y z`` per output neuron. It equals the book's value wherever
  that is finite; where the book's output saturates to exactly 1.0 (or 0.0) in
  floating point, the book's ``np.nan_to_num`` turns ``-ln 0 = inf`` into
  1.8e308 and its cost into ~1.8e308/n, while fastnn gives the true, finite
  cost (about ``|z|`` for that neuron).
- Bad input (wrong shapes, non-finite values, integer labels where the book
  expects one-hot vectors or the reverse, a malformed saved file) raises a
  ValueError naming what was expected, where the book would crash later or
  compute nonsense. A step that makes the parameters non-finite raises
  ``fastnn.TrainingDiverged`` (the network keeps its last finite parameters).
- ``vectorized_result`` is the book's (10 outputs); inside fastnn, integer
  labels become one-hot vectors of the network's own output width.
"""
import json
import numbers
import os
import random

import numpy as np

from fastnn._validation import check_int, check_real
from fastnn.io import atomic_write
from fastnn.costs import get_cost
from fastnn.network import Network as _FastNetwork
from fastnn.optimizers import SGD as _SGD
from fastnn.training import Trainer as _Trainer
from fastnn.training import TrainingDiverged

__all__ = ["Network", "QuadraticCost", "CrossEntropyCost", "load", "vectorized_result",
           "sigmoid", "sigmoid_prime", "TrainingDiverged"]


# --------------------------------------------------------------------------- costs


class QuadraticCost:
    """The quadratic cost ``C_x = 1/2 ||a - y||^2``."""

    @staticmethod
    def fn(a, y):
        """The cost ``1/2 ||a - y||^2`` of an output ``a`` for the desired output ``y``."""
        return 0.5 * np.linalg.norm(a - y) ** 2

    @staticmethod
    def delta(z, a, y):
        """The output error ``dC_x/dz = (a - y) * sigmoid'(z)``."""
        return (a - y) * sigmoid_prime(z)


class CrossEntropyCost:
    """The cross-entropy cost ``C_x = -sum_j [y_j ln a_j + (1 - y_j) ln(1 - a_j)]``."""

    @staticmethod
    def fn(a, y):
        """The cost of an output ``a`` for the desired output ``y``, as the book computes it.

        ``np.nan_to_num`` turns the ``0 * ln 0 = nan`` of a saturated output that
        matches ``y`` into 0, and a saturated wrong output's ``inf`` into 1.8e308.
        (The network's own cost, ``total_cost``, is computed stably from z.)
        """
        return np.sum(np.nan_to_num(-y * np.log(a) - (1 - y) * np.log(1 - a)))

    @staticmethod
    def delta(z, a, y):
        """The output error ``dC_x/dz = a - y`` (z is unused, kept for a common interface)."""
        return a - y


_COSTS = {"CrossEntropyCost": CrossEntropyCost, "QuadraticCost": QuadraticCost}
_CORE_COST = {"CrossEntropyCost": "cross-entropy", "QuadraticCost": "quadratic"}


def _core_cost_name(cost):
    """fastnn's name for a cost class: ours, or the book's own classes of the same name."""
    name = getattr(cost, "__name__", None)
    if (isinstance(cost, type) and name in _CORE_COST
            and callable(getattr(cost, "fn", None)) and callable(getattr(cost, "delta", None))):
        return _CORE_COST[name]
    raise ValueError(f"The 'cost' parameter must be network2.CrossEntropyCost or "
                     f"network2.QuadraticCost (the costs fastnn's kernels compute). Got {cost!r} instead.")


# --------------------------------------------------------------------------- parameter lists


class _ParamList(list):
    """A list of per-layer views into the flat parameter buffer.

    ``lst[l] = array`` copies the values into the buffer (the shape must match),
    so the network sees them; operations that would change the length raise.
    """

    def __init__(self, views, kind, shapes):
        super().__init__(views)
        self._kind = kind
        self._shapes = shapes

    def __setitem__(self, index, value):
        if isinstance(index, slice):
            idx = range(len(self))[index]
            values = list(value)
            if len(values) != len(idx):
                raise ValueError(f"net.{self._kind} has one array per layer; a slice assignment "
                                 f"must keep its length ({len(idx)} arrays, got {len(values)}).")
            arrays = [_check_layer_array(self._kind, i, self._shapes[i], v) for i, v in zip(idx, values)]
            for i, arr in zip(idx, arrays):
                list.__getitem__(self, i)[...] = arr
            return
        view = list.__getitem__(self, index)
        i = range(len(self))[index]
        view[...] = _check_layer_array(self._kind, i, self._shapes[i], value)

    def _fixed_length(self, *args, **kwargs):
        raise TypeError(f"net.{self._kind} holds one array per layer and its length is fixed: "
                        f"assign to its items (net.{self._kind}[l] = array) or assign a whole new "
                        f"list (net.{self._kind} = [...]).")

    append = extend = insert = pop = remove = clear = sort = reverse = _fixed_length
    __delitem__ = __iadd__ = __imul__ = _fixed_length

    def __reduce_ex__(self, protocol):  # copies / pickles as a plain list of arrays
        return (list, (list(self),))


def _check_layer_array(kind, l, shape, value):
    try:
        arr = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"net.{kind}[{l}] must be an array of real numbers of shape {shape}. "
                         f"Could not convert {type(value).__name__}: {exc}") from None
    if kind == "biases" and arr.shape == shape[:1]:
        arr = arr.reshape(shape)
    if arr.shape != shape:
        raise ValueError(f"net.{kind}[{l}] must have shape {shape}. Got an array of shape "
                         f"{arr.shape} instead.")
    if not np.isfinite(arr).all():
        raise ValueError(f"net.{kind}[{l}] must be finite; it holds NaN or inf.")
    return arr


# --------------------------------------------------------------------------- data


def _data_arrays(data, n_in, n_out, dtype, targets, what, hint=""):
    """The book's list (or one-shot iterator) of ``(x, y)`` pairs as arrays.

    Returns ``(X, Y_or_labels)``: X of shape (n, n_in), and either the targets
    (n, n_out) (``targets=True``: each y a vector of n_out values, e.g. one-hot)
    or integer labels (n,) (each y a class index). Every x must hold n_in values
    (the book's are columns (n_in, 1)).
    """
    if not isinstance(data, (list, tuple)):
        try:
            data = list(data)
        except TypeError:
            raise TypeError(f"The {what!r} parameter must be a list (or iterable) of (x, y) pairs. "
                            f"Got {type(data).__name__} instead.") from None
    n = len(data)
    X = np.empty((n, n_in), dtype=dtype)
    Y = np.empty((n, n_out), dtype=dtype) if targets else None
    ys = None if targets else [None] * n
    # the book's columns (n_in, 1) / (n_out, 1) are copied through (n, k, 1) views (fast path)
    Xc, x_col = X.reshape(n, n_in, 1), (n_in, 1)
    Yc, y_col = (Y.reshape(n, n_out, 1), (n_out, 1)) if targets else (None, None)
    for i, pair in enumerate(data):
        try:
            x, y = pair
        except (TypeError, ValueError):
            raise ValueError(f"{what}[{i}] must be a pair (x, y). Got {type(pair).__name__} "
                             f"instead.") from None
        if type(x) is np.ndarray and x.shape == x_col and x.dtype.kind == "f":
            Xc[i] = x
        else:
            x = np.asarray(x)
            if x.size != n_in:
                raise ValueError(f"{what}[{i}]: x must hold {n_in} values (a column of shape "
                                 f"({n_in}, 1)). Got an array of shape {x.shape} instead.")
            try:
                X[i] = x.reshape(n_in)
            except (TypeError, ValueError):
                raise TypeError(f"{what}[{i}]: x must hold real numbers. Got dtype {x.dtype}.") from None
        if not targets:
            ys[i] = y
        elif type(y) is np.ndarray and y.shape == y_col and y.dtype.kind == "f":
            Yc[i] = y
        else:
            y = np.asarray(y)
            if y.size != n_out:
                raise ValueError(f"{what}[{i}]: y must be a vector of {n_out} values (one-hot, as "
                                 f"vectorized_result gives; shape ({n_out}, 1)). Got "
                                 f"{'the label ' + repr(y.item()) if y.size == 1 else 'shape ' + str(y.shape)}"
                                 f" instead.{hint}")
            try:
                Y[i] = y.reshape(n_out)
            except (TypeError, ValueError):
                raise TypeError(f"{what}[{i}]: y must hold real numbers. Got dtype {y.dtype}.") from None
    if targets:
        return X, Y
    labels = np.asarray(ys) if n else np.empty(0, dtype=np.intp)
    if labels.ndim > 1 and labels.size == n:
        labels = labels.reshape(n)
    if labels.ndim != 1 or not (np.issubdtype(labels.dtype, np.integer)
                                or np.issubdtype(labels.dtype, np.floating) or labels.dtype == bool):
        raise ValueError(f"{what}: each y must be an integer class label in [0, {max(n_out, 2)}). "
                         f"Got {'vectors of shape ' + str(np.shape(ys[0])) if n else 'nothing'} "
                         f"instead.{hint}")
    return X, labels


# --------------------------------------------------------------------------- the network


class Network:
    """A sigmoid network with the book's ``network2.Network`` API.

    Parameters
    ----------
    sizes : list of int, the layer widths, inputs first ([784, 30, 10]).
    cost : CrossEntropyCost (default) or QuadraticCost (the classes, not instances).
    dtype : 'float64' (default, the book's) or 'float32' (keyword only).

    Attributes
    ----------
    num_layers : len(sizes).
    sizes : list of int.
    weights : list, ``weights[l]`` of shape (sizes[l+1], sizes[l]).
    biases : list, ``biases[l]`` of shape (sizes[l+1], 1).
    cost : the cost class; assigning another one switches the network's cost.
    core : the ``fastnn.Network`` doing the work.

    ``weights[l]`` and ``biases[l]`` are NumPy views into ``core.params`` (one
    flat buffer): editing them in place edits the network, and ``core.params``
    edits show in them. Assigning a list (``net.weights = [...]``) or an item
    (``net.weights[l] = w``) copies the values into the buffer after checking
    the shapes. The initial weights are drawn as ``default_weight_initializer``
    draws them, from ``numpy.random``.
    """

    def __init__(self, sizes, cost=CrossEntropyCost, *, dtype="float64"):
        core_cost = _core_cost_name(cost)
        # the core's own initializer is overwritten below; seed=0 spares OS entropy
        self._attach(_FastNetwork(sizes, hidden="sigmoid", output="sigmoid", cost=core_cost,
                                  dtype=dtype, seed=0), cost)
        self.default_weight_initializer()

    def _attach(self, core, cost):
        self._core = core
        self.sizes = [int(s) for s in core.sizes]
        self.num_layers = len(self.sizes)
        self._cost = cost
        shapes_w = [(o, i) for i, o in zip(self.sizes[:-1], self.sizes[1:])]
        shapes_b = [(o, 1) for o in self.sizes[1:]]
        self._weights = _ParamList(list(core.weights), "weights", shapes_w)
        self._biases = _ParamList([b.reshape(-1, 1) for b in core.biases], "biases", shapes_b)

    # ------------------------------------------------------------------ attributes
    @property
    def core(self):
        """The underlying ``fastnn.Network`` (its ``params`` hold these weights and biases)."""
        return self._core

    @property
    def weights(self):
        """List of the weight matrices, ``weights[l]`` of shape (sizes[l+1], sizes[l]): views."""
        return self._weights

    @weights.setter
    def weights(self, values):
        self._assign("weights", self._weights, values)

    @property
    def biases(self):
        """List of the bias columns, ``biases[l]`` of shape (sizes[l+1], 1): views."""
        return self._biases

    @biases.setter
    def biases(self, values):
        self._assign("biases", self._biases, values)

    def _assign(self, kind, target, values):
        if values is target:
            return
        try:
            values = list(values)
        except TypeError:
            raise TypeError(f"net.{kind} must be assigned a list of arrays, one per layer. "
                            f"Got {type(values).__name__} instead.") from None
        if len(values) != len(target):
            raise ValueError(f"net.{kind} must be assigned {len(target)} arrays (one per layer of "
                             f"{self.sizes}). Got {len(values)}.")
        target[:] = values  # checks every shape before writing any

    @property
    def cost(self):
        """The cost class; assign CrossEntropyCost or QuadraticCost to switch."""
        return self._cost

    @cost.setter
    def cost(self, cost):
        c = get_cost(_core_cost_name(cost), self._core.output)
        self._core.cost = c.name
        self._core._cost_c = c.code
        self._cost = cost

    def __repr__(self):
        return f"network2.Network({self.sizes}, cost={getattr(self._cost, '__name__', self._cost)})"

    def __getstate__(self):
        return {"core": self._core, "cost": self._cost}

    def __setstate__(self, state):
        self._attach(state["core"], state["cost"])

    # ------------------------------------------------------------------ initializers
    def default_weight_initializer(self):
        """Biases ~ N(0, 1); weights ~ N(0, 1/n_in), n_in the number of inputs to the neuron.

        Drawn from ``numpy.random`` in the book's order: ``np.random.randn(y, 1)``
        for every layer's biases first, then ``np.random.randn(y, x)/np.sqrt(x)``
        for every layer's weights.
        """
        biases = [np.random.randn(y, 1) for y in self.sizes[1:]]
        weights = [np.random.randn(y, x) / np.sqrt(x) for x, y in zip(self.sizes[:-1], self.sizes[1:])]
        self.biases = biases
        self.weights = weights

    def large_weight_initializer(self):
        """Biases and weights ~ N(0, 1) (chapter 1's initialization), drawn as the book draws them."""
        biases = [np.random.randn(y, 1) for y in self.sizes[1:]]
        weights = [np.random.randn(y, x) for x, y in zip(self.sizes[:-1], self.sizes[1:])]
        self.biases = biases
        self.weights = weights

    # ------------------------------------------------------------------ inference
    def feedforward(self, a):
        """The output ``a^L`` for the input column ``a``: ``a <- sigmoid(w a + b)`` per layer.

        ``a`` of shape (sizes[0], 1) gives (sizes[-1], 1); (sizes[0], k) -- k inputs
        as columns, which the book's code also accepts -- gives (sizes[-1], k). A 1-D
        ``a`` of length sizes[0] gives a 1-D output.
        """
        arr = np.asarray(a)
        n_in = self.sizes[0]
        if arr.ndim == 1:
            return self._core.feedforward(arr)
        if arr.ndim != 2 or arr.shape[0] != n_in:
            raise ValueError(f"feedforward expects a column of shape ({n_in}, 1) (or {n_in} rows "
                             f"of inputs as columns). Got an array of shape {arr.shape} instead.")
        return np.ascontiguousarray(self._core.feedforward(arr.T).T)

    # ------------------------------------------------------------------ data
    def _arrays(self, data, targets, what, hint=""):
        """Validated (X, Y, labels) for the core, as fastnn.Network._check_Xy gives them."""
        X, y = _data_arrays(data, self.sizes[0], self.sizes[-1], self._core.dtype, targets, what, hint)
        if X.shape[0] == 0:
            return X, None, None
        return self._core._check_Xy(X, y)

    def _cost_and_correct(self, X, Y, labels, lmbda):
        """(total cost with L2 over the n rows, number classified right) in one pass."""
        cost, acc, _ = self._core._evaluate(X, Y, labels, lmbda, False)
        n = X.shape[0]
        if self.sizes[-1] == 1:  # the book's argmax over one neuron is always 0
            truth = labels if labels.shape[0] else np.zeros(n, dtype=np.intp)
            return float(cost), int(np.count_nonzero(truth == 0))
        return float(cost), int(round(acc * n))

    # ------------------------------------------------------------------ training
    def SGD(self, training_data, epochs, mini_batch_size, eta, lmbda=0.0, evaluation_data=None,
            monitor_evaluation_cost=False, monitor_evaluation_accuracy=False,
            monitor_training_cost=False, monitor_training_accuracy=False,
            momentum=0.0, nesterov=False, early_stopping_n=0, verbose=True):
        """Train with mini-batch stochastic gradient descent, as the book's ``SGD``.

        ``training_data``: list (or iterator) of ``(x, y)``, x a column (sizes[0], 1),
        y the desired output (sizes[-1], 1) (one-hot for classification).
        ``evaluation_data``: ``(x, y)`` with y an integer label (the book's
        validation/test format). Every epoch shuffles with ``random.shuffle``, then
        for each mini-batch of m samples (the last one may be smaller), with n the
        number of training samples and g the mean gradient over the batch::

            w <- (1 - eta lmbda/n) w - eta g_w,     b <- b - eta g_b          (momentum = 0)
            v <- mu v - eta (g + (lmbda/n) w),  w <- w + v  (biases: no L2)   (momentum = mu)

        ``nesterov=True`` uses Nesterov's accelerated gradient (see fastnn.SGD).
        The velocity starts at 0 in every call. After each epoch the flagged
        quantities are recorded and printed (when ``verbose``): ``total_cost`` with
        ``lmbda`` and ``accuracy`` (a count) on the training / evaluation data.
        ``early_stopping_n > 0`` stops once the evaluation accuracy has not
        exceeded its best for that many consecutive epochs (the book's later
        network2; the best starts at 0).

        Returns ``(evaluation_cost, evaluation_accuracy, training_cost,
        training_accuracy)``, per-epoch lists (empty where the flag is off).
        """
        epochs = check_int(epochs, "epochs", low=0)
        mini_batch_size = check_int(mini_batch_size, "mini_batch_size", low=1)
        lmbda = check_real(lmbda, "lmbda", low=0.0)
        early_stopping_n = check_int(early_stopping_n, "early_stopping_n", low=0)
        optimizer = _SGD(eta=eta, momentum=momentum, nesterov=nesterov)

        X, Y, labels = self._arrays(
            training_data, True, "training_data",
            " (Integer labels are the book's validation/test format; convert them with "
            "vectorized_result for training.)")
        if X.shape[0] == 0:
            raise ValueError("The 'training_data' parameter holds no samples.")
        n = X.shape[0]
        need_eval = monitor_evaluation_cost or monitor_evaluation_accuracy or early_stopping_n > 0
        ev = None
        if need_eval:
            if evaluation_data is None:
                raise ValueError("evaluation_data is required with monitor_evaluation_cost, "
                                 "monitor_evaluation_accuracy or early_stopping_n > 0.")
            ev = self._arrays(evaluation_data, False, "evaluation_data",
                              " (evaluation_data uses the book's validation/test format: y is the "
                              "integer label.)")
            if ev[0].shape[0] == 0:
                raise ValueError("The 'evaluation_data' parameter holds no samples.")
            n_data = ev[0].shape[0]

        trainer = _Trainer(self._core, X, Y, labels, batch_size=mini_batch_size,
                           optimizer=optimizer, lmbda=lmbda)
        evaluation_cost, evaluation_accuracy = [], []
        training_cost, training_accuracy = [], []
        best_accuracy, no_accuracy_change = 0, 0
        order = list(range(n))
        for j in range(epochs):
            random.shuffle(order)  # the draws of the book's random.shuffle(training_data)
            try:
                trainer.run_epoch(np.array(order, dtype=np.intp))
            except TrainingDiverged as err:
                raise TrainingDiverged(
                    f"Training diverged in epoch {j}, {err}", epoch=j, step=err.step,
                    history=(evaluation_cost, evaluation_accuracy, training_cost,
                             training_accuracy)) from None
            if verbose:
                print("Epoch %s training complete" % j)
            if monitor_training_cost or monitor_training_accuracy:
                cost, correct = self._cost_and_correct(X, Y, labels, lmbda)
                if monitor_training_cost:
                    training_cost.append(cost)
                    if verbose:
                        print("Cost on training data: {}".format(cost))
                if monitor_training_accuracy:
                    training_accuracy.append(correct)
                    if verbose:
                        print("Accuracy on training data: {} / {}".format(correct, n))
            if ev is not None:
                cost, correct = self._cost_and_correct(*ev, lmbda)
                if monitor_evaluation_cost:
                    evaluation_cost.append(cost)
                    if verbose:
                        print("Cost on evaluation data: {}".format(cost))
                if monitor_evaluation_accuracy:
                    evaluation_accuracy.append(correct)
                    if verbose:
                        print("Accuracy on evaluation data: {} / {}".format(correct, n_data))
                if early_stopping_n > 0:
                    if correct > best_accuracy:
                        best_accuracy, no_accuracy_change = correct, 0
                    else:
                        no_accuracy_change += 1
                    if no_accuracy_change == early_stopping_n:
                        if verbose:
                            print("Early stopping: no improvement in evaluation accuracy in the "
                                  "last {} epochs".format(early_stopping_n))
                        break
        return evaluation_cost, evaluation_accuracy, training_cost, training_accuracy

    def update_mini_batch(self, mini_batch, eta, lmbda, n):
        """One gradient step on ``mini_batch`` (m pairs (x, y), y vectors), n the training-set size.

        ``w <- (1 - eta lmbda/n) w - (eta/m) sum_x dC_x/dw``, ``b <- b - (eta/m) sum_x dC_x/db``.
        """
        n = check_int(n, "n", low=1)
        lmbda = check_real(lmbda, "lmbda", low=0.0)
        X, Y, labels = self._arrays(mini_batch, True, "mini_batch")
        if X.shape[0] == 0:
            raise ValueError("The 'mini_batch' parameter holds no samples.")
        m = X.shape[0]
        trainer = _Trainer(self._core, X, Y, labels, batch_size=m, optimizer=_SGD(eta=eta),
                           lmbda=lmbda * m / n)  # the trainer's L2 factor is lmbda'/m = lmbda/n
        trainer.run_epoch(np.arange(m, dtype=np.intp))

    def backprop(self, x, y):
        """``(nabla_b, nabla_w)``: the gradient of the unregularized cost C_x of one sample.

        Shaped like ``biases`` and ``weights``; x a column (sizes[0], 1), y (sizes[-1], 1).
        """
        X, Y, labels = self._arrays([(x, y)], True, "(x, y)")
        flat = self._core.gradient(X, Y)
        nabla_b, nabla_w, off = [], [], 0
        for n_in, n_out in zip(self.sizes[:-1], self.sizes[1:]):
            nabla_w.append(flat[off:off + n_out * n_in].reshape(n_out, n_in))
            off += n_out * n_in
            nabla_b.append(flat[off:off + n_out].reshape(n_out, 1))
            off += n_out
        return nabla_b, nabla_w

    # ------------------------------------------------------------------ evaluation
    def accuracy(self, data, convert=False):
        """The number of samples whose output's argmax is the right class (an int).

        ``convert=False``: y is the integer label (validation/test data);
        ``convert=True``: y is a vector and the right class is its argmax
        (training data), as in the book.
        """
        X, Y, labels = self._arrays(
            data, bool(convert), "data",
            " (Use convert=True when y is a vector, convert=False when it is an integer label.)")
        if X.shape[0] == 0:
            return 0
        return self._cost_and_correct(X, Y, labels, 0.0)[1]

    def total_cost(self, data, lmbda, convert=False):
        """``C = (1/n) sum_x C_x + lmbda/(2n) sum_l ||w^l||^2`` over the n samples of ``data``.

        ``convert=False``: y is the desired output vector (training data);
        ``convert=True``: y is the integer label, taken as one-hot (validation /
        test data), as in the book. Cross-entropy is computed stably from z (see
        the module docstring for where that differs from the book's nan_to_num).
        """
        lmbda = check_real(lmbda, "lmbda", low=0.0)
        X, Y, labels = self._arrays(
            data, not convert, "data",
            " (Use convert=False when y is a vector, convert=True when it is an integer label.)")
        if X.shape[0] == 0:
            raise ValueError("total_cost needs at least one sample (the cost is a mean over the data).")
        return self._cost_and_correct(X, Y, labels, lmbda)[0]

    # ------------------------------------------------------------------ persistence
    def save(self, filename):
        """Save to ``filename`` in the book's JSON format, atomically.

        ``{"sizes": [...], "weights": [w.tolist(), ...], "biases": [b.tolist(), ...],
        "cost": "CrossEntropyCost" | "QuadraticCost"}`` -- the book's ``load`` reads it.
        The file is written to a temporary file in the same directory and renamed
        over ``filename``, so it is never left half-written.
        """
        data = {"sizes": list(self.sizes),
                "weights": [w.tolist() for w in self.weights],
                "biases": [b.tolist() for b in self.biases],
                "cost": str(self.cost.__name__)}
        _write_json(os.fspath(filename), data)


# --------------------------------------------------------------------------- save / load


def _write_json(path, data):
    """Write ``data`` as JSON atomically (see fastnn.io.atomic_write)."""
    atomic_write(path, lambda fh: fh.write(json.dumps(data).encode()), prefix=".network2-")


def load(filename):
    """Load a network saved by ``Network.save`` (this module's or the book's): a Network.

    The file is the book's JSON (``sizes``, ``weights``, ``biases``, ``cost``;
    other keys are ignored, as by the book). Like the book's ``load``, it builds
    ``Network(sizes, cost)`` -- which draws the default initial weights from
    ``numpy.random`` -- then sets the saved weights and biases. A file that is not
    such JSON, or whose shapes or values are invalid, raises ValueError.
    """
    filename = os.fspath(filename)
    try:
        with open(filename, "r", encoding="utf-8") as fh:
            data = json.load(fh)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{filename!r} is not a saved network2 network: it is not valid JSON "
                         f"({exc}). It may be truncated or another kind of file.") from None
    where = f"{filename!r} is not a valid saved network2 network"
    if not isinstance(data, dict):
        raise ValueError(f"{where}: the JSON holds a {type(data).__name__}, not an object with "
                         f"'sizes', 'weights', 'biases' and 'cost'.")
    missing = [k for k in ("sizes", "weights", "biases", "cost") if k not in data]
    if missing:
        raise ValueError(f"{where}: missing key(s) {missing}.")
    cost = _COSTS.get(data["cost"]) if isinstance(data["cost"], str) else None
    if cost is None:
        raise ValueError(f"{where}: 'cost' must be 'CrossEntropyCost' or 'QuadraticCost'. "
                         f"Got {data['cost']!r}.")
    sizes = data["sizes"]
    if (not isinstance(sizes, list) or len(sizes) < 2
            or not all(isinstance(s, numbers.Integral) and not isinstance(s, bool) and s >= 1
                       for s in sizes)):
        raise ValueError(f"{where}: 'sizes' must list at least two positive layer widths. "
                         f"Got {sizes!r}.")
    params = {}
    for kind, shapes in (("weights", [(o, i) for i, o in zip(sizes[:-1], sizes[1:])]),
                         ("biases", [(o, 1) for o in sizes[1:]])):
        values = data[kind]
        if not isinstance(values, list) or len(values) != len(shapes):
            raise ValueError(f"{where}: {kind!r} must be a list of {len(shapes)} arrays for sizes "
                             f"{sizes}. Got {type(values).__name__}"
                             f"{' of length ' + str(len(values)) if isinstance(values, list) else ''}.")
        arrays = []
        for l, (v, shape) in enumerate(zip(values, shapes)):
            try:
                arr = np.array(v, dtype=np.float64)
            except (TypeError, ValueError):
                raise ValueError(f"{where}: {kind}[{l}] is not a (nested) list of numbers of "
                                 f"shape {shape}.") from None
            if arr.shape != shape:
                raise ValueError(f"{where}: {kind}[{l}] has shape {arr.shape}; sizes {sizes} need "
                                 f"{shape}.")
            if not np.isfinite(arr).all():
                raise ValueError(f"{where}: {kind}[{l}] holds NaN or inf.")
            arrays.append(arr)
        params[kind] = arrays
    try:
        net = Network(sizes, cost=cost)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{where}: {exc}") from None
    net.weights = params["weights"]
    net.biases = params["biases"]
    return net


# --------------------------------------------------------------------------- helpers


def vectorized_result(j):
    """The (10, 1) unit vector with 1.0 in position j (a digit as the desired output)."""
    e = np.zeros((10, 1))
    e[j] = 1.0
    return e


def sigmoid(z):
    """The sigmoid function ``1 / (1 + e^-z)``."""
    return 1.0 / (1.0 + np.exp(-z))


def sigmoid_prime(z):
    """The derivative of the sigmoid, ``sigmoid(z) (1 - sigmoid(z))``."""
    return sigmoid(z) * (1 - sigmoid(z))
